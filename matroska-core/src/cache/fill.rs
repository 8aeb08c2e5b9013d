//! The fill protocol of [`Cache::get_or_load`]: what the leader of a flight does on a miss
//! (lease, ticket, load, guarded put), what it ends with ([`Outcome`]), and which followers
//! may use that ([`Outcome::for_follower`]).
//!
//! The leader's steps are a pure state ([`Fill`]), stepped by the async driver
//! ([`Cache::lead`]) which only does the I/O, in the manner of quinn-proto and rustls: the
//! model check next to this file (`model.rs`) drives the same state through every
//! interleaving with followers and invalidations within small bounds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::flight::{self, Flight, Mark};
use super::lease::{self, LeaseHold};
use super::{Cache, Loaded};
use crate::backend::{PutOutcome, Ticket};
use crate::error::{Error, Result};
use crate::observe::{Counter, backend_error, count};

/// A failed shared load, as the callers that waited on it see it.
#[derive(Debug, Clone)]
pub(crate) struct SharedLoadError(pub(crate) Arc<str>);

impl std::fmt::Display for SharedLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the shared load of this key failed: {}", self.0)
    }
}

impl std::error::Error for SharedLoadError {}

/// What the leader of a flight ended with. The leader's own caller always gets the value it
/// loaded (its read did happen during its call); the followers get what
/// [`Outcome::for_follower`] allows.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The guarded put stored the value: no dependency was invalidated between the ticket
    /// (taken before the load) and the put, and every follower joined before the put (the
    /// leader leaves the flight when the load returns), so every follower may use it.
    Stored(Bytes),
    /// Another process's value, read from the backend while waiting on its lease. The read
    /// reflects every invalidation that returned before it began, no later one.
    Delivered {
        /// The value read.
        bytes: Bytes,
        /// When the read began.
        read: Mark,
    },
    /// Loaded, but nothing checked it against invalidations (the backend failed the read, the
    /// ticket or the put; or stale-set protection is off and the backend is failing).
    Unchecked {
        /// The value loaded.
        bytes: Bytes,
        /// When the load began.
        load: Mark,
    },
    /// The guarded put was refused: a dependency was invalidated during the load. For the
    /// leader's own caller only.
    Refused,
    /// The load failed (or its value could not be encoded): every caller gets the failure.
    Failed(SharedLoadError),
}

/// What a follower does with a flight's [`Outcome`].
#[derive(Debug)]
pub(crate) enum Share<'a> {
    /// Use these bytes.
    Use(&'a Bytes),
    /// Nothing usable for this follower: go round again (read, join the next flight).
    Retry,
    /// Return the leader's failure.
    Fail(&'a SharedLoadError),
}

impl Outcome {
    /// What a follower that started at `started` may take from this outcome. A value read or
    /// loaded before the follower started may predate an invalidation that returned before it
    /// started, so such a value is the follower's only when a guarded put proved no such
    /// invalidation happened. (An invalidation that returns while a call runs is concurrent
    /// with it: the call may return what was there before. Counting from the join instead
    /// would send every caller that joined a running unchecked load round again, and an
    /// outage would multiply loads.)
    pub(crate) fn for_follower(&self, started: Mark) -> Share<'_> {
        match self {
            Outcome::Stored(bytes) => Share::Use(bytes),
            // A value read or loaded after this follower started reflects every invalidation
            // that returned before it started; one read earlier may not (issue 15a: the lease
            // holder's value is read, then invalidated, then a caller starts and joins).
            Outcome::Delivered { bytes, read: began }
            | Outcome::Unchecked { bytes, load: began }
                if started < *began =>
            {
                Share::Use(bytes)
            }
            Outcome::Delivered { .. } | Outcome::Unchecked { .. } | Outcome::Refused => {
                Share::Retry
            }
            Outcome::Failed(e) => Share::Fail(e),
        }
    }
}

