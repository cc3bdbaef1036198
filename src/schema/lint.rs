//! Checks the schema file against a snapshot of the local Postgres catalog. Pure: the snapshot is
//! taken by `catalog`, so every rule here is tested without a database.

use std::collections::{HashMap, HashSet};

use super::{Consistency, Schema, TableName};

#[derive(Debug, Clone, Default)]
pub struct CatalogColumn {
    pub name: String,
    pub default: Option<String>,
    pub identity: bool,
    /// GENERATED ALWAYS AS (...) STORED: computed on every node, never written.
    pub generated: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CatalogTable {
    pub columns: Vec<CatalogColumn>,
    pub primary_key: Vec<String>,
    pub uniques: Vec<Vec<String>>,
    pub foreign_keys: Vec<CatalogForeignKey>,
    /// User triggers (not the internal ones behind foreign keys).
    pub triggers: Vec<String>,
    /// The functions those triggers run.
    pub trigger_functions: Vec<String>,
    pub checks: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct CatalogForeignKey {
    pub columns: Vec<String>,
    pub target: TableName,
    /// `ON DELETE CASCADE` and the like: what a change to the target does to this table's rows.
    pub on_change: Option<&'static str>,
}

/// What the catalog says about the tables of one database (schema-qualified names).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: HashMap<TableName, CatalogTable>,
    pub views: HashSet<TableName>,
    pub namespaces: HashSet<String>,
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
        for fk in &table.foreign_keys {
            let (_, target_rule) = schema.resolve(&fk.target);
            if fk.columns.iter().any(weak) && target_rule.consistency == Consistency::Weak {
                push(
                    Severity::Warning,
                    format!(
                        "{file}: weak table {name} references weak table {} through ({}); a child that arrives before its parent is parked in pgmix.conflicts and retried: consider making one side strong if that delay matters",
                        fk.target,
                        fk.columns.join(", ")
                    ),
                );
            }
        }
        for trigger in &table.triggers {
            push(
                Severity::Warning,
                format!(
                    "{file}: weak table {name} has trigger {trigger}; pgmix cannot see what a trigger writes, and a weak write runs it on one node first: if it changes strong data or other tables, mark {name} strong"
                ),
            );
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
            // A plain sequence default or an identity column is interleaved per node in a
            // cluster (see replicate::capture); a key computed from a sequence any other way is
            // not, and two nodes would hand out the same values.
            let uses_sequence = col.default.as_deref().is_some_and(|d| d.contains("nextval("));
            if uses_sequence && sequence_of(col).is_none() && table.primary_key.contains(&col.name) {
                push(
                    Severity::Error,
                    format!(
                        "{file}: weak table {name} computes its key \"{}\" from a sequence ({}); pgmix can make a sequence unique per node only when it is the whole default: use DEFAULT nextval('...') alone, an identity column, or UUID keys (DEFAULT gen_random_uuid())",
                        col.name,
                        col.default.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
    }
    cascades_into_strong_data(schema, catalog, file, &mut out);
    out
}

/// The sequence behind a column whose whole default is `nextval('seq'::regclass)`, as `seq`.
pub fn sequence_of(col: &CatalogColumn) -> Option<&str> {
    let d = col.default.as_deref()?;
    d.strip_prefix("nextval('")?.strip_suffix("'::regclass)")
}

/// A foreign key whose action changes the referencing rows (CASCADE, SET NULL, SET DEFAULT) lets
/// a weak write to the referenced table change another table's rows. When those rows hold strong
/// data, a weak statement would change strong data on one node: an error, for every table in the
/// catalog, listed or not.
fn cascades_into_strong_data(schema: &Schema, catalog: &Catalog, file: &str, out: &mut Vec<Finding>) {
    let mut names: Vec<&TableName> = catalog.tables.keys().collect();
    names.sort();
    for name in names {
        let (_, rule) = schema.resolve(name);
        for fk in &catalog.tables[name].foreign_keys {
            let Some(action) = fk.on_change else { continue };
            let (_, target_rule) = schema.resolve(&fk.target);
            if target_rule.consistency != Consistency::Weak {
                continue;
            }
            // Deleting cascades to whole rows; the other actions rewrite the key columns.
            let touches_strong = if action == "ON DELETE CASCADE" {
                rule.has_strong()
            } else {
                fk.columns.iter().any(|c| rule.column(c) == Consistency::Strong)
            };
            if touches_strong {
                out.push(Finding {
                    severity: Severity::Error,
                    table: name.clone(),
                    message: format!(
                        "{file}: table {name} references weak table {} with {action} on ({}), so a weak change there would change strong data of {name} on one node: use RESTRICT or NO ACTION, or mark {} strong",
                        fk.target,
                        fk.columns.join(", "),
                        fk.target
                    ),
                });
            }
        }
    }
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
        id.default = Some("(nextval('users_id_seq'::regclass) * 10)".into());
        cat.tables.insert(
            TableName::new(Some("public"), "users"),
            CatalogTable {
                columns: vec![id, col("email"), col("name"), col("lo"), col("hi")],
                primary_key: vec!["id".into()],
                uniques: vec![vec!["name".into()], vec!["email".into()]],
                foreign_keys: vec![CatalogForeignKey {
                    columns: vec!["name".into()],
                    target: TableName::new(None, "posts"),
                    on_change: None,
                }],
                triggers: vec!["touch_updated_at".into()],
                trigger_functions: vec!["touch".into()],
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
        assert!(errors.iter().any(|m| m.contains("computes its key \"id\" from a sequence")), "{errors:#?}");
        assert!(warnings.iter().any(|m| m.contains("references weak table posts")), "{warnings:#?}");
        assert!(warnings.iter().any(|m| m.contains("CHECK constraint pos")), "{warnings:#?}");
        assert!(warnings.iter().any(|m| m.contains("trigger touch_updated_at")), "{warnings:#?}");
        assert!(f.iter().all(|f| f.message.starts_with("schema.toml: ")));
    }

    #[test]
    fn a_cascade_from_a_weak_table_into_strong_data_is_an_error() {
        let mut cat = Catalog::default();
        let fk = |on_change| CatalogForeignKey {
            columns: vec!["post_id".into()],
            target: TableName::new(Some("public"), "posts"),
            on_change,
        };
        let posts = CatalogTable { columns: vec![col("id")], primary_key: vec!["id".into()], ..Default::default() };
        cat.tables.insert(TableName::new(Some("public"), "posts"), posts);
        // `audit` is not listed, so strong; `later` is weak.
        for (table, on_change) in [("audit", Some("ON DELETE CASCADE")), ("later", Some("ON DELETE CASCADE"))] {
            let t = CatalogTable {
                columns: vec![col("id"), col("post_id")],
                primary_key: vec!["id".into()],
                foreign_keys: vec![fk(on_change)],
                ..Default::default()
            };
            cat.tables.insert(TableName::new(Some("public"), table), t);
        }
        let restricted =
            CatalogTable { columns: vec![col("post_id")], foreign_keys: vec![fk(None)], ..Default::default() };
        cat.tables.insert(TableName::new(Some("public"), "ledger"), restricted);
        let errors: Vec<String> = lint(&schema(), &cat, "schema.toml")
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].contains("table public.audit references weak table public.posts with ON DELETE CASCADE"));
        assert!(errors[0].contains("use RESTRICT or NO ACTION, or mark public.posts strong"), "{}", errors[0]);
    }
}
