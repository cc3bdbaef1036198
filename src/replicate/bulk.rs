//! The fast way to apply a batch: a handful of statements for the whole batch rather than a few
//! per change. The rows the batch touches and their versions are read and locked with one
//! statement per table, merged in memory (changes to one row compose in order), and written with
//! one statement per table and kind of write (per set of changed columns for updates), one for
//! the versions and one for the log.
//!
//! Any error here fails the whole transaction; the caller then applies the batch change by
//! change (`apply::apply_one`), parking what cannot be applied. The result is the same: the
//! merge rule decides row by row either way.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;

use super::apply::{
    ApplyError, Stored, TableMeta, UserWrite, VersionsRow, outcome, park, stored, to_change, unfit, values_json,
};
use super::capture::ident;
use super::log::{LogChange, Pos};
use super::merge::RowState;

/// A row the batch touches: as read, and as merged so far.
struct Row {
    before: RowState,
    present: bool,
    top: i64,
    /// It had a versions row, locked by the read.
    versioned: bool,
    after: RowState,
    changed: bool,
}

/// (table, key text)
type RowId = (String, String);

/// Applies `changes` (those not skipped) inside `tx`; returns (changed, stale, parked).
pub async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    source: i32,
    changes: &[&(Pos, LogChange)],
    tables: &HashMap<String, TableMeta>,
) -> Result<(u64, u64, u64), ApplyError> {
    let (mut changed, mut stale, mut parked) = (0, 0, 0);
    // What can be applied at all; the rest is parked now.
    let mut fit = Vec::new();
    for (_, c) in changes {
        let change = to_change(c)?;
        match unfit(c, &change, tables) {
            Some(e) => {
                park(tx, source, c, e).await?;
                parked += 1;
            }
            None => fit.push((c, change)),
        }
    }
    if fit.is_empty() {
        return Ok((changed, stale, parked));
    }
    // Lock and read the rows, table by table, then their versions.
    let mut by_table: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (c, _) in &fit {
        by_table.entry(c.tbl.as_str()).or_default().push(c.key.as_str());
    }
    let mut present: HashMap<RowId, String> = HashMap::new();
    for (t, keys) in &by_table {
        let Some(meta) = tables.get(*t) else { continue };
        let kcols = key_cols(meta);
        let sql = format!(
            "SELECT pgmix.pick(to_jsonb(t), $2)::text, to_jsonb(t)::text FROM {t} t \
             WHERE ({kcols}) IN (SELECT {kcols} FROM jsonb_populate_recordset(NULL::{t}, $1::text::jsonb)) FOR UPDATE"
        );
        let array = format!("[{}]", keys.join(","));
        for r in tx.query(&sql, &[&array, &meta.key]).await? {
            present.insert((t.to_string(), r.get(0)), r.get(1));
        }
    }
    let tbls: Vec<&str> = fit.iter().map(|(c, _)| c.tbl.as_str()).collect();
    let keys: Vec<&str> = fit.iter().map(|(c, _)| c.key.as_str()).collect();
    let mut versions: HashMap<RowId, VersionsRow> = HashMap::new();
    for r in tx
        .query(
            "SELECT v.tbl, v.key::text, v.ins, v.ins_node, v.del, v.del_node, v.cols::text, v.ghost::text, v.top \
             FROM pgmix.versions v JOIN (SELECT DISTINCT t, k::jsonb AS k FROM unnest($1::text[], $2::text[]) x(t, k)) w \
             ON v.tbl = w.t AND v.key = w.k ORDER BY v.tbl, v.key FOR UPDATE OF v",
            &[&tbls, &keys],
        )
        .await?
    {
        versions.insert((r.get(0), r.get(1)), VersionsRow::from_row(&r, 2));
    }
    // Merge in memory, in the batch's order.
    let mut rows: BTreeMap<RowId, Row> = BTreeMap::new();
    let mut logged = Vec::new();
    for (c, change) in &fit {
        let id: RowId = (c.tbl.clone(), c.key.clone());
        if !rows.contains_key(&id) {
            let Stored { state, present: here, top, versioned } =
                stored(present.get(&id).map(String::as_str), versions.get(&id))?;
            rows.insert(
                id.clone(),
                Row { after: state.clone(), before: state, present: here, top, versioned, changed: false },
            );
        }
        let Some(row) = rows.get_mut(&id) else { continue };
        let meta = tables.get(&c.tbl);
        if meta.is_some_and(|m| !m.whole) && !row.present {
            park(tx, source, c, ApplyError::park(format!("row {} of {} is not here yet", c.key, c.tbl))).await?;
            parked += 1;
            continue;
        }
        if row.after.apply(change) {
            row.changed = true;
            changed += 1;
            logged.push(*c);
        } else {
            stale += 1;
        }
    }
    write(tx, tables, &rows).await?;
    log(tx, &logged).await?;
    Ok((changed, stale, parked))
}

