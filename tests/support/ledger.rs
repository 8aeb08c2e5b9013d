//! The stress tests' record of what writers have done, and the checks a read must pass.
//!
//! Rows have an id, a version that every write bumps, and a bucket (a watched column that the
//! cached lists and counts are scoped by). Writers must give a row's versions in commit order
//! (they serialize the choice of the next version with the commit, e.g. under a lock that
//! holds the row's current state); several writers may write one row, and their
//! invalidations may overlap.
//!
//! A writer calls [`Ledger::begin`] before its statement and [`Ledger::finish`] once the
//! write is invalidated (its save or transaction returned, or the relay delivered it). A
//! reader takes a [`Snapshot`] before its read and one after, and then:
//!
//! - **versions**: no row it got may be older than the highest version finished before the
//!   read started (that version committed before the read, and its invalidation ran);
//! - **membership**: a row *settled* over the read (no write of it in flight at either end,
//!   none finished in between) must be in a bucket's list exactly when its bucket is that
//!   one: this is what catches a row that should have *entered* a cached list;
//! - **counts**: a bucket's count lies between the settled rows of the bucket and those plus
//!   every unsettled row.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Buckets are packed under the version (so one `fetch_max` keeps the highest version with
/// its own bucket, whatever order overlapping writers finish in).
const BUCKET_BITS: u32 = 8;

fn pack(version: i64, bucket: i64) -> i64 {
    assert!((0..1 << BUCKET_BITS).contains(&bucket), "bucket {bucket}");
    (version << BUCKET_BITS) | bucket
}

struct RowLedger {
    /// The highest finished version and its bucket, packed.
    finished: AtomicI64,
    /// Writes of the row started and not finished.
    in_flight: AtomicU64,
    /// Writes of the row finished.
    done: AtomicU64,
    /// The highest version committed (invalidated or not yet).
    committed: AtomicI64,
}

/// What writers have done, per row (ids `0..rows`).
pub struct Ledger {
    rows: Vec<RowLedger>,
}

impl Ledger {
    /// Rows `0..n` at version 0 in `bucket(id)`.
    pub fn new(n: usize, bucket: impl Fn(usize) -> i64) -> Self {
        Ledger {
            rows: (0..n)
                .map(|id| RowLedger {
                    finished: AtomicI64::new(pack(0, bucket(id))),
                    in_flight: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    committed: AtomicI64::new(0),
                })
                .collect(),
        }
    }

    fn row(&self, id: i64) -> &RowLedger {
        &self.rows[usize::try_from(id).expect("ids start at 0")]
    }

