//! Applies changes from peers to the local database: per change, the row and its versions are
//! read under lock, the merge rule (`merge`) decides, and the row, its versions and the local log
//! are written, all in one transaction with the cursor of the peer they came from.
//!
//! Apply runs with `session_replication_role = replica`, as Postgres's own logical replication
//! does: neither user triggers nor pgmix's capture fire, so nothing echoes back as a local write,
//! and foreign keys are not re-checked (the origin checked them). A change that changed
//! something is logged again, so that it can be forwarded to a node that missed it; a duplicate
//! or a change that lost changes nothing and is not logged, so nothing circulates for ever.
//!
//! A change that cannot be applied (its table or column is not here yet, a constraint refuses
//! it) is parked in `pgmix.conflicts` with its reason and retried; the batch goes on without it.
//!
//! Crash meaning: a batch commits with its cursor or not at all, so after a crash the peer is
//! asked again from the last committed cursor; changes applied twice merge to the same state.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;
use thiserror::Error;

use super::capture::ident;
use super::log::{LogChange, Pos};
use super::merge::{Change, RowState, Value};
use crate::clock::Version;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{}", .0.as_db_error().map_or_else(|| .0.to_string(), |d| format!("{}: {}", d.code().code(), d.message())))]
    Postgres(#[from] tokio_postgres::Error),
    /// This change cannot be applied here now; it is parked and retried.
    #[error("{reason}")]
    Park { reason: String, sqlstate: String },
    /// A local transaction wrote a row while the batch was deciding about it: the batch is
    /// tried again, reading what that transaction wrote.
    #[error("a local write raced the apply of {0}; the batch is tried again")]
    Raced(String),
}

impl ApplyError {
    pub(super) fn park(reason: impl Into<String>) -> Self {
        ApplyError::Park { reason: reason.into(), sqlstate: String::new() }
    }

    /// Errors that say nothing about the change (a deadlock, a lost connection, a shutdown):
    /// the batch is tried again later rather than parking anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Park { .. } => false,
            ApplyError::Raced(_) => true,
            ApplyError::Postgres(e) => match e.code() {
                None => true,
                Some(c) => {
                    let c = c.code();
                    c.starts_with("40")
                        || c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c == "55P03"
                }
            },
        }
    }

    fn into_parked(self) -> (String, String) {
        match self {
            ApplyError::Park { reason, sqlstate } => (reason, sqlstate),
            ApplyError::Raced(what) => (format!("a local write raced the apply of {what}"), "40001".into()),
            ApplyError::Postgres(e) => {
                let state = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
                let reason = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
                (reason, state)
            }
        }
    }
}

/// What the apply side knows of a captured table (from `pgmix.tables`).
#[derive(Debug, Clone)]
pub struct TableMeta {
    pub key: Vec<String>,
    pub whole: bool,
    pub columns: Vec<String>,
}

pub async fn tables(
    client: &impl tokio_postgres::GenericClient,
) -> Result<HashMap<String, TableMeta>, tokio_postgres::Error> {
    let rows = client.query("SELECT tbl, key, whole, cols FROM pgmix.tables", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), TableMeta { key: r.get(1), whole: r.get(2), columns: r.get(3) })).collect())
}

/// How a batch went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Changes that changed something.
    pub changed: u64,
    /// Duplicates and changes that lost to what was here.
    pub stale: u64,
    pub parked: u64,
    /// The batch could not be applied whole and was applied change by change.
    pub careful: bool,
}

pub(super) fn version(h: i64, n: i32) -> Version {
    Version::new(h as u64, n as u32)
}

