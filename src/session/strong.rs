//! The session's strong path: a transaction the routing point diverted here (its first strong
//! statement, at a quiet point) runs message unit by message unit, on the leader.
//!
//! - A strong read outside a transaction block runs here, on the local Postgres, behind the read
//!   barrier.
//! - Anything else runs as a strong transaction (`crate::strong`): on this node's own backend
//!   when this node leads, else relayed to the leader, until the transaction is over; then the
//!   session goes back to its forwarding data path.
//!
//! A transaction that began here with weak statements and then turns strong is not moved: its
//! strong statement fails with 40001 and the session's next transactions go to the leader
//! whole (the routing point does that; see `Session::sticky`). Replaying its weak part on the
//! leader and comparing results would keep it, but a weak read that saw a row the leader has not
//! got yet would fail the comparison anyway.
//!
//! Crash meaning: see `crate::strong`; the client sees 40001 when nothing can have committed,
//! 40003 when the commit was under way.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::{Session, SessionEnd, SessionError, TxStatus};
use crate::classify::Class;
use crate::protocol::messages;
use crate::strong::relay::{self, RelayLogin, Request, status};
use crate::strong::tx::{Backend, Begin};
use crate::strong::wire::{self, TxWord, read_message};
use crate::strong::{Leader, Strong, StrongError};

/// What the session does after the strong path.
pub(super) enum After {
    Resume,
    End(SessionEnd),
}

/// The relay session this client session has on the leader.
#[derive(Default)]
pub(super) struct RelayState {
    pub id: u64,
    /// The leader it is on, and the statements prepared there.
    pub leader: Option<u32>,
    pub prepared: HashSet<Bytes>,
}

/// One unit of client messages: up to a Sync, one Query, or one COPY message. The end of a COPY
/// started by Execute runs up to the Sync after it: Postgres answers it only then.
struct Unit {
    bytes: BytesMut,
    word: TxWord,
    starts_tx: bool,
    terminate: bool,
}

/// Who the client logged in as, for relay sessions.
#[derive(Debug, Clone)]
pub struct ClientLogin {
    pub role: String,
    pub password: Option<String>,
    pub database: String,
}

async fn read_unit(s: &mut Session, pending: &mut BytesMut) -> Result<Option<Unit>, SessionError> {
    read_unit_split(&mut s.client, &mut s.router, s.ctx.cfg.max_message_bytes, pending, false).await
}

/// Whether a unit that started a COPY started it with Execute (not with a Query).
fn extended(unit: &[u8]) -> bool {
    unit.first() != Some(&b'Q')
}

/// The statement name of a Bind message body.
pub(super) fn bind_statement(body: &[u8]) -> &[u8] {
    let portal_end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let rest = body.get(portal_end + 1..).unwrap_or_default();
    &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
}

async fn send(s: &mut Session, bytes: &[u8]) -> Result<(), SessionError> {
    s.client.write_all(bytes).await.map_err(SessionError::Client)?;
    s.client.flush().await.map_err(SessionError::Client)
}

fn error_reply(e: &StrongError, status: u8) -> BytesMut {
    let mut b = BytesMut::new();
    e.to_client().encode(&mut b);
    b.extend_from_slice(&wire::ready(status));
    b
}

/// Runs the diverted statement's transaction; `pending` holds the client's unread bytes, the
/// diverted message first.
pub(super) async fn run(
    s: &mut Session,
    strong: Arc<Strong>,
    pending: &mut BytesMut,
    class: Class,
) -> Result<After, SessionError> {
    let begin = s.deferred_begin.take();
    let Some(unit) = read_unit(s, pending).await? else { return Ok(After::End(SessionEnd::ClientVanished)) };
    if unit.terminate {
        return Ok(After::End(SessionEnd::ClientTerminated));
    }
    if class == Class::StrongRead && begin.is_none() && !unit.starts_tx && !s.sticky {
        // Here, behind the barrier: outside a transaction, or inside one that began here (each
        // statement of a READ COMMITTED transaction reads a fresh snapshot).
        let in_tx = s.state.tx != TxStatus::Idle;
        let reply = match strong.barrier().await {
            Ok(()) => {
                let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
                let r = wire::exchange(&mut b.stream, &mut b.buf, &unit.bytes).await.map_err(SessionError::Backend)?;
                if let Some(tx) = TxStatus::from_byte(r.status) {
                    s.state.tx = tx;
                }
                r.bytes
            }
            Err(e) if in_tx => {
                // The transaction fails as it would on Postgres's own error.
                let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
                wire::exchange(&mut b.stream, &mut b.buf, &wire::query("SELECT 1/0"))
                    .await
                    .map_err(SessionError::Backend)?;
                s.state.tx = TxStatus::Failed;
                error_reply(&e, b'E')
            }
            Err(e) => error_reply(&e, b'I'),
        };
        send(s, &reply).await?;
        return Ok(After::Resume);
    }
    // A strong transaction runs whole; it is over (or never began) when this returns.
    s.state.tx = TxStatus::Idle;
    if begin.is_none()
        && unit.bytes.first() == Some(&b'Q')
        && wire::is_standalone(messages::query_text(&unit.bytes[5..]))
    {
        return standalone(s, &strong, &unit).await;
    }
    let spec = match begin {
        Some(text) => Begin::Client(text),
        None if unit.starts_tx => Begin::InUnit,
        None => Begin::Autocommit,
    };
    match strong.wait_for_leader().await {
        Ok(Leader::Here) => local(s, &strong, unit, spec, pending).await,
        Ok(Leader::Peer(id)) => relayed(s, &strong, id, unit, spec, pending).await,
        Ok(Leader::Unknown) | Err(_) => {
            not_started(s, &error_reply(&StrongError::NoQuorum(strong.timeout), b'I'), &spec).await?;
            Ok(After::Resume)
        }
    }
}

