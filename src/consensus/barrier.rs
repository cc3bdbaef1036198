//! The read barrier strong reads will run behind: the leader confirms with a majority that it
//! still leads and names its read index (the last committed entry); the node waits until it has
//! applied that index, and may then read its own Postgres without missing any write committed
//! before the barrier began. A follower asks the leader for the index over the peer link.
//!
//! Crash meaning: none; a barrier holds no state. A node cut off from the majority gets no
//! index and its barrier fails at the timeout, so it never serves a stale strong read.

use std::time::Duration;

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

impl Consensus {
    /// Waits until this node has applied everything committed before the call, as the leader
    /// confirms it; Err after `timeout` when no leader with a majority answers. Returns the
    /// index the node has applied up to.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<u64, BarrierError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(BarrierError::Timeout(timeout));
            }
            let raft = self.raft();
            let index = match raft.get_read_log_id().await {
                Ok((read, _)) => Some(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => match f.leader_id {
                    Some(leader) => self.ask_leader(leader, left).await,
                    None => None,
                },
                Err(_) => None,
            };
            if let Some(index) = index {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if raft.wait(Some(left)).applied_index_at_least(Some(index), "read barrier").await.is_ok() {
                    return Ok(index);
                }
                return Err(BarrierError::Timeout(timeout));
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
