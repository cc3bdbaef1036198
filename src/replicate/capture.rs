//! Installs change capture on the tables that hold weak data (and the strong path's capture on
//! those that hold strong data, `strong_plan`): a trigger function generated for
//! the table by `pgmix.install_capture` (see `migrations/0002_weak_replication.sql`), a trigger
//! that refuses TRUNCATE, the table's entry in `pgmix.tables` for the apply side, and
//! interleaved sequences for serial and identity columns.
//!
//! It runs whenever the catalog is checked: at start-up, when a database is first opened, and
//! after DDL through pgmix. Which tables get what is decided without I/O (`plan`), so the rules
//! are unit tested. An ALTER TABLE of a captured table, through pgmix or not, regenerates its
//! capture in its own transaction (an event trigger), so no write to a new column is missed.
//!
//! Crash meaning: each table's capture changes in one transaction, so a table is either captured
//! as before or as now. Rows written to a new weak table before its first install (the moment
//! between its CREATE and the re-check after it) are not captured: such a table's rows are local
//! until written again, so create weak tables before writing to them, as one does anyway.

use std::collections::BTreeMap;

use tracing::info;

use crate::schema::lint::Catalog;
use crate::schema::{Consistency, Schema, TableName};

/// What capture one table gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The name ready for SQL, `"schema"."table"`.
    pub table: String,
    /// The whole row is weak: inserts, updates and deletes replicate. Otherwise only updates of
    /// the columns not in `strong` do (the row itself belongs to the strong path).
    pub whole: bool,
    pub strong: Vec<String>,
}

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn qualified(name: &TableName) -> String {
    format!("{}.{}", ident(name.schema.as_deref().unwrap_or("public")), ident(&name.name))
}

/// The capture each table of `catalog` gets under `schema`, by quoted name. Tables without a
/// primary key get none (the schema check reports them).
pub fn plan(schema: &Schema, catalog: &Catalog) -> BTreeMap<String, Plan> {
    let mut out = BTreeMap::new();
    for (name, table) in &catalog.tables {
        let (_, rule) = schema.resolve(name);
        if rule.consistency != Consistency::Weak || table.primary_key.is_empty() {
            continue;
        }
        let whole = rule.strong_columns.is_empty();
        let mut strong: Vec<String> = rule.strong_columns.iter().cloned().collect();
        strong.sort();
        let quoted = qualified(name);
        out.insert(quoted.clone(), Plan { table: quoted, whole, strong });
    }
    out
}

/// The strong capture each table gets (see `migrations/0004_strong.sql`), by quoted name: the
/// strong columns of a partly strong table, or none for a table that is strong throughout.
/// Keyless strong tables are captured too (their rows are found by value on the other nodes).
pub fn strong_plan(schema: &Schema, catalog: &Catalog) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for name in catalog.tables.keys() {
        let (_, rule) = schema.resolve(name);
        let cols: Vec<String> = match rule.consistency {
            Consistency::Strong => Vec::new(),
            Consistency::Weak if rule.strong_columns.is_empty() => continue,
            Consistency::Weak => {
                let mut c: Vec<String> = rule.strong_columns.iter().cloned().collect();
                c.sort();
                c
            }
        };
        out.insert(qualified(name), cols);
    }
    out
}

/// Writes the schema file's rules into `pgmix.schema_rules`, where the event trigger that
/// captures tables created between two checks reads them.
async fn write_rules(client: &mut tokio_postgres::Client, schema: &Schema) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("DELETE FROM pgmix.schema_rules; DELETE FROM pgmix.schema_file").await?;
    tx.execute(
        "INSERT INTO pgmix.schema_file (default_weak, search_path) VALUES ($1, $2)",
        &[&(schema.default == Consistency::Weak), &schema.search_path],
    )
    .await?;
    for (name, rule) in &schema.tables {
        let mut strong: Vec<&String> = rule.strong_columns.iter().collect();
        strong.sort();
        tx.execute(
            "INSERT INTO pgmix.schema_rules (nsp, rel, weak, strong) VALUES ($1, $2, $3, $4)",
            &[&name.schema, &name.name, &(rule.consistency == Consistency::Weak), &strong],
        )
        .await?;
    }
    tx.commit().await
}

