//! Dependencies derived from a Diesel query's own `WHERE` ([`Cached::derived`](crate::Cached::derived)).
//!
//! Diesel does not hand a query's filter back, but renders it deterministically: the SQL from
//! the backend's query builder, and each bound value's `Debug` form (what
//! [`debug_query`](diesel::debug_query) prints after ` -- binds: `). Those go to core's
//! [`derive`]: bound values of the standard types (integers, strings, booleans, `Option`s,
//! `Vec`s of them for PostgreSQL's `= ANY`, UUIDs) are read back; any other value is
//! [`Bound::Unknown`], which makes a predicate using it coarse.

use diesel::query_builder::{QueryBuilder, QueryFragment};
use matroska_core::derived::{Bound, Derivation, derive};
use matroska_core::{TableSpec, Value};

use crate::namespace::NamespaceBackend;

/// The dependencies `query` gets on backend `DB` with `spec`'s entity as its only one.
pub(crate) fn derivation<DB, Q>(spec: &TableSpec, query: &Q) -> Derivation
where
    DB: NamespaceBackend + Default,
    DB::QueryBuilder: Default,
    Q: QueryFragment<DB>,
{
    let mut builder = DB::QueryBuilder::default();
    if query.to_sql(&mut builder, &DB::default()).is_err() {
        return Derivation::coarse(spec.entity(), "Diesel could not render the query");
    }
    let sql = builder.finish();
    // `debug_query` renders the same SQL, then the binds: the part after it is the list.
    let shown = diesel::debug_query::<DB, _>(query).to_string();
    let binds = shown
        .strip_prefix(sql.as_str())
        .and_then(|rest| rest.strip_prefix(" -- binds: "))
        .and_then(parse_binds);
    match binds {
        Some(binds) => derive(spec, DB::DIALECT, &sql, &binds),
        None => Derivation::coarse(spec.entity(), "the bound values could not be read"),
    }
}

/// The `Debug` form of a list of bound values, one [`Bound`] per value; `None` when the
/// text is no list (the values could not be counted, so none can be trusted).
pub(crate) fn parse_binds(text: &str) -> Option<Vec<Bound>> {
    let mut p = DebugText {
        chars: text.chars().collect(),
        at: 0,
    };
    let items = p.list()?;
    (p.at == p.chars.len()).then_some(items)
}

struct DebugText {
    chars: Vec<char>,
    at: usize,
}

impl DebugText {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.at += 1;
        }
        found
    }

    fn spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.at += 1;
        }
    }

    /// `[a, b, ..]`.
    fn list(&mut self) -> Option<Vec<Bound>> {
        if !self.eat('[') {
            return None;
        }
        let mut items = Vec::new();
        self.spaces();
        if self.eat(']') {
            return Some(items);
        }
        loop {
            self.spaces();
            items.push(self.value()?);
            self.spaces();
            if self.eat(']') {
                return Some(items);
            }
            if !self.eat(',') {
                return None;
            }
        }
    }

    fn value(&mut self) -> Option<Bound> {
        match self.peek()? {
            '"' => self.string().map(|s| Bound::Scalar(Value::Str(s))),
            '[' => {
                let items = self.list()?;
                let values: Option<Vec<Value>> = items
                    .into_iter()
                    .map(|item| match item {
                        Bound::Scalar(v) => Some(v),
                        _ => None,
                    })
                    .collect();
                Some(values.map_or(Bound::Unknown, Bound::List))
            }
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                if word == "Some" && self.peek() == Some('(') {
                    self.at += 1;
                    self.spaces();
                    let inner = self.value()?;
                    self.spaces();
                    if !self.eat(')') {
                        return None;
                    }
                    return Some(match inner {
                        Bound::List(_) => Bound::Unknown,
                        other => other,
                    });
                }
                let scalar = match word.as_str() {
                    "None" => Some(Value::Null),
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    w => w
                        .parse::<i128>()
                        .ok()
                        .map(Value::Int)
                        .or_else(|| uuid(w).map(|u| Value::typed("uuid", u))),
                };
                match (scalar, self.at_separator()) {
                    (Some(value), true) => Some(Bound::Scalar(value)),
                    _ => {
                        // A type this reader does not know (`UserId(5)`, `1.5`,
                        // `2026-01-01T00:00:00`): skip it whole, brackets and strings included.
                        self.skip_value()?;
                        Some(Bound::Unknown)
                    }
                }
            }
        }
    }

    fn at_separator(&self) -> bool {
        matches!(self.peek(), Some(',' | ']' | ')'))
    }

    /// Skips to the `,` / `]` / `)` that ends the current value, outside brackets and strings.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0_usize;
        loop {
            match self.peek()? {
                '"' => {
                    self.string()?;
                    continue;
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth > 0 => depth -= 1,
                ',' | ']' | ')' => return Some(()),
                _ => {}
            }
            self.at += 1;
        }
    }

    /// A Rust string literal as `Debug` writes it.
    fn string(&mut self) -> Option<String> {
        if !self.eat('"') {
            return None;
        }
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.at += 1;
            match c {
                '"' => return Some(out),
                '\\' => {
                    let escaped = self.peek()?;
                    self.at += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        '0' => '\0',
                        '\\' | '"' | '\'' => escaped,
                        'u' => {
                            if !self.eat('{') {
                                return None;
                            }
                            let start = self.at;
                            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                self.at += 1;
                            }
                            let hex: String = self.chars[start..self.at].iter().collect();
                            if !self.eat('}') {
                                return None;
                            }
                            char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                        }
                        _ => return None,
                    });
                }
                c => out.push(c),
            }
        }
    }
}

