//! What a statement's leading words say about transactions and the log, read from its tokens
//! (comments and whitespace are not words, quoted identifiers never are): whether it begins or
//! ends a transaction block, and whether it is one of the statements that cannot run inside one
//! and change every node (CREATE / DROP DATABASE, the CONCURRENTLY index statements).
//!
//! The session, the strong path and the applier all ask here, so one lexer decides what a
//! COMMIT is.

use serde::{Deserialize, Serialize};
use sqlparser::tokenizer::{Token, TokenWithSpan};

/// Whether a single statement starts or ends a transaction block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TxWord {
    /// BEGIN or START TRANSACTION, with any options.
    Begin,
    /// COMMIT, END, and COMMIT AND NO CHAIN.
    Commit,
    /// ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    #[default]
    Other,
}

/// A statement that cannot run in a transaction block and changes every node: it travels on
/// the log as an entry of its own, and every node runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standalone {
    CreateDatabase,
    DropDatabase,
    /// CREATE [UNIQUE] INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY, REINDEX ... CONCURRENTLY.
    Concurrently,
}

impl Standalone {
    /// Whether it runs from the node's own database rather than the client's.
    pub fn runs_outside(self) -> bool {
        matches!(self, Self::CreateDatabase | Self::DropDatabase)
    }
}

/// A statement about objects shared by all databases of a Postgres (roles, databases,
/// tablespaces), for which Postgres fires no event trigger: the strong path carries what it did
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Global {
    /// CREATE / ALTER / DROP ROLE (USER, GROUP), GRANT and REVOKE of role membership: the roles'
    /// state before and after is compared, and the change travels.
    Roles,
    /// ALTER DATABASE, COMMENT ON ROLE or DATABASE, REASSIGN OWNED: the statement travels.
    Statement,
    /// CREATE / ALTER / DROP TABLESPACE: a tablespace is a directory of one node; refused.
    Tablespace,
}

/// The leading words of one statement, upper-cased; quoted identifiers and literals are "".
fn leading(tokens: &[TokenWithSpan], n: usize) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .take(n)
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            Token::SemiColon => ";".to_owned(),
            _ => String::new(),
        })
        .collect()
}

/// The transaction word of one statement's tokens.
pub(crate) fn tx_word_of(tokens: &[TokenWithSpan]) -> TxWord {
    let w = leading(tokens, 6);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["BEGIN", ..] | ["START", "TRANSACTION", ..] => TxWord::Begin,
        ["COMMIT" | "END"] | ["COMMIT" | "END", "WORK" | "TRANSACTION"] => TxWord::Commit,
        ["COMMIT" | "END", "AND", "NO", "CHAIN"] | ["COMMIT" | "END", "WORK" | "TRANSACTION", "AND", "NO", "CHAIN"] => {
            TxWord::Commit
        }
        ["ROLLBACK" | "ABORT"] | ["ROLLBACK" | "ABORT", "WORK" | "TRANSACTION"] => TxWord::Rollback,
        ["ROLLBACK" | "ABORT", "AND", "NO", "CHAIN"]
        | ["ROLLBACK" | "ABORT", "WORK" | "TRANSACTION", "AND", "NO", "CHAIN"] => TxWord::Rollback,
        _ => TxWord::Other,
    }
}

/// Whether one statement's tokens are a standalone statement.
pub(crate) fn standalone_of(tokens: &[TokenWithSpan]) -> Option<Standalone> {
    let w = leading(tokens, 6);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["CREATE", "DATABASE", ..] => Some(Standalone::CreateDatabase),
        ["DROP", "DATABASE", ..] => Some(Standalone::DropDatabase),
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..]
        | ["DROP", "INDEX", "CONCURRENTLY", ..] => Some(Standalone::Concurrently),
        ["REINDEX", rest @ ..] if rest.contains(&"CONCURRENTLY") => Some(Standalone::Concurrently),
        _ => None,
    }
}

/// Whether one statement's tokens are about shared objects (see `Global`).
pub(crate) fn global_of(tokens: &[TokenWithSpan]) -> Option<Global> {
    let w = leading(tokens, 4);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["CREATE" | "ALTER" | "DROP", "USER", "MAPPING", ..] => None,
        ["CREATE" | "ALTER" | "DROP", "ROLE" | "USER" | "GROUP", ..] => Some(Global::Roles),
        ["GRANT" | "REVOKE", ..] => {
            // GRANT ... ON ... is about objects (an event trigger sees it); without ON, about roles.
            let on = tokens.iter().any(
                |t| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("ON")),
            );
            (!on).then_some(Global::Roles)
        }
        ["ALTER", "DATABASE", ..] | ["REASSIGN", "OWNED", ..] => Some(Global::Statement),
        ["COMMENT" | "SECURITY", "ON", "ROLE" | "DATABASE", ..] => Some(Global::Statement),
        ["SECURITY", "LABEL", ..] if w.contains(&"ROLE") || w.contains(&"DATABASE") => Some(Global::Statement),
        ["CREATE" | "ALTER" | "DROP", "TABLESPACE", ..] => Some(Global::Tablespace),
        _ => None,
    }
}