/// CREATE DATABASE and the like: on the log, run by every node (see `Strong::run_standalone`).
async fn standalone(s: &mut Session, strong: &Strong, unit: &Unit) -> Result<After, SessionError> {
    let sql = String::from_utf8_lossy(messages::query_text(&unit.bytes[5..])).trim().trim_end_matches(';').to_owned();
    let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
    let r = wire::exchange(&mut b.stream, &mut b.buf, &wire::query("SHOW search_path"))
        .await
        .map_err(SessionError::Backend)?;
    let path = r.first_value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    let (role, database) = (s.login.role.clone(), s.login.database.clone());
    let reply = match strong.wait_for_leader().await {
        Ok(Leader::Here) => strong.run_standalone(&database, &sql, &role, &path).await,
        Ok(Leader::Peer(id)) => {
            let req = Request::Standalone { database, sql, role, search_path: path };
            let call = match strong.consensus.peers().get(id) {
                Some(peer) => peer
                    .call(relay::SERVICE, relay::encode(&req, &[]), std::time::Duration::from_secs(24 * 3600))
                    .await
                    .ok(),
                None => None,
            };
            match call {
                Some(a) if !a.is_empty() => BytesMut::from(&a[1..]),
                _ => error_reply(&StrongError::Unknown("the leader did not answer".to_owned()), b'I'),
            }
        }
        _ => error_reply(&StrongError::NoQuorum(strong.timeout), b'I'),
    };
    send(s, &reply).await?;
    Ok(After::Resume)
}

/// The transaction could not start: the client gets `reply` (an error and ReadyForQuery). A
/// client whose BEGIN pgmix answered believes it is in a transaction: it is put in a failed one
/// here, so that its ROLLBACK finds one.
async fn not_started(s: &mut Session, reply: &[u8], spec: &Begin) -> Result<(), SessionError> {
    let mut out = BytesMut::from(&reply[..reply.len().saturating_sub(6)]);
    if matches!(spec, Begin::Client(_)) {
        let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
        wire::exchange(&mut b.stream, &mut b.buf, &wire::query("BEGIN; SELECT 1/0"))
            .await
            .map_err(SessionError::Backend)?;
        s.state.tx = TxStatus::Failed;
        out.extend_from_slice(&wire::ready(b'E'));
    } else {
        out.extend_from_slice(&wire::ready(b'I'));
    }
    send(s, &out).await
}

/// This node leads: the transaction runs on the session's own backend.
async fn local(
    s: &mut Session,
    strong: &Strong,
    mut unit: Unit,
    spec: Begin,
    pending: &mut BytesMut,
) -> Result<After, SessionError> {
    let database = s.login.database.clone();
    let autocommit = matches!(spec, Begin::Autocommit);
    let mut b = Backend::new(&mut s.backend, BytesMut::new(), database);
    if let Err(e) = strong.start(&mut b, &spec).await.map_err(SessionError::Backend)? {
        drop(b);
        let mut reply = e;
        reply.extend_from_slice(&wire::ready(b'I'));
        not_started(s, &reply, &spec).await?;
        return Ok(After::Resume);
    }
    loop {
        let r = strong.unit(&mut b, &unit.bytes, unit.word, autocommit).await.map_err(SessionError::Backend)?;
        s.client.write_all(&r.bytes).await.map_err(SessionError::Client)?;
        s.client.flush().await.map_err(SessionError::Client)?;
        if r.ended {
            return Ok(After::Resume);
        }
        loop {
            let until_sync = r.copy && extended(&unit.bytes);
            let Some(next) =
                read_unit_split(&mut s.client, &mut s.router, s.ctx.cfg.max_message_bytes, pending, until_sync).await?
            else {
                return Ok(After::End(SessionEnd::ClientVanished));
            };
            if next.terminate {
                return Ok(After::End(SessionEnd::ClientTerminated));
            }
            if r.copy && next.bytes.first() == Some(&b'd') {
                strong.copy_data(&mut b, &next.bytes).await.map_err(SessionError::Backend)?;
                continue;
            }
            unit = next;
            break;
        }
    }
}

