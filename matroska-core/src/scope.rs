//! Scopes: which cached lists a created, deleted or modified object touches.
//!
//! A cached list that depends only on the primary keys of the rows it holds does not notice a
//! *new* row that belongs in it. A [`Scope`] fixes that: it describes, for one kind of object,
//! the filters the application caches lists by (`published`, `category`), and extracts those
//! fields' values from an object. A list cached with [`Scope::condition`]`(published = true,
//! category = "fantasy")` depends on that condition; saving an object runs
//! [`Scope::invalidate_for`], which invalidates exactly the conditions the object matches.
//!
//! ## The dependencies a scope hands out
//!
//! | dependency | put with | invalidated by |
//! |---|---|---|
//! | `Condition(scope, fields)` | lists filtered by `fields` | [`Scope::invalidate_for`] of an object matching it, unless no watched field was modified |
//! | `Condition(scope, {})` ([`Scope::any_change`]) | lists whose filter the scope cannot describe (production-mode fallback) | every [`Scope::invalidate_for`]: the empty condition matches every object |
//! | `InvalidateAll(scope)` ([`Scope::all`]) | every list of the scope, with the above | writes that cannot be narrowed to objects (bulk updates, raw SQL): [`Scope::invalidate_all`] |
//!
//! ## Conditions over a subset of an extractor's fields
//!
//! An extractor describing `(published, category)` also serves lists filtered by
//! `category` alone or `published` alone: [`Scope::invalidate_for`] invalidates the condition
//! for every non-empty subset of its fields (for extractors of up to
//! [`MAX_SUBSET_FIELDS`] fields; larger extractors serve only their full field set).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use matroska_core::{Cache, Scope, Value};
//!
//! struct Article { published: bool, category: String }
//!
//! let scope = Scope::<Article>::new("Article")
//!     .describe(&["published", "category"], |a| {
//!         Some(vec![Value::from(a.published), Value::from(&a.category)])
//!     });
//! let cache = Cache::memory();
//! let fantasy = scope.condition([("published", true.into()), ("category", "fantasy".into())])?;
//! let sci_fi = scope.condition([("category", "sci-fi".into()), ("published", true.into())])?;
//! cache.put("fantasy", &["Dune?"], &fantasy, None).await?;
//! cache.put("sci-fi", &["Dune"], &sci_fi, None).await?;
//!
//! // A new published fantasy book enters the fantasy list only.
//! let book = Article { published: true, category: "fantasy".into() };
//! scope.invalidate_for(&book, &cache, None).await?;
//! assert!(!cache.has("fantasy").await?);
//! assert!(cache.has("sci-fi").await?);
//! # Ok::<_, matroska_core::Error>(()) }).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::backend::Invalidated;
use crate::cache::Cache;
use crate::dependency::Dependency;
use crate::error::{Error, Result};
use crate::fold::Fold;
use crate::value::Value;

/// Extractors with at most this many fields serve conditions over any subset of their fields.
pub const MAX_SUBSET_FIELDS: usize = 4;

/// What a condition over undescribed fields does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeMode {
    /// Fail with [`Error::UnknownScopeFields`]: a typo is found at once.
    Development,
    /// Log a warning and depend on [`Scope::any_change`] instead: correct, coarser.
    Production,
}

impl Default for ScopeMode {
    /// `Development` in debug builds, `Production` in release builds.
    fn default() -> Self {
        if cfg!(debug_assertions) {
            ScopeMode::Development
        } else {
            ScopeMode::Production
        }
    }
}

type ExtractFn<T> = dyn Fn(&T) -> Option<Vec<Value>> + Send + Sync;

struct Extractor<T: ?Sized> {
    /// The fields, in the order the extractor returns their values.
    fields: Vec<String>,
    extract: Arc<ExtractFn<T>>,
    /// Whether the extractor may opt out (`None`) because of fields it does not describe
    /// (a `when` guard): it is consulted on every write and serves its full field set only.
    guarded: bool,
    /// The modified fields (columns) that make it run: its own fields, or the ones
    /// [`Scope::describe_watching`] names.
    watch: Vec<String>,
}

/// A family of cached lists over one kind of object; see the [module docs](self).
pub struct Scope<T: ?Sized> {
    name: String,
    mode: ScopeMode,
    extractors: Vec<Extractor<T>>,
    /// How each field's string values compare in the database (see [`Fold`]).
    folds: BTreeMap<String, Fold>,
}

