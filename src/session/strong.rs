//! The strong driver: runs the transaction the core diverted, unit by unit (see `unit`), on the
//! leader, then hands the session back to the forwarding driver.
//!
//! - A strong read outside a transaction block, or inside one that began here, runs here on the
//!   local Postgres, behind the read barrier.
//! - A statement that cannot run in a transaction block and changes every node (CREATE
//!   DATABASE, ...) goes on the log on its own (`Strong::run_standalone`).
//! - Anything else is a strong transaction (`crate::strong`): on this node's own backend when this
//!   node leads, else relayed to the leader, until the transaction is over.
//!
//! While a unit runs, the driver goes on reading the client: a client that goes away has its
//! statement cancelled where it runs (here, or on the leader) and its relay session closed, so
//! the leader's transaction is rolled back; a CancelRequest for a relayed statement is sent on to
//! the leader (`CancelForward`).
//!
//! A transaction that began here with weak statements and then turns strong is not moved: its
//! strong statement fails with 40001 and the session's next transactions go to the leader
//! whole (the core does that; see `Core::prefer_leader`).
//!
//! Crash meaning: see `crate::strong`; the client sees 40001 when nothing can have committed,
//! 40003 when the commit was under way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::begin::Replay;
use super::prepared::{drop_injected, unnamed, with_parse, with_statements, with_unnamed};
use super::state::TxStatus;
use super::unit::Unit;
use super::{READ_CHUNK, Session, SessionEnd, SessionError};
use crate::backend::BackendStream;
use crate::classify::{Class, TxWord};
use crate::peer::PeerUp;
use crate::protocol::{Step, codec, messages};
use crate::sqlstate::ClientError;
use crate::strong::relay::{self, RelayLogin, Request, status};
use crate::strong::tx::{Backend, Begin};
use crate::strong::{Leader, Strong, StrongError, wire};

/// What the session does after the strong path.
pub(super) enum After {
    Resume,
    End(SessionEnd),
}

/// The relay session this client session has on the leader.
#[derive(Default)]
pub(super) struct RelayState {
    pub id: u64,
    /// The leader it is on, and the named statements prepared there (with the version of each
    /// the client last prepared, see `Parsed::seq`).
    pub leader: Option<u32>,
    pub prepared: HashMap<Bytes, u64>,
    /// The settings last sent with it.
    pub settings: Option<String>,
}

/// Who the client logged in as, for relay sessions.
#[derive(Debug, Clone)]
pub struct ClientLogin {
    pub role: String,
    pub password: Option<String>,
    pub database: String,
}

/// How long a relayed call may take: as long as the statement takes (the client can cancel it).
const FOREVER: Duration = Duration::from_secs(24 * 3600);