fn key_cols(meta: &TableMeta) -> String {
    meta.key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
}

/// `{"k": .., "col": ..}`: the row's key and `cols` values, for jsonb_populate_recordset.
fn record(key: &str, after: &RowState, cols: &[String]) -> Result<String, ApplyError> {
    let key: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(key).map_err(|e| ApplyError::park(format!("malformed key: {e}")))?;
    let mut parts: Vec<String> =
        key.iter().map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v.get())).collect();
    let values = values_json(after, cols.iter().filter(|c| !key.contains_key(*c)));
    let values = values.trim_start_matches('{').trim_end_matches('}');
    if !values.is_empty() {
        parts.push(values.to_owned());
    }
    Ok(format!("{{{}}}", parts.join(",")))
}

/// The rows' writes: per table, one statement per kind (per changed-column set for updates);
/// then every versions row in one statement.
async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    tables: &HashMap<String, TableMeta>,
    rows: &BTreeMap<RowId, Row>,
) -> Result<(), ApplyError> {
    // (table, kind, columns) -> records
    let mut groups: BTreeMap<(&str, u8, Vec<String>), Vec<String>> = BTreeMap::new();
    // Rows read with their versions row (locked), and rows that had none (not locked: a local
    // write may have made one since, which must not be overwritten).
    let (mut v, mut fresh) = (VersionsColumns::default(), VersionsColumns::default());
    for ((t, key), row) in rows.iter().filter(|(_, r)| r.changed) {
        let Some(meta) = tables.get(t) else { continue };
        let w = outcome(&row.before, row.present, row.top, &row.after, meta);
        match w.user {
            UserWrite::Update(cols) => {
                let rec = record(key, &row.after, &cols)?;
                groups.entry((t, 0, cols)).or_default().push(rec);
            }
            UserWrite::Insert(cols) => {
                let rec = values_json(&row.after, cols.iter());
                groups.entry((t, 1, cols)).or_default().push(rec);
            }
            UserWrite::Delete => groups.entry((t, 2, Vec::new())).or_default().push(key.clone()),
            UserWrite::None => {}
        }
        if row.versioned {
            v.push(t, key, w.versions);
        } else {
            fresh.push(t, key, w.versions);
        }
    }
    for ((t, kind, cols), records) in groups {
        let Some(meta) = tables.get(t) else { continue };
        let list = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let from = format!("jsonb_populate_recordset(NULL::{t}, $1::text::jsonb)");
        let sql = match kind {
            0 => {
                let r_list = cols.iter().map(|c| format!("r.{}", ident(c))).collect::<Vec<_>>().join(", ");
                let r_keys = meta.key.iter().map(|c| format!("r.{}", ident(c))).collect::<Vec<_>>().join(", ");
                let t_keys = meta.key.iter().map(|c| format!("t.{}", ident(c))).collect::<Vec<_>>().join(", ");
                format!("UPDATE {t} AS t SET ({list}) = ROW({r_list}) FROM {from} r WHERE ({t_keys}) = ({r_keys})")
            }
            1 => format!("INSERT INTO {t} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {from}"),
            _ => {
                let r_keys = meta.key.iter().map(|c| format!("r.{}", ident(c))).collect::<Vec<_>>().join(", ");
                let t_keys = meta.key.iter().map(|c| format!("t.{}", ident(c))).collect::<Vec<_>>().join(", ");
                format!("DELETE FROM {t} AS t USING {from} r WHERE ({t_keys}) = ({r_keys})")
            }
        };
        tx.execute(&sql, &[&format!("[{}]", records.join(","))]).await?;
    }
    for (cols, on_conflict) in [
        (
            &v,
            "DO UPDATE SET ins = excluded.ins, ins_node = excluded.ins_node, del = excluded.del, \
              del_node = excluded.del_node, cols = excluded.cols, ghost = excluded.ghost, top = excluded.top",
        ),
        (&fresh, "DO NOTHING"),
    ] {
        if cols.tbl.is_empty() {
            continue;
        }
        let written = tx
            .execute(
                &format!(
                    "INSERT INTO pgmix.versions (tbl, key, ins, ins_node, del, del_node, cols, ghost, top) \
                     SELECT t, k::jsonb, i, i_n, d, d_n, c::jsonb, g::jsonb, top \
                     FROM unnest($1::text[], $2::text[], $3::int8[], $4::int4[], $5::int8[], $6::int4[], $7::text[], $8::text[], $9::int8[]) \
                       AS x(t, k, i, i_n, d, d_n, c, g, top) \
                     ON CONFLICT (tbl, key) {on_conflict}"
                ),
                &[&cols.tbl, &cols.key, &cols.ins, &cols.ins_node, &cols.del, &cols.del_node, &cols.cols, &cols.ghost, &cols.top],
            )
            .await?;
        if written != cols.tbl.len() as u64 {
            return Err(ApplyError::Raced(format!("{} rows", cols.tbl.len() as u64 - written)));
        }
    }
    Ok(())
}

