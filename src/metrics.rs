//! Prometheus metrics of one node: plain atomic counters behind a handle (no global registry, so
//! several nodes can run in one process), served as text on `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub tls_connections_total: AtomicU64,
    pub auth_failures_total: AtomicU64,
    /// Failed logins answered only after a delay (too many from one address).
    pub auth_delayed_total: AtomicU64,
    pub refused_total: AtomicU64,
    pub cancel_requests_total: AtomicU64,
    pub backend_connect_failures_total: AtomicU64,
    pub queries_total: AtomicU64,
    pub parses_total: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub protocol_errors_total: AtomicU64,
    pub backend_up: AtomicBool,
    pub schema_errors: AtomicU64,
    /// Weak statements counted as strong because their session's search_path differs from the
    /// schema file's.
    pub strengthened_for_search_path_total: AtomicU64,
    /// Statements by consistency class, indexed like `Class::ALL`.
    pub statements_by_class: [AtomicU64; crate::classify::Class::ALL.len()],
    /// Weak changes from peers that changed something here.
    pub weak_applied_total: AtomicU64,
    /// Batches that failed whole and were applied change by change (a constraint, a missing
    /// table or column: a few are expected, a steady stream means apply runs slow).
    pub weak_batches_change_by_change_total: AtomicU64,
    /// Parked weak changes, by database.
    pub weak_parked: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Weak replication lag, by (peer, database): (changes, milliseconds).
    pub weak_lag: std::sync::Mutex<std::collections::BTreeMap<(String, String), (u64, u64)>>,
    /// Raft's state, once consensus has started (a node in a cluster).
    pub raft: std::sync::Mutex<Option<RaftStatus>>,
    /// Each peer's link, once the peer links have started (a node in a cluster).
    pub peers: std::sync::OnceLock<Arc<crate::peer::Peers>>,
}

pub type MetricsHandle = Arc<Metrics>;

