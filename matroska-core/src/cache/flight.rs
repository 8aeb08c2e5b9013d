//! In-process single-flight: one load of a key at a time, shared by every caller of this
//! process that missed the key while it ran.
//!
//! The start of each caller and of each read of a leader are numbered from one counter per
//! cache ([`Clock`], [`Mark`]), so "this caller started before that read began" is a
//! comparison; the fill protocol (`fill.rs`) decides with it which followers may use what the
//! leader got.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::OnceCell;

use super::fill::Outcome;

/// key -> the load in progress.
pub(super) type Flights = Mutex<HashMap<String, Weak<Flight>>>;

/// A point in a cache's history: a caller's start, or the start of a leader's read (of
/// another process's value, or the load). Ordered as they happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mark(pub(crate) u64);

/// Hands out [`Mark`]s, one counter per cache.
#[derive(Debug, Default)]
pub(super) struct Clock(AtomicU64);

impl Clock {
    /// The next point. Taken by a caller as it starts (before its read of the key) and by a
    /// leader just before a read or load goes out: a caller whose mark is lower than a read's
    /// started before that read began, so every invalidation that returned before the caller
    /// started had returned before the read began too, and the read reflects it.
    pub(super) fn mark(&self) -> Mark {
        Mark(self.0.fetch_add(1, Ordering::SeqCst))
    }
}

/// One in-process load of a key, shared by every caller that missed it meanwhile.
pub(super) struct Flight {
    /// What the leader ended with, failures included: when the load fails, every caller
    /// waiting on it gets the failure at once instead of each running its own load one after
    /// another.
    pub(super) outcome: OnceCell<Outcome>,
}

pub(super) fn lock(flights: &Flights) -> MutexGuard<'_, HashMap<String, Weak<Flight>>> {
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Joins the flight of `key`, starting one when none runs.
pub(super) fn join<'a>(flights: &'a Flights, key: &'a str) -> FlightHold<'a> {
    let mut map = lock(flights);
    let flight = match map.get(key).and_then(Weak::upgrade) {
        Some(flight) => flight,
        None => {
            let flight = Arc::new(Flight {
                outcome: OnceCell::new(),
            });
            map.insert(key.to_owned(), Arc::downgrade(&flight));
            flight
        }
    };
    FlightHold {
        flights,
        key,
        flight: Some(flight),
    }
}

/// A flight of this caller's own, which nobody joins: for a caller parked in a blocking call
/// on a current-thread runtime ([`crate::blocking`]), which must not wait for a load another
/// task of that runtime leads (that task cannot run until the caller returns). Its hold
/// leaves the map alone: the key's entry, if any, is another flight's.
pub(super) fn alone<'a>(flights: &'a Flights, key: &'a str) -> FlightHold<'a> {
    FlightHold {
        flights,
        key,
        flight: Some(Arc::new(Flight {
            outcome: OnceCell::new(),
        })),
    }
}

/// Takes `flight` out of the map (if it is still the key's flight): callers from here on
/// start their own.
pub(super) fn leave(flights: &Flights, key: &str, flight: &Arc<Flight>) {
    let mut map = lock(flights);
    if map
        .get(key)
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(flight)))
    {
        map.remove(key);
    }
}

/// One caller's hold on a flight. The last hold to go removes the flight's map entry, also
/// when its caller is dropped mid-load (a request time-out, a client gone): otherwise the map
/// would keep an entry for every key whose load was abandoned and never asked for again.
pub(super) struct FlightHold<'a> {
    flights: &'a Flights,
    key: &'a str,
    /// `Some` until dropped.
    flight: Option<Arc<Flight>>,
}

impl FlightHold<'_> {
    pub(super) fn flight(&self) -> &Arc<Flight> {
        self.flight
            .as_ref()
            .expect("a hold has its flight until it is dropped")
    }
}

impl Drop for FlightHold<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.flights);
        // Let go under the lock, where every upgrade happens too: of two holds dropped at
        // once, the second always sees no strong reference left.
        drop(self.flight.take());
        if map.get(self.key).is_some_and(|w| w.strong_count() == 0) {
            map.remove(self.key);
        }
    }
}
