//! One client session: the forwarding data path between a client and its backend connection.
//!
//! Bytes flow through without their rows being decoded. The session frames both directions (see
//! `protocol::frames`) so that it knows statement boundaries (Query, Parse, Sync), the prepared
//! statements a client holds, and the transaction status from each ReadyForQuery; everything else
//! is passed on in the same buffer it arrived in. Reading one side only when the other side has
//! taken what was read before gives backpressure: a client that stops reading stops the backend.
//!
//! Crash and failure meaning: a session holds no durable state. If the client goes away, the
//! backend connection is dropped and Postgres rolls back whatever transaction was open. If the
//! backend goes away, the client is told (57P01 from Postgres, or 08006 from pgmix) and closed.

pub mod route;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendConn, BackendStream};
use crate::config::NodeConfig;
use crate::frontend::ClientStream;
use crate::metrics::{Metrics, MetricsHandle};
use crate::protocol::frames::{FrameError, Framer, Step};
use crate::protocol::messages;
use crate::sqlstate::{ClientError, code};
use route::{Route, Router};
use state::{Prepared, SessionState, TxStatus};

const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("client connection: {0}")]
    Client(std::io::Error),
    #[error("backend connection: {0}")]
    Backend(std::io::Error),
    #[error("client protocol violation: {0}")]
    ClientProtocol(FrameError),
    #[error("backend protocol violation: {0}")]
    BackendProtocol(FrameError),
}

/// How a session ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    ClientTerminated,
    ClientVanished,
    BackendClosed,
    Shutdown,
}

/// What a session needs from its node.
#[derive(Clone)]
pub struct SessionCtx {
    pub cfg: Arc<NodeConfig>,
    pub metrics: MetricsHandle,
    /// Stop at the next quiet point (between transactions).
    pub drain: CancellationToken,
    /// Stop now.
    pub abort: CancellationToken,
    pub schema: Arc<crate::schema::live::LiveSchema>,
}

pub struct Session {
    client: ClientStream,
    backend: BackendStream,
    ctx: SessionCtx,
    state: SessionState,
    router: Router,
    client_framer: Framer,
    backend_framer: Framer,
    /// Type of the last whole message the backend sent, to know whether it already said goodbye.
    last_backend_tag: u8,
    /// The backend's own cancel key, to stop a running query whose client has gone.
    backend_key: (i32, i32),
}

/// Client messages the session looks at whole; everything else may stream through in pieces.
fn client_inspects(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'C' | b'S' | b'X' | b'H')
}

fn backend_inspects(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E')
}

impl Session {
    pub fn new(client: ClientStream, backend: BackendConn, ctx: SessionCtx) -> (Self, BytesMut) {
        let max = ctx.cfg.max_message_bytes;
        let router = Router::new(ctx.schema.clone(), ctx.metrics.clone());
        let session = Self {
            client,
            backend: backend.stream,
            ctx,
            state: SessionState::default(),
            router,
            client_framer: Framer::new(max),
            backend_framer: Framer::new(max),
            last_backend_tag: 0,
            backend_key: (backend.pid, backend.secret),
        };
        (session, backend.leftover)
    }

    /// Runs the session until one side ends it. `pending` holds backend bytes already read.
    pub async fn run(mut self, bbuf: BytesMut) -> Result<SessionEnd, SessionError> {
        let result = self.pump(bbuf).await;
        let running = self.state.awaiting_ready > 0;
        if running && matches!(result, Ok(SessionEnd::ClientVanished) | Err(SessionError::Client(_))) {
            // Postgres only notices a closed socket when it next talks to it; a long query would
            // keep running (and its transaction open) after the client is gone. Cancel it, then
            // dropping the connection ends the backend and rolls the transaction back.
            let (pid, secret) = self.backend_key;
            if let Err(e) = crate::backend::send_cancel(&self.ctx.cfg.backend.addr, pid, secret).await {
                tracing::warn!(error = %e, "could not cancel the query of a vanished client");
            }
        }
        result
    }

