//! Tokenizing, splitting into statements, and the statements sqlparser does not know.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{Class, Classification, Kind, SearchPathChange, SqlPrepared, TxOptions};

pub enum Stmt {
    /// Decided from its tokens alone.
    Known(Classification),
    /// To be parsed. Spans are kept so that parse errors can say where.
    Tokens(Vec<TokenWithSpan>),
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

pub fn statements(sql: &str) -> Vec<Stmt> {
    match tokenize(sql) {
        Ok(tokens) => statements_of(tokens),
        Err(e) => vec![Stmt::Known(Classification::simple(
            Kind::Write,
            Class::StrongWrite,
            format!("cannot tokenize ({e}); treated as a strong write, the safe default"),
        ))],
    }
}

pub fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, sqlparser::tokenizer::TokenizerError> {
    // One token per ~4 bytes is typical SQL (words, spaces, punctuation); sizing the buffer once
    // saves the reallocations that otherwise copy it several times for a long statement.
    let mut tokens = Vec::with_capacity(sql.len() / 4 + 8);
    Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location_into_buf(&mut tokens)?;
    Ok(tokens)
}

/// The statements of a text of several, each as text; None for a single statement, or a text
/// that cannot be tokenized.
pub fn statement_texts(sql: &str) -> Option<Vec<String>> {
    let tokens = tokenize(sql).ok()?;
    if !tokens.iter().any(|t| t.token == Token::SemiColon) {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut blank = true;
    for t in &tokens {
        if t.token == Token::SemiColon {
            if !blank {
                out.push(std::mem::take(&mut cur).trim().to_owned());
            }
            cur.clear();
            blank = true;
        } else {
            blank &= is_trivia(&t.token);
            cur.push_str(&t.token.to_string());
        }
    }
    if !blank {
        out.push(cur.trim().to_owned());
    }
    (out.len() > 1).then_some(out)
}

/// The text's shape: its tokens without whitespace and comments, every literal replaced by one
/// mark. Texts of one shape differ only in literal values, which classification does not look at
/// (except a search_path's value, which the cache checks for).
pub fn shape(tokens: &[TokenWithSpan]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(tokens.len() * 6);
    for t in tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)) {
        match t {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_) => out.push('\u{1}'),
            other => {
                let _ = write!(out, "{other}");
            }
        }
        out.push('\u{0}');
    }
    out
}

pub fn statements_of(tokens: Vec<TokenWithSpan>) -> Vec<Stmt> {
    let mut out = Vec::new();
    if !tokens.iter().any(|t| t.token == Token::SemiColon) {
        // The common case, one statement: hand the buffer over without copying it.
        push(&mut out, tokens);
        return out;
    }
    let mut cur = Vec::new();
    for t in tokens {
        if t.token == Token::SemiColon {
            push(&mut out, std::mem::take(&mut cur));
        } else {
            cur.push(t);
        }
    }
    push(&mut out, cur);
    out
}

