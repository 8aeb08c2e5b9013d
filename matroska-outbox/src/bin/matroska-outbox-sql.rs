//! `matroska-outbox-sql`: prints the SQL that installs the outbox and its triggers for the
//! tables named on the command line ([`Outbox::install_sql`]), for a migration file.
//!
//! ```text
//! cargo install matroska-outbox --features cli
//! matroska-outbox-sql --database postgres --table post:id:category,published --table comment:id::post_id
//! ```
//!
//! Built only with the `cli` feature, which adds no dependency: the arguments are parsed by
//! hand.

use std::process::ExitCode;

use matroska_core::{ColumnDecoder, TableSpec};
use matroska_outbox::{Dialect, Outbox};

const USAGE: &str = "\
matroska-outbox-sql: print the SQL that installs the matroska outbox and its triggers, for a
migration file (statements end with `;`).

USAGE:
    matroska-outbox-sql --database <postgres|mysql|sqlite> --table <TABLE> [--table <TABLE>]...
                        [--outbox <NAME>] [--schema <NAME>] [--down] [--delimiter <TEXT>]

OPTIONS:
    --database <DB>     postgres (or postgresql), mysql (or mariadb), sqlite
    --table <TABLE>     NAME:KEY[,KEY...][:COLUMN[,COLUMN...][:FOREIGN_KEY[,FOREIGN_KEY...]]]
                        the table, its primary-key columns in the key's order, the columns
                        the models' scopes filter on (their old and new values are recorded),
                        and the foreign-key columns of a Diesel model's
                        #[diesel(belongs_to(..))] (recorded in every row, for the derived
                        dependencies of queries filtered by them; leave the scope part empty
                        when there is none: comment:id::post_id).
                        A column written NAME=bytes holds bytes (BYTEA, BLOB, BINARY).
                        Repeat for each watched table.
    --outbox <NAME>     the outbox table's name (default: matroska_outbox)
    --schema <NAME>     the schema (PostgreSQL) or database (MySQL) of the outbox tables
    --down              print the SQL that removes the triggers instead (the outbox tables stay)
    --delimiter <TEXT>  end statements with TEXT instead of `;`; for MySQL also print
                        `DELIMITER TEXT` first, as the mysql command-line client needs for
                        trigger bodies
    -h, --help          print this help

List the same columns as the models' keys (`#[cache(key)]`, Diesel's `#[diesel(primary_key)]`,
SeaORM's `primary_key`), `#[scope(..)]` fields and Diesel `belongs_to` foreign keys: the relay
checks the installed triggers against its models at start (an error in development mode).
Generate the migration again after upgrading matroska to a release with a new trigger layout
(the relay says so: `TriggersOutdated`).
`matroska_outbox::install` does more where it can ask the database (MySQL foreign-key
actions and TRUNCATE, SQLite REPLACE through UNIQUE indexes); see the crate docs.

EXAMPLE:
    matroska-outbox-sql --database postgres --table post:id:category,published --table comment:id::post_id
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Print(Options),
}

#[derive(Debug, PartialEq)]
struct Options {
    dialect: Dialect,
    tables: Vec<Table>,
    outbox: Option<String>,
    schema: Option<String>,
    down: bool,
    delimiter: Option<String>,
}

/// One `--table` argument.
#[derive(Debug, PartialEq)]
struct Table {
    name: String,
    keys: Vec<Column>,
    scope: Vec<Column>,
    /// Foreign keys of a Diesel `belongs_to` (tracked columns).
    tracked: Vec<Column>,
}

#[derive(Debug, PartialEq)]
struct Column {
    name: String,
    bytes: bool,
}

impl Table {
    fn spec(&self) -> TableSpec {
        let decoder = |c: &Column| {
            if c.bytes {
                ColumnDecoder::of::<Vec<u8>>()
            } else {
                // What the triggers record does not depend on the type but for bytes (written
                // as hex); the relay decodes with its models' own decoders.
                ColumnDecoder::of::<String>()
            }
        };
        let entity = self.name.rsplit('.').next().unwrap_or(&self.name);
        let mut spec = TableSpec::new(entity, self.name.as_str());
        for key in &self.keys {
            spec = spec.key(key.name.as_str(), decoder(key));
        }
        if !self.scope.is_empty() {
            let columns: Vec<(&str, ColumnDecoder)> = self
                .scope
                .iter()
                .map(|c| (c.name.as_str(), decoder(c)))
                .collect();
            spec = spec.scope(&columns, false);
        }
        for column in &self.tracked {
            spec = spec.tracked(column.name.as_str(), decoder(column));
        }
        spec
    }
}

