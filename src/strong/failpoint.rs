//! Failpoints: named steps of the strong commit where a test can stop a node, as if it were
//! killed there. An armed failpoint holds whatever reaches it until the node stops, then fails
//! it (the work is abandoned, as a crash would abandon it). Each node has its own set, so tests
//! can run several nodes in one process; nothing is armed outside tests.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio_util::sync::CancellationToken;

/// A large transaction's first chunk of effects logged, before the rest.
pub const AFTER_CHUNK: &str = "after_chunk";
/// After PREPARE TRANSACTION (or, for a held transaction, once its effects are taken), before
/// the entry goes on the log.
pub const AFTER_PREPARE: &str = "after_prepare";
/// On the leader, the entry committed, before its COMMIT PREPARED (or its hand-off).
pub const BEFORE_COMMIT_PREPARED: &str = "before_commit_prepared";
/// On the leader, a held transaction's entry handed to its session, before its COMMIT.
pub const BEFORE_HELD_COMMIT: &str = "before_held_commit";
/// Committed and applied, before the client is answered.
pub const BEFORE_ANSWER: &str = "before_answer";

pub struct FailPoints {
    armed: Mutex<HashSet<String>>,
    hits: AtomicU64,
    stop: CancellationToken,
}

impl FailPoints {
    /// `stop`: the node's shutdown, which releases (and fails) whatever an armed point holds.
    pub fn new(stop: CancellationToken) -> Self {
        Self { armed: Mutex::new(HashSet::new()), hits: AtomicU64::new(0), stop }
    }

    pub fn arm(&self, name: &str) {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
    }

    /// How many times an armed point was reached.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Passes at once unless `name` is armed; then waits for the node to stop and fails.
    pub async fn hit(&self, name: &str) -> std::io::Result<()> {
        if !self.armed.lock().unwrap_or_else(|p| p.into_inner()).contains(name) {
            return Ok(());
        }
        self.hits.fetch_add(1, Relaxed);
        tracing::warn!(failpoint = name, "failpoint reached: holding until the node stops");
        self.stop.cancelled().await;
        Err(std::io::Error::other(format!("the node stopped at failpoint {name}")))
    }
}
