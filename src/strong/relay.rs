//! Relaying strong transactions from a follower to the leader over the peer link (service
//! [`SERVICE`]).
//!
//! Each client session of a follower that runs strong transactions has a relay session on the
//! leader: a backend connection logged in as the same role, to the same database, with the
//! session's settings. A relay call carries one unit of client messages (and, for the first unit
//! of a transaction, how it begins); its answer carries the reply for the client and whether the
//! transaction is over. The follower passes the reply on as it is.
//!
//! Crash meaning: a relay session holds an open transaction at most. If the follower or its
//! client goes away the session is closed (or reaped when idle), and Postgres rolls the
//! transaction back; if the leader goes away mid-transaction, so does the transaction, and the
//! client is told it is safe to retry (or 40003 when the COMMIT was under way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::Strong;
use super::tx::{Backend, Begin};
use crate::backend::{self, BackendStream, Login};
use crate::classify::TxWord;
use crate::sqlstate::{ClientError, code};

/// The peer-link service number of relayed transactions.
pub const SERVICE: u8 = 3;

/// An open relay session is closed after this long without a call.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);
const IDLE: Duration = Duration::from_secs(600);

/// Who the relay session logs in as, and with what settings (SQL to run first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayLogin {
    pub role: String,
    pub password: Option<String>,
    pub database: String,
    pub settings: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// A unit of client messages (after the header); `begin` on the first of a transaction.
    Unit { session: u64, login: Option<RelayLogin>, begin: Option<Begin>, word: TxWord, autocommit: bool },
    /// COPY data: written on, no reply.
    CopyData { session: u64 },
    /// The follower's client went away: cancel what runs and drop the session.
    Close { session: u64 },
    /// The follower's client sent a CancelRequest: cancel what runs.
    Cancel { session: u64 },
    /// A statement that cannot run in a transaction block, for the log (`Strong::run_standalone`).
    Standalone { database: String, sql: String, role: String, search_path: String },
}

/// What the answer's first byte says.
pub mod status {
    pub const IN_TRANSACTION: u8 = 0;
    pub const ENDED: u8 = 1;
    pub const COPY: u8 = 2;
    /// The transaction could not start: the bytes are the error for the client.
    pub const NOT_STARTED: u8 = 3;
}

/// `[header length][header JSON][raw bytes]`.
pub fn encode(req: &Request, raw: &[u8]) -> Bytes {
    let header = serde_json::to_vec(req).unwrap_or_default();
    let mut b = BytesMut::with_capacity(4 + header.len() + raw.len());
    b.put_u32(header.len() as u32);
    b.put_slice(&header);
    b.put_slice(raw);
    b.freeze()
}

fn decode(payload: &[u8]) -> Result<(Request, &[u8]), String> {
    let len = payload.get(..4).map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize).ok_or("short payload")?;
    let header = payload.get(4..4 + len).ok_or("short payload")?;
    let req = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    Ok((req, &payload[4 + len..]))
}

struct Session {
    backend: Backend<BackendStream>,
    autocommit: bool,
    settings: String,
    last: Instant,
}

/// A relay session's place: empty until it is opened, and again once it is closed.
#[derive(Default)]
struct Slot {
    session: tokio::sync::Mutex<Option<Session>>,
    /// The backend key of its connection, to cancel what runs there without waiting for it.
    key: Mutex<Option<(i32, i32)>>,
    /// Its follower closed it (the client went away) while a unit ran: dropped after the unit.
    closed: std::sync::atomic::AtomicBool,
}

/// The leader's relay sessions, by (follower, session id).
#[derive(Default)]
pub struct Relays {
    sessions: Mutex<HashMap<(u32, u64), Arc<Slot>>>,
}

impl Relays {
    fn slot(&self, key: (u32, u64)) -> Arc<Slot> {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }

