//! Raft messages on the peer links: each RPC is a call to the peer's consensus service
//! ([`super::SERVICE`]), its request and its answer as JSON. A peer whose link is down is
//! `Unreachable`, so openraft backs off instead of retrying in a tight loop.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};

use super::{NodeId, SERVICE, TypeConfig};
use crate::peer::{CallError, PeerUp, Peers};

/// One RPC as it travels.
#[derive(Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's read barrier asks the leader for its read index (`barrier`).
    ReadIndex,
}

pub struct Network {
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Client {
        Client { target, peer: self.peers.get(target as u32).cloned() }
    }
}

pub struct Client {
    target: NodeId,
    peer: Option<Arc<PeerUp>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Client {
    async fn call<Resp, E>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: for<'a> Deserialize<'a>,
        E: std::error::Error + for<'a> Deserialize<'a>,
    {
        let Some(peer) = &self.peer else {
            return Err(RPCError::Unreachable(Unreachable::new(&Failed(format!(
                "node {} is not a peer",
                self.target
            )))));
        };
        let payload = serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = match peer.call(SERVICE, Bytes::from(payload), option.hard_ttl()).await {
            Ok(a) => a,
            Err(e @ (CallError::Down(_) | CallError::Dropped(_))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Failed(e.to_string()))));
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&Failed(e.to_string())))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Append(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::Snapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote(rpc), &option).await
    }
}

/// Answers a peer's RPC with this node's Raft: the whole result, error included, as JSON.
pub async fn serve(raft: &Raft<TypeConfig>, payload: &[u8]) -> Result<Bytes, String> {
    let rpc: Rpc = serde_json::from_slice(payload).map_err(|e| format!("malformed Raft message: {e}"))?;
    let answer = match rpc {
        Rpc::Append(r) => serde_json::to_vec(&raft.append_entries(r).await),
        Rpc::Vote(r) => serde_json::to_vec(&raft.vote(r).await),
        Rpc::Snapshot(r) => serde_json::to_vec(&raft.install_snapshot(r).await),
        Rpc::ReadIndex => serde_json::to_vec(&super::barrier::read_index(raft).await),
    };
    answer.map(Bytes::from).map_err(|e| e.to_string())
}
