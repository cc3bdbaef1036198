//! The Raft log, vote and state machine in the node's local Postgres (`migrations/0003`).
//!
//! Why Postgres and not a file: the node already has a durable, fsyncing store in front of it,
//! which it backs up and monitors with everything else; a file log would need a data directory
//! the node does not otherwise have, and its own fsync and recovery code. Each write below is one
//! Postgres transaction, durable when it commits, and writes happen in the order Raft asks for
//! them (one connection, one at a time), which is the ordering Raft needs.
//!
//! Crash meaning: an append, a vote, a truncate or a purge either committed or did not; Raft
//! re-sends what a follower lacks. The state machine's applied id commits with what it applied.

// openraft's traits fix the error type (`StorageError`, which is large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{NodeId, TypeConfig};

type Node = openraft::BasicNode;

fn read_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::read_logs(e).into()
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_logs(e).into()
}

/// The log store: one connection, used for one write at a time.
#[derive(Clone)]
pub struct LogStore {
    client: Arc<Mutex<tokio_postgres::Client>>,
}

impl LogStore {
    pub fn new(client: Arc<Mutex<tokio_postgres::Client>>) -> Self {
        Self { client }
    }

    async fn meta<T: for<'a> Deserialize<'a>>(&self, column: &str) -> Result<Option<T>, StorageError<NodeId>> {
        let c = self.client.lock().await;
        let row =
            c.query_one(&format!("SELECT {column}::text FROM pgmix.raft_meta"), &[]).await.map_err(|e| read_err(&e))?;
        let text: Option<String> = row.get(0);
        match text {
            Some(t) => serde_json::from_str(&t).map_err(|e| read_err(&e)),
            None => Ok(None),
        }
    }

