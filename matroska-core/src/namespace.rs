//! Which data a database connection reads: the namespace ORM integrations hash into the keys
//! of cached queries.
//!
//! A cached query's key hashes its SQL and values; on their own they would let two databases
//! or schemas behind one cache prefix (tenants, a staging and a production database, schemas
//! picked by `search_path`) share entries and each other's rows. So the integrations also hash
//! the connection's namespace (asked once per pool for SeaORM, again after any other statement
//! for Diesel) with the statements here, which every integration shares so they agree on what
//! a namespace is:
//!
//! | database | namespace |
//! |---|---|
//! | PostgreSQL | `current_database()`, `current_schemas(false)` (the effective `search_path`), `current_user` |
//! | MariaDB / MySQL | `DATABASE()`, `CURRENT_USER()` |
//! | SQLite | every attached database's name and file (`pragma_database_list`); an in-memory database is private to its connection or pool ([`private_to`]) |
//!
//! Not covered, so give such databases their own cache (or prefix): two *servers* with equal
//! database, schema and user names behind one prefix, and row-level security keyed by session
//! settings rather than the user. A session that changes its namespace later (`SET
//! search_path`, `SET ROLE`, `USE`) is the integration's to notice: Diesel connections forget
//! the namespace whenever they run another statement, SeaORM pools keep theirs (see
//! `matroska_seaorm::connection`).

use std::sync::LazyLock;

/// PostgreSQL: one text column `ns`.
pub const POSTGRES_SQL: &str = "SELECT current_database() || '/' || \
     array_to_string(current_schemas(false), ',') || '/' || current_user AS ns";

/// MariaDB / MySQL: one text column `ns`.
pub const MYSQL_SQL: &str = "SELECT CONCAT(IFNULL(DATABASE(), ''), '/', CURRENT_USER()) AS ns";

/// SQLite: a text column `ns` and an integer column `memory`, above zero when an attached
/// database is in memory (then finish the namespace with [`private_to`]).
pub const SQLITE_SQL: &str = "SELECT group_concat(name || '=' || file, ',') AS ns, \
     sum(file = '') AS memory FROM pragma_database_list";

/// Makes `namespace` private to one in-memory database: `owner` names it within the process
/// (a pool's or a connection's number, unique while it lives), the process id and its start
/// time tell processes apart (no other process can open it anyway).
pub fn private_to(namespace: &mut String, owner: u64) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(
        namespace,
        "/memory:{}:{owner:x}:{}",
        std::process::id(),
        *STARTED
    );
}

/// When this process first made a namespace private: with the process id, it tells apart
/// processes that reuse an id over the life of a shared cache.
static STARTED: LazyLock<u128> = LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
});

#[cfg(test)]
mod tests {
    use super::private_to;

    #[test]
    fn private_namespaces_differ_by_owner() {
        let (mut a, mut b) = (String::from("Sqlite/main="), String::from("Sqlite/main="));
        private_to(&mut a, 1);
        private_to(&mut b, 2);
        assert_ne!(a, b);
        assert!(a.starts_with("Sqlite/main=/memory:"));
    }
}
