//! Statement classification: for each statement, its kind, the tables and columns it reads and
//! writes, and its consistency class, from the SQL text and the schema file.
//!
//! Safety rule: a statement is weak only when the classifier understood it completely and found
//! no strong column in it. Anything it cannot parse is a strong write, with the reason.
//!
//! Pipeline: tokenize once (`split`), split into statements at top-level semicolons, handle the
//! statements sqlparser does not know (PREPARE TRANSACTION, COMMIT PREPARED, DO, CHECKPOINT,
//! VACUUM with options, FOR NO KEY UPDATE / FOR KEY SHARE) at token level, parse the rest, collect
//! relations, columns, functions and write targets (`walk`), and decide (`decide`).

pub mod cache;
mod decide;
mod functions;
mod quick_shape;
pub(crate) mod split;
pub mod temporary;
mod walk;
pub mod words;

pub use split::statement_texts;
pub use words::{Global, Standalone, TxWord, Words};

#[cfg(test)]
mod cases;
#[cfg(test)]
mod props;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::schema::Schema;

/// What a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Read,
    Write,
    Ddl,
    Transaction,
    Utility,
}

/// Its consistency class: where it must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    WeakRead,
    StrongRead,
    WeakWrite,
    StrongWrite,
    Ddl,
    /// Session and utility statements that run on the local Postgres only (SET, SHOW, LISTEN, ...).
    Local,
    /// Statements pgmix refuses (client-driven two-phase commit).
    Refused,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::WeakRead,
        Class::StrongRead,
        Class::WeakWrite,
        Class::StrongWrite,
        Class::Ddl,
        Class::Local,
        Class::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::WeakRead => "weak_read",
            Class::StrongRead => "strong_read",
            Class::WeakWrite => "weak_write",
            Class::StrongWrite => "strong_write",
            Class::Ddl => "ddl",
            Class::Local => "local",
            Class::Refused => "refused",
        }
    }
}

/// Transaction options of BEGIN / START TRANSACTION / SET TRANSACTION.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TxOptions {
    pub read_only: Option<bool>,
    pub isolation: Option<String>,
    pub deferrable: Option<bool>,
}

/// What a statement does to the session's SQL-level prepared statements. EXECUTE's class is
/// that of the statement it runs, which only the session knows (see `session::route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlPrepared {
    /// `PREPARE name AS ...`, with the class of its statement.
    Prepare(String, Class),
    /// `EXECUTE name (params)`, with the class of the parameter expressions alone (they may call
    /// functions or read tables themselves).
    Execute { name: String, params: Class },
    /// `DEALLOCATE name`, or every statement for `DEALLOCATE ALL` / `DISCARD ALL`.
    Deallocate(Option<String>),
}

/// A change to the session's search_path, which decides what unqualified table names mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPathChange {
    /// `SET [SESSION] search_path TO a, b`: these schemas, in order.
    Set(Vec<String>),
    /// `RESET search_path`, `RESET ALL`, `SET search_path TO DEFAULT`, `DISCARD ALL`.
    Reset,
    /// Changed in a way pgmix does not follow: `SET LOCAL`, `SET SCHEMA`, `set_config()`, a
    /// value it cannot read.
    Unknown,
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    #[serde(skip)]
    pub kind: Kind,
    pub class: Class,
    /// `table.column`, or `table.*` for every column.
    pub reads: BTreeSet<String>,
    pub writes: BTreeSet<String>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx: Option<TxOptions>,
    #[serde(skip)]
    pub sql_prepared: Option<SqlPrepared>,
    #[serde(skip)]
    pub search_path: Option<SearchPathChange>,
}

impl Classification {
    pub(crate) fn simple(kind: Kind, class: Class, reason: impl Into<String>) -> Self {
        Self {
            kind,
            class,
            reads: BTreeSet::new(),
            writes: BTreeSet::new(),
            reason: reason.into(),
            tx: None,
            sql_prepared: None,
            search_path: None,
        }
    }

    pub(crate) fn with_sql_prepared(mut self, p: SqlPrepared) -> Self {
        self.sql_prepared = Some(p);
        self
    }
}

/// Classifies every statement of `sql` (a simple-protocol Query may hold several).
pub fn classify(sql: &str, schema: &Schema) -> Vec<Classification> {
    split::statements(sql).into_iter().map(|s| classify_one(s, schema)).collect()
}

/// `classify` for text already tokenized (the cache tokenizes to find a text's shape).
pub(crate) fn classify_tokens(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
    schema: &Schema,
) -> Vec<Classification> {
    split::statements_of(tokens).into_iter().map(|s| classify_one(s, schema)).collect()
}

/// The class of a whole Query message: the strongest of its statements.
pub fn combined(classes: &[Classification]) -> Class {
    strongest(classes.iter().map(|c| c.class))
}

/// The strongest of some classes (Local when there are none): what a group of statements needs.
pub fn strongest(classes: impl IntoIterator<Item = Class>) -> Class {
    let rank = |c: Class| match c {
        Class::Refused => 7,
        Class::Ddl => 6,
        Class::StrongWrite => 5,
        Class::StrongRead => 4,
        Class::WeakWrite => 3,
        Class::WeakRead => 2,
        Class::Local => 1,
    };
    classes.into_iter().max_by_key(|c| rank(*c)).unwrap_or(Class::Local)
}

fn classify_one(stmt: split::Stmt, schema: &Schema) -> Classification {
    match stmt {
        split::Stmt::Known(c) => c,
        split::Stmt::Tokens(tokens) => {
            // `parse_statement` stops after one statement; what follows it must be nothing, or
            // the text was not understood (trailing tokens would otherwise be ignored).
            let parse = |tokens: Vec<sqlparser::tokenizer::TokenWithSpan>| {
                let dialect = sqlparser::dialect::PostgreSqlDialect {};
                let mut parser = sqlparser::parser::Parser::new(&dialect).with_tokens_with_locations(tokens);
                let stmt = parser.parse_statement()?;
                parser.expect_token(&sqlparser::tokenizer::Token::EOF)?;
                Ok::<_, sqlparser::parser::ParserError>(stmt)
            };
            let copy = split::copy_without_options(&tokens);
            let parsed = match parse(tokens) {
                Err(_) if copy.is_some() => parse(copy.unwrap_or_default()),
                other => other,
            };
            match parsed {
                Ok(ast) => decide::statement(&ast, schema),
                Err(e) => {
                    // The caller logs the SQL text with the reason.
                    tracing::debug!(error = %e, "cannot parse statement: treating it as a strong write");
                    Classification::simple(
                        Kind::Write,
                        Class::StrongWrite,
                        format!("not understood by the classifier ({e}); treated as a strong write, the safe default"),
                    )
                }
            }
        }
    }
}
