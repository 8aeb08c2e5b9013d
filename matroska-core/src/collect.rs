//! Collecting the dependencies of loaded models: the seed's `sa_dependencies(articles,
//! {'author': 1})`.
//!
//! A cached list depends on every row it shows: the articles, and the authors loaded with
//! them. A [`DependencySet`] gathers their primary-key dependencies in first-seen order,
//! without duplicates, from anything that implements [`CollectDeps`]: a model
//! (`#[derive(CacheDeps)]` implements it, following the fields marked `#[cache(related)]`),
//! and the shapes ORMs return rows in: `Vec`s and slices, `Option`s, and tuples such as the
//! `(article, Option<author>)` pairs of SeaORM's `find_also_related`.
//!
//! ```
//! use matroska_core::{CacheDeps, CollectDeps, Dependency, DependencySet};
//!
//! struct User { id: i64 }
//! struct Article { id: i64 }
//!
//! impl CacheDeps for User {
//!     fn entity_name() -> &'static str { "User" }
//!     fn primary_key(&self) -> Dependency { Dependency::primary_key("User", [self.id]) }
//! }
//! impl CacheDeps for Article {
//!     fn entity_name() -> &'static str { "Article" }
//!     fn primary_key(&self) -> Dependency { Dependency::primary_key("Article", [self.id]) }
//! }
//! // What `#[derive(CacheDeps)]` generates for you:
//! impl CollectDeps for User {
//!     fn collect_deps(&self, set: &mut DependencySet) { set.insert(self.primary_key()); }
//! }
//! impl CollectDeps for Article {
//!     fn collect_deps(&self, set: &mut DependencySet) { set.insert(self.primary_key()); }
//! }
//!
//! // Two articles by one author, loaded as (article, author) pairs.
//! let rows = vec![
//!     (Article { id: 10 }, Some(User { id: 1 })),
//!     (Article { id: 11 }, Some(User { id: 1 })),
//! ];
//! let deps = DependencySet::of(&rows);
//! assert_eq!(
//!     deps.as_slice(),
//!     [
//!         Dependency::primary_key("Article", [10]),
//!         Dependency::primary_key("User", [1]),
//!         Dependency::primary_key("Article", [11]),
//!     ]
//! );
//! ```

use std::collections::HashSet;

use crate::dependency::Dependency;

/// Dependencies in first-seen order, without duplicates.
///
/// Build one with [`DependencySet::add`] / [`DependencySet::add_all`] (models and what was
/// loaded with them) and [`DependencySet::insert`] (any other dependency), then hand
/// [`DependencySet::as_slice`] to [`Cache::put`](crate::Cache::put) or return
/// [`DependencySet::into_vec`] from a loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencySet {
    order: Vec<Dependency>,
    seen: HashSet<Dependency>,
}

impl DependencySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dependencies of `loaded` (see [`DependencySet::add`]).
    pub fn of<L: CollectDeps + ?Sized>(loaded: &L) -> Self {
        let mut set = Self::new();
        set.add(loaded);
        set
    }

    /// Adds `dep` unless it is already in the set; returns whether it was added.
    pub fn insert(&mut self, dep: Dependency) -> bool {
        if self.seen.contains(&dep) {
            return false;
        }
        self.seen.insert(dep.clone());
        self.order.push(dep);
        true
    }

    /// Adds the dependencies of a model and what was loaded with it: a model's primary key
    /// then its `#[cache(related)]` fields, each element of a `Vec` or slice in order, the
    /// parts of a tuple from left to right.
    pub fn add<L: CollectDeps + ?Sized>(&mut self, loaded: &L) -> &mut Self {
        loaded.collect_deps(self);
        self
    }

    /// Adds the dependencies of each item, in order.
    pub fn add_all<I>(&mut self, items: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: CollectDeps,
    {
        for item in items {
            item.collect_deps(self);
        }
        self
    }

    /// Whether `dep` is in the set.
    pub fn contains(&self, dep: &Dependency) -> bool {
        self.seen.contains(dep)
    }

    /// The number of dependencies.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The dependencies, in first-seen order.
    pub fn as_slice(&self) -> &[Dependency] {
        &self.order
    }

    /// The dependencies, in first-seen order.
    pub fn iter(&self) -> std::slice::Iter<'_, Dependency> {
        self.order.iter()
    }

    /// The dependencies, in first-seen order.
    pub fn into_vec(self) -> Vec<Dependency> {
        self.order
    }
}

impl Extend<Dependency> for DependencySet {
    fn extend<I: IntoIterator<Item = Dependency>>(&mut self, iter: I) {
        for dep in iter {
            self.insert(dep);
        }
    }
}

