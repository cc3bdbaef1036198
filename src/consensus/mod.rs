//! Consensus: one Raft group of all the nodes in `[cluster]`, with openraft 0.9 (storage v2).
//! Its log, vote and state machine live in the node's local Postgres (`store`); its messages
//! travel on the peer links (`network`, service [`SERVICE`]).
//!
//! The group elects a leader, keeps its membership and reports its state (metrics, `pgmix
//! status`); the strong path puts its committed transactions (and their DDL) on this log, and
//! `apply` applies them. Membership is the `[cluster]` section: every node proposes the same initial
//! membership, and a node that is already initialized keeps what it has.
//!
//! Crash meaning: a node that restarts reads its vote and log back from Postgres and rejoins
//! as a follower; a leader that dies is replaced after an election timeout (0.6 to 1.2 s).

pub mod apply;
pub mod barrier;
pub mod network;
pub mod snapshot;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{BackendConfig, ClusterConfig};
use crate::metrics::{MetricsHandle, RaftStatus};
use crate::peer::Peers;

pub type NodeId = u64;

/// The peer-link service number of consensus.
pub const SERVICE: u8 = 2;

/// What the log carries besides blank and membership entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A strong transaction that node `origin` prepared as `gid` in `database`, with its (last)
    /// effects as `pgmix.take_effects` gave them (JSON text), after `chunks` chunks of effects
    /// staged by earlier entries. See `apply`.
    Commit {
        origin: u32,
        gid: String,
        database: String,
        effects: Box<serde_json::value::RawValue>,
        #[serde(default)]
        chunks: u32,
        /// The leader holds the transaction open (not prepared): it commits when this entry
        /// applies there, handed off to its session (`apply::Held`).
        #[serde(default)]
        held: bool,
    },
    /// Effects of the large transaction `gid`, logged before it is prepared: every node stages
    /// them until the transaction's `Commit` entry applies them (or a later term drops them).
    Chunk { gid: String, database: String, effects: Box<serde_json::value::RawValue> },
    /// The large transaction `gid` failed after logging chunks (its PREPARE failed, say): every
    /// node drops them now rather than at the next term.
    Abandon { gid: String, database: String },
    /// A statement that cannot run in a transaction block (CREATE DATABASE, CREATE INDEX
    /// CONCURRENTLY, ...), run by every node as `role` with `search_path`, in `database`.
    Standalone { database: String, sql: String, role: String, search_path: String },
}

/// What applying an entry gave: for a standalone statement that failed, its SQLSTATE and
/// message (the leader's is the client's answer).
pub type Outcome = Option<(String, String)>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

#[derive(Debug, Error)]
pub enum ConsensusError {
    #[error("consensus cannot reach the local Postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("consensus cannot start: {0}")]
    Raft(String),
}

/// Heartbeats and election timeouts, in milliseconds: a dead leader is replaced within about
/// two seconds.
const HEARTBEAT_MS: u64 = 150;
const ELECTION_MIN_MS: u64 = 600;
const ELECTION_MAX_MS: u64 = 1200;

pub struct Consensus {
    cluster: Arc<ClusterConfig>,
    backend: BackendConfig,
    peers: Arc<Peers>,
    /// The running Raft; replaced when a storage error stopped it (its Postgres went away).
    raft: std::sync::RwLock<Raft<TypeConfig>>,
    ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
    failpoints: Arc<crate::strong::failpoint::FailPoints>,
    /// Read barriers in flight, sharing rounds.
    rounds: barrier::Rounds,
    /// Committed entries this node could not apply (see `apply::Applier::pass_over`).
    unapplied: Arc<apply::Unapplied>,
    /// Transactions this node holds open until their entries commit.
    held: Arc<apply::Held>,
}

