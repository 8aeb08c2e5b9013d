//! # matroska
//!
//! The facade crate: re-exports [`matroska_core`] and, behind features, the derive macros
//! (`derive`, on by default), the SeaORM integration (`seaorm`, with SeaORM's drivers picked
//! by `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`, each of which implies `seaorm`), the Diesel
//! integration (`diesel`, `diesel-postgres`, `diesel-mysql`, `diesel-async`, `diesel-r2d2`) and the database
//! outbox (`outbox`).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use matroska_core::*;

// -- derive (owned by the derive work) --

/// Derives [`CacheDeps`], [`CollectDeps`] and [`Scoped`] for a struct, and generates one
/// typed condition per `#[scope(...)]`.
///
/// # Attributes
///
/// | attribute | on | meaning |
/// |---|---|---|
/// | `#[cache(entity = "article")]` | struct | the entity name in dependencies and the scope's name; default: SeaORM's `table_name`, else the struct's name |
/// | `#[cache(key)]` | fields | the primary key, composite in field order; default: the `#[sea_orm(primary_key)]` fields, else a field named `id` |
/// | `#[cache(related)]` | field | a loaded relation (a model, `Option`, `Vec`, ...) whose dependencies [`CollectDeps`] adds after the model's own |
/// | `#[cache(crate = "my_matroska")]` | struct | where the `matroska` crate is, when renamed in `Cargo.toml` |
/// | `#[scope(a, b)]` | struct, repeatable | one list filter the application caches: an extractor of `a` and `b` in [`Scoped::scope`], and a condition type |
/// | `#[scope(a, b, when = path_or_closure)]` | | an `Fn(&Self) -> bool`: a row for which it is false can be in no such list and invalidates nothing for this scope. It must read only the scope's own fields (`a`, `b`): an update of any other field skips the scope. For a guard on another field, declare the scope by hand with [`Scope::describe_guarded`] |
/// | `#[scope(a, b, name = TypeName)]` | | names the condition type |
///
/// [`Scoped`] is implemented for every non-generic struct (without `#[scope]`, by a scope
/// with no extractors, whose [`Scope::invalidate_for`] still reaches the lists that depend on
/// [`Scope::any_change`]); a `#[scope]` on a generic struct is an error, as a scope is one
/// static per type.
///
/// Key and scope fields are read through [`ToValue`] (integers, `bool`, floats, strings,
/// bytes, `Option`, and with features `chrono` and `uuid` dates, times and UUIDs; `seaorm`
/// turns both on). A `uuid::Uuid` or chrono field without its feature is an error at the
/// field: "`Uuid` cannot be a key or scope value", with a note naming the feature to turn on.
///
/// # Generated API
///
/// For
///
/// ```
/// use matroska::{CacheDeps, ScopeCondition, Scoped};
///
/// #[derive(CacheDeps)]
/// #[scope(published, category, when = Article::is_listed)]
/// pub struct Article { id: i64, published: bool, category: String, title: String }
///
/// impl Article {
///     fn is_listed(&self) -> bool { self.published }
/// }
///
/// let fantasy = ArticleByPublishedCategory { published: true, category: "fantasy".into() };
/// assert_eq!(fantasy.scope_name(), Article::entity_name());
/// assert_eq!(Article::scope().name(), "Article");
/// ```
///
/// the derive generates (in outline):
///
/// ```text
/// impl CacheDeps for Article {
///     fn entity_name() -> &'static str { "Article" }
///     fn primary_key(&self) -> Dependency { /* PrimaryKey("Article", self.id) */ }
/// }
/// impl CollectDeps for Article { /* its primary key, then its #[cache(related)] fields */ }
/// impl Scoped for Article {
///     fn scope() -> &'static Scope<Article> { /* Scope "Article" describing (published, category) */ }
/// }
///
/// /// The filter of a cached list of `Article` by `published` and `category`.
/// #[derive(Debug, Clone)]
/// pub struct ArticleByPublishedCategory { pub published: bool, pub category: String }
/// impl ScopeCondition for ArticleByPublishedCategory { /* scope "Article", the two fields */ }
/// impl ArticleByPublishedCategory {
///     pub fn dependencies(&self) -> Vec<Dependency>;  // the condition + the scope's InvalidateAll
/// }
/// ```
///
/// A condition type is named after the struct and its fields (`{Struct}By{Field}{Field}`) and
/// has exactly the scope's fields, with their types (and the struct's visibility), so a
/// cached query can name no other field and no value of another type: both are compile
/// errors, where a string-keyed [`Scope::condition`] would fail at run time. A list filtered
/// by a subset of the fields (`category` alone) needs its own `#[scope(category)]`.
///
/// ## SeaORM models
///
/// On a `Model` deriving SeaORM's `DeriveEntityModel`, the entity name is the
/// `table_name`, the key is the `#[sea_orm(primary_key)]` fields, and condition types drop the
/// `Model` prefix: `#[scope(published, category)]` in module `article` generates
/// `article::ByPublishedCategory`, which also implements `seaorm::ScopeFilter` (feature
/// `seaorm`), with an inherent `filter()` giving `Column::Published.eq(..)` and
/// `Column::Category.eq(..)` (`is_null()` for a `None`). On a model, scope fields are named
/// by their column (`Column::as_str()`, which differs from the field's name only under
/// `column_name`, `enum_name` or `rename_all`), as the SeaORM hooks report modified
/// columns. One value then gives a query both
/// its `WHERE` clause and its dependency:
///
/// ```text
/// let fantasy = article::ByPublishedCategory { published: true, category: "fantasy".into() };
/// let rows = article::Entity::find().filter(fantasy.filter()).all(&db).await?;
/// cache.put(&key, &rows, &fantasy.dependencies(), None).await?;
/// ```
///
/// # Example
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska::{Cache, CacheDeps, DependencySet, Scoped};
///
/// #[derive(CacheDeps)]
/// struct User { id: i64, name: String }
///
/// #[derive(CacheDeps)]
/// #[scope(published, category, when = |a: &Article| a.published)]
/// struct Article {
///     id: i64,
///     published: bool,
///     category: String,
///     #[cache(related)]
///     author: User,
/// }
///
/// let cache = Cache::memory();
/// let kolypto = || User { id: 1, name: "kolypto".into() };
/// let dune = Article { id: 10, published: true, category: "sci-fi".into(), author: kolypto() };
///
/// // Cache the sci-fi list with its rows' dependencies and its filter's.
/// let sci_fi = ArticleByPublishedCategory { published: true, category: "sci-fi".into() };
/// let mut deps = DependencySet::of(&[&dune]);
/// deps.extend(sci_fi.dependencies());
/// cache.put("sci-fi", &["Dune"], deps.as_slice(), None).await?;
///
/// // A draft is in no list: saving it invalidates nothing.
/// let draft = Article { id: 11, published: false, category: "sci-fi".into(), author: kolypto() };
/// Article::scope().invalidate_for(&draft, &cache, None).await?;
/// assert!(cache.has("sci-fi").await?);
///
/// // Publishing it brings it into the list.
/// let published = Article { published: true, ..draft };
/// Article::scope().invalidate_for(&published, &cache, Some(&["published"])).await?;
/// assert!(!cache.has("sci-fi").await?);
/// # let _ = &dune.author.name;
/// # Ok::<_, matroska::Error>(()) }).unwrap();
/// ```
///
/// Invalid attributes are compile errors at the offending tokens, all reported in one build:
///
/// ```compile_fail
/// #[derive(matroska::CacheDeps)]
/// #[scope(published, categroy)] // error: `Article` has no field `categroy`
/// struct Article { id: i64, published: bool, category: String }
/// ```
#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use matroska_derive::CacheDeps;

