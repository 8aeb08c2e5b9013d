//! Batch reads: [`Cache::get_many`], and [`Cache::get_or_load_many`] for the "one value per
//! row of this page" pattern (a count per article of a list), so a page of N lookups costs
//! one backend call instead of N.
//!
//! The batch load keeps the stale-set guard of [`Cache::get_or_load`] (a ticket taken before
//! the loader runs guards every put) but not its stampede control: there is no flight per key
//! and no fill lease, so two callers missing the same keys at once both load them. Per-key
//! single flight would make a batch wait on each key's leader one after the other, or split
//! the loader's one query into several; for the per-row lookups this serves (cheap queries,
//! refilled in one batch), a duplicate load now and then costs less than either.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Cache, Loaded};
use crate::backend::{PutOutcome, PutRequest, Ticket};
use crate::dependency::Dependency;
use crate::error::{Error, Result};
use crate::observe::{Counter, backend_error, count};

impl Cache {
    /// The values under `keys`, in order (`None` for each miss), in one backend call: on Redis
    /// one round trip for keys this process has read or stored before (one more for the
    /// others), where as many [`Cache::get`] calls would take one each.
    ///
    /// Each answer is what [`Cache::get`] would give: undecodable bytes are a miss (and
    /// dropped), and a failing backend makes every key a miss (with a warning); use
    /// [`Cache::try_get_many`] to see the error. A key given twice is answered twice.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use matroska_core::{Cache, Dependency};
    ///
    /// let cache = Cache::memory();
    /// cache.put("likes:1", &3, &[Dependency::id("article", 1)], None).await?;
    /// let likes: Vec<Option<u32>> = cache.get_many(&["likes:1", "likes:2"]).await?;
    /// assert_eq!(likes, [Some(3), None]);
    /// # Ok::<_, matroska_core::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::KeyTooLong`] only.
    pub async fn get_many<T, K>(&self, keys: &[K]) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned,
        K: AsRef<str>,
    {
        match self.try_get_many(keys).await {
            Err(e) if e.is_backend_failure() => {
                backend_error(self.name(), "get");
                tracing::warn!(keys = keys.len(), error = %e, "cache read failed; treating it as misses");
                Ok(keys.iter().map(|_| None).collect())
            }
            other => other,
        }
    }

    /// Like [`Cache::get_many`], but backend failures are returned instead of read as misses.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`], [`Error::Backend`], [`Error::Timeout`].
    pub async fn try_get_many<T, K>(&self, keys: &[K]) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned,
        K: AsRef<str>,
    {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        for key in &keys {
            self.check_key(key)?;
        }
        let found = self.inner.backend.get_many(&keys).await?;
        self.decode_many(&keys, found).await
    }

    /// Decodes what [`Backend::get_many`](crate::backend::Backend::get_many) found.
    async fn decode_many<T: DeserializeOwned>(
        &self,
        keys: &[&str],
        found: Vec<Option<Bytes>>,
    ) -> Result<Vec<Option<T>>> {
        if found.len() != keys.len() {
            return Err(Error::Backend {
                backend: self.name(),
                message: format!("get_many answered {} of {} keys", found.len(), keys.len()),
                source: None,
            });
        }
        let mut values = Vec::with_capacity(keys.len());
        for (key, bytes) in keys.iter().zip(found) {
            values.push(match bytes {
                Some(bytes) => self.decode_or_drop(key, &bytes).await,
                None => None,
            });
        }
        let hits = values.iter().filter(|v| v.is_some()).count();
        tracing::debug!(keys = keys.len(), hits, "cache batch read");
        count(Counter::Hit, self.name(), hits as u64);
        count(Counter::Miss, self.name(), (keys.len() - hits) as u64);
        Ok(values)
    }