fn push(out: &mut Vec<Stmt>, tokens: Vec<TokenWithSpan>) {
    let words: Vec<String> =
        tokens.iter().filter(|t| !is_trivia(&t.token)).take(3).map(|t| word(&t.token).unwrap_or_default()).collect();
    if words.is_empty() {
        return;
    }
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let known = |kind, class, reason: &str| Stmt::Known(Classification::simple(kind, class, reason));
    let stmt = match (w(0), w(1)) {
        ("PREPARE", "TRANSACTION") | ("COMMIT", "PREPARED") | ("ROLLBACK", "PREPARED") => known(
            Kind::Transaction,
            Class::Refused,
            "pgmix coordinates two-phase commit itself; clients may not use PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED",
        ),
        ("DO", _) => {
            let mut c = Classification::simple(
                Kind::Write,
                Class::StrongWrite,
                "DO blocks can do anything; treated as a strong write",
            );
            // It can also SET the search_path unseen.
            c.search_path = Some(SearchPathChange::Unknown);
            Stmt::Known(c)
        }
        ("DISCARD", "ALL") => {
            let mut c = Classification::simple(Kind::Utility, Class::Local, "DISCARD ALL resets this session")
                .with_sql_prepared(SqlPrepared::Deallocate(None));
            c.search_path = Some(SearchPathChange::Reset);
            Stmt::Known(c)
        }
        ("SET", _) | ("RESET", _) if search_path_change(&tokens).is_some() => {
            let mut c = Classification::simple(
                Kind::Utility,
                Class::Local,
                "sets the session's search_path, which decides what unqualified table names mean",
            );
            c.search_path = search_path_change(&tokens);
            Stmt::Known(c)
        }
        // sqlparser accepts these, Postgres does not: not understood, so strong.
        ("INSERT", second) if second != "INTO" => known(
            Kind::Write,
            Class::StrongWrite,
            "INSERT without INTO is not Postgres syntax: treated as a strong write",
        ),
        ("SET" | "RESET" | "SHOW" | "DISCARD" | "LISTEN" | "UNLISTEN" | "NOTIFY", "")
            if tokens.iter().filter(|t| !is_trivia(&t.token)).count() == 1 =>
        {
            known(Kind::Write, Class::StrongWrite, "an incomplete statement, not understood: treated as a strong write")
        }
        ("CHECKPOINT", _) => known(Kind::Utility, Class::Local, "CHECKPOINT is maintenance of the local Postgres"),
        ("VACUUM", _) | ("ANALYZE", _) | ("ANALYSE", _) => {
            known(Kind::Utility, Class::Local, "VACUUM/ANALYZE are maintenance of the local Postgres")
        }
        ("LISTEN", _) | ("UNLISTEN", _) | ("NOTIFY", _) | ("DISCARD", _) | ("RESET", _) | ("SHOW", _) | ("LOAD", _) => {
            known(Kind::Utility, Class::Local, "session or utility statement; runs on the local Postgres")
        }
        ("ALTER", "SYSTEM") => known(
            Kind::Utility,
            Class::Local,
            "ALTER SYSTEM changes the configuration of this node's own Postgres only",
        ),
        ("CREATE", "TEMP") | ("CREATE", "TEMPORARY") | ("CREATE", "LOCAL") => {
            known(Kind::Ddl, Class::Local, "temporary objects live only in this session")
        }
        ("CREATE", _)
        | ("ALTER", _)
        | ("DROP", _)
        | ("COMMENT", _)
        | ("GRANT", _)
        | ("REVOKE", _)
        | ("REFRESH", _)
        | ("REINDEX", _)
        | ("CLUSTER", _)
        | ("SECURITY", _)
        | ("IMPORT", _) => known(Kind::Ddl, Class::Ddl, "DDL is always strong: it travels in order on the strong log"),
        ("DEALLOCATE", _) => Stmt::Known(
            Classification::simple(Kind::Utility, Class::Local, "DEALLOCATE only affects this session")
                .with_sql_prepared(SqlPrepared::Deallocate(deallocated(&tokens))),
        ),
        ("SET", "TRANSACTION") | ("SET", "SESSION") if w(2) == "CHARACTERISTICS" || w(1) == "TRANSACTION" => {
            let mut c = Classification::simple(Kind::Transaction, Class::Local, "transaction characteristics");
            c.tx = Some(tx_options(&tokens));
            Stmt::Known(c)
        }
        ("SET", _) => known(Kind::Utility, Class::Local, "session setting; runs on the local Postgres"),
        ("BEGIN", _) | ("START", "TRANSACTION") => {
            let mut c = Classification::simple(Kind::Transaction, Class::Local, "transaction control");
            c.tx = Some(tx_options(&tokens));
            Stmt::Known(c)
        }
        ("COMMIT", _) | ("END", _) | ("ROLLBACK", _) | ("ABORT", _) | ("SAVEPOINT", _) | ("RELEASE", _) => {
            known(Kind::Transaction, Class::Local, "transaction control")
        }
        _ => Stmt::Tokens(rewrite_lock_strength(tokens)),
    };
    out.push(stmt);
}

/// What a SET or RESET does to the search_path; None when it does not touch it.
fn search_path_change(tokens: &[TokenWithSpan]) -> Option<SearchPathChange> {
    let sig: Vec<&Token> = tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)).collect();
    let upper = |i: usize| sig.get(i).and_then(|t| word(t)).unwrap_or_default();
    match (upper(0).as_str(), upper(1).as_str(), upper(2).as_str()) {
        ("RESET", "SEARCH_PATH" | "ALL", _) => Some(SearchPathChange::Reset),
        ("SET", "SEARCH_PATH", _) => Some(search_path_value(&sig[2..])),
        ("SET", "SESSION", "SEARCH_PATH") => Some(search_path_value(&sig[3..])),
        // SET LOCAL lasts until the transaction ends; SET SCHEMA takes a string pgmix does not
        // interpret. Both are followed conservatively.
        ("SET", "LOCAL", "SEARCH_PATH") | ("SET", "SCHEMA", _) => Some(SearchPathChange::Unknown),
        // A `"$user"` entry means the current role, which these change.
        ("SET", "ROLE", _)
        | ("SET", "SESSION" | "LOCAL", "ROLE" | "AUTHORIZATION")
        | ("RESET", "ROLE", _)
        | ("RESET", "SESSION", "AUTHORIZATION") => Some(SearchPathChange::Unknown),
        // Anything else that names it (a quoted `"search_path"`, say) is not followed either.
        _ if sig.iter().any(|t| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("search_path"))) => {
            Some(SearchPathChange::Unknown)
        }
        _ => None,
    }
}

