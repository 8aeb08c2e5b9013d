//! Restarts that restore old state: a server restarted from an RDB or AOF snapshot brings back
//! entries together with the stamps they recorded, all older than the invalidations made
//! since the snapshot, so comparing stamps alone would serve them (issue 16, item 16).
//!
//! What a restore cannot bring back is the server instance: every start of `redis-server`
//! draws a new `run_id`, and every connection to the old instance is dropped. So:
//!
//! - **the clock is owned by a run id** (`<epoch>:<count>:<run id>`): `ticket.lua` and
//!   `check_clock.lua` give the clock to this instance (a fresh epoch) when another instance
//!   owns it, and a guarded put refuses then (a ticket from before the restart never stores
//!   after it, even before anything here ran). Puts and invalidations that start a missing
//!   clock give it to this instance too;
//! - **every entry records the clock's owner** when it was stored (its first
//!   [`OWNER_RECORDED`] characters; `put.lua`, and `check_clock.lua` for the step-by-step
//!   put), and a read serves it only while the clock still has that owner: the read fetches
//!   the clock in the `MGET` it sends for the stamps anyway. A clock lost on the same instance
//!   (evicted under `allkeys-*`) comes back with the same owner, so that drops no entry;
//! - **every read checks that its connection was verified**: it pipelines `CLIENT GETNAME`
//!   before its `GET`/`MGET`. Verifying a connection runs `ticket.lua` on it (which gives a
//!   clock another instance owned, a restored clock or the old master's after a failover, to
//!   this instance, so every entry stored under the old owner becomes a miss), then names the
//!   connection with a fresh name in the same pipeline, and only then does this backend
//!   remember the name. A reconnect (which a restart always causes) gives a connection
//!   without a name, so the first read on it verifies before it trusts anything; a reconnect
//!   to the same instance finds the clock owned by it and drops nothing.
//!
//! Invariant: a read serves an entry only if, in the same pipeline on the same connection,
//! the connection's name is the one this backend gave it after the server instance behind it
//! owned the clock, and the clock's owner is the one the entry recorded. An entry restored by
//! a restart recorded the old instance's run id (or an owner older releases wrote); the
//! verification gives the clock the new instance's before the name is given, and run ids
//! are random (equal 64-bit prefixes: 2^-64). Puts and invalidations do not verify: an entry
//! stored on the restored instance before its first verification recorded the restored owner,
//! and the verification drops it too. Guarded by
//! `a_restart_from_a_snapshot_serves_nothing_it_restored` and
//! `a_reconnect_to_the_same_server_keeps_every_entry` in `tests/redis_backend.rs`.
//!
//! Not covered: Redis Cluster (its client hides which connection a command takes, so reads
//! there do not check the owner), a proxy that keeps client connections open across a server
//! restart, a master demoted to a replica while the connection stays open, and keys restored
//! into a running server (`RESTORE`), which keep its run id.

use std::sync::{Arc, Mutex, PoisonError};

use super::{Error, RedisBackend, Result};
use crate::backend::redis::lua::TICKET;

/// What this backend knows of its connection's verification.
#[derive(Default)]
pub(super) struct Incarnation {
    /// The name given to the connection verified last; `None` before the first verification.
    verified: Mutex<Option<Arc<str>>>,
    /// One verification at a time: the readers that find the connection new wait for the
    /// first one instead of each verifying (and renaming) it.
    verifying: tokio::sync::Mutex<()>,
}

/// The verified name a read compared its connection's name with, to hand to
/// [`RedisBackend::verify`] when they differed.
pub(super) type Seen = Option<Arc<str>>;

impl Incarnation {
    /// `Ok(())` when `name` (the connection's `CLIENT GETNAME`) is the name this backend gave
    /// the connection it verified last, else what it compared with.
    pub(super) fn check(&self, name: Option<&str>) -> std::result::Result<(), Seen> {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*verified, name) {
            (Some(v), Some(n)) if **v == *n => Ok(()),
            _ => Err(verified.clone()),
        }
    }
}

