//! The SQL the ORMs render for a one-table select, read back: a tokenizer and a
//! recursive-descent parser for the subset SeaORM and Diesel generate, and the `WHERE`
//! normalised to a bounded disjunction of conjunctions.
//!
//! Anything outside the subset is an error ([`Unsupported`]), which the caller turns into the
//! coarse dependencies: a statement this parser does not fully understand never yields
//! anything narrower.

use super::{Bound, Dialect};
use crate::value::Value;

/// At most this many terms (conjunctions) in a normalised `WHERE`; past it, coarse.
pub const MAX_TERMS: usize = 16;
/// At most this many predicates in one conjunction; past it, coarse.
pub const MAX_CONJUNCTS: usize = 32;
/// At most this many values in one `IN` list; past it, coarse.
pub const MAX_LIST: usize = 1024;

/// Why a statement is outside the understood subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl Unsupported {
    fn new(what: impl Into<String>) -> Self {
        Unsupported(what.into())
    }
}

type Parsed<T> = Result<T, Unsupported>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A quoted identifier.
    Ident(String),
    /// A bare word, upper-cased: keywords (bare identifiers are never generated).
    Word(String),
    /// A bound parameter, by its index in the statement's values.
    Param(usize),
    Number(String),
    Str,
    Punct(char),
    /// Any run of operator characters (`=`, `<>`, `::`, ...).
    Op(String),
}

fn tokenize(sql: &str, dialect: Dialect) -> Parsed<Vec<Tok>> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut next_positional = 0;
    // SQLite takes both quotes (Diesel writes backticks there, SeaORM double quotes).
    let is_ident_quote = |c: char| match dialect {
        Dialect::MySql => c == '`',
        Dialect::Postgres => c == '"',
        Dialect::Sqlite => c == '"' || c == '`',
    };
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
        } else if is_ident_quote(c) {
            let (text, next) = quoted(&chars, i, c)?;
            out.push(Tok::Ident(text));
            i = next;
        } else if c == '\'' || c == '"' || c == '`' {
            // A string literal (MySQL's `"` too), or the other dialect's identifier quote.
            if c != '\'' && !(dialect == Dialect::MySql && c == '"') {
                return Err(Unsupported::new(format!("the quote `{c}`")));
            }
            let (text, next) = quoted(&chars, i, c)?;
            if text.contains('\\') {
                // MySQL reads backslash escapes in strings; other settings do not.
                return Err(Unsupported::new("a backslash in a string literal"));
            }
            out.push(Tok::Str);
            i = next;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(Tok::Word(word.to_ascii_uppercase()));
        } else if c.is_ascii_digit() {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
            {
                i += 1;
            }
            out.push(Tok::Number(chars[start..i].iter().collect()));
        } else if c == '$' && dialect == Dialect::Postgres {
            let start = i + 1;
            i = start;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            let n: usize = chars[start..i]
                .iter()
                .collect::<String>()
                .parse()
                .map_err(|_| Unsupported::new("a `$` that is no numbered parameter"))?;
            if n == 0 {
                return Err(Unsupported::new("the parameter `$0`"));
            }
            out.push(Tok::Param(n - 1));
        } else if c == '?' && dialect != Dialect::Postgres {
            out.push(Tok::Param(next_positional));
            next_positional += 1;
            i += 1;
        } else if matches!(c, '(' | ')' | ',' | '.' | '*') {
            out.push(Tok::Punct(c));
            i += 1;
        } else if "=<>!|+-/%:&^~@#?".contains(c) {
            if (c == '-' && chars.get(i + 1) == Some(&'-'))
                || (c == '/' && chars.get(i + 1) == Some(&'*'))
                || c == '#'
            {
                return Err(Unsupported::new("a comment"));
            }
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| "=<>!|+-/%:&^~@#?".contains(*c))
            {
                i += 1;
            }
            out.push(Tok::Op(chars[start..i].iter().collect()));
        } else {
            return Err(Unsupported::new(format!("the character `{c}`")));
        }
    }
    Ok(out)
}

