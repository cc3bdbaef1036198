//! Peer links: nodes of one cluster link up over mutually authenticated TLS; a connection that
//! cannot prove it belongs to the cluster is refused before it can send a single message.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pgmix::cluster::certs::{ClusterCerts, ensure_cluster};
use pgmix::cluster::pg::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TempDir, TestNode, TestPg, node_toml, wait_until};

/// Two linked nodes; free ports are picked again if another test took one first.
pub async fn two_nodes(certs: &ClusterCerts) -> (TestNode, TestNode, [u16; 2]) {
    for _ in 0..5 {
        let ports = [free_port().unwrap(), free_port().unwrap()];
        let (Some(n1), Some(n2)) = (try_cluster_node(certs, 1, ports).await, try_cluster_node(certs, 2, ports).await)
        else {
            continue;
        };
        return (n1, n2, ports);
    }
    panic!("no free peer ports after 5 tries");
}

pub fn hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

/// A node named `name` (id `id`) of a two-node cluster whose peer ports are `ports`.
pub async fn cluster_node(certs: &ClusterCerts, id: u32, ports: [u16; 2]) -> TestNode {
    try_cluster_node(certs, id, ports).await.expect("the peer port was free")
}

/// None when the peer port was taken meanwhile.
async fn try_cluster_node(certs: &ClusterCerts, id: u32, ports: [u16; 2]) -> Option<TestNode> {
    let name = format!("node{id}");
    let other = 3 - id;
    let me = certs.node(&name).unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let section = format!(
        "[cluster]\nid = \"test-cluster\"\nnode_id = {id}\nlisten = \"127.0.0.1:{}\"\nca = {}\ncert = {}\nkey = {}\n\
         [[cluster.peers]]\nid = {other}\nname = \"node{other}\"\naddr = \"127.0.0.1:{}\"\n",
        ports[id as usize - 1],
        q(&certs.ca_cert),
        q(&me.cert),
        q(&me.key),
        ports[other as usize - 1],
    );
    let pg = TestPg::start();
    let text = node_toml(&pg, 0, "allow", &section).replace("node_name = \"test\"", &format!("node_name = \"{name}\""));
    let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("cluster config");
    match pgmix::node::start(cfg).await {
        Ok(node) => Some(TestNode::from_parts(node, pg)),
        Err(pgmix::node::NodeError::Peer(e)) => {
            eprintln!("retrying: {e}");
            None
        }
        Err(e) => panic!("node starts: {e}"),
    }
}

fn link_up(node: &TestNode) -> bool {
    node.handle().metrics.peers.get().is_some_and(|p| p.list.iter().all(|p| p.is_up()))
}

/// A TLS client for the peer port: trusting `ca`, presenting `cert` if given.
fn connector(ca: &Path, cert: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c).unwrap().map(|c| c.unwrap()).collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Whether the peer port lets this client through TLS and then answers its greeting.
async fn greeting_answered(port: u16, tls: tokio_rustls::TlsConnector, cluster: &str, node: u32) -> bool {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("node2").unwrap();
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp)).await else {
        return false;
    };
    let mut hello = bytes::BytesMut::new();
    pgmix::peer::frame::Frame::Hello { cluster: cluster.into(), node }.encode(&mut hello);
    if s.write_all(&hello).await.is_err() || s.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // TLS 1.3 reports a refused client certificate at the first read.
    matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_a_cluster_link_up_and_strangers_are_refused() {
    let dir = TempDir::new("peers");
    let certs = ensure_cluster(&dir.0.join("certs"), &["node1".into(), "node2".into()], &hosts()).unwrap();
    let other_ca = ensure_cluster(&dir.0.join("other"), &["node1".into()], &hosts()).unwrap();
    let (n1, n2, ports) = two_nodes(&certs).await;
    wait_until("both ends of the link are up", || async { link_up(&n1) && link_up(&n2) }).await;
    let port = ports[1];

    // Sanity: node1's own certificate, as node1 of this cluster, is answered.
    let node1 = certs.node("node1").unwrap();
    let real = connector(&certs.ca_cert, Some((&node1.cert, &node1.key)));
    assert!(greeting_answered(port, real.clone(), "test-cluster", 1).await, "a real node is answered");

    // Plain bytes on the peer port: the TLS handshake fails, nothing is read as a message.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"\x01\x01\x00\x00\x00\x04helo").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed, not hanging");
    assert!(matches!(n, Ok(0) | Err(_)) || buf[0] == 0x15, "plain text gets nothing but a TLS alert: {n:?}");
    // TLS without a client certificate, and with one from another CA.
    assert!(!greeting_answered(port, connector(&certs.ca_cert, None), "test-cluster", 1).await);
    let foreign = other_ca.node("node1").unwrap();
    assert!(
        !greeting_answered(port, connector(&certs.ca_cert, Some((&foreign.cert, &foreign.key))), "test-cluster", 1)
            .await
    );
    // A real certificate, but the greeting names another cluster, or a node it is not.
    assert!(!greeting_answered(port, real.clone(), "other-cluster", 1).await);
    let node2 = certs.node("node2").unwrap();
    let as_node2 = connector(&certs.ca_cert, Some((&node2.cert, &node2.key)));
    assert!(!greeting_answered(port, as_node2, "test-cluster", 1).await, "node2's certificate claiming node1");

    // The cluster's own link is unaffected.
    assert!(link_up(&n1) && link_up(&n2));
}

#[test]
fn a_cluster_section_names_the_key_that_is_wrong() {
    let dir = TempDir::new("peers-config");
    let certs = ensure_cluster(&dir.0.join("certs"), &["node1".into(), "node2".into()], &hosts()).unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let node2 = certs.node("node2").unwrap();
    let base = format!(
        "node_name = \"node1\"\nlisten = \"127.0.0.1:0\"\n[backend]\nhost = \"/tmp\"\nuser = \"postgres\"\n\
         [[users]]\nname = \"u\"\npassword = \"p\"\n[cluster]\nid = \"c\"\nnode_id = 1\nlisten = \"127.0.0.1:0\"\nca = {}\n",
        q(&certs.ca_cert)
    );
    let load = |extra: String| {
        pgmix::config::from_toml_str(&format!("{base}{extra}"), "node1.toml", Path::new(".")).unwrap_err().to_string()
    };
    // node2's certificate on node1.
    let err = load(format!("cert = {}\nkey = {}\n", q(&node2.cert), q(&node2.key)));
    assert!(err.contains("node1.toml") && err.contains("cluster.cert") && err.contains("node1"), "{err}");
    let node1 = certs.node("node1").unwrap();
    let ok = format!("cert = {}\nkey = {}\n", q(&node1.cert), q(&node1.key));
    let err = load(format!("{ok}[[cluster.peers]]\nid = 1\nname = \"node2\"\naddr = \"127.0.0.1:1\"\n"));
    assert!(err.contains("cluster.peers[0].id"), "{err}");
    let err = load(format!("{ok}[[cluster.peers]]\nid = 2\nname = \"node2\"\naddr = \"nowhere\"\n"));
    assert!(err.contains("cluster.peers[0].addr"), "{err}");
}