/// What a single statement does to the session's custom (dotted, placeholder) settings, which
/// Postgres lists nowhere: `SET [SESSION] a.b ...` (Some(name)), `RESET a.b`, or `RESET ALL` /
/// `DISCARD ALL` (Reset(None)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomSetting {
    Set(String),
    Reset(Option<String>),
}

pub fn custom_setting(sql: &str) -> Option<CustomSetting> {
    let tokens = super::split::tokenize(sql).ok()?;
    let statements = split(&tokens);
    let [one] = statements.as_slice() else { return None };
    let sig: Vec<&Token> = one.iter().map(|t| &t.token).filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let word = |t: &Token| match t {
        Token::Word(w) => Some((w.value.clone(), w.quote_style.is_some())),
        _ => None,
    };
    let upper = |i: usize| sig.get(i).and_then(|t| word(t)).filter(|(_, q)| !q).map(|(w, _)| w.to_ascii_uppercase());
    // A dotted name: word . word (either part may be quoted).
    let dotted = |i: usize| -> Option<String> {
        let (a, _) = word(sig.get(i)?)?;
        if *sig.get(i + 1)? != &Token::Period {
            return None;
        }
        let (b, _) = word(sig.get(i + 2)?)?;
        Some(format!("{a}.{b}").to_ascii_lowercase())
    };
    match upper(0).as_deref() {
        Some("SET") => {
            let at = if upper(1).as_deref() == Some("SESSION") { 2 } else { 1 };
            dotted(at).map(CustomSetting::Set)
        }
        Some("RESET") if upper(1).as_deref() == Some("ALL") => Some(CustomSetting::Reset(None)),
        Some("DISCARD") if upper(1).as_deref() == Some("ALL") => Some(CustomSetting::Reset(None)),
        Some("RESET") => dotted(1).map(|n| CustomSetting::Reset(Some(n))),
        _ => None,
    }
}

/// The statements of a text, each as its tokens (without the semicolons between them).
fn split(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    tokens
        .split(|t| t.token == Token::SemiColon)
        .filter(|s| s.iter().any(|t| !matches!(t.token, Token::Whitespace(_))))
        .collect()
}

/// What the words of a whole text say: a text of several statements has no transaction word
/// and is no standalone statement, but it may begin a transaction block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Words {
    pub word: TxWord,
    /// Its first statement is BEGIN or START TRANSACTION.
    pub begins: bool,
    pub standalone: Option<Standalone>,
    /// A single statement about shared objects.
    pub global: Option<Global>,
}

impl Words {
    pub const OTHER: Words = Words { word: TxWord::Other, begins: false, standalone: None, global: None };

    pub(crate) fn of(tokens: &[TokenWithSpan]) -> Self {
        let statements = split(tokens);
        let Some(first) = statements.first() else { return Self::OTHER };
        let begins = tx_word_of(first) == TxWord::Begin;
        if statements.len() > 1 {
            return Self { begins, ..Self::OTHER };
        }
        Self { word: tx_word_of(first), begins, standalone: standalone_of(first), global: global_of(first) }
    }
}

/// The words of a text; a text that cannot be tokenized has none.
pub fn words(sql: &str) -> Words {
    match super::split::tokenize(sql) {
        Ok(tokens) => Words::of(&tokens),
        Err(_) => Words::OTHER,
    }
}

/// The CommandComplete tag Postgres gives a statement that begins a transaction block.
pub fn begin_tag(sql: &str) -> &'static str {
    let Ok(tokens) = super::split::tokenize(sql) else { return "BEGIN" };
    if leading(&tokens, 1).first().map(String::as_str) == Some("START") { "START TRANSACTION" } else { "BEGIN" }
}