impl FromIterator<Dependency> for DependencySet {
    fn from_iter<I: IntoIterator<Item = Dependency>>(iter: I) -> Self {
        let mut set = Self::new();
        set.extend(iter);
        set
    }
}

impl IntoIterator for DependencySet {
    type Item = Dependency;
    type IntoIter = std::vec::IntoIter<Dependency>;

    fn into_iter(self) -> Self::IntoIter {
        self.order.into_iter()
    }
}

impl<'a> IntoIterator for &'a DependencySet {
    type Item = &'a Dependency;
    type IntoIter = std::slice::Iter<'a, Dependency>;

    fn into_iter(self) -> Self::IntoIter {
        self.order.iter()
    }
}

impl From<DependencySet> for Vec<Dependency> {
    fn from(set: DependencySet) -> Self {
        set.order
    }
}

impl AsRef<[Dependency]> for DependencySet {
    fn as_ref(&self) -> &[Dependency] {
        &self.order
    }
}

/// Loaded data whose rows a cached value depends on.
///
/// `#[derive(CacheDeps)]` implements it for a model (its primary key, then its
/// `#[cache(related)]` fields); it is implemented here for references, `Box`, `Option`,
/// `Vec`, slices, arrays, tuples of up to six elements, [`Dependency`] (itself) and
/// [`DependencySet`] (its contents). For a model with a hand-written
/// [`CacheDeps`](crate::CacheDeps) impl:
///
/// ```
/// # use matroska_core::{CacheDeps, CollectDeps, Dependency, DependencySet};
/// # struct Tag { id: i64 }
/// # impl CacheDeps for Tag {
/// #     fn entity_name() -> &'static str { "Tag" }
/// #     fn primary_key(&self) -> Dependency { Dependency::primary_key("Tag", [self.id]) }
/// # }
/// impl CollectDeps for Tag {
///     fn collect_deps(&self, set: &mut DependencySet) {
///         set.insert(self.primary_key());
///     }
/// }
/// ```
pub trait CollectDeps {
    /// Adds this value's dependencies to `set`, in the order they should appear.
    fn collect_deps(&self, set: &mut DependencySet);
}

impl CollectDeps for Dependency {
    fn collect_deps(&self, set: &mut DependencySet) {
        set.insert(self.clone());
    }
}

impl CollectDeps for DependencySet {
    fn collect_deps(&self, set: &mut DependencySet) {
        set.extend(self.iter().cloned());
    }
}

impl<T: CollectDeps + ?Sized> CollectDeps for &T {
    fn collect_deps(&self, set: &mut DependencySet) {
        (**self).collect_deps(set);
    }
}

impl<T: CollectDeps + ?Sized> CollectDeps for Box<T> {
    fn collect_deps(&self, set: &mut DependencySet) {
        (**self).collect_deps(set);
    }
}

impl<T: CollectDeps> CollectDeps for Option<T> {
    fn collect_deps(&self, set: &mut DependencySet) {
        if let Some(inner) = self {
            inner.collect_deps(set);
        }
    }
}

impl<T: CollectDeps> CollectDeps for [T] {
    fn collect_deps(&self, set: &mut DependencySet) {
        for item in self {
            item.collect_deps(set);
        }
    }
}

impl<T: CollectDeps, const N: usize> CollectDeps for [T; N] {
    fn collect_deps(&self, set: &mut DependencySet) {
        self.as_slice().collect_deps(set);
    }
}

impl<T: CollectDeps> CollectDeps for Vec<T> {
    fn collect_deps(&self, set: &mut DependencySet) {
        self.as_slice().collect_deps(set);
    }
}

macro_rules! tuple_collect {
    ($($name:ident)+) => {
        impl<$($name: CollectDeps),+> CollectDeps for ($($name,)+) {
            #[allow(non_snake_case)]
            fn collect_deps(&self, set: &mut DependencySet) {
                let ($($name,)+) = self;
                $( $name.collect_deps(set); )+
            }
        }
    };
}
tuple_collect!(A);
tuple_collect!(A B);
tuple_collect!(A B C);
tuple_collect!(A B C D);
tuple_collect!(A B C D E);
tuple_collect!(A B C D E F);