    /// A write of `id` starts (call before its statement).
    pub fn begin(&self, id: i64) {
        self.row(id).in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// The write of `id` to `version` in `bucket` is committed and invalidated.
    pub fn finish(&self, id: i64, version: i64, bucket: i64) {
        let row = self.row(id);
        row.finished
            .fetch_max(pack(version, bucket), Ordering::SeqCst);
        row.done.fetch_add(1, Ordering::SeqCst);
        row.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// The write of `id` to `version` committed (its invalidation may still be on its way).
    /// Optional: only [`Snapshot::lagging`] reads it.
    pub fn committed(&self, id: i64, version: i64) {
        self.row(id).committed.fetch_max(version, Ordering::SeqCst);
    }

    /// The write of `id` that began did not commit (it failed): it ends without a version.
    pub fn abort(&self, id: i64) {
        let row = self.row(id);
        row.done.fetch_add(1, Ordering::SeqCst);
        row.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// The ledger now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.rows
                .iter()
                .map(|r| {
                    // In-flight first: a write that begins after this load and finishes before
                    // the other snapshot's changes `done`.
                    let in_flight = r.in_flight.load(Ordering::SeqCst);
                    let done = r.done.load(Ordering::SeqCst);
                    let finished = r.finished.load(Ordering::SeqCst);
                    let committed = r.committed.load(Ordering::SeqCst);
                    RowSnapshot {
                        committed,
                        version: finished >> BUCKET_BITS,
                        bucket: finished & ((1 << BUCKET_BITS) - 1),
                        in_flight,
                        done,
                    }
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct RowSnapshot {
    committed: i64,
    version: i64,
    bucket: i64,
    in_flight: u64,
    done: u64,
}

/// The ledger at one instant.
pub struct Snapshot(Vec<RowSnapshot>);

/// What a read did wrong.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Rows older than a finished write.
    pub stale: u64,
    /// Settled rows missing from their bucket's list, or listed in another's; counts out of
    /// their bounds.
    pub misplaced: u64,
}

impl std::ops::AddAssign for Verdict {
    fn add_assign(&mut self, other: Verdict) {
        self.stale += other.stale;
        self.misplaced += other.misplaced;
    }
}

impl Snapshot {
    fn row(&self, id: i64) -> RowSnapshot {
        self.0[usize::try_from(id).expect("ids start at 0")]
    }

    /// The highest version of `id` finished at this snapshot.
    pub fn floor(&self, id: i64) -> i64 {
        self.row(id).version
    }

    /// Whether `version` of `id`, read after this snapshot, is older than a version committed
    /// before it (allowed while that write's invalidation is on its way: the stale fraction).
    pub fn lagging(&self, id: i64, version: i64) -> bool {
        version < self.row(id).committed
    }

    /// Whether no write of `id` ran at any time between `self` and `after`.
    fn settled(&self, after: &Snapshot, id: i64) -> bool {
        let (b, a) = (self.row(id), after.row(id));
        b.in_flight == 0 && a.in_flight == 0 && b.done == a.done
    }

    fn ids(&self) -> impl Iterator<Item = i64> {
        (0..self.0.len()).map(|id| i64::try_from(id).expect("few rows"))
    }

    /// A row read by id (`version` as read), against this snapshot taken before the read.
    pub fn check_row(&self, id: i64, version: i64) -> Verdict {
        Verdict {
            stale: u64::from(version < self.floor(id)),
            misplaced: 0,
        }
    }

    /// The list of `bucket` (`(id, version)` of its rows), read between `self` and `after`.
    pub fn check_list(&self, after: &Snapshot, bucket: i64, rows: &[(i64, i64)]) -> Verdict {
        let mut verdict = Verdict::default();
        for &(id, version) in rows {
            verdict += self.check_row(id, version);
        }
        for id in self.ids() {
            let present = rows.iter().any(|&(r, _)| r == id);
            let expected = self.row(id).bucket == bucket;
            if self.settled(after, id) && present != expected {
                verdict.misplaced += 1;
            }
        }
        verdict
    }

    /// The count of `bucket`, read between `self` and `after`.
    pub fn check_count(&self, after: &Snapshot, bucket: i64, count: u64) -> Verdict {
        let (mut settled_in, mut unsettled) = (0, 0);
        for id in self.ids() {
            if !self.settled(after, id) {
                unsettled += 1;
            } else if self.row(id).bucket == bucket {
                settled_in += 1;
            }
        }
        Verdict {
            stale: 0,
            misplaced: u64::from(!(settled_in..=settled_in + unsettled).contains(&count)),
        }
    }
}

/// A value per key (the number of child rows of a parent) that writes replace, one generation
/// each; writes of one key are serialized by the caller (under a lock held from
/// [`Generations::begin`] to the commit). A read of a key, taken between two snapshots, must
/// return the value of a generation no older than the highest one finished before it and no
/// newer than the highest one begun after it.
pub struct Generations {
    keys: Vec<std::sync::Mutex<GenerationState>>,
}

struct GenerationState {
    /// The value of each generation; generation 0 is the initial one.
    values: Vec<u64>,
    finished: usize,
}

/// [`Generations`] at one instant: per key, (highest finished, highest begun).
pub struct GenerationSnapshot(Vec<(usize, usize)>);

impl Generations {
    /// Keys `0..n`, each at `initial`.
    pub fn new(n: usize, initial: u64) -> Self {
        Generations {
            keys: (0..n)
                .map(|_| {
                    std::sync::Mutex::new(GenerationState {
                        values: vec![initial],
                        finished: 0,
                    })
                })
                .collect(),
        }
    }

    fn key(&self, key: usize) -> std::sync::MutexGuard<'_, GenerationState> {
        self.keys[key].lock().expect("no panic while held")
    }

    /// A write of `key` to `value` starts; returns its generation. (If it fails, the key keeps
    /// the previous generation's value, which every read that may see this one may see too.)
    pub fn begin(&self, key: usize, value: u64) -> usize {
        let mut k = self.key(key);
        k.values.push(value);
        k.values.len() - 1
    }

    /// The write of generation `generation` left `key` at `value`, as the database says after
    /// it (committed or not).
    pub fn commit(&self, key: usize, generation: usize, value: u64) {
        self.key(key).values[generation] = value;
    }

    /// The write of generation `generation` is committed and invalidated.
    pub fn finish(&self, key: usize, generation: usize) {
        let mut k = self.key(key);
        k.finished = k.finished.max(generation);
    }

    pub fn snapshot(&self) -> GenerationSnapshot {
        GenerationSnapshot(
            (0..self.keys.len())
                .map(|key| {
                    let k = self.key(key);
                    (k.finished, k.values.len() - 1)
                })
                .collect(),
        )
    }

    /// Whether `value`, read between `before` and `after`, is the value of a generation the
    /// read may see.
    pub fn check(
        &self,
        key: usize,
        before: &GenerationSnapshot,
        after: &GenerationSnapshot,
        value: u64,
    ) -> bool {
        let k = self.key(key);
        let (from, to) = (before.0[key].0, after.0[key].1);
        k.values[from..=to].contains(&value)
    }

    /// The value of the highest generation finished at `at`, for reports.
    pub fn floor(&self, key: usize, at: &GenerationSnapshot) -> u64 {
        self.key(key).values[at.0[key].0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_checked_against_the_generations_around_the_read() {
        let counts = Generations::new(1, 3);
        let start = counts.snapshot();
        let g = counts.begin(0, 0);
        let during = counts.snapshot();
        // In flight: the old and the new value are both right.
        assert!(counts.check(0, &start, &during, 3));
        assert!(counts.check(0, &start, &during, 0));
        assert!(!counts.check(0, &start, &during, 1));
        counts.finish(0, g);
        let done = counts.snapshot();
        assert!(
            !counts.check(0, &done, &done, 3),
            "older than a finished write"
        );
        assert!(counts.check(0, &done, &done, 0));
    }

    #[test]
    fn overlapping_writers_keep_the_highest_version_with_its_bucket() {
        let ledger = Ledger::new(1, |_| 0);
        ledger.begin(0);
        ledger.begin(0);
        ledger.finish(0, 2, 1);
        ledger.finish(0, 1, 0);
        let now = ledger.snapshot();
        assert_eq!((now.floor(0), now.row(0).bucket), (2, 1));
    }

    #[test]
    fn a_row_written_during_a_read_is_not_settled() {
        let ledger = Ledger::new(2, |_| 0);
        let before = ledger.snapshot();
        ledger.begin(0);
        ledger.finish(0, 1, 1);
        let after = ledger.snapshot();
        // Row 0 moved meanwhile: either answer is right; row 1 must be listed.
        assert_eq!(before.check_list(&after, 0, &[(1, 0)]), Verdict::default());
        assert_eq!(
            before.check_list(&after, 0, &[(0, 0), (1, 0)]),
            Verdict::default()
        );
        assert_eq!(before.check_list(&after, 0, &[]).misplaced, 1);
        assert_eq!(before.check_count(&after, 0, 1), Verdict::default());
        assert_eq!(before.check_count(&after, 0, 0).misplaced, 1);
        // Settled again: row 0 must be in bucket 1 only, at version 1.
        let later = ledger.snapshot();
        assert_eq!(after.check_list(&later, 1, &[]).misplaced, 1);
        assert_eq!(after.check_list(&later, 1, &[(0, 0)]).stale, 1);
        assert_eq!(after.check_count(&later, 0, 1), Verdict::default());
    }
}
