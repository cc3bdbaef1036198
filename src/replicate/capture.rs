//! Installs change capture on the tables that hold weak data: the `pgmix.capture` trigger (see
//! `migrations/0002_weak_replication.sql`), a trigger that refuses TRUNCATE, the table's entry in
//! `pgmix.tables` for the apply side, and interleaved sequences for serial and identity columns.
//!
//! It runs whenever the catalog is checked: at start-up, when a database is first opened, and
//! after DDL through pgmix. What it should install is computed without I/O (`plan`), so the rules
//! are unit tested; `install` compares the plan with the triggers in place and changes only what
//! differs, because CREATE TRIGGER locks the table against writes.
//!
//! Crash meaning: each table's triggers and entry change in one transaction, so a table is
//! either captured as before or as now. A weak table written to in the moment between its
//! creation and the install after the DDL is captured from then on; its earlier rows are local
//! until written again (the DDL that creates weak tables should precede writes to them).

use std::collections::{BTreeMap, HashMap};

use tracing::info;

use crate::schema::lint::{Catalog, sequence_of};
use crate::schema::{Consistency, Schema, TableName};

/// What capture one table gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The name ready for SQL, `"schema"."table"`.
    pub table: String,
    pub key: Vec<String>,
    /// The whole row is weak: inserts, updates and deletes replicate. Otherwise only updates of
    /// `weak_columns` do (the row itself, and its strong columns, belong to the strong path).
    pub whole: bool,
    /// The columns the apply side writes: for a whole table every column that is not generated,
    /// otherwise the weak ones.
    pub columns: Vec<String>,
    /// Sequences to interleave: the `pg_get_serial_sequence` column names.
    pub sequence_columns: Vec<String>,
    /// The `pgmix.capture` trigger's arguments.
    pub capture_args: Vec<String>,
}

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A text[] literal's text.
fn array_text(items: &[String]) -> String {
    let quoted: Vec<String> =
        items.iter().map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

pub fn qualified(name: &TableName) -> String {
    format!("{}.{}", ident(name.schema.as_deref().unwrap_or("public")), ident(&name.name))
}

/// The capture each table of `catalog` gets under `schema`, by quoted name. Tables without a
/// primary key get none (the schema check reports them).
pub fn plan(schema: &Schema, catalog: &Catalog, node_id: u32) -> BTreeMap<String, Plan> {
    let mut out = BTreeMap::new();
    for (name, table) in &catalog.tables {
        let (_, rule) = schema.resolve(name);
        if rule.consistency != Consistency::Weak || table.primary_key.is_empty() {
            continue;
        }
        let whole = rule.strong_columns.is_empty();
        let writable = table.columns.iter().filter(|c| !c.generated);
        let columns: Vec<String> = if whole {
            writable.map(|c| c.name.clone()).collect()
        } else {
            writable.filter(|c| !rule.strong_columns.contains(&c.name)).map(|c| c.name.clone()).collect()
        };
        let sequence_columns = table
            .columns
            .iter()
            .filter(|c| whole && (c.identity || sequence_of(c).is_some()))
            .map(|c| c.name.clone())
            .collect();
        let quoted = qualified(name);
        let weak_cols = if whole { Vec::new() } else { columns.clone() };
        let capture_args = vec![
            node_id.to_string(),
            quoted.clone(),
            whole.to_string(),
            array_text(&table.primary_key),
            array_text(&weak_cols),
        ];
        out.insert(
            quoted.clone(),
            Plan { table: quoted, key: table.primary_key.clone(), whole, columns, sequence_columns, capture_args },
        );
    }
    out
}

/// The SQL that installs `p`'s triggers.
fn triggers_sql(p: &Plan) -> String {
    let args: Vec<String> = p.capture_args.iter().map(|a| literal(a)).collect();
    let events = if p.whole { "INSERT OR UPDATE OR DELETE" } else { "UPDATE" };
    let mut sql = format!(
        "CREATE OR REPLACE TRIGGER pgmix_capture AFTER {events} ON {t} FOR EACH ROW EXECUTE FUNCTION pgmix.capture({a});",
        t = p.table,
        a = args.join(", ")
    );
    if p.whole {
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER pgmix_no_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION pgmix.refuse_truncate({l});",
            t = p.table,
            l = literal(&p.table)
        ));
    } else {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS pgmix_no_truncate ON {};", p.table));
    }
    sql
}

/// The value a sequence stepping by `step` on node `node_id` should hand out next after
/// `last` (None when it never has): the first value above it that is `node_id` modulo `step`.
pub fn next_interleaved(last: Option<i64>, step: i64, node_id: i64) -> i64 {
    let floor = last.map_or(1, |l| l + 1);
    let want = node_id.rem_euclid(step);
    floor + (want - floor.rem_euclid(step)).rem_euclid(step)
}