/// Runs the diverted transaction; `buf` holds the client's unread bytes, the diverted message
/// first. The core forwards again when this returns.
pub(super) async fn run(s: &mut Session, strong: Arc<Strong>, buf: &mut BytesMut) -> Result<After, SessionError> {
    let Some((class, begin, replay)) = s.core.strong_start() else {
        s.core.strong_done(s.core.state.tx, false);
        return Ok(After::Resume);
    };
    let ddl = class == Class::Ddl;
    let (after, tx) = match next_unit(s, buf).await? {
        None => (After::End(SessionEnd::ClientVanished), TxStatus::Idle),
        Some(u) if u.terminate => (After::End(SessionEnd::ClientTerminated), TxStatus::Idle),
        Some(unit) => {
            let unapplied = strong.consensus.unapplied().0 > 0;
            let here = class == Class::StrongRead && begin.is_none() && !unit.begins && !s.core.leader_first();
            if here && unapplied && s.core.state.tx != TxStatus::Idle {
                // Its own strong data is not the cluster's (see `Unapplied`): the transaction
                // that began here cannot read it.
                s.core.prefer_leader();
                fail_local(&mut s.backend).await.map_err(SessionError::Backend)?;
                let e = StrongError::Unapplied(strong.consensus.unapplied().1.unwrap_or_default());
                send(s, &error_reply(&e, b'E')).await?;
                (After::Resume, TxStatus::Failed)
            } else if let Some(replay) = replay {
                // Began here with statements that did not decide: they run again on the leader
                // first. The local transaction goes.
                let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
                wire::exchange(&mut b.stream, &mut b.buf, &codec::query_bytes("ROLLBACK"))
                    .await
                    .map_err(SessionError::Backend)?;
                let spec = replay.begin.clone().map_or(Begin::InUnit, Begin::Client);
                transaction(s, &strong, unit, spec, Some(replay), buf).await?
            } else if here && s.core.state.tx != TxStatus::Idle && snapshot_taken(&mut s.backend).await? {
                // Its snapshot may be older than the barrier: it cannot read strong data here.
                s.core.prefer_leader();
                fail_local(&mut s.backend).await.map_err(SessionError::Backend)?;
                let e = ClientError::error(
                    crate::sqlstate::code::SERIALIZATION_FAILURE,
                    "this REPEATABLE READ or SERIALIZABLE transaction began on this node, and its snapshot may be older than strong writes already committed; it cannot read strong data",
                )
                .with_hint("Retry the transaction: pgmix now runs this session's transactions on the leader from their start, where a strong transaction's snapshot follows the read barrier.");
                let mut out = BytesMut::new();
                e.encode(&mut out);
                codec::ready(b'E', &mut out);
                send(s, &out).await?;
                (After::Resume, TxStatus::Failed)
            } else if here && !unapplied {
                read_here(s, &strong, unit, buf).await?
            } else if begin.is_none() && unit.standalone.is_some() {
                (standalone(s, &strong, &unit).await?, TxStatus::Idle)
            } else {
                // A strong read of a node that could not apply an entry runs on the leader.
                let spec = match begin {
                    Some(d) => Begin::Client(d.text),
                    None if unit.begins => Begin::InUnit,
                    None => Begin::Autocommit,
                };
                transaction(s, &strong, unit, spec, None, buf).await?
            }
        }
    };
    s.core.strong_done(tx, ddl);
    Ok(after)
}

/// The next unit of the client's messages, read through the session's one framer; None when the
/// client went away.
async fn next_unit(s: &mut Session, buf: &mut BytesMut) -> Result<Option<Unit>, SessionError> {
    loop {
        let step = s.client_framer.step(buf, |_| true).map_err(SessionError::ClientProtocol)?;
        match step {
            Step::Message { tag, len, .. } => {
                let msg = buf.split_to(len);
                if let Some(unit) = s.core.strong_message(tag, &msg[5..], &msg) {
                    return Ok(Some(unit));
                }
            }
            Step::Pass(_) | Step::Incomplete => {
                buf.reserve(READ_CHUNK);
                if s.client.read_buf(buf).await.map_err(SessionError::Client)? == 0 {
                    return Ok(None);
                }
            }
        }
    }
}

async fn send(s: &mut Session, bytes: &[u8]) -> Result<(), SessionError> {
    s.client.write_all(bytes).await.map_err(SessionError::Client)?;
    s.client.flush().await.map_err(SessionError::Client)
}

fn error_reply(e: &StrongError, status: u8) -> BytesMut {
    let mut b = BytesMut::new();
    e.to_client().encode(&mut b);
    codec::ready(status, &mut b);
    b
}

/// Runs `exec` while reading what the client sends meanwhile into `buf`; if the client goes
/// away, `gone` runs once (it cancels `exec`'s statement) and `exec` is still awaited: what it
/// was doing (a commit under way above all) is seen through. True: the client went away.
async fn watched<T>(
    client: &mut crate::frontend::ClientStream,
    buf: &mut BytesMut,
    exec: impl Future<Output = T>,
    gone: impl FnOnce(),
) -> (T, bool) {
    tokio::pin!(exec);
    let mut gone = Some(gone);
    loop {
        let reading = gone.is_some() && buf.len() < 4 * READ_CHUNK;
        if reading {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            out = &mut exec => return (out, gone.is_none()),
            r = client.read_buf(buf), if reading => {
                if matches!(r, Ok(0) | Err(_)) && let Some(f) = gone.take() {
                    f();
                }
            }
        }
    }
}