impl Consensus {
    /// Starts this node's Raft, serves its peers' messages and keeps the metrics current.
    pub async fn start(
        cluster: Arc<ClusterConfig>,
        backend: &BackendConfig,
        peers: Arc<Peers>,
        metrics: MetricsHandle,
        stop: CancellationToken,
        ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
        failpoints: Arc<crate::strong::failpoint::FailPoints>,
    ) -> Result<Arc<Self>, ConsensusError> {
        let unapplied = Arc::new(apply::Unapplied::default());
        let held = Arc::new(apply::Held::default());
        let raft = open(&cluster, backend, &peers, &ddl_applied, &failpoints, &unapplied, &held).await?;
        let me = Arc::new(Self {
            cluster,
            backend: backend.clone(),
            peers: peers.clone(),
            raft: std::sync::RwLock::new(raft),
            ddl_applied,
            failpoints,
            rounds: barrier::Rounds::default(),
            unapplied,
            held,
        });
        let weak = Arc::downgrade(&me);
        peers.serve(
            SERVICE,
            Arc::new(move |_from, payload| {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(me) = weak.upgrade() else { return Err("this node is stopping".to_owned()) };
                    network::serve(&me.raft(), &payload).await
                })
            }),
        );
        tokio::spawn(report(me.clone(), metrics, stop));
        Ok(me)
    }

    /// The running Raft.
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.raft.read().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn node_id(&self) -> u32 {
        self.cluster.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster.id
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The term this node leads in, if it leads (a candidate or a stale leader does not).
    pub fn leading_term(&self) -> Option<u64> {
        let raft = self.raft();
        let m = raft.metrics().borrow().clone();
        let me = NodeId::from(self.cluster.node_id);
        (m.state == openraft::ServerState::Leader
            && m.current_leader == Some(me)
            && m.vote.leader_id().voted_for() == Some(me)
            && m.vote.is_committed())
        .then_some(m.vote.leader_id().term)
    }

    /// The transactions this node holds open until their entries commit (see `apply::Held`).
    pub fn held(&self) -> &Arc<apply::Held> {
        &self.held
    }

    /// How many committed entries this node could not apply, and the last of them: while there
    /// are any, its own strong data is not the cluster's.
    pub fn unapplied(&self) -> (u64, Option<String>) {
        self.unapplied.get()
    }

    /// The leader as this node knows it, and the current term.
    pub fn leader(&self) -> (Option<u32>, u64) {
        let m = self.raft().metrics().borrow().clone();
        (m.current_leader.map(|l| l as u32), m.current_term)
    }
}

