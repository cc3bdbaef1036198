//! One pgmix node: the client listener, a task per connection, the metrics endpoint and a health
//! probe of the local Postgres, all stopped through one root cancellation token.
//!
//! Shutdown: stop accepting, let sessions finish their current transaction (up to
//! `limits.shutdown_drain_secs`), then close the rest with 57P01.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::{self, BackendError, CancelRegistry};
use crate::config::NodeConfig;
use crate::frontend::{self, FrontendError, Handshake};
use crate::metrics::{self, Metrics, MetricsHandle};

use crate::schema::Schema;
use crate::schema::databases::Databases;
use crate::session::stop::Level;
use crate::session::{Session, SessionCtx};

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: std::io::Error },
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    #[error("the schema file does not fit the database:\n{0}")]
    SchemaCheck(String),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Migrate(#[from] crate::schema::migrate::MigrateError),
    #[error(transparent)]
    Consensus(#[from] crate::consensus::ConsensusError),
}

/// Loads the schema file and checks it against the local Postgres catalog. Errors stop the
/// node from starting; warnings are logged. Views found in the catalog are treated as strong.
pub async fn load_schema(cfg: &NodeConfig, metrics: MetricsHandle) -> Result<Databases, NodeError> {
    let (schema, file) = match &cfg.schema_path {
        Some(path) => (Schema::load(path)?, Some(path.display().to_string())),
        None => {
            info!(node = %cfg.node_name, "no schema file: every table is strong");
            (Schema::default(), None)
        }
    };
    let live = Databases::new(schema, file, cfg.backend.clone(), metrics, cfg.cluster.clone().map(Arc::new));
    match live.check_startup().await? {
        Ok(errors) if !errors.is_empty() => return Err(NodeError::SchemaCheck(errors.join("\n"))),
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "cannot read the catalog of the local Postgres: the schema file is not checked against it")
        }
    }
    Ok(live)
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: MetricsHandle,
    pub name: String,
    /// The node's consensus, in a cluster.
    pub consensus: Option<Arc<crate::consensus::Consensus>>,
    /// Steps of the strong commit where a test stops this node.
    pub failpoints: Arc<crate::strong::failpoint::FailPoints>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl NodeHandle {
    /// Asks the node to stop; `wait` returns once it has.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, NodeError> {
    let metrics: MetricsHandle = Arc::new(Metrics::default());
    let schema = Arc::new(load_schema(&cfg, metrics.clone()).await?);
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind(cfg.listen).await.map_err(|cause| NodeError::Bind { addr: cfg.listen, cause })?;
    let addr = listener.local_addr().map_err(|cause| NodeError::Bind { addr: cfg.listen, cause })?;
    let shutdown = CancellationToken::new();

    let metrics_addr = match cfg.metrics_listen {
        Some(a) => {
            let l = metrics::bind(a).await.map_err(|cause| NodeError::Bind { addr: a, cause })?;
            let bound = l.local_addr().ok();
            tokio::spawn(metrics::serve(l, metrics.clone(), cfg.node_name.clone(), shutdown.clone()));
            bound
        }
        None => None,
    };
    tokio::spawn(probe_backend(cfg.clone(), metrics.clone(), shutdown.clone()));
    let mut consensus = None;
    let mut strong = None;
    let failpoints = Arc::new(crate::strong::failpoint::FailPoints::new(shutdown.clone()));
    if let Some(cluster) = &cfg.cluster {
        let cluster = Arc::new(cluster.clone());
        let peers = crate::peer::start(cluster.clone(), shutdown.clone()).await?;
        let _ = metrics.peers.set(peers.clone());
        let (ddl_tx, mut ddl_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (databases, stop) = (schema.clone(), shutdown.clone());
        tokio::spawn(async move {
            // DDL applied from the log changes the catalog pgmix classifies against.
            loop {
                let db = tokio::select! {
                    _ = stop.cancelled() => return,
                    db = ddl_rx.recv() => match db { Some(db) => db, None => return },
                };
                if let Ok(live) = databases.get(&db).await {
                    live.refresh_in_background();
                }
            }
        });
        consensus = Some(
            crate::consensus::Consensus::start(
                cluster.clone(),
                &cfg.backend,
                peers.clone(),
                metrics.clone(),
                shutdown.clone(),
                ddl_tx,
                failpoints.clone(),
            )
            .await?,
        );
        strong = consensus.as_ref().map(|c| {
            crate::strong::Strong::new(
                c.clone(),
                cluster.strong_timeout,
                cluster.strong_chunk_bytes,
                cfg.backend.clone(),
                failpoints.clone(),
                schema.clone(),
            )
        });
        let (open_tx, mut open_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (opened_tx, opened_rx) = tokio::sync::mpsc::unbounded_channel();
        crate::replicate::Replicator::start(
            cfg.backend.clone(),
            peers,
            metrics.clone(),
            shutdown.clone(),
            open_tx,
            opened_rx,
        );
        schema.notify_opened(opened_tx);
        // Databases a peer asks for are opened here as a client's would be.
        let (databases, stop) = (schema.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let db = tokio::select! {
                    _ = stop.cancelled() => return,
                    db = open_rx.recv() => match db { Some(db) => db, None => return },
                };
                if let Err(e) = databases.get(&db).await {
                    warn!(database = %db, "a peer replicates this database, but it cannot be opened here: {e}");
                }
            }
        });
    }

    let ctx =
        SessionCtx { cfg: cfg.clone(), metrics: metrics.clone(), stop: Default::default(), databases: schema, strong };
    let task = tokio::spawn(accept_loop(listener, ctx, shutdown.clone()));
    info!(node = %cfg.node_name, %addr, "pgmix node listening");
    if let Some(Err(e)) = cfg.tls.as_ref().map(|t| &t.end_point) {
        tracing::warn!(reason = %e, "SCRAM-SHA-256-PLUS (channel binding) is not offered: {e}; clients that require channel binding cannot log in");
    }
    Ok(NodeHandle { addr, metrics_addr, metrics, name: cfg.node_name.clone(), consensus, failpoints, shutdown, task })
}

