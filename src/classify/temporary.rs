//! What a statement does to a session's temporary tables, views and sequences, read from its
//! tokens. A temporary relation exists only in the session's own backend, and Postgres looks
//! for unqualified names in the session's temporary schema first: so while one exists, its name
//! means it, and statements on it run in the session's own backend whatever the schema file
//! says of a table of the same name (see `session::temporary`).

use sqlparser::tokenizer::{Token, TokenWithSpan};

/// A statement that makes, changes or ends temporary relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TempStatement {
    /// CREATE TEMP TABLE / VIEW / SEQUENCE (or a table in `pg_temp`), and whether it goes at the
    /// end of the transaction (ON COMMIT DROP).
    Create { name: String, drop_at_commit: bool },
    /// DROP, ALTER, TRUNCATE, or CREATE INDEX ON of these relations, if they are temporary;
    /// `drops` for DROP; `renamed` for ALTER ... RENAME TO.
    Change { targets: Vec<String>, drops: bool, renamed: Option<String> },
    /// DISCARD ALL / TEMP: every temporary relation is gone.
    Discard,
}

/// A lexed word: an unquoted keyword upper-cased (empty for anything else), and the identifier
/// it names as Postgres folds it.
struct Lexed {
    keyword: String,
    ident: Option<String>,
    period: bool,
    comma: bool,
}

fn lex(tokens: &[TokenWithSpan]) -> Vec<Lexed> {
    tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Lexed {
                keyword: w.value.to_ascii_uppercase(),
                ident: Some(w.value.to_lowercase()),
                period: false,
                comma: false,
            },
            Token::Word(w) if w.quote_style == Some('"') => {
                Lexed { keyword: String::new(), ident: Some(w.value.clone()), period: false, comma: false }
            }
            Token::Period => Lexed { keyword: String::new(), ident: None, period: true, comma: false },
            Token::Comma => Lexed { keyword: String::new(), ident: None, period: false, comma: true },
            _ => Lexed { keyword: String::new(), ident: None, period: false, comma: false },
        })
        .collect()
}

/// The relation name at `w[*i]` (moving past it), if it can name a temporary relation: unqualified
/// or in `pg_temp`. `Err` for a name in another schema.
fn relation(w: &[Lexed], i: &mut usize) -> Option<Result<String, ()>> {
    let first = w.get(*i)?.ident.clone()?;
    *i += 1;
    if w.get(*i).is_some_and(|l| l.period) {
        let second = w.get(*i + 1)?.ident.clone()?;
        *i += 2;
        return Some(if first == "pg_temp" { Ok(second) } else { Err(()) });
    }
    Some(Ok(first))
}

fn skip(w: &[Lexed], i: &mut usize, words: &[&str]) -> bool {
    let all = words.iter().enumerate().all(|(k, kw)| w.get(*i + k).is_some_and(|l| l.keyword == *kw));
    if all {
        *i += words.len();
    }
    all
}

/// A comma-separated list of relation names from `w[i]`; None if one is in another schema.
fn relations(w: &[Lexed], mut i: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    loop {
        out.push(relation(w, &mut i)?.ok()?);
        if !w.get(i).is_some_and(|l| l.comma) {
            return Some(out);
        }
        i += 1;
    }
}

