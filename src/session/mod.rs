//! One client session: the forwarding data path between a client and its backend connection.
//!
//! Bytes flow through without their rows being decoded. The session frames both directions (see
//! `protocol::frames`) so that it knows statement boundaries (Query, Parse, Sync), the prepared
//! statements a client holds, and the transaction status from each ReadyForQuery; everything else
//! is passed on in the same buffer it arrived in. The two directions move independently (a
//! session that waited on one would deadlock a pipelining client, see `poll_io`), and each stops
//! reading while 64 KiB wait to be sent: a client that stops reading stops the backend.
//!
//! Crash and failure meaning: a session holds no durable state. If the client goes away, the
//! backend connection is dropped and Postgres rolls back whatever transaction was open. If the
//! backend goes away, the client is told (57P01 from Postgres, or 08006 from pgmix) and closed.

pub mod answer;
mod begin;
pub mod core;
mod flow;
mod prepared;
pub mod route;
pub mod state;
pub mod stop;
pub mod strong;
mod temporary;
mod unit;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use crate::backend::{BackendConn, BackendStream};
use crate::config::NodeConfig;
use crate::frontend::ClientStream;
use crate::metrics::{Metrics, MetricsHandle};
use crate::protocol::frames::{FrameError, Framer, Step};
use crate::protocol::{codec, messages};
use crate::sqlstate::{ClientError, code};
use core::{Action, Core, Reply};
use flow::Flow;
use route::Router;

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
    /// Drain: stop at the next quiet point (between transactions); abort: stop now.
    pub stop: Arc<stop::StopSignal>,
    /// The schema of each database clients open.
    pub databases: Arc<crate::schema::databases::Databases>,
    /// The strong path, on a node of a cluster.
    pub strong: Option<Arc<crate::strong::Strong>>,
}

pub struct Session {
    client: ClientStream,
    backend: BackendStream,
    ctx: SessionCtx,
    /// What to do with each message (no I/O): the session's mode and protocol state.
    core: Core,
    client_framer: Framer,
    backend_framer: Framer,
    /// The backend's own cancel key, to stop a running query whose client has gone.
    backend_key: (i32, i32),
    /// The client sent Terminate: pass it on, then end.
    client_terminated: bool,
    /// Bytes were written to the client since its last flush.
    client_unflushed: bool,
    /// The backend stopped taking bytes (it is exiting); what it said last is still read.
    backend_deaf: bool,
    /// Who the client logged in as (a relay session on the leader logs in the same way).
    login: strong::ClientLogin,
    relay: strong::RelayState,
    /// Where this session's cancel requests go while its statement is relayed.
    cancel: crate::backend::cancel::Redirect,
}

/// Backend messages the session looks at whole: ReadyForQuery, ErrorResponse, ParameterStatus
/// (for client_encoding), and the replies pgmix may have to drop (ParseComplete, CloseComplete).
fn backend_inspects(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E' | b'S' | b'1' | b'3')
}

impl Session {
    /// `schema`: that of the session's database; `role`: the role the session logged in as.
    pub fn new(
        client: ClientStream,
        backend: BackendConn,
        ctx: SessionCtx,
        schema: Arc<crate::schema::live::LiveSchema>,
        login: strong::ClientLogin,
        cancel: crate::backend::cancel::Redirect,
    ) -> (Self, BytesMut) {
        let max = ctx.cfg.max_message_bytes;
        let cluster = ctx.strong.is_some();
        let mut router = Router::new(schema, ctx.metrics.clone(), backend.search_path.as_deref(), &login.role);
        if cluster {
            router.track_parses();
        }
        // The start-up ParameterStatus messages (client_encoding among them) reached the client
        // in the greeting, before the session began.
        for (tag, body) in messages::iter(&backend.greeting) {
            if tag == b'S'
                && let Some((name, value)) = messages::parameter_status(body)
            {
                router.set_parameter(name, value);
            }
        }
        let metrics = ctx.metrics.clone();
        let session = Self {
            client,
            backend: backend.stream,
            ctx,
            core: Core::new(router, metrics, cluster),
            client_framer: Framer::new(max),
            backend_framer: Framer::new(max),
            backend_key: (backend.pid, backend.secret),
            client_terminated: false,
            client_unflushed: false,
            backend_deaf: false,
            login,
            relay: strong::RelayState::default(),
            cancel,
        };
        (session, backend.leftover)
    }

