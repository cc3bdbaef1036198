//! Applying committed strong entries to the local Postgres, and resolving prepared transactions
//! left in doubt.
//!
//! A `Commit` entry names the transaction the leader prepared (`gid`) and carries its effects.
//! On the node that prepared it the entry is applied by `COMMIT PREPARED`; on every other node
//! its effects are applied (`pgmix.apply_strong`) in one local transaction that also moves the
//! database's `pgmix.strong_applied` marker, so an entry is applied exactly once across crashes.
//!
//! A large transaction's earlier effects come first as `Chunk` entries, which every node stages
//! in `pgmix.strong_staged` (with the marker); its `Commit` applies them in order, with its own,
//! in one transaction. Its chunks were logged in its gid's term, and a Commit logged in a later
//! term abandons it (see `CommitEntry`), so once an entry of a later term applies in a database
//! no Commit can come for older chunks, and they are dropped.
//!
//! In doubt: a transaction prepared here whose entry may or may not be on the log. Entries are
//! appended in the term of the leader that prepared them (the gid names that term), so once this
//! node applies an entry of a later term, every earlier entry that will ever commit has been
//! applied here: a prepared transaction of an earlier term that is still prepared did not commit
//! and is rolled back. A transaction whose commit is still being waited for in this process
//! (`InFlight`) is never touched: its append may land in a later term than its gid names.
//!
//! These writes commit asynchronously. One lost in a crash was not acknowledged as applied
//! either: the applied id (and each database's marker) is written after it in the same
//! write-ahead log, so the entry is applied again from the log.
//!
//! Crash meaning: `COMMIT PREPARED` and the applied marker cannot share a transaction; a crash
//! between them leaves the gid committed (no longer prepared), and applying the entry again
//! finds nothing prepared and skips it. A rollback is recorded before it is made, so an entry
//! that commits after all (which the rule above says cannot happen) is applied from its effects
//! rather than lost.

use std::collections::HashMap;

use tokio::sync::Mutex;
use tracing::{debug, warn};

use openraft::LogId;

use super::NodeId;
use crate::config::BackendConfig;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// Chunks of a committed entry are not staged here: a bug, not a state to recover from.
    #[error("entry {index} names {expected} staged chunks of effects, but {found} are staged here")]
    MissingChunks { index: u64, expected: u32, found: i64 },
    /// The node is stopping at a failpoint (tests).
    #[error("{0}")]
    Stopped(std::io::Error),
    /// pgmix's schema in an entry's database could not be brought up to date.
    #[error(transparent)]
    Migrate(#[from] crate::schema::migrate::MigrateError),
}

/// A gid: `pgmix_<term>_<node>_<counter>_<cluster>`.
pub fn gid(term: u64, node: u32, counter: u64, cluster: &str) -> String {
    format!("pgmix_{term}_{node}_{counter}_{cluster}")
}

/// The term a gid of `cluster` names; None for anyone else's prepared transaction.
pub fn gid_term(gid: &str, cluster: &str) -> Option<u64> {
    let mut parts = gid.splitn(5, '_');
    if parts.next() != Some("pgmix") {
        return None;
    }
    let term = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    (parts.next()? == cluster).then_some(term)
}

