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

#[cfg(test)]
mod tests {
    use super::*;

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
