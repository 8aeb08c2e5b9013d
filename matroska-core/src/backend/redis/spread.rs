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
//!   reported and the caller repeats the invalidation. Each stamp's script publishes its
//!   dependency for near caches on the stamp's master, after writing it (`set_stamp.lua`).
//! - **invalidate**: (continued) each stamp is written by `set_stamp.lua`, which keeps a
//!   higher count of the same epoch: two invalidations may take their counts in one order
//!   and write in the other, and a stamp must never go backwards within an epoch.
//! - **put**: read each stamp, marking a missing one pending (`stamp.lua`), then check the
//!   clock (`check_clock.lua`, which also returns its reading), then replace each pending
//!   stamp with that reading (`resolve.lua`), then write the entry with the stamps read. An
//!   invalidation whose stamp lands after the stamps were read makes the entry a miss (the
//!   recorded stamp is old); one whose stamp landed before is seen (its count is above the
//!   ticket), or, if that stamp has since been lost, its clock bump is (the clock is read
//!   after the stamps, and the re-created stamp carries that reading). The entry records the
//!   clock's owner then: if the clock changes owner before the entry is written, it is a miss.
//!   The entry is written by `write_entry.lua`, which also publishes its key for near caches
//!   (a cluster `delete` uses it too).

use std::sync::Arc;

use tokio::task::JoinSet;

use super::{Error, Lua, RedisBackend, Result, bad_reply, entry_header, millis, stamp_keep};
use crate::backend::{PutOutcome, PutRequest, Ticket};

static STAMP: &str = include_str!("lua/stamp.lua");
static CHECK_CLOCK: &str = include_str!("lua/check_clock.lua");
static RESOLVE: &str = include_str!("lua/resolve.lua");
static SET_STAMP: &str = include_str!("lua/set_stamp.lua");
static WRITE_ENTRY: &str = include_str!("lua/write_entry.lua");

/// The scripts of the spread protocol.
pub(super) struct Scripts {
    /// Shared with the tasks that run single-key scripts concurrently.
    stamp: Arc<Lua>,
    check_clock: Lua,
    resolve: Arc<Lua>,
    set_stamp: Arc<Lua>,
    /// Writes or deletes an entry and publishes its key (near caches).
    pub(super) write_entry: Lua,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            stamp: Arc::new(Lua::new(STAMP)),
            check_clock: Lua::new(CHECK_CLOCK),
            resolve: Arc::new(Lua::new(RESOLVE)),
            set_stamp: Arc::new(Lua::new(SET_STAMP)),
            write_entry: Lua::new(WRITE_ENTRY),
        }
    }
}

/// Whether a stamp is a pending creation (`stamp.lua`), to be replaced by a clock reading.
fn is_pending(stamp: &[u8]) -> bool {
    stamp.first() == Some(&b'p')
}

