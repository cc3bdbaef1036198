//! The schema file: which tables, or single columns, are strong or weak.
//!
//! Names follow Postgres rules: unquoted identifiers fold to lower case, quoted ones keep their
//! case, a name without a schema is looked up along the search_path. The file is parsed once into
//! [`Schema`], which the classifier consults; `lint` checks it against a catalog snapshot taken
//! from the local Postgres (`catalog`).

pub mod catalog;
pub mod databases;
pub mod lint;
pub mod live;
pub mod migrate;
mod names;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

pub use names::{TableName, fold_ident, parse_qualified};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Strong,
    Weak,
}

/// A problem with the schema file: file, key and reason.
pub type SchemaError = crate::tomlfile::FileError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    /// Consistency of tables that are not listed. Strong is the safe default.
    #[serde(default)]
    default: Consistency,
    /// Schemas searched for unqualified table names, like Postgres's search_path.
    #[serde(default)]
    search_path: Option<Vec<String>>,
    #[serde(default)]
    tables: HashMap<String, FileTable>,
    #[serde(default)]
    functions: FileFunctions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTable {
    consistency: Consistency,
    /// Columns that are strong in an otherwise weak table.
    #[serde(default)]
    strong_columns: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFunctions {
    /// User functions known not to write strong data: calling them does not make a statement strong.
    #[serde(default)]
    weak: Vec<String>,
}

/// The rule for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    pub consistency: Consistency,
    pub strong_columns: HashSet<String>,
}

impl TableRule {
    pub fn has_strong(&self) -> bool {
        self.consistency == Consistency::Strong || !self.strong_columns.is_empty()
    }

    pub fn column(&self, column: &str) -> Consistency {
        if self.consistency == Consistency::Strong || self.strong_columns.contains(column) {
            Consistency::Strong
        } else {
            Consistency::Weak
        }
    }
}

/// The validated schema file.
#[derive(Debug, Clone)]
pub struct Schema {
    pub default: Consistency,
    pub search_path: Vec<String>,
    pub tables: HashMap<TableName, TableRule>,
    pub weak_functions: HashSet<String>,
    /// Views known from the catalog; a view is treated as strong (its base tables are not tracked).
    pub views: HashSet<TableName>,
    /// Every table and view the catalog holds (schema-qualified), when it has been read: an
    /// unqualified name means the first of these along the search_path, as in Postgres.
    pub relations: Option<HashSet<TableName>>,
    /// Every schema (namespace) the catalog holds, when it has been read: a `"$user"` entry of a
    /// session's search_path counts only when a schema of that name exists.
    pub namespaces: Option<HashSet<String>>,
    /// The functions behind each table's user triggers, from the catalog: writing such a table
    /// runs them, and pgmix cannot see what they do to the session.
    pub trigger_functions: HashMap<TableName, Vec<String>>,
    /// Temporary relations of one session (a session's own copy of the schema): Postgres finds
    /// an unqualified name in the session's temporary schema first, and they live only there.
    pub temporary: HashSet<String>,
}

impl Default for Schema {
    /// No schema file: everything is strong.
    fn default() -> Self {
        Self {
            default: Consistency::Strong,
            search_path: vec!["public".into()],
            tables: HashMap::new(),
            weak_functions: HashSet::new(),
            views: HashSet::new(),
            relations: None,
            namespaces: None,
            trigger_functions: HashMap::new(),
            temporary: HashSet::new(),
        }
    }
}