fn parse_columns(table: &str, what: &str, list: &str) -> Result<Vec<Column>, String> {
    let mut out: Vec<Column> = Vec::new();
    for item in list.split(',') {
        let (name, bytes) = match item.split_once('=') {
            None => (item, false),
            Some((name, "bytes")) => (name, true),
            Some((_, other)) => {
                return Err(format!(
                    "--table {table}: unknown column type `{other}` in `{item}` (only `=bytes`)"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("--table {table}: an empty {what} column name"));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(format!(
                "--table {table}: {what} column `{name}` given twice"
            ));
        }
        out.push(Column {
            name: name.to_owned(),
            bytes,
        });
    }
    Ok(out)
}

fn parse_table(arg: &str) -> Result<Table, String> {
    let mut parts = arg.split(':');
    let name = parts.next().unwrap_or_default();
    let (Some(keys), scope, tracked, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "--table {arg}: expected NAME:KEY[,KEY...][:COLUMN[,COLUMN...][:FOREIGN_KEY[,...]]], \
             e.g. post:id:category or comment:id::post_id"
        ));
    };
    if name.is_empty() {
        return Err(format!("--table {arg}: the table name is empty"));
    }
    let keys = parse_columns(arg, "key", keys)?;
    // An empty scope part is allowed before the foreign keys (`comment:id::post_id`).
    let scope = match scope {
        Some("") if tracked.is_some() => Vec::new(),
        Some(list) => parse_columns(arg, "scope", list)?,
        None => Vec::new(),
    };
    let tracked = match tracked {
        Some(list) => parse_columns(arg, "foreign-key", list)?,
        None => Vec::new(),
    };
    Ok(Table {
        name: name.to_owned(),
        keys,
        scope,
        tracked,
    })
}

fn parse_dialect(value: &str) -> Result<Dialect, String> {
    match value.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
        "mysql" | "mariadb" => Ok(Dialect::MySql),
        "sqlite" | "sqlite3" => Ok(Dialect::Sqlite),
        other => Err(format!(
            "--database {other}: expected postgres, mysql (mariadb) or sqlite"
        )),
    }
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut dialect = None;
    let mut tables: Vec<Table> = Vec::new();
    let (mut outbox, mut schema, mut delimiter) = (None, None, None);
    let mut down = false;
    while let Some(arg) = args.next() {
        // `--name=value` and `--name value` alike.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &str| match inline {
            Some(v) => Ok(v.to_owned()),
            None => args
                .next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--database" => {
                if dialect.is_some() {
                    return Err("--database given twice".into());
                }
                dialect = Some(parse_dialect(&value("--database")?)?);
            }
            "--table" => {
                let table = parse_table(&value("--table")?)?;
                if tables.iter().any(|t| t.name == table.name) {
                    return Err(format!("--table {}: the table is given twice", table.name));
                }
                tables.push(table);
            }
            "--outbox" => outbox = Some(value("--outbox")?),
            "--schema" => schema = Some(value("--schema")?),
            "--delimiter" => {
                let d = value("--delimiter")?;
                if d.trim().is_empty() {
                    return Err("--delimiter: an empty delimiter".into());
                }
                delimiter = Some(d);
            }
            "--down" if inline.is_none() => down = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let Some(dialect) = dialect else {
        return Err("--database is required (postgres, mysql or sqlite)".into());
    };
    if tables.is_empty() {
        return Err("at least one --table is required".into());
    }
    Ok(Command::Print(Options {
        dialect,
        tables,
        outbox,
        schema,
        down,
        delimiter,
    }))
}

/// The script: a header comment, then each statement ended by the delimiter.
fn render(options: &Options) -> Result<String, String> {
    let mut outbox = match &options.outbox {
        Some(name) => Outbox::named(name).map_err(|e| format!("--outbox: {e}"))?,
        None => Outbox::default(),
    };
    if let Some(schema) = &options.schema {
        outbox = outbox
            .in_schema(schema)
            .map_err(|e| format!("--schema: {e}"))?;
    }
    let specs: Vec<TableSpec> = options.tables.iter().map(Table::spec).collect();
    let statements = if options.down {
        let names: Vec<&str> = options.tables.iter().map(|t| t.name.as_str()).collect();
        outbox.uninstall_sql(options.dialect, &names)
    } else {
        outbox
            .install_sql(options.dialect, &specs)
            .map_err(|e| e.to_string())?
    };
    let names: Vec<&str> = options.tables.iter().map(|t| t.name.as_str()).collect();
    let mut out = format!(
        "-- matroska outbox (layout {}): {} for {}\n-- generated by matroska-outbox-sql {}\n",
        matroska_outbox::LAYOUT_VERSION,
        if options.down {
            "triggers removed"
        } else {
            "tables and triggers"
        },
        names.join(", "),
        env!("CARGO_PKG_VERSION"),
    );
    let end = options.delimiter.as_deref().unwrap_or(";");
    if let (Some(d), Dialect::MySql) = (&options.delimiter, options.dialect) {
        out.push_str(&format!("DELIMITER {d}\n"));
    }
    for statement in statements {
        out.push_str(&statement);
        out.push_str(end);
        out.push('\n');
    }
    if let (Some(_), Dialect::MySql) = (&options.delimiter, options.dialect) {
        out.push_str("DELIMITER ;\n");
    }
    Ok(out)
}