pub struct Applier {
    backend: BackendConfig,
    node_id: u32,
    /// Connections to each database entries were applied in.
    dbs: Mutex<HashMap<String, tokio_postgres::Client>>,
    /// Prepared transactions of terms below this one are resolved.
    resolved_term: std::sync::atomic::AtomicU64,
    /// Told the database of each applied entry that held DDL (its catalog is read again).
    ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
    failpoints: std::sync::Arc<crate::strong::failpoint::FailPoints>,
    /// Per database, the term up to which abandoned chunks were dropped (see `sweep`).
    swept: std::sync::Mutex<HashMap<String, u64>>,
    pub unapplied: std::sync::Arc<Unapplied>,
    held: std::sync::Arc<Held>,
    cluster: std::sync::Arc<crate::config::ClusterConfig>,
    /// Databases whose pgmix schema this process brought up to date before applying in them.
    migrated: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ApplyError {
    /// An error the entry itself causes here, which applying it again would meet again (a
    /// statement Postgres refuses), as opposed to a Postgres that went away or a lock wait cut
    /// short.
    pub fn deterministic(&self) -> Option<(String, String)> {
        match self {
            Self::Postgres(e) => {
                let db = e.as_db_error()?;
                let code = db.code().code();
                let transient =
                    ["08", "40", "53", "57", "58", "XX"].iter().any(|c| code.starts_with(c)) || code == "55P03";
                (!transient).then(|| (code.to_owned(), db.message().to_owned()))
            }
            Self::MissingChunks { .. } => Some(("XX000".to_owned(), self.to_string())),
            Self::Stopped(_) | Self::Migrate(_) => None,
        }
    }
}

/// What the state machine hands a held transaction's session when its entry applies: the
/// entry's index (the session commits with the database's applied marker moved to it), and
/// where to say whether it committed.
pub struct Handoff {
    pub index: u64,
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Transactions the leader holds open, not prepared, until their entries commit (all but
/// SERIALIZABLE ones, see `crate::strong`): by gid, where the state machine hands each its
/// entry. Whoever takes a gid out first decides: the state machine (the session then commits it
/// here) or the session giving up (it rolls back; if the entry commits after all, it is applied
/// from the log like on any other node).
#[derive(Default)]
pub struct Held(std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Handoff>>>);

impl Held {
    /// The session of `gid` waits for its entry.
    pub fn hold(&self, gid: &str) -> tokio::sync::oneshot::Receiver<Handoff> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(gid.to_owned(), tx);
        rx
    }

    /// The session gives up waiting; true when the state machine had not taken it (and now
    /// never will).
    pub fn release(&self, gid: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(gid).is_some()
    }

    fn take(&self, gid: &str) -> Option<tokio::sync::oneshot::Sender<Handoff>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(gid)
    }
}

/// The committed entries this node could not apply, shared with the node (status, metrics and
/// the strong path read it) and kept across restarts in `pgmix.unapplied`.
#[derive(Debug, Default)]
pub struct Unapplied {
    inner: std::sync::Mutex<(u64, Option<String>)>,
}

impl Unapplied {
    /// How many, and what the last one was.
    pub fn get(&self) -> (u64, Option<String>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, n: u64, last: Option<String>) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = (n, last);
    }
}