/// `TO a, "B", 'c'` or `= ...` or `TO DEFAULT`, as Postgres folds the names.
fn search_path_value(rest: &[&Token]) -> SearchPathChange {
    let items = match rest.first() {
        Some(Token::Eq) => &rest[1..],
        Some(Token::Word(w)) if w.keyword == Keyword::TO && w.quote_style.is_none() => &rest[1..],
        _ => return SearchPathChange::Unknown,
    };
    if let [Token::Word(w)] = items
        && w.quote_style.is_none()
        && w.keyword == Keyword::DEFAULT
    {
        return SearchPathChange::Reset;
    }
    let mut schemas = Vec::new();
    for (i, t) in items.iter().enumerate() {
        match (i % 2, t) {
            (1, Token::Comma) => {}
            (0, Token::Word(w)) if w.quote_style == Some('"') => schemas.push(w.value.clone()),
            (0, Token::Word(w)) if w.quote_style.is_none() => schemas.push(w.value.to_lowercase()),
            // A literal names one schema as written; only plain lower-case names are read, to
            // stay clear of quoting rules.
            (0, Token::SingleQuotedString(s))
                if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
            {
                schemas.push(s.clone())
            }
            _ => return SearchPathChange::Unknown,
        }
    }
    if schemas.is_empty() || items.len() % 2 == 0 || schemas.iter().any(|s| s.starts_with('$')) {
        return SearchPathChange::Unknown;
    }
    SearchPathChange::Set(schemas)
}

/// The name in `DEALLOCATE [PREPARE] name`, folded as Postgres folds it; None for ALL.
fn deallocated(tokens: &[TokenWithSpan]) -> Option<String> {
    let mut sig = tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)).skip(1);
    let mut target = sig.next();
    if let Some(Token::Word(w)) = target
        && w.quote_style.is_none()
        && w.keyword == Keyword::PREPARE
    {
        target = sig.next();
    }
    match target {
        Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
        Some(Token::Word(w)) if w.keyword == Keyword::ALL => None,
        Some(Token::Word(w)) => Some(w.value.to_lowercase()),
        _ => None,
    }
}

/// READ ONLY / READ WRITE, ISOLATION LEVEL ..., [NOT] DEFERRABLE, in any order.
fn tx_options(tokens: &[TokenWithSpan]) -> TxOptions {
    let words: Vec<String> = tokens.iter().filter_map(|t| word(&t.token)).collect();
    let mut o = TxOptions::default();
    let mut i = 0;
    while i < words.len() {
        match (words[i].as_str(), words.get(i + 1).map(String::as_str)) {
            ("READ", Some("ONLY")) => o.read_only = Some(true),
            ("READ", Some("WRITE")) => o.read_only = Some(false),
            ("NOT", Some("DEFERRABLE")) => {
                o.deferrable = Some(false);
                i += 1;
            }
            ("DEFERRABLE", _) => o.deferrable = Some(true),
            ("LEVEL", Some(level)) => {
                let level = match level {
                    "READ" | "REPEATABLE" => format!("{} {}", level, words.get(i + 2).cloned().unwrap_or_default()),
                    other => other.to_owned(),
                };
                o.isolation = Some(level.to_lowercase());
            }
            _ => {}
        }
        i += 1;
    }
    o
}

