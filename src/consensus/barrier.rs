//! The read barrier strong reads run behind: the leader confirms with a majority that it
//! still leads and names its read index (the last committed entry); the node waits until it has
//! applied that index, and may then read its own Postgres without missing any write committed
//! before the barrier began. A follower asks the leader for the index over the peer link.
//!
//! Crash meaning: none; a barrier holds no state. A node cut off from the majority gets no
//! index and its barrier fails at the timeout, so it never serves a stale strong read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use bytes::Bytes;
use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use thiserror::Error;

use super::{Consensus, SERVICE, TypeConfig, network::Rpc};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BarrierError {
    #[error("no leader with a majority answered within {0:?}")]
    Timeout(Duration),
}

/// The leader's side: confirm leadership with a quorum and give the read index.
pub async fn read_index(raft: &Raft<TypeConfig>) -> Result<u64, String> {
    match raft.get_read_log_id().await {
        Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
        Err(e) => Err(e.to_string()),
    }
}

/// Concurrent barriers share rounds: a caller joins the next round to start (never one already
/// under way, which may have begun before its call), and every caller of a round waits for the
/// index that round got.
#[derive(Default)]
pub struct Rounds {
    state: std::sync::Mutex<(bool, Vec<oneshot::Sender<Option<u64>>>)>,
}

impl Consensus {
    /// Waits until this node has applied everything committed before the call, as the leader
    /// confirms it; Err after `timeout` when no leader with a majority answers. Returns the
    /// index the node has applied up to.
    pub async fn read_barrier(self: &Arc<Self>, timeout: Duration) -> Result<u64, BarrierError> {
        if let Some((index, applied)) = self.sole_voter_read_index() {
            if applied >= index {
                return Ok(applied);
            }
            return match self.raft().wait(Some(timeout)).applied_index_at_least(Some(index), "read barrier").await {
                Ok(_) => Ok(index),
                Err(_) => Err(BarrierError::Timeout(timeout)),
            };
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.rounds.state.lock().unwrap_or_else(|p| p.into_inner());
            st.1.push(tx);
            !std::mem::replace(&mut st.0, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.run_rounds(timeout).await });
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Some(index))) => index,
            _ => return Err(BarrierError::Timeout(timeout)),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self.raft().wait(Some(left)).applied_index_at_least(Some(index), "read barrier").await {
            Ok(_) => Ok(index),
            Err(_) => Err(BarrierError::Timeout(timeout)),
        }
    }

    /// A leader that is the only voter has nobody to confirm its leadership with: no other node
    /// can be elected while the membership is itself alone. Its read index is its last log entry
    /// (everything committed, and perhaps an entry still being written, which a read may wait
    /// for). Some((read index, applied index)) on such a leader, None elsewhere.
    fn sole_voter_read_index(&self) -> Option<(u64, u64)> {
        let raft = self.raft();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let me = super::NodeId::from(self.cluster.node_id);
        let sole = m.membership_config.membership().voter_ids().eq([me]);
        (sole && m.state == openraft::ServerState::Leader && m.current_leader == Some(me) && m.vote.is_committed())
            .then(|| (m.last_log_index.unwrap_or(0), m.last_applied.map_or(0, |l| l.index)))
    }

    /// Runs rounds while callers wait for one.
    async fn run_rounds(&self, timeout: Duration) {
        loop {
            let batch = {
                let mut st = self.rounds.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.1.is_empty() {
                    st.0 = false;
                    return;
                }
                std::mem::take(&mut st.1)
            };
            let index = self.read_index_within(timeout).await;
            for tx in batch {
                let _ = tx.send(index);
            }
        }
    }

    /// One round: the leader's read index, from this node or asked of the leader; None when no
    /// leader with a majority answers within `timeout`.
    async fn read_index_within(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let index = match self.raft().get_read_log_id().await {
                Ok((read, _)) => Some(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => match f.leader_id {
                    Some(leader) => self.ask_leader(leader, left).await,
                    None => None,
                },
                Err(_) => None,
            };
            if index.is_some() {
                return index;
            }
            tokio::time::sleep(Duration::from_millis(50).min(left)).await;
        }
    }

    async fn ask_leader(&self, leader: u64, left: Duration) -> Option<u64> {
        let peer = self.peers.get(leader as u32)?;
        let payload = serde_json::to_vec(&Rpc::ReadIndex).ok()?;
        let answer = peer.call(SERVICE, Bytes::from(payload), left).await.ok()?;
        let result: Result<u64, String> = serde_json::from_slice(&answer).ok()?;
        result.ok()
    }
}
