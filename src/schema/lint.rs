//! Checks the schema file against a snapshot of the local Postgres catalog. Pure: the snapshot is
//! taken by `catalog`, so every rule here is tested without a database.

use std::collections::{HashMap, HashSet};

use super::{Consistency, Schema, TableName};

#[derive(Debug, Clone, Default)]
pub struct CatalogColumn {
    pub name: String,
    pub default: Option<String>,
    pub identity: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CatalogTable {
    pub columns: Vec<CatalogColumn>,
    pub primary_key: Vec<String>,
    pub uniques: Vec<Vec<String>>,
    pub foreign_keys: Vec<(Vec<String>, TableName)>,
    pub checks: Vec<(String, Vec<String>)>,
}

/// What the catalog says about the tables of one database (schema-qualified names).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: HashMap<TableName, CatalogTable>,
    pub views: HashSet<TableName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub table: TableName,
    pub message: String,
}

/// Every problem of `schema` against `catalog`; `file` names the schema file in messages.
pub fn lint(schema: &Schema, catalog: &Catalog, file: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut names: Vec<&TableName> = schema.tables.keys().collect();
    names.sort();
    for name in names {
        let rule = &schema.tables[name];
        // A listed table that does not exist yet is fine: it may be created through pgmix later.
        // An unqualified name is looked up along the search_path, as Postgres would.
        let found = match &name.schema {
            Some(_) => catalog.tables.get(name),
            None => schema.search_path.iter().find_map(|s| catalog.tables.get(&name.qualify(s))),
        };
        let Some(table) = found else { continue };
        let mut push = |severity, message: String| out.push(Finding { severity, table: name.clone(), message });
        let columns: HashSet<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let mut strong: Vec<&String> = rule.strong_columns.iter().collect();
        strong.sort();
        for col in strong {
            if !columns.contains(col.as_str()) {
                push(
                    Severity::Error,
                    format!(
                        "{file}: table {name} has no column \"{col}\" (listed in strong_columns): fix the name in the schema file or add the column"
                    ),
                );
            }
        }
        if rule.consistency != Consistency::Weak {
            continue;
        }
        let weak = |c: &String| !rule.strong_columns.contains(c);
        if table.primary_key.is_empty() {
            push(
                Severity::Error,
                format!(
                    "{file}: weak table {name} has no primary key; weak rows are identified by their primary key: add one (ALTER TABLE {name} ADD PRIMARY KEY (...)) or mark the table strong"
                ),
            );
        }
        for cols in &table.uniques {
            if cols.iter().any(weak) {
                push(
                    Severity::Error,
                    format!(
                        "{file}: weak table {name} has a UNIQUE constraint on ({}); two nodes can accept the same value concurrently and the merge cannot keep it unique: drop the constraint, make those columns strong_columns, or mark the table strong",
                        cols.join(", ")
                    ),
                );
            }
        }
        for (cols, target) in &table.foreign_keys {
            let (_, target_rule) = schema.resolve(target);
            if cols.iter().any(weak) && target_rule.consistency == Consistency::Weak {
                push(
                    Severity::Warning,
                    format!(
                        "{file}: weak table {name} references weak table {target} through ({}); a child that arrives before its parent is parked in pgmix.conflicts and retried: consider making one side strong if that delay matters",
                        cols.join(", ")
                    ),
                );
            }
        }
        for (cname, cols) in &table.checks {
            let weak_cols: Vec<&String> = cols.iter().filter(|c| weak(c)).collect();
            if weak_cols.len() >= 2 {
                push(
                    Severity::Error,
                    format!(
                        "{file}: weak table {name} has CHECK constraint {cname} over several weak columns ({}); per-column merging can combine values that each passed it: drop the constraint or make those columns strong",
                        cols.join(", ")
                    ),
                );
            } else if !weak_cols.is_empty() {
                push(
                    Severity::Warning,
                    format!(
                        "{file}: weak table {name} has CHECK constraint {cname} on a weak column; it holds on every node because each value passed it at its origin, but replicas do not re-check it"
                    ),
                );
            }
        }
        for col in &table.columns {
            let serial = col.default.as_deref().is_some_and(|d| d.starts_with("nextval("));
            if (serial || col.identity) && table.primary_key.contains(&col.name) {
                push(
                    Severity::Error,
                    format!(
                        "{file}: weak table {name} has a serial or identity key \"{}\"; two nodes would hand out the same values: use UUID keys (DEFAULT gen_random_uuid()) or mark the table strong",
                        col.name
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> CatalogColumn {
        CatalogColumn { name: name.into(), ..Default::default() }
    }

    fn schema() -> Schema {
        Schema::from_toml_str(
            r#"
[tables.posts]
consistency = "weak"
[tables.users]
consistency = "weak"
strong_columns = ["email", "missing"]
[tables.later]
consistency = "weak"
"#,
            "schema.toml",
        )
        .unwrap()
    }

    #[test]
    fn clean_weak_table_has_no_findings_and_missing_tables_are_fine() {
        let mut cat = Catalog::default();
        cat.tables.insert(
            TableName::new(Some("public"), "posts"),
            CatalogTable {
                columns: vec![col("id"), col("body")],
                primary_key: vec!["id".into()],
                ..Default::default()
            },
        );
        let findings = lint(&schema(), &cat, "schema.toml");
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn every_contract_breaking_shape_is_an_error_that_says_how_to_fix_it() {
        let mut cat = Catalog::default();
        let mut id = col("id");
        id.default = Some("nextval('users_id_seq'::regclass)".into());
        cat.tables.insert(
            TableName::new(Some("public"), "users"),
            CatalogTable {
                columns: vec![id, col("email"), col("name"), col("lo"), col("hi")],
                primary_key: vec!["id".into()],
                uniques: vec![vec!["name".into()], vec!["email".into()]],
                foreign_keys: vec![(vec!["name".into()], TableName::new(None, "posts"))],
                checks: vec![("range".into(), vec!["lo".into(), "hi".into()]), ("pos".into(), vec!["lo".into()])],
            },
        );
        cat.tables.insert(
            TableName::new(Some("public"), "posts"),
            CatalogTable { columns: vec![col("body")], ..Default::default() },
        );
        let f = lint(&schema(), &cat, "schema.toml");
        let errors: Vec<&str> =
            f.iter().filter(|f| f.severity == Severity::Error).map(|f| f.message.as_str()).collect();
        let warnings: Vec<&str> =
            f.iter().filter(|f| f.severity == Severity::Warning).map(|f| f.message.as_str()).collect();
        assert!(errors.iter().any(|m| m.contains("no column \"missing\"")), "{errors:#?}");
        assert!(errors.iter().any(|m| m.contains("posts has no primary key")), "{errors:#?}");
        assert!(errors.iter().any(|m| m.contains("UNIQUE constraint on (name)")), "{errors:#?}");
        assert!(!errors.iter().any(|m| m.contains("UNIQUE constraint on (email)")), "email is strong: {errors:#?}");
        assert!(errors.iter().any(|m| m.contains("CHECK constraint range")), "{errors:#?}");
        assert!(errors.iter().any(|m| m.contains("serial or identity key \"id\"")), "{errors:#?}");
        assert!(warnings.iter().any(|m| m.contains("references weak table posts")), "{warnings:#?}");
        assert!(warnings.iter().any(|m| m.contains("CHECK constraint pos")), "{warnings:#?}");
        assert!(f.iter().all(|f| f.message.starts_with("schema.toml: ")));
    }
}
