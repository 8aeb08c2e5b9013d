//! The fast-fail: after a connection failure (or a few time-outs in a row), operations fail at
//! once for [`RedisConfig::retry_after`](super::RedisConfig::retry_after) instead of each
//! waiting for the time-out, so that during an outage a read costs a miss, not a time-out.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// One slow command is not an outage: the fast-fail trips at once on a connection error, but
/// only after this many time-outs in a row.
const TIMEOUTS_TO_TRIP: u32 = 3;

/// The fast-fail state of one backend.
#[derive(Debug)]
pub(super) struct Breaker {
    retry_after: Duration,
    /// Fail fast until this many ms after `epoch` (0: healthy).
    down_until_ms: AtomicU64,
    /// Time-outs in a row; the breaker trips at [`TIMEOUTS_TO_TRIP`].
    timeouts_in_a_row: AtomicU32,
    epoch: Instant,
}

/// What [`Breaker::admit`] saw, for [`Breaker::record`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted {
    down_until_ms: u64,
}

impl Breaker {
    pub(super) fn new(retry_after: Duration) -> Self {
        Breaker {
            retry_after,
            down_until_ms: AtomicU64::new(0),
            timeouts_in_a_row: AtomicU32::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `operation` may be sent now: an error while the breaker is tripped.
    pub(super) fn admit(&self, operation: &'static str) -> Result<Admitted> {
        let down_until_ms = self.down_until_ms.load(Ordering::Relaxed);
        if down_until_ms != 0 && self.now_ms() < down_until_ms {
            return Err(Error::Backend {
                backend: "redis",
                message: format!(
                    "Redis failed recently; `{operation}` not sent (retrying after {:?})",
                    self.retry_after
                ),
                source: None,
            });
        }
        Ok(Admitted { down_until_ms })
    }

    /// Takes the outcome of an admitted operation into account.
    pub(super) fn record<T>(&self, admitted: Admitted, result: &Result<T>) {
        let redis_error = match result {
            Err(Error::Backend {
                source: Some(source),
                ..
            }) => source.downcast_ref::<redis::RedisError>(),
            _ => None,
        };
        let timed_out = matches!(result, Err(Error::Timeout { .. }))
            || redis_error.is_some_and(redis::RedisError::is_timeout);
        match result {
            _ if timed_out => {
                let in_a_row = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= TIMEOUTS_TO_TRIP {
                    self.trip();
                }
            }
            Err(_) if redis_error.is_some_and(super::connection::is_connection_error) => {
                self.trip();
            }
            Ok(_) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                if admitted.down_until_ms != 0 {
                    self.down_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!("Redis answers again");
                }
            }
            Err(_) => {}
        }
    }

    fn trip(&self) {
        let pause = u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX);
        if pause > 0 {
            self.down_until_ms.store(
                self.now_ms().saturating_add(pause).max(1),
                Ordering::Relaxed,
            );
        }
    }
}