/// A stamp as `(epoch, count)`, or `None` for a pending or an older layout's value.
fn parse_stamp(stamp: &[u8]) -> Option<Ticket> {
    std::str::from_utf8(stamp).ok().and_then(super::parse_clock)
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
        // 1. The stamps, each in its own slot, a batch at a time in flight; a missing one is
        // marked pending.
        let mut stamps = vec![Vec::new(); keys.len()];
        let batch = self.inner.config.invalidate_batch.max(1);
        for (at, chunk) in keys.chunks(batch).enumerate() {
            self.read_stamps(chunk, at * batch, ttl, nonce, &mut stamps)
                .await?;
        }
        let pending: Vec<usize> = (0..stamps.len())
            .filter(|&i| is_pending(&stamps[i]))
            .collect();
        // 2. The ticket against the stamps just read, then against the clock, read after
        // them; the clock's reading is also what the pending stamps get, and its owner what
        // the entry records (incarnation.rs), so the clock is read by unguarded puts too.
        let mut unverifiable = false;
        if let Some(ticket) = request.ticket {
            let parsed: Vec<Option<Ticket>> = stamps.iter().map(|s| parse_stamp(s)).collect();
            if parsed
                .iter()
                .flatten()
                .any(|s| s.epoch == ticket.epoch && s.clock > ticket.clock)
            {
                return Ok(PutOutcome::Stale);
            }
            // Pending, another epoch's or an older layout's: cannot be compared with the
            // ticket, so only a clock that has not moved past it vouches for them.
            unverifiable = parsed
                .iter()
                .any(|s| s.is_none_or(|s| s.epoch != ticket.epoch));
        }
        let (ok, reading, owner) = self.check_clock(request.ticket, unverifiable).await?;
        let mut stale = !ok;
        if !pending.is_empty() {
            // Resolved even by a refused put, so that the next load can store.
            stale |= !self
                .resolve(&keys, &mut stamps, &pending, &reading, ttl)
                .await?;
        }
        if stale {
            return Ok(PutOutcome::Stale);
        }
        // 3. The entry, with the stamps it was checked against, as `put.lua` writes it.
        let mut entry = entry_header(request.deps);
        for (i, stamp) in stamps.iter().enumerate() {
            if i > 0 {
                entry.push(b',');
            }
            entry.extend_from_slice(stamp);
        }
        entry.push(b';');
        entry.extend_from_slice(owner.as_bytes());
        entry.push(b';');
        entry.extend_from_slice(&request.value);
        // --- near cache (issue 19): written and its key published in one script, so that
        // another process drops a near copy this value replaces (as `put.lua` does).
        self.write_entry(request.key, &entry, ttl, "put").await?;
        // --- end near cache ---
        self.inner.known.remember(request.key, &keys);
        Ok(PutOutcome::Stored)
    }

    /// Writes `entry` (or deletes it, when empty) and publishes the key on the near-cache
    /// channel, in one script on the entry's master (`write_entry.lua`); whether there was
    /// something to write or delete.
    pub(super) async fn write_entry(
        &self,
        key: &str,
        entry: &[u8],
        ttl: u64,
        operation: &'static str,
    ) -> Result<bool> {
        let mut invocation = self.inner.spread.write_entry.call(1);
        invocation
            .key(self.entry_key(key))
            .arg(entry)
            .arg(ttl)
            .arg(self.near_channel())
            .arg(super::near::key_message(key));
        let mut conn = self.conn()?;
        let answer: redis::Value = self
            .run(operation, invocation.invoke_async(&mut conn))
            .await?;
        self.done_or_refused(answer)
    }

    /// A script's `n`, or `{n, error}` when its near-cache `PUBLISH` was refused (warned
    /// once; the write stands).
    pub(super) fn done_or_refused(&self, answer: redis::Value) -> Result<bool> {
        let done = match answer {
            redis::Value::Array(mut parts) if parts.len() == 2 => {
                super::broadcast_refused(&self.near_channel(), parts.get(1));
                parts.swap_remove(0)
            }
            other => other,
        };
        let done: i64 = redis::from_redis_value(done).map_err(|e| Error::backend("redis", e))?;
        Ok(done == 1)
    }

    /// Runs `check_clock.lua`: whether a put with `ticket` may store, the clock's reading
    /// `<epoch>:<count>`, taken after the stamps were read, and the clock's owner as an entry
    /// records it.
    async fn check_clock(
        &self,
        ticket: Option<Ticket>,
        unverifiable: bool,
    ) -> Result<(bool, String, String)> {
        let mut invocation = self.inner.spread.check_clock.call(1);
        invocation.key(&self.inner.clock_key);
        match ticket {
            Some(t) => invocation.arg(t.epoch).arg(t.clock),
            None => invocation.arg("").arg(0),
        };
        invocation
            .arg(if unverifiable { "1" } else { "0" })
            .arg(self.nonce());
        let mut conn = self.conn()?;
        let (ok, reading, owner): (i64, String, String) =
            self.run("put", invocation.invoke_async(&mut conn)).await?;
        if super::parse_clock(&reading).is_none() {
            return Err(bad_reply("a clock reading that is not `<epoch>:<count>`"));
        }
        if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad_reply("a clock owner that is not a run id"));
        }
        Ok((ok == 1, reading, owner))
    }

    /// Replaces the pending stamps `stamps[pending]` with the clock `reading` (`resolve.lua`,
    /// concurrently). False when one of them no longer held the pending value this put saw
    /// (an invalidation or another put replaced it): the put then refuses.
    async fn resolve(
        &self,
        keys: &[Vec<u8>],
        stamps: &mut [Vec<u8>],
        pending: &[usize],
        reading: &str,
        ttl: u64,
    ) -> Result<bool> {
        let mut calls = JoinSet::new();
        for &i in pending {
            let mut conn = self.conn()?;
            let script = Arc::clone(&self.inner.spread.resolve);
            let (key, seen, reading) = (keys[i].clone(), stamps[i].clone(), reading.to_owned());
            calls.spawn(async move {
                script
                    .call(1)
                    .key(key)
                    .arg(seen)
                    .arg(reading)
                    .arg(stamp_keep(ttl))
                    .invoke_async::<i64>(&mut conn)
                    .await
            });
        }
        let replaced = self
            .run("put", async {
                let mut all = true;
                while let Some(done) = calls.join_next().await {
                    all &= done.map_err(|e| {
                        redis::RedisError::from(std::io::Error::other(e.to_string()))
                    })?? == 1;
                }
                Ok(all)
            })
            .await?;
        for &i in pending {
            stamps[i] = reading.as_bytes().to_vec();
        }
        Ok(replaced)
    }

    /// Reads the stamps of `keys` (marking missing ones pending), concurrently, into
    /// `into[offset..]`.
    async fn read_stamps(
        &self,
        keys: &[Vec<u8>],
        offset: usize,
        ttl: u64,
        nonce: u64,
        into: &mut [Vec<u8>],
    ) -> Result<()> {
        let mut reads = JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let mut conn = self.conn()?;
            let (script, key) = (Arc::clone(&self.inner.spread.stamp), key.clone());
            reads.spawn(async move {
                let reply: redis::RedisResult<Vec<u8>> = script
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
        let stamp = self.spread_bump_clock().await?;
        self.spread_write_stamps(deps, &stamp).await
    }

    /// The first step of an invalidation on a cluster: bump the clock, returning the stamp
    /// to write. Public only so that tests can interleave two invalidations' steps.
    #[doc(hidden)]
    pub async fn spread_bump_clock(&self) -> Result<String> {
        let mut invocation = self.inner.invalidate.call(1);
        // '1': restart the epoch if the clock's server changed (a failover), so that counts
        // handed out never fall below stamps already written on the other servers.
        invocation
            .key(&self.inner.clock_key)
            .arg(self.nonce())
            .arg(millis(self.inner.config.stale_window))
            .arg("1");
        let mut conn = self.conn()?;
        self.run("invalidate", invocation.invoke_async(&mut conn))
            .await
    }

    /// The second step of an invalidation on a cluster: write `stamp` (from
    /// [`RedisBackend::spread_bump_clock`]) into the stamps of `deps`. Public only so that
    /// tests can interleave two invalidations' steps.
    #[doc(hidden)]
    pub async fn spread_write_stamps(&self, deps: &[String], stamp: &str) -> Result<()> {
        let ttl = millis(self.inner.config.stale_window);
        let mut writes = JoinSet::new();
        for dep in deps {
            let mut conn = self.conn()?;
            let (script, key, stamp) = (
                Arc::clone(&self.inner.spread.set_stamp),
                self.stamp_key(dep),
                stamp.to_owned(),
            );
            let nonce = self.nonce();
            // --- near cache (issue 19): each stamp's script publishes its dependency on the
            // stamp's master, after writing it (set_stamp.lua), always (a process without a
            // near cache still invalidates those that have one).
            let (channel, message) = (
                self.near_channel(),
                super::near::deps_message([dep.as_bytes()]),
            );
            // --- end near cache ---
            writes.spawn(async move {
                script
                    .call(1)
                    .key(key)
                    .arg(stamp)
                    .arg(ttl)
                    .arg(nonce)
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<redis::Value>(&mut conn)
                    .await
            });
        }
        self.run("invalidate", async {
            let mut refused = None;
            while let Some(done) = writes.join_next().await {
                let answer = done
                    .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))??;
                if let redis::Value::Array(mut parts) = answer
                    && parts.len() == 2
                {
                    refused = parts.pop();
                }
            }
            if let Some(why) = refused {
                super::broadcast_refused(&self.near_channel(), Some(&why));
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
