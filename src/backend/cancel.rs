//! Cancel requests. A client gets its backend's real process id (so `pg_terminate_backend`,
//! NotificationResponse and pool health checks agree with what it holds) and a secret key of
//! pgmix's own: the registry maps (pid, our secret) to the backend's secret, and a CancelRequest
//! arriving on a new connection is sent on to the local Postgres with the backend's key. The
//! backend's secret never leaves pgmix, so a client that can reach the Postgres port directly
//! still cannot cancel other sessions' queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::open_stream;
use super::error::BackendError;
use crate::config::BackendAddr;

#[derive(Clone)]
struct Target {
    addr: BackendAddr,
    secret: i32,
    redirect: Redirect,
}

/// A cancel sent elsewhere: to the leader, where a session's statement is relayed.
pub type Forward = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Where a session's cancel requests go while its statement runs on another node; shared by the
/// session (which sets it while it relays) and the registry.
#[derive(Clone, Default)]
pub struct Redirect(Arc<Mutex<Option<Forward>>>);

impl Redirect {
    pub fn set(&self, to: Option<Forward>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    fn get(&self) -> Option<Forward> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Shared by all sessions of one node; cloned as a handle. Keyed by backend pid, which is unique
/// among the live backends of the one local Postgres.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<i32, (i32, Target)>>>,
}

/// Removes the session's key when the session ends.
pub struct CancelGuard {
    registry: CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    /// Where its cancels go while the session relays a statement.
    pub redirect: Redirect,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock() {
            // A reused pid may already belong to a newer session: remove only our own entry.
            if map.get(&self.pid).is_some_and(|(s, _)| *s == self.secret) {
                map.remove(&self.pid);
            }
        }
    }
}

impl CancelRegistry {
    /// Issues the client-facing key for a session whose backend has `(pid, secret)`: the same
    /// pid, a fresh secret.
    pub fn register(&self, addr: BackendAddr, pid: i32, secret: i32) -> CancelGuard {
        let our_secret: i32 = rand::rng().random();
        let redirect = Redirect::default();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(pid, (our_secret, Target { addr, secret, redirect: redirect.clone() }));
        CancelGuard { registry: self.clone(), pid, secret: our_secret, redirect }
    }

    /// Forwards a cancel request; an unknown or wrong key is ignored, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<bool, BackendError> {
        let target = {
            let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some((s, t)) if *s == secret => t.clone(),
                _ => return Ok(false),
            }
        };
        if let Some(forward) = target.redirect.get() {
            forward().await;
            return Ok(true);
        }
        send_cancel(&target.addr, pid, target.secret).await?;
        Ok(true)
    }
}

/// How long pgmix waits for Postgres to finish with a cancel request before giving up on it.
const CANCEL_DONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the local Postgres to cancel whatever backend `pid` is running, and returns once Postgres
/// has closed the cancel connection, which it does after signalling the backend. Clients (libpq,
/// asyncpg) take the close of their own cancel socket to mean "delivered" and go on with their
/// next query: closing it earlier would let a late cancel hit that query.
pub async fn send_cancel(addr: &BackendAddr, pid: i32, secret: i32) -> Result<(), BackendError> {
    let mut stream = open_stream(addr).await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    let mut sink = [0u8; 64];
    let drained = tokio::time::timeout(CANCEL_DONE_TIMEOUT, async {
        // Postgres sends nothing on a cancel connection; read until it closes.
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    match drained {
        Ok(r) => r.map_err(BackendError::Io),
        Err(_) => Err(BackendError::Protocol("the local Postgres did not close the cancel connection".into())),
    }
}
