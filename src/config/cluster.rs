//! The `[cluster]` section: this node's place in a cluster, and the mutual TLS of its peer
//! links, validated once at start-up with errors that name the key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::file::ClusterSection;

/// One other node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    /// The name its certificate is valid for (`pgmix certs` uses the node name).
    pub name: String,
    /// Where its peer links listen, `host:port`.
    pub addr: String,
}

/// A validated `[cluster]` section.
#[derive(Clone)]
pub struct ClusterConfig {
    pub id: String,
    pub node_id: u32,
    pub max_nodes: u32,
    /// How long a strong statement waits for a leader and a majority (`strong_timeout_ms`).
    pub strong_timeout: std::time::Duration,
    /// About how many bytes of effects go in one log entry (`strong_chunk_kib`).
    pub strong_chunk_bytes: usize,
    /// Log entries between snapshots (`snapshot_entries`).
    pub snapshot_entries: u64,
    pub listen: SocketAddr,
    pub peers: Vec<Peer>,
    /// Accepts only clients with a certificate from the cluster CA.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Presents this node's certificate and accepts only servers certified by the cluster CA.
    pub connector: tokio_rustls::TlsConnector,
    /// Checks that a certificate from the cluster CA is valid for a node name.
    pub verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("id", &self.id)
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .finish()
    }
}

impl ClusterConfig {
    /// Whether `certs` (as the peer presented them) prove the peer is node `name`.
    pub fn certifies(&self, certs: &[CertificateDer<'static>], name: &str) -> bool {
        let (Some(leaf), Ok(server_name)) = (certs.first(), ServerName::try_from(name.to_owned())) else {
            return false;
        };
        use rustls::client::danger::ServerCertVerifier;
        self.verifier.verify_server_cert(leaf, &certs[1..], &server_name, &[], UnixTime::now()).is_ok()
    }
}

/// `node_name`: the name this node's certificate must be valid for.
pub fn validate(raw: &ClusterSection, node_name: &str, base: &Path) -> Result<ClusterConfig, (String, String)> {
    let err = |key: &str, reason: String| (format!("cluster.{key}"), reason);
    if raw.id.is_empty() {
        return Err(err("id", "must not be empty".into()));
    }
    if raw.max_nodes < 1 + raw.peers.len() as u32 {
        return Err(err(
            "max_nodes",
            format!("{} is fewer than the {} nodes listed", raw.max_nodes, 1 + raw.peers.len()),
        ));
    }
    if raw.strong_timeout_ms < 100 {
        return Err(err("strong_timeout_ms", format!("{} is too short: give at least 100 ms", raw.strong_timeout_ms)));
    }
    if !(16..=2048).contains(&raw.strong_chunk_kib) {
        return Err(err(
            "strong_chunk_kib",
            format!("{} is out of range: give 16 to 2048 (KiB)", raw.strong_chunk_kib),
        ));
    }
    if raw.snapshot_entries < 10 {
        return Err(err("snapshot_entries", format!("{} is too few: give at least 10", raw.snapshot_entries)));
    }
    let in_range = |id: u32| (1..=raw.max_nodes).contains(&id);
    if !in_range(raw.node_id) {
        return Err(err("node_id", format!("must be from 1 to max_nodes ({})", raw.max_nodes)));
    }
    let listen: SocketAddr =
        raw.listen.parse().map_err(|e| err("listen", format!("`{}` is not an address: {e}", raw.listen)))?;
    let mut ids = HashSet::from([raw.node_id]);
    let mut names = HashSet::from([node_name.to_owned()]);
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let key = |k: &str| format!("peers[{i}].{k}");
        if !in_range(p.id) {
            return Err(err(&key("id"), format!("must be from 1 to max_nodes ({})", raw.max_nodes)));
        }
        if !ids.insert(p.id) {
            return Err(err(&key("id"), format!("node id {} is used twice (this node is {})", p.id, raw.node_id)));
        }
        if !names.insert(p.name.clone()) {
            return Err(err(&key("name"), format!("name `{}` is used twice", p.name)));
        }
        if ServerName::try_from(p.name.clone()).is_err() {
            return Err(err(&key("name"), format!("`{}` is not a host name a certificate can name", p.name)));
        }
        if p.addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
            return Err(err(&key("addr"), format!("`{}` is not host:port", p.addr)));
        }
        peers.push(Peer { id: p.id, name: p.name.clone(), addr: p.addr.clone() });
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = base.join(&raw.ca);
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("ca", format!("cannot read PEM certificates from {}: {e}", ca_path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| err("ca", format!("{}: not a CA certificate: {e}", ca_path.display())))?;
    }
    if roots.is_empty() {
        return Err(err("ca", format!("{} holds no certificate", ca_path.display())));
    }
    let roots = Arc::new(roots);
    let cert_path = base.join(&raw.cert);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("cert", format!("cannot read PEM certificates from {}: {e}", cert_path.display())))?;
    let key_path = base.join(&raw.key);
    let key = || {
        PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| err("key", format!("cannot read a PEM private key from {}: {e}", key_path.display())))
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err("ca", e.to_string()))?;
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err("ca", e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key()?)
        .map_err(|e| err("key", format!("does not fit {}: {e}", cert_path.display())))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.clone(), key()?)
        .map_err(|e| err("key", format!("does not fit {}: {e}", cert_path.display())))?;
    let cfg = ClusterConfig {
        id: raw.id.clone(),
        node_id: raw.node_id,
        max_nodes: raw.max_nodes,
        strong_timeout: std::time::Duration::from_millis(raw.strong_timeout_ms),
        strong_chunk_bytes: raw.strong_chunk_kib as usize * 1024,
        snapshot_entries: raw.snapshot_entries,
        listen,
        peers,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        verifier,
    };
    if !cfg.certifies(&chain, node_name) {
        return Err(err(
            "cert",
            format!(
                "{} is not a certificate from {} for this node's name `{node_name}`; make one with `pgmix certs --nodes {node_name}`",
                cert_path.display(),
                ca_path.display()
            ),
        ));
    }
    Ok(cfg)
}