/// What one statement's tokens do to temporary relations, if anything.
pub fn temp_statement(tokens: &[TokenWithSpan]) -> Option<TempStatement> {
    let w = lex(tokens);
    let kw = |i: usize| w.get(i).map_or("", |l| l.keyword.as_str());
    let mut i = 1;
    match kw(0) {
        "CREATE" => {
            skip(&w, &mut i, &["OR", "REPLACE"]);
            let mut temp = false;
            if matches!(kw(i), "GLOBAL" | "LOCAL") {
                i += 1;
            }
            if matches!(kw(i), "TEMP" | "TEMPORARY") {
                temp = true;
                i += 1;
            }
            if matches!(kw(i), "UNIQUE") {
                i += 1;
            }
            match kw(i) {
                "INDEX" if !temp => {
                    // CREATE [UNIQUE] INDEX [[IF NOT EXISTS] name] ON [ONLY] table
                    let on = (i..w.len()).find(|&k| w[k].keyword == "ON")?;
                    let mut k = on + 1;
                    skip(&w, &mut k, &["ONLY"]);
                    let target = relation(&w, &mut k)?.ok()?;
                    Some(TempStatement::Change { targets: vec![target], drops: false, renamed: None })
                }
                "TABLE" | "VIEW" | "SEQUENCE" => {
                    i += 1;
                    skip(&w, &mut i, &["IF", "NOT", "EXISTS"]);
                    let start = i;
                    let qualified_temp = w.get(start).is_some_and(|l| l.ident.as_deref() == Some("pg_temp"))
                        && w.get(start + 1).is_some_and(|l| l.period);
                    let name = relation(&w, &mut i)?.ok()?;
                    if !temp && !qualified_temp {
                        return None;
                    }
                    let drop_at_commit = w
                        .windows(3)
                        .any(|t| t[0].keyword == "ON" && t[1].keyword == "COMMIT" && t[2].keyword == "DROP");
                    Some(TempStatement::Create { name, drop_at_commit })
                }
                _ => None,
            }
        }
        "DROP" if matches!(kw(1), "TABLE" | "VIEW" | "SEQUENCE") => {
            i = 2;
            skip(&w, &mut i, &["IF", "EXISTS"]);
            Some(TempStatement::Change { targets: relations(&w, i)?, drops: true, renamed: None })
        }
        "ALTER" if matches!(kw(1), "TABLE" | "VIEW" | "SEQUENCE") => {
            i = 2;
            skip(&w, &mut i, &["IF", "EXISTS"]);
            skip(&w, &mut i, &["ONLY"]);
            let target = relation(&w, &mut i)?.ok()?;
            // RENAME TO new, but not RENAME COLUMN a TO b.
            let renamed =
                if kw(i) == "RENAME" && kw(i + 1) == "TO" { w.get(i + 2).and_then(|l| l.ident.clone()) } else { None };
            Some(TempStatement::Change { targets: vec![target], drops: false, renamed })
        }
        "TRUNCATE" => {
            skip(&w, &mut i, &["TABLE"]);
            skip(&w, &mut i, &["ONLY"]);
            Some(TempStatement::Change { targets: relations(&w, i)?, drops: false, renamed: None })
        }
        "DISCARD" if matches!(kw(1), "ALL" | "TEMP" | "TEMPORARY") => Some(TempStatement::Discard),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Option<TempStatement> {
        temp_statement(&super::super::split::tokenize(sql).unwrap())
    }

    fn change(targets: &[&str], drops: bool, renamed: Option<&str>) -> Option<TempStatement> {
        Some(TempStatement::Change {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            drops,
            renamed: renamed.map(str::to_owned),
        })
    }

    #[test]
    fn temporary_relations_made_are_named_as_postgres_folds_them() {
        let made = |name: &str, drop_at_commit| Some(TempStatement::Create { name: name.into(), drop_at_commit });
        assert_eq!(of("CREATE TEMPORARY TABLE T1 (f1 int primary key)"), made("t1", false));
        assert_eq!(of("create temp table if not exists \"Mixed\" (x int) on commit drop"), made("Mixed", true));
        assert_eq!(of("CREATE LOCAL TEMP TABLE s AS SELECT * FROM accounts"), made("s", false));
        assert_eq!(of("CREATE GLOBAL TEMPORARY TABLE g (x int) ON COMMIT DELETE ROWS"), made("g", false));
        assert_eq!(of("CREATE OR REPLACE TEMP VIEW v AS SELECT 1"), made("v", false));
        assert_eq!(of("CREATE TEMP SEQUENCE sq"), made("sq", false));
        assert_eq!(of("CREATE TABLE pg_temp.p (x int)"), made("p", false));
        assert_eq!(of("CREATE TEMP TABLE pg_temp.q (x int)"), made("q", false));
        assert_eq!(of("CREATE TABLE accounts (id int)"), None);
        assert_eq!(of("CREATE UNLOGGED TABLE u (id int)"), None);
        assert_eq!(of("CREATE VIEW v2 AS SELECT 1"), None);
    }

    #[test]
    fn statements_on_relations_name_them_unless_another_schema_is_named() {
        assert_eq!(of("drop table t1"), change(&["t1"], true, None));
        assert_eq!(of("DROP TABLE IF EXISTS a, pg_temp.b CASCADE"), change(&["a", "b"], true, None));
        assert_eq!(of("DROP TABLE public.a"), None);
        assert_eq!(of("DROP TABLE a, public.b"), None);
        assert_eq!(of("ALTER TABLE IF EXISTS ONLY t ADD COLUMN c int"), change(&["t"], false, None));
        assert_eq!(of("ALTER TABLE t RENAME TO u"), change(&["t"], false, Some("u")));
        assert_eq!(of("ALTER TABLE t RENAME COLUMN a TO b"), change(&["t"], false, None));
        assert_eq!(of("TRUNCATE TABLE ONLY t, u"), change(&["t", "u"], false, None));
        assert_eq!(of("truncate t"), change(&["t"], false, None));
        assert_eq!(of("CREATE UNIQUE INDEX IF NOT EXISTS i ON ONLY t (x)"), change(&["t"], false, None));
        assert_eq!(of("CREATE INDEX ON t USING btree (x)"), change(&["t"], false, None));
        assert_eq!(of("CREATE INDEX ON app.t (x)"), None);
        assert_eq!(of("DISCARD TEMP"), Some(TempStatement::Discard));
        assert_eq!(of("discard all"), Some(TempStatement::Discard));
        assert_eq!(of("DISCARD PLANS"), None);
        assert_eq!(of("SELECT * FROM t"), None);
    }
}
