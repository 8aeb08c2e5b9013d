//! A model check of the Redis fill protocol (issue 16): an exhaustive breadth-first search of
//! every interleaving of loaders (ticket, database read, guarded put), invalidators (database
//! write, invalidation, `WAIT`) and a nemesis (losing the stamp, the clock or the
//! entry to eviction or expiry; a restart or failover that rolls keys back to what a replica
//! had; a restart from a snapshot, item 16), within small bounds, on one server and on a cluster. It checks the product's
//! promise, in every state reached (as a read there would see it): no value loaded before an
//! invalidation is served after that invalidation returned.
//!
//! Each step is what the server runs atomically: one script on one server; on a cluster each
//! single-key command or script is its own step (each step function names the script it
//! models). The model re-states the protocol rather than running the scripts, so it checks
//! the design; the integration tests (`tests/support/stamps.rs`) check that the scripts
//! implement it. [`Variant::OLD`] reproduces the layout before the fixes (created stamps
//! `c<nonce>`, plain `SET` of stamps on a cluster, no epoch restart by a cluster
//! invalidation), and the checker must find counterexamples there: it is known to fail.
//!
//! Bounds: one row (one dependency, one cache key), two loaders doing one fill each, two
//! invalidators doing one write each (retried when a failover may have lost it), and a fault
//! budget for the nemesis. One dependency is enough:
//! entries of other dependencies are independent, and the bulk-versus-single-row reordering
//! of item 5 needs only two invalidations of the same row.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast non-cryptographic hasher (rustc's Fx): the search hashes millions of small states.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.write_u64(u64::from(b));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A stamp's value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum Stamp {
    /// `<epoch>:<count>`.
    At(u8, u8),
    /// `p<nonce>`, written by `stamp.lua` or `set_stamp.lua` (a fresh number).
    Pending(u8),
    /// `c<nonce>`, the old layout's created stamp, by the loader with this index.
    Legacy(u8),
}

/// The clock `<epoch>:<count>:<owner>` (owner: a server instance's run id, 0 for '0').
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Clock {
    epoch: u8,
    count: u8,
    owner: u8,
}

/// An entry: the version of the row it holds, the stamp and the clock owner it recorded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Entry {
    version: u8,
    recorded: Stamp,
    owner: u8,
}

