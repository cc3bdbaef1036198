//! `pgmix verify`: compares every weak table across the nodes, reading each node's Postgres
//! directly. Per table, one checksum per node; when they differ, checksums per key-hash bucket;
//! in the buckets that differ, one hash per row, which names the keys that differ.
//!
//! Weak data converges, so a difference while writes are flowing can be replication lag: run it
//! on a quiet cluster, or again. Values are compared in their JSON form with the session time
//! zone set to UTC, so nodes with different settings compare equal.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("{node}: {cause}")]
    Postgres { node: String, cause: String },
    #[error("at least two nodes are needed to compare")]
    TooFew,
}

/// How one table compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    /// Rows on each node, in the order the nodes were given.
    pub rows: Vec<i64>,
    /// Keys (as JSON) that differ, with what each node holds (a row hash, or missing).
    pub differing: Vec<(String, Vec<String>)>,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.differing.is_empty()
    }
}

const BUCKETS: i32 = 64;

fn pg(node: &str) -> impl Fn(tokio_postgres::Error) -> VerifyError + '_ {
    move |e| VerifyError::Postgres {
        node: node.to_owned(),
        cause: e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    }
}

/// Compares every weak table of `database` on `nodes` (name and connection config each).
pub async fn verify(nodes: &[(String, tokio_postgres::Config)]) -> Result<Vec<TableReport>, VerifyError> {
    if nodes.len() < 2 {
        return Err(VerifyError::TooFew);
    }
    let mut clients = Vec::new();
    for (name, cfg) in nodes {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(pg(name))?;
        tokio::spawn(conn);
        client.batch_execute(crate::replicate::JSON_SETTINGS).await.map_err(pg(name))?;
        clients.push((name.as_str(), client));
    }
    // The weak tables any node captures, with their key and compared columns.
    let mut tables: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (name, c) in &clients {
        for r in c.query("SELECT tbl, key, cols FROM pgmix.tables", &[]).await.map_err(pg(name))? {
            tables.insert(r.get(0), (r.get(1), r.get(2)));
        }
    }
    let mut out = Vec::new();
    for (table, (key, cols)) in tables {
        let rows_of = format!(
            "SELECT pgmix.pick(to_jsonb(t), $1)::text AS k, md5(pgmix.pick(to_jsonb(t), $2)::text) AS h, \
             abs(hashtext(pgmix.pick(to_jsonb(t), $1)::text)) % {BUCKETS} AS b FROM {table} t"
        );
        let mut sums = Vec::new();
        let mut counts = Vec::new();
        for (name, c) in &clients {
            let r = c
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(k || h, ',' ORDER BY k)), '') FROM ({rows_of}) x"
                    ),
                    &[&key, &cols],
                )
                .await;
            match r {
                Ok(r) => {
                    counts.push(r.get::<_, i64>(0));
                    sums.push(r.get::<_, String>(1));
                }
                // A table missing on a node differs everywhere.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    counts.push(-1);
                    sums.push(format!("missing on {name}"));
                }
                Err(e) => return Err(pg(name)(e)),
            }
        }
        let mut differing = Vec::new();
        if sums.windows(2).any(|w| w[0] != w[1]) {
            differing = compare_rows(&clients, &rows_of, &key, &cols).await?;
        }
        out.push(TableReport { table, rows: counts, differing });
    }
    Ok(out)
}

/// Narrows a difference down: bucket checksums, then row hashes in the buckets that differ.
async fn compare_rows(
    clients: &[(&str, tokio_postgres::Client)],
    rows_of: &str,
    key: &[String],
    cols: &[String],
) -> Result<Vec<(String, Vec<String>)>, VerifyError> {
    let bucket_sums = format!("SELECT b, md5(string_agg(k || h, ',' ORDER BY k)) FROM ({rows_of}) x GROUP BY b");
    let mut per_node: Vec<BTreeMap<i32, String>> = Vec::new();
    for (name, c) in clients {
        // A table missing on a node has no buckets there: every key differs.
        let rows = match c.query(&bucket_sums, &[&key, &cols]).await {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
            Err(e) => return Err(pg(name)(e)),
        };
        per_node.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    let all: BTreeSet<i32> = per_node.iter().flat_map(|m| m.keys().copied()).collect();
    let suspect: Vec<i32> =
        all.into_iter().filter(|b| per_node.iter().any(|m| m.get(b) != per_node[0].get(b))).collect();
    let in_buckets = format!("SELECT k, h FROM ({rows_of}) x WHERE b = ANY($3)");
    let mut rows: Vec<BTreeMap<String, String>> = Vec::new();
    for (name, c) in clients {
        let r = match c.query(&in_buckets, &[&key, &cols, &suspect]).await {
            Ok(r) => r,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
            Err(e) => return Err(pg(name)(e)),
        };
        rows.push(r.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    let keys: BTreeSet<&String> = rows.iter().flat_map(|m| m.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let hashes: Vec<Option<&String>> = rows.iter().map(|m| m.get(k)).collect();
        if hashes.windows(2).all(|w| w[0] == w[1]) {
            continue;
        }
        let each = clients
            .iter()
            .zip(&hashes)
            .map(|((name, _), h)| match h {
                Some(h) => format!("{name}: row {}", &h[..8.min(h.len())]),
                None => format!("{name}: missing"),
            })
            .collect();
        out.push((k.clone(), each));
    }
    Ok(out)
}

/// The report as people read it; the bool is whether everything is equal.
pub fn render(reports: &[TableReport], nodes: &[String]) -> (String, bool) {
    let mut text = String::new();
    let mut equal = true;
    if reports.is_empty() {
        text.push_str("no weak tables to compare\n");
    }
    for r in reports {
        if r.equal() {
            let rows = r.rows.first().copied().unwrap_or(0);
            let noun = if rows == 1 { "row" } else { "rows" };
            text.push_str(&format!("{}: equal on {} nodes ({rows} {noun})\n", r.table, nodes.len()));
            continue;
        }
        equal = false;
        let counts: Vec<String> = nodes.iter().zip(&r.rows).map(|(n, c)| format!("{n}={c}")).collect();
        text.push_str(&format!(
            "{}: DIFFERENT (rows: {}); {} keys differ:\n",
            r.table,
            counts.join(" "),
            r.differing.len()
        ));
        for (k, odd) in r.differing.iter().take(50) {
            text.push_str(&format!("  key {k}: {}\n", odd.join(", ")));
        }
        if r.differing.len() > 50 {
            text.push_str(&format!("  ... and {} more\n", r.differing.len() - 50));
        }
    }
    (text, equal)
}
