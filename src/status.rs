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
#[derive(Debug, Clone, PartialEq)]
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
    pub peers: Vec<PeerStatus>,
    /// Weak changes from peers waiting to be applied.
    pub parked: u64,
    /// (leads, term, leader id or 0, commit index, applied index), in a cluster.
    pub raft: Option<(bool, u64, u64, u64, u64)>,
    /// Committed entries this node could not apply.
    pub unapplied: u64,
}

/// A peer as one node sees it: its link, and how far behind its change log this node is.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    pub up: bool,
    pub lag_changes: u64,
    pub lag_seconds: f64,
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
        parked: 0,
        raft: None,
        unapplied: 0,
    };
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(real) = value.parse::<f64>() else { continue };
        let value = real as u64;
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
            "pgmix_peer_up" | "pgmix_weak_lag_changes" | "pgmix_weak_lag_seconds" => {
                let name = label("peer").unwrap_or_default();
                let i = match st.peers.iter().position(|p| p.name == name) {
                    Some(i) => i,
                    None => {
                        st.peers.push(PeerStatus { name, up: false, lag_changes: 0, lag_seconds: 0.0 });
                        st.peers.len() - 1
                    }
                };
                let p = &mut st.peers[i];
                match name_of(name_labels) {
                    "pgmix_peer_up" => p.up = value == 1,
                    "pgmix_weak_lag_changes" => p.lag_changes = value,
                    _ => p.lag_seconds = real,
                }
            }
            "pgmix_weak_conflicts_parked" => st.parked = value,
            "pgmix_raft_is_leader" => st.raft.get_or_insert_default().0 = value == 1,
            "pgmix_raft_term" => st.raft.get_or_insert_default().1 = value,
            "pgmix_raft_leader" => st.raft.get_or_insert_default().2 = value,
            "pgmix_raft_commit_index" => st.raft.get_or_insert_default().3 = value,
            "pgmix_raft_applied_index" => st.raft.get_or_insert_default().4 = value,
            "pgmix_strong_unapplied_entries" => st.unapplied = value,
            _ => {}
        }
    }
    seen.then_some(st)
}

fn name_of(name_labels: &str) -> &str {
    name_labels.split_once('{').map_or(name_labels, |(n, _)| n)
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
        if let Some((leads, term, leader, commit, applied)) = self.raft {
            let role = if leads { "leader" } else { "follower" };
            let leader = if leader == 0 { "none".to_owned() } else { leader.to_string() };
            write!(f, " raft: {role} term={term} leader={leader} commit={commit} applied={applied}")?;
        }
        if self.unapplied > 0 {
            write!(
                f,
                " UNAPPLIED={} (committed entries this node could not apply: its strong reads go to the leader until it is repaired)",
                self.unapplied
            )?;
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> = self
                .peers
                .iter()
                .map(|p| {
                    format!(
                        "{}={} (lag {} changes, {:.1}s)",
                        p.name,
                        if p.up { "up" } else { "DOWN" },
                        p.lag_changes,
                        p.lag_seconds
                    )
                })
                .collect();
            write!(f, " peers: {}", peers.join(" "))?;
            if self.parked > 0 {
                write!(f, " parked weak changes: {} (see pgmix.conflicts)", self.parked)?;
            }
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

    #[test]
    fn shows_each_peers_link_and_lag_and_the_parked_changes() {
        let text = "pgmix_backend_up{node=\"node1\"} 1\n\
            pgmix_weak_conflicts_parked{node=\"node1\"} 2\n\
            pgmix_peer_up{node=\"node1\",peer=\"node2\"} 1\n\
            pgmix_peer_up{node=\"node1\",peer=\"node3\"} 0\n\
            pgmix_weak_lag_changes{node=\"node1\",peer=\"node2\"} 0\n\
            pgmix_weak_lag_changes{node=\"node1\",peer=\"node3\"} 1500\n\
            pgmix_weak_lag_seconds{node=\"node1\",peer=\"node2\"} 0.050\n\
            pgmix_weak_lag_seconds{node=\"node1\",peer=\"node3\"} 12.345\n";
        let text = format!(
            "{text}pgmix_raft_is_leader{{node=\"node1\"}} 0\npgmix_raft_term{{node=\"node1\"}} 3\n\
             pgmix_raft_leader{{node=\"node1\"}} 2\npgmix_raft_commit_index{{node=\"node1\"}} 7\n\
             pgmix_raft_applied_index{{node=\"node1\"}} 7\n"
        );
        let st = parse(&text).unwrap();
        let line = st.to_string();
        assert!(line.contains("raft: follower term=3 leader=2 commit=7 applied=7"), "{line}");
        assert!(line.contains("node2=up (lag 0 changes, 0.1s)"), "{line}");
        assert!(line.contains("node3=DOWN (lag 1500 changes, 12.3s)"), "{line}");
        assert!(line.ends_with("parked weak changes: 2 (see pgmix.conflicts)"), "{line}");
    }
}
