//! Postgres identifier rules for table names.

use std::fmt;

/// A table name after case folding; `schema` is None when the statement did not qualify it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        Self { schema: schema.map(str::to_owned), name: name.to_owned() }
    }

    pub fn qualify(&self, default_schema: &str) -> Self {
        Self { schema: Some(self.schema.clone().unwrap_or_else(|| default_schema.to_owned())), name: self.name.clone() }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| -> String {
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                s.to_owned()
            } else {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
        };
        match &self.schema {
            Some(s) => write!(f, "{}.{}", part(s), part(&self.name)),
            None => write!(f, "{}", part(&self.name)),
        }
    }
}

/// Folds an identifier as Postgres does: `"Quoted"` keeps its case, anything else is lower-cased.
pub fn fold_ident(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\"\"", "\"")
    } else {
        s.to_lowercase()
    }
}

/// Parses `table`, `schema.table`, `"Schema"."Table"` (dots inside quotes belong to the name).
pub fn parse_qualified(s: &str) -> Result<TableName, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                cur.push_str("\"\"");
                chars.next();
            }
            '"' => {
                in_quotes = !in_quotes;
                cur.push('"');
            }
            '.' if !in_quotes => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted identifier".into());
    }
    parts.push(cur);
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err("empty name part; write `table` or `schema.table`".into());
    }
    match parts.as_slice() {
        [t] => Ok(TableName { schema: None, name: fold_ident(t) }),
        [s, t] => Ok(TableName { schema: Some(fold_ident(s)), name: fold_ident(t) }),
        // database.schema.table: the database part must be the current one; keep schema.table.
        [_, s, t] => Ok(TableName { schema: Some(fold_ident(s)), name: fold_ident(t) }),
        _ => Err("too many dotted parts; write `table` or `schema.table`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_quoting() {
        assert_eq!(parse_qualified("App.Users").unwrap(), TableName::new(Some("app"), "users"));
        assert_eq!(parse_qualified("\"App\".\"Us.ers\"").unwrap(), TableName::new(Some("App"), "Us.ers"));
        assert_eq!(parse_qualified("\"a\"\"b\"").unwrap(), TableName::new(None, "a\"b"));
        assert!(parse_qualified("a..b").is_err());
        assert!(parse_qualified("\"open").is_err());
        assert_eq!(TableName::new(Some("App"), "users").to_string(), "\"App\".users");
    }
}