impl<T: ?Sized> Clone for Extractor<T> {
    fn clone(&self) -> Self {
        Extractor {
            fields: self.fields.clone(),
            extract: Arc::clone(&self.extract),
            guarded: self.guarded,
            watch: self.watch.clone(),
        }
    }
}

/// Cloning is cheap (the extractors are shared), so a scope declared once, such as the
/// `&'static` one `#[scope(...)]` generates, can be copied with another [`ScopeMode`]:
/// `Article::scope().clone().mode(ScopeMode::Production)`.
impl<T: ?Sized> Clone for Scope<T> {
    fn clone(&self) -> Self {
        Scope {
            name: self.name.clone(),
            mode: self.mode,
            extractors: self.extractors.clone(),
            folds: self.folds.clone(),
        }
    }
}

impl<T: ?Sized> fmt::Debug for Scope<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field(
                "extractors",
                &self
                    .extractors
                    .iter()
                    .map(|e| &e.fields)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<T: ?Sized> Scope<T> {
    /// A scope named `name` (usually the entity or table name), with no extractors yet and the
    /// default [`ScopeMode`].
    pub fn new(name: impl Into<String>) -> Self {
        Scope {
            name: name.into(),
            mode: ScopeMode::default(),
            extractors: Vec::new(),
            folds: BTreeMap::new(),
        }
    }

    /// Folds `field`'s string values with `fold` on both sides — in the conditions lists are
    /// cached by and in those a written object invalidates — so that values its column's
    /// collation considers equal make one condition (see [`Fold`]).
    ///
    /// ```
    /// use matroska_core::{Fold, Scope, Value};
    ///
    /// struct Book { category: String }
    /// let scope = Scope::<Book>::new("Book")
    ///     .describe(&["category"], |b| Some(vec![Value::from(&b.category)]))
    ///     .fold("category", Fold::CI_AI);
    /// let list = scope.condition([("category", Value::from("Fantasy"))])?;
    /// let saved = scope.dependencies_for(&Book { category: "fantasy ".into() }, None);
    /// assert!(saved.contains(&list[0]));
    /// # Ok::<_, matroska_core::Error>(())
    /// ```
    #[must_use]
    pub fn fold(mut self, field: &str, fold: Fold) -> Self {
        if fold.is_exact() {
            self.folds.remove(field);
        } else {
            self.folds.insert(field.to_owned(), fold);
        }
        self
    }

    /// The fold of `field` ([`Fold::EXACT`] unless [`Scope::fold`] set one).
    pub fn field_fold(&self, field: &str) -> Fold {
        self.folds.get(field).copied().unwrap_or_default()
    }

    /// Sets what a condition over undescribed fields does.
    #[must_use]
    pub fn mode(mut self, mode: ScopeMode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds an extractor for `fields`. `extract` returns the fields' values in the same order,
    /// or `None` when the object can be in no list filtered by these fields (then nothing is
    /// invalidated for this extractor). Whether it returns `None` must depend on `fields`
    /// only; for a guard on other fields use [`Scope::describe_guarded`].
    ///
    /// An extractor whose closure returns a different number of values than `fields`, or
    /// panics, is a programming error: an error in development mode (see
    /// [`Scope::try_dependencies_for_change`]), the whole scope invalidated in production
    /// mode, which is coarse but never stale.
    #[must_use]
    pub fn describe<F>(self, fields: &[&str], extract: F) -> Self
    where
        F: Fn(&T) -> Option<Vec<Value>> + Send + Sync + 'static,
    {
        self.push(fields, extract, false)
    }

    /// Like [`Scope::describe`], for an extractor that returns `None` depending on fields it
    /// does not describe, e.g. `published` guarding a `category` extractor ("drafts are in no
    /// category list"). Such an extractor is consulted on every write, whatever was modified
    /// (a change to the guard's field can move an object into a list), and serves conditions
    /// over exactly its fields only: a list filtered by a subset of them could hold the
    /// objects the guard excludes. `#[scope(.., when = ..)]` generates this.
    #[must_use]
    pub fn describe_guarded<F>(self, fields: &[&str], extract: F) -> Self
    where
        F: Fn(&T) -> Option<Vec<Value>> + Send + Sync + 'static,
    {
        self.push(fields, extract, true)
    }

    /// Like [`Scope::describe`], for fields that are not columns of their own — a renamed or
    /// computed value (`author` from `author_id`): the extractor runs when one of the `watch`
    /// fields (the columns the values come from) is modified, instead of its own fields. The
    /// seed's `describes("author", watch_modified=["author_id"])`.
    ///
    /// ```
    /// use matroska_core::{Dependency, Scope, Value};
    ///
    /// struct Article { author_id: i64, title: String }
    /// let scope = Scope::<Article>::new("article")
    ///     .describe_watching(&["author"], &["author_id"], |a| Some(vec![Value::from(a.author_id)]));
    /// let a = Article { author_id: 7, title: "t".into() };
    /// let by_author = Dependency::condition("article", [("author", Value::from(7))]);
    /// assert!(scope.dependencies_for(&a, Some(&["author_id"])).contains(&by_author));
    /// assert!(!scope.dependencies_for(&a, Some(&["title"])).contains(&by_author));
    /// ```
    #[must_use]
    pub fn describe_watching<F>(mut self, fields: &[&str], watch: &[&str], extract: F) -> Self
    where
        F: Fn(&T) -> Option<Vec<Value>> + Send + Sync + 'static,
    {
        self = self.push(fields, extract, false);
        if let Some(extractor) = self.extractors.last_mut() {
            extractor.watch = watch.iter().map(|w| (*w).to_owned()).collect();
        }
        self
    }

    fn push<F>(mut self, fields: &[&str], extract: F, guarded: bool) -> Self
    where
        F: Fn(&T) -> Option<Vec<Value>> + Send + Sync + 'static,
    {
        let fields: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        self.extractors.push(Extractor {
            watch: fields.clone(),
            fields,
            extract: Arc::new(extract),
            guarded,
        });
        self
    }

    /// What a condition over undescribed fields does in this scope.
    pub fn current_mode(&self) -> ScopeMode {
        self.mode
    }

    /// The scope's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field lists of the extractors, in the order they were described.
    pub fn described_fields(&self) -> impl Iterator<Item = &[String]> {
        self.extractors.iter().map(|e| e.fields.as_slice())
    }

    /// The fields (columns) whose modification runs each extractor, in the order they were
    /// described: its own fields, or the `watch` list of [`Scope::describe_watching`]. A write
    /// that modifies none of these needs no old row and no condition.
    pub fn watched_fields(&self) -> impl Iterator<Item = &[String]> {
        self.extractors.iter().map(|e| e.watch.as_slice())
    }

    /// The dependency that writes which cannot be narrowed to objects invalidate (bulk
    /// updates, raw SQL). Every list this scope hands out depends on it.
    pub fn all(&self) -> Dependency {
        Dependency::invalidate_all(self.name.as_str())
    }

    /// The dependency that every [`Scope::invalidate_for`] invalidates: the empty condition,
    /// which every object matches.
    pub fn any_change(&self) -> Dependency {
        Dependency::any_change(self.name.as_str())
    }

    /// The dependencies of a list filtered by `fields` (order does not matter): the condition,
    /// and [`Scope::all`].
    ///
    /// # Errors
    /// In [`ScopeMode::Development`], [`Error::UnknownScopeFields`] when no extractor
    /// describes these fields (or a superset of at most [`MAX_SUBSET_FIELDS`] fields). In
    /// production mode the same case logs a warning and returns [`Scope::any_change`] and
    /// [`Scope::all`] instead.
    pub fn condition<K: AsRef<str>>(
        &self,
        fields: impl IntoIterator<Item = (K, Value)>,
    ) -> Result<Vec<Dependency>> {
        let fields: BTreeMap<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), self.field_fold(k.as_ref()).apply(v)))
            .collect();
        let names: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        let described = !names.is_empty() && self.extractors.iter().any(|e| e.serves(&names));
        if described {
            return Ok(vec![
                Dependency::Condition {
                    scope: self.name.clone(),
                    fields,
                },
                self.all(),
            ]);
        }
        let names: Vec<String> = fields.into_keys().collect();
        match self.mode {
            ScopeMode::Development => Err(Error::UnknownScopeFields {
                scope: self.name.clone(),
                fields: names,
            }),
            ScopeMode::Production => {
                tracing::warn!(
                    scope = %self.name,
                    fields = ?names,
                    "no extractor describes these fields; the list depends on any change in the scope"
                );
                Ok(vec![self.any_change(), self.all()])
            }
        }
    }

    /// The dependencies an object's write invalidates: for each extractor that watches a
    /// modified field (all of them when `modified` is `None`, as for a creation or deletion),
    /// the conditions the object matches; and [`Scope::any_change`].
    ///
    /// Never fails and never panics: a misbehaving extractor (see
    /// [`Scope::try_dependencies_for_change`]) makes it return the whole scope
    /// ([`Scope::all`] and [`Scope::any_change`]), logged at error level.
    pub fn dependencies_for(&self, object: &T, modified: Option<&[&str]>) -> Vec<Dependency> {
        self.dependencies_for_change(Some(object), None, modified)
    }

    /// Like [`Scope::dependencies_for`], for an object whose previous values are known too:
    /// a row that moved from one list to another invalidates both.
    ///
    /// Never fails and never panics, in either mode: hooks call it after the row is written,
    /// when an error or a panic would lose the invalidation. A misbehaving extractor gives the
    /// whole scope instead, logged at error level; use
    /// [`Scope::try_dependencies_for_change`] to get the error.
    pub fn dependencies_for_change(
        &self,
        before: Option<&T>,
        after: Option<&T>,
        modified: Option<&[&str]>,
    ) -> Vec<Dependency> {
        self.collect(before, after, modified).0
    }

    /// Like [`Scope::dependencies_for_change`], but in [`ScopeMode::Development`] a
    /// misbehaving extractor is an error, so tests find it.
    ///
    /// An extractor misbehaves when it returns a different number of values than its fields,
    /// or panics. In [`ScopeMode::Production`] that is logged at error level and answered
    /// with the whole scope ([`Scope::all`] and [`Scope::any_change`]): coarse, never stale.
    /// (A panic is caught only where panics unwind, not under `panic = "abort"`.)
    ///
    /// ```
    /// use matroska_core::{Error, Scope, ScopeMode, Value};
    ///
    /// struct Book { category: String }
    /// let scope = Scope::<Book>::new("Book")
    ///     .describe(&["category", "published"], |b| Some(vec![Value::from(&b.category)]));
    /// let book = Book { category: "fantasy".into() };
    ///
    /// let dev = scope.clone().mode(ScopeMode::Development);
    /// assert!(matches!(dev.try_dependencies_for_change(Some(&book), None, None), Err(Error::ScopeExtractor { .. })));
    /// let prod = scope.mode(ScopeMode::Production);
    /// assert_eq!(prod.try_dependencies_for_change(Some(&book), None, None)?, vec![prod.any_change(), prod.all()]);
    /// # Ok::<_, Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ScopeExtractor`] in development mode.
    pub fn try_dependencies_for_change(
        &self,
        before: Option<&T>,
        after: Option<&T>,
        modified: Option<&[&str]>,
    ) -> Result<Vec<Dependency>> {
        match self.collect(before, after, modified) {
            (_, Some(error)) if self.mode == ScopeMode::Development => Err(error),
            (deps, _) => Ok(deps),
        }
    }

    /// The dependencies, and the first extractor failure (after which the whole scope is
    /// returned).
    fn collect(
        &self,
        before: Option<&T>,
        after: Option<&T>,
        modified: Option<&[&str]>,
    ) -> (Vec<Dependency>, Option<Error>) {
        let mut deps = BTreeSet::new();
        deps.insert(self.any_change());
        for extractor in &self.extractors {
            if let Some(modified) = modified
                && !extractor.guarded
                && !extractor
                    .watch
                    .iter()
                    .any(|f| modified.contains(&f.as_str()))
            {
                continue;
            }
            for object in [before, after].into_iter().flatten() {
                match extractor.run(object) {
                    Ok(None) => {}
                    Ok(Some(values)) => {
                        let values: Vec<Value> = extractor
                            .fields
                            .iter()
                            .zip(values)
                            .map(|(field, v)| self.field_fold(field).apply(v))
                            .collect();
                        extractor.conditions(&self.name, &values, &mut deps);
                        if extractor
                            .fields
                            .iter()
                            .any(|f| crate::fold::is_coarse(&self.name, f))
                        {
                            deps.insert(self.all());
                        }
                    }
                    Err(problem) => {
                        tracing::error!(
                            scope = %self.name,
                            fields = ?extractor.fields,
                            problem = %problem,
                            "scope extractor misbehaved; invalidating the whole scope"
                        );
                        let error = Error::ScopeExtractor {
                            scope: self.name.clone(),
                            fields: extractor.fields.clone(),
                            problem,
                        };
                        return (vec![self.any_change(), self.all()], Some(error));
                    }
                }
            }
        }
        (deps.into_iter().collect(), None)
    }

    /// Invalidates the lists `object` enters or leaves by being created, deleted or (with
    /// `modified`, the names of changed fields) modified. Returns what the invalidation did
    /// (entries dropped, where the backend counts them: [`Invalidated::dropped`]).
    ///
    /// # Errors
    /// Backend failures, as [`Cache::invalidate`]; in development mode
    /// [`Error::ScopeExtractor`] for a misbehaving extractor, after invalidating the whole
    /// scope.
    pub async fn invalidate_for(
        &self,
        object: &T,
        cache: &Cache,
        modified: Option<&[&str]>,
    ) -> Result<Invalidated> {
        self.invalidate_for_change(Some(object), None, cache, modified)
            .await
    }

    /// Like [`Scope::invalidate_for`], with the object's values before and after the write.
    ///
    /// # Errors
    /// As [`Scope::invalidate_for`].
    pub async fn invalidate_for_change(
        &self,
        before: Option<&T>,
        after: Option<&T>,
        cache: &Cache,
        modified: Option<&[&str]>,
    ) -> Result<Invalidated> {
        let (deps, error) = self.collect(before, after, modified);
        let dropped = cache.invalidate(&deps).await?;
        match error {
            Some(error) if self.mode == ScopeMode::Development => Err(error),
            _ => Ok(dropped),
        }
    }

    /// Invalidates every list of the scope.
    ///
    /// # Errors
    /// Backend failures, as [`Cache::invalidate`].
    pub async fn invalidate_all(&self, cache: &Cache) -> Result<Invalidated> {
        cache.invalidate(&[self.all(), self.any_change()]).await
    }
}