/// The CommandComplete tag Postgres gives a standalone statement.
pub fn standalone_tag(sql: &str) -> &'static str {
    let Ok(tokens) = super::split::tokenize(sql) else { return "" };
    let w = leading(&tokens, 3);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["CREATE", "DATABASE", ..] => "CREATE DATABASE",
        ["DROP", "DATABASE", ..] => "DROP DATABASE",
        ["CREATE", ..] => "CREATE INDEX",
        ["DROP", ..] => "DROP INDEX",
        _ => "REINDEX",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(sql: &str) -> TxWord {
        words(sql).word
    }

    #[test]
    fn transaction_words_are_recognised_only_alone() {
        assert_eq!(word("BEGIN"), TxWord::Begin);
        assert_eq!(word(" begin isolation level serializable; "), TxWord::Begin);
        assert_eq!(word("START TRANSACTION READ ONLY"), TxWord::Begin);
        assert_eq!(word("commit;"), TxWord::Commit);
        assert_eq!(word("END"), TxWord::Commit);
        assert_eq!(word("/* app */ COMMIT -- done"), TxWord::Commit);
        assert_eq!(word("commit and no chain"), TxWord::Commit);
        assert_eq!(word("COMMIT AND CHAIN"), TxWord::Other);
        assert_eq!(word("ROLLBACK"), TxWord::Rollback);
        assert_eq!(word("abort work"), TxWord::Rollback);
        assert_eq!(word("rollback to savepoint a"), TxWord::Other);
        assert_eq!(word("commit prepared 'x'"), TxWord::Other);
        assert_eq!(word("BEGIN; UPDATE t SET a = 1"), TxWord::Other);
        assert_eq!(word("update t set a = 1"), TxWord::Other);
        assert_eq!(word("\"begin\""), TxWord::Other);
        assert!(words("BEGIN; UPDATE t SET a = 1").begins);
        assert!(words(" start transaction;").begins);
        assert!(!words("starter()").begins);
        assert!(!words("SELECT 1").begins);
        assert_eq!(begin_tag("/* x */ start transaction read only"), "START TRANSACTION");
        assert_eq!(begin_tag("begin"), "BEGIN");
    }

    #[test]
    fn standalone_statements_are_single_statements_of_their_own_words() {
        let s = |sql: &str| words(sql).standalone;
        assert_eq!(s("CREATE DATABASE shop"), Some(Standalone::CreateDatabase));
        assert_eq!(s("drop database if exists shop;"), Some(Standalone::DropDatabase));
        assert_eq!(s("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)"), Some(Standalone::Concurrently));
        assert_eq!(s("DROP INDEX CONCURRENTLY i"), Some(Standalone::Concurrently));
        assert_eq!(s("REINDEX TABLE CONCURRENTLY t"), Some(Standalone::Concurrently));
        assert_eq!(s("CREATE INDEX i ON t (a)"), None);
        assert_eq!(s("CREATE TABLE database (concurrently int)"), None);
        assert_eq!(s("CREATE INDEX CONCURRENTLY i ON database_log (database_id)"), Some(Standalone::Concurrently));
        assert!(!Standalone::Concurrently.runs_outside());
        assert_eq!(s("CREATE DATABASE a; CREATE DATABASE b"), None);
        assert_eq!(standalone_tag("create unique index concurrently i on t (a)"), "CREATE INDEX");
        assert_eq!(standalone_tag("DROP DATABASE shop"), "DROP DATABASE");
        assert_eq!(standalone_tag("reindex index concurrently i"), "REINDEX");
    }

    #[test]
    fn custom_settings_are_followed() {
        assert_eq!(custom_setting("SET app.tenant = 'x'"), Some(CustomSetting::Set("app.tenant".into())));
        assert_eq!(custom_setting("set session App.Flag to on"), Some(CustomSetting::Set("app.flag".into())));
        assert_eq!(custom_setting("SET LOCAL app.tenant = 'x'"), None);
        assert_eq!(custom_setting("SET work_mem = '1MB'"), None);
        assert_eq!(custom_setting("RESET app.tenant"), Some(CustomSetting::Reset(Some("app.tenant".into()))));
        assert_eq!(custom_setting("RESET ALL"), Some(CustomSetting::Reset(None)));
        assert_eq!(custom_setting("discard all"), Some(CustomSetting::Reset(None)));
    }

    #[test]
    fn statements_about_shared_objects_are_recognised() {
        let g = |sql: &str| words(sql).global;
        assert_eq!(g("CREATE ROLE app LOGIN PASSWORD 'x'"), Some(Global::Roles));
        assert_eq!(g("alter user app with password 'y'"), Some(Global::Roles));
        assert_eq!(g("DROP ROLE IF EXISTS app"), Some(Global::Roles));
        assert_eq!(g("GRANT admins TO app WITH ADMIN OPTION"), Some(Global::Roles));
        assert_eq!(g("REVOKE admins FROM app"), Some(Global::Roles));
        assert_eq!(g("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app"), None);
        assert_eq!(g("CREATE USER MAPPING FOR app SERVER s"), None);
        assert_eq!(g("ALTER DATABASE shop SET work_mem = '8MB'"), Some(Global::Statement));
        assert_eq!(g("COMMENT ON ROLE app IS 'the app'"), Some(Global::Statement));
        assert_eq!(g("COMMENT ON TABLE t IS 'x'"), None);
        assert_eq!(g("REASSIGN OWNED BY a TO b"), Some(Global::Statement));
        assert_eq!(g("CREATE TABLESPACE fast LOCATION '/ssd'"), Some(Global::Tablespace));
        assert_eq!(g("CREATE ROLE a; CREATE ROLE b"), None);
    }
}