/// Reads one unit, on split borrows (the backend may be borrowed by the transaction).
async fn read_unit_split(
    client: &mut crate::frontend::ClientStream,
    router: &mut super::route::Router,
    max: usize,
    pending: &mut BytesMut,
    copy_until_sync: bool,
) -> Result<Option<Unit>, SessionError> {
    let mut unit = Unit { bytes: BytesMut::new(), word: TxWord::Other, starts_tx: false, terminate: false };
    loop {
        let Some(msg) = read_message(client, pending, max).await.map_err(SessionError::Client)? else {
            return Ok(None);
        };
        let body = &msg[5..];
        match msg[0] {
            b'X' => {
                unit.terminate = true;
                return Ok(Some(unit));
            }
            b'Q' => {
                let text = messages::query_text(body);
                unit.word = wire::tx_word(text);
                unit.starts_tx = wire::starts_tx(text);
                unit.bytes.extend_from_slice(&msg);
                return Ok(Some(unit));
            }
            b'P' => {
                let (name, sql) = messages::parse_message(body);
                if wire::tx_word(sql) != TxWord::Other {
                    unit.word = wire::tx_word(sql);
                }
                unit.starts_tx |= unit.bytes.is_empty() && wire::starts_tx(sql);
                router.remember_parse(name, sql, &msg);
            }
            b'B' => {
                if let Some(sql) = router.parsed_text(bind_statement(body)) {
                    let w = wire::tx_word(&sql);
                    if w != TxWord::Other {
                        unit.word = w;
                    }
                    unit.starts_tx |= unit.bytes.is_empty() && wire::starts_tx(&sql);
                }
            }
            _ => {}
        }
        unit.bytes.extend_from_slice(&msg);
        let copy_end = matches!(msg[0], b'c' | b'f') && !copy_until_sync;
        if matches!(msg[0], b'S' | b'd') || copy_end {
            return Ok(Some(unit));
        }
    }
}

/// The settings this session made (SET, or start-up options), as SQL for the relay session.
async fn settings(s: &mut Session) -> Result<String, SessionError> {
    const SQL: &str = "SELECT string_agg(format('SET %s = %L', name, setting), '; ' ORDER BY name) FROM pg_settings \
        WHERE source IN ('session', 'client') AND name NOT IN ('pgmix.strong', 'session_authorization', 'role', \
        'transaction_isolation', 'transaction_read_only', 'transaction_deferrable', 'client_encoding')";
    let mut b = Backend::new(&mut s.backend, BytesMut::new(), String::new());
    let r = wire::exchange(&mut b.stream, &mut b.buf, &wire::query(SQL)).await.map_err(SessionError::Backend)?;
    Ok(r.first_value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default())
}

/// Prepends a Close and a Parse for each statement the unit binds that the relay session does
/// not have; returns the unit and how many replies to drop from the front of the answer.
fn with_statements(s: &mut Session, unit: &[u8]) -> (BytesMut, usize) {
    let leader = s.relay.leader;
    let mut pre = BytesMut::new();
    let mut injected = 0;
    let mut parsed_here: HashSet<Bytes> = HashSet::new();
    for (tag, body) in messages::iter(unit) {
        match tag {
            b'P' => {
                let (name, _) = messages::parse_message(body);
                parsed_here.insert(Bytes::copy_from_slice(name));
            }
            b'B' => {
                let name = Bytes::copy_from_slice(bind_statement(body));
                if parsed_here.contains(&name) || (leader.is_some() && s.relay.prepared.contains(&name)) {
                    continue;
                }
                if let Some(parse) = s.router.parsed_message(&name) {
                    pre.put_u8(b'C');
                    pre.put_i32(4 + 1 + name.len() as i32 + 1);
                    pre.put_u8(b'S');
                    pre.put_slice(&name);
                    pre.put_u8(0);
                    pre.extend_from_slice(&parse);
                    injected += 2;
                    parsed_here.insert(name);
                }
            }
            _ => {}
        }
    }
    s.relay.prepared.extend(parsed_here);
    pre.extend_from_slice(unit);
    (pre, injected)
}