/// The text between the quote at `start` and its closing quote (a doubled quote inside is
/// one), and the index after it.
fn quoted(chars: &[char], start: usize, quote: char) -> Parsed<(String, usize)> {
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(Unsupported::new("an unterminated quote")),
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    text.push(quote);
                    i += 2;
                } else {
                    return Ok((text, i + 1));
                }
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

/// The right side of a comparison: a bound parameter or an integer literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// The statement's value at this index.
    Param(usize),
    /// An integer literal.
    Int(i128),
}

/// One understood predicate on a column of the statement's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// `col = x` or `col IN (x, y, ..)`: one of these values.
    In {
        /// The column.
        column: String,
        /// The values.
        values: Vec<Operand>,
    },
    /// `col = ANY($n)`: one of the array parameter's values (PostgreSQL).
    Any {
        /// The column.
        column: String,
        /// The array parameter's index.
        param: usize,
    },
    /// `col IS NULL`.
    IsNull {
        /// The column.
        column: String,
    },
}

impl Predicate {
    /// The column the predicate is on.
    pub fn column(&self) -> &str {
        match self {
            Predicate::In { column, .. }
            | Predicate::Any { column, .. }
            | Predicate::IsNull { column } => column,
        }
    }
}

/// A disjunction of conjunctions. An empty conjunction is true (every row); an empty
/// disjunction is false (no row).
pub type Dnf = Vec<Vec<Predicate>>;

/// A one-table select as far as dependencies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Select {
    /// The table read.
    pub table: String,
    /// The `WHERE`, normalised; `None` without one (every row).
    pub filter: Option<Dnf>,
    /// The `ORDER BY` columns.
    pub order_by: Vec<String>,
}

/// Parses `sql`, a select on one table, into its [`Select`].
///
/// # Errors
/// [`Unsupported`] for anything outside the subset (joins, subqueries, grouping, operators
/// other than `=`, `IN`, `= ANY`, `IS NULL`, `AND`, `OR`, ...).
pub fn parse(sql: &str, dialect: Dialect, binds: &[Bound]) -> Parsed<Select> {
    let tokens = tokenize(sql, dialect)?;
    let mut p = Parser {
        tokens,
        at: 0,
        binds,
    };
    p.statement()
}

struct Parser<'b> {
    tokens: Vec<Tok>,
    at: usize,
    /// To evaluate comparisons of constants (`$1 = $2`, SeaORM's empty `IN`).
    binds: &'b [Bound],
}