/// The row type of a cached query, known before the query runs: a model, an `Option` of one
/// (a left join's missing side), or a tuple of those (a join's `(Post, User)`,
/// `(Post, Option<User>)`), up to six parts.
///
/// A cached query depends on the primary key of every model in every row it returned
/// ([`QueryRow::row_keys`]), and on the entities of the row type ([`QueryRow::entities`]),
/// even when it returned no row of them: a join must also drop when a new row appears that
/// would join.
///
/// ```
/// use matroska_core::{CacheDeps, Dependency, DependencySet, QueryRow};
///
/// struct User { id: i64 }
/// struct Post { id: i64 }
/// impl CacheDeps for User {
///     fn entity_name() -> &'static str { "users" }
///     fn primary_key(&self) -> Dependency { Dependency::primary_key("users", [self.id]) }
/// }
/// impl CacheDeps for Post {
///     fn entity_name() -> &'static str { "posts" }
///     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
/// }
///
/// let mut entities = Vec::new();
/// <(Post, Option<User>)>::entities(&mut entities);
/// assert_eq!(entities, ["posts", "users"]);
///
/// let mut keys = DependencySet::new();
/// (Post { id: 1 }, None::<User>).row_keys(&mut keys);
/// (Post { id: 2 }, Some(User { id: 7 })).row_keys(&mut keys);
/// assert_eq!(keys.len(), 3);
/// ```
pub trait QueryRow {
    /// Appends the entity of each model of the row type, left to right.
    fn entities(out: &mut Vec<&'static str>)
    where
        Self: Sized;

    /// Adds the primary key of each model in this row (none for a missing `Option`).
    fn row_keys(&self, set: &mut DependencySet);
}

impl<M: crate::CacheDeps> QueryRow for M {
    fn entities(out: &mut Vec<&'static str>) {
        out.push(M::entity_name());
    }

    fn row_keys(&self, set: &mut DependencySet) {
        set.insert(self.primary_key());
    }
}

// `Option`s and tuples are not `CacheDeps` (no other crate may make them so), so these do not
// overlap the model impl above.
impl<T: QueryRow> QueryRow for Option<T> {
    fn entities(out: &mut Vec<&'static str>) {
        T::entities(out);
    }

    fn row_keys(&self, set: &mut DependencySet) {
        if let Some(inner) = self {
            inner.row_keys(set);
        }
    }
}

macro_rules! tuple_query_row {
    ($($name:ident)+) => {
        impl<$($name: QueryRow),+> QueryRow for ($($name,)+) {
            fn entities(out: &mut Vec<&'static str>) {
                $( $name::entities(out); )+
            }

            #[allow(non_snake_case)]
            fn row_keys(&self, set: &mut DependencySet) {
                let ($($name,)+) = self;
                $( $name.row_keys(set); )+
            }
        }
    };
}
tuple_query_row!(A B);
tuple_query_row!(A B C);
tuple_query_row!(A B C D);
tuple_query_row!(A B C D E);
tuple_query_row!(A B C D E F);

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(&'static str, i64);

    impl CollectDeps for Row {
        fn collect_deps(&self, set: &mut DependencySet) {
            set.insert(Dependency::primary_key(self.0, [self.1]));
        }
    }

    fn pk(entity: &str, id: i64) -> Dependency {
        Dependency::primary_key(entity, [id])
    }

    #[test]
    fn first_seen_order_without_duplicates() {
        let rows = vec![
            (Row("Article", 10), Some(Row("User", 1))),
            (Row("Article", 11), Some(Row("User", 1))),
            (Row("Article", 12), None),
        ];
        let set = DependencySet::of(&rows);
        assert_eq!(
            set.into_vec(),
            [
                pk("Article", 10),
                pk("User", 1),
                pk("Article", 11),
                pk("Article", 12)
            ]
        );
    }

    #[test]
    fn add_all_and_insert_share_one_order() {
        let articles = [Row("Article", 1), Row("Article", 2)];
        let mut set = DependencySet::new();
        assert!(set.insert(Dependency::tag("home")));
        set.add_all(articles.iter().rev())
            .add(&Row("Article", 1))
            .add(&Dependency::tag("home"));
        assert!(!set.insert(pk("Article", 2)));
        assert_eq!(
            set.as_slice(),
            [Dependency::tag("home"), pk("Article", 2), pk("Article", 1)]
        );
        assert_eq!(set.len(), 3);
        assert!(set.contains(&pk("Article", 1)));
    }

    #[test]
    fn nested_relations_follow_depth_first() {
        let loaded: (Row, Vec<(Row, Box<Row>)>) = (
            Row("User", 1),
            vec![
                (Row("Article", 10), Box::new(Row("Comment", 5))),
                (Row("Article", 11), Box::new(Row("Comment", 5))),
            ],
        );
        let set: Vec<Dependency> = DependencySet::of(&loaded).into();
        assert_eq!(
            set,
            [
                pk("User", 1),
                pk("Article", 10),
                pk("Comment", 5),
                pk("Article", 11)
            ]
        );
    }
}