/// sqlparser knows FOR UPDATE and FOR SHARE but not FOR NO KEY UPDATE or FOR KEY SHARE. The
/// weaker lock strengths lock the same rows, so for classification they are the same thing: drop
/// `NO KEY` / `KEY` exactly where they sit between FOR and UPDATE/SHARE, and nowhere else.
fn rewrite_lock_strength(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_key = |t: &TokenWithSpan| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::KEY);
    if !tokens.iter().any(is_key) {
        return tokens;
    }
    let kw = |t: &TokenWithSpan| match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    };
    // Indexes of the meaningful tokens, so lookahead can skip whitespace.
    let sig: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i].token)).collect();
    let mut drop = vec![false; tokens.len()];
    for w in sig.windows(4) {
        let k: Vec<Option<Keyword>> = w.iter().map(|&i| kw(&tokens[i])).collect();
        if k[0] == Some(Keyword::FOR)
            && k[1] == Some(Keyword::NO)
            && k[2] == Some(Keyword::KEY)
            && k[3] == Some(Keyword::UPDATE)
        {
            drop[w[1]] = true;
            drop[w[2]] = true;
        }
    }
    for w in sig.windows(3) {
        let k: Vec<Option<Keyword>> = w.iter().map(|&i| kw(&tokens[i])).collect();
        if k[0] == Some(Keyword::FOR) && k[1] == Some(Keyword::KEY) && k[2] == Some(Keyword::SHARE) {
            drop[w[1]] = true;
        }
    }
    tokens.into_iter().zip(drop).filter(|(_, d)| !d).map(|(t, _)| t).collect()
}

/// sqlparser rejects many COPY options (`WITH (FREEZE ON)`, `ENCODING`, ...). What matters for
/// classification is the table, its columns and the direction, so for a COPY the tokens up to
/// `FROM STDIN` / `TO STDOUT` (or a file name) are enough. None when this is not a COPY.
pub fn copy_without_options(tokens: &[TokenWithSpan]) -> Option<Vec<TokenWithSpan>> {
    let mut sig = tokens.iter().filter(|t| !is_trivia(&t.token));
    if sig.next().and_then(|t| word(&t.token)).as_deref() != Some("COPY") {
        return None;
    }
    let mut depth = 0i32;
    let mut after_direction = false;
    for (i, t) in tokens.iter().map(|t| &t.token).enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if is_trivia(t) => {}
            _ if depth == 0 && after_direction => return Some(tokens[..=i].to_vec()),
            _ if depth == 0 && matches!(word(t).as_deref(), Some("FROM" | "TO")) => after_direction = true,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{SearchPathChange, classify};
    use crate::schema::Schema;

    fn change(sql: &str) -> Option<SearchPathChange> {
        classify(sql, &Schema::default()).pop().and_then(|c| c.search_path)
    }

    #[test]
    fn search_path_changes_are_recognised_and_folded() {
        let set = |s: &[&str]| Some(SearchPathChange::Set(s.iter().map(|x| x.to_string()).collect()));
        assert_eq!(change("SET search_path TO App, \"Mixed\", public"), set(&["app", "Mixed", "public"]));
        assert_eq!(change("set SESSION search_path = 'secret'"), set(&["secret"]));
        assert_eq!(change("SET search_path TO DEFAULT"), Some(SearchPathChange::Reset));
        assert_eq!(change("RESET search_path"), Some(SearchPathChange::Reset));
        assert_eq!(change("RESET ALL"), Some(SearchPathChange::Reset));
        assert_eq!(change("DISCARD ALL"), Some(SearchPathChange::Reset));
        for unknown in [
            "SET LOCAL search_path TO secret",
            "SET SCHEMA 'secret'",
            "SET search_path TO \"$user\", public",
            "SET search_path TO 'Secret'",
            "SET search_path TO a,",
            "SET \"search_path\" TO secret",
            "SELECT set_config('search_path', 'secret', false)",
        ] {
            assert_eq!(change(unknown), Some(SearchPathChange::Unknown), "{unknown}");
        }
        assert_eq!(change("SET statement_timeout = 5"), None);
        assert_eq!(change("RESET work_mem"), None);
        assert_eq!(change("SELECT 1"), None);
    }
}

#[cfg(test)]
mod statement_text_tests {
    use super::statement_texts;

    #[test]
    fn a_text_of_several_statements_is_split_where_postgres_splits_it() {
        assert_eq!(
            statement_texts("BEGIN; INSERT INTO t VALUES ('a;b'); COMMIT;").unwrap(),
            ["BEGIN", "INSERT INTO t VALUES ('a;b')", "COMMIT"]
        );
        assert_eq!(statement_texts("SELECT 1;"), None);
        assert_eq!(statement_texts("SELECT $$;$$"), None);
        assert_eq!(statement_texts("CREATE TABLE a (x int); -- done\n"), None);
    }
}