    /// One value per item of `items` (say, a count per article of a page), each cached under
    /// `key(item)`: the hits in one backend call, the misses from one call of `loader`.
    ///
    /// `loader` gets the items whose keys missed (a clone of the first item of each missing
    /// key, in order) and returns one value with its dependencies per item, in the same order. Like
    /// [`Cache::get_or_load`], the puts are guarded by a ticket taken before `loader` runs,
    /// so a value loaded across an invalidation of one of its dependencies is returned but not
    /// cached; the others are. Unlike it, concurrent callers missing the same keys do not share
    /// one load (see the module notes in `cache/batch.rs`): there is no single flight and no
    /// fill lease here.
    ///
    /// Round trips on Redis: one for the reads (when this process read or stored the keys
    /// before; on a single server), and on a miss one for the ticket and one for all the puts.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use matroska_core::{Cache, Dependency};
    ///
    /// let cache = Cache::memory();
    /// let article_ids = [1_i64, 2, 3];
    /// // The favourites count of each article on the page, cached per article.
    /// let counts: Vec<u64> = cache
    ///     .get_or_load_many(&article_ids, |id| format!("favorites:{id}"), None, |missing| async move {
    ///         // One query for the missing ids only:
    ///         // SELECT article_id, count(*) FROM favorites WHERE article_id IN (...) GROUP BY 1
    ///         Ok::<_, std::io::Error>(
    ///             missing
    ///                 .into_iter()
    ///                 .map(|id| (id as u64 * 10, vec![Dependency::id("favorite_article", id)]))
    ///                 .collect(),
    ///         )
    ///     })
    ///     .await?;
    /// assert_eq!(counts, [10, 20, 30]);
    /// # Ok::<_, matroska_core::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::Load`] with the loader's error, or when it returns another number of values
    /// than it was given items; [`Error::KeyTooLong`], [`Error::Encode`],
    /// [`Error::ValueTooLarge`] for bad input. Backend failures are not returned: the values
    /// are loaded and returned uncached.
    pub async fn get_or_load_many<I, T, F, Fut, E>(
        &self,
        items: &[I],
        key: impl Fn(&I) -> String,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Vec<T>>
    where
        I: Clone,
        T: Serialize + DeserializeOwned,
        F: FnOnce(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<Loaded<T>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let keys: Vec<String> = items.iter().map(&key).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for key in &key_refs {
            self.check_key(key)?;
        }
        let backend = &self.inner.backend;
        let (mut values, degraded) = match backend.get_many(&key_refs).await {
            Ok(found) => (self.decode_many(&key_refs, found).await?, false),
            Err(e) if e.is_backend_failure() => {
                backend_error(self.name(), "get");
                tracing::warn!(keys = keys.len(), error = %e, "cache read failed; loading without the cache");
                (keys.iter().map(|_| None).collect(), true)
            }
            Err(e) => return Err(e),
        };
        // The missing keys, each once (its first item goes to the loader), and where each
        // missing position takes its value from.
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut missing: Vec<usize> = Vec::new();
        for (at, value) in values.iter().enumerate() {
            if value.is_none() {
                first.entry(key_refs[at]).or_insert_with(|| {
                    missing.push(at);
                    missing.len() - 1
                });
            }
        }
        if missing.is_empty() {
            return Ok(values.into_iter().flatten().collect());
        }
        let s = &self.inner.settings;
        // Taken before the load: an invalidation that lands while the loader runs makes the
        // puts of the values depending on it refuse (the stale-set guard of `get_or_load`).
        let ticket: Option<Option<Ticket>> = if degraded {
            None
        } else if s.stale_set_protection {
            match backend.ticket().await {
                Ok(ticket) => Some(Some(ticket)),
                Err(e) => {
                    backend_error(self.name(), "ticket");
                    tracing::warn!(error = %e, "could not take a ticket; the values will not be cached");
                    None
                }
            }
        } else {
            Some(None)
        };
        let loaded = loader(missing.iter().map(|&at| items[at].clone()).collect()).await;
        count(Counter::Load, self.name(), missing.len() as u64);
        let loaded = loaded.map_err(|e| Error::Load(e.into()))?;
        if loaded.len() != missing.len() {
            return Err(Error::Load(
                format!(
                    "the batch loader returned {} values for {} keys; it must return one per \
                     item it is given, in order",
                    loaded.len(),
                    missing.len()
                )
                .into(),
            ));
        }
        let mut encoded = Vec::with_capacity(missing.len());
        let mut deps = Vec::with_capacity(missing.len());
        for (&at, (value, value_deps)) in missing.iter().zip(loaded) {
            encoded.push(self.encode(key_refs[at], &value)?);
            deps.push(encode_deps(&value_deps));
            values[at] = Some(value);
        }
        if let Some(ticket) = ticket {
            self.put_loaded(&key_refs, &missing, &encoded, &deps, ttl, ticket)
                .await;
        }
        // Positions that repeat a missing key take its value, decoded from the bytes it was
        // encoded into (no `Clone` needed of `T`).
        let mut out = Vec::with_capacity(values.len());
        for (at, value) in values.into_iter().enumerate() {
            match value {
                Some(value) => out.push(value),
                None => {
                    let loaded = first
                        .get(key_refs[at])
                        .and_then(|&i| encoded.get(i))
                        .map(|bytes| s.codec.decode(bytes, s.schema_version));
                    match loaded {
                        Some(Ok(value)) => out.push(value),
                        Some(Err(e)) => return Err(e),
                        // Every missing position's key has a loaded value by construction.
                        None => {
                            return Err(Error::Load(
                                "internal error: a missing key was not loaded".into(),
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores the loaded values in one [`Backend::put_many`](crate::backend::Backend::put_many)
    /// call, each guarded by `ticket`; failures are logged, not returned (the caller has its
    /// values).
    async fn put_loaded(
        &self,
        keys: &[&str],
        missing: &[usize],
        encoded: &[Bytes],
        deps: &[Vec<String>],
        ttl: Option<Duration>,
        ticket: Option<Ticket>,
    ) {
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.inner.settings.default_ttl);
        let requests = missing
            .iter()
            .zip(encoded)
            .zip(deps)
            .map(|((&at, bytes), deps)| {
                PutRequest::new(keys[at], bytes.clone(), deps, ttl).guarded_by(ticket)
            })
            .collect();
        match self.inner.backend.put_many(requests).await {
            Ok(outcomes) => {
                let stored = outcomes
                    .iter()
                    .filter(|o| **o == PutOutcome::Stored)
                    .count();
                let refused = outcomes.len() - stored;
                tracing::debug!(stored, refused, "cache batch put");
                count(Counter::Put, self.name(), stored as u64);
                count(Counter::StaleRefused, self.name(), refused as u64);
            }
            Err(e) => {
                backend_error(self.name(), "put");
                tracing::warn!(keys = missing.len(), error = %e, "cache write failed; values not cached");
            }
        }
    }
}

/// Dependencies encoded, sorted and without repeats, as a put takes them.
pub(super) fn encode_deps(deps: &[Dependency]) -> Vec<String> {
    let mut encoded: Vec<String> = deps.iter().map(Dependency::encode).collect();
    encoded.sort_unstable();
    encoded.dedup();
    encoded
}
