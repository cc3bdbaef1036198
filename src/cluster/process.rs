//! `pgmix up`'s node processes. Each node runs as its own `pgmix serve` child process, so that a
//! node can crash alone, as in production, and `pgmix up` restarts a node or a Postgres that died
//! and prints that it did.
//!
//! Crash meaning: a node holds no durable state of its own (its Postgres does), so a restarted
//! node simply serves again; clients of the dead process lost their sessions and reconnect. When
//! `pgmix up` ends, its node processes are killed with it (`kill_on_drop`), and the next
//! `pgmix up` stops any Postgres left running before it starts one. Should `pgmix up` be killed
//! outright, its nodes see their standard input close and stop by themselves.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::error::ClusterError;

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct NodeProcess {
    pub name: String,
    config: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts `pgmix serve --config CONFIG` and waits until it accepts connections on `port`.
    pub async fn spawn(name: &str, config: PathBuf, port: u16, metrics_port: u16) -> Result<Self, ClusterError> {
        let mut p = Self { name: name.to_owned(), config, port, metrics_port, child: None };
        p.start().await?;
        Ok(p)
    }

    async fn start(&mut self) -> Result<(), ClusterError> {
        let failed = |detail: String| ClusterError::NodeProcess { node: self.name.clone(), detail };
        let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find the pgmix executable: {e}")))?;
        // A pipe as standard input that only `pgmix up` holds: when it ends, however it ends,
        // the pipe closes and the node stops (`--until-stdin-closes`), so no node outlives it.
        // Nodes log warnings and errors only, unless PGMIX_LOG says otherwise: `pgmix up` prints
        // its own progress and status.
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--until-stdin-closes")
            .stdin(std::process::Stdio::piped())
            .env("PGMIX_LOG", std::env::var("PGMIX_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot start `pgmix serve`: {e}")))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("`pgmix serve --config {}` exited: {status}", self.config.display())));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(failed(format!("not listening on port {} after {START_TIMEOUT:?}", self.port)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// If the process has ended, how (and it is gone); None while it runs.
    pub fn ended(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => {
                self.child = None;
                Some(status.to_string())
            }
            Some(Err(e)) => {
                self.child = None;
                Some(e.to_string())
            }
            None => Some("not running".to_owned()),
        }
    }

    /// Starts the process again after it ended.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.start().await
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGTERM, then up to `grace` for the node to drain and exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
