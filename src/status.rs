//! `pgmix status`: one line per node from its metrics endpoint, for people and scripts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("{addr}: cannot read metrics: {cause}")]
    Unreachable { addr: SocketAddr, cause: std::io::Error },
    #[error("{addr}: not a pgmix metrics endpoint (no pgmix_backend_up in its answer)")]
    NotPgmix { addr: SocketAddr },
}

/// What `status` shows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    pub backend_up: bool,
    pub sessions: u64,
    pub connections: u64,
    pub refused: u64,
    pub schema_errors: u64,
    /// (class, statements)
    pub statements: Vec<(String, u64)>,
    /// Weak statements counted as strong because their session changed its search_path.
    pub strengthened: u64,
    /// (peer, link up)
    pub peers: Vec<(String, bool)>,
}

/// Parses the Prometheus text pgmix serves.
pub fn parse(text: &str) -> Option<NodeStatus> {
    let mut st = NodeStatus {
        node: String::new(),
        backend_up: false,
        sessions: 0,
        connections: 0,
        refused: 0,
        schema_errors: 0,
        statements: Vec::new(),
        strengthened: 0,
        peers: Vec::new(),
    };
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        let label = |key: &str| {
            labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{key}=\""))?.split('"').next().map(str::to_owned))
        };
        if let Some(node) = label("node") {
            st.node = node;
        }
        match name {
            "pgmix_backend_up" => {
                st.backend_up = value == 1;
                seen = true;
            }
            "pgmix_connections_active" => st.sessions = value,
            "pgmix_connections_total" => st.connections = value,
            "pgmix_refused_total" => st.refused = value,
            "pgmix_schema_errors" => st.schema_errors = value,
            "pgmix_strengthened_for_search_path_total" => st.strengthened = value,
            "pgmix_statements_total" => st.statements.push((label("class").unwrap_or_default(), value)),
            "pgmix_peer_up" => st.peers.push((label("peer").unwrap_or_default(), value == 1)),
            _ => {}
        }
    }
    seen.then_some(st)
}

pub fn fetch(addr: SocketAddr) -> Result<NodeStatus, StatusError> {
    let io = |cause| StatusError::Unreachable { addr, cause };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").map_err(io)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(io)?;
    parse(&text).ok_or(StatusError::NotPgmix { addr })
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stmts: Vec<String> =
            self.statements.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{c}={n}")).collect();
        write!(
            f,
            "{} postgres={} sessions={} connections={} refused={} schema_errors={} statements: {}",
            self.node,
            if self.backend_up { "up" } else { "DOWN" },
            self.sessions,
            self.connections,
            self.refused,
            self.schema_errors,
            if stmts.is_empty() { "none".to_owned() } else { stmts.join(" ") }
        )?;
        if self.strengthened > 0 {
            write!(f, " ({} weak made strong by a session search_path)", self.strengthened)?;
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> =
                self.peers.iter().map(|(p, up)| format!("{p}={}", if *up { "up" } else { "DOWN" })).collect();
            write!(f, " peers: {}", peers.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_metrics_endpoint_renders() {
        let m = crate::metrics::Metrics::default();
        m.backend_up.store(true, std::sync::atomic::Ordering::Relaxed);
        m.count_class(crate::classify::Class::WeakRead);
        let st = parse(&m.render("n1")).unwrap();
        assert_eq!(st.node, "n1");
        assert!(st.backend_up);
        assert!(st.statements.contains(&("weak_read".to_owned(), 1)));
        assert!(st.to_string().contains("postgres=up") && st.to_string().contains("weak_read=1"));
        assert!(!st.to_string().contains("search_path"));
        m.strengthened_for_search_path_total.store(3, std::sync::atomic::Ordering::Relaxed);
        let st = parse(&m.render("n1")).unwrap();
        assert!(st.to_string().ends_with("(3 weak made strong by a session search_path)"), "{st}");
        assert_eq!(parse("hello"), None);
    }
}