    async fn set_meta<T: Serialize>(&self, column: &str, value: &T) -> Result<(), StorageError<NodeId>> {
        let text = serde_json::to_string(value).map_err(|e| write_err(&e))?;
        let c = self.client.lock().await;
        let n = c
            .execute(&format!("UPDATE pgmix.raft_meta SET {column} = $1::text::jsonb"), &[&text])
            .await
            .map_err(|e| write_err(&e))?;
        if n != 1 {
            return Err(write_err(&std::io::Error::other("pgmix.raft_meta has no row")));
        }
        Ok(())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let lo = match range.start_bound() {
        Bound::Included(x) => *x as i64,
        Bound::Excluded(x) => *x as i64 + 1,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(x) => *x as i64 + 1,
        Bound::Excluded(x) => *x as i64,
        Bound::Unbounded => i64::MAX,
    };
    (lo, hi)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (lo, hi) = bounds(&range);
        let c = self.client.lock().await;
        let rows = c
            .query("SELECT entry::text FROM pgmix.raft_log WHERE idx >= $1 AND idx < $2 ORDER BY idx", &[&lo, &hi])
            .await
            .map_err(|e| read_err(&e))?;
        rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| read_err(&e))).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self.meta("purged").await?;
        let last = {
            let c = self.client.lock().await;
            let row = c
                .query_opt("SELECT entry::text FROM pgmix.raft_log ORDER BY idx DESC LIMIT 1", &[])
                .await
                .map_err(|e| read_err(&e))?;
            match row {
                Some(r) => {
                    let e: Entry<TypeConfig> = serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| read_err(&e))?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.set_meta("vote", vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta("vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.set_meta("committed", &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta::<Option<LogId<NodeId>>>("committed").await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut idx = Vec::new();
        let mut text = Vec::new();
        for e in entries {
            idx.push(e.log_id.index as i64);
            text.push(serde_json::to_string(&e).map_err(|e| write_err(&e))?);
        }
        let c = self.client.lock().await;
        // One transaction for the whole batch: concurrent appends share one commit (and fsync).
        let result = c
            .execute(
                "INSERT INTO pgmix.raft_log (idx, entry) SELECT i, e FROM unnest($1::int8[], $2::text[]) AS x(i, e) \
                 ON CONFLICT (idx) DO UPDATE SET entry = excluded.entry",
                &[&idx, &text],
            )
            .await;
        match result {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(&e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let c = self.client.lock().await;
        c.execute("DELETE FROM pgmix.raft_log WHERE idx >= $1", &[&(log_id.index as i64)])
            .await
            .map_err(|e| write_err(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let text = serde_json::to_string(&log_id).map_err(|e| write_err(&e))?;
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(|e| write_err(&e))?;
        tx.execute("UPDATE pgmix.raft_meta SET purged = $1::text::jsonb", &[&text]).await.map_err(|e| write_err(&e))?;
        tx.execute("DELETE FROM pgmix.raft_log WHERE idx <= $1", &[&(log_id.index as i64)])
            .await
            .map_err(|e| write_err(&e))?;
        tx.commit().await.map_err(|e| write_err(&e))
    }
}

/// How far the state machine has applied, and the membership; the strong state itself is the
/// local Postgres (see `apply`, and `snapshot` for its snapshots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
}

/// Removes the snapshot directories of pgmix processes that are gone (a snapshot file belongs to
/// its process: a new process builds its own).
fn remove_stale_snapshot_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pgmix-snapshots-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The current snapshot: its meta and its file.
type Current = (SnapshotMeta<NodeId, Node>, PathBuf);

#[derive(Clone)]
pub struct StateMachine {
    client: Arc<Mutex<tokio_postgres::Client>>,
    applier: Arc<super::apply::Applier>,
    backend: crate::config::BackendConfig,
    cluster: Arc<crate::config::ClusterConfig>,
    /// Held while entries are applied, and while a snapshot's transactions begin.
    applying: Arc<Mutex<()>>,
    /// Where this process keeps snapshot files, the current snapshot, and the file a snapshot
    /// being received is written to.
    dir: Arc<PathBuf>,
    current: Arc<std::sync::Mutex<Option<Current>>>,
    receiving: Arc<std::sync::Mutex<Option<PathBuf>>>,
    files: Arc<AtomicU64>,
}

fn snap_err(meta: Option<&SnapshotMeta<NodeId, Node>>, e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), e).into()
}

impl StateMachine {
    /// Applies one entry: its database, what it is (for the log), and its outcome.
    async fn apply_one(
        &self,
        at: LogId<NodeId>,
        payload: &EntryPayload<TypeConfig>,
    ) -> (String, &'static str, Result<super::Outcome, super::apply::ApplyError>) {
        match payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => (String::new(), "", Ok(None)),
            EntryPayload::Normal(super::Command::Standalone { database, sql, role, search_path }) => {
                let r = self.applier.standalone(at.index, database, sql, role, search_path).await;
                (database.clone(), "a standalone statement", r)
            }
            EntryPayload::Normal(super::Command::Commit { origin, gid, database, effects, chunks, held }) => {
                let commit = super::apply::CommitEntry { origin: *origin, gid, database, chunks: *chunks, held: *held };
                (database.clone(), "a strong transaction", self.applier.commit(at, &commit, effects.get()).await)
            }
            EntryPayload::Normal(super::Command::Abandon { gid, database }) => {
                let r = self.applier.abandon(at, gid, database).await.map(|()| None);
                (database.clone(), "an abandoned transaction", r)
            }
            EntryPayload::Normal(super::Command::Chunk { gid, database, effects }) => {
                let r = self.applier.stage(at, gid, database, effects.get()).await.map(|()| None);
                (database.clone(), "a chunk of a large transaction", r)
            }
        }
    }

    pub fn new(
        client: Arc<Mutex<tokio_postgres::Client>>,
        applier: Arc<super::apply::Applier>,
        backend: crate::config::BackendConfig,
        cluster: Arc<crate::config::ClusterConfig>,
    ) -> Self {
        remove_stale_snapshot_dirs();
        let dir = std::env::temp_dir().join(format!(
            "pgmix-snapshots-{}-node{}-{}",
            std::process::id(),
            cluster.node_id,
            rand::random::<u32>()
        ));
        Self {
            client,
            applier,
            backend,
            cluster,
            applying: Arc::new(Mutex::new(())),
            dir: Arc::new(dir),
            current: Arc::new(std::sync::Mutex::new(None)),
            receiving: Arc::new(std::sync::Mutex::new(None)),
            files: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Resolves what was left in doubt before the last entry applied (at start-up).
    pub async fn resolve_in_doubt(&self) -> Result<(), StorageError<NodeId>> {
        let a = self.load().await?;
        if let Some(applied) = a.applied {
            self.applier
                .resolve_before(applied.leader_id.term)
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        Ok(())
    }

    async fn load(&self) -> Result<Applied, StorageError<NodeId>> {
        let c = self.client.lock().await;
        let row = c
            .query_one("SELECT applied::text, membership::text FROM pgmix.raft_state", &[])
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let applied: Option<LogId<NodeId>> = match row.get::<_, Option<&str>>(0) {
            Some(t) => serde_json::from_str(t).map_err(|e| StorageIOError::read_state_machine(&e))?,
            None => None,
        };
        let membership: Option<StoredMembership<NodeId, Node>> =
            serde_json::from_str(row.get::<_, &str>(1)).map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok(Applied { applied, membership: membership.unwrap_or_default() })
    }

    async fn store(
        &self,
        a: &Applied,
        snapshot: Option<&SnapshotMeta<NodeId, Node>>,
    ) -> Result<(), StorageError<NodeId>> {
        let err = |e: &dyn std::error::Error| -> StorageError<NodeId> {
            StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
        };
        let applied = serde_json::to_string(&a.applied).map_err(|e| err(&e))?;
        let membership = serde_json::to_string(&a.membership).map_err(|e| err(&e))?;
        let c = self.client.lock().await;
        match snapshot {
            None => c
                .execute(
                    "UPDATE pgmix.raft_state SET applied = $1::text::jsonb, membership = $2::text::jsonb",
                    &[&applied, &membership],
                )
                .await
                .map_err(|e| err(&e))?,
            Some(meta) => {
                let meta = serde_json::to_string(meta).map_err(|e| err(&e))?;
                c.execute(
                    "UPDATE pgmix.raft_state SET applied = $1::text::jsonb, membership = $2::text::jsonb, snapshot = $3::text::jsonb",
                    &[&applied, &membership, &meta],
                )
                .await
                .map_err(|e| err(&e))?
            }
        };
        Ok(())
    }

    /// A new file in this process's snapshot directory.
    fn new_file(&self, what: &str) -> Result<PathBuf, StorageError<NodeId>> {
        std::fs::create_dir_all(self.dir.as_ref()).map_err(|e| snap_err(None, &e))?;
        Ok(self.dir.join(format!("{what}-{}.snap", self.files.fetch_add(1, Relaxed))))
    }

    /// Makes `path` the current snapshot, removing the one it replaces, unless the current one
    /// is newer (a build that began before an install and ended after it).
    fn set_current(&self, meta: SnapshotMeta<NodeId, Node>, path: PathBuf) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(m, _)| m.last_log_id > meta.last_log_id) {
            let _ = std::fs::remove_file(path);
            return;
        }
        if let Some((_, old)) = current.replace((meta, path.clone())).filter(|(_, p)| *p != path) {
            let _ = std::fs::remove_file(old);
        }
    }

    async fn open_snapshot(
        meta: SnapshotMeta<NodeId, Node>,
        path: &std::path::Path,
    ) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let f = tokio::fs::File::open(path).await.map_err(|e| snap_err(Some(&meta), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(f) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Runs beside `apply`: the snapshot's transactions begin while no entry is being applied,
    /// so they see the state after exactly the applied id read with them; the rows are written
    /// out after apply goes on.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // A strong transaction in flight may hold a lock on a strong table while it waits for
        // an entry to apply: freezing then gives up, lets applying go on, and tries again.
        let mut tries = 0;
        let (a, frozen) = loop {
            let applying = self.applying.lock().await;
            let a = self.load().await?;
            match super::snapshot::freeze(&self.backend).await {
                Ok(frozen) => break (a, frozen),
                Err(e) if super::snapshot::busy(&e) && tries < 300 => {
                    drop(applying);
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(snap_err(None, &e)),
            }
        };
        let id = a.applied.map_or("none".to_owned(), |l| format!("{}-{}", l.leader_id, l.index));
        let meta = SnapshotMeta { last_log_id: a.applied, last_membership: a.membership.clone(), snapshot_id: id };
        let path = self.new_file("built")?;
        let started = std::time::Instant::now();
        super::snapshot::write(frozen, &path).await.map_err(|e| snap_err(Some(&meta), &e))?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        tracing::info!(snapshot = %meta.snapshot_id, bytes, took = ?started.elapsed(), "snapshot built");
        let text = serde_json::to_string(&meta).map_err(|e| snap_err(Some(&meta), &e))?;
        self.client
            .lock()
            .await
            .execute("UPDATE pgmix.raft_state SET snapshot = $1::text::jsonb", &[&text])
            .await
            .map_err(|e| snap_err(Some(&meta), &e))?;
        self.set_current(meta.clone(), path.clone());
        Self::open_snapshot(meta, &path).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let a = self.load().await?;
        Ok((a.applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<super::Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let _applying = self.applying.clone().lock_owned().await;
        let mut a = self.load().await?;
        let mut out = Vec::new();
        for e in entries {
            let sm_err = |e: super::apply::ApplyError| -> StorageError<NodeId> {
                tracing::error!(error = %e, "cannot apply a committed entry; retrying");
                StorageIOError::write_state_machine(&e).into()
            };
            self.applier.resolve_before(e.log_id.leader_id.term).await.map_err(|e| sm_err(e.into()))?;
            let index = e.log_id.index;
            if let EntryPayload::Membership(m) = &e.payload {
                a.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            let mut attempt = 0;
            let outcome = loop {
                let (database, what, result) = self.apply_one(e.log_id, &e.payload).await;
                let err = match result {
                    Ok(o) => break o,
                    Err(err) => err,
                };
                match err.deterministic() {
                    // What looks like the entry's own fault may be a moment's (a database whose
                    // schema another task is bringing up to date): tried again a few times.
                    Some(_) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(index, attempt, error = %err, "a committed entry failed here; trying it again");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                    }
                    // One node failing an entry the others applied must not stop the cluster.
                    Some(why) => {
                        self.applier.pass_over(index, &database, what, why).await.map_err(|e| sm_err(e.into()))?;
                        break None;
                    }
                    None => {
                        // What was applied before this entry stays applied; this one is tried
                        // again once Postgres answers.
                        self.store(&a, None).await?;
                        return Err(sm_err(err));
                    }
                }
            };
            a.applied = Some(e.log_id);
            out.push(outcome);
        }
        self.store(&a, None).await?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.new_file("received")?;
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(None, &e))?;
        if let Some(old) = self.receiving.lock().unwrap_or_else(|p| p.into_inner()).replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let _applying = self.applying.clone().lock_owned().await;
        snapshot.sync_all().await.map_err(|e| snap_err(Some(meta), &e))?;
        drop(snapshot);
        let Some(path) = self.receiving.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(snap_err(Some(meta), &std::io::Error::other("no snapshot was being received")));
        };
        tracing::info!(snapshot = %meta.snapshot_id, "installing a snapshot: this node was too far behind the log");
        let index = meta.last_log_id.map_or(0, |l| l.index);
        super::snapshot::install(&path, index, &self.backend, &self.cluster, &self.applier)
            .await
            .map_err(|e| snap_err(Some(meta), &e))?;
        let a = Applied { applied: meta.last_log_id, membership: meta.last_membership.clone() };
        self.store(&a, Some(meta)).await?;
        self.set_current(meta.clone(), path);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // A snapshot of this process's; after a restart none, and openraft builds one when
        // the log was trimmed.
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match current {
            Some((meta, path)) if path.exists() => Ok(Some(Self::open_snapshot(meta, &path).await?)),
            _ => Ok(None),
        }
    }
}