/// A strong read here, behind the barrier: outside a transaction, or inside one that began here.
async fn read_here(
    s: &mut Session,
    strong: &Strong,
    unit: Unit,
    buf: &mut BytesMut,
) -> Result<(After, TxStatus), SessionError> {
    let was = s.core.state.tx;
    let in_tx = was != TxStatus::Idle;
    let key = s.backend_key;
    let addr = s.ctx.cfg.backend.addr.clone();
    let Session { client, backend, .. } = s;
    let (result, vanished) = watched(
        client,
        buf,
        async {
            match strong.barrier().await {
                Ok(()) => {
                    let mut b = Backend::new(&mut *backend, BytesMut::new(), String::new());
                    let r = wire::exchange(&mut b.stream, &mut b.buf, &unit.bytes).await?;
                    // A unit that ended at a Flush leaves the transaction as it was.
                    let tx = TxStatus::from_byte(r.status).unwrap_or(was);
                    Ok::<_, std::io::Error>((r.bytes, tx))
                }
                Err(e) if in_tx => {
                    // The transaction fails as it would on Postgres's own error.
                    fail_local(backend).await?;
                    Ok((error_reply(&e, b'E'), TxStatus::Failed))
                }
                Err(e) => Ok((error_reply(&e, b'I'), TxStatus::Idle)),
            }
        },
        || cancel_local(addr, key),
    )
    .await;
    let (reply, tx) = result.map_err(SessionError::Backend)?;
    if vanished {
        return Ok((After::End(SessionEnd::ClientVanished), TxStatus::Idle));
    }
    send(s, &reply).await?;
    Ok((After::Resume, tx))
}

/// Whether the transaction open on the local backend reads one snapshot throughout (REPEATABLE
/// READ or SERIALIZABLE): a statement has run in it (it began here), so that snapshot was taken
/// before any barrier a strong read could run behind now.
async fn snapshot_taken(backend: &mut BackendStream) -> Result<bool, SessionError> {
    let mut b = Backend::new(backend, BytesMut::new(), String::new());
    let r = wire::exchange(
        &mut b.stream,
        &mut b.buf,
        &codec::query_bytes("SELECT current_setting('transaction_isolation')"),
    )
    .await
    .map_err(SessionError::Backend)?;
    Ok(matches!(r.first_value.as_deref(), Some(b"repeatable read" | b"serializable")))
}

/// Puts the local backend into a failed transaction, as a client that was told its statement
/// failed inside one believes it is (its ROLLBACK must find one).
async fn fail_local(backend: &mut BackendStream) -> std::io::Result<()> {
    let mut b = Backend::new(backend, BytesMut::new(), String::new());
    let r = wire::exchange(&mut b.stream, &mut b.buf, &codec::query_bytes("SELECT 1/0")).await?;
    if r.status == b'I' {
        // Not in a transaction (its BEGIN was pgmix's to answer): begin one that failed.
        wire::exchange(&mut b.stream, &mut b.buf, &codec::query_bytes("BEGIN; SELECT 1/0")).await?;
    }
    Ok(())
}

fn cancel_local(addr: crate::config::BackendAddr, (pid, secret): (i32, i32)) {
    tokio::spawn(async move {
        if let Err(e) = crate::backend::send_cancel(&addr, pid, secret).await {
            tracing::debug!(error = %e, "could not cancel the statement of a vanished client");
        }
    });
}

/// CREATE DATABASE and the like: on the log, run by every node (see `Strong::run_standalone`).
async fn standalone(s: &mut Session, strong: &Strong, unit: &Unit) -> Result<After, SessionError> {
    let sql = String::from_utf8_lossy(messages::query_text(&unit.bytes[5..])).trim().trim_end_matches(';').to_owned();
    let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
    let r = wire::exchange(&mut b.stream, &mut b.buf, &codec::query_bytes("SHOW search_path"))
        .await
        .map_err(SessionError::Backend)?;
    let path = r.first_value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    let (role, database) = (s.login.role.clone(), s.login.database.clone());
    let reply = match strong.wait_for_leader().await {
        Ok(Leader::Here) => strong.run_standalone(&database, &sql, &role, &path).await.0,
        Ok(Leader::Peer(id)) => {
            let req = Request::Standalone { database, sql, role, search_path: path };
            let call = match strong.consensus.peers().get(id) {
                Some(peer) => peer.call(relay::SERVICE, relay::encode(&req, &[]), FOREVER).await.ok(),
                None => None,
            };
            match call.as_deref().and_then(relay::parse_answer) {
                Some((_, index, reply)) => {
                    // A database created through this node is here for the client's next connection.
                    strong.applied(index).await;
                    BytesMut::from(reply)
                }
                _ => error_reply(&StrongError::Unknown("the leader did not answer".to_owned()), b'I'),
            }
        }
        _ => error_reply(&StrongError::NoQuorum(strong.timeout), b'I'),
    };
    send(s, &reply).await?;
    Ok(After::Resume)
}