/// Opens this node's Raft on its Postgres and proposes the cluster's membership.
async fn open(
    cluster: &ClusterConfig,
    backend: &BackendConfig,
    peers: &Arc<Peers>,
    ddl_applied: &tokio::sync::mpsc::UnboundedSender<String>,
    failpoints: &Arc<crate::strong::failpoint::FailPoints>,
    unapplied: &Arc<apply::Unapplied>,
    held: &Arc<apply::Held>,
) -> Result<Raft<TypeConfig>, ConsensusError> {
    // Raft acknowledges only what is durable: the log and the vote commit synchronously,
    // whatever the server or role says. The state machine need not (see `apply`): what it
    // applied is replayed from the log when it was lost, and its applied id is written after
    // what it stands for, in the same write-ahead log, so it is never durable before that is.
    let connect = |sync: &'static str| async move {
        let client = backend.connect(&backend.database, sync).await?;
        Ok::<_, tokio_postgres::Error>(Arc::new(Mutex::new(client)))
    };
    let mut log = store::LogStore::new(connect("SET synchronous_commit = on").await?);
    // A node that led before it stopped must not lead again in the same term: transactions it
    // prepared then and never logged would stay in doubt (holding their locks) for the whole term.
    // openraft restores a committed vote for itself as leadership, so the vote is kept but made
    // uncommitted: the node starts as a follower, and an election moves the group to a new term,
    // whose first entry resolves what was left in doubt (see `apply`).
    {
        use openraft::storage::RaftLogStorage;
        let me = NodeId::from(cluster.node_id);
        let vote = log.read_vote().await.map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if let Some(v) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(me)) {
            info!(term = v.leader_id().term, "this node led before it stopped: it starts as a follower");
            let uncommitted = openraft::Vote::new(v.leader_id().term, me);
            log.save_vote(&uncommitted).await.map_err(|e| ConsensusError::Raft(e.to_string()))?;
        }
    }
    let applier = apply::Applier::new(
        backend.clone(),
        cluster.node_id,
        ddl_applied.clone(),
        failpoints.clone(),
        unapplied.clone(),
        held.clone(),
        Arc::new(cluster.clone()),
    );
    applier.load_unapplied().await?;
    let sm = store::StateMachine::new(
        connect("SET synchronous_commit = off").await?,
        Arc::new(applier),
        backend.clone(),
        Arc::new(cluster.clone()),
    );
    sm.resolve_in_doubt().await.map_err(|e| ConsensusError::Raft(e.to_string()))?;
    let config = openraft::Config {
        cluster_name: cluster.id.clone(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        // A snapshot holds the strong tables (see `snapshot`); the log keeps half a snapshot's
        // worth of entries behind it, for followers a little behind.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cluster.snapshot_entries),
        max_in_snapshot_log_to_keep: cluster.snapshot_entries / 2,
        // A large transaction's entries are chunks of up to `strong_chunk_kib` (at most 2 MiB):
        // a follower catching up is sent at most this many in one message.
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ConsensusError::Raft(e.to_string()))?;
    let id = NodeId::from(cluster.node_id);
    let raft = Raft::new(id, Arc::new(config), network::Network { peers: peers.clone() }, log, sm)
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
    // The same membership on every node, so every node's first log entry is the same:
    // messages go by node id over the peer links, so no address is recorded.
    let mut members = BTreeMap::new();
    members.insert(id, BasicNode::default());
    for p in &cluster.peers {
        members.insert(NodeId::from(p.id), BasicNode::default());
    }
    match raft.initialize(members).await {
        Ok(()) => info!(nodes = cluster.peers.len() + 1, "consensus initialized"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => info!("consensus resumed from its log"),
        Err(e) => return Err(ConsensusError::Raft(e.to_string())),
    }
    Ok(raft)
}

/// Copies Raft's state into the metrics until the node stops, then shuts Raft down. A Raft that
/// a storage error stopped (its Postgres went away) is opened again from what Postgres holds,
/// once Postgres answers again.
async fn report(me: Arc<Consensus>, metrics: MetricsHandle, stop: CancellationToken) {
    let mut was_leader = None;
    loop {
        let raft = me.raft();
        let m = raft.metrics().borrow().clone();
        if let Err(e) = &m.running_state {
            warn!(error = %e, "consensus stopped on this node; opening it again");
            let _ = raft.shutdown().await;
            match open(&me.cluster, &me.backend, &me.peers, &me.ddl_applied, &me.failpoints, &me.unapplied, &me.held)
                .await
            {
                Ok(fresh) => {
                    if let Ok(mut r) = me.raft.write() {
                        *r = fresh;
                    }
                    info!("consensus reopened from the local Postgres");
                }
                Err(e) => {
                    debug!(error = %e, "consensus cannot reopen yet");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            continue;
        }
        let committed = raft.with_raft_state(|st| st.committed).await.ok().flatten();
        let leader = m.state.is_leader();
        if was_leader != Some(leader) {
            if leader {
                info!(term = m.current_term, "this node leads");
            }
            was_leader = Some(leader);
        }
        metrics.set_raft(RaftStatus {
            role: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            leader: m.current_leader,
            commit_index: committed.map_or(0, |c| c.index),
            applied_index: m.last_applied.map_or(0, |a| a.index),
            unapplied: me.unapplied.get().0,
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    if let Err(e) = me.raft().shutdown().await {
        warn!(error = %e, "consensus did not shut down cleanly");
    }
}