impl Schema {
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let (text, file) = crate::tomlfile::read(path)?;
        Self::from_toml_str(&text, &file)
    }

    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, SchemaError> {
        let raw: FileSchema = crate::tomlfile::parse(text, file)?;
        let invalid = |key: String, reason: String| crate::tomlfile::invalid(file, key, reason);
        let search_path: Vec<String> = match raw.search_path {
            Some(sp) => sp.iter().map(|s| fold_ident(s)).collect(),
            None => vec!["public".into()],
        };
        if search_path.is_empty() {
            return Err(invalid("search_path".into(), "must name at least one schema".into()));
        }
        let mut tables = HashMap::new();
        for (key, t) in raw.tables {
            // A name without a schema stays unqualified: it means that table in whichever schema
            // of the search_path holds it, so it applies to every one of them.
            let name = parse_qualified(&key).map_err(|reason| invalid(format!("tables.\"{key}\""), reason))?;
            if t.consistency == Consistency::Strong && !t.strong_columns.is_empty() {
                return Err(invalid(
                    format!("tables.\"{key}\".strong_columns"),
                    "a strong table is strong in every column; list strong_columns only on weak tables".into(),
                ));
            }
            let mut cols = HashSet::new();
            for c in &t.strong_columns {
                if c.trim().is_empty() {
                    return Err(invalid(format!("tables.\"{key}\".strong_columns"), "empty column name".into()));
                }
                cols.insert(fold_ident(c));
            }
            if tables.contains_key(&name.qualify(&search_path[0]))
                || tables.contains_key(&TableName { schema: None, name: name.name.clone() })
                    && name.schema.as_deref() == Some(&search_path[0])
            {
                return Err(invalid(
                    format!("tables.\"{key}\""),
                    format!("table {} is listed twice", name.qualify(&search_path[0])),
                ));
            }
            if tables.insert(name.clone(), TableRule { consistency: t.consistency, strong_columns: cols }).is_some() {
                return Err(invalid(format!("tables.\"{key}\""), format!("table {name} is listed twice")));
            }
        }
        let weak_functions = raw.functions.weak.iter().map(|f| fold_ident(f)).collect();
        Ok(Self {
            default: raw.default,
            search_path,
            tables,
            weak_functions,
            views: HashSet::new(),
            relations: None,
            namespaces: None,
            trigger_functions: HashMap::new(),
            temporary: HashSet::new(),
        })
    }

    /// The rule that applies to a table as a statement names it, and the name it resolved to.
    pub fn resolve(&self, t: &TableName) -> (TableName, TableRule) {
        let strong_default = TableRule { consistency: Consistency::Strong, strong_columns: HashSet::new() };
        let lookup = |q: &TableName| -> Option<TableRule> {
            if self.views.contains(q) {
                return Some(strong_default.clone());
            }
            self.tables.get(q).cloned()
        };
        if t.schema.as_deref() == Some("pgmix") {
            // pgmix's own tables belong to each node (they are never replicated): local reads.
            return (t.clone(), TableRule { consistency: Consistency::Weak, strong_columns: HashSet::new() });
        }
        if matches!(t.schema.as_deref(), None | Some("pg_temp")) && self.temporary.contains(&t.name) {
            let name = TableName { schema: Some("pg_temp".into()), name: t.name.clone() };
            return (name, TableRule { consistency: Consistency::Weak, strong_columns: HashSet::new() });
        }
        let unqualified = TableName { schema: None, name: t.name.clone() };
        let default = || TableRule { consistency: self.default, strong_columns: HashSet::new() };
        if let Some(s) = &t.schema {
            let rule = lookup(t)
                .or_else(|| if self.search_path.contains(s) { lookup(&unqualified) } else { None })
                .unwrap_or_else(default);
            return (t.clone(), rule);
        }
        // With the catalog, the first schema that holds the name is the one Postgres uses, listed
        // or not: a weak `public.posts` must not stand for an unlisted `app.posts` found first.
        if let Some(relations) = &self.relations {
            for s in &self.search_path {
                let q = t.qualify(s);
                if relations.contains(&q) {
                    let rule = lookup(&q).or_else(|| lookup(&unqualified)).unwrap_or_else(default);
                    return (q, rule);
                }
            }
        }
        // Not in the catalog (not read, or created since): the first listed one.
        for s in &self.search_path {
            let q = t.qualify(s);
            if let Some(rule) = lookup(&q) {
                return (q, rule);
            }
        }
        let rule = lookup(&unqualified).unwrap_or_else(default);
        (t.qualify(&self.search_path[0]), rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
default = "strong"
[tables.accounts]
consistency = "strong"
[tables.posts]
consistency = "weak"
[tables."app.users"]
consistency = "weak"
strong_columns = ["email", "Balance"]
[tables.'"Mixed"']
consistency = "weak"
"#;

    #[test]
    fn example_from_the_issue_parses_with_postgres_name_rules() {
        let s = Schema::from_toml_str(EXAMPLE, "schema.toml").unwrap();
        let (name, rule) = s.resolve(&TableName::new(None, "posts"));
        assert_eq!(name.to_string(), "public.posts");
        assert_eq!(rule.consistency, Consistency::Weak);
        let (_, users) = s.resolve(&TableName::new(Some("app"), "users"));
        assert_eq!(users.column("email"), Consistency::Strong);
        assert_eq!(users.column("balance"), Consistency::Strong, "unquoted names fold to lower case");
        assert_eq!(users.column("name"), Consistency::Weak);
        // Quoted identifiers keep their case; the unquoted `mixed` is another table.
        assert_eq!(s.resolve(&TableName::new(None, "Mixed")).1.consistency, Consistency::Weak);
        assert_eq!(s.resolve(&TableName::new(None, "mixed")).1.consistency, Consistency::Strong);
        // Unlisted tables take the default.
        assert_eq!(s.resolve(&TableName::new(None, "other")).1.consistency, Consistency::Strong);
    }

    #[test]
    fn the_shipped_example_schema_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.example.toml");
        let s = Schema::load(&path).unwrap();
        assert_eq!(s.resolve(&TableName::new(Some("app"), "users")).1.column("email"), Consistency::Strong);
        assert!(s.weak_functions.contains("slugify"));
    }

    #[test]
    fn search_path_decides_unqualified_names() {
        let s = Schema::from_toml_str(
            "default = \"strong\"\nsearch_path = [\"app\", \"public\"]\n[tables.\"app.users\"]\nconsistency = \"weak\"\n",
            "s.toml",
        )
        .unwrap();
        let (name, rule) = s.resolve(&TableName::new(None, "users"));
        assert_eq!(name.to_string(), "app.users");
        assert_eq!(rule.consistency, Consistency::Weak);
    }

    #[test]
    fn with_the_catalog_the_first_schema_holding_the_name_decides() {
        let mut s = Schema::from_toml_str(
            "default = \"strong\"\nsearch_path = [\"app\", \"public\"]\n[tables.\"public.posts\"]\nconsistency = \"weak\"\n[tables.notes]\nconsistency = \"weak\"\n",
            "s.toml",
        )
        .unwrap();
        let posts = TableName::new(None, "posts");
        // Without a catalog, the listed one.
        assert_eq!(s.resolve(&posts).1.consistency, Consistency::Weak);
        // An unlisted app.posts shadows the weak public.posts: Postgres would use it.
        s.relations = Some([TableName::new(Some("app"), "posts"), TableName::new(Some("public"), "posts")].into());
        let (name, rule) = s.resolve(&posts);
        assert_eq!((name.to_string().as_str(), rule.consistency), ("app.posts", Consistency::Strong));
        // Only public.posts exists: that is the weak one.
        s.relations = Some([TableName::new(Some("public"), "posts"), TableName::new(Some("app"), "notes")].into());
        assert_eq!(s.resolve(&posts).1.consistency, Consistency::Weak);
        // An unqualified key applies in whichever search_path schema holds the table.
        let (name, rule) = s.resolve(&TableName::new(None, "notes"));
        assert_eq!((name.to_string().as_str(), rule.consistency), ("app.notes", Consistency::Weak));
    }

    #[test]
    fn bad_files_name_file_key_and_reason() {
        let e = Schema::from_toml_str("default = \"sometimes\"", "s.toml").unwrap_err().to_string();
        assert!(e.starts_with("s.toml:") && e.contains("sometimes"), "{e}");
        let e = Schema::from_toml_str("[tables.t]\nconsistency = \"weak\"\nstrong_colums = [\"a\"]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("strong_colums"), "{e}");
        let e = Schema::from_toml_str("[tables.t]\nconsistency = \"strong\"\nstrong_columns = [\"a\"]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tables.\"t\".strong_columns"), "{e}");
        let e =
            Schema::from_toml_str("[tables.\"a.b.c.d\"]\nconsistency = \"weak\"\n", "s.toml").unwrap_err().to_string();
        assert!(e.contains("tables.\"a.b.c.d\""), "{e}");
        let e = Schema::from_toml_str(
            "[tables.t]\nconsistency = \"weak\"\n[tables.\"public.t\"]\nconsistency = \"weak\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }
}