/// The leader's side of the fill protocol, without I/O: [`Fill::start`] and [`Fill::on`]
/// say what to do next; the driver does it and reports back.
#[derive(Debug, Clone)]
pub(crate) struct Fill {
    phase: Phase,
    /// Guard the put with a ticket (stale-set protection on, backend answering).
    guard: bool,
    /// The backend failed the caller's read: neither lease, ticket nor put (each would only
    /// wait for the same failure), and the value is unchecked.
    degraded: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    Start,
    /// Asking for the lease for the first time: a failure means loading without it.
    Asking,
    /// Another process holds the lease: poll for its value, asking again after each miss (a
    /// holder whose load failed or whose put was refused releases it with no value, and hands
    /// over at once instead of making everyone wait out the lease).
    Waiting,
    Ticket,
    Loading {
        ticket: Option<Ticket>,
        checked: bool,
    },
    Putting {
        bytes: Bytes,
        load: Mark,
    },
    Done,
}

/// What the driver does next.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Ask for the fill lease.
    AskLease,
    /// Wait a poll interval (or report [`Event::OutOfTime`]), then read the key; the read
    /// begins at a fresh mark.
    Poll,
    /// Take a ticket.
    TakeTicket,
    /// Run the loader (it begins at a fresh mark), leave the flight, encode.
    Load,
    /// Put the bytes, guarded by the ticket when there is one.
    Put {
        bytes: Bytes,
        ticket: Option<Ticket>,
    },
    /// Finished: release the lease if held.
    Done(Outcome),
}

/// How the lease request went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LeaseAnswer {
    Held,
    Busy,
    Failed,
}

/// How the read of the key went.
#[derive(Debug, Clone)]
pub(crate) enum ReadAnswer {
    Found(Bytes),
    Missing,
    Failed,
}

/// What happened to the step the driver was told to do.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Lease(LeaseAnswer),
    Read {
        read: Mark,
        answer: ReadAnswer,
    },
    /// The lease would have expired: its holder did not deliver.
    OutOfTime,
    /// The ticket (`None`: the backend failed).
    Ticket(Option<Ticket>),
    Loaded {
        load: Mark,
        bytes: std::result::Result<Bytes, SharedLoadError>,
    },
    /// The put's answer (`None`: the backend failed).
    Put(Option<PutOutcome>),
}

impl Fill {
    /// A fill with a fill lease (`lease`) and stale-set protection (`protect`) as configured;
    /// `degraded` when the backend failed the caller's read.
    pub(crate) fn new(lease: bool, protect: bool, degraded: bool) -> (Fill, Step) {
        let mut fill = Fill {
            phase: Phase::Start,
            guard: protect && !degraded,
            degraded,
        };
        let step = if lease && !degraded {
            fill.phase = Phase::Asking;
            Step::AskLease
        } else {
            fill.load()
        };
        (fill, step)
    }

    fn load(&mut self) -> Step {
        if self.guard {
            self.phase = Phase::Ticket;
            Step::TakeTicket
        } else {
            self.phase = Phase::Loading {
                ticket: None,
                checked: !self.degraded,
            };
            Step::Load
        }
    }

    fn done(&mut self, outcome: Outcome) -> Step {
        self.phase = Phase::Done;
        Step::Done(outcome)
    }

