//! Cache keys of Diesel queries: `q:{entity}:{kind}:{hash}`.

use diesel::backend::Backend;
use diesel::query_builder::QueryFragment;

/// `q:{entity}:{kind}:{hash}`, the hash over the backend, the connection's namespace
/// ([`crate::namespace`]), the optional user namespace ([`Cached::namespace`](crate::Cached::namespace))
/// and Diesel's [`debug_query`](diesel::debug_query) text of `query` (SQL and bound values).
/// Sync and async connections of one backend and database share entries.
pub(crate) fn query_key<DB, S>(
    query: &S,
    entity: &str,
    kind: &str,
    namespace: &str,
    user_namespace: Option<&str>,
) -> String
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    S: QueryFragment<DB>,
{
    let statement = format!("{:?}", diesel::debug_query::<DB, _>(query));
    format!(
        "q:{entity}:{kind}:{:032x}",
        statement_hash(
            std::any::type_name::<DB>(),
            namespace,
            user_namespace,
            &statement
        )
    )
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
    use super::statement_hash;

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