impl<T: ?Sized> Extractor<T> {
    /// The extractor's values for `object`, or what went wrong. A panic is caught: it would
    /// otherwise unwind through a save whose row is written, losing its invalidation.
    fn run(&self, object: &T) -> std::result::Result<Option<Vec<Value>>, String> {
        let extracted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.extract)(object)));
        match extracted {
            Ok(Some(values)) if values.len() != self.fields.len() => Err(format!(
                "returned {} values for {} fields",
                values.len(),
                self.fields.len()
            )),
            Ok(values) => Ok(values),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_owned());
                Err(format!("panicked: {message}"))
            }
        }
    }

    fn serves(&self, names: &BTreeSet<&str>) -> bool {
        let own: BTreeSet<&str> = self.fields.iter().map(String::as_str).collect();
        if self.guarded || own.len() > MAX_SUBSET_FIELDS {
            own == *names
        } else {
            names.is_subset(&own)
        }
    }

    fn conditions(&self, scope: &str, values: &[Value], out: &mut BTreeSet<Dependency>) {
        condition_subsets(scope, &self.fields, values, self.guarded, out);
    }
}

/// The conditions an object with these field values matches: every non-empty subset of the
/// fields (only the full set when `full_only`, or past [`MAX_SUBSET_FIELDS`] fields). Shared
/// by [`Scope`] and [`TableSpec`](crate::TableSpec), so a hooked save and the outbox relay
/// hand out the same conditions.
pub(crate) fn condition_subsets(
    scope: &str,
    fields: &[String],
    values: &[Value],
    full_only: bool,
    out: &mut BTreeSet<Dependency>,
) {
    let pairs = || fields.iter().cloned().zip(values.iter().cloned());
    if full_only || fields.len() > MAX_SUBSET_FIELDS {
        // Only the full field set: 2^n subsets would be too many (and a mask cannot hold
        // them past 32 fields).
        out.insert(Dependency::Condition {
            scope: scope.to_owned(),
            fields: pairs().collect(),
        });
        return;
    }
    for mask in 1..(1_u32 << fields.len()) {
        let fields: BTreeMap<String, Value> = pairs()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, pair)| pair)
            .collect();
        out.insert(Dependency::Condition {
            scope: scope.to_owned(),
            fields,
        });
    }
}