/// The change's own form for the merge rule, and the columns it names.
pub fn to_change(c: &LogChange) -> Result<Change, ApplyError> {
    let cols: BTreeMap<String, (i64, i32, Box<RawValue>)> = serde_json::from_str(&c.cols)
        .map_err(|e| ApplyError::park(format!("malformed columns from node {}: {e}", c.origin)))?;
    let value = |raw: &RawValue| -> Value { (raw.get() != "null").then(|| raw.get().to_owned()) };
    if let Some((h, n)) = c.del {
        return Ok(Change::Delete { version: version(h, n) });
    }
    if let Some((h, n)) = c.ins {
        let columns = cols.iter().map(|(k, (_, _, v))| (k.clone(), value(v))).collect();
        return Ok(Change::Insert { version: version(h, n), columns });
    }
    let columns = cols.iter().map(|(k, (h, n, v))| (k.clone(), (value(v), version(*h, *n)))).collect();
    Ok(Change::Update { columns })
}

/// The row as stored here: its versions row and its current values (None when it is not here).
pub(super) struct Stored {
    pub state: RowState,
    pub present: bool,
    pub top: i64,
    /// Whether the row had a versions row (locked by the read) when it was read.
    pub versioned: bool,
}

/// A `pgmix.versions` row as read: ins, ins_node, del, del_node, cols::text, ghost::text, top.
pub(super) struct VersionsRow {
    ins: Option<(i64, i32)>,
    del: Option<(i64, i32)>,
    cols: String,
    ghost: Option<String>,
    top: i64,
}

impl VersionsRow {
    /// Reads the seven columns from `at` on.
    pub fn from_row(r: &tokio_postgres::Row, at: usize) -> Self {
        Self {
            ins: r.get::<_, Option<i64>>(at).zip(r.get::<_, Option<i32>>(at + 1)),
            del: r.get::<_, Option<i64>>(at + 2).zip(r.get::<_, Option<i32>>(at + 3)),
            cols: r.get(at + 4),
            ghost: r.get(at + 5),
            top: r.get(at + 6),
        }
    }
}

fn parse_object(text: &str) -> Result<BTreeMap<String, Box<RawValue>>, ApplyError> {
    serde_json::from_str(text).map_err(|e| ApplyError::park(format!("malformed row: {e}")))
}

/// The stored row's state for the merge rule: values from the row while it is here, from under
/// its tombstone (`ghost`) when it is not; versions from `pgmix.versions`, where a value
/// written before capture began has the lowest version.
pub(super) fn stored(row: Option<&str>, versions: Option<&VersionsRow>) -> Result<Stored, ApplyError> {
    let mut st = RowState::default();
    let mut top = 0;
    let mut col_versions: BTreeMap<String, (i64, i32)> = BTreeMap::new();
    let mut ghost = None;
    if let Some(v) = versions {
        st.inserted = v.ins.map(|(h, n)| version(h, n));
        st.deleted = v.del.map(|(h, n)| version(h, n));
        col_versions =
            serde_json::from_str(&v.cols).map_err(|e| ApplyError::park(format!("malformed versions: {e}")))?;
        ghost = v.ghost.as_deref();
        top = v.top;
    } else if row.is_some() {
        st.inserted = Some(Version::default());
    }
    let values = match (row, ghost) {
        (Some(r), _) => parse_object(r)?,
        (None, Some(g)) => parse_object(g)?,
        (None, None) => BTreeMap::new(),
    };
    for (name, raw) in values {
        let v = col_versions.get(&name).map_or(Version::default(), |(h, n)| version(*h, *n));
        let value = (raw.get() != "null").then(|| raw.get().to_owned());
        st.columns.insert(name, (value, v));
    }
    if row.is_some() && st.inserted.is_none() {
        // Here, with versions that never saw it inserted: written before capture began.
        st.inserted = Some(Version::default());
    }
    Ok(Stored { state: st, present: row.is_some(), top, versioned: versions.is_some() })
}

