//! Cache keys of Diesel queries: `q:{entity}:{kind}:{hash}`.

use diesel::backend::Backend;
use diesel::query_builder::QueryFragment;

/// A cached query's key and statement: `q:{entity}:{kind}:{hash}`, the hash over the
/// backend, the connection's namespace ([`crate::namespace`]), the optional user namespace
/// ([`Cached::namespace`](crate::Cached::namespace)), the entities the result is read as
/// (`row_entities`: they decide the entry's dependencies, so two row types over one statement
/// never share an entry) and Diesel's [`debug_query`](diesel::debug_query) text of `query`
/// (SQL and bound values), which is returned too. Sync and async connections of one backend
/// and database share entries.
pub(crate) fn query_key<DB, S>(
    query: &S,
    entity: &str,
    kind: &str,
    namespace: &str,
    user_namespace: Option<&str>,
    row_entities: &str,
) -> (String, String)
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    S: QueryFragment<DB>,
{
    // `SQL -- binds: [..]` (the `Debug` form escapes the quotes of identifiers).
    let statement = diesel::debug_query::<DB, _>(query).to_string();
    let key = format!(
        "q:{entity}:{kind}:{:032x}",
        statement_hash(
            std::any::type_name::<DB>(),
            namespace,
            user_namespace,
            &[row_entities, &statement].concat_with_length()
        )
    );
    (key, statement)
}

/// Joins parts with each one's length first, so no two lists of parts give one string.
trait ConcatWithLength {
    fn concat_with_length(&self) -> String;
}

impl ConcatWithLength for [&str] {
    fn concat_with_length(&self) -> String {
        let mut out = String::new();
        for part in self {
            out.push_str(&part.len().to_string());
            out.push(':');
            out.push_str(part);
        }
        out
    }
}

/// The tables a statement reads: every identifier after a `FROM` or `JOIN` keyword (quoted
/// with `"` or `` ` ``, or bare; the last part of a qualified name), subqueries included.
/// Diesel renders values as bind parameters, so keywords inside literals do not occur; the
/// `-- binds: [..]` part of [`debug_query`](diesel::debug_query)'s text is not read.
pub(crate) fn tables_read(statement: &str) -> Vec<String> {
    let sql = statement.split(" -- binds:").next().unwrap_or(statement);
    let bytes = sql.as_bytes();
    let mut tables: Vec<String> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let word_start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if at == word_start {
            at += 1;
            continue;
        }
        let word = &sql[word_start..at];
        if !(word.eq_ignore_ascii_case("from") || word.eq_ignore_ascii_case("join")) {
            continue;
        }
        // The (possibly qualified) name that follows.
        let mut last = None;
        loop {
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            // A parenthesized join (`FROM (a INNER JOIN b ..)`, MySQL and SQLite).
            while at < bytes.len() && (bytes[at] == b'(' || bytes[at].is_ascii_whitespace()) {
                at += 1;
            }
            let Some(&first) = bytes.get(at) else { break };
            let name = if first == b'"' || first == b'`' {
                let end = sql[at + 1..].find(first as char).map(|e| at + 1 + e);
                let Some(end) = end else { break };
                let name = &sql[at + 1..end];
                at = end + 1;
                name
            } else if first.is_ascii_alphabetic() || first == b'_' {
                let start = at;
                while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
                    at += 1;
                }
                let word = &sql[start..at];
                if word.eq_ignore_ascii_case("select") {
                    // `FROM (SELECT ..)`: the subquery's own `FROM` names its table.
                    at = start;
                    break;
                }
                word
            } else {
                // `FROM (SELECT ..)`: the subquery's own `FROM` names its table.
                break;
            };
            last = Some(name);
            if bytes.get(at) == Some(&b'.') {
                at += 1;
                continue;
            }
            break;
        }
        if let Some(name) = last
            && !tables.iter().any(|t| t == name)
        {
            tables.push(name.to_owned());
        }
    }
    tables
}

/// A stable 128-bit hash (xxh3, no seed: equal across processes and builds) of the backend,
/// the namespaces and the statement, each part length-prefixed so the concatenation is
/// unambiguous.
fn statement_hash(
    backend: &str,
    namespace: &str,
    user_namespace: Option<&str>,
    statement: &str,
) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(backend.as_bytes());
    part(namespace.as_bytes());
    match user_namespace {
        Some(ns) => {
            part(b"ns");
            part(ns.as_bytes());
        }
        None => part(b""),
    }
    part(statement.as_bytes());
    hasher.digest128()
}

#[cfg(test)]
mod tests {
    use super::{statement_hash, tables_read};

    #[test]
    fn tables_read_finds_every_from_and_join() {
        let pg = r#"SELECT "posts"."title" FROM "posts" WHERE ("posts"."id" = ANY(SELECT "comments"."post_id" FROM "comments")) ORDER BY "posts"."id" -- binds: ["from x"]"#;
        assert_eq!(tables_read(pg), ["posts", "comments"]);
        let mysql = "SELECT `comments`.`id` FROM (`comments` INNER JOIN `posts` ON (`comments`.`post_id` = `posts`.`id`)) -- binds: []";
        assert_eq!(tables_read(mysql), ["comments", "posts"]);
        let qualified = r#"SELECT 1 FROM "tenant"."posts" LEFT OUTER JOIN users ON 1 = 1"#;
        assert_eq!(tables_read(qualified), ["posts", "users"]);
        assert_eq!(
            tables_read(r#"SELECT "from_date" FROM "fromage""#),
            ["fromage"]
        );
        assert!(tables_read("SELECT 1").is_empty());
        assert_eq!(tables_read("select * from `a` join"), ["a"]);
        assert_eq!(
            tables_read("SELECT x FROM (SELECT y FROM `b`) AS t JOIN c"),
            ["b", "c"]
        );
    }

    #[test]
    fn hash_parts_are_unambiguous() {
        assert_ne!(
            statement_hash("Sqlite", "db", Some("a"), "b"),
            statement_hash("Sqlite", "db", Some("ab"), "")
        );
        assert_ne!(
            statement_hash("Sqlite", "db", None, "x"),
            statement_hash("Pg", "db", None, "x")
        );
        assert_ne!(
            statement_hash("Sqlite", "db", None, "x"),
            statement_hash("Sqlite", "db", Some(""), "x")
        );
        assert_ne!(
            statement_hash("Pg", "test/a/root", None, "x"),
            statement_hash("Pg", "test/b/root", None, "x")
        );
        assert_ne!(
            statement_hash("Pg", "a", None, "bx"),
            statement_hash("Pg", "ab", None, "x")
        );
    }
}