/// Where a strong transaction runs.
enum Place {
    /// This node leads: on the session's own backend, whose transaction status is `status`.
    Here { started: bool, status: u8 },
    /// Relayed to the leader.
    Relay { peer: Arc<PeerUp>, first: Option<(RelayLogin, Begin)> },
}

/// What one unit got where it ran.
struct Ran {
    bytes: BytesMut,
    status: u8,
}

/// Why a relayed unit has no answer: the leader went away, before or after it got the unit.
struct Lost {
    why: String,
    sent: bool,
}

/// A strong transaction, unit by unit, here or on the leader, until it is over.
async fn transaction(
    s: &mut Session,
    strong: &Strong,
    mut unit: Unit,
    spec: Begin,
    replay: Option<Replay>,
    buf: &mut BytesMut,
) -> Result<(After, TxStatus), SessionError> {
    let autocommit = matches!(spec, Begin::Autocommit);
    let mut place = match strong.wait_for_leader().await {
        Ok(Leader::Here) => Place::Here { started: false, status: b'I' },
        Ok(Leader::Peer(id)) => match strong.consensus.peers().get(id).cloned() {
            Some(peer) => {
                if s.relay.leader != Some(id) {
                    // A new leader (or the first): a new relay session there.
                    s.relay = RelayState { id: strong.next_relay_id(), leader: Some(id), ..RelayState::default() };
                }
                let login = RelayLogin {
                    role: s.login.role.clone(),
                    password: s.login.password.clone(),
                    database: s.login.database.clone(),
                    settings: settings(s).await?,
                };
                Place::Relay { peer, first: Some((login, spec.clone())) }
            }
            None => return not_started(s, &error_reply(&StrongError::NoQuorum(strong.timeout), b'I'), &spec).await,
        },
        Ok(Leader::Unknown) | Err(_) => {
            return not_started(s, &error_reply(&StrongError::NoQuorum(strong.timeout), b'I'), &spec).await;
        }
    };
    if let Some(replay) = replay
        && let Some(done) = replayed(s, strong, &mut place, &spec, replay, buf).await?
    {
        return Ok(done);
    }
    loop {
        let committing = autocommit || unit.word == TxWord::Commit;
        let ran = match run_unit(s, strong, &mut place, &unit, &spec, autocommit, buf).await? {
            Ok(r) => r,
            Err(lost) => return lost_leader(s, &lost.why, lost.sent && committing).await,
        };
        if ran.status == status::NOT_STARTED {
            return not_started(s, &ran.bytes, &spec).await;
        }
        send(s, &ran.bytes).await?;
        if ran.status == status::ENDED {
            capture_off(s, strong, &place, &spec).await?;
            return Ok((After::Resume, TxStatus::Idle));
        }
        if ran.status == status::COPY {
            s.core.strong_copy(unit.extended());
        }
        loop {
            let Some(next) = next_unit(s, buf).await? else {
                close(s, &place).await;
                return Ok((After::End(SessionEnd::ClientVanished), TxStatus::Idle));
            };
            if next.terminate {
                close(s, &place).await;
                return Ok((After::End(SessionEnd::ClientTerminated), TxStatus::Idle));
            }
            if ran.status == status::COPY && next.is_copy_data() {
                // COPY data goes on without waiting for replies.
                if let Err(lost) = copy_data(s, strong, &place, next, buf).await? {
                    return lost_leader(s, &lost.why, autocommit).await;
                }
                continue;
            }
            unit = next;
            break;
        }
    }
}