    fn remove(&self, key: (u32, u64)) -> Option<Arc<Slot>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&key)
    }

    /// Closes sessions idle too long (their follower or its client is gone, as a rule).
    fn reap(&self) {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for slot in map.values() {
            if let Ok(mut s) = slot.session.try_lock() {
                let stale = s.as_ref().is_some_and(|s| {
                    let idle = s.last.elapsed();
                    idle > IDLE || (s.backend.status != b'I' && idle > IDLE_IN_TRANSACTION)
                });
                if stale {
                    *s = None;
                }
            }
        }
    }
}

impl Slot {
    /// Cancels the statement running in this relay session, if one is.
    async fn cancel(&self, strong: &Strong) {
        let key = *self.key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pid, secret)) = key
            && let Err(e) = crate::backend::send_cancel(&strong.backend.addr, pid, secret).await
        {
            tracing::debug!(error = %e, "could not cancel a relayed statement");
        }
    }
}

pub fn serve(strong: &Arc<Strong>) {
    let weak = Arc::downgrade(strong);
    strong.consensus.peers().serve(
        SERVICE,
        Arc::new(move |from, payload| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(strong) = weak.upgrade() else { return Err("this node is stopping".to_owned()) };
                handle(&strong, from, &payload).await
            })
        }),
    );
    let weak = Arc::downgrade(strong);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Some(strong) = weak.upgrade() else { return };
            strong.relays.reap();
        }
    });
}

/// `[status][log index committed, 0 for none][bytes for the client]`.
fn answer(status: u8, bytes: &[u8]) -> Bytes {
    answer_at(status, 0, bytes)
}

fn answer_at(status: u8, index: u64, bytes: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + bytes.len());
    b.put_u8(status);
    b.put_u64(index);
    b.put_slice(bytes);
    b.freeze()
}

/// An answer's status, the log index it committed, and its bytes for the client.
pub fn parse_answer(a: &[u8]) -> Option<(u8, u64, &[u8])> {
    let status = *a.first()?;
    let index = u64::from_be_bytes(a.get(1..9)?.try_into().ok()?);
    Some((status, index, &a[9..]))
}

fn refusal(e: ClientError) -> Bytes {
    let mut b = BytesMut::new();
    e.encode(&mut b);
    answer(status::NOT_STARTED, &b)
}

async fn handle(strong: &Strong, from: u32, payload: &[u8]) -> Result<Bytes, String> {
    let (req, raw) = decode(payload)?;
    match req {
        Request::Standalone { database, sql, role, search_path } => {
            let (reply, index) = strong.run_standalone(&database, &sql, &role, &search_path).await;
            Ok(answer_at(status::ENDED, index, &reply))
        }
        Request::Cancel { session } => {
            let slot = strong.relays.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&(from, session)).cloned();
            if let Some(slot) = slot {
                slot.cancel(strong).await;
            }
            Ok(Bytes::new())
        }
        Request::Close { session } => {
            // Its client went away: a unit still running is cancelled, and the session (with its
            // connection, so Postgres rolls back what was open) goes once the unit is done.
            if let Some(slot) = strong.relays.remove((from, session)) {
                slot.closed.store(true, std::sync::atomic::Ordering::Relaxed);
                match slot.session.try_lock() {
                    Ok(mut s) => *s = None,
                    Err(_) => slot.cancel(strong).await,
                }
            }
            Ok(Bytes::new())
        }
        Request::CopyData { session } => {
            let slot = strong.relays.slot((from, session));
            let mut s = slot.session.lock().await;
            let Some(s) = s.as_mut() else { return Err("no such relay session".to_owned()) };
            s.last = Instant::now();
            strong.copy_data(&mut s.backend, raw).await.map_err(|e| e.to_string())?;
            Ok(Bytes::new())
        }
        Request::Unit { session, login, begin, word, autocommit } => {
            let slot = strong.relays.slot((from, session));
            let mut guard = slot.session.lock().await;
            let reply = unit(strong, &slot, &mut guard, login, begin, word, autocommit, raw).await;
            if slot.closed.load(std::sync::atomic::Ordering::Relaxed) {
                *guard = None;
            }
            reply
        }
    }
}

