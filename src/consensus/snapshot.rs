//! Snapshots of the strong state: what a node too far behind installs instead of the log
//! entries that were trimmed (`migrations/0006_snapshots.sql`).
//!
//! A snapshot is a file of JSON lines, written from read-only REPEATABLE READ transactions that
//! all began while no entry was being applied, so it is the state after exactly one log index.
//! For the node's own database first, then for every other database with pgmix's schema, it
//! holds: the DDL the log carried (the journal, with CREATE DATABASE and the other standalone
//! statements under the node's own database), each strong table's rows, the strong tables'
//! sequences and the chunks staged there. It is streamed, a line at a time, both ways: no node
//! holds a snapshot in memory.
//!
//! Installing one: prepared transactions of this cluster are rolled back (recorded first, as in
//! `apply`: if one commits after all its origin applies it from its effects); then, database by
//! database, the DDL this node has not applied runs in log order, and one transaction per
//! database replaces the strong rows, sequences and staged chunks and moves its applied marker to
//! the snapshot's index. Crash meaning: the state machine's applied id moves only after every
//! database is loaded, so a crash part way installs the snapshot again from its start; DDL
//! already run is in the journal and is not run twice.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tracing::{info, warn};

use super::apply::Applier;
use crate::config::{BackendConfig, ClusterConfig};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot line {0}: {1}")]
    Format(usize, serde_json::Error),
    #[error(transparent)]
    Migrate(#[from] crate::schema::migrate::MigrateError),
    #[error(transparent)]
    Apply(#[from] super::apply::ApplyError),
}

/// A DDL statement the log carried, as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Ddl {
    idx: i64,
    n: i32,
    database: String,
    sql: String,
    path: String,
    who: String,
    standalone: bool,
}

/// One line of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
enum Line {
    /// The roles (`pgmix.roles_state`), first: the DDL and grants that follow may name them.
    Roles(Box<RawValue>),
    /// What follows is this database's.
    Database(String),
    Ddl(Ddl),
    /// A strong table (`cols` empty: all of it), whose rows follow.
    Table {
        tbl: String,
        keys: Vec<String>,
        cols: Vec<String>,
    },
    Row(Box<RawValue>),
    Sequence {
        name: String,
        value: i64,
    },
    Staged {
        gid: String,
        idx: i64,
        term: i64,
        effects: String,
    },
}

/// Databases frozen for a snapshot: each with a read-only transaction that saw the same state,
/// holding ACCESS SHARE locks on its strong tables (so no DDL from the log changes their shape
/// or contents under the snapshot while it is written), and the tables it locked.
pub struct Frozen(Vec<(String, tokio_postgres::Client, Vec<String>)>);

/// The error of a database that is not there.
fn missing_database(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
}

/// Whether freezing gave up waiting for a lock (an open transaction holds one): try again
/// later, without holding up applying.
pub fn busy(e: &SnapshotError) -> bool {
    matches!(e, SnapshotError::Postgres(p) if p.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE))
}