    /// The next step after `event`.
    pub(crate) fn on(&mut self, event: Event) -> Step {
        match (std::mem::replace(&mut self.phase, Phase::Done), event) {
            (Phase::Asking | Phase::Waiting, Event::Lease(LeaseAnswer::Held))
            | (Phase::Asking, Event::Lease(LeaseAnswer::Failed))
            | (Phase::Waiting, Event::OutOfTime)
            | (
                Phase::Waiting,
                Event::Read {
                    answer: ReadAnswer::Failed,
                    ..
                },
            ) => self.load(),
            (Phase::Asking | Phase::Waiting, Event::Lease(_)) => {
                self.phase = Phase::Waiting;
                Step::Poll
            }
            (Phase::Waiting, Event::Read { read, answer }) => match answer {
                ReadAnswer::Found(bytes) => self.done(Outcome::Delivered { bytes, read }),
                _ => {
                    self.phase = Phase::Waiting;
                    Step::AskLease
                }
            },
            (Phase::Ticket, Event::Ticket(ticket)) => {
                self.phase = Phase::Loading {
                    ticket,
                    checked: ticket.is_some(),
                };
                Step::Load
            }
            (Phase::Loading { ticket, checked }, Event::Loaded { load, bytes }) => match bytes {
                Err(e) => self.done(Outcome::Failed(e)),
                Ok(bytes) if !checked => self.done(Outcome::Unchecked { bytes, load }),
                Ok(bytes) => {
                    self.phase = Phase::Putting {
                        bytes: bytes.clone(),
                        load,
                    };
                    Step::Put { bytes, ticket }
                }
            },
            (Phase::Putting { bytes, load }, Event::Put(answer)) => match answer {
                Some(PutOutcome::Stored) => self.done(Outcome::Stored(bytes)),
                Some(PutOutcome::Stale) => self.done(Outcome::Refused),
                None => self.done(Outcome::Unchecked { bytes, load }),
            },
            (phase, event) => {
                debug_assert!(false, "fill protocol out of step: {event:?} in {phase:?}");
                self.done(Outcome::Failed(SharedLoadError(
                    "internal error: the fill protocol went out of step".into(),
                )))
            }
        }
    }
}