const INSTALLED: &str = "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgargs \
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE t.tgname IN ('pgmix_capture', 'pgmix_no_truncate') AND NOT t.tgisinternal";

/// Brings capture in `client`'s database in line with `plans`; returns how many tables changed.
pub async fn install(
    client: &mut tokio_postgres::Client,
    plans: &BTreeMap<String, Plan>,
    max_nodes: u32,
    node_id: u32,
) -> Result<usize, tokio_postgres::Error> {
    // What is in place: table -> (capture args, has the truncate guard).
    let mut installed: HashMap<String, (Option<Vec<String>>, bool)> = HashMap::new();
    for row in client.query(INSTALLED, &[]).await? {
        let table = qualified(&TableName::new(Some(row.get::<_, &str>(0)), row.get::<_, &str>(1)));
        let entry = installed.entry(table).or_default();
        if row.get::<_, &str>(2) == "pgmix_capture" {
            let raw: Vec<u8> = row.get(3);
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            entry.0 = Some(args);
        } else {
            entry.1 = true;
        }
    }
    let mut changed = 0;
    for (table, p) in plans {
        let want_events: Option<Vec<String>> = Some(p.capture_args.clone());
        let have = installed.remove(table);
        let same = have.as_ref().is_some_and(|(args, guard)| *args == want_events && *guard == p.whole);
        let tx = client.transaction().await?;
        if !same {
            tx.batch_execute(&triggers_sql(p)).await?;
            changed += 1;
        }
        tx.execute(
            "INSERT INTO pgmix.tables (tbl, key, whole, cols) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tbl) DO UPDATE SET key = excluded.key, whole = excluded.whole, cols = excluded.cols",
            &[&p.table, &p.key, &p.whole, &p.columns],
        )
        .await?;
        for col in &p.sequence_columns {
            interleave(&tx, &p.table, col, max_nodes, node_id).await?;
        }
        tx.commit().await?;
    }
    // Tables that are no longer weak (the schema file changed) lose their capture.
    for (table, _) in installed {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS pgmix_capture ON {table}; DROP TRIGGER IF EXISTS pgmix_no_truncate ON {table};"
        ))
        .await?;
        tx.execute("DELETE FROM pgmix.tables WHERE tbl = $1", &[&table]).await?;
        tx.commit().await?;
        changed += 1;
    }
    if changed > 0 {
        info!(tables = changed, "weak change capture installed");
    }
    Ok(changed)
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
        let mut total = col("total");
        total.generated = true;
        cat.tables.insert(
            TableName::new(Some("public"), "posts"),
            CatalogTable {
                columns: vec![id, col("body"), total],
                primary_key: vec!["id".into()],
                ..Default::default()
            },
        );
        cat.tables.insert(
            TableName::new(Some("public"), "users"),
            CatalogTable {
                columns: vec![col("id"), col("email"), col("bio")],
                primary_key: vec!["id".into()],
                ..Default::default()
            },
        );
        cat.tables.insert(
            TableName::new(Some("public"), "accounts"),
            CatalogTable { columns: vec![col("id")], primary_key: vec!["id".into()], ..Default::default() },
        );
        cat.tables.insert(
            TableName::new(Some("public"), "nokey"),
            CatalogTable { columns: vec![col("x")], ..Default::default() },
        );
        let plans = plan(&schema, &cat, 2);
        assert_eq!(plans.keys().collect::<Vec<_>>(), ["\"public\".\"posts\"", "\"public\".\"users\""]);
        let posts = &plans["\"public\".\"posts\""];
        assert!(posts.whole);
        assert_eq!(posts.columns, ["id", "body"], "generated columns are not written");
        assert_eq!(posts.sequence_columns, ["id"]);
        assert_eq!(posts.capture_args, ["2", "\"public\".\"posts\"", "true", "{\"id\"}", "{}"]);
        let users = &plans["\"public\".\"users\""];
        assert!(!users.whole);
        assert_eq!(users.columns, ["id", "bio"]);
        assert!(users.sequence_columns.is_empty());
        assert!(triggers_sql(users).contains("AFTER UPDATE ON"));
    }

    #[test]
    fn names_are_quoted_for_sql() {
        assert_eq!(qualified(&TableName::new(Some("My"), "t\"x")), "\"My\".\"t\"\"x\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(array_text(&["a".into(), "b,\"c".into()]), "{\"a\",\"b,\\\"c\"}");
    }
}