/// The node's Raft state, as the consensus reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Committed entries this node could not apply (it reads no strong data until repaired).
    pub unapplied: u64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn weak_parked_add(&self, db: &str, n: u64) {
        let mut m = self.weak_parked.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(db.to_owned()).or_default() += n;
    }

    pub fn weak_parked_set(&self, db: &str, n: u64) {
        self.weak_parked.lock().unwrap_or_else(|p| p.into_inner()).insert(db.to_owned(), n);
    }

    pub fn set_raft(&self, st: RaftStatus) {
        *self.raft.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
    }

    pub fn set_weak_lag(&self, peer: &str, db: &str, changes: u64, millis: u64) {
        let mut m = self.weak_lag.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((peer.to_owned(), db.to_owned()), (changes, millis));
    }

    pub fn count_class(&self, class: crate::classify::Class) {
        if let Some(i) = crate::classify::Class::ALL.iter().position(|c| *c == class) {
            self.statements_by_class[i].fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self, node: &str) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            out.push_str(&format!(
                "# HELP pgmix_{name} {help}\n# TYPE pgmix_{name} {kind}\npgmix_{name}{{node=\"{node}\"}} {v}\n"
            ));
        };
        counter("connections_total", "Client connections accepted.", "counter", self.connections_total.load(Relaxed));
        counter("connections_active", "Client sessions open now.", "gauge", self.connections_active.load(Relaxed));
        counter(
            "tls_connections_total",
            "Client connections that negotiated TLS.",
            "counter",
            self.tls_connections_total.load(Relaxed),
        );
        counter(
            "auth_failures_total",
            "Failed client authentications.",
            "counter",
            self.auth_failures_total.load(Relaxed),
        );
        counter(
            "auth_delayed_total",
            "Failed logins answered after a delay because their address failed too often.",
            "counter",
            self.auth_delayed_total.load(Relaxed),
        );
        counter(
            "refused_total",
            "Connections refused before a session started.",
            "counter",
            self.refused_total.load(Relaxed),
        );
        counter(
            "cancel_requests_total",
            "Cancel requests received.",
            "counter",
            self.cancel_requests_total.load(Relaxed),
        );
        counter(
            "backend_connect_failures_total",
            "Failed connections to the local Postgres.",
            "counter",
            self.backend_connect_failures_total.load(Relaxed),
        );
        counter("queries_total", "Simple-protocol Query messages.", "counter", self.queries_total.load(Relaxed));
        counter("parses_total", "Extended-protocol Parse messages.", "counter", self.parses_total.load(Relaxed));
        counter(
            "client_bytes_received_total",
            "Bytes received from clients.",
            "counter",
            self.bytes_from_clients.load(Relaxed),
        );
        counter("client_bytes_sent_total", "Bytes sent to clients.", "counter", self.bytes_to_clients.load(Relaxed));
        counter(
            "protocol_errors_total",
            "Malformed client protocol messages.",
            "counter",
            self.protocol_errors_total.load(Relaxed),
        );
        counter("backend_up", "1 when the local Postgres answers.", "gauge", self.backend_up.load(Relaxed) as u64);
        counter(
            "schema_errors",
            "Problems of the schema file against the catalog found by the last check (after DDL).",
            "gauge",
            self.schema_errors.load(Relaxed),
        );
        counter(
            "strengthened_for_search_path_total",
            "Weak statements treated as strong because their session's search_path differs from the schema file's.",
            "counter",
            self.strengthened_for_search_path_total.load(Relaxed),
        );
        let raft = self.raft.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(r) = raft {
            counter("raft_is_leader", "1 on the Raft leader, else 0.", "gauge", u64::from(r.role == "leader"));
            counter("raft_term", "The current Raft term.", "gauge", r.term);
            counter(
                "raft_leader",
                "The node id of the Raft leader this node knows (0: none).",
                "gauge",
                r.leader.unwrap_or(0),
            );
            counter("raft_commit_index", "The last committed Raft log index.", "gauge", r.commit_index);
            counter("raft_applied_index", "The last Raft log index applied on this node.", "gauge", r.applied_index);
            counter(
                "strong_unapplied_entries",
                "Committed entries this node could not apply; while not 0 its strong reads go to the leader.",
                "gauge",
                r.unapplied,
            );
        }
        if self.peers.get().is_some() {
            counter(
                "weak_applied_total",
                "Weak changes from peers that changed something on this node.",
                "counter",
                self.weak_applied_total.load(Relaxed),
            );
            counter(
                "weak_batches_change_by_change_total",
                "Batches from peers applied change by change because one change failed.",
                "counter",
                self.weak_batches_change_by_change_total.load(Relaxed),
            );
            let parked: u64 = self.weak_parked.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
            counter(
                "weak_conflicts_parked",
                "Weak changes from peers waiting to be applied (pgmix.conflicts).",
                "gauge",
                parked,
            );
        }
        out.push_str("# HELP pgmix_statements_total Statements by consistency class.\n");
        out.push_str("# TYPE pgmix_statements_total counter\n");
        for (class, n) in crate::classify::Class::ALL.iter().zip(&self.statements_by_class) {
            out.push_str(&format!(
                "pgmix_statements_total{{node=\"{node}\",class=\"{}\"}} {}\n",
                class.as_str(),
                n.load(Relaxed)
            ));
        }
        if let Some(peers) = self.peers.get() {
            // Per peer, over the databases: changes summed, seconds the worst.
            let mut lag: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
            let lags = self.weak_lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for p in &peers.list {
                lag.insert(&p.name, (0, 0));
            }
            for ((peer, _), (n, ms)) in &lags {
                let e = lag.entry(peer.as_str()).or_default();
                e.0 += n;
                e.1 = e.1.max(*ms);
            }
            out.push_str("# HELP pgmix_weak_lag_changes Changes in each peer's log this node has not applied yet.\n");
            out.push_str("# TYPE pgmix_weak_lag_changes gauge\n");
            for (peer, (n, _)) in &lag {
                out.push_str(&format!("pgmix_weak_lag_changes{{node=\"{node}\",peer=\"{peer}\"}} {n}\n"));
            }
            out.push_str("# HELP pgmix_weak_lag_seconds Age of the oldest change in each peer's log this node has not applied yet.\n");
            out.push_str("# TYPE pgmix_weak_lag_seconds gauge\n");
            for (peer, (_, ms)) in &lag {
                out.push_str(&format!(
                    "pgmix_weak_lag_seconds{{node=\"{node}\",peer=\"{peer}\"}} {:.3}\n",
                    *ms as f64 / 1000.0
                ));
            }
            out.push_str(
                "# HELP pgmix_peer_up Whether the peer link to each other node is up.
",
            );
            out.push_str(
                "# TYPE pgmix_peer_up gauge
",
            );
            for p in &peers.list {
                out.push_str(&format!(
                    "pgmix_peer_up{{node=\"{node}\",peer=\"{}\"}} {}
",
                    p.name,
                    u8::from(p.is_up())
                ));
            }
        }
        out
    }
}

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: MetricsHandle, node: String, shutdown: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((mut sock, _)) = conn else { continue };
        let body = metrics.render(&node);
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let n = sock.read(&mut req).await.unwrap_or(0);
            let ok = req[..n].starts_with(b"GET /metrics");
            let (status, body) = if ok { ("200 OK", body) } else { ("404 Not Found", "try GET /metrics\n".into()) };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
