//! The cross-process fill lease ([`CacheBuilder::fill_lease`](super::CacheBuilder::fill_lease)):
//! one process loads a missed key while the others poll for its value. The order of asking,
//! polling and giving up is the fill protocol's (`fill.rs`); this module holds the lease
//! itself and makes sure it is let go however the load ends.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Result;

/// How long a waiter sleeps between two reads of the key: often enough to pick up the value
/// soon after it is stored, rarely enough not to load the backend.
pub(super) fn poll_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 20).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// One attempt at the fill lease. The token is chosen here and guarded before the request
/// goes out: if this future is dropped after Redis took the lease but before the reply
/// arrived, the guard still releases it.
pub(super) async fn try_lease(
    backend: &Arc<dyn Backend>,
    key: &str,
    lease_ttl: Duration,
) -> Result<Option<LeaseHold>> {
    let token = crate::nonce::next();
    let mut hold = LeaseHold {
        backend: Arc::clone(backend),
        key: key.to_owned(),
        token: Some(token),
    };
    match backend.try_lease(key, token, lease_ttl).await {
        Ok(true) => Ok(Some(hold)),
        Ok(false) => {
            // Another holder has it: nothing of ours to release.
            hold.token = None;
            Ok(None)
        }
        Err(e) => {
            // Failed or timed out: the SET may still have been applied. The guard's drop
            // releases it (a no-op if the token never held the lease).
            drop(hold);
            Err(e)
        }
    }
}

/// A fill lease this process holds. Released by [`LeaseHold::release`], or on drop from a
/// spawned task when the load was abandoned at an await: a dropped leader must not make the
/// other processes wait out the lease's TTL.
pub(super) struct LeaseHold {
    backend: Arc<dyn Backend>,
    key: String,
    /// `Some` until released.
    token: Option<u64>,
}

impl LeaseHold {
    pub(super) async fn release(mut self) {
        if let Some(token) = self.token {
            if let Err(e) = self.backend.release_lease(&self.key, token).await {
                tracing::debug!(key = self.key, error = %e, "could not release fill lease; it will expire");
            }
            // Cleared only now: dropped during the release above, `drop` releases again.
            self.token = None;
        }
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                key = self.key,
                "abandoned fill lease not released (no runtime); it will expire"
            );
            return;
        };
        let (backend, key) = (Arc::clone(&self.backend), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            if let Err(e) = backend.release_lease(&key, token).await {
                tracing::debug!(key, error = %e, "could not release abandoned fill lease; it will expire");
            }
        });
    }
}