/// Drops the first `n` replies (the CloseComplete and ParseComplete of injected statements).
fn drop_injected(reply: &[u8], n: usize) -> &[u8] {
    let mut at = 0;
    for _ in 0..n {
        match reply.get(at) {
            Some(b'3' | b'1') => at += 5,
            _ => break,
        }
    }
    &reply[at..]
}

/// Another node leads: the transaction is relayed to it.
async fn relayed(
    s: &mut Session,
    strong: &Strong,
    leader: u32,
    mut unit: Unit,
    spec: Begin,
    pending: &mut BytesMut,
) -> Result<After, SessionError> {
    let Some(peer) = strong.consensus.peers().get(leader).cloned() else {
        not_started(s, &error_reply(&StrongError::NoQuorum(strong.timeout), b'I'), &spec).await?;
        return Ok(After::Resume);
    };
    if s.relay.leader != Some(leader) {
        // A new leader (or the first): a new relay session there.
        s.relay.id = strong.next_relay_id();
        s.relay.leader = Some(leader);
        s.relay.prepared.clear();
    }
    let autocommit = matches!(spec, Begin::Autocommit);
    let login = RelayLogin {
        role: s.login.role.clone(),
        password: s.login.password.clone(),
        database: s.login.database.clone(),
        settings: settings(s).await?,
    };
    let mut first = Some((login, spec.clone()));
    let forever = std::time::Duration::from_secs(24 * 3600);
    loop {
        let (bytes, injected) = with_statements(s, &unit.bytes);
        let committing = autocommit || unit.word == TxWord::Commit;
        let (login, begin) = match first.take() {
            Some((l, b)) => (Some(l), Some(b)),
            None => (None, None),
        };
        let req = Request::Unit { session: s.relay.id, login, begin, word: relay::word_byte(unit.word), autocommit };
        let answer = match peer.call(relay::SERVICE, relay::encode(&req, &bytes), forever).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => return lost(s, "an empty answer", committing).await,
            // Never sent: nothing happened there.
            Err(e @ crate::peer::CallError::Down(_)) => return lost(s, &e.to_string(), false).await,
            Err(e) => return lost(s, &e.to_string(), committing).await,
        };
        let reply = drop_injected(&answer[1..], injected);
        match answer[0] {
            status::NOT_STARTED => {
                let mut r = BytesMut::from(reply);
                r.extend_from_slice(&wire::ready(b'I'));
                not_started(s, &r, &spec).await?;
                return Ok(After::Resume);
            }
            st => {
                send(s, reply).await?;
                if st == status::ENDED {
                    return Ok(After::Resume);
                }
                let copying = st == status::COPY;
                let until_sync = copying && extended(&unit.bytes);
                loop {
                    let max = s.ctx.cfg.max_message_bytes;
                    let Some(next) = read_unit_split(&mut s.client, &mut s.router, max, pending, until_sync).await?
                    else {
                        close(&peer, s.relay.id).await;
                        s.relay.leader = None;
                        return Ok(After::End(SessionEnd::ClientVanished));
                    };
                    if next.terminate {
                        close(&peer, s.relay.id).await;
                        return Ok(After::End(SessionEnd::ClientTerminated));
                    }
                    if copying && next.bytes.first() == Some(&b'd') {
                        // COPY data goes on in chunks, without waiting for replies.
                        let mut chunk = next.bytes;
                        while chunk.len() < 256 * 1024 && pending.first() == Some(&b'd') {
                            match read_unit(s, pending).await? {
                                Some(more) if !more.terminate => chunk.extend_from_slice(&more.bytes),
                                _ => break,
                            }
                        }
                        let req = Request::CopyData { session: s.relay.id };
                        if let Err(e) = peer.call(relay::SERVICE, relay::encode(&req, &chunk), forever).await {
                            return lost(s, &e.to_string(), autocommit).await;
                        }
                        continue;
                    }
                    unit = next;
                    break;
                }
            }
        }
    }
}

/// The leader went away mid-transaction.
async fn lost(s: &mut Session, why: &str, committing: bool) -> Result<After, SessionError> {
    s.relay.leader = None;
    let e = if committing { StrongError::Unknown(why.to_owned()) } else { StrongError::LeaderLost(why.to_owned()) };
    send(s, &error_reply(&e, b'I')).await?;
    Ok(After::Resume)
}

async fn close(peer: &crate::peer::PeerUp, session: u64) {
    let req = Request::Close { session };
    let _ = peer.call(relay::SERVICE, relay::encode(&req, &[]), std::time::Duration::from_secs(2)).await;
}
