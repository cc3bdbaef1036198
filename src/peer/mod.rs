//! Peer links: one mutually authenticated TLS connection per pair of nodes, carrying framed,
//! versioned messages (`frame`). The node with the lower id dials, the other accepts; a link that
//! drops is dialled again with backoff. Each side proves with a certificate from the cluster CA
//! that it is the node it names in its greeting, so a connection that cannot prove it belongs to
//! the cluster fails in the TLS handshake, before it can send a single message, and one from
//! another cluster, or naming a node it has no certificate for, is closed at its greeting.
//!
//! After the greeting a link is symmetric: either side sends heartbeats and calls the other's
//! services (`PeerUp::call`), many calls in flight at once, each answered by id. The transport
//! knows services only by number; weak replication is one, consensus will be another.
//! Crash meaning: a link holds no state; calls in flight when it drops fail, and their callers
//! ask again; a node that restarts is dialled again.

pub mod frame;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
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

/// Handles one service's requests from peers: (from node id, payload) to the reply.
pub type Handler = Arc<dyn Fn(u32, Bytes) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;
pub type Reply = Result<Bytes, String>;

/// Why a call to a peer got no answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallError {
    #[error("the link to {0} is down")]
    Down(String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("the link to {0} dropped before the answer")]
    Dropped(String),
    #[error("{0} answered: {1}")]
    Remote(String, String),
}

/// One peer: whether its link is up (for metrics and status) and the way to call it. A peer may
/// have more than one link for a moment (it restarted and dialled again before the old link was
/// found dead), so links are counted, up while any is, and calls use the newest.
pub struct PeerUp {
    pub id: u32,
    pub name: String,
    links: AtomicUsize,
    out: Mutex<Option<(u64, mpsc::Sender<Frame>)>>,
    /// Calls waiting for an answer, with the number of the link each went out on.
    pending: Mutex<HashMap<u64, (u64, oneshot::Sender<Reply>)>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for PeerUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerUp").field("name", &self.name).field("up", &self.is_up()).finish()
    }
}

impl PeerUp {
    fn new(peer: &Peer) -> Self {
        Self {
            id: peer.id,
            name: peer.name.clone(),
            links: AtomicUsize::new(0),
            out: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.links.load(Relaxed) > 0
    }

    /// Calls `service` on this peer and waits up to `wait` for its answer.
    pub async fn call(&self, service: u8, payload: Bytes, wait: Duration) -> Result<Bytes, CallError> {
        let Some((link, out)) = lock(&self.out).as_ref().map(|(no, tx)| (*no, tx.clone())) else {
            return Err(CallError::Down(self.name.clone()));
        };
        let id = self.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, (link, tx));
        let forget = |me: &Self| {
            lock(&me.pending).remove(&id);
        };
        if out.send(Frame::Request { id, service, payload }).await.is_err() {
            forget(self);
            return Err(CallError::Down(self.name.clone()));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(b))) => Ok(b),
            Ok(Ok(Err(reason))) => Err(CallError::Remote(self.name.clone(), reason)),
            Ok(Err(_)) => Err(CallError::Dropped(self.name.clone())),
            Err(_) => {
                forget(self);
                Err(CallError::Timeout(self.name.clone(), wait))
            }
        }
    }

    fn answer(&self, id: u64, result: Reply) {
        if let Some((_, tx)) = lock(&self.pending).remove(&id) {
            let _ = tx.send(result);
        }
    }

    /// Makes `tx` the way out; returns its number for `detach`.
    fn attach(&self, tx: mpsc::Sender<Frame>) -> u64 {
        static LINKS: AtomicU64 = AtomicU64::new(1);
        let no = LINKS.fetch_add(1, Relaxed);
        *lock(&self.out) = Some((no, tx));
        no
    }

    /// The link `no` ended: calls that went out on it will get no answer (they fail as
    /// dropped), even when a newer link has taken its place.
    fn detach(&self, no: u64) {
        let mut out = lock(&self.out);
        if out.as_ref().is_some_and(|(n, _)| *n == no) {
            *out = None;
        }
        lock(&self.pending).retain(|_, (link, _)| *link != no);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's peers, and the services it offers them.
pub struct Peers {
    pub list: Vec<Arc<PeerUp>>,
    services: RwLock<HashMap<u8, Handler>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.list).finish()
    }
}

impl Peers {
    /// Offers `service` to peers; requests for a service not offered get an error answer.
    pub fn serve(&self, service: u8, handler: Handler) {
        if let Ok(mut s) = self.services.write() {
            s.insert(service, handler);
        }
    }

    fn handler(&self, service: u8) -> Option<Handler> {
        self.services.read().ok()?.get(&service).cloned()
    }