/// `w` as a lower-case hyphenated UUID, as `uuid::Uuid`'s `Debug` and `ToValue` write it.
fn uuid(w: &str) -> Option<String> {
    let groups: Vec<&str> = w.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then(|| w.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use diesel::prelude::*;
    use diesel::sqlite::Sqlite;
    use matroska_core::derived::Basis;
    use matroska_core::{ColumnDecoder, Dependency};

    use super::*;

    diesel::table! {
        posts (id) {
            id -> Integer,
            title -> Text,
            category -> Text,
            published -> Bool,
            series -> Nullable<Text>,
        }
    }

    fn spec() -> TableSpec {
        TableSpec::new("posts", "posts")
            .key("id", ColumnDecoder::of::<i32>())
            .scope(
                &[
                    ("published", ColumnDecoder::of::<bool>()),
                    ("category", ColumnDecoder::of::<String>()),
                ],
                false,
            )
            .scope(&[("series", ColumnDecoder::of::<Option<String>>())], false)
    }

    #[test]
    fn debug_lists_are_read_back() {
        let binds = parse_binds(
            r#"[1, -2, "a, \"b\"]\n\u{1f}", true, None, Some("x"), [1, 2], UserId(5), 1.5, Foo { a: "]" }, 67E55044-10B1-426F-9239-0C80C1D34F2B, []]"#,
        )
        .unwrap();
        assert_eq!(
            binds,
            vec![
                Bound::Scalar(Value::Int(1)),
                Bound::Scalar(Value::Int(-2)),
                Bound::Scalar(Value::from("a, \"b\"]\n\u{1f}")),
                Bound::Scalar(Value::Bool(true)),
                Bound::Scalar(Value::Null),
                Bound::Scalar(Value::from("x")),
                Bound::List(vec![Value::Int(1), Value::Int(2)]),
                Bound::Unknown,
                Bound::Unknown,
                Bound::Unknown,
                Bound::Scalar(Value::typed("uuid", "67e55044-10b1-426f-9239-0c80c1d34f2b")),
                Bound::List(vec![]),
            ]
        );
        // What cannot be split into values is no list at all.
        for broken in [r#"["a]"#, "[1, 2", "1, 2", "[1] x", r#"["\q"]"#] {
            assert_eq!(parse_binds(broken), None, "{broken}");
        }
    }

    /// Strings exactly as `Debug` writes them come back exactly.
    #[test]
    fn strings_round_trip() {
        for s in [
            "",
            "plain",
            "quote \" and \\ and '",
            "tab\tnl\ncr\r\0",
            "é ü 漢字",
            "\u{7f}\u{200b}\u{301}",
            "]), [",
        ] {
            let text = format!("{:?}", vec![s]);
            assert_eq!(
                parse_binds(&text),
                Some(vec![Bound::Scalar(Value::from(s))]),
                "{text}"
            );
        }
    }

    #[test]
    fn sqlite_queries_as_diesel_renders_them() {
        let ids = posts::table
            .filter(posts::id.eq_any(vec![1, 2]))
            .filter(posts::title.eq("x"))
            .order(posts::title)
            .limit(5)
            .offset(1);
        let d = derivation::<Sqlite, _>(&spec(), &ids);
        assert_eq!(
            d.dependencies,
            vec![
                Dependency::primary_key("posts", [1]),
                Dependency::primary_key("posts", [2]),
                Dependency::invalidate_all("posts"),
            ],
            "{}",
            diesel::debug_query::<Sqlite, _>(&ids)
        );
        let boxed = posts::table
            .filter(posts::published.eq(true).and(posts::category.eq("fantasy")))
            .order(posts::id)
            .into_boxed::<Sqlite>();
        let d = derivation::<Sqlite, _>(&spec(), &boxed);
        assert!(
            d.dependencies.contains(&Dependency::condition(
                "posts",
                [
                    ("published", Value::Bool(true)),
                    ("category", Value::from("fantasy"))
                ]
            )),
            "{d}"
        );
        let series = posts::table.filter(posts::series.is_null());
        assert!(!derivation::<Sqlite, _>(&spec(), &series).is_coarse());
        let count = posts::table
            .filter(posts::id.eq(3))
            .select(diesel::dsl::count_star());
        assert_eq!(
            derivation::<Sqlite, _>(&spec(), &count).basis,
            Basis::Derived(vec![matroska_core::derived::Term::PrimaryKeys(1)])
        );
        let subquery = posts::table.filter(posts::id.eq_any(posts::table.select(posts::id)));
        assert!(derivation::<Sqlite, _>(&spec(), &subquery).is_coarse());
        let empty = posts::table.filter(posts::id.eq_any(Vec::<i32>::new()));
        assert!(!derivation::<Sqlite, _>(&spec(), &empty).is_coarse());
        for coarse in [
            posts::table
                .filter(posts::title.like("a%"))
                .into_boxed::<Sqlite>(),
            posts::table.filter(posts::id.gt(1)).into_boxed::<Sqlite>(),
            posts::table
                .filter(posts::category.eq("a"))
                .order(posts::title)
                .into_boxed::<Sqlite>(),
            posts::table
                .filter(posts::category.eq("a").and(posts::title.eq("t")))
                .into_boxed::<Sqlite>(),
            posts::table.into_boxed::<Sqlite>(),
            posts::table
                .filter(posts::series.is_not_null())
                .into_boxed::<Sqlite>(),
        ] {
            let d = derivation::<Sqlite, _>(&spec(), &coarse);
            assert!(
                d.is_coarse(),
                "{}: {d}",
                diesel::debug_query::<Sqlite, _>(&coarse)
            );
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_queries_as_diesel_renders_them() {
        use diesel::pg::Pg;
        let ids = posts::table
            .filter(posts::id.eq_any(vec![4, 5]))
            .order(posts::title.desc())
            .limit(2);
        let d = derivation::<Pg, _>(&spec(), &ids);
        assert_eq!(
            d.dependencies,
            vec![
                Dependency::primary_key("posts", [4]),
                Dependency::primary_key("posts", [5]),
                Dependency::invalidate_all("posts"),
            ],
            "{}",
            diesel::debug_query::<Pg, _>(&ids)
        );
        let scoped = posts::table
            .filter(posts::category.eq_any(vec!["a", "b"]))
            .order(posts::id);
        let d = derivation::<Pg, _>(&spec(), &scoped);
        assert_eq!(d.dependencies.len(), 3, "{d}");
        let coarse = posts::table.filter(posts::title.ilike("a%"));
        assert!(derivation::<Pg, _>(&spec(), &coarse).is_coarse());
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_queries_as_diesel_renders_them() {
        use diesel::mysql::Mysql;
        let ids = posts::table
            .filter(posts::id.eq_any(vec![4, 5]))
            .filter(posts::published.eq(true))
            .limit(2);
        let d = derivation::<Mysql, _>(&spec(), &ids);
        assert_eq!(
            d.dependencies,
            vec![
                Dependency::primary_key("posts", [4]),
                Dependency::primary_key("posts", [5]),
                Dependency::invalidate_all("posts"),
            ],
            "{}",
            diesel::debug_query::<Mysql, _>(&ids)
        );
        let scoped = posts::table
            .filter(posts::published.eq(false))
            .order(posts::category);
        assert!(!derivation::<Mysql, _>(&spec(), &scoped).is_coarse());
    }
}
