//! Put and invalidate on Redis Cluster, where an entry, its stamps and the clock live in
//! different slots and no script may name them together; on one server, puts with more
//! dependencies than one script call should handle take this path too.
//!
//! Each step is a single-key command or script, and the steps are ordered so that any
//! interleaving with another client, or a failure between two steps, errs towards a miss:
//!
//! - **invalidate**: bump the clock (`invalidate.lua` with the clock only), then write the new
//!   stamp into every dependency. Until a stamp is written its dependents still read as hits,
//!   which is what "the invalidation has not returned yet" allows; a failure part-way is
//!   reported and the caller repeats the invalidation.
//! - **put**: read (or create) each stamp (`stamp.lua`), then check the clock
//!   (`check_clock.lua`), then write the entry with the stamps read. An invalidation whose
//!   stamp lands after the stamps were read makes the entry a miss (the recorded stamp is
//!   old); one whose stamp landed before is seen (its count is above the ticket), or, if that
//!   stamp has since been lost, its clock bump is (the clock is read after the stamps).

use std::sync::Arc;

use tokio::task::JoinSet;

use super::{Error, Lua, RedisBackend, Result, entry_header, millis, stamp_keep};
use crate::backend::{PutOutcome, PutRequest};

static STAMP: &str = include_str!("../lua/stamp.lua");
static CHECK_CLOCK: &str = include_str!("../lua/check_clock.lua");

/// The scripts of the spread protocol.
pub(super) struct Scripts {
    /// Shared with the tasks that read stamps concurrently.
    stamp: Arc<Lua>,
    check_clock: Lua,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            stamp: Arc::new(Lua::new(STAMP)),
            check_clock: Lua::new(CHECK_CLOCK),
        }
    }
}

impl RedisBackend {
    pub(super) async fn put_spread(&self, request: PutRequest<'_>) -> Result<PutOutcome> {
        let ttl = millis(request.ttl);
        let nonce = self.nonce();
        let keys: Arc<[Vec<u8>]> = request
            .deps
            .iter()
            .map(|dep| self.stamp_key_bytes(dep))
            .collect();
        // 1. The stamps, each in its own slot, a batch at a time in flight.
        let mut stamps = vec![(Vec::new(), 0_i64); keys.len()];
        let batch = self.inner.config.invalidate_batch.max(1);
        for (at, chunk) in keys.chunks(batch).enumerate() {
            self.read_stamps(chunk, at * batch, ttl, nonce, &mut stamps)
                .await?;
        }
        // 2. The ticket: against the stamps just read, then against the clock, read after
        // them.
        if let Some(ticket) = request.ticket {
            let newer = stamps.iter().any(|(stamp, _)| {
                std::str::from_utf8(stamp)
                    .ok()
                    .and_then(super::parse_clock)
                    .is_some_and(|s| s.epoch == ticket.epoch && s.clock > ticket.clock)
            });
            if newer {
                return Ok(PutOutcome::Stale);
            }
            let missing = stamps.iter().any(|&(_, created)| created == 1);
            let mut invocation = self.inner.spread.check_clock.call(1);
            invocation
                .key(&self.inner.clock_key)
                .arg(ticket.epoch)
                .arg(ticket.clock)
                .arg(if missing { "1" } else { "0" });
            let mut conn = self.conn()?;
            let ok: i64 = self.run("put", invocation.invoke_async(&mut conn)).await?;
            if ok != 1 {
                return Ok(PutOutcome::Stale);
            }
        }
        // 3. The entry, with the stamps it was checked against, as `put.lua` writes it.
        let mut entry = entry_header(request.deps);
        for (i, (stamp, _)) in stamps.iter().enumerate() {
            if i > 0 {
                entry.push(b',');
            }
            entry.extend_from_slice(stamp);
        }
        entry.push(b';');
        entry.extend_from_slice(&request.value);
        let mut conn = self.conn()?;
        let _: () = self
            .run(
                "put",
                redis::cmd("SET")
                    .arg(self.entry_key(request.key))
                    .arg(entry)
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn),
            )
            .await?;
        self.inner.known.remember(request.key, &keys);
        Ok(PutOutcome::Stored)
    }

    /// Reads (or creates) the stamps of `keys`, concurrently, into `into[offset..]`.
    async fn read_stamps(
        &self,
        keys: &[Vec<u8>],
        offset: usize,
        ttl: u64,
        nonce: u64,
        into: &mut [(Vec<u8>, i64)],
    ) -> Result<()> {
        let mut reads = JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let mut conn = self.conn()?;
            let (script, key) = (Arc::clone(&self.inner.spread.stamp), key.clone());
            reads.spawn(async move {
                let reply: redis::RedisResult<(Vec<u8>, i64)> = script
                    .call(1)
                    .key(key)
                    .arg(ttl)
                    .arg(nonce)
                    .arg(stamp_keep(ttl))
                    .invoke_async(&mut conn)
                    .await;
                (offset + i, reply)
            });
        }
        self.run("put", async {
            while let Some(done) = reads.join_next().await {
                let (i, reply) = done
                    .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
                into[i] = reply?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn invalidate_spread(&self, deps: &[String]) -> Result<()> {
        let mut invocation = self.inner.invalidate.call(1);
        invocation
            .key(&self.inner.clock_key)
            .arg(self.nonce())
            .arg(millis(self.inner.config.stale_window));
        let mut conn = self.conn()?;
        let stamp: String = self
            .run("invalidate", invocation.invoke_async(&mut conn))
            .await?;
        let ttl = millis(self.inner.config.stale_window);
        let mut writes = JoinSet::new();
        for dep in deps {
            let mut conn = self.conn()?;
            let cmd = redis::cmd("SET")
                .arg(self.stamp_key(dep))
                .arg(&stamp)
                .arg("PX")
                .arg(ttl)
                .clone();
            writes.spawn(async move { cmd.query_async::<()>(&mut conn).await });
        }
        self.run("invalidate", async {
            while let Some(done) = writes.join_next().await {
                done.map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))??;
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            Error::Backend {
                message, source, ..
            } => Error::Backend {
                backend: "redis",
                message: format!("invalidation stopped part-way, repeat it: {message}"),
                source,
            },
            other => other,
        })
    }
}
