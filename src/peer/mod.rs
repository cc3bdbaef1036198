//! Peer links: one mutually authenticated TLS connection per pair of nodes, carrying framed,
//! versioned messages (`frame`). The node with the lower id dials, the other accepts; a link that
//! drops is dialled again with backoff. Each side proves with a certificate from the cluster CA
//! that it is the node it names in its greeting, so a connection that cannot prove it belongs to
//! the cluster fails in the TLS handshake, before it can send a single message, and one from
//! another cluster, or naming a node it has no certificate for, is closed at its greeting.
//!
//! Today the links carry their greeting and a heartbeat, which is what `pgmix_peer_up` and
//! `pgmix status` report; weak changes and consensus traffic are to travel on them as frames of
//! their own kinds. Crash meaning: a link holds no state; a node that restarts is dialled again.

pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ClusterConfig, Peer};
use frame::{Frame, FrameError};

/// How often a link proves it is alive, and how long silence may last before it counts as down.
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot listen for peers on {addr}: {cause}")]
    Bind { addr: std::net::SocketAddr, cause: std::io::Error },
}

#[derive(Debug, Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer said nothing for {0:?}")]
    Silent(Duration),
    #[error("{0}")]
    Refused(String),
}

/// Whether each peer's link is up, for metrics and status. A peer may have more than one link
/// for a moment (it restarted and dialled again before the old link was found dead), so links
/// are counted: up while any is.
#[derive(Debug)]
pub struct PeerUp {
    pub name: String,
    links: AtomicUsize,
}

impl PeerUp {
    pub fn is_up(&self) -> bool {
        self.links.load(Relaxed) > 0
    }
}

/// One established link, counted while it lives.
struct Link<'a>(&'a PeerUp);

impl<'a> Link<'a> {
    fn new(state: &'a PeerUp) -> Self {
        if state.links.fetch_add(1, Relaxed) == 0 {
            info!(peer = %state.name, "peer link up");
        }
        Link(state)
    }
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        if self.0.links.fetch_sub(1, Relaxed) == 1 {
            warn!(peer = %self.0.name, "peer link down");
        }
    }
}

/// Starts listening for peers and dialling the peers this node dials. Returns each peer's state.
pub async fn start(cluster: Arc<ClusterConfig>, shutdown: CancellationToken) -> Result<Vec<Arc<PeerUp>>, PeerError> {
    let listener =
        TcpListener::bind(cluster.listen).await.map_err(|cause| PeerError::Bind { addr: cluster.listen, cause })?;
    let states: Vec<Arc<PeerUp>> =
        cluster.peers.iter().map(|p| Arc::new(PeerUp { name: p.name.clone(), links: AtomicUsize::new(0) })).collect();
    tokio::spawn(accept_loop(listener, cluster.clone(), states.clone(), shutdown.clone()));
    for (peer, state) in cluster.peers.iter().zip(&states) {
        if peer.id > cluster.node_id {
            tokio::spawn(dial_loop(cluster.clone(), peer.clone(), state.clone(), shutdown.clone()));
        }
    }
    info!(listen = %cluster.listen, peers = cluster.peers.len(), "peer links started");
    Ok(states)
}

async fn accept_loop(
    listener: TcpListener,
    cluster: Arc<ClusterConfig>,
    states: Vec<Arc<PeerUp>>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (cluster, states, stop) = (cluster.clone(), states.clone(), stop.clone());
        tokio::spawn(async move {
            match accept_one(tcp, &cluster, &states, &stop).await {
                Ok(()) => {}
                Err(e) => debug!(%addr, error = %e, "peer connection ended"),
            }
        });
    }
}