/// Brings capture in `client`'s database in line with `plans` (`pgmix.install_capture` changes
/// only what differs, because CREATE TRIGGER locks the table against writes).
pub async fn install(
    client: &mut tokio_postgres::Client,
    schema: &Schema,
    plans: &BTreeMap<String, Plan>,
    strong: &BTreeMap<String, Vec<String>>,
    catalog: &Catalog,
) -> Result<(), tokio_postgres::Error> {
    // Only tables the catalog snapshot knows are judged: one created since (its capture came
    // with its CREATE, from the event trigger) must not lose it to a plan made before it existed.
    let known: std::collections::BTreeSet<String> = catalog.tables.keys().map(qualified).collect();
    write_rules(client, schema).await?;
    for p in plans.values() {
        client
            .execute("SELECT pgmix.install_capture($1::text::regclass, $2, $3)", &[&p.table, &p.whole, &p.strong])
            .await?;
    }
    // Tables no longer weak (the schema file changed) lose their capture; dropped ones their entry.
    let captured = client
        .query(
            "SELECT pgmix.qualified(tgrelid::regclass) FROM pg_trigger WHERE tgname = 'pgmix_capture' AND NOT tgisinternal",
            &[],
        )
        .await?;
    for row in captured {
        let table: String = row.get(0);
        if known.contains(&table) && !plans.contains_key(&table) {
            client.execute("SELECT pgmix.remove_capture($1::text::regclass)", &[&table]).await?;
            info!(%table, "weak change capture removed: the table is no longer weak");
        }
    }
    let gone: Vec<&String> = known.iter().filter(|t| !plans.contains_key(*t)).collect();
    client.execute("DELETE FROM pgmix.tables WHERE tbl = ANY($1) OR to_regclass(tbl) IS NULL", &[&gone]).await?;
    for (table, cols) in strong {
        client.execute("SELECT pgmix.install_strong($1::text::regclass, $2)", &[table, cols]).await?;
    }
    for row in client.query("SELECT tbl FROM pgmix.strong_tables", &[]).await? {
        let table: String = row.get(0);
        if known.contains(&table) && !strong.contains_key(&table) {
            client.execute("SELECT pgmix.remove_strong(to_regclass($1))", &[&table]).await?;
            info!(%table, "strong capture removed: the table is no longer strong");
        }
    }
    // Entries of tables dropped since go; those of tables created since stay.
    client.execute("DELETE FROM pgmix.strong_tables WHERE to_regclass(tbl) IS NULL", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::lint::{CatalogColumn, CatalogTable};

    #[test]
    fn weak_tables_with_keys_are_captured_strong_ones_are_not() {
        let schema = Schema::from_toml_str(
            "[tables.posts]\nconsistency = \"weak\"\n[tables.users]\nconsistency = \"weak\"\nstrong_columns = [\"email\"]\n\
             [tables.accounts]\nconsistency = \"strong\"\n[tables.nokey]\nconsistency = \"weak\"\n",
            "schema.toml",
        )
        .unwrap();
        let col = |n: &str| CatalogColumn { name: n.into(), ..Default::default() };
        let mut cat = Catalog::default();
        let mut id = col("id");
        id.identity = true;
        let table = |columns: Vec<CatalogColumn>, key: bool| CatalogTable {
            columns,
            primary_key: if key { vec!["id".into()] } else { vec![] },
            ..Default::default()
        };
        cat.tables.insert(TableName::new(Some("public"), "posts"), table(vec![id, col("body")], true));
        cat.tables.insert(TableName::new(Some("public"), "users"), table(vec![col("id"), col("email")], true));
        cat.tables.insert(TableName::new(Some("public"), "accounts"), table(vec![col("id")], true));
        cat.tables.insert(TableName::new(Some("public"), "nokey"), table(vec![col("x")], false));
        let plans = plan(&schema, &cat);
        assert_eq!(plans.keys().collect::<Vec<_>>(), ["\"public\".\"posts\"", "\"public\".\"users\""]);
        let posts = &plans["\"public\".\"posts\""];
        assert!(posts.whole && posts.strong.is_empty());
        let users = &plans["\"public\".\"users\""];
        assert!(!users.whole);
        assert_eq!(users.strong, ["email"]);
        let strong = strong_plan(&schema, &cat);
        assert_eq!(strong.keys().collect::<Vec<_>>(), ["\"public\".\"accounts\"", "\"public\".\"users\""]);
        assert!(strong["\"public\".\"accounts\""].is_empty());
        assert_eq!(strong["\"public\".\"users\""], ["email"]);
    }

    #[test]
    fn names_are_quoted_for_sql() {
        assert_eq!(qualified(&TableName::new(Some("My"), "t\"x")), "\"My\".\"t\"\"x\"");
    }
}
