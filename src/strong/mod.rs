//! The strong path: strong transactions run on the leader and commit through the Raft log.
//!
//! A strong transaction runs on the leader's Postgres, as the client's role, with capture on
//! (`pgmix.strong`, see `migrations/0004_strong.sql`). At its COMMIT the leader:
//! 1. takes the transaction's effects out of `pgmix.strong_effects` (`take_effects`); a large
//!    transaction's effects come out in chunks of about `cluster.strong_chunk_kib`, and all but
//!    the last go on the log as `Chunk` entries at once, so no node holds them all in memory;
//! 2. `PREPARE TRANSACTION` with a gid naming the term (`consensus::apply::gid`);
//! 3. appends a `Commit` entry with the effects to the log and waits until it is committed and
//!    applied here, which is where `COMMIT PREPARED` runs (`consensus::apply`);
//! 4. answers COMMIT.
//!
//! A follower relays the whole transaction to the leader (`relay`) and passes the replies back.
//!
//! Crash meaning, step by step: before 2, the transaction is an open transaction and dies with
//! its connection (nothing committed; the client sees 40001 or a lost connection); chunks it
//! logged stay staged on each node until an entry of a later term drops them. Between 2 and
//! the append, a prepared transaction is left in doubt, rolled back once a later term's entry is
//! applied. After the append, the entry commits or is lost with the leader's term: it is applied
//! (`COMMIT PREPARED` on the leader, effects elsewhere) or the prepared transaction is rolled
//! back in the same way. The client is told 40001 when nothing can have committed and 40003 when
//! it cannot know.

mod commit;
pub mod failpoint;
pub mod relay;
pub mod tx;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use thiserror::Error;

use crate::config::BackendConfig;
use crate::consensus::{Command, Consensus, apply};
use crate::protocol::codec;
use crate::sqlstate::{ClientError, code};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StrongError {
    #[error("no leader with a majority answered within {0:?}; nothing was committed, so it is safe to retry")]
    NoQuorum(Duration),
    #[error("this node stopped leading before the commit was logged; nothing was committed, so it is safe to retry")]
    NotLeader,
    #[error("the connection to the leader was lost ({0}); the transaction was not committed, so it is safe to retry")]
    LeaderLost(String),
    #[error(
        "leadership changed while the transaction's effects were being logged; nothing was committed, so it is safe to retry"
    )]
    TermChanged,
    #[error(
        "the transaction was prepared but its commit could not be confirmed ({0}); it may or may not have committed"
    )]
    Unknown(String),
    #[error(
        "this node could not apply a committed strong transaction ({0}), so its own strong data is not current; the transaction was rolled back"
    )]
    Unapplied(String),
}

impl StrongError {
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::Unknown(_) => ClientError::error(code::STATEMENT_COMPLETION_UNKNOWN, self.to_string())
                .with_hint("Check whether the transaction's writes are there before you retry it."),
            Self::Unapplied(_) => ClientError::error(code::SERIALIZATION_FAILURE, self.to_string()).with_hint(
                "Retry the transaction: pgmix runs this session's transactions on the leader from now on. `pgmix status` shows the node; docs/CONSISTENCY.md (\"A node that cannot apply an entry\") says how to repair it.",
            ),
            _ => ClientError::error(code::SERIALIZATION_FAILURE, self.to_string())
                .with_hint("Retry the transaction; pgmix sends it to the current leader."),
        }
    }
}

/// Where a strong transaction runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    Here,
    Peer(u32),
    Unknown,
}

/// A node's handle on the strong path.
pub struct Strong {
    pub consensus: Arc<Consensus>,
    pub timeout: Duration,
    /// About how many bytes of effects go in one log entry (`cluster.strong_chunk_kib`).
    pub chunk_bytes: usize,
    pub backend: BackendConfig,
    counter: AtomicU64,
    relay_ids: AtomicU64,
    /// Transactions relayed here by followers.
    pub relays: relay::Relays,
    pub failpoints: Arc<failpoint::FailPoints>,
    /// Each database's secret (`pgmix.secret`): client sessions run pgmix's functions with it.
    secrets: tokio::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The databases this node serves: a relay session opens its database as a client's would.
    pub databases: Arc<crate::schema::databases::Databases>,
}

impl Strong {
    pub fn new(
        consensus: Arc<Consensus>,
        timeout: Duration,
        chunk_bytes: usize,
        backend: BackendConfig,
        failpoints: Arc<failpoint::FailPoints>,
        databases: Arc<crate::schema::databases::Databases>,
    ) -> Arc<Self> {
        // Unique across restarts of this node within one term as well.
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let me = Arc::new(Self {
            consensus,
            timeout,
            chunk_bytes,
            backend,
            counter: AtomicU64::new(start as u64),
            relay_ids: AtomicU64::new(start as u64),
            relays: relay::Relays::default(),
            failpoints,
            secrets: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            databases,
        });
        relay::serve(&me);
        me
    }