/// `{"col": value, ...}` for `names`, from the state's values.
pub(super) fn values_json<'a>(st: &RowState, names: impl Iterator<Item = &'a String>) -> String {
    let parts: Vec<String> = names
        .filter_map(|n| {
            let (v, _) = st.columns.get(n)?;
            Some(format!("{}:{}", serde_json::Value::from(n.as_str()), v.as_deref().unwrap_or("null")))
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn key_match(table: &str, key: &[String], param: usize) -> String {
    let cols: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let cols = cols.join(", ");
    format!("({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, ${param}::text::jsonb))")
}

/// What a merged row means for the user's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UserWrite {
    None,
    /// These columns changed value.
    Update(Vec<String>),
    /// The row appears, with these columns.
    Insert(Vec<String>),
    Delete,
}

/// The `pgmix.versions` row after a merge.
pub(super) struct VersionsWrite {
    pub ins: Option<i64>,
    pub ins_node: Option<i32>,
    pub del: Option<i64>,
    pub del_node: Option<i32>,
    pub cols: String,
    pub ghost: Option<String>,
    pub top: i64,
}

pub(super) struct RowWrite {
    pub user: UserWrite,
    pub versions: VersionsWrite,
}

/// What to write for a row that was `before` (`present` in the table, `top` its highest stamp)
/// and is `after` once merged.
pub(super) fn outcome(before: &RowState, present: bool, top: i64, after: &RowState, meta: &TableMeta) -> RowWrite {
    let visible = if meta.whole { after.visible() } else { true };
    let user = match (present, visible) {
        (true, true) => {
            let changed: Vec<String> = meta
                .columns
                .iter()
                .filter(|n| after.columns.get(*n).map(|x| &x.0) != before.columns.get(*n).map(|x| &x.0))
                .cloned()
                .collect();
            if changed.is_empty() { UserWrite::None } else { UserWrite::Update(changed) }
        }
        (false, true) => {
            UserWrite::Insert(meta.columns.iter().filter(|n| after.columns.contains_key(*n)).cloned().collect())
        }
        (true, false) => UserWrite::Delete,
        (false, false) => UserWrite::None,
    };
    let mut top = top;
    let mut stamps = Vec::new();
    for (name, (_, v)) in &after.columns {
        top = top.max(v.hlc as i64);
        stamps.push(format!("{}:[{},{}]", serde_json::Value::from(name.as_str()), v.hlc, v.node));
    }
    for v in [after.inserted, after.deleted].into_iter().flatten() {
        top = top.max(v.hlc as i64);
    }
    let pair = |v: Option<Version>| (v.map(|v| v.hlc as i64), v.map(|v| v.node as i32));
    let (ins, ins_node) = pair(after.inserted);
    let (del, del_node) = pair(after.deleted);
    RowWrite {
        user,
        versions: VersionsWrite {
            ins,
            ins_node,
            del,
            del_node,
            cols: format!("{{{}}}", stamps.join(",")),
            ghost: (!visible).then(|| values_json(after, after.columns.keys())),
            top,
        },
    }
}

/// Why `c` cannot be applied here now, before any row is read: its table or a column it
/// writes is not here (yet).
pub(super) fn unfit(c: &LogChange, change: &Change, tables: &HashMap<String, TableMeta>) -> Option<ApplyError> {
    let Some(meta) = tables.get(&c.tbl) else {
        return Some(ApplyError::park(format!("table {} is not a weak table here (yet)", c.tbl)));
    };
    let named: Vec<&String> = match change {
        Change::Insert { columns, .. } => columns.keys().collect(),
        Change::Update { columns } => columns.keys().collect(),
        Change::Delete { .. } => Vec::new(),
    };
    let missing = named.into_iter().find(|n| !meta.columns.contains(n))?;
    Some(ApplyError::park(format!("table {} has no column {} here (yet)", c.tbl, ident(missing))))
}

/// Applies one change inside `tx`.
pub async fn apply_one(
    tx: &tokio_postgres::Transaction<'_>,
    c: &LogChange,
    tables: &HashMap<String, TableMeta>,
) -> Result<bool, ApplyError> {
    let change = to_change(c)?;
    if let Some(e) = unfit(c, &change, tables) {
        return Err(e);
    }
    let Some(meta) = tables.get(&c.tbl) else { return Err(ApplyError::park("no table")) };
    let t = &c.tbl;
    let lock_row = format!("SELECT to_jsonb(t)::text FROM {t} t WHERE {} FOR UPDATE", key_match(t, &meta.key, 1));
    let row = tx.query_opt(&lock_row, &[&c.key]).await?;
    let versions = tx
        .query_opt(
            "SELECT ins, ins_node, del, del_node, cols::text, ghost::text, top FROM pgmix.versions \
             WHERE tbl = $1 AND key = $2::text::jsonb FOR UPDATE",
            &[&c.tbl, &c.key],
        )
        .await?;
    let row_text: Option<String> = row.map(|r| r.get(0));
    let versions = versions.map(|r| VersionsRow::from_row(&r, 0));
    let Stored { state: before, present, top, versioned } = stored(row_text.as_deref(), versions.as_ref())?;
    if !meta.whole && !present {
        return Err(ApplyError::park(format!("row {} of {} is not here yet", c.key, c.tbl)));
    }
    let mut after = before.clone();
    if !after.apply(&change) {
        return Ok(false);
    }
    let w = outcome(&before, present, top, &after, meta);
    let t = &c.tbl;
    match &w.user {
        UserWrite::Update(changed) => {
            let cols: Vec<String> = changed.iter().map(|n| ident(n)).collect();
            let cols = cols.join(", ");
            let sql = format!(
                "UPDATE {t} SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{t}, $2::text::jsonb)) WHERE {}",
                key_match(t, &meta.key, 1)
            );
            tx.execute(&sql, &[&c.key, &values_json(&after, changed.iter())]).await?;
        }
        UserWrite::Insert(names) => {
            let cols: Vec<String> = names.iter().map(|n| ident(n)).collect();
            let cols = cols.join(", ");
            let sql = format!(
                "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM jsonb_populate_record(NULL::{t}, $1::text::jsonb)"
            );
            tx.execute(&sql, &[&values_json(&after, names.iter())]).await?;
        }
        UserWrite::Delete => {
            tx.execute(&format!("DELETE FROM {t} WHERE {}", key_match(t, &meta.key, 1)), &[&c.key]).await?;
        }
        UserWrite::None => {}
    }
    let v = &w.versions;
    // A row that had no versions row when it was read was not locked: a local write may have
    // made one since, which this write must not overwrite.
    let on_conflict = if versioned {
        "DO UPDATE SET ins = excluded.ins, ins_node = excluded.ins_node, del = excluded.del, \
         del_node = excluded.del_node, cols = excluded.cols, ghost = excluded.ghost, top = excluded.top"
    } else {
        "DO NOTHING"
    };
    let written = tx
        .execute(
            &format!(
                "INSERT INTO pgmix.versions (tbl, key, ins, ins_node, del, del_node, cols, ghost, top) \
                 VALUES ($1, $2::text::jsonb, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9) \
                 ON CONFLICT (tbl, key) {on_conflict}"
            ),
            &[&c.tbl, &c.key, &v.ins, &v.ins_node, &v.del, &v.del_node, &v.cols, &v.ghost, &v.top],
        )
        .await?;
    if written != 1 {
        return Err(ApplyError::Raced(format!("{} {}", c.tbl, c.key)));
    }
    let (ins, ins_node) = (c.ins.map(|x| x.0), c.ins.map(|x| x.1));
    let (del, del_node) = (c.del.map(|x| x.0), c.del.map(|x| x.1));
    tx.execute(
        "INSERT INTO pgmix.changes (origin, hlc, tbl, key, ins, ins_node, del, del_node, cols) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9::text::jsonb)",
        &[&c.origin, &c.hlc, &c.tbl, &c.key, &ins, &ins_node, &del, &del_node, &c.cols],
    )
    .await?;
    Ok(true)
}

/// Parks `c` in `pgmix.conflicts`.
pub async fn park(
    tx: &tokio_postgres::Transaction<'_>,
    source: i32,
    c: &LogChange,
    err: ApplyError,
) -> Result<(), tokio_postgres::Error> {
    let (reason, sqlstate) = err.into_parked();
    tracing::warn!(table = %c.tbl, key = %c.key, %reason, "a change from a peer is parked; it will be retried");
    let (ins, ins_node) = (c.ins.map(|x| x.0), c.ins.map(|x| x.1));
    let (del, del_node) = (c.del.map(|x| x.0), c.del.map(|x| x.1));
    tx.execute(
        "INSERT INTO pgmix.conflicts (source, origin, hlc, tbl, key, ins, ins_node, del, del_node, cols, reason, sqlstate) \
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10::text::jsonb, $11, $12)",
        &[&source, &c.origin, &c.hlc, &c.tbl, &c.key, &ins, &ins_node, &del, &del_node, &c.cols, &reason, &sqlstate],
    )
    .await?;
    Ok(())
}

/// Apply runs as a replica (no triggers) and, should it deadlock with a user's transaction,
/// notices first and gives way: the user's transaction goes on, the batch is tried again.
const REPLICA: &str = "SET LOCAL session_replication_role = replica; SET LOCAL deadlock_timeout = '50ms'";

/// The changes of `changes` that the stored versions already hold (duplicates, and changes
/// that lost), found with one unlocked read: versions only grow, so such a change stays
/// dominated, and skipping it spares locking rows that local writers may hold.
async fn dominated(
    tx: &tokio_postgres::Transaction<'_>,
    changes: &[(Pos, LogChange)],
) -> Result<Vec<bool>, ApplyError> {
    let tbls: Vec<&str> = changes.iter().map(|(_, c)| c.tbl.as_str()).collect();
    let keys: Vec<&str> = changes.iter().map(|(_, c)| c.key.as_str()).collect();
    let rows = tx
        .query(
            "SELECT v.tbl, v.key::text, v.ins, v.ins_node, v.del, v.del_node, v.cols::text FROM pgmix.versions v \
             JOIN (SELECT DISTINCT t, k::jsonb AS k FROM unnest($1::text[], $2::text[]) AS x(t, k)) w ON v.tbl = w.t AND v.key = w.k",
            &[&tbls, &keys],
        )
        .await?;
    let mut stored: HashMap<(String, String), RowState> = HashMap::new();
    for r in &rows {
        let cols: BTreeMap<String, (i64, i32)> = serde_json::from_str(r.get::<_, &str>(6)).unwrap_or_default();
        let st = RowState {
            inserted: r.get::<_, Option<i64>>(2).zip(r.get::<_, Option<i32>>(3)).map(|(h, n)| version(h, n)),
            deleted: r.get::<_, Option<i64>>(4).zip(r.get::<_, Option<i32>>(5)).map(|(h, n)| version(h, n)),
            columns: cols.into_iter().map(|(k, (h, n))| (k, (None, version(h, n)))).collect(),
        };
        stored.insert((r.get(0), r.get(1)), st);
    }
    // Both key texts are Postgres's jsonb output, which is canonical: they compare as text.
    Ok(changes
        .iter()
        .map(|(_, c)| {
            let Some(st) = stored.get(&(c.tbl.clone(), c.key.clone())) else { return false };
            to_change(c).is_ok_and(|change| st.dominates(&change))
        })
        .collect())
}

/// Applies a batch from `source` and moves its cursor to `to`, in one transaction. Tries the
/// batch whole first; when a change fails for a reason of its own, again with a savepoint per
/// change, parking the ones that fail.
pub async fn batch(
    client: &mut tokio_postgres::Client,
    source: u32,
    log: &str,
    changes: &[(Pos, LogChange)],
    to: Pos,
) -> Result<Applied, ApplyError> {
    let to = (log, to);
    match attempt(client, source, changes, to, false).await {
        Err(e) if !e.is_transient() => {
            tracing::info!(error = %e, "a batch failed whole; applying it change by change");
            attempt(client, source, changes, to, true).await.map(|a| Applied { careful: true, ..a })
        }
        other => other,
    }
}

async fn attempt(
    client: &mut tokio_postgres::Client,
    source: u32,
    changes: &[(Pos, LogChange)],
    (log, to): (&str, Pos),
    careful: bool,
) -> Result<Applied, ApplyError> {
    let mut tx = client.transaction().await?;
    tx.batch_execute(REPLICA).await?;
    let tables = tables(&tx).await?;
    let skip = dominated(&tx, changes).await?;
    let mut out = Applied::default();
    let todo: Vec<&(Pos, LogChange)> = changes.iter().zip(&skip).filter(|(_, s)| !**s).map(|(c, _)| c).collect();
    out.stale = (changes.len() - todo.len()) as u64;
    if !careful {
        let (changed, stale, parked) = super::bulk::apply(&tx, source as i32, &todo, &tables).await?;
        out.changed += changed;
        out.stale += stale;
        out.parked += parked;
    }
    for (_, c) in todo.iter().filter(|_| careful) {
        let sp = tx.savepoint("change").await?;
        match apply_one(&sp, c, &tables).await {
            Ok(changed) => {
                sp.commit().await?;
                if changed {
                    out.changed += 1;
                } else {
                    out.stale += 1;
                }
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                sp.rollback().await?;
                park(&tx, source as i32, c, e).await?;
                out.parked += 1;
            }
        }
    }
    let max_hlc = changes.iter().map(|(_, c)| c.hlc).max().unwrap_or(0);
    tx.execute("UPDATE pgmix.clock SET hlc = greatest(hlc, $1)", &[&max_hlc]).await?;
    tx.execute(
        "INSERT INTO pgmix.cursors (source, log_id, xid, seq, updated_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (source) DO UPDATE SET log_id = excluded.log_id, xid = excluded.xid, seq = excluded.seq, \
         updated_at = now()",
        &[&(source as i32), &log, &to.xid, &to.seq],
    )
    .await?;
    tx.commit().await?;
    Ok(out)
}

/// Tries the parked changes again; those that apply leave `pgmix.conflicts`. Returns how many
/// applied and how many are still parked.
pub async fn retry_parked(client: &mut tokio_postgres::Client) -> Result<(u64, u64), ApplyError> {
    let mut tx = client.transaction().await?;
    tx.batch_execute(REPLICA).await?;
    let tables = tables(&tx).await?;
    let rows = tx
        .query(
            "SELECT id, origin, hlc, tbl, key::text, ins, ins_node, del, del_node, cols::text \
             FROM pgmix.conflicts ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?;
    let mut applied = 0;
    for r in &rows {
        let id: i64 = r.get(0);
        let c = LogChange::from_row(r, 1);
        let sp = tx.savepoint("parked").await?;
        match apply_one(&sp, &c, &tables).await {
            Ok(_) => {
                sp.execute("DELETE FROM pgmix.conflicts WHERE id = $1", &[&id]).await?;
                sp.commit().await?;
                applied += 1;
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                sp.rollback().await?;
                let (reason, sqlstate) = e.into_parked();
                tx.execute(
                    "UPDATE pgmix.conflicts SET attempts = attempts + 1, last_try = now(), reason = $2, sqlstate = $3 WHERE id = $1",
                    &[&id, &reason, &sqlstate],
                )
                .await?;
            }
        }
    }
    let left: i64 = tx.query_one("SELECT count(*) FROM pgmix.conflicts", &[]).await?.get(0);
    tx.commit().await?;
    Ok((applied, left.max(0) as u64))
}