    pub fn get(&self, id: u32) -> Option<&Arc<PeerUp>> {
        self.list.iter().find(|p| p.id == id)
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

/// Starts listening for peers and dialling the peers this node dials.
pub async fn start(cluster: Arc<ClusterConfig>, shutdown: CancellationToken) -> Result<Arc<Peers>, PeerError> {
    let listener =
        TcpListener::bind(cluster.listen).await.map_err(|cause| PeerError::Bind { addr: cluster.listen, cause })?;
    let peers = Arc::new(Peers {
        list: cluster.peers.iter().map(|p| Arc::new(PeerUp::new(p))).collect(),
        services: RwLock::new(HashMap::new()),
    });
    tokio::spawn(accept_loop(listener, cluster.clone(), peers.clone(), shutdown.clone()));
    for (peer, state) in cluster.peers.iter().zip(&peers.list) {
        if peer.id > cluster.node_id {
            tokio::spawn(dial_loop(cluster.clone(), peer.clone(), state.clone(), peers.clone(), shutdown.clone()));
        }
    }
    info!(listen = %cluster.listen, peers = cluster.peers.len(), "peer links started");
    Ok(peers)
}

async fn accept_loop(listener: TcpListener, cluster: Arc<ClusterConfig>, peers: Arc<Peers>, stop: CancellationToken) {
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
        let (cluster, peers, stop) = (cluster.clone(), peers.clone(), stop.clone());
        tokio::spawn(async move {
            match accept_one(tcp, &cluster, &peers, &stop).await {
                Ok(()) => {}
                Err(e) => debug!(%addr, error = %e, "peer connection ended"),
            }
        });
    }
}

/// One incoming link: TLS (the client must present a cluster certificate), the greeting, then
/// the link's traffic until it drops.
async fn accept_one(
    tcp: TcpStream,
    cluster: &ClusterConfig,
    peers: &Arc<Peers>,
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
    let (peer, state) = check_greeting(cluster, peers, &their_cluster, node)?;
    if peer.id >= cluster.node_id {
        return Err(LinkError::Refused(format!("node {} dials, not this one", peer.id)));
    }
    if !cluster.certifies(&certs, &peer.name) {
        warn!(peer = %peer.name, "refused a peer whose certificate is not for the node it named");
        return Err(LinkError::Refused(format!("certificate is not for {}", peer.name)));
    }
    write_frame(&mut tls, &Frame::Hello { cluster: cluster.id.clone(), node: cluster.node_id }).await?;
    run_link(tls, buf, state.clone(), peers.clone(), stop).await
}

/// Keeps the link to `peer` up: dial, greet, carry traffic; after a failure, again with backoff.
async fn dial_loop(
    cluster: Arc<ClusterConfig>,
    peer: Peer,
    state: Arc<PeerUp>,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = dial_once(&cluster, &peer, &state, &peers, &stop, &mut backoff) => r,
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
    state: &Arc<PeerUp>,
    peers: &Arc<Peers>,
    stop: &CancellationToken,
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
    *backoff = Duration::from_millis(100);
    run_link(tls, buf, state.clone(), peers.clone(), stop).await
}

/// A greeted link, the same on both sides: a writer sends queued frames and a heartbeat; the
/// reader answers heartbeats, runs requests through the services and hands responses to the
/// calls waiting for them. Silence longer than `SILENCE` ends the link.
async fn run_link<S>(
    stream: S,
    mut buf: BytesMut,
    peer: Arc<PeerUp>,
    peers: Arc<Peers>,
    stop: &CancellationToken,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Frame>(1024);
    let no = peer.attach(tx.clone());
    let _link = Link::new(&peer);
    let writer = async {
        let mut tick = tokio::time::interval(HEARTBEAT);
        let mut out = BytesMut::new();
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f.encode(&mut out),
                    None => return Ok::<(), LinkError>(()),
                },
                _ = tick.tick() => Frame::Ping.encode(&mut out),
            }
            // Whatever else is queued goes in the same write.
            while out.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(f) => f.encode(&mut out),
                    Err(_) => break,
                }
            }
            wr.write_all(&out).await?;
            wr.flush().await?;
            out.clear();
        }
    };
    let reader = async {
        loop {
            match read_frame(&mut rd, &mut buf).await? {
                Frame::Ping => {
                    let _ = tx.send(Frame::Pong).await;
                }
                Frame::Pong => {}
                Frame::Request { id, service, payload } => {
                    let tx = tx.clone();
                    let handler = peers.handler(service);
                    let from = peer.id;
                    tokio::spawn(async move {
                        let result = match handler {
                            Some(h) => h(from, payload).await,
                            None => Err(format!("this node offers no service {service}")),
                        };
                        let _ = tx.send(Frame::Response { id, result }).await;
                    });
                }
                Frame::Response { id, result } => peer.answer(id, result),
                Frame::Hello { .. } => return Err(LinkError::Refused("a second greeting".into())),
            }
        }
    };
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = stop.cancelled() => Ok(()),
    };
    peer.detach(no);
    result
}

fn check_greeting<'a>(
    cluster: &'a ClusterConfig,
    peers: &'a Peers,
    their_cluster: &str,
    node: u32,
) -> Result<(&'a Peer, &'a Arc<PeerUp>), LinkError> {
    if their_cluster != cluster.id {
        warn!(their_cluster, "refused a peer of another cluster");
        return Err(LinkError::Refused(format!("cluster `{their_cluster}` is not `{}`", cluster.id)));
    }
    cluster
        .peers
        .iter()
        .zip(&peers.list)
        .find(|(p, _)| p.id == node)
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