/// One incoming link: TLS (the client must present a cluster certificate), the greeting, then
/// answering heartbeats until the link drops.
async fn accept_one(
    tcp: TcpStream,
    cluster: &ClusterConfig,
    states: &[Arc<PeerUp>],
    stop: &CancellationToken,
) -> Result<(), LinkError> {
    tcp.set_nodelay(true)?;
    let mut tls =
        tokio::time::timeout(SILENCE, cluster.acceptor.accept(tcp)).await.map_err(|_| LinkError::Silent(SILENCE))??;
    let certs: Vec<_> = tls.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    let mut buf = BytesMut::new();
    let Frame::Hello { cluster: their_cluster, node } = read_frame(&mut tls, &mut buf).await? else {
        return Err(LinkError::Refused("the first frame was not a greeting".into()));
    };
    let (peer, state) = check_greeting(cluster, states, &their_cluster, node)?;
    if peer.id >= cluster.node_id {
        return Err(LinkError::Refused(format!("node {} dials, not this one", peer.id)));
    }
    if !cluster.certifies(&certs, &peer.name) {
        warn!(peer = %peer.name, "refused a peer whose certificate is not for the node it named");
        return Err(LinkError::Refused(format!("certificate is not for {}", peer.name)));
    }
    write_frame(&mut tls, &Frame::Hello { cluster: cluster.id.clone(), node: cluster.node_id }).await?;
    let _link = Link::new(state);
    loop {
        let f = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            f = read_frame(&mut tls, &mut buf) => f?,
        };
        if f == Frame::Ping {
            write_frame(&mut tls, &Frame::Pong).await?;
        }
    }
}

/// Keeps the link to `peer` up: dial, greet, heartbeat; after a failure, again with backoff.
async fn dial_loop(cluster: Arc<ClusterConfig>, peer: Peer, state: Arc<PeerUp>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = dial_once(&cluster, &peer, &state, &mut backoff) => r,
        };
        if let Err(e) = result {
            debug!(peer = %peer.name, error = %e, "peer link failed; dialling again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn dial_once(
    cluster: &ClusterConfig,
    peer: &Peer,
    state: &PeerUp,
    backoff: &mut Duration,
) -> Result<(), LinkError> {
    let tcp = tokio::time::timeout(SILENCE, TcpStream::connect(&peer.addr))
        .await
        .map_err(|_| LinkError::Silent(SILENCE))??;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(peer.name.clone())
        .map_err(|e| LinkError::Refused(format!("peer name {}: {e}", peer.name)))?;
    // The TLS handshake checks that the server's certificate is the cluster CA's for that name.
    let mut tls = tokio::time::timeout(SILENCE, cluster.connector.connect(name, tcp))
        .await
        .map_err(|_| LinkError::Silent(SILENCE))??;
    write_frame(&mut tls, &Frame::Hello { cluster: cluster.id.clone(), node: cluster.node_id }).await?;
    let mut buf = BytesMut::new();
    let Frame::Hello { cluster: their_cluster, node } = read_frame(&mut tls, &mut buf).await? else {
        return Err(LinkError::Refused("the first frame was not a greeting".into()));
    };
    if their_cluster != cluster.id || node != peer.id {
        return Err(LinkError::Refused(format!("{} answered as node {node} of cluster `{their_cluster}`", peer.addr)));
    }
    let _link = Link::new(state);
    *backoff = Duration::from_millis(100);
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        write_frame(&mut tls, &Frame::Ping).await?;
        if read_frame(&mut tls, &mut buf).await? != Frame::Pong {
            return Err(LinkError::Refused("expected a heartbeat answer".into()));
        }
    }
}

fn check_greeting<'a>(
    cluster: &'a ClusterConfig,
    states: &'a [Arc<PeerUp>],
    their_cluster: &str,
    node: u32,
) -> Result<(&'a Peer, &'a PeerUp), LinkError> {
    if their_cluster != cluster.id {
        warn!(their_cluster, "refused a peer of another cluster");
        return Err(LinkError::Refused(format!("cluster `{their_cluster}` is not `{}`", cluster.id)));
    }
    cluster
        .peers
        .iter()
        .zip(states)
        .find(|(p, _)| p.id == node)
        .map(|(p, s)| (p, s.as_ref()))
        .ok_or_else(|| LinkError::Refused(format!("node {node} is not a peer of this node")))
}

/// Reads one frame; silence longer than `SILENCE` is an error, so a dead peer is noticed.
async fn read_frame(s: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Result<Frame, LinkError> {
    loop {
        if let Some(f) = Frame::decode(buf)? {
            return Ok(f);
        }
        let n = tokio::time::timeout(SILENCE, s.read_buf(buf)).await.map_err(|_| LinkError::Silent(SILENCE))??;
        if n == 0 {
            return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

async fn write_frame(s: &mut (impl AsyncWrite + Unpin), f: &Frame) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    s.write_all(&buf).await?;
    s.flush().await?;
    Ok(())
}
