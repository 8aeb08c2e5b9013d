//! Dependencies collected from models by hand, in the seed's style.

use matroska_core::{CacheDeps, Dependency};

/// The primary-key dependencies of `rows`, for a value computed from them by hand (the
/// seed's `sa_dependencies(articles)`). Chain several calls for related rows; duplicates are
/// harmless ([`Cache::put`](matroska_core::Cache::put) removes them).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::{Cache, CacheDeps, Dependency};
///
/// struct Article { id: i64 }
/// impl CacheDeps for Article {
///     fn entity_name() -> &'static str { "article" }
///     fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [matroska_core::Value::Int(self.id.into())]) }
/// }
///
/// let cache = Cache::memory();
/// let articles = vec![Article { id: 1 }, Article { id: 2 }];
/// let titles = vec!["Python", "Cache"];
/// let mut deps = matroska_seaorm::row_dependencies(&articles);
/// // A list that new rows can enter depends on the entity too.
/// deps.extend(matroska_seaorm::entity_dependencies::<Article>());
/// cache.put("articles-list", &titles, &deps, None).await?;
///
/// cache.invalidate(&[articles[1].primary_key()]).await?;
/// assert!(!cache.has("articles-list").await?);
/// # Ok::<_, matroska_core::Error>(()) }).unwrap();
/// ```
pub fn row_dependencies<'a, M>(rows: impl IntoIterator<Item = &'a M>) -> Vec<Dependency>
where
    M: CacheDeps + 'a,
{
    rows.into_iter().map(CacheDeps::primary_key).collect()
}

/// The dependencies any write to `M`'s entity invalidates (its scope's `any_change` and
/// `all`): for a value that a new row could change, when no scope condition describes it.
pub fn entity_dependencies<M: CacheDeps>() -> Vec<Dependency> {
    let name = M::entity_name();
    vec![
        Dependency::any_change(name),
        Dependency::invalidate_all(name),
    ]
}