    pub fn leader(&self) -> Leader {
        match self.consensus.leader().0 {
            Some(id) if id == self.consensus.node_id() => Leader::Here,
            Some(id) => Leader::Peer(id),
            None => Leader::Unknown,
        }
    }

    /// Waits until this node has applied everything committed so far (see `consensus::barrier`).
    pub async fn barrier(&self) -> Result<(), StrongError> {
        self.consensus.read_barrier(self.timeout).await.map(|_| ()).map_err(|_| StrongError::NoQuorum(self.timeout))
    }

    /// Waits, for up to the timeout, for a leader this node can reach: itself, or a peer whose
    /// link is up.
    pub async fn wait_for_leader(&self) -> Result<Leader, StrongError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let reachable = match self.leader() {
                Leader::Here => return Ok(Leader::Here),
                Leader::Peer(id) if self.consensus.peers().get(id).is_some_and(|p| p.is_up()) => {
                    return Ok(Leader::Peer(id));
                }
                _ => false,
            };
            if !reachable && tokio::time::Instant::now() >= deadline {
                return Err(StrongError::NoQuorum(self.timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a statement that cannot run in a transaction block on every node, through the log
    /// (`Command::Standalone`); the reply for the client, ReadyForQuery included.
    pub async fn run_standalone(
        &self,
        database: &str,
        sql: &str,
        role: &str,
        search_path: &str,
    ) -> (bytes::BytesMut, u64) {
        let mut out = bytes::BytesMut::new();
        let mut index = 0;
        let result = match self.barrier().await {
            Err(e) => Err(e),
            Ok(()) => {
                let cmd = Command::Standalone {
                    database: database.to_owned(),
                    sql: sql.to_owned(),
                    role: role.to_owned(),
                    search_path: search_path.to_owned(),
                };
                // An index built concurrently takes as long as it takes: the barrier above
                // showed a majority, so the wait is for the statement itself.
                match tokio::time::timeout(Duration::from_secs(24 * 3600), self.consensus.raft().client_write(cmd))
                    .await
                {
                    Ok(Ok(r)) => {
                        index = r.log_id.index;
                        self.committed_now().await;
                        Ok(r.data)
                    }
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(StrongError::NotLeader),
                    Ok(Err(e)) => Err(StrongError::Unknown(e.to_string())),
                    Err(_) => Err(StrongError::Unknown("it did not finish within a day".to_owned())),
                }
            }
        };
        match result {
            Ok(None) => codec::command_complete(crate::classify::words::standalone_tag(sql), &mut out),
            Ok(Some((sqlstate, message))) => codec::error_response(&sqlstate, &message, &mut out),
            Err(e) => e.to_client().encode(&mut out),
        }
        codec::ready(b'I', &mut out);
        (out, index)
    }

    /// The secret of `database`, read once from its `pgmix.secret` on pgmix's own connection.
    pub async fn secret(&self, database: &str) -> std::io::Result<String> {
        let mut secrets = self.secrets.lock().await;
        if let Some(s) = secrets.get(database) {
            return Ok(s.clone());
        }
        let read = async {
            let c = self.backend.connect(database, "").await?;
            let row = c.query_one("SELECT token FROM pgmix.secret", &[]).await?;
            Ok::<String, tokio_postgres::Error>(row.get(0))
        };
        let token =
            read.await.map_err(|e| std::io::Error::other(format!("cannot read pgmix's secret of {database}: {e}")))?;
        secrets.insert(database.to_owned(), token.clone());
        Ok(token)
    }

    /// A new id for a relay session on the leader.
    pub fn next_relay_id(&self) -> u64 {
        self.relay_ids.fetch_add(1, Relaxed)
    }

    /// A new gid for a transaction prepared in the term this node leads; None when it does not
    /// lead (then nothing may be prepared: its entry would be appended in another term).
    pub fn next_gid(&self) -> Option<String> {
        let term = self.consensus.leading_term()?;
        Some(apply::gid(
            term,
            self.consensus.node_id(),
            self.counter.fetch_add(1, Relaxed),
            self.consensus.cluster_id(),
        ))
    }

    /// The wait for an entry of `len` bytes to commit: a large one takes longer to write and send.
    fn entry_wait(&self, len: usize) -> Duration {
        self.timeout + Duration::from_millis(len as u64 / 10_000)
    }

    /// Before step 2 of a large transaction: logs a chunk of its effects, which every node stages
    /// until its Commit entry. Nothing is prepared yet, so any failure is safe to retry.
    pub async fn chunk(&self, gid: &str, database: &str, effects: String) -> Result<(), StrongError> {
        let raft = self.consensus.raft();
        let wait = self.entry_wait(effects.len());
        let effects = serde_json::value::RawValue::from_string(effects)
            .map_err(|e| StrongError::LeaderLost(format!("its effects are not JSON: {e}")))?;
        let cmd = Command::Chunk { gid: gid.to_owned(), database: database.to_owned(), effects };
        match tokio::time::timeout(wait, raft.client_write(cmd)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(StrongError::NotLeader),
            Ok(Err(e)) => Err(StrongError::LeaderLost(e.to_string())),
            Err(_) => Err(StrongError::NoQuorum(wait)),
        }
    }

    /// After a large transaction failed before PREPARE (or at it): tells every node to drop its
    /// chunks. Best effort: if this fails, the next term's first entry drops them.
    pub async fn abandon(&self, gid: &str, database: &str) {
        let raft = self.consensus.raft();
        let cmd = Command::Abandon { gid: gid.to_owned(), database: database.to_owned() };
        let error = match tokio::time::timeout(self.timeout, raft.client_write(cmd)).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        tracing::info!(%gid, %error, "could not log the end of a failed large transaction; its chunks go at the next term");
    }

    /// Step 3: puts the transaction `gid` (prepared, or held open when `held`) on the log, after
    /// its `chunks` chunks. The write is spawned: it goes on when a wait for it gives up, and its
    /// outcome is then the log's. Returns it, and how long to wait for it.
    pub fn append(
        &self,
        gid: &str,
        database: &str,
        effects: String,
        chunks: u32,
        held: bool,
    ) -> Result<(tokio::task::JoinHandle<Write>, Duration), StrongError> {
        let raft = self.consensus.raft();
        let wait = self.entry_wait(effects.len());
        let effects = serde_json::value::RawValue::from_string(effects)
            .map_err(|e| StrongError::Unknown(format!("its effects are not JSON: {e}")))?;
        let cmd = Command::Commit {
            origin: self.consensus.node_id(),
            gid: gid.to_owned(),
            database: database.to_owned(),
            effects,
            chunks,
            held,
        };
        Ok((tokio::spawn(async move { raft.client_write(cmd).await }), wait))
    }

    /// What the client is told of an appended entry's write that finished (Ok: it committed,
    /// and applied here).
    pub async fn outcome(&self, write: Result<Write, tokio::task::JoinError>) -> Result<u64, StrongError> {
        match write {
            // Abandoned when applied (see `apply::CommitEntry`): rolled back everywhere.
            Ok(Ok(r)) if r.data.is_some() => Err(StrongError::TermChanged),
            Ok(Ok(r)) => {
                self.committed_now().await;
                match self.failpoints.hit(failpoint::BEFORE_ANSWER).await {
                    Ok(()) => Ok(r.log_id.index),
                    Err(e) => Err(StrongError::Unknown(e.to_string())),
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(StrongError::NotLeader),
            Ok(Err(e)) => Err(StrongError::Unknown(e.to_string())),
            Err(e) => Err(StrongError::Unknown(e.to_string())),
        }
    }

    /// Step 3 for a prepared transaction: appends it and waits until it is committed and applied
    /// here (where it is `COMMIT PREPARED`).
    pub async fn commit(&self, gid: &str, database: &str, effects: String, chunks: u32) -> Result<u64, StrongError> {
        let (write, wait) = self.append(gid, database, effects, chunks, false)?;
        match tokio::time::timeout(wait, write).await {
            Ok(w) => self.outcome(w).await,
            Err(_) => Err(StrongError::Unknown(format!("no majority confirmed it within {wait:?}"))),
        }
    }

    /// An entry of this node's committed: the followers are told at once (not at the next
    /// heartbeat), so that a client that committed through one of them finds its writes there
    /// without waiting.
    async fn committed_now(&self) {
        if let Err(e) = self.consensus.raft().trigger().heartbeat().await {
            tracing::debug!(error = %e, "could not send the commit index on at once");
        }
    }

    /// Waits (up to the timeout) until this node has applied the log up to `index`: what a
    /// client committed through it is here for its next statement, connection and weak read.
    pub async fn applied(&self, index: u64) {
        if index == 0 {
            return;
        }
        let raft = self.consensus.raft();
        if let Err(e) = raft.wait(Some(self.timeout)).applied_index_at_least(Some(index), "applied here").await {
            tracing::warn!(index, error = %e, "a committed entry was not applied here in time; answering anyway");
        }
    }
}

/// The result of a log write.
pub type Write = Result<
    openraft::raft::ClientWriteResponse<crate::consensus::TypeConfig>,
    RaftError<crate::consensus::NodeId, ClientWriteError<crate::consensus::NodeId, openraft::BasicNode>>,
>;