impl Cache {
    /// [`Cache::get_or_load`] after its key check: read, join the key's flight, lead it or
    /// follow it.
    pub(super) async fn load_through<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = self.inner.clock.mark();
        let mut loader = Some(loader);
        // Followers retry when the shared load turned out unusable for them; after a few
        // rounds they load on their own rather than wait forever on a hot, churning key.
        for _ in 0..3 {
            let degraded = match self.try_get(key).await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => false,
                Err(e) if e.is_backend_failure() => {
                    backend_error(self.name(), "get");
                    tracing::warn!(key, error = %e, "cache read failed; loading without the cache");
                    true
                }
                Err(e) => return Err(e),
            };
            // Parked in a blocking call on a current-thread runtime, joining a load another
            // task of that runtime leads would wait for a task that cannot run: load alone
            // (still guarded by its ticket; a cross-process lease held by that task bounds the
            // wait by the lease's time).
            let hold = if crate::blocking::parked() {
                flight::alone(&self.inner.flights, key)
            } else {
                flight::join(&self.inner.flights, key)
            };
            let flight = hold.flight();
            let mut own: Option<T> = None;
            let mut own_error: Option<Error> = None;
            let outcome = flight
                .outcome
                // Only the caller that runs this closure leads; it consumes its loader only
                // when it actually loads.
                .get_or_init(|| async {
                    self.lead(
                        key,
                        ttl,
                        degraded,
                        flight,
                        &mut loader,
                        &mut own,
                        &mut own_error,
                    )
                    .await
                })
                .await;
            if let Some(e) = own_error {
                return Err(e);
            }
            if let Some(value) = own {
                return Ok(value);
            }
            match outcome.for_follower(started) {
                Share::Use(bytes) => {
                    if let Some(value) = self.decode_or_drop(key, bytes).await {
                        return Ok(value);
                    }
                }
                Share::Retry => {}
                Share::Fail(shared) => return Err(Error::Load(Box::new(shared.clone()))),
            }
            if loader.is_none() {
                break;
            }
        }
        // The flights kept turning out unusable for this caller (refused as stale, or read or
        // loaded unchecked before this caller started): load without coalescing.
        match loader.take() {
            Some(loader) => {
                let (value, _deps) = loader().await.map_err(|e| Error::Load(e.into()))?;
                count(Counter::Load, self.name(), 1);
                Ok(value)
            }
            None => Err(Error::Load(
                "the shared load of this key produced no usable value".into(),
            )),
        }
    }

    /// The leader's part of a flight: steps a [`Fill`] through lease, ticket, load and put.
    /// The loaded value goes to `own` (the leader's caller), a failure of its own to
    /// `own_error`; the outcome is what the followers see.
    #[allow(clippy::too_many_arguments)] // The driver's state, each borrowed for the fill.
    async fn lead<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        degraded: bool,
        flight: &Arc<Flight>,
        loader: &mut Option<F>,
        own: &mut Option<T>,
        own_error: &mut Option<Error>,
    ) -> Outcome
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let s = &self.inner.settings;
        let backend = &self.inner.backend;
        let lease_ttl = s.fill_lease.unwrap_or_default();
        let (mut fill, mut step) =
            Fill::new(s.fill_lease.is_some(), s.stale_set_protection, degraded);
        // Held by a guard since before it was asked for: a caller dropped at any await still
        // hands the lease over at once instead of making other processes wait it out.
        let mut held: Option<LeaseHold> = None;
        let mut asked_before = false;
        let mut deadline = None;
        let mut deps = Vec::new();
        let outcome = loop {
            let event = match step {
                Step::AskLease => {
                    let answer = match lease::try_lease(backend, key, lease_ttl).await {
                        Ok(Some(hold)) => {
                            held = Some(hold);
                            LeaseAnswer::Held
                        }
                        Ok(None) => LeaseAnswer::Busy,
                        Err(e) => {
                            if !asked_before {
                                tracing::debug!(key, error = %e, "could not take fill lease; loading anyway");
                            }
                            LeaseAnswer::Failed
                        }
                    };
                    asked_before = true;
                    Event::Lease(answer)
                }
                Step::Poll => {
                    // Someone else is loading: poll for their value until the lease would
                    // have expired.
                    let deadline =
                        *deadline.get_or_insert_with(|| tokio::time::Instant::now() + lease_ttl);
                    if tokio::time::Instant::now() >= deadline {
                        tracing::debug!(key, "fill lease holder did not deliver in time; loading");
                        Event::OutOfTime
                    } else {
                        tokio::time::sleep(lease::poll_interval(lease_ttl)).await;
                        let read = self.inner.clock.mark();
                        let answer = match backend.get(key).await {
                            Ok(Some(bytes)) => ReadAnswer::Found(bytes),
                            Ok(None) => ReadAnswer::Missing,
                            Err(_) => ReadAnswer::Failed,
                        };
                        Event::Read { read, answer }
                    }
                }
                Step::TakeTicket => match backend.ticket().await {
                    Ok(ticket) => Event::Ticket(Some(ticket)),
                    Err(e) => {
                        backend_error(self.name(), "ticket");
                        tracing::warn!(key, error = %e, "could not take a ticket; the value will not be cached");
                        Event::Ticket(None)
                    }
                },
                Step::Load => {
                    let Some(load) = loader.take() else {
                        // Unreachable in practice: a caller whose loader is gone has returned
                        // already.
                        let e = Error::Load("this caller's loader already ran".into());
                        break Outcome::Failed(SharedLoadError(Arc::from(e.to_string())));
                    };
                    let mark = self.inner.clock.mark();
                    let loaded = load().await.map_err(|e| Error::Load(e.into()));
                    count(Counter::Load, self.name(), 1);
                    // New callers from here on start their own flight (and find the value
                    // once it is put): only callers that joined while the load ran share its
                    // result, and they do only when the guarded put proves no dependency was
                    // invalidated since the ticket.
                    flight::leave(&self.inner.flights, key, flight);
                    let bytes = loaded.and_then(|(value, loaded_deps)| {
                        let bytes = self.encode(key, &value);
                        *own = Some(value);
                        deps = loaded_deps;
                        bytes
                    });
                    Event::Loaded {
                        load: mark,
                        bytes: bytes.map_err(|e| {
                            let shared = SharedLoadError(Arc::from(e.to_string()));
                            *own_error = Some(e);
                            shared
                        }),
                    }
                }
                Step::Put { bytes, ticket } => {
                    match self.put_bytes(key, bytes, &deps, ttl, ticket).await {
                        Ok(outcome) => Event::Put(Some(outcome)),
                        Err(e) => {
                            backend_error(self.name(), "put");
                            tracing::warn!(key, error = %e, "cache write failed; value not cached");
                            Event::Put(None)
                        }
                    }
                }
                Step::Done(outcome) => break outcome,
            };
            step = fill.on(event);
        };
        flight::leave(&self.inner.flights, key, flight);
        if let Some(hold) = held {
            hold.release().await;
        }
        outcome
    }
}
