//! Cancel requests. A client gets pgmix's own (pid, secret) pair, never the backend's: the
//! registry maps one to the other, and a CancelRequest arriving on a new connection is sent on to
//! the local Postgres with the backend's key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rand::RngExt;
use tokio::io::AsyncWriteExt;

use super::connect::open_stream;
use super::error::BackendError;
use crate::config::BackendAddr;

#[derive(Debug, Clone)]
struct Target {
    addr: BackendAddr,
    pid: i32,
    secret: i32,
}

/// Shared by all sessions of one node; cloned as a handle.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<i32, (i32, Target)>>>,
}

/// Removes the session's key when the session ends.
pub struct CancelGuard {
    registry: CancelRegistry,
    pub pid: i32,
    pub secret: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock() {
            map.remove(&self.pid);
        }
    }
}

impl CancelRegistry {
    /// Issues a fresh client-facing key for a session whose backend has `(pid, secret)`.
    pub fn register(&self, addr: BackendAddr, pid: i32, secret: i32) -> CancelGuard {
        let mut rng = rand::rng();
        let target = Target { addr, pid, secret };
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let our_pid = rng.random_range(1..i32::MAX);
            if map.contains_key(&our_pid) {
                continue;
            }
            let our_secret: i32 = rng.random();
            map.insert(our_pid, (our_secret, target));
            return CancelGuard { registry: self.clone(), pid: our_pid, secret: our_secret };
        }
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
        send_cancel(&target.addr, target.pid, target.secret).await?;
        Ok(true)
    }
}

/// Asks the local Postgres to cancel whatever backend `pid` is running.
pub async fn send_cancel(addr: &BackendAddr, pid: i32, secret: i32) -> Result<(), BackendError> {
    let mut stream = open_stream(addr).await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}