    /// Runs the session until one side ends it. `pending` holds backend bytes already read.
    pub async fn run(mut self, bbuf: BytesMut) -> Result<SessionEnd, SessionError> {
        let result = self.pump(bbuf).await;
        let running = self.core.state.awaiting_ready > 0;
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

    async fn pump(&mut self, bbuf: BytesMut) -> Result<SessionEnd, SessionError> {
        let mut up = Flow::new(BytesMut::with_capacity(READ_CHUNK));
        let mut down = Flow::new(bbuf);
        let mut draining = false;
        let mut stop = self.ctx.stop.watch();
        self.frame_backend(&mut down).map_err(SessionError::BackendProtocol)?;
        loop {
            if draining && self.at_quiet_point() {
                self.goodbye(&mut down, Some(shutting_down())).await;
                return Ok(SessionEnd::Shutdown);
            }
            let event = std::future::poll_fn(|cx| match stop.poll_level(cx) {
                stop::Level::Abort => Poll::Ready(Ok(Event::Abort)),
                stop::Level::Drain if !draining => Poll::Ready(Ok(Event::Drain)),
                // Draining, and the transaction this session waited for has just finished.
                _ => match self.poll_io(cx, &mut up, &mut down) {
                    Poll::Pending if draining && self.at_quiet_point() => Poll::Ready(Ok(Event::Drain)),
                    other => other,
                },
            })
            .await;
            match event {
                Ok(Event::Strong) => {
                    if let Some(end) = self.strong_path(&mut up, &mut down).await? {
                        return Ok(end);
                    }
                }
                Ok(Event::Drain) => draining = true,
                Ok(Event::Abort) => {
                    self.goodbye(&mut down, Some(shutting_down())).await;
                    return Ok(SessionEnd::Shutdown);
                }
                Ok(Event::ClientTerminated) => return Ok(SessionEnd::ClientTerminated),
                Ok(Event::ClientVanished) => return Ok(SessionEnd::ClientVanished),
                Ok(Event::BackendClosed) => {
                    let e = (self.core.last_backend_tag != b'E').then(|| {
                        ClientError::fatal(
                            code::CONNECTION_FAILURE,
                            "pgmix lost its connection to the local Postgres; reconnect to retry",
                        )
                    });
                    self.goodbye(&mut down, e).await;
                    return Ok(SessionEnd::BackendClosed);
                }
                Err(SessionError::Backend(e)) => {
                    // After Postgres's own FATAL, a reset is just its exit: nothing to add.
                    let ce = (self.core.last_backend_tag != b'E').then(|| {
                        let msg = format!("pgmix lost its connection to the local Postgres ({e}); reconnect to retry");
                        ClientError::fatal(code::CONNECTION_FAILURE, msg)
                    });
                    self.goodbye(&mut down, ce).await;
                    return Err(SessionError::Backend(e));
                }
                Err(SessionError::ClientProtocol(e)) => {
                    Metrics::inc(&self.ctx.metrics.protocol_errors_total);
                    let ce = match &e {
                        FrameError::TooLarge { .. } => ClientError::fatal(code::PROGRAM_LIMIT_EXCEEDED, e.to_string())
                            .with_hint("Send a smaller statement, or raise limits.max_message_bytes in proxy.toml."),
                        FrameError::BadLength { .. } => ClientError::fatal(code::PROTOCOL_VIOLATION, e.to_string()),
                    };
                    self.goodbye(&mut down, Some(ce)).await;
                    return Err(SessionError::ClientProtocol(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Between transactions, with nothing outstanding: where a session may be closed.
    fn at_quiet_point(&self) -> bool {
        self.core.at_rest() && !self.backend_framer.mid_message()
    }

    /// Runs the transaction the core diverted (see `strong`), then goes back to forwarding.
    /// Some: the session is over.
    async fn strong_path(&mut self, up: &mut Flow, down: &mut Flow) -> Result<Option<SessionEnd>, SessionError> {
        loop {
            let Some(strong) = self.ctx.strong.clone() else { return Ok(None) };
            // What the backend said so far goes out first; what the client sent and was framed (a
            // stand-in, say) goes in first.
            self.client.write_all(&down.buf[..down.ready]).await.map_err(SessionError::Client)?;
            self.client.flush().await.map_err(SessionError::Client)?;
            down.buf.advance(down.ready);
            down.ready = 0;
            if up.ready > 0 {
                self.backend.write_all(&up.buf[..up.ready]).await.map_err(SessionError::Backend)?;
                up.buf.advance(up.ready);
                up.ready = 0;
            }
            let mut pending = std::mem::take(&mut up.buf);
            let after = strong::run(self, strong, &mut pending).await;
            up.buf = pending;
            match after? {
                strong::After::Resume => {
                    // The client may have sent more already.
                    self.frame_client(up, down).map_err(SessionError::ClientProtocol)?;
                    if !self.core.diverted() {
                        return Ok(None);
                    }
                }
                strong::After::End(end) => return Ok(Some(end)),
            }
        }
    }

    /// Moves bytes both ways until something ends the session or nothing can move. Each direction
    /// goes on independently of the other: a session that waited for the backend to take the
    /// client's bytes before reading the backend's replies would deadlock a pipelining client
    /// whenever the backend waits, in turn, for its replies to be read.
    ///
    /// Each side is polled until it says Pending, which is what registers the task's waker with
    /// it, and not again after that: a second Pending poll costs a lock and finds nothing new.
    fn poll_io(&mut self, cx: &mut Context<'_>, up: &mut Flow, down: &mut Flow) -> Poll<Result<Event, SessionError>> {
        // Client -> backend.
        for turn in 0.. {
            if self.backend_deaf {
                break;
            }
            if let Err(e) = up.send(&mut self.backend, cx) {
                // The backend is exiting (terminated, crashed). Its last words, a FATAL as a rule,
                // may still wait to be read: the backend direction decides how the session ends.
                tracing::debug!(error = %e, "the backend stopped taking bytes");
                self.backend_deaf = true;
                up.buf.clear();
                up.ready = 0;
                break;
            }
            if self.client_terminated {
                if up.ready == 0 {
                    return Poll::Ready(Ok(Event::ClientTerminated));
                }
                break;
            }
            if self.core.diverted() {
                return Poll::Ready(Ok(Event::Strong));
            }
            if self.core.holding() {
                break;
            }
            // Full, and the backend is not taking bytes: its write readiness will wake us.
            if !up.wants_more() {
                break;
            }
            if turn == FAIR_TURNS {
                return yield_now(cx);
            }
            match poll_read_buf(Pin::new(&mut self.client), cx, &mut up.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientVanished)),
                Poll::Ready(Ok(n)) => {
                    self.ctx.metrics.bytes_from_clients.fetch_add(n as u64, Relaxed);
                    self.frame_client(up, down).map_err(SessionError::ClientProtocol)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::Client(e))),
                Poll::Pending => break,
            }
        }
        // Backend -> client.
        for turn in 0.. {
            let sent = down.send(&mut self.client, cx).map_err(SessionError::Client)?;
            if sent > 0 {
                self.ctx.metrics.bytes_to_clients.fetch_add(sent as u64, Relaxed);
                self.client_unflushed = true;
            }
            if down.ready == 0 && self.client_unflushed {
                // TLS holds written bytes in records until flushed; plain TCP flushes at once.
                match Pin::new(&mut self.client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.client_unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::Client(e))),
                    Poll::Pending => {}
                }
            }
            if !down.wants_more() {
                break;
            }
            if turn == FAIR_TURNS {
                return yield_now(cx);
            }
            match poll_read_buf(Pin::new(&mut self.backend), cx, &mut down.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::BackendClosed)),
                Poll::Ready(Ok(_)) => {
                    self.frame_backend(down).map_err(SessionError::BackendProtocol)?;
                    if !self.backend_framer.mid_message() && self.core.hold_over() {
                        // What the held statement waited for has come: decide on it now.
                        self.frame_client(up, down).map_err(SessionError::ClientProtocol)?;
                        if self.core.diverted() && down.ready == 0 {
                            return Poll::Ready(Ok(Event::Strong));
                        }
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::Backend(e))),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Frames what the client sent and asks the core about each message it looks at; what is
    /// framed becomes ready to send. A refused statement is replaced by its stand-in, or answered
    /// on the spot (see `answer`).
    fn frame_client(&mut self, up: &mut Flow, down: &mut Flow) -> Result<(), FrameError> {
        loop {
            if self.core.diverted() || self.core.holding() {
                return Ok(());
            }
            let starts_message = !self.client_framer.mid_message();
            let core = &self.core;
            match self.client_framer.step(&up.buf[up.ready..], |t| core.inspects(t))? {
                Step::Message { tag, body, len } => {
                    if tag == b'X' {
                        // Passed on so the backend ends cleanly; nothing after it is read.
                        up.ready += len;
                        self.client_terminated = true;
                        return Ok(());
                    }
                    // Answering directly only while the client takes its replies: a client that
                    // streams refused statements and reads nothing gets stand-ins, which the
                    // backend's backpressure slows down.
                    let can_answer = !self.backend_framer.mid_message() && down.ready < READ_CHUNK;
                    let msg = &up.buf[up.ready..up.ready + len];
                    match self.core.on_client(tag, body, msg, can_answer) {
                        Action::Forward => up.ready += len,
                        Action::Replace(with) => up.replace_next(len, &with),
                        Action::Answer(reply) => {
                            up.replace_next(len, &[]);
                            down.replace_next(0, &reply);
                        }
                        Action::Absorb => up.replace_next(len, &[]),
                        Action::Divert | Action::Hold => return Ok(()),
                    }
                }
                Step::Pass(n) if n > 0 => {
                    // The start of a large message (a Bind with big parameters, say).
                    if starts_message {
                        self.core.on_client_piece(up.buf[up.ready]);
                    }
                    up.ready += n;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Frames what the backend sent and asks the core about each message it looks at; all of it
    /// becomes ready to send, except replies the client must not see, and a stand-in's error,
    /// which is swapped for pgmix's own.
    fn frame_backend(&mut self, down: &mut Flow) -> Result<(), FrameError> {
        loop {
            match self.backend_framer.step(&down.buf[down.ready..], backend_inspects)? {
                Step::Message { tag, body, len } => match self.core.on_backend(tag, body) {
                    Reply::Pass => down.ready += len,
                    Reply::Drop => down.replace_next_dropping(len),
                    Reply::Replace(own) => down.replace_next(len, &own),
                },
                Step::Pass(n) if n > 0 => {
                    self.core.on_backend_piece(&down.buf[down.ready..down.ready + n]);
                    down.ready += n;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Sends the client what the backend already said, then a final error (unless that would land
    /// inside a message), and closes both sides.
    async fn goodbye(&mut self, down: &mut Flow, e: Option<ClientError>) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&down.buf[..down.ready]);
        if let Some(e) = e
            && !self.backend_framer.mid_message()
        {
            e.encode(&mut buf);
        }
        let _ = self.client.write_all(&buf).await;
        let _ = self.client.flush().await;
        let _ = self.client.shutdown().await;
        let mut bye = BytesMut::new();
        codec::terminate(&mut bye);
        let _ = self.backend.write_all(&bye).await;
        // Closing a socket with unread bytes in it sends a reset, and a reset can make the
        // client's kernel drop the goodbye just sent. Read what the client still sends until it
        // closes (it does, on a FATAL), for a short while.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            while matches!(self.client.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

fn shutting_down() -> ClientError {
    ClientError::fatal(code::ADMIN_SHUTDOWN, "terminating connection because pgmix is shutting down")
}

/// What ended one wait of the pump.
enum Event {
    /// The routing point diverted a statement to the strong path.
    Strong,
    Drain,
    Abort,
    ClientTerminated,
    ClientVanished,
    BackendClosed,
}

/// Reads per direction in one poll before the session lets other sessions on its thread run.
const FAIR_TURNS: usize = 32;

/// Gives the thread to other tasks and asks to be polled again soon.
fn yield_now<T>(cx: &mut Context<'_>) -> Poll<T> {
    cx.waker().wake_by_ref();
    Poll::Pending
}
