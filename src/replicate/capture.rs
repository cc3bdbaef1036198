//! Installs change capture on the tables that hold weak data: a trigger function generated for
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

use crate::schema::lint::{Catalog, sequence_of};
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
    /// Serial and identity columns, whose sequences are interleaved per node.
    pub sequence_columns: Vec<String>,
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
        let sequence_columns = table
            .columns
            .iter()
            .filter(|c| whole && (c.identity || sequence_of(c).is_some()))
            .map(|c| c.name.clone())
            .collect();
        let quoted = qualified(name);
        out.insert(quoted.clone(), Plan { table: quoted, whole, strong, sequence_columns });
    }
    out
}

/// The value a sequence stepping by `step` on node `node_id` should hand out next after
/// `last` (None when it never has): the first value above it that is `node_id` modulo `step`.
pub fn next_interleaved(last: Option<i64>, step: i64, node_id: i64) -> i64 {
    let floor = last.map_or(1, |l| l + 1);
    let want = node_id.rem_euclid(step);
    floor + (want - floor.rem_euclid(step)).rem_euclid(step)
}

/// Brings capture in `client`'s database in line with `plans` (`pgmix.install_capture` changes
/// only what differs, because CREATE TRIGGER locks the table against writes).
pub async fn install(
    client: &mut tokio_postgres::Client,
    plans: &BTreeMap<String, Plan>,
    max_nodes: u32,
    node_id: u32,
) -> Result<(), tokio_postgres::Error> {
    for p in plans.values() {
        let tx = client.transaction().await?;
        tx.execute("SELECT pgmix.install_capture($1::text::regclass, $2, $3)", &[&p.table, &p.whole, &p.strong])
            .await?;
        for col in &p.sequence_columns {
            interleave(&tx, &p.table, col, max_nodes, node_id).await?;
        }
        tx.commit().await?;
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
        if !plans.contains_key(&table) {
            client.execute("SELECT pgmix.remove_capture($1::text::regclass)", &[&table]).await?;
            info!(%table, "weak change capture removed: the table is no longer weak");
        }
    }
    let names: Vec<&String> = plans.keys().collect();
    client.execute("DELETE FROM pgmix.tables WHERE NOT tbl = ANY($1)", &[&names]).await?;
    Ok(())
}

/// Makes the sequence behind `table.col` step by `max_nodes` and hand out only values that are
/// `node_id` modulo it, so that no two nodes issue the same key.
async fn interleave(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    col: &str,
    max_nodes: u32,
    node_id: u32,
) -> Result<(), tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT s.seqrelid::regclass::text, s.seqincrement, ps.last_value FROM pg_sequence s \
             JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_sequences ps ON ps.schemaname = n.nspname AND ps.sequencename = c.relname \
             WHERE s.seqrelid = pg_get_serial_sequence($1, $2)::regclass",
            &[&table, &col],
        )
        .await?;
    let Some(row) = row else { return Ok(()) };
    let (seq, step, last): (String, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
    let (m, me) = (i64::from(max_nodes), i64::from(node_id));
    if step == m && last.is_none_or(|l| l.rem_euclid(m) == me.rem_euclid(m)) {
        return Ok(());
    }
    let next = next_interleaved(last, m, me);
    tx.batch_execute(&format!("ALTER SEQUENCE {seq} INCREMENT BY {m}")).await?;
    tx.execute("SELECT setval($1::text::regclass, $2, false)", &[&seq, &next]).await?;
    info!(sequence = %seq, step = m, next, "serial key interleaved for this node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::lint::{CatalogColumn, CatalogTable};

    #[test]
    fn interleaved_values_are_the_nodes_own_and_above_the_last() {
        assert_eq!(next_interleaved(None, 16, 1), 1);
        assert_eq!(next_interleaved(None, 16, 3), 3);
        assert_eq!(next_interleaved(Some(40), 16, 3), 51);
        assert_eq!(next_interleaved(Some(51), 16, 3), 67);
        assert_eq!(next_interleaved(Some(5), 16, 16), 16);
        for last in 0..100 {
            let v = next_interleaved(Some(last), 7, 3);
            assert!(v > last && v % 7 == 3 && v - last <= 7, "{last} -> {v}");
        }
    }

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
        assert_eq!(posts.sequence_columns, ["id"]);
        let users = &plans["\"public\".\"users\""];
        assert!(!users.whole);
        assert_eq!(users.strong, ["email"]);
        assert!(users.sequence_columns.is_empty(), "sequences of a partly strong table are the strong path's");
    }

    #[test]
    fn names_are_quoted_for_sql() {
        assert_eq!(qualified(&TableName::new(Some("My"), "t\"x")), "\"My\".\"t\"\"x\"");
    }
}