/// Runs one relayed unit in its relay session (opened with `login` first).
#[allow(clippy::too_many_arguments)]
async fn unit(
    strong: &Strong,
    slot: &Slot,
    guard: &mut Option<Session>,
    login: Option<RelayLogin>,
    begin: Option<Begin>,
    word: TxWord,
    autocommit: bool,
    raw: &[u8],
) -> Result<Bytes, String> {
    if let Some(login) = &login {
        if guard.is_none() {
            match open(strong, login).await {
                Ok((s, key)) => {
                    *slot.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
                    *guard = Some(s);
                }
                Err(e) => return Ok(refusal(e)),
            }
        }
        if let Some(s) = guard.as_mut()
            && s.settings != login.settings
        {
            // The follower session's own settings (its role among them): a transaction never
            // runs here with other settings than it would have there.
            match s.apply_settings(&login.settings).await {
                Ok(None) => {}
                Ok(Some(e)) => return Ok(answer(status::NOT_STARTED, &e)),
                Err(e) => {
                    *guard = None;
                    return Err(e.to_string());
                }
            }
        }
    }
    let Some(s) = guard.as_mut() else {
        return Ok(refusal(ClientError::error(
            code::SERIALIZATION_FAILURE,
            "the leader no longer has this transaction (it was idle too long, or the leader restarted); it was rolled back, so it is safe to retry",
        )));
    };
    s.last = Instant::now();
    if let Some(begin) = &begin {
        s.autocommit = matches!(begin, Begin::Autocommit);
        match strong.start(&mut s.backend, begin).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ok(answer(status::NOT_STARTED, &e)),
            Err(e) => {
                *guard = None;
                return Err(e.to_string());
            }
        }
    }
    match strong.unit(&mut s.backend, raw, word, autocommit && s.autocommit).await {
        Ok(r) => {
            let st = if r.copy {
                status::COPY
            } else if r.ended {
                status::ENDED
            } else {
                status::IN_TRANSACTION
            };
            Ok(answer_at(st, std::mem::take(&mut s.backend.committed), &r.bytes))
        }
        Err(e) => {
            *guard = None;
            Err(format!("the leader lost its connection to Postgres: {e}"))
        }
    }
}

impl Session {
    /// Makes the relay session's settings these (SQL from the follower); Some: the error they
    /// got here, for the client.
    async fn apply_settings(&mut self, sql: &str) -> std::io::Result<Option<BytesMut>> {
        let q = crate::protocol::codec::query_bytes(sql);
        let r = super::wire::exchange(&mut self.backend.stream, &mut self.backend.buf, &q).await?;
        if r.error.is_some() {
            return Ok(Some(BytesMut::from(r.without_ready())));
        }
        self.settings = sql.to_owned();
        Ok(None)
    }
}

async fn open(strong: &Strong, login: &RelayLogin) -> Result<(Session, (i32, i32)), ClientError> {
    // The database as a client session here would find it: pgmix's schema in it up to date.
    if let Err(reason) = strong.databases.get(&login.database).await {
        return Err(ClientError::error(
            code::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the leader cannot serve database \"{}\": {reason}", login.database),
        ));
    }
    let l = Login { role: &login.role, password: login.password.as_deref() };
    let conn = backend::connect(&strong.backend, l, &login.database, &[]).await.map_err(|e| match e {
        crate::backend::BackendError::Refused { code: c, message, .. } if c == "53300" => ClientError::error(
            code::SERIALIZATION_FAILURE,
            format!("the leader cannot take this transaction now: {message}"),
        ),
        other => ClientError::error(
            code::CONNECTION_FAILURE,
            format!("the leader could not open a connection for this transaction: {other}"),
        ),
    })?;
    let s = Session {
        backend: Backend::new(conn.stream, conn.leftover, login.database.clone()),
        autocommit: false,
        settings: String::new(),
        last: Instant::now(),
    };
    Ok((s, (conn.pid, conn.secret)))
}
