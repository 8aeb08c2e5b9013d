//! Typed cache dependencies and their injective key encoding.

use std::collections::BTreeMap;
use std::fmt;

use crate::key::push_len_prefixed;
use crate::value::Value;

/// Something a cached entry depends on. Invalidating a dependency drops every entry that was
/// put with it.
///
/// ```
/// use matroska_core::Dependency;
///
/// let deps = [
///     Dependency::id("article", 1),
///     Dependency::tag("homepage"),
///     Dependency::primary_key("order_line", [10_i64, 3]),
///     Dependency::condition("Article", [("published", true.into()), ("category", "fantasy".into())]),
///     Dependency::invalidate_all("Article"),
/// ];
/// // Field order does not matter in a condition.
/// assert_eq!(
///     Dependency::condition("A", [("x", 1.into()), ("y", 2.into())]),
///     Dependency::condition("A", [("y", 2.into()), ("x", 1.into())]),
/// );
/// assert_eq!(deps.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dependency {
    /// An object of some kind, by id (the seed's `dep.Id('article', 1)`).
    Id {
        /// The kind of object, e.g. `"article"`.
        kind: String,
        /// Its id, as text.
        id: String,
    },
    /// A free-form tag.
    Tag(String),
    /// A database row by its (possibly composite) primary key.
    PrimaryKey {
        /// The entity (table) name.
        entity: String,
        /// The key columns' values, in the primary key's column order.
        key: Vec<Value>,
    },
    /// A list filtered by field values, such as `published = true & category = "fantasy"`.
    Condition {
        /// The scope the condition belongs to (usually the entity name).
        scope: String,
        /// Field = value pairs; a map, so field order never matters.
        fields: BTreeMap<String, Value>,
    },
    /// Everything cached under a scope: invalidated when a change to the scope cannot be
    /// narrowed down to conditions.
    InvalidateAll {
        /// The scope.
        scope: String,
    },
}

impl Dependency {
    /// An object of `kind` with `id`.
    pub fn id(kind: impl Into<String>, id: impl fmt::Display) -> Self {
        Dependency::Id {
            kind: kind.into(),
            id: id.to_string(),
        }
    }

    /// A tag.
    pub fn tag(name: impl Into<String>) -> Self {
        Dependency::Tag(name.into())
    }

    /// A row of `entity` by its primary key columns.
    pub fn primary_key<V: Into<Value>>(
        entity: impl Into<String>,
        key: impl IntoIterator<Item = V>,
    ) -> Self {
        Dependency::PrimaryKey {
            entity: entity.into(),
            key: key.into_iter().map(Into::into).collect(),
        }
    }