    async fn pump(&mut self, mut bbuf: BytesMut) -> Result<SessionEnd, SessionError> {
        let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
        bbuf.reserve(READ_CHUNK);
        let mut draining = false;
        // Made once: a fresh `cancelled()` per loop turn would register with the node-wide token
        // (a shared mutex) on every message, in every session.
        let drain = self.ctx.drain.clone().cancelled_owned();
        let abort = self.ctx.abort.clone().cancelled_owned();
        tokio::pin!(drain, abort);
        if !bbuf.is_empty() {
            self.forward_backend(&mut bbuf).await?;
        }
        loop {
            if draining && self.state.is_quiet() && !self.backend_framer.mid_message() {
                self.goodbye(ClientError::fatal(
                    code::ADMIN_SHUTDOWN,
                    "terminating connection because pgmix is shutting down",
                ))
                .await;
                return Ok(SessionEnd::Shutdown);
            }
            cbuf.reserve(READ_CHUNK);
            bbuf.reserve(READ_CHUNK);
            tokio::select! {
                _ = &mut drain, if !draining => draining = true,
                _ = &mut abort => {
                    if !self.backend_framer.mid_message() {
                        self.goodbye(ClientError::fatal(code::ADMIN_SHUTDOWN, "terminating connection because pgmix is shutting down")).await;
                    }
                    return Ok(SessionEnd::Shutdown);
                }
                r = self.client.read_buf(&mut cbuf) => {
                    match r {
                        Ok(0) => return Ok(SessionEnd::ClientVanished),
                        Ok(n) => self.ctx.metrics.bytes_from_clients.fetch_add(n as u64, Relaxed),
                        Err(e) => return Err(SessionError::Client(e)),
                    };
                    if self.forward_client(&mut cbuf).await? {
                        return Ok(SessionEnd::ClientTerminated);
                    }
                }
                r = self.backend.read_buf(&mut bbuf) => {
                    match r {
                        Ok(0) => {
                            if !self.backend_framer.mid_message() && self.last_backend_tag != b'E' {
                                self.goodbye(ClientError::fatal(code::CONNECTION_FAILURE,
                                    "pgmix lost its connection to the local Postgres; reconnect to retry")).await;
                            }
                            return Ok(SessionEnd::BackendClosed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !self.backend_framer.mid_message() {
                                self.goodbye(ClientError::fatal(code::CONNECTION_FAILURE,
                                    format!("pgmix lost its connection to the local Postgres ({e}); reconnect to retry"))).await;
                            }
                            return Err(SessionError::Backend(e));
                        }
                    }
                    self.forward_backend(&mut bbuf).await?;
                }
            }
        }
    }

    /// Frames what the client sent, passes each statement through the routing point, and forwards
    /// every complete or pass-through byte in one write. Returns true when the client terminated.
    async fn forward_client(&mut self, cbuf: &mut BytesMut) -> Result<bool, SessionError> {
        // Bytes [written, fwd) are ready to go; a replaced message is skipped over.
        let mut written = 0;
        let mut fwd = 0;
        let mut terminated = false;
        let mut violation = None;
        loop {
            match self.client_framer.step(&cbuf[fwd..], client_inspects) {
                Ok(Step::Message { tag, body, len }) => {
                    if tag == b'X' {
                        fwd += len;
                        terminated = true;
                        break;
                    }
                    let replacement =
                        on_client_message(&mut self.state, &mut self.router, &self.ctx.metrics, tag, body);
                    if let Some(replacement) = replacement {
                        let before = &cbuf[written..fwd];
                        self.backend.write_all(before).await.map_err(SessionError::Backend)?;
                        self.backend.write_all(&replacement).await.map_err(SessionError::Backend)?;
                        written = fwd + len;
                    }
                    fwd += len;
                }
                Ok(Step::Pass(n)) if n > 0 => fwd += n,
                Ok(_) => break,
                Err(e) => {
                    violation = Some(e);
                    break;
                }
            }
        }
        if fwd > written {
            self.backend.write_all(&cbuf[written..fwd]).await.map_err(SessionError::Backend)?;
        }
        cbuf.advance(fwd);
        if let Some(e) = violation {
            Metrics::inc(&self.ctx.metrics.protocol_errors_total);
            let ce = match &e {
                FrameError::TooLarge { .. } => ClientError::fatal(code::PROGRAM_LIMIT_EXCEEDED, e.to_string())
                    .with_hint("Send a smaller statement, or raise limits.max_message_bytes in proxy.toml."),
                FrameError::BadLength { .. } => ClientError::fatal(code::PROTOCOL_VIOLATION, e.to_string()),
            };
            // Wait for the backend to finish what it owes the client, so the error is not spliced
            // into the middle of a message.
            if !self.backend_framer.mid_message() {
                self.goodbye(ce).await;
            }
            return Err(SessionError::ClientProtocol(e));
        }
        Ok(terminated)
    }

    /// Frames what the backend sent, notes each ReadyForQuery, and forwards it all.
    async fn forward_backend(&mut self, bbuf: &mut BytesMut) -> Result<(), SessionError> {
        let mut fwd = 0;
        let mut result = Ok(());
        loop {
            match self.backend_framer.step(&bbuf[fwd..], backend_inspects) {
                Ok(Step::Message { tag, body, len }) => {
                    fwd += len;
                    self.last_backend_tag = tag;
                    if tag == b'Z' {
                        if let Some(tx) = body.first().copied().and_then(TxStatus::from_byte) {
                            self.state.tx = tx;
                        }
                        self.state.awaiting_ready = self.state.awaiting_ready.saturating_sub(1);
                        // The DDL has committed or rolled back: let the node re-read the catalog.
                        if self.state.ddl_pending && self.state.is_quiet() {
                            self.state.ddl_pending = false;
                            self.router.ddl_done();
                        }
                    }
                }
                Ok(Step::Pass(n)) if n > 0 => {
                    self.last_backend_tag = 0;
                    fwd += n;
                }
                Ok(_) => break,
                Err(e) => {
                    result = Err(SessionError::BackendProtocol(e));
                    break;
                }
            }
        }
        if fwd > 0 {
            self.client.write_all(&bbuf[..fwd]).await.map_err(SessionError::Client)?;
            self.client.flush().await.map_err(SessionError::Client)?;
            self.ctx.metrics.bytes_to_clients.fetch_add(fwd as u64, Relaxed);
            bbuf.advance(fwd);
        }
        result
    }

    /// Sends a final error to the client and closes its side.
    async fn goodbye(&mut self, e: ClientError) {
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        let _ = self.client.write_all(&buf).await;
        let _ = self.client.flush().await;
        let _ = self.client.shutdown().await;
        let _ = self.backend.write_all(&[b'X', 0, 0, 0, 4]).await;
    }
}

/// The statement boundary: every Query and Parse passes the routing point here. Returns a
/// message to send instead of this one, for a statement pgmix refuses.
fn on_client_message(
    state: &mut SessionState,
    router: &mut Router,
    metrics: &Metrics,
    tag: u8,
    body: &[u8],
) -> Option<BytesMut> {
    match tag {
        b'Q' => {
            Metrics::inc(&metrics.queries_total);
            state.awaiting_ready += 1;
            let sql = messages::query_text(body)?;
            let (class, route, reason) = router.route_query(sql);
            state.ddl_pending |= class == crate::classify::Class::Ddl;
            (route == Route::Refuse).then(|| refusal_query(&reason))
        }
        b'P' => {
            Metrics::inc(&metrics.parses_total);
            let (name, sql) = messages::parse_message(body)?;
            let (class, route, reason) = router.route_parse(sql);
            state.ddl_pending |= class == crate::classify::Class::Ddl;
            state.prepared.insert(name.to_owned(), Prepared { sql: Arc::from(sql), class, route });
            (route == Route::Refuse).then(|| refusal_parse(name, &reason))
        }
        b'C' => {
            if let Some((b'S', name)) = messages::close_target(body) {
                state.prepared.remove(name);
            }
            None
        }
        b'S' => {
            state.awaiting_ready += 1;
            None
        }
        _ => None,
    }
}

/// A statement that makes the backend raise pgmix's refusal, so the error reaches the client in
/// its proper place in the response stream, with a real SQLSTATE.
fn refusal_sql(reason: &str) -> String {
    let quote = |s: &str| format!("$pgmix${}$pgmix$", s.replace("$pgmix$", ""));
    format!(
        "DO $pgmixdo$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}, HINT = {}; END $pgmixdo$",
        code::FEATURE_NOT_SUPPORTED,
        quote(reason),
        quote("Use plain BEGIN/COMMIT: pgmix commits strong transactions atomically on every node itself.")
    )
}

fn refusal_query(reason: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    // Only fails for a NUL inside the text, which a reason never holds.
    let _ = postgres_protocol::message::frontend::query(&refusal_sql(reason), &mut buf);
    buf
}

fn refusal_parse(name: &str, reason: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    let _ = postgres_protocol::message::frontend::parse(name, &refusal_sql(reason), std::iter::empty(), &mut buf);
    buf
}