impl Applier {
    pub fn new(
        backend: BackendConfig,
        node_id: u32,
        ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
        failpoints: std::sync::Arc<crate::strong::failpoint::FailPoints>,
        unapplied: std::sync::Arc<Unapplied>,
        held: std::sync::Arc<Held>,
        cluster: std::sync::Arc<crate::config::ClusterConfig>,
    ) -> Self {
        Self {
            unapplied,
            held,
            cluster,
            migrated: Default::default(),
            failpoints,
            ddl_applied,
            backend,
            node_id,
            dbs: Mutex::new(HashMap::new()),
            resolved_term: std::sync::atomic::AtomicU64::new(0),
            swept: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn with_db<T>(
        &self,
        database: &str,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        let mut dbs = self.dbs.lock().await;
        if dbs.get(database).is_none_or(|c| c.is_closed()) {
            // Not synchronous: an apply lost in a crash is replayed from the log (see `mod`).
            let c = self.backend.connect(database, "SET synchronous_commit = off").await?;
            dbs.insert(database.to_owned(), c);
        }
        let Some(client) = dbs.get_mut(database) else { unreachable!("inserted above") };
        let result = f(client).await;
        if result.is_err() && client.is_closed() {
            dbs.remove(database);
        }
        result
    }

    /// Brings pgmix's schema in `database` up to date, once per process, before anything is
    /// applied there: a database just created through the log has none yet.
    pub async fn migrated(&self, database: &str) -> Result<(), ApplyError> {
        if self.migrated.lock().unwrap_or_else(|p| p.into_inner()).contains(database) {
            return Ok(());
        }
        let mut one = self.backend.clone();
        one.database = database.to_owned();
        crate::schema::migrate::migrate(&one, &self.cluster).await?;
        self.migrated.lock().unwrap_or_else(|p| p.into_inner()).insert(database.to_owned());
        Ok(())
    }

    /// Reads what `pgmix.unapplied` holds (at start-up).
    pub async fn load_unapplied(&self) -> Result<(), tokio_postgres::Error> {
        let main = self.backend.database.clone();
        let row = self
            .with_db(&main, async |c| {
                c.query_one(
                    "SELECT count(*), (SELECT format('entry %s (%s in %s): %s', idx, what, database, message) \
                     FROM pgmix.unapplied ORDER BY idx DESC LIMIT 1) FROM pgmix.unapplied",
                    &[],
                )
                .await
            })
            .await?;
        self.unapplied.set(row.get::<_, i64>(0) as u64, row.get(1));
        Ok(())
    }

    /// A committed entry that fails here whatever is tried: it is recorded (in the node's own
    /// database), logged once, and passed over, so this node goes on acknowledging the log. Its
    /// strong data is from then on not the cluster's, so it reads none of it until repaired.
    pub async fn pass_over(
        &self,
        index: u64,
        database: &str,
        what: &str,
        (code, message): (String, String),
    ) -> Result<(), tokio_postgres::Error> {
        tracing::error!(
            index,
            %database,
            what,
            %code,
            %message,
            "a committed entry cannot be applied on this node: passed over; this node serves no strong read until it is repaired from a snapshot"
        );
        let main = self.backend.database.clone();
        let idx = index as i64;
        self.with_db(&main, async |c| {
            c.execute(
                "INSERT INTO pgmix.unapplied (idx, database, what, sqlstate, message) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                &[&idx, &database, &what, &code, &message],
            )
            .await
        })
        .await?;
        let (n, _) = self.unapplied.get();
        self.unapplied.set(n + 1, Some(format!("entry {index} ({what} in {database}): {message}")));
        Ok(())
    }

    /// Rolls back this cluster's prepared transactions of terms below `term` (see the module
    /// header). Cheap when nothing is prepared.
    pub async fn resolve_before(&self, term: u64) -> Result<(), tokio_postgres::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.resolved_term.load(Relaxed) >= term {
            return Ok(());
        }
        self.roll_back_prepared(term).await?;
        self.resolved_term.store(term, Relaxed);
        Ok(())
    }

    /// Before a snapshot is installed: every prepared transaction of this cluster is rolled
    /// back (recorded first, so one whose entry commits after all is applied from its effects).
    pub async fn roll_back_all_prepared(&self) -> Result<(), tokio_postgres::Error> {
        self.roll_back_prepared(u64::MAX).await
    }

    /// Rolls back this cluster's prepared transactions of terms below `term`.
    async fn roll_back_prepared(&self, term: u64) -> Result<(), tokio_postgres::Error> {
        let main = self.backend.database.clone();
        let prepared = self
            .with_db(&main, async |c| {
                c.query("SELECT gid, database::text FROM pg_prepared_xacts WHERE gid LIKE 'pgmix\\_%'", &[]).await
            })
            .await?;
        for row in prepared {
            let (gid, database): (String, String) = (row.get(0), row.get(1));
            let Some(t) = gid_term(&gid, &self.cluster.id) else { continue };
            if t >= term {
                continue;
            }
            warn!(%gid, %database, "rolling back a strong transaction left in doubt");
            self.with_db(&database, async |c| {
                c.execute("INSERT INTO pgmix.strong_rolled_back (gid) VALUES ($1) ON CONFLICT DO NOTHING", &[&gid])
                    .await?;
                c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await
            })
            .await?;
        }
        Ok(())
    }

    /// Applies the committed `Commit` entry at `at`. Ok(Some): the transaction was abandoned
    /// (see `CommitEntry::chunks`); its SQLSTATE and message go back to the leader.
    pub async fn commit(
        &self,
        at: LogId<NodeId>,
        entry: &CommitEntry<'_>,
        effects: &str,
    ) -> Result<super::Outcome, ApplyError> {
        let CommitEntry { origin, gid, database, chunks, .. } = *entry;
        self.migrated(database).await?;
        if chunks > 0 && gid_term(gid, &self.cluster.id) != Some(at.leader_id.term) {
            // Its chunks were logged in the gid's term; in a later term they may be gone.
            if origin == self.node_id {
                self.with_db(database, async |c| {
                    if c.query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid]).await?.is_some() {
                        c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await?;
                    }
                    c.execute("DELETE FROM pgmix.strong_staged WHERE gid = $1", &[&gid]).await.map(|_| ())
                })
                .await?;
            }
            warn!(%gid, "a large transaction's commit was logged in a later term than its chunks: abandoned");
            return Ok(Some((
                crate::sqlstate::code::SERIALIZATION_FAILURE.to_owned(),
                "leadership changed while the transaction's effects were being logged; nothing was committed, so it is safe to retry".to_owned(),
            )));
        }
        let sweep = self.sweep(database, at.leader_id.term);
        if entry.held && origin == self.node_id {
            if !self.hand_off(at.index, gid, database, &sweep).await? {
                // Its session is gone (it gave up, or this node restarted): as on any other node.
                self.apply_effects(at.index, entry, effects, &sweep).await?;
            }
        } else if origin != self.node_id || !self.commit_prepared(at.index, entry, effects, &sweep).await? {
            self.apply_effects(at.index, entry, effects, &sweep).await?;
        }
        // A chunked transaction's DDL may sit in any chunk.
        if chunks > 0 || has_ddl(effects) {
            let _ = self.ddl_applied.send(database.to_owned());
        }
        Ok(None)
    }

    /// On the node that holds `gid` open: hands its session the entry, which it commits with the
    /// database's marker. False when no session holds it any more, or it could not commit (then
    /// it rolled back first, and the entry is applied from its effects).
    async fn hand_off(&self, index: u64, gid: &str, database: &str, sweep: &str) -> Result<bool, ApplyError> {
        use crate::strong::failpoint::BEFORE_COMMIT_PREPARED;
        if let Err(e) = self.failpoints.hit(BEFORE_COMMIT_PREPARED).await {
            warn!(%gid, "{e}");
            return Err(ApplyError::Stopped(e));
        }
        let Some(session) = self.held.take(gid) else { return Ok(false) };
        let (done, committed) = tokio::sync::oneshot::channel();
        if session.send(Handoff { index, done }).is_err() || committed.await != Ok(true) {
            warn!(%gid, "a held strong transaction did not commit in its session: applying its effects");
            return Ok(false);
        }
        if !sweep.is_empty() {
            self.with_db(database, async |c| c.batch_execute(sweep).await).await?;
        }
        Ok(true)
    }

    /// On the node that prepared `gid`: COMMIT PREPARED. False when it must be applied from its
    /// effects instead (it was rolled back here as in doubt).
    async fn commit_prepared(
        &self,
        index: u64,
        entry: &CommitEntry<'_>,
        effects: &str,
        sweep: &str,
    ) -> Result<bool, ApplyError> {
        let CommitEntry { gid, database, chunks, .. } = *entry;
        let idx = index as i64;
        use crate::strong::failpoint::BEFORE_COMMIT_PREPARED;
        if let Err(e) = self.failpoints.hit(BEFORE_COMMIT_PREPARED).await {
            // As a crash here would: the entry stays unapplied in this process.
            warn!(%gid, "{e}");
            return Err(ApplyError::Stopped(e));
        }
        let done = self
            .with_db(database, async |c| {
                let found = c.query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid]).await?.is_some();
                if found {
                    c.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await?;
                } else if c.query_opt("SELECT 1 FROM pgmix.strong_rolled_back WHERE gid = $1", &[&gid]).await?.is_some()
                {
                    return Ok(false);
                }
                // Committed (now, or before a crash that replays the entry): its DDL is kept for
                // snapshots, and its chunks are dropped.
                let tx = c.transaction().await?;
                if chunks > 0 {
                    tx.execute("SELECT pgmix.journal_staged($1)", &[&gid]).await?;
                }
                if has_ddl(effects) {
                    tx.execute("SELECT pgmix.journal_ddl($1, $2::text::jsonb)", &[&idx, &effects]).await?;
                }
                tx.batch_execute(sweep).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await?;
        if !done {
            warn!(%gid, "a strong transaction rolled back here committed after all: applying its effects");
        }
        Ok(done)
    }

    /// Applies a transaction's effects (its staged chunks first) with the database's marker.
    async fn apply_effects(
        &self,
        index: u64,
        entry: &CommitEntry<'_>,
        effects: &str,
        sweep: &str,
    ) -> Result<(), ApplyError> {
        let CommitEntry { gid, database, chunks, .. } = *entry;
        let idx = index as i64;
        let staged = self
            .with_db(database, async |c| {
                let tx = c.transaction().await?;
                tx.batch_execute("SET LOCAL session_replication_role = replica").await?;
                let done: i64 = tx.query_one("SELECT idx FROM pgmix.strong_applied FOR UPDATE", &[]).await?.get(0);
                if done >= idx {
                    tx.batch_execute(sweep).await?;
                    tx.commit().await?;
                    return Ok(i64::from(chunks));
                }
                let staged: i64 = if chunks > 0 {
                    tx.query_one("SELECT pgmix.apply_staged($1)", &[&gid]).await?.get(0)
                } else {
                    0
                };
                if staged != i64::from(chunks) {
                    tx.rollback().await?;
                    return Ok(staged);
                }
                if let Err(e) = tx.execute("SELECT pgmix.apply_strong($1::text::jsonb)", &[&effects]).await {
                    let what: String = effects.chars().take(400).collect();
                    let why = e.as_db_error().map_or(e.to_string(), |d| d.to_string());
                    tracing::error!(index, %gid, %database, error = %why, effects = %what, "a committed strong transaction cannot be applied here");
                    return Err(e);
                }
                if has_ddl(effects) {
                    tx.execute("SELECT pgmix.journal_ddl($1, $2::text::jsonb)", &[&idx, &effects]).await?;
                }
                tx.execute("UPDATE pgmix.strong_applied SET idx = $1", &[&idx]).await?;
                tx.batch_execute(sweep).await?;
                tx.commit().await?;
                Ok(staged)
            })
            .await?;
        if staged != i64::from(chunks) {
            return Err(ApplyError::MissingChunks { index, expected: chunks, found: staged });
        }
        debug!(index, %gid, chunks, "applied a strong transaction");
        Ok(())
    }

    /// The statement that drops `database`'s chunks of terms before `term` (whose Commit can no
    /// longer come, see `CommitEntry::chunks`), once per term and database; else an empty one.
    fn sweep(&self, database: &str, term: u64) -> String {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if swept.get(database).is_some_and(|t| *t >= term) {
            return String::new();
        }
        swept.insert(database.to_owned(), term);
        format!("DELETE FROM pgmix.strong_staged WHERE term < {term}")
    }

    /// Drops the chunks of the failed transaction `gid` (an `Abandon` entry at `at`).
    pub async fn abandon(&self, at: LogId<NodeId>, gid: &str, database: &str) -> Result<(), ApplyError> {
        self.migrated(database).await?;
        let idx = at.index as i64;
        let sweep = self.sweep(database, at.leader_id.term);
        self.with_db(database, async |c| {
            let tx = c.transaction().await?;
            tx.batch_execute(&sweep).await?;
            let done: i64 = tx.query_one("SELECT idx FROM pgmix.strong_applied FOR UPDATE", &[]).await?.get(0);
            if done < idx {
                tx.execute("DELETE FROM pgmix.strong_staged WHERE gid = $1", &[&gid]).await?;
                tx.execute("UPDATE pgmix.strong_applied SET idx = $1", &[&idx]).await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    /// Stages a chunk of a large transaction's effects (a `Chunk` entry at `at`), with the
    /// database's marker, and drops chunks of earlier terms, whose Commit can no longer come.
    pub async fn stage(&self, at: LogId<NodeId>, gid: &str, database: &str, effects: &str) -> Result<(), ApplyError> {
        self.migrated(database).await?;
        let idx = at.index as i64;
        let term = gid_term(gid, &self.cluster.id).unwrap_or(at.leader_id.term) as i64;
        let sweep = self.sweep(database, at.leader_id.term);
        self.with_db(database, async |c| {
            let tx = c.transaction().await?;
            let done: i64 = tx.query_one("SELECT idx FROM pgmix.strong_applied FOR UPDATE", &[]).await?.get(0);
            tx.batch_execute(&sweep).await?;
            if done >= idx {
                return tx.commit().await;
            }
            tx.execute(
                "INSERT INTO pgmix.strong_staged (gid, idx, term, effects) VALUES ($1, $2, $3, $4)",
                &[&gid, &idx, &term, &effects],
            )
            .await?;
            tx.execute("UPDATE pgmix.strong_applied SET idx = $1", &[&idx]).await?;
            tx.commit().await
        })
        .await?;
        Ok(())
    }
}

/// Whether effects (as take_effects gave them) hold DDL.
fn has_ddl(effects: &str) -> bool {
    effects.contains("\"op\": \"S\"")
}

/// What a `Commit` entry names besides its effects.
#[derive(Clone, Copy)]
pub struct CommitEntry<'a> {
    pub origin: u32,
    pub gid: &'a str,
    pub database: &'a str,
    /// How many `Chunk` entries came before it. They were logged in the gid's term; a Commit
    /// logged in a later term (its leader lost and won again) abandons the transaction, so a
    /// node may drop any chunk once an entry of a later term applies.
    pub chunks: u32,
    /// Held open by its origin, not prepared (see `Held`).
    pub held: bool,
}

impl Applier {
    /// Runs a statement that cannot run in a transaction block. It is not applied exactly once:
    /// a crash right after it runs it again, so what it says when its work is already done
    /// (the database exists, the index exists) is only logged, like any failure here, and the
    /// outcome goes back to the leader's client.
    pub async fn standalone(
        &self,
        index: u64,
        database: &str,
        sql: &str,
        role: &str,
        search_path: &str,
    ) -> Result<super::Outcome, ApplyError> {
        let outcome = self.run_standalone(database, sql, role, search_path).await;
        // Kept for snapshots, whatever its outcome here (see `snapshot`).
        let main = self.backend.database.clone();
        let idx = index as i64;
        self.with_db(&main, async |c| {
            c.execute(
                "INSERT INTO pgmix.ddl_journal (idx, n, database, sql, path, who, standalone) \
                 VALUES ($1, 1, $2, $3, $4, $5, true) ON CONFLICT DO NOTHING",
                &[&idx, &database, &sql, &search_path, &role],
            )
            .await
        })
        .await?;
        Ok(outcome)
    }

    /// Runs a standalone statement; its failure, if it failed.
    pub async fn run_standalone(&self, database: &str, sql: &str, role: &str, search_path: &str) -> super::Outcome {
        // CREATE and DROP DATABASE run from the node's own database; DROP needs no connection
        // of pgmix's left in the database it drops.
        let kind = crate::classify::words::words(sql).standalone;
        let outside = kind.is_some_and(|k| k.runs_outside());
        let on_db = if outside { self.backend.database.clone() } else { database.to_owned() };
        if kind == Some(crate::classify::Standalone::DropDatabase) {
            self.dbs.lock().await.clear();
        }
        let setup = format!(
            "SET ROLE {}; SELECT set_config('search_path', {}, false)",
            crate::replicate::capture::ident(role),
            quote_literal(search_path)
        );
        let result = self
            .with_db(&on_db, async |c| {
                c.batch_execute(&setup).await?;
                let r = c.batch_execute(sql).await;
                c.batch_execute("RESET ROLE; RESET search_path").await?;
                r
            })
            .await;
        match result {
            Ok(()) => None,
            Err(e) => {
                let (code, message) = match e.as_db_error() {
                    Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
                    None => ("58000".to_owned(), e.to_string()),
                };
                warn!(%code, %message, sql, "a statement from the log failed here");
                Some((code, message))
            }
        }
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_term_and_only_this_cluster_s_are_read() {
        let g = gid(7, 2, 99, "my_cluster");
        assert_eq!(g, "pgmix_7_2_99_my_cluster");
        assert_eq!(gid_term(&g, "my_cluster"), Some(7));
        assert_eq!(gid_term(&g, "other"), None);
        assert_eq!(gid_term("pgmix_x_2_3_my_cluster", "my_cluster"), None);
        assert_eq!(gid_term("client_gid", "my_cluster"), None);
    }
}