/// Begins a REPEATABLE READ transaction in every database with pgmix's schema, the node's own
/// first, and locks its strong tables. Called while no entry is being applied.
pub async fn freeze(backend: &BackendConfig) -> Result<Frozen, SnapshotError> {
    let main = backend.connect(&backend.database, "").await?;
    let rows = main
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> $1 \
             ORDER BY datname",
            &[&backend.database],
        )
        .await?;
    let mut names = vec![backend.database.clone()];
    names.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    let mut out = Vec::new();
    for name in names {
        let c = match backend.connect(&name, "").await {
            Ok(c) => c,
            // Dropped since the list was read.
            Err(e) if missing_database(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL lock_timeout = '200ms'").await?;
        let has: bool = c.query_one("SELECT to_regclass('pgmix.ddl_journal') IS NOT NULL", &[]).await?.get(0);
        if !has {
            continue;
        }
        let tables: Vec<String> = c
            .query("SELECT tbl FROM pgmix.strong_tables WHERE to_regclass(tbl) IS NOT NULL ORDER BY tbl", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for t in &tables {
            c.batch_execute(&format!("LOCK TABLE {t} IN ACCESS SHARE MODE")).await?;
        }
        out.push((name, c, tables));
    }
    Ok(Frozen(out))
}

async fn put(w: &mut BufWriter<tokio::fs::File>, line: &Line) -> Result<(), SnapshotError> {
    let mut text = serde_json::to_vec(line).map_err(|e| SnapshotError::Format(0, e))?;
    text.push(b'\n');
    w.write_all(&text).await?;
    Ok(())
}

/// Writes the frozen state to `path`.
pub async fn write(frozen: Frozen, path: &Path) -> Result<(), SnapshotError> {
    let mut w = BufWriter::new(tokio::fs::File::create(path).await?);
    if let Some((_, main, _)) = frozen.0.first() {
        let roles: String = main.query_one("SELECT pgmix.roles_state()::text", &[]).await?.get(0);
        let roles = RawValue::from_string(roles).map_err(|e| SnapshotError::Format(0, e))?;
        put(&mut w, &Line::Roles(roles)).await?;
    }
    for (name, c, locked) in frozen.0 {
        put(&mut w, &Line::Database(name)).await?;
        let ddl = c
            .query("SELECT idx, n, database, sql, path, who, standalone FROM pgmix.ddl_journal ORDER BY idx, n", &[])
            .await?;
        for r in ddl {
            let d = Ddl {
                idx: r.get(0),
                n: r.get(1),
                database: r.get(2),
                sql: r.get(3),
                path: r.get(4),
                who: r.get(5),
                standalone: r.get(6),
            };
            put(&mut w, &Line::Ddl(d)).await?;
        }
        let tables = c
            .query("SELECT tbl, keys, cols FROM pgmix.strong_tables WHERE tbl = ANY ($1) ORDER BY tbl", &[&locked])
            .await?;
        for t in tables {
            let (tbl, keys, cols): (String, Vec<String>, Vec<String>) = (t.get(0), t.get(1), t.get(2));
            // A cursor, so the rows come a batch at a time.
            c.batch_execute(&format!(
                "DECLARE pgmix_rows NO SCROLL CURSOR FOR SELECT pgmix.row_json(x, x.tableoid)::text FROM {tbl} x"
            ))
            .await?;
            put(&mut w, &Line::Table { tbl, keys, cols }).await?;
            loop {
                let rows = c.query(&format!("FETCH {BATCH} FROM pgmix_rows"), &[]).await?;
                for r in &rows {
                    let row = RawValue::from_string(r.get::<_, String>(0)).map_err(|e| SnapshotError::Format(0, e))?;
                    put(&mut w, &Line::Row(row)).await?;
                }
                if rows.len() < BATCH {
                    break;
                }
            }
            c.batch_execute("CLOSE pgmix_rows").await?;
        }
        for s in c.query("SELECT name, value FROM pgmix.strong_sequences()", &[]).await? {
            put(&mut w, &Line::Sequence { name: s.get(0), value: s.get(1) }).await?;
        }
        let staged = c.query("SELECT gid, idx, term, effects FROM pgmix.strong_staged ORDER BY idx", &[]).await?;
        for s in staged {
            put(&mut w, &Line::Staged { gid: s.get(0), idx: s.get(1), term: s.get(2), effects: s.get(3) }).await?;
        }
        c.batch_execute("COMMIT").await?;
    }
    w.flush().await?;
    w.into_inner().sync_all().await?;
    Ok(())
}

/// Rows sent to Postgres at a time.
const BATCH: usize = 1000;

/// The database being loaded, in one transaction: the DDL it lacks, its rows, its marker.
struct Loading {
    name: String,
    client: tokio_postgres::Client,
    journal: HashSet<(i64, i32)>,
    table: Option<(String, bool, Vec<String>, Vec<String>)>,
    rows: Vec<String>,
}

impl Loading {
    async fn flush_rows(&mut self) -> Result<(), SnapshotError> {
        if let Some((tbl, whole, _, _)) = &self.table
            && !self.rows.is_empty()
        {
            let rows = std::mem::take(&mut self.rows);
            self.client
                .execute("SELECT pgmix.snapshot_rows($1, $2, $3::text[]::jsonb[])", &[tbl, whole, &rows])
                .await?;
        }
        Ok(())
    }

    async fn end_table(&mut self) -> Result<(), SnapshotError> {
        self.flush_rows().await?;
        if let Some((tbl, whole, keys, cols)) = self.table.take() {
            self.client.execute("SELECT pgmix.snapshot_end($1, $2, $3, $4)", &[&tbl, &whole, &keys, &cols]).await?;
        }
        Ok(())
    }

    async fn finish(mut self, index: i64) -> Result<(), SnapshotError> {
        self.end_table().await?;
        self.client.execute("UPDATE pgmix.strong_applied SET idx = $1", &[&index]).await?;
        self.client.batch_execute("COMMIT").await?;
        info!(database = %self.name, "snapshot installed");
        Ok(())
    }
}

/// Installs the snapshot at `path`, taken after log index `index`.
pub async fn install(
    path: &Path,
    index: u64,
    backend: &BackendConfig,
    cluster: &ClusterConfig,
    applier: &Applier,
) -> Result<(), SnapshotError> {
    applier.roll_back_all_prepared().await?;
    let index = index as i64;
    let mut lines = BufReader::new(tokio::fs::File::open(path).await?).lines();
    let mut db: Option<Loading> = None;
    // Standalone statements other than CREATE and DROP DATABASE (CREATE INDEX CONCURRENTLY, ...)
    // run once their database is loaded, since they need its tables.
    let mut later: Vec<Ddl> = Vec::new();
    let mut skipping = false;
    let mut number = 0;
    while let Some(text) = lines.next_line().await? {
        number += 1;
        let line: Line = serde_json::from_str(&text).map_err(|e| SnapshotError::Format(number, e))?;
        if let Line::Roles(state) = &line {
            // Created or brought up to date; a role only this node has is left alone.
            let main = backend.connect(&backend.database, "").await?;
            main.execute(
                "SELECT pgmix.apply_roles(jsonb_build_object('roles', \
                 (SELECT coalesce(jsonb_agg(value), '[]') FROM jsonb_each($1::text::jsonb))))",
                &[&state.get()],
            )
            .await?;
            continue;
        }
        if let Line::Database(name) = line {
            if let Some(d) = db.take() {
                let done = d.name.clone();
                d.finish(index).await?;
                run_later(&mut later, Some(&done), applier).await?;
            }
            db = open(&name, backend, cluster).await?;
            skipping = db.is_none();
            continue;
        }
        if skipping {
            continue;
        }
        let Some(d) = db.as_mut() else { continue };
        match line {
            Line::Database(_) | Line::Roles(_) => {}
            Line::Ddl(ddl) => {
                if !d.journal.insert((ddl.idx, ddl.n)) {
                    continue;
                }
                if !ddl.standalone {
                    replay(d, &ddl).await?;
                } else if crate::classify::words::words(&ddl.sql).standalone.is_some_and(|k| k.runs_outside()) {
                    applier.standalone(ddl.idx as u64, &ddl.database, &ddl.sql, &ddl.who, &ddl.path).await?;
                } else {
                    later.push(ddl);
                }
            }
            Line::Table { tbl, keys, cols } => {
                d.end_table().await?;
                let whole = cols.is_empty();
                d.client.execute("SELECT pgmix.snapshot_begin($1, $2)", &[&tbl, &whole]).await?;
                d.table = Some((tbl, whole, keys, cols));
            }
            Line::Row(row) => {
                d.rows.push(row.get().to_owned());
                if d.rows.len() >= BATCH {
                    d.flush_rows().await?;
                }
            }
            Line::Sequence { name, value } => {
                d.end_table().await?;
                d.client
                    .execute("SELECT setval(to_regclass($1), $2) WHERE to_regclass($1) IS NOT NULL", &[&name, &value])
                    .await?;
            }
            Line::Staged { gid, idx, term, effects } => {
                d.end_table().await?;
                d.client
                    .execute(
                        "INSERT INTO pgmix.strong_staged (gid, idx, term, effects) VALUES ($1, $2, $3, $4)",
                        &[&gid, &idx, &term, &effects],
                    )
                    .await?;
            }
        }
    }
    if let Some(d) = db.take() {
        let done = d.name.clone();
        d.finish(index).await?;
        run_later(&mut later, Some(&done), applier).await?;
    }
    run_later(&mut later, None, applier).await
}

/// Runs the deferred standalone statements of `database` (of every database when None).
async fn run_later(later: &mut Vec<Ddl>, database: Option<&str>, applier: &Applier) -> Result<(), SnapshotError> {
    let (now, rest): (Vec<Ddl>, Vec<Ddl>) =
        std::mem::take(later).into_iter().partition(|d| database.is_none_or(|db| d.database == db));
    *later = rest;
    for ddl in now {
        info!(database = %ddl.database, idx = ddl.idx, sql = %ddl.sql, "running a statement from the snapshot");
        applier.standalone(ddl.idx as u64, &ddl.database, &ddl.sql, &ddl.who, &ddl.path).await?;
    }
    Ok(())
}

/// Opens `name` for loading, with pgmix's schema brought up to date; None when the database is
/// not here (its CREATE DATABASE is not in the log).
async fn open(name: &str, backend: &BackendConfig, cluster: &ClusterConfig) -> Result<Option<Loading>, SnapshotError> {
    let mut one = backend.clone();
    one.database = name.to_owned();
    let client = match one.connect(name, "SET synchronous_commit = off").await {
        Ok(c) => c,
        Err(e) if missing_database(&e) => {
            warn!(database = name, "a database in the snapshot is not here (not created through pgmix): skipped");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    crate::schema::migrate::migrate(&one, cluster).await?;
    let journal = client
        .query("SELECT idx, n FROM pgmix.ddl_journal", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1)))
        .collect();
    // One transaction for the database. Its whole strong tables are emptied first, so the DDL it
    // missed runs against the rows the snapshot brings (none yet), not against stale ones: a
    // NOT NULL or a unique index added after a backfill holds for them.
    client
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM pgmix.strong_staged; \
             SELECT pgmix.snapshot_begin(tbl, true) FROM pgmix.strong_tables \
             WHERE cols = '{}' AND to_regclass(tbl) IS NOT NULL",
        )
        .await?;
    Ok(Some(Loading { name: name.to_owned(), client, journal, table: None, rows: Vec::new() }))
}

/// Runs DDL this node has not applied, inside the database's transaction, and keeps it in the
/// journal. DDL whose work is already done here (what a crash between applying an entry and
/// journaling it leaves) fails with "already exists" or "does not exist": that is logged and
/// passed over; any other failure stops the install.
async fn replay(d: &mut Loading, ddl: &Ddl) -> Result<(), SnapshotError> {
    info!(database = %ddl.database, idx = ddl.idx, sql = %ddl.sql, "running DDL from the snapshot");
    let effects = serde_json::json!({
        "effects": [{"op": "S", "sql": ddl.sql, "path": ddl.path, "who": ddl.who}]
    })
    .to_string();
    d.client.batch_execute("SAVEPOINT pgmix_ddl").await?;
    match d.client.execute("SELECT pgmix.apply_strong($1::text::jsonb)", &[&effects]).await {
        Ok(_) => d.client.batch_execute("RELEASE SAVEPOINT pgmix_ddl").await?,
        Err(e) if e.code().is_some_and(|c| already_done(c.code())) => {
            warn!(sql = %ddl.sql, error = %e, "DDL from the snapshot was already done here");
            d.client.batch_execute("ROLLBACK TO SAVEPOINT pgmix_ddl").await?;
        }
        Err(e) => return Err(e.into()),
    }
    d.client
        .execute(
            "INSERT INTO pgmix.ddl_journal (idx, n, database, sql, path, who) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT DO NOTHING",
            &[&ddl.idx, &ddl.n, &ddl.database, &ddl.sql, &ddl.path, &ddl.who],
        )
        .await?;
    Ok(())
}

/// SQLSTATEs of DDL whose work is already done: duplicate objects, and missing ones to drop.
fn already_done(code: &str) -> bool {
    matches!(code, "42P07" | "42710" | "42701" | "42P06" | "42723" | "42P01" | "42704" | "42703" | "42883")
}