/// `pgmix.versions` rows as columns, for one INSERT over unnest.
#[derive(Default)]
struct VersionsColumns {
    tbl: Vec<String>,
    key: Vec<String>,
    ins: Vec<Option<i64>>,
    ins_node: Vec<Option<i32>>,
    del: Vec<Option<i64>>,
    del_node: Vec<Option<i32>>,
    cols: Vec<String>,
    ghost: Vec<Option<String>>,
    top: Vec<i64>,
}

impl VersionsColumns {
    fn push(&mut self, t: &str, key: &str, w: super::apply::VersionsWrite) {
        self.tbl.push(t.to_owned());
        self.key.push(key.to_owned());
        self.ins.push(w.ins);
        self.ins_node.push(w.ins_node);
        self.del.push(w.del);
        self.del_node.push(w.del_node);
        self.cols.push(w.cols);
        self.ghost.push(w.ghost);
        self.top.push(w.top);
    }
}

/// The changes that changed something go into the local log, to be forwarded.
async fn log(tx: &tokio_postgres::Transaction<'_>, changes: &[&LogChange]) -> Result<(), ApplyError> {
    if changes.is_empty() {
        return Ok(());
    }
    let origin: Vec<i32> = changes.iter().map(|c| c.origin).collect();
    let hlc: Vec<i64> = changes.iter().map(|c| c.hlc).collect();
    let tbl: Vec<&str> = changes.iter().map(|c| c.tbl.as_str()).collect();
    let key: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    let ins: Vec<Option<i64>> = changes.iter().map(|c| c.ins.map(|x| x.0)).collect();
    let ins_node: Vec<Option<i32>> = changes.iter().map(|c| c.ins.map(|x| x.1)).collect();
    let del: Vec<Option<i64>> = changes.iter().map(|c| c.del.map(|x| x.0)).collect();
    let del_node: Vec<Option<i32>> = changes.iter().map(|c| c.del.map(|x| x.1)).collect();
    let cols: Vec<&str> = changes.iter().map(|c| c.cols.as_str()).collect();
    tx.execute(
        "INSERT INTO pgmix.changes (origin, hlc, tbl, key, ins, ins_node, del, del_node, cols) \
         SELECT o, h, t, k::jsonb, i, i_n, d, d_n, c::jsonb \
         FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int4[], $7::int8[], $8::int4[], $9::text[]) \
           WITH ORDINALITY AS x(o, h, t, k, i, i_n, d, d_n, c, n) ORDER BY n",
        &[&origin, &hlc, &tbl, &key, &ins, &ins_node, &del, &del_node, &cols],
    )
    .await?;
    Ok(())
}