/// An unnormalised filter.
enum Expr {
    Const(bool),
    Pred(Predicate),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.at).cloned();
        self.at += 1;
        tok
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == word)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.is_word(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_word(&mut self, word: &str) -> Parsed<()> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{word}`")))
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let found = self.peek() == Some(tok);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, tok: &Tok) -> Parsed<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("{tok:?}")))
        }
    }

    fn unexpected(&self, wanted: &str) -> Unsupported {
        match self.peek() {
            Some(tok) => Unsupported::new(format!("{} where {wanted} was expected", show(tok))),
            None => Unsupported::new(format!("the end where {wanted} was expected")),
        }
    }

    fn statement(&mut self) -> Parsed<Select> {
        self.expect_word("SELECT")?;
        // The select list: anything but a subquery, up to `FROM` outside parentheses. What a
        // select list computes from the rows it reads does not change which rows it reads.
        let mut depth = 0_usize;
        loop {
            match self.next() {
                None => return Err(Unsupported::new("a select without `FROM`")),
                Some(Tok::Word(w)) if w == "SELECT" => {
                    return Err(Unsupported::new("a subquery in the select list"));
                }
                Some(Tok::Word(w)) if w == "FROM" && depth == 0 => break,
                Some(Tok::Punct('(')) => depth += 1,
                Some(Tok::Punct(')')) => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| Unsupported::new("an unbalanced `)`"))?;
                }
                Some(_) => {}
            }
        }
        let table = match self.next() {
            Some(Tok::Ident(table)) => table,
            Some(tok) => {
                return Err(Unsupported::new(format!(
                    "{} as the table read (one quoted table name expected)",
                    show(&tok)
                )));
            }
            None => return Err(Unsupported::new("a select without a table")),
        };
        if self.peek() == Some(&Tok::Punct('.')) {
            return Err(Unsupported::new("a schema-qualified table"));
        }
        let filter = if self.eat_word("WHERE") {
            Some(normalise(self.or(&table)?)?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.eat_word("ORDER") {
            self.expect_word("BY")?;
            loop {
                order_by.push(self.column(&table)?);
                if !self.eat_word("ASC") {
                    self.eat_word("DESC");
                }
                if self.eat_word("NULLS") && !self.eat_word("FIRST") {
                    self.expect_word("LAST")?;
                }
                if !self.eat(&Tok::Punct(',')) {
                    break;
                }
            }
        }
        if self.eat_word("LIMIT") {
            self.limit_operand()?;
            if self.eat(&Tok::Punct(',')) {
                // MySQL's `LIMIT offset, count`.
                self.limit_operand()?;
            }
        }
        if self.eat_word("OFFSET") {
            self.limit_operand()?;
        }
        match self.peek() {
            None => Ok(Select {
                table,
                filter,
                order_by,
            }),
            Some(_) => Err(self.unexpected("the end of the statement")),
        }
    }

    fn limit_operand(&mut self) -> Parsed<()> {
        if self.eat_word("ALL") {
            return Ok(());
        }
        let negative = self.eat(&Tok::Op("-".to_owned()));
        match self.next() {
            Some(Tok::Param(_)) if !negative => Ok(()),
            Some(Tok::Number(_)) => Ok(()),
            _ => Err(Unsupported::new(
                "a `LIMIT` / `OFFSET` that is not a number",
            )),
        }
    }

    /// `"table"."column"`: only qualified columns, which can never name a select-list alias.
    fn column(&mut self, table: &str) -> Parsed<String> {
        match (self.next(), self.next(), self.next()) {
            (Some(Tok::Ident(t)), Some(Tok::Punct('.')), Some(Tok::Ident(column))) => {
                if t == table {
                    Ok(column)
                } else {
                    Err(Unsupported::new(format!(
                        "a column of `{t}`, not of the table read"
                    )))
                }
            }
            _ => {
                self.at -= 3;
                Err(self.unexpected("a qualified column"))
            }
        }
    }

    fn or(&mut self, table: &str) -> Parsed<Expr> {
        let mut terms = vec![self.and(table)?];
        while self.eat_word("OR") {
            terms.push(self.and(table)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self, table: &str) -> Parsed<Expr> {
        let mut terms = vec![self.atom(table)?];
        while self.eat_word("AND") {
            terms.push(self.atom(table)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn atom(&mut self, table: &str) -> Parsed<Expr> {
        if self.eat(&Tok::Punct('(')) {
            let inner = self.or(table)?;
            self.expect(&Tok::Punct(')'))?;
            return Ok(inner);
        }
        if self.eat_word("TRUE") {
            return Ok(Expr::Const(true));
        }
        if self.eat_word("FALSE") {
            return Ok(Expr::Const(false));
        }
        if matches!(self.peek(), Some(Tok::Number(_) | Tok::Param(_))) {
            // `1 = 1`, `1=0`, `$1 = $2`: what the ORMs render for empty `IN` lists and empty
            // conditions. Integers only (a string comparison would need the collation).
            let left = self.operand()?;
            self.expect(&Tok::Op("=".to_owned()))?;
            let right = self.operand()?;
            let (l, r) = (self.integer(&left)?, self.integer(&right)?);
            return Ok(Expr::Const(l == r));
        }
        let column = self.column(table)?;
        if self.eat(&Tok::Op("=".to_owned())) {
            if self.eat_word("ANY") {
                self.expect(&Tok::Punct('('))?;
                let param = match self.next() {
                    Some(Tok::Param(i)) => i,
                    _ => return Err(Unsupported::new("`= ANY` of something but a parameter")),
                };
                self.expect(&Tok::Punct(')'))?;
                return Ok(Expr::Pred(Predicate::Any { column, param }));
            }
            let value = self.operand()?;
            return Ok(Expr::Pred(Predicate::In {
                column,
                values: vec![value],
            }));
        }
        if self.eat_word("IN") {
            self.expect(&Tok::Punct('('))?;
            let mut values = Vec::new();
            if !self.eat(&Tok::Punct(')')) {
                loop {
                    values.push(self.operand()?);
                    if values.len() > MAX_LIST {
                        return Err(Unsupported::new(format!(
                            "an `IN` list of more than {MAX_LIST} values"
                        )));
                    }
                    if self.eat(&Tok::Punct(')')) {
                        break;
                    }
                    self.expect(&Tok::Punct(','))?;
                }
            }
            if values.is_empty() {
                return Ok(Expr::Const(false));
            }
            return Ok(Expr::Pred(Predicate::In { column, values }));
        }
        if self.eat_word("IS") {
            self.expect_word("NULL")?;
            return Ok(Expr::Pred(Predicate::IsNull { column }));
        }
        Err(self.unexpected("`=`, `IN` or `IS NULL`"))
    }

    fn integer(&self, operand: &Operand) -> Parsed<i128> {
        match operand {
            Operand::Int(i) => Ok(*i),
            Operand::Param(i) => match self.binds.get(*i) {
                Some(Bound::Scalar(Value::Int(v))) => Ok(*v),
                _ => Err(Unsupported::new(
                    "a comparison of constants that are not both integers",
                )),
            },
        }
    }

    fn operand(&mut self) -> Parsed<Operand> {
        match self.next() {
            Some(Tok::Param(i)) => Ok(Operand::Param(i)),
            Some(Tok::Number(n)) => Ok(Operand::Int(integer(&n)?)),
            Some(tok) => Err(Unsupported::new(format!(
                "{} compared to a column",
                show(&tok)
            ))),
            None => Err(Unsupported::new("a comparison without a right side")),
        }
    }
}

fn integer(text: &str) -> Parsed<i128> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Unsupported::new(format!("the number literal `{text}`")));
    }
    text.parse()
        .map_err(|_| Unsupported::new(format!("the number literal `{text}`")))
}

fn show(tok: &Tok) -> String {
    match tok {
        Tok::Ident(name) => format!("the identifier `{name}`"),
        Tok::Word(word) => format!("`{word}`"),
        Tok::Param(i) => format!("parameter {}", i + 1),
        Tok::Number(n) => format!("the number `{n}`"),
        Tok::Str => "a string literal".to_owned(),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Op(op) => format!("the operator `{op}`"),
    }
}

/// `expr` as a disjunction of at most [`MAX_TERMS`] conjunctions of at most
/// [`MAX_CONJUNCTS`] predicates.
fn normalise(expr: Expr) -> Parsed<Dnf> {
    let dnf = match expr {
        Expr::Const(true) => vec![Vec::new()],
        Expr::Const(false) => Vec::new(),
        Expr::Pred(p) => vec![vec![p]],
        Expr::Or(terms) => {
            let mut out = Vec::new();
            for term in terms {
                out.extend(normalise(term)?);
                check(&out)?;
            }
            out
        }
        Expr::And(terms) => {
            let mut out: Dnf = vec![Vec::new()];
            for term in terms {
                let term = normalise(term)?;
                let mut next = Vec::new();
                for left in &out {
                    for right in &term {
                        let mut both = left.clone();
                        both.extend(right.iter().cloned());
                        next.push(both);
                        check(&next)?;
                    }
                }
                out = next;
            }
            out
        }
    };
    check(&dnf)?;
    Ok(dnf)
}

fn check(dnf: &Dnf) -> Parsed<()> {
    if dnf.len() > MAX_TERMS {
        return Err(Unsupported::new(format!(
            "a filter of more than {MAX_TERMS} terms once normalised"
        )));
    }
    if dnf.iter().any(|c| c.len() > MAX_CONJUNCTS) {
        return Err(Unsupported::new(format!(
            "a conjunction of more than {MAX_CONJUNCTS} predicates"
        )));
    }
    Ok(())
}