async fn accept_loop(listener: TcpListener, ctx: SessionCtx, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let cancels = CancelRegistry::default();
    let gate = Arc::new(frontend::Gate::new(&ctx.cfg, ctx.metrics.clone()));
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        Metrics::inc(&ctx.metrics.connections_total);
        let span =
            info_span!("conn", node = %ctx.cfg.node_name, session = next_id, %peer, user = tracing::field::Empty);
        tracker.spawn(serve_connection(tcp, ctx.clone(), cancels.clone(), gate.clone()).instrument(span));
    }
    drop(listener);
    tracker.close();
    info!(node = %ctx.cfg.node_name, sessions = tracker.len(), "shutting down: draining sessions");
    ctx.stop.raise(Level::Drain);
    if tokio::time::timeout(ctx.cfg.shutdown_drain, tracker.wait()).await.is_err() {
        warn!(sessions = tracker.len(), "drain timed out: closing remaining sessions");
        ctx.stop.raise(Level::Abort);
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    info!(node = %ctx.cfg.node_name, "node stopped");
}

async fn serve_connection(tcp: TcpStream, ctx: SessionCtx, cancels: CancelRegistry, gate: Arc<frontend::Gate>) {
    let cfg = &ctx.cfg;
    let hello = match tokio::time::timeout(cfg.auth_timeout, frontend::handshake(tcp, cfg, &gate)).await {
        Err(_) => {
            debug!("client did not finish logging in in time");
            return;
        }
        Ok(Ok(Handshake::Cancel { pid, secret, stream })) => {
            Metrics::inc(&ctx.metrics.cancel_requests_total);
            match cancels.cancel(pid, secret).await {
                Ok(found) => debug!(found, "cancel request"),
                Err(e) => warn!(error = %e, "could not forward cancel request"),
            }
            drop(stream);
            return;
        }
        Ok(Ok(Handshake::Session(hello))) => hello,
        Ok(Err(FrontendError::Refused(e))) => {
            if e.code == crate::sqlstate::code::INVALID_PASSWORD {
                Metrics::inc(&ctx.metrics.auth_failures_total);
            }
            Metrics::inc(&ctx.metrics.refused_total);
            info!(code = e.code, reason = %e.message, "refused client");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "client left during start-up");
            return;
        }
    };
    tracing::Span::current().record("user", hello.user.as_str());
    if matches!(hello.stream, tokio_util::either::Either::Right(_)) {
        Metrics::inc(&ctx.metrics.tls_connections_total);
    }
    let mut client = hello.stream;
    let login = backend::Login { role: &hello.login.role, password: hello.login.password.as_deref() };
    let backend = match backend::connect(&cfg.backend, login, &hello.database, &hello.params).await {
        Ok(b) => b,
        Err(e) => {
            Metrics::inc(&ctx.metrics.backend_connect_failures_total);
            let mut buf = BytesMut::new();
            match &e {
                // Postgres's own refusal (unknown database, too many clients): pass it on as is.
                BackendError::Refused { raw, .. } => buf.extend_from_slice(raw),
                other => {
                    if other.node_unhealthy() {
                        ctx.metrics.backend_up.store(false, Relaxed);
                    }
                    other.to_client(&cfg.node_name).encode(&mut buf)
                }
            }
            let _ = client.write_all(&buf).await;
            let _ = client.shutdown().await;
            info!(error = %e, "no backend connection for client");
            return;
        }
    };

    // The first session of a database waits for its catalog check: its statements are classified
    // against that database's tables from the first one on.
    let schema = match ctx.databases.get(&hello.database).await {
        Ok(s) => s,
        Err(reason) => {
            let e = crate::sqlstate::ClientError::fatal(
                crate::sqlstate::code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("pgmix node \"{}\" cannot serve database \"{}\": {reason}", cfg.node_name, hello.database),
            );
            let mut buf = BytesMut::new();
            e.encode(&mut buf);
            let _ = client.write_all(&buf).await;
            let _ = client.shutdown().await;
            info!(%reason, "refused a database pgmix cannot serve");
            return;
        }
    };
    let guard = cancels.register(cfg.backend.addr.clone(), backend.pid, backend.secret);
    // The greeting ends with ReadyForQuery (6 bytes); our BackendKeyData goes right before it.
    let mut buf = BytesMut::with_capacity(backend.greeting.len() + 16);
    let split = backend.greeting.len().saturating_sub(6);
    buf.extend_from_slice(&backend.greeting[..split]);
    crate::protocol::codec::backend_key_data(guard.pid, guard.secret, &mut buf);
    buf.extend_from_slice(&backend.greeting[split..]);
    if client.write_all(&buf).await.is_err() || client.flush().await.is_err() {
        return;
    }

    ctx.metrics.connections_active.fetch_add(1, Relaxed);
    let login = crate::session::strong::ClientLogin {
        role: hello.login.role.clone(),
        password: hello.login.password.clone(),
        database: hello.database.clone(),
    };
    let (session, pending) = Session::new(client, backend, ctx.clone(), schema, login, guard.redirect.clone());
    let result = session.run(pending).await;
    ctx.metrics.connections_active.fetch_sub(1, Relaxed);
    drop(guard);
    match result {
        Ok(end) => debug!(?end, "session ended"),
        Err(e) => info!(error = %e, "session ended with an error"),
    }
}

/// Keeps the `backend_up` gauge true to whether the local Postgres accepts connections.
async fn probe_backend(cfg: Arc<NodeConfig>, metrics: MetricsHandle, shutdown: CancellationToken) {
    let mut was_up = None;
    loop {
        let up = backend::open_stream(&cfg.backend.addr).await.is_ok();
        metrics.backend_up.store(up, Relaxed);
        if was_up != Some(up) {
            if up {
                info!(node = %cfg.node_name, backend = %cfg.backend.addr, "local Postgres is up");
            } else {
                warn!(node = %cfg.node_name, backend = %cfg.backend.addr, "local Postgres is unreachable: node unhealthy");
            }
            was_up = Some(up);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