/// Types with a primary-key dependency; derived by `#[derive(CacheDeps)]`.
pub trait CacheDeps {
    /// The entity name used in this type's [`Dependency::PrimaryKey`] and scope.
    fn entity_name() -> &'static str
    where
        Self: Sized;

    /// This object's primary-key dependency.
    fn primary_key(&self) -> Dependency;

    /// The single-field conditions of this object's tracked columns
    /// ([`TableSpec::tracked`](crate::TableSpec::tracked): a Diesel model's `belongs_to`
    /// foreign keys), as the outbox relay invalidates them for every recorded change of the
    /// row. `#[derive(CacheDeps)]` generates it; none by default.
    fn tracked_dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
}

/// Types with a scope; generated by `#[scope(...)]` attributes.
pub trait Scoped: Sized + 'static {
    /// The type's scope, with one extractor per `#[scope(...)]`.
    fn scope() -> &'static Scope<Self>;
}

/// A typed condition of one cached list's filter, generated by `#[scope(...)]`: the fields
/// and values a list is filtered by, checked at compile time against the scope's fields.
pub trait ScopeCondition {
    /// The scope's name (the entity name of the type the scope is declared on).
    fn scope_name(&self) -> &'static str;

    /// The field = value pairs of the condition.
    fn fields(&self) -> Vec<(&'static str, Value)>;

    /// The dependencies of a list filtered by this condition: the condition itself and the
    /// scope's invalidate-all dependency (see [`Scope::condition`]).
    fn dependencies(&self) -> Vec<Dependency> {
        vec![
            Dependency::condition(self.scope_name(), self.fields()),
            Dependency::invalidate_all(self.scope_name()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Book {
        published: bool,
        category: String,
        title: String,
    }

    fn scope() -> Scope<Book> {
        Scope::new("Book").describe(&["published", "category"], |b: &Book| {
            b.published
                .then(|| vec![Value::from(true), Value::from(&b.category)])
        })
    }

    #[test]
    fn condition_field_order_does_not_matter() {
        let s = scope();
        let a = s
            .condition([("published", true.into()), ("category", "f".into())])
            .unwrap();
        let b = s
            .condition([("category", "f".into()), ("published", true.into())])
            .unwrap();
        assert_eq!(a, b);
        assert!(a.contains(&s.all()));
    }

    #[test]
    fn unknown_fields_error_in_development_and_degrade_in_production() {
        let s = scope().mode(ScopeMode::Development);
        assert!(matches!(
            s.condition([("author", 1.into())]),
            Err(Error::UnknownScopeFields { .. })
        ));
        let s = scope().mode(ScopeMode::Production);
        assert_eq!(
            s.condition([("author", 1.into())]).unwrap(),
            vec![s.any_change(), s.all()]
        );
    }

    #[test]
    fn subset_conditions_are_served() {
        let s = scope().mode(ScopeMode::Development);
        let by_category = s.condition([("category", "f".into())]).unwrap();
        let book = Book {
            published: true,
            category: "f".into(),
            title: "t".into(),
        };
        assert!(s.dependencies_for(&book, None).contains(&by_category[0]));
    }

    #[test]
    fn opted_out_object_invalidates_only_any_change() {
        let s = scope();
        let draft = Book {
            published: false,
            category: "f".into(),
            title: "t".into(),
        };
        assert_eq!(s.dependencies_for(&draft, None), vec![s.any_change()]);
    }

    #[test]
    fn unwatched_modification_skips_the_extractor() {
        let s = scope();
        let book = Book {
            published: true,
            category: "f".into(),
            title: "t".into(),
        };
        let _ = &book.title;
        assert_eq!(
            s.dependencies_for(&book, Some(&["title"])),
            vec![s.any_change()]
        );
        assert!(s.dependencies_for(&book, Some(&["category"])).len() > 1);
    }

    #[test]
    fn guarded_extractor_is_consulted_on_any_write_and_serves_its_full_set_only() {
        let s = Scope::<Book>::new("Book")
            .mode(ScopeMode::Development)
            .describe_guarded(&["category"], |b: &Book| {
                b.published.then(|| vec![Value::from(&b.category)])
            });
        let book = Book {
            published: true,
            category: "f".into(),
            title: "t".into(),
        };
        // Publishing (a change to the guard's field only) moves the book into the list.
        let list = s.condition([("category", "f".into())]).unwrap();
        assert!(
            s.dependencies_for(&book, Some(&["published"]))
                .contains(&list[0])
        );
        let guarded_two = Scope::<Book>::new("Book")
            .mode(ScopeMode::Development)
            .describe_guarded(&["category", "title"], |b: &Book| {
                b.published
                    .then(|| vec![Value::from(&b.category), Value::from(&b.title)])
            });
        assert!(guarded_two.condition([("category", "f".into())]).is_err());
        assert!(
            guarded_two
                .condition([("category", "f".into()), ("title", "t".into())])
                .is_ok()
        );
    }

    /// An extractor of two fields that returns one value, and one that panics on drafts.
    fn misbehaving(mode: ScopeMode) -> Scope<Book> {
        Scope::new("Book")
            .mode(mode)
            .describe(&["category", "title"], |b: &Book| {
                Some(vec![Value::from(&b.category)])
            })
            .describe(&["published"], |b: &Book| {
                assert!(b.published, "drafts are not supported");
                Some(vec![Value::from(b.published)])
            })
    }

    fn book(published: bool) -> Book {
        Book {
            published,
            category: "f".into(),
            title: "t".into(),
        }
    }

    #[test]
    fn a_misbehaving_extractor_is_an_error_in_development() {
        let s = misbehaving(ScopeMode::Development);
        for (modified, published) in [(["title"], true), (["published"], false)] {
            let error = s
                .try_dependencies_for_change(Some(&book(published)), None, Some(&modified))
                .unwrap_err();
            assert!(matches!(error, Error::ScopeExtractor { .. }), "{error}");
        }
        let panicked = s
            .try_dependencies_for_change(None, Some(&book(false)), Some(&["published"]))
            .unwrap_err()
            .to_string();
        assert!(
            panicked.contains("panicked: drafts are not supported"),
            "{panicked}"
        );
        // The infallible form still answers, with the whole scope.
        assert_eq!(
            s.dependencies_for(&book(false), None),
            vec![s.any_change(), s.all()]
        );
    }

    #[test]
    fn a_misbehaving_extractor_invalidates_the_whole_scope_in_production() {
        let s = misbehaving(ScopeMode::Production);
        let whole = vec![s.any_change(), s.all()];
        for (modified, published) in [(["title"], true), (["published"], false)] {
            let object = book(published);
            assert_eq!(
                s.try_dependencies_for_change(Some(&object), None, Some(&modified))
                    .unwrap(),
                whole
            );
            assert_eq!(s.dependencies_for(&object, Some(&modified)), whole);
        }
        // A well-behaved extractor of the same scope is unaffected.
        assert!(
            s.try_dependencies_for_change(Some(&book(true)), None, Some(&["published"]))
                .unwrap()
                .contains(&Dependency::condition(
                    "Book",
                    [("published", Value::from(true))]
                ))
        );
    }

    #[tokio::test]
    async fn invalidate_for_invalidates_the_whole_scope_before_reporting() {
        for mode in [ScopeMode::Development, ScopeMode::Production] {
            let s = misbehaving(mode);
            let cache = Cache::memory();
            let list = s.condition([("published", true.into())]).unwrap();
            cache.put("list", &1, &list, None).await.unwrap();
            let result = s.invalidate_for(&book(false), &cache, None).await;
            assert!(!cache.has("list").await.unwrap(), "{mode:?}");
            assert_eq!(result.is_err(), mode == ScopeMode::Development);
        }
    }

    #[test]
    fn category_move_touches_both_lists() {
        let s = scope();
        let before = Book {
            published: true,
            category: "fantasy".into(),
            title: "t".into(),
        };
        let after = Book {
            category: "sci-fi".into(),
            ..before
        };
        let before = Book {
            published: true,
            category: "fantasy".into(),
            title: "t".into(),
        };
        let deps = s.dependencies_for_change(Some(&before), Some(&after), Some(&["category"]));
        for cat in ["fantasy", "sci-fi"] {
            let c = s
                .condition([("published", true.into()), ("category", cat.into())])
                .unwrap();
            assert!(deps.contains(&c[0]), "{cat}");
        }
    }
}