/// The transaction is over on this node's own backend, which the session goes on using.
async fn capture_off(s: &mut Session, strong: &Strong, place: &Place, spec: &Begin) -> Result<(), SessionError> {
    if matches!(place, Place::Here { .. }) && matches!(spec, Begin::InUnit) {
        let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
        strong.ended_in_unit(&mut b).await.map_err(SessionError::Backend)?;
    }
    Ok(())
}

/// Runs what a transaction that began here ran before it turned strong where it runs now, and
/// compares the replies with those the client got. Some: they differ (a SHOW of a setting that
/// differs between the nodes, say) or it could not run there; the client's statement then fails
/// with 40001, and the session's next transactions go to the leader from their start.
async fn replayed(
    s: &mut Session,
    strong: &Strong,
    place: &mut Place,
    spec: &Begin,
    replay: Replay,
    buf: &mut BytesMut,
) -> Result<Option<(After, TxStatus)>, SessionError> {
    let mut replies = Vec::new();
    // The unnamed statement a replayed unit uses is the one an earlier replayed unit parsed,
    // not the client's latest.
    let mut parse: Option<Vec<u8>> = None;
    for bytes in &replay.units {
        let (with, injected) = match &parse {
            Some(p) => with_parse(p, bytes),
            None => (std::borrow::Cow::Borrowed(&bytes[..]), 0),
        };
        let unit = Unit { bytes: BytesMut::from(&with[..]), ..Unit::default() };
        if let (_, Some(p)) = unnamed(bytes) {
            parse = Some(p);
        }
        match run_unit(s, strong, place, &unit, spec, false, buf).await? {
            Ok(ran) if ran.status == status::NOT_STARTED => return not_started(s, &ran.bytes, spec).await.map(Some),
            Ok(ran) => replies.push(BytesMut::from(drop_injected(&ran.bytes, injected))),
            Err(lost) => return lost_leader(s, &lost.why, false).await.map(Some),
        }
    }
    let refs: Vec<&[u8]> = replies.iter().map(|r| &r[..]).collect();
    if Replay::digest_of(&refs) == replay.digest() {
        return Ok(None);
    }
    let rollback = Unit { bytes: codec::query_bytes("ROLLBACK"), word: TxWord::Rollback, ..Unit::default() };
    let _ = run_unit(s, strong, place, &rollback, spec, false, buf).await?;
    capture_off(s, strong, place, spec).await?;
    s.core.prefer_leader();
    fail_local(&mut s.backend).await.map_err(SessionError::Backend)?;
    let e = ClientError::error(
        crate::sqlstate::code::SERIALIZATION_FAILURE,
        "this transaction began on this node and then touched strong data, which runs on the leader, where what it had run so far gave other results; it was not committed",
    )
    .with_hint("Retry the transaction: pgmix now runs this session's transactions on the leader from their start.");
    let mut out = BytesMut::new();
    e.encode(&mut out);
    codec::ready(b'E', &mut out);
    send(s, &out).await?;
    Ok(Some((After::Resume, TxStatus::Failed)))
}