/// How many characters of the clock's owner (a run id: 40) an entry records: 64 bits.
pub(super) const OWNER_RECORDED: usize = 16;

/// Whether the clock `<epoch>:<count>:<owner>` (as a read fetched it) still has the owner an
/// entry recorded (its first [`OWNER_RECORDED`] characters).
pub(super) fn owner_is_current(recorded: &[u8], clock: Option<&[u8]>) -> bool {
    clock
        .and_then(|c| c.splitn(3, |&b| b == b':').nth(2))
        .is_some_and(|owner| &owner[..owner.len().min(OWNER_RECORDED)] == recorded)
}

/// Appends `CLIENT GETNAME` to a read's pipeline: its reply tells whether the commands that
/// follow run on a verified connection.
pub(super) fn ask_name(pipe: &mut redis::Pipeline) {
    pipe.cmd("CLIENT").arg("GETNAME");
}

impl RedisBackend {
    /// Verifies the server instance the connection reaches now (see the module
    /// documentation), unless another verification finished since the caller saw `seen`.
    pub(super) async fn verify(&self, seen: Seen) -> Result<()> {
        let incarnation = &self.inner.incarnation;
        let _one = incarnation.verifying.lock().await;
        {
            let verified = incarnation
                .verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *verified != seen {
                // Another caller verified meanwhile: the caller reads again and compares.
                return Ok(());
            }
        }
        let name = format!("matroska-{:016x}", self.nonce());
        let mut pipe = redis::pipe();
        // The script's body, not its hash: a restarted server has no scripts cached, and a
        // pipeline cannot fall back from EVALSHA. Verifications are rare.
        pipe.cmd("EVAL")
            .arg(TICKET)
            .arg(1)
            .arg(&self.inner.clock_key)
            .arg(self.nonce())
            .cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name);
        let mut conn = self.conn()?;
        // Both replies or an error: the name is remembered only when the script ran on the
        // connection that got it (a pipeline is sent on one connection, in order).
        let (clock, ()): (String, ()) = self
            .run("verify", pipe.query_async(&mut conn))
            .await
            .map_err(|e| match e {
                Error::Backend {
                    message, source, ..
                } => Error::Backend {
                    backend: "redis",
                    message: format!(
                        "could not verify a new connection against server restarts (it runs \
                         ticket.lua and CLIENT SETNAME; reads need CLIENT GETNAME): {message}"
                    ),
                    source,
                },
                other => other,
            })?;
        tracing::debug!(prefix = %self.inner.config.prefix, %clock, "verified a new Redis connection");
        *incarnation
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(name.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_verified_name_passes() {
        let i = Incarnation::default();
        assert_eq!(i.check(None), Err(None));
        assert_eq!(i.check(Some("x")), Err(None));
        let name: Arc<str> = "matroska-1".into();
        *i.verified.lock().unwrap() = Some(name.clone());
        assert_eq!(i.check(Some("matroska-1")), Ok(()));
        assert_eq!(i.check(None), Err(Some(name.clone())));
        assert_eq!(i.check(Some("matroska-2")), Err(Some(name)));
    }

    #[test]
    fn owners_compare_with_the_clocks_third_field() {
        let clock = b"12:5:0123456789abcdef0123456789abcdef01234567";
        assert!(owner_is_current(b"0123456789abcdef", Some(clock)));
        assert!(!owner_is_current(b"0123456789abcde", Some(clock)));
        assert!(!owner_is_current(b"0123456789abcdef0", Some(clock)));
        assert!(!owner_is_current(b"12", Some(clock)));
        // The owner '0' an older release wrote.
        assert!(owner_is_current(b"0", Some(b"12:5:0")));
        assert!(!owner_is_current(b"0123456789abcdef", None));
        assert!(!owner_is_current(b"0123456789abcdef", Some(b"12:5")));
    }
}