/// What the derive's generated code names; not public API.
#[doc(hidden)]
pub mod __private {
    pub use std::option::Option::{self, None, Some};
    pub use std::sync::OnceLock;
    pub use std::vec;
    pub use std::vec::Vec;

    /// Calls a `#[scope(..., when = ...)]` expression on `object`. Taking it as an
    /// `Fn(&T) -> bool` argument lets a closure's argument type be inferred, and reports a
    /// wrong expression once, at the expression.
    #[inline]
    pub fn when<T: ?Sized, F: Fn(&T) -> bool>(f: F, object: &T) -> bool {
        f(object)
    }

    /// Picks a column's decoder for the generated [`WatchedTable`](crate::WatchedTable): the
    /// field type's [`FromDbJson`](crate::FromDbJson) when it has one, else the JSON's own
    /// shape. Autoref specialization: `(&DecoderProbe::<T>::new()).decoder()`
    /// resolves to [`ViaFromDbJson`] first when `T: FromDbJson`, and to [`ViaUntyped`] on
    /// `&DecoderProbe<T>` otherwise, so a field type without a decoder still compiles.
    pub struct DecoderProbe<T: ?Sized>(std::marker::PhantomData<fn() -> Box<T>>);

    impl<T: ?Sized> DecoderProbe<T> {
        /// A probe for `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            DecoderProbe(std::marker::PhantomData)
        }
    }

    /// The typed side of [`DecoderProbe`].
    pub trait ViaFromDbJson {
        /// `T`'s decoder.
        fn decoder(&self) -> crate::ColumnDecoder;
    }

    impl<T: crate::FromDbJson + ?Sized> ViaFromDbJson for DecoderProbe<T> {
        fn decoder(&self) -> crate::ColumnDecoder {
            crate::ColumnDecoder::of::<T>()
        }
    }

    /// The fallback side of [`DecoderProbe`].
    pub trait ViaUntyped {
        /// The untyped decoder.
        fn decoder(&self) -> crate::ColumnDecoder;
    }

    impl<T: ?Sized> ViaUntyped for &DecoderProbe<T> {
        fn decoder(&self) -> crate::ColumnDecoder {
            crate::ColumnDecoder::untyped()
        }
    }

    #[cfg(feature = "seaorm")]
    pub use matroska_seaorm as seaorm;
    #[cfg(feature = "seaorm")]
    pub use sea_orm;

    #[cfg(feature = "diesel")]
    pub use matroska_diesel::__private as diesel;

    /// The Diesel filter the derive generates for a Diesel model's `#[scope]`: kept with the
    /// `diesel` feature, dropped without it, so the derive needs no Diesel of its own.
    #[cfg(feature = "diesel")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __diesel_scope_filter {
        ($($item:tt)*) => { $($item)* };
    }

    /// See the `diesel` version.
    #[cfg(not(feature = "diesel"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __diesel_scope_filter {
        ($($item:tt)*) => {};
    }

    pub use crate::__diesel_scope_filter as diesel_scope_filter;
}

/// The database outbox and its relay: see [`matroska_outbox`].
#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub use matroska_outbox as outbox;

/// The Diesel integration: see [`matroska_diesel`].
#[cfg(feature = "diesel")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel")))]
pub use matroska_diesel as diesel;

// -- seaorm (owned by the SeaORM work) --
#[cfg(feature = "seaorm")]
#[cfg_attr(docsrs, doc(cfg(feature = "seaorm")))]
pub use matroska_seaorm as seaorm;