/// The keys of one prefix, wherever they live.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
struct Keys {
    clock: Option<Clock>,
    stamp: Option<Stamp>,
    entry: Option<Entry>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Ticket {
    epoch: u8,
    count: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum LoaderPhase {
    Idle,
    Ticketed,
    Loaded,
    /// Cluster: the stamp was read (`stamp.lua`).
    StampRead,
    /// Cluster: the clock was checked (`check_clock.lua`).
    Clocked,
    /// Cluster: the pending stamp was resolved (`resolve.lua`).
    Resolved,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Loader {
    phase: LoaderPhase,
    ticket: Ticket,
    /// The row version loaded.
    version: u8,
    /// The stamp read, then the one to record.
    seen: Option<Stamp>,
    /// Old cluster layout: this put created the stamp.
    created: bool,
    /// Whether the put may still store.
    ok: bool,
    /// The clock's reading from `check_clock.lua`.
    reading: (u8, u8),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum InvalidatorPhase {
    Idle,
    /// The row was written (committed); the invalidation has not started.
    Written,
    /// Cluster: the clock was bumped; the stamp is still to write.
    Bumped,
    /// The stamp was written; `WAIT` and return are left.
    Stamped,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Invalidator {
    phase: InvalidatorPhase,
    /// The version its write produced.
    version: u8,
    /// The stamp its bump handed out.
    stamp: (u8, u8),
    /// A failover since it started writing: its `WAIT` fails and it is repeated.
    lost: bool,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    keys: Keys,
    /// What the replicas hold (synced by `WAIT` and by the nemesis), restored by a failover.
    replica: Keys,
    /// The last snapshot (RDB `SAVE`, taken at any time), restored by a restart (item 16).
    snapshot: Keys,
    /// Readers' connections have not been verified since the last restart or failover
    /// (incarnation.rs): a read first runs `ticket.lua`.
    unverified: bool,
    /// The run id of the server instance holding the clock (all keys on one server): new on
    /// every failover and restart.
    rid: u8,
    next_epoch: u8,
    /// The row's version in the database.
    db: u8,
    /// The newest version written by an invalidation that returned.
    returned: u8,
    faults: u8,
    loaders: [Loader; 2],
    invalidators: [Invalidator; 2],
}

/// Which protocol is checked.
#[derive(Clone, Copy, Debug)]
struct Variant {
    /// Stamps, clock and entry in different slots: each single-key step is its own step.
    cluster: bool,
    /// Item 1: created stamps carry the clock's reading (on a cluster: pending, resolved with
    /// the reading of `check_clock.lua`), not `c<nonce>`.
    created_from_clock: bool,
    /// Item 5: a cluster invalidation's stamp never moves a stamp backwards within an epoch
    /// (`set_stamp.lua`), and the cluster's clock bump restarts the epoch after a failover.
    never_backwards: bool,
    /// Item 16: entries record the clock's owner, a read serves one only while the clock has
    /// it and verifies a new connection first (`ticket.lua`), and clocks started by puts and
    /// invalidations are owned by the server (one server only: reads on a cluster do not
    /// check the owner).
    incarnation: bool,
}

impl Variant {
    const NEW: Variant = Variant {
        cluster: false,
        created_from_clock: true,
        never_backwards: true,
        incarnation: true,
    };
    const OLD: Variant = Variant {
        cluster: false,
        created_from_clock: false,
        never_backwards: false,
        incarnation: false,
    };

    fn on_cluster(self) -> Variant {
        Variant {
            cluster: true,
            ..self
        }
    }
}

/// How far the search goes.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    loaders: usize,
    invalidators: usize,
    /// Nemesis actions (losses, failovers) per run.
    faults: u8,
    /// Whether the nemesis may fail servers over (and replicas sync).
    failover: bool,
    /// Whether the nemesis may restart the server from its last snapshot (one server).
    restore: bool,
}

struct Model {
    variant: Variant,
    bounds: Bounds,
}

impl State {
    fn initial(bounds: Bounds) -> State {
        let idle = Loader {
            phase: LoaderPhase::Idle,
            ticket: Ticket { epoch: 0, count: 0 },
            version: 0,
            seen: None,
            created: false,
            ok: true,
            reading: (0, 0),
        };
        let mut loaders = [idle; 2];
        for l in loaders.iter_mut().skip(bounds.loaders) {
            l.phase = LoaderPhase::Done;
        }
        let inv = Invalidator {
            phase: InvalidatorPhase::Idle,
            version: 0,
            stamp: (0, 0),
            lost: false,
        };
        let mut invalidators = [inv; 2];
        for i in invalidators.iter_mut().skip(bounds.invalidators) {
            i.phase = InvalidatorPhase::Done;
        }
        State {
            keys: Keys::default(),
            replica: Keys::default(),
            snapshot: Keys::default(),
            unverified: false,
            rid: 1,
            next_epoch: 1,
            db: 0,
            returned: 0,
            faults: 0,
            loaders,
            invalidators,
        }
    }

    fn fresh_epoch(&mut self) -> u8 {
        self.next_epoch += 1;
        self.next_epoch
    }
}

impl Model {
    /// Every state reachable in one step, with what the step was; `Err` is a violation.
    fn successors(&self, s: &State, out: &mut Vec<(State, Step)>) -> Result<(), String> {
        self.served_fresh(s)?;
        for i in 0..2 {
            if let Some(next) = self.loader_step(s, i) {
                out.push((next, Step::Loader(i, s.loaders[i].phase)));
            }
            if let Some(next) = self.invalidator_step(s, i) {
                out.push((next, Step::Invalidator(i, s.invalidators[i].phase)));
            }
        }
        self.nemesis_steps(s, out);
        Ok(())
    }

    fn loader_step(&self, s: &State, i: usize) -> Option<State> {
        let mut n = s.clone();
        let l = s.loaders[i];
        match l.phase {
            LoaderPhase::Idle => {
                n.loaders[i].ticket = ticket_lua(&mut n);
                n.loaders[i].phase = LoaderPhase::Ticketed;
            }
            LoaderPhase::Ticketed => {
                n.loaders[i].version = s.db;
                n.loaders[i].phase = LoaderPhase::Loaded;
            }
            LoaderPhase::Loaded if !self.variant.cluster => {
                self.put_lua(&mut n, i);
                n.loaders[i].phase = LoaderPhase::Done;
            }
            LoaderPhase::Loaded => {
                self.stamp_lua(&mut n, i);
                n.loaders[i].phase = LoaderPhase::StampRead;
            }
            LoaderPhase::StampRead => {
                let t = l.ticket;
                // The client's check of the stamp read against the ticket.
                if matches!(l.seen, Some(Stamp::At(e, k)) if e == t.epoch && k > t.count) {
                    n.loaders[i].phase = LoaderPhase::Done;
                } else {
                    self.check_clock_lua(&mut n, i);
                    n.loaders[i].phase = LoaderPhase::Clocked;
                }
            }
            LoaderPhase::Clocked if matches!(l.seen, Some(Stamp::Pending(_))) => {
                resolve_lua(&mut n, i);
                n.loaders[i].phase = LoaderPhase::Resolved;
            }
            LoaderPhase::Clocked | LoaderPhase::Resolved => {
                // SET of the entry with the stamp checked.
                if l.ok {
                    n.keys.entry = Some(Entry {
                        version: l.version,
                        recorded: l.seen.expect("a stamp was read or created"),
                        owner: n.keys.clock.map_or(0, |c| c.owner),
                    });
                }
                n.loaders[i].phase = LoaderPhase::Done;
            }
            LoaderPhase::Done => return None,
        }
        Some(n)
    }

    /// `put.lua`, one step on one server.
    fn put_lua(&self, n: &mut State, i: usize) {
        let l = n.loaders[i];
        let t = l.ticket;
        let clock_ok = matches!(n.keys.clock, Some(c) if c.epoch == t.epoch && c.owner == n.rid);
        let mut refuse = !clock_ok;
        if self.variant.incarnation && n.keys.clock.is_none() {
            // The entry records an epoch: a missing clock is started, owned by the server.
            n.keys.clock = Some(Clock {
                epoch: n.fresh_epoch(),
                count: 0,
                owner: n.rid,
            });
        }
        let stamp = match n.keys.stamp {
            None | Some(Stamp::Pending(_)) => {
                let created = if self.variant.created_from_clock {
                    let c = match n.keys.clock {
                        Some(c) => c,
                        None => {
                            let c = Clock {
                                epoch: n.fresh_epoch(),
                                count: 0,
                                owner: 0,
                            };
                            n.keys.clock = Some(c);
                            c
                        }
                    };
                    Stamp::At(c.epoch, c.count)
                } else {
                    // Old: a never-used value; refuse if the clock moved past the ticket.
                    if !refuse && n.keys.clock.is_some_and(|c| c.count > t.count) {
                        refuse = true;
                    }
                    Stamp::Legacy(n.fresh_epoch())
                };
                n.keys.stamp = Some(created);
                created
            }
            Some(stamp) => stamp,
        };
        if !refuse {
            match stamp {
                Stamp::At(e, k) => refuse = e == t.epoch && k > t.count,
                Stamp::Legacy(_) if self.variant.created_from_clock => {
                    refuse = n.keys.clock.is_some_and(|c| c.count > t.count);
                }
                _ => {}
            }
        }
        if !refuse {
            n.keys.entry = Some(Entry {
                version: l.version,
                recorded: stamp,
                owner: n.keys.clock.map_or(0, |c| c.owner),
            });
        }
    }

    /// `stamp.lua` (cluster): read the stamp, creating it when missing.
    fn stamp_lua(&self, n: &mut State, i: usize) {
        if n.keys.stamp.is_none() {
            n.keys.stamp = Some(if self.variant.created_from_clock {
                Stamp::Pending(n.fresh_epoch())
            } else {
                n.loaders[i].created = true;
                Stamp::Legacy(n.fresh_epoch())
            });
        }
        n.loaders[i].seen = n.keys.stamp;
    }

    /// `check_clock.lua` (cluster), run after the stamp was read.
    fn check_clock_lua(&self, n: &mut State, i: usize) {
        let l = n.loaders[i];
        let t = l.ticket;
        if self.variant.created_from_clock {
            let c = match n.keys.clock {
                Some(c) if c.owner == n.rid => c,
                _ => {
                    let c = Clock {
                        epoch: n.fresh_epoch(),
                        count: 0,
                        owner: n.rid,
                    };
                    n.keys.clock = Some(c);
                    c
                }
            };
            let unverifiable = !matches!(l.seen, Some(Stamp::At(e, _)) if e == t.epoch);
            n.loaders[i].ok = c.epoch == t.epoch && !(unverifiable && c.count > t.count);
            n.loaders[i].reading = (c.epoch, c.count);
        } else {
            n.loaders[i].ok = matches!(n.keys.clock, Some(c)
                if c.epoch == t.epoch && c.owner == n.rid && !(l.created && c.count > t.count));
        }
    }

    fn invalidator_step(&self, s: &State, i: usize) -> Option<State> {
        let mut n = s.clone();
        let inv = s.invalidators[i];
        match inv.phase {
            InvalidatorPhase::Idle => {
                // The database write commits.
                n.db += 1;
                n.invalidators[i].version = n.db;
                n.invalidators[i].phase = InvalidatorPhase::Written;
            }
            InvalidatorPhase::Written if !self.variant.cluster => {
                // `invalidate.lua` with the clock and the stamp: one step.
                let (e, k) = self.bump(&mut n, false);
                n.keys.stamp = Some(Stamp::At(e, k));
                n.invalidators[i].phase = InvalidatorPhase::Stamped;
            }
            InvalidatorPhase::Written => {
                // `invalidate.lua` with the clock only.
                n.invalidators[i].stamp = self.bump(&mut n, self.variant.never_backwards);
                n.invalidators[i].phase = InvalidatorPhase::Bumped;
            }
            InvalidatorPhase::Bumped => {
                // `set_stamp.lua`, or the old plain `SET`.
                let (e, k) = inv.stamp;
                if !self.variant.never_backwards {
                    n.keys.stamp = Some(Stamp::At(e, k));
                } else {
                    match n.keys.stamp {
                        Some(Stamp::At(ce, ck)) if ce == e && ck >= k => {}
                        Some(Stamp::At(ce, _)) if ce == e => n.keys.stamp = Some(Stamp::At(e, k)),
                        _ if self.variant.created_from_clock => {
                            n.keys.stamp = Some(Stamp::Pending(n.fresh_epoch()));
                        }
                        _ => n.keys.stamp = Some(Stamp::At(e, k)),
                    }
                }
                n.invalidators[i].phase = InvalidatorPhase::Stamped;
            }
            InvalidatorPhase::Stamped if inv.lost => {
                // `WAIT` failed after a failover: the caller repeats the invalidation.
                n.invalidators[i].lost = false;
                n.invalidators[i].phase = InvalidatorPhase::Written;
            }
            InvalidatorPhase::Stamped => {
                // `WAIT` (every replica has every write so far), then return. Replicas are
                // only followed when failovers are.
                if self.bounds.failover {
                    n.replica = n.keys;
                }
                n.returned = n.returned.max(inv.version);
                n.invalidators[i].phase = InvalidatorPhase::Done;
            }
            InvalidatorPhase::Done => return None,
        }
        Some(n)
    }

    /// The clock bump of `invalidate.lua`; `check_owner`: ARGV[3] = '1' (cluster).
    fn bump(&self, n: &mut State, check_owner: bool) -> (u8, u8) {
        let c = match n.keys.clock {
            Some(c) if !check_owner || c.owner == n.rid => c,
            Some(_) => Clock {
                epoch: n.fresh_epoch(),
                count: 0,
                owner: n.rid,
            },
            None => Clock {
                epoch: n.fresh_epoch(),
                count: 0,
                owner: if check_owner || self.variant.incarnation {
                    n.rid
                } else {
                    0
                },
            },
        };
        let next = Clock {
            count: c.count + 1,
            ..c
        };
        n.keys.clock = Some(next);
        (next.epoch, next.count)
    }

    /// The promise, checked in every state as a read there would see it: an entry is served
    /// when the stamp it recorded is the current one, and must then hold a version no older
    /// than the write of every invalidation that has returned. (A read's `GET` and `MGET` are
    /// taken as one instant: stamps never return to a value an entry recorded once an
    /// invalidation has moved them on, so a read split around other steps serves nothing
    /// that no single instant serves.)
    ///
    /// With [`Variant::incarnation`] on one server, a read on a connection not verified since
    /// the last restart or failover runs `ticket.lua` first, and serves an entry only while
    /// the clock has the owner it recorded.
    fn served_fresh(&self, s: &State) -> Result<(), String> {
        let owners = self.variant.incarnation && !self.variant.cluster;
        let mut read = s.clone();
        if owners && read.unverified {
            ticket_lua(&mut read);
        }
        match read.keys.entry {
            Some(e)
                if read.keys.stamp == Some(e.recorded)
                    && (!owners || read.keys.clock.is_some_and(|c| c.owner == e.owner))
                    && e.version < s.returned =>
            {
                Err(format!(
                    "a read serves version {} after the invalidation of version {} returned",
                    e.version, s.returned
                ))
            }
            _ => Ok(()),
        }
    }

    fn nemesis_steps(&self, s: &State, out: &mut Vec<(State, Step)>) {
        if self.bounds.failover && s.replica != s.keys {
            // A replica catches up (free: replication runs all the time).
            let mut n = s.clone();
            n.replica = n.keys;
            out.push((n, Step::Other("replicas sync")));
        }
        if self.bounds.restore && s.snapshot != s.keys {
            let mut n = s.clone();
            n.snapshot = n.keys;
            out.push((n, Step::Other("SAVE (a snapshot)")));
        }
        if self.variant.incarnation && s.unverified {
            let mut n = s.clone();
            ticket_lua(&mut n);
            n.unverified = false;
            out.push((n, Step::Other("a reader verifies its new connection")));
        }
        if s.faults >= self.bounds.faults {
            return;
        }
        let mut fault = |f: &dyn Fn(&mut State), what: &'static str| {
            let mut n = s.clone();
            n.faults += 1;
            f(&mut n);
            if n.keys != s.keys || n.rid != s.rid {
                out.push((n, Step::Nemesis(what)));
            }
        };
        fault(&|n| n.keys.stamp = None, "stamp lost (evicted or expired)");
        fault(&|n| n.keys.clock = None, "clock lost");
        fault(&|n| n.keys.entry = None, "entry lost");
        if self.bounds.restore {
            fault(
                &|n| {
                    n.keys = n.snapshot;
                    n.rid += 1;
                    n.unverified = true;
                },
                "restart from the snapshot",
            );
        }
        if !self.bounds.failover {
            return;
        }
        let lose_in_flight = |n: &mut State| {
            for inv in &mut n.invalidators {
                if matches!(
                    inv.phase,
                    InvalidatorPhase::Bumped | InvalidatorPhase::Stamped
                ) {
                    inv.lost = true;
                }
            }
        };
        if self.variant.cluster {
            fault(
                &|n| {
                    n.keys.clock = n.replica.clock;
                    n.rid += 1;
                    lose_in_flight(n);
                },
                "failover of the clock's master",
            );
            fault(
                &|n| {
                    n.keys.stamp = n.replica.stamp;
                    lose_in_flight(n);
                },
                "failover of the stamp's master",
            );
        } else {
            fault(
                &|n| {
                    n.keys = n.replica;
                    n.rid += 1;
                    n.unverified = true;
                    lose_in_flight(n);
                },
                "failover (or restart: the replica may be empty)",
            );
        }
    }

    /// Breadth-first search of every reachable state: the number of states, or the shortest
    /// counterexample.
    fn check(&self) -> Result<usize, String> {
        let start = State::initial(self.bounds);
        let mut index: HashMap<State, u32, BuildHasherDefault<Fx>> = HashMap::default();
        // Per state: its parent and the step that led to it, to print a counterexample.
        let mut states: Vec<State> = vec![start.clone()];
        let mut trail: Vec<(u32, Step)> = vec![(0, Step::Other("start"))];
        index.insert(start, 0);
        let mut next = Vec::new();
        let mut at = 0;
        while at < states.len() {
            next.clear();
            if let Err(violation) = self.successors(&states[at], &mut next) {
                let mut steps = Vec::new();
                let mut i = at;
                while i != 0 {
                    steps.push(trail[i].1.to_string());
                    i = trail[i].0 as usize;
                }
                steps.reverse();
                return Err(format!("{violation}; steps:\n  {}", steps.join("\n  ")));
            }
            for (mut n, step) in next.drain(..) {
                // Symmetry: loaders are interchangeable, and so are invalidators (a pending
                // value's nonce is a fresh number, not the actor's index), so states that
                // differ only in their order are one. Actor numbers in a counterexample
                // are positions in the sorted arrays.
                n.loaders.sort_unstable();
                n.invalidators.sort_unstable();
                if !index.contains_key(&n) {
                    let id = u32::try_from(states.len()).expect("fewer than 2^32 states");
                    index.insert(n.clone(), id);
                    states.push(n);
                    trail.push((at as u32, step));
                }
            }
            at += 1;
        }
        Ok(states.len())
    }
}

/// What a step was, for counterexamples.
#[derive(Clone, Copy)]
enum Step {
    /// A loader's step from this phase.
    Loader(usize, LoaderPhase),
    /// An invalidator's step from this phase.
    Invalidator(usize, InvalidatorPhase),
    Nemesis(&'static str),
    Other(&'static str),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Loader(i, from) => write!(f, "loader {i}, from {from:?}"),
            Step::Invalidator(i, from) => write!(f, "invalidator {i}, from {from:?}"),
            Step::Nemesis(what) => write!(f, "nemesis: {what}"),
            Step::Other(what) => f.write_str(what),
        }
    }
}

/// `ticket.lua`: the clock, restarted with a fresh epoch when missing or not this server's.
fn ticket_lua(n: &mut State) -> Ticket {
    let c = match n.keys.clock {
        Some(c) if c.owner == n.rid => c,
        _ => {
            let c = Clock {
                epoch: n.fresh_epoch(),
                count: 0,
                owner: n.rid,
            };
            n.keys.clock = Some(c);
            c
        }
    };
    Ticket {
        epoch: c.epoch,
        count: c.count,
    }
}

/// `resolve.lua` (cluster): the pending stamp this loader saw becomes the clock's reading,
/// if it is still that pending value; otherwise the put refuses.
fn resolve_lua(n: &mut State, i: usize) {
    let l = n.loaders[i];
    let (e, k) = l.reading;
    if n.keys.stamp == l.seen {
        n.keys.stamp = Some(Stamp::At(e, k));
        n.loaders[i].seen = Some(Stamp::At(e, k));
    } else {
        n.loaders[i].ok = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Bounds = Bounds {
        loaders: 2,
        invalidators: 2,
        faults: 1,
        failover: false,
        restore: false,
    };

    fn check(variant: Variant, bounds: Bounds) -> Result<usize, String> {
        let started = std::time::Instant::now();
        let result = Model { variant, bounds }.check();
        eprintln!(
            "{variant:?} {bounds:?}: {:?} in {:?}",
            result.as_ref().map_err(|_| "counterexample"),
            started.elapsed()
        );
        result
    }

    /// Bounds small enough for a debug build in CI (seconds); each covers a different mix.
    const CI: [Bounds; 4] = [
        Bounds {
            loaders: 2,
            invalidators: 2,
            faults: 0,
            failover: false,
            restore: false,
        },
        Bounds {
            loaders: 2,
            invalidators: 1,
            faults: 2,
            failover: false,
            restore: false,
        },
        Bounds {
            loaders: 1,
            invalidators: 2,
            faults: 1,
            failover: false,
            restore: false,
        },
        Bounds {
            loaders: 1,
            invalidators: 1,
            faults: 2,
            failover: true,
            restore: false,
        },
    ];

    /// Larger bounds: minutes in a debug build. `cargo test --release -p matroska-core
    /// --all-features -- --ignored model`.
    const LARGE: [Bounds; 2] = [
        Bounds {
            loaders: 2,
            invalidators: 2,
            faults: 1,
            failover: false,
            restore: false,
        },
        Bounds {
            loaders: 2,
            invalidators: 2,
            faults: 1,
            failover: true,
            restore: false,
        },
    ];

    fn holds(variant: Variant, bounds: &[Bounds]) {
        for &b in bounds {
            let states = check(variant, b).unwrap_or_else(|e| panic!("{b:?}: {e}"));
            assert!(states > 100, "{states} states: the search went nowhere");
        }
    }

    #[test]
    fn the_fixed_protocol_keeps_its_promise_on_one_server() {
        holds(Variant::NEW, &CI);
    }

    #[test]
    fn the_fixed_protocol_keeps_its_promise_on_a_cluster() {
        holds(Variant::NEW.on_cluster(), &CI);
    }

    #[test]
    #[ignore = "minutes in a debug build; run with --release"]
    fn the_fixed_protocol_keeps_its_promise_within_larger_bounds() {
        holds(Variant::NEW, &LARGE);
        holds(Variant::NEW.on_cluster(), &LARGE);
    }

    /// Item 1 with the old creation (`c<nonce>`): found on one server and on a cluster.
    #[test]
    fn the_checker_finds_item_1_with_the_old_creation() {
        let old_creation = Variant {
            created_from_clock: false,
            ..Variant::NEW
        };
        for variant in [old_creation, old_creation.on_cluster()] {
            let bounds = Bounds {
                invalidators: 1,
                ..SMALL
            };
            let found = check(variant, bounds).expect_err("no counterexample");
            assert!(found.contains("stamp lost"), "{found}");
        }
    }

    /// Restarts from a snapshot on one server (item 16), with and without other faults.
    const RESTORE: [Bounds; 2] = [
        Bounds {
            loaders: 2,
            invalidators: 1,
            faults: 1,
            failover: false,
            restore: true,
        },
        Bounds {
            loaders: 1,
            invalidators: 2,
            faults: 2,
            failover: false,
            restore: true,
        },
    ];

    #[test]
    fn the_fixed_protocol_survives_restarts_from_snapshots_on_one_server() {
        holds(Variant::NEW, &RESTORE);
    }

    /// Item 16 without the owner check (entries compared by their stamps only, as before):
    /// a restart from a snapshot serves an entry invalidated after the snapshot.
    #[test]
    fn the_checker_finds_item_16_without_the_owner_check() {
        let stamps_only = Variant {
            incarnation: false,
            ..Variant::NEW
        };
        let found = check(stamps_only, RESTORE[0]).expect_err("no counterexample");
        assert!(found.contains("restart from the snapshot"), "{found}");
    }

    /// Item 5 with the old plain `SET` of stamps on a cluster: found without any fault.
    #[test]
    fn the_checker_finds_item_5_with_the_old_stamp_writes() {
        let old_writes = Variant {
            never_backwards: false,
            ..Variant::NEW
        }
        .on_cluster();
        // Two loaders: the first one's ticket gives the clock an owner, so that the
        // invalidations that follow stay in its epoch.
        let bounds = Bounds { faults: 0, ..SMALL };
        let found = check(old_writes, bounds).expect_err("no counterexample");
        assert!(!found.contains("nemesis"), "{found}");
        assert!(check(Variant::OLD.on_cluster(), bounds).is_err());
    }
}