    /// A condition over `fields` in `scope`. A field given twice keeps its last value.
    pub fn condition<K: Into<String>>(
        scope: impl Into<String>,
        fields: impl IntoIterator<Item = (K, Value)>,
    ) -> Self {
        Dependency::Condition {
            scope: scope.into(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// The empty condition of `scope`: every object matches it, so every write to the scope
    /// invalidates it (see [`Scope::any_change`](crate::Scope::any_change)).
    pub fn any_change(scope: impl Into<String>) -> Self {
        Dependency::Condition {
            scope: scope.into(),
            fields: BTreeMap::new(),
        }
    }

    /// Everything in `scope`.
    pub fn invalidate_all(scope: impl Into<String>) -> Self {
        Dependency::InvalidateAll {
            scope: scope.into(),
        }
    }

    /// The injective text form of this dependency, used as (part of) a backend key.
    ///
    /// Two different dependencies always encode differently, whatever their strings contain.
    ///
    /// ```
    /// use matroska_core::Dependency;
    /// assert_ne!(
    ///     Dependency::id("a:b", "c").encode(),
    ///     Dependency::id("a", "b:c").encode(),
    /// );
    /// ```
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    pub(crate) fn encode_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Dependency::Id { kind, id } => {
                out.push('I');
                push_len_prefixed(out, kind);
                push_len_prefixed(out, id);
            }
            Dependency::Tag(name) => {
                out.push('T');
                push_len_prefixed(out, name);
            }
            Dependency::PrimaryKey { entity, key } => {
                out.push('P');
                push_len_prefixed(out, entity);
                // Writing to a String cannot fail.
                let _ = write!(out, "{}:", key.len());
                for v in key {
                    v.encode_into(out);
                }
            }
            Dependency::Condition { scope, fields } => {
                out.push('C');
                push_len_prefixed(out, scope);
                let _ = write!(out, "{}:", fields.len());
                // BTreeMap iterates in key order: the encoding is independent of the order
                // the fields were given in.
                for (name, v) in fields {
                    push_len_prefixed(out, name);
                    v.encode_into(out);
                }
            }
            Dependency::InvalidateAll { scope } => {
                out.push('A');
                push_len_prefixed(out, scope);
            }
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Id { kind, id } => write!(f, "Id({kind:?}, {id:?})"),
            Dependency::Tag(name) => write!(f, "Tag({name:?})"),
            Dependency::PrimaryKey { entity, key } => {
                write!(f, "PrimaryKey({entity:?}")?;
                for v in key {
                    write!(f, ", {v}")?;
                }
                f.write_str(")")
            }
            Dependency::Condition { scope, fields } => {
                write!(f, "Condition({scope:?}")?;
                for (k, v) in fields {
                    write!(f, ", {k} = {v}")?;
                }
                f.write_str(")")
            }
            Dependency::InvalidateAll { scope } => write!(f, "InvalidateAll({scope:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Int(i.into())),
            any::<f64>().prop_map(Value::float),
            ".*".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
            (".{0,4}", ".*").prop_map(|(t, r)| Value::typed(t, r)),
            // Strings made of separator characters are the interesting ones.
            "[:&=%;\0sitnfx0-9]{0,6}".prop_map(Value::Str),
        ]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![".*", "[:&=%;\0ITPCA0-9]{0,6}"]
    }

    fn arb_dependency() -> impl Strategy<Value = Dependency> {
        prop_oneof![
            (arb_text(), arb_text()).prop_map(|(kind, id)| Dependency::Id { kind, id }),
            arb_text().prop_map(Dependency::Tag),
            (arb_text(), proptest::collection::vec(arb_value(), 0..4))
                .prop_map(|(entity, key)| Dependency::PrimaryKey { entity, key }),
            (
                arb_text(),
                proptest::collection::btree_map(arb_text(), arb_value(), 0..4)
            )
                .prop_map(|(scope, fields)| Dependency::Condition { scope, fields }),
            arb_text().prop_map(|scope| Dependency::InvalidateAll { scope }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn encoding_is_injective(a in arb_dependency(), b in arb_dependency()) {
            prop_assert_eq!(a == b, a.encode() == b.encode(), "{} vs {}", a, b);
        }

        #[test]
        fn encoding_of_lists_is_injective(
            a in proptest::collection::vec(arb_dependency(), 0..4),
            b in proptest::collection::vec(arb_dependency(), 0..4),
        ) {
            // Concatenations decode one way only, which is what makes the encoding safe to
            // nest (a condition holds several values back to back).
            let cat = |deps: &[Dependency]| deps.iter().map(Dependency::encode).collect::<String>();
            prop_assert_eq!(a == b, cat(&a) == cat(&b));
        }

        #[test]
        fn condition_field_order_does_not_matter(fields in proptest::collection::vec((arb_text(), arb_value()), 0..5)) {
            let mut dedup = BTreeMap::new();
            for (k, v) in &fields { dedup.insert(k.clone(), v.clone()); }
            let forward = Dependency::condition("S", dedup.clone());
            let backward = Dependency::condition("S", dedup.into_iter().rev());
            prop_assert_eq!(forward.encode(), backward.encode());
        }
    }

    #[test]
    fn adversarial_pairs_do_not_collide() {
        let pairs = [
            (Dependency::id("a:b", "c"), Dependency::id("a", "b:c")),
            (Dependency::id("article", "1"), Dependency::tag("article:1")),
            (Dependency::id("", "1:"), Dependency::id("1:", "")),
            (Dependency::id("a\0", "b"), Dependency::id("a", "\0b")),
            (
                Dependency::primary_key("t", [Value::from("1"), Value::from("2")]),
                Dependency::primary_key("t", [Value::from("1s1:2")]),
            ),
            (
                Dependency::primary_key("t", [1_i64]),
                Dependency::primary_key("t", ["1"]),
            ),
            (
                Dependency::condition("A", [("published", Value::from(true))]),
                Dependency::condition("A", [("published", Value::from("true"))]),
            ),
            (
                Dependency::condition("A", [("a", Value::from("1&b=2"))]),
                Dependency::condition("A", [("a", Value::from("1")), ("b", Value::from("2"))]),
            ),
            (
                Dependency::condition("A", [("x", Value::Null)]),
                Dependency::condition("A", [("x", Value::from("n"))]),
            ),
            (
                Dependency::condition("A", Vec::<(String, Value)>::new()),
                Dependency::invalidate_all("A"),
            ),
            (Dependency::tag("é"), Dependency::tag("e\u{301}")),
            (
                Dependency::condition("A", [("x", Value::typed("uuid", "1"))]),
                Dependency::condition("A", [("x", Value::typed("uui", "d1"))]),
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(a, b);
            assert_ne!(a.encode(), b.encode(), "{a} and {b} collide");
        }
    }

    #[test]
    fn float_zero_and_nan_are_canonical() {
        assert_eq!(Value::float(0.0), Value::float(-0.0));
        assert_eq!(Value::float(f64::NAN), Value::float(-f64::NAN));
    }
}