fn main() -> ExitCode {
    let result = parse(std::env::args().skip(1)).and_then(|command| match command {
        Command::Help => Ok(None),
        Command::Print(options) => render(&options).map(Some),
    });
    match result {
        Ok(Some(sql)) => {
            print!("{sql}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("matroska-outbox-sql: {message}\n(run with --help for the usage)");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn options(line: &str) -> Options {
        match parse(args(line)) {
            Ok(Command::Print(options)) => options,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse(args(line)) {
            Err(message) => message,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn tables_keys_and_scope_columns() {
        let o = options(
            "--database postgres --table post:id:category,published --table=tag:post_id,name=bytes",
        );
        assert_eq!(o.dialect, Dialect::Postgres);
        assert_eq!(
            o.tables,
            [
                Table {
                    name: "post".into(),
                    keys: vec![Column {
                        name: "id".into(),
                        bytes: false
                    }],
                    scope: vec![
                        Column {
                            name: "category".into(),
                            bytes: false
                        },
                        Column {
                            name: "published".into(),
                            bytes: false
                        }
                    ],
                    tracked: vec![],
                },
                Table {
                    name: "tag".into(),
                    keys: vec![
                        Column {
                            name: "post_id".into(),
                            bytes: false
                        },
                        Column {
                            name: "name".into(),
                            bytes: true
                        }
                    ],
                    scope: vec![],
                    tracked: vec![],
                },
            ]
        );
        let comment = &options("--database sqlite --table comment:id::post_id,author_id").tables[0];
        assert!(comment.scope.is_empty());
        assert_eq!(
            comment
                .tracked
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["post_id", "author_id"]
        );
        assert_eq!(
            comment
                .spec()
                .tracked_columns()
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>(),
            ["post_id", "author_id"]
        );
        assert_eq!(
            options("--table t:id --database MariaDB").dialect,
            Dialect::MySql
        );
        let o = options("--database sqlite --table t:id --outbox ob --schema s --down");
        assert_eq!(
            (o.outbox.as_deref(), o.schema.as_deref()),
            (Some("ob"), Some("s"))
        );
        assert!(o.down);
        assert_eq!(parse(args("--table t:id -h")), Ok(Command::Help));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        for (line, says) in [
            ("--table t:id", "--database is required"),
            ("--database postgres", "at least one --table"),
            ("--database oracle --table t:id", "expected postgres, mysql"),
            ("--database postgres --table t", "expected NAME:KEY"),
            (
                "--database postgres --table t:id:a:b:c",
                "expected NAME:KEY",
            ),
            ("--database postgres --table :id", "table name is empty"),
            ("--database postgres --table t:", "empty key column"),
            ("--database postgres --table t:id,", "empty key column"),
            ("--database postgres --table t:id:a,a", "`a` given twice"),
            (
                "--database postgres --table t:id=text",
                "unknown column type `text`",
            ),
            (
                "--database postgres --table t:id --table t:id",
                "given twice",
            ),
            (
                "--database postgres --database mysql --table t:id",
                "--database given twice",
            ),
            ("--database postgres --table", "--table needs a value"),
            ("--database --table t:id", "--database needs a value"),
            (
                "--database postgres --table t:id --frobnicate",
                "unknown argument `--frobnicate`",
            ),
            (
                "--database postgres --table t:id --down=yes",
                "unknown argument `--down`",
            ),
        ] {
            let message = error(line);
            assert!(message.contains(says), "{line}: {message}");
        }
    }

    #[test]
    fn invalid_names_are_errors_not_sql() {
        let o = options("--database postgres --table t:id --outbox bad-name");
        assert!(render(&o).unwrap_err().starts_with("--outbox:"));
        let o = options("--database postgres --table t:id --schema 1s");
        assert!(render(&o).unwrap_err().starts_with("--schema:"));
    }

    #[test]
    fn the_script_is_install_sql_with_delimiters() {
        let o = options("--database mysql --table post:id:category --delimiter //");
        let script = render(&o).unwrap();
        let expected = Outbox::default()
            .install_sql(Dialect::MySql, &[o.tables[0].spec()])
            .unwrap();
        assert!(script.starts_with("-- matroska outbox"));
        assert!(script.contains("\nDELIMITER //\n") && script.ends_with("DELIMITER ;\n"));
        for statement in &expected {
            assert!(script.contains(&format!("{statement}//\n")), "{statement}");
        }
        let down = render(&options("--database sqlite --table post:id --down")).unwrap();
        for statement in Outbox::default().uninstall_sql(Dialect::Sqlite, &["post"]) {
            assert!(down.contains(&format!("{statement};\n")));
        }
    }
}