/// Runs one unit where the transaction runs, watching the client meanwhile. The outer error is
/// this node's own (its backend or the client); the inner one a relay call that got no answer.
async fn run_unit(
    s: &mut Session,
    strong: &Strong,
    place: &mut Place,
    unit: &Unit,
    spec: &Begin,
    autocommit: bool,
    buf: &mut BytesMut,
) -> Result<Result<Ran, Lost>, SessionError> {
    tracing::trace!(unit = %String::from_utf8_lossy(&messages::iter(&unit.bytes).map(|(t, _)| t).collect::<Vec<u8>>()), "running a unit");
    let ran = match place {
        Place::Here { started, status: tx } => {
            let key = s.backend_key;
            let addr = s.ctx.cfg.backend.addr.clone();
            let database = s.login.database.clone();
            let (bytes, injected) = with_unnamed(s, &unit.bytes);
            let Session { client, backend, .. } = s;
            let exec = async {
                let mut b = Backend::new(&mut *backend, BytesMut::new(), database);
                b.status = *tx;
                if !*started {
                    *started = true;
                    if let Err(mut e) = strong.start(&mut b, spec).await? {
                        codec::ready(b'I', &mut e);
                        return Ok(Ran { bytes: e, status: status::NOT_STARTED });
                    }
                }
                let r = strong.unit(&mut b, &bytes, unit.word, autocommit).await;
                *tx = b.status;
                let mut r = r?;
                if injected > 0 {
                    r.bytes = BytesMut::from(drop_injected(&r.bytes, injected));
                }
                let status = if r.copy {
                    status::COPY
                } else if r.ended {
                    status::ENDED
                } else {
                    status::IN_TRANSACTION
                };
                Ok::<_, std::io::Error>(Ran { bytes: r.bytes, status })
            };
            let (r, vanished) = watched(client, buf, exec, || cancel_local(addr, key)).await;
            let r = r.map_err(SessionError::Backend)?;
            if vanished {
                return Err(SessionError::Client(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok::<_, Lost>(r)
        }
        Place::Relay { peer, first } => {
            let (bytes, injected) = with_statements(s, &unit.bytes);
            let (login, begin) = match first.take() {
                Some((l, b)) => (Some(l), Some(b)),
                None => (None, None),
            };
            let req = Request::Unit { session: s.relay.id, login, begin, word: unit.word, autocommit };
            let payload = relay::encode(&req, &bytes);
            let session = s.relay.id;
            let cancel_peer = peer.clone();
            // A CancelRequest for this session goes to the leader while the unit runs there.
            let forward_peer = peer.clone();
            s.cancel.set(Some(Arc::new(move || {
                let peer = forward_peer.clone();
                Box::pin(async move {
                    let req = Request::Cancel { session };
                    let _ = peer.call(relay::SERVICE, relay::encode(&req, &[]), Duration::from_secs(5)).await;
                })
            })));
            let call = peer.call(relay::SERVICE, payload, FOREVER);
            let (answer, vanished) = watched(&mut s.client, buf, call, move || {
                tokio::spawn(async move {
                    let req = Request::Close { session };
                    let _ = cancel_peer.call(relay::SERVICE, relay::encode(&req, &[]), Duration::from_secs(5)).await;
                });
            })
            .await;
            s.cancel.set(None);
            if vanished {
                s.relay.leader = None;
                return Err(SessionError::Client(std::io::ErrorKind::UnexpectedEof.into()));
            }
            match answer.as_ref().map(|a| relay::parse_answer(a)) {
                Ok(Some((status, index, reply))) => {
                    // What the client committed there is here for its next statement.
                    strong.applied(index).await;
                    Ok(Ran { bytes: BytesMut::from(drop_injected(reply, injected)), status })
                }
                Ok(None) => Err(Lost { why: "an empty answer".to_owned(), sent: true }),
                // Never sent: nothing happened there.
                Err(e @ crate::peer::CallError::Down(_)) => Err(Lost { why: e.to_string(), sent: false }),
                Err(e) => Err(Lost { why: e.to_string(), sent: true }),
            }
        }
    };
    if let Ok(r) = &ran {
        tracing::trace!(status = r.status, reply = %String::from_utf8_lossy(&messages::iter(&r.bytes).map(|(t, _)| t).collect::<Vec<u8>>()), "a unit ran");
    }
    Ok(ran)
}

/// COPY data of a relayed (or local) COPY, sent on in chunks.
async fn copy_data(
    s: &mut Session,
    strong: &Strong,
    place: &Place,
    first: Unit,
    buf: &mut BytesMut,
) -> Result<Result<(), Lost>, SessionError> {
    match place {
        Place::Here { .. } => {
            let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
            strong.copy_data(&mut b, &first.bytes).await.map_err(SessionError::Backend)?;
            Ok(Ok(()))
        }
        Place::Relay { peer, .. } => {
            let mut chunk = first.bytes;
            while chunk.len() < 256 * 1024 && buf.first() == Some(&b'd') {
                match next_unit(s, buf).await? {
                    Some(more) if !more.terminate && more.is_copy_data() => chunk.extend_from_slice(&more.bytes),
                    _ => break,
                }
            }
            let req = Request::CopyData { session: s.relay.id };
            match peer.call(relay::SERVICE, relay::encode(&req, &chunk), FOREVER).await {
                Ok(_) => Ok(Ok(())),
                Err(e) => Ok(Err(Lost { why: e.to_string(), sent: true })),
            }
        }
    }
}

async fn close(s: &mut Session, place: &Place) {
    if let Place::Relay { peer, .. } = place {
        let req = Request::Close { session: s.relay.id };
        let _ = peer.call(relay::SERVICE, relay::encode(&req, &[]), Duration::from_secs(2)).await;
        s.relay.leader = None;
    }
}

/// The transaction could not start: the client gets `reply` (an error and ReadyForQuery). A
/// client whose BEGIN pgmix answered believes it is in a transaction: it is put in a failed one
/// here, so that its ROLLBACK finds one.
async fn not_started(s: &mut Session, reply: &[u8], spec: &Begin) -> Result<(After, TxStatus), SessionError> {
    let mut out = BytesMut::from(&reply[..reply.len().saturating_sub(6)]);
    let tx = if matches!(spec, Begin::Client(_)) {
        fail_local(&mut s.backend).await.map_err(SessionError::Backend)?;
        codec::ready(b'E', &mut out);
        TxStatus::Failed
    } else {
        codec::ready(b'I', &mut out);
        TxStatus::Idle
    };
    send(s, &out).await?;
    Ok((After::Resume, tx))
}

/// The leader went away mid-transaction.
async fn lost_leader(s: &mut Session, why: &str, committing: bool) -> Result<(After, TxStatus), SessionError> {
    s.relay.leader = None;
    let e = if committing { StrongError::Unknown(why.to_owned()) } else { StrongError::LeaderLost(why.to_owned()) };
    send(s, &error_reply(&e, b'I')).await?;
    Ok((After::Resume, TxStatus::Idle))
}

/// The settings this session made (SET, SET ROLE, or start-up options), as SQL for the relay
/// session: read again only when statements ran here since they were last read.
async fn settings(s: &mut Session) -> Result<String, SessionError> {
    if let Some(known) = &s.relay.settings
        && !s.core.take_ran_locally()
    {
        return Ok(known.clone());
    }
    // set_config takes a value as SHOW prints it (a search_path of several schemas stays a
    // list). pg_settings shows neither the session's authorization nor its role: they go first
    // and last (SET SESSION AUTHORIZATION resets the role).
    const SQL: &str = "SELECT 'SET SESSION AUTHORIZATION DEFAULT; RESET ALL' \
        || CASE WHEN session_user::text <> $1 THEN format('; SET SESSION AUTHORIZATION %I', session_user) ELSE '' END \
        || coalesce((SELECT '; ' || string_agg(format('SELECT set_config(%L, %L, false)', name, setting), '; ' ORDER BY name) \
           FROM pg_settings WHERE source IN ('session', 'client') AND name NOT IN ('pgmix.strong', 'client_encoding', \
           'transaction_isolation', 'transaction_read_only', 'transaction_deferrable')), '') \
        || coalesce((SELECT '; ' || string_agg(format('SELECT set_config(%L, %L, false)', n, current_setting(n, true)), '; ' \
           ORDER BY n) FROM unnest($2::text[]) n WHERE current_setting(n, true) IS NOT NULL), '') \
        || CASE WHEN current_setting('role') <> 'none' THEN format('; SET ROLE %I', current_setting('role')) ELSE '' END";
    let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
    let custom = format!(
        "{{{}}}",
        s.core
            .router
            .custom_settings()
            .iter()
            .map(|n| format!("\"{}\"", n.replace('"', "")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let query = codec::query_with(SQL, &[Some(s.login.role.as_bytes()), Some(custom.as_bytes())]);
    let r = wire::exchange(&mut b.stream, &mut b.buf, &query).await.map_err(SessionError::Backend)?;
    let sql = r.first_value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    tracing::debug!(settings = %sql, "the session's settings, for its relay session");
    s.relay.settings = Some(sql.clone());
    Ok(sql)
}
