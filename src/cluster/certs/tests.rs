//! Tests of the cluster certificates: what `pgmix certs` makes verifies, in a real mutual-TLS
//! handshake, and what it keeps is checked.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pgmix-certs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn default_hosts() -> Vec<String> {
    strings(&DEFAULT_HOSTS)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    read_certs(path).unwrap().remove(0)
}

fn key_der(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

/// A DER element's (tag, contents, rest); enough to walk to a certificate's names.
fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (der[0], der[1]);
    let (len, start) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        (der[2..2 + n].iter().fold(0, |a, &b| (a << 8) | b as usize), 2 + n)
    };
    (tag, &der[start..start + len], &der[start + len..])
}

/// (issuer, subject) of a DER certificate, as raw Name encodings.
fn issuer_and_subject(cert: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cert, _) = element(cert);
    let (_, mut tbs, _) = element(cert);
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, _, rest) = element(tbs);
        fields.push((tag, &tbs[..tbs.len() - rest.len()]));
        tbs = rest;
    }
    // [0] version, serial, signature algorithm, issuer, validity, subject, ...
    assert_eq!(fields[0].0, 0xa0);
    (fields[3].1.to_vec(), fields[5].1.to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn node_params_name_the_node_and_allow_server_and_client_auth() {
    let p = node_params("node1", &strings(&["localhost", "127.0.0.1", "NODE1"])).unwrap();
    assert_eq!(p.distinguished_name.get(&DnType::CommonName), Some(&rcgen::DnValue::from("node1")));
    assert_eq!(p.subject_alt_names.len(), 3, "node1 once (names are case-insensitive): {:?}", p.subject_alt_names);
    assert!(p.subject_alt_names.contains(&rcgen::SanType::IpAddress([127, 0, 0, 1].into())));
    assert_eq!(p.extended_key_usages, vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]);
    assert_eq!(p.is_ca, IsCa::ExplicitNoCa);
    assert!(p.use_authority_key_identifier_extension);
}

#[test]
fn bad_node_names_and_hosts_are_refused() {
    for bad in ["", "ca", "CA", "a/b", "../x", ".hidden", "two words", "node_1", "127.0.0.1"] {
        assert!(node_params(bad, &[]).is_err(), "node name {bad:?}");
    }
    assert!(node_params("node1", &strings(&["bad host"])).unwrap_err().contains("bad host"));
    let dir = TempDir::new();
    let err = ensure_cluster(&dir.0, &strings(&["n1", "N1"]), &[]).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    assert!(ensure_cluster(&dir.0, &[], &[]).is_err());
    assert!(!dir.0.join(CA_KEY).exists(), "nothing is written for a bad request");
}

#[test]
fn ca_subject_comes_from_its_key() {
    let a = KeyPair::generate().unwrap();
    let b = KeyPair::generate().unwrap();
    assert_eq!(ca_params(&a), ca_params(&a));
    assert_ne!(ca_params(&a).distinguished_name, ca_params(&b).distinguished_name);
}

#[test]
fn cluster_certs_are_made_once_signed_by_the_ca_and_private_keys_are_0600() {
    let dir = TempDir::new();
    let nodes = strings(&["node1", "node2"]);
    let certs = ensure_cluster(&dir.0, &nodes, &default_hosts()).unwrap();
    let names = |v: &[PathBuf]| v.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    let written: Vec<String> = names(&certs.written);
    assert_eq!(written, ["ca.key", "ca.crt", "node1.key", "node1.crt", "node2.key", "node2.crt"]);
    assert_eq!(certs.ca_cert, dir.0.join("ca.crt"));
    assert_eq!(certs.node("node2").unwrap().cert, dir.0.join("node2.crt"));
    for f in ["ca.key", "node1.key", "node2.key"] {
        assert_eq!(mode(&dir.0.join(f)), 0o600, "{f}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 6, "no temporary files remain: {leftovers:?}");

    // Each node certificate: issued by the CA (issuer = CA subject), subject CN = node name,
    // and verifies against the CA as server (for each host) and as client.
    let ca = first_cert(&certs.ca_cert);
    let (ca_issuer, ca_subject) = issuer_and_subject(&ca);
    assert_eq!(ca_issuer, ca_subject, "the CA is self-signed");
    for n in &certs.nodes {
        let leaf = first_cert(&n.cert);
        let (issuer, subject) = issuer_and_subject(&leaf);
        assert_eq!(issuer, ca_subject);
        assert!(contains(&subject, n.name.as_bytes()), "CN names {}", n.name);
        let sans = subject_alt_names(&n.name, &default_hosts());
        check_node(&ca, vec![leaf.clone()], key_der(&n.key), &sans).unwrap();
        // The channel binding of `[tls]` is defined for it.
        assert_eq!(crate::frontend::endpoint::tls_server_end_point(&leaf).unwrap().len(), 32);
    }
    let err = check_node(
        &ca,
        read_certs(&certs.nodes[0].cert).unwrap(),
        key_der(&certs.nodes[0].key),
        &strings(&["elsewhere"]),
    )
    .unwrap_err();
    assert!(matches!(err, NodeProblem::NotForName(ref n) if n == "elsewhere"), "{err}");
    let err =
        check_node(&ca, read_certs(&certs.nodes[0].cert).unwrap(), key_der(&certs.nodes[1].key), &[]).unwrap_err();
    assert!(matches!(err, NodeProblem::KeyMismatch(_)), "{err}");

    // Again: nothing written, nothing changed.
    let before: Vec<Vec<u8>> =
        certs.nodes.iter().flat_map(|n| [&n.cert, &n.key]).map(|p| std::fs::read(p).unwrap()).collect();
    let ca_before = std::fs::read(&certs.ca_cert).unwrap();
    let again = ensure_cluster(&dir.0, &nodes, &default_hosts()).unwrap();
    assert!(again.written.is_empty(), "{:?}", again.written);
    let after: Vec<Vec<u8>> =
        again.nodes.iter().flat_map(|n| [&n.cert, &n.key]).map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after);

    // A third node is added under the same CA.
    let more = ensure_cluster(&dir.0, &strings(&["node1", "node2", "node3"]), &default_hosts()).unwrap();
    let written: Vec<String> = names(&more.written);
    assert_eq!(written, ["node3.key", "node3.crt"]);
    assert_eq!(std::fs::read(&more.ca_cert).unwrap(), ca_before);
    let n3 = more.node("node3").unwrap();
    check_node(&ca, read_certs(&n3.cert).unwrap(), key_der(&n3.key), &strings(&["node3", "localhost"])).unwrap();
}

#[test]
fn kept_files_that_do_not_fit_are_reported_with_what_to_do() {
    let dir = TempDir::new();
    ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap();

    // More hosts than the kept certificate was made for.
    let err = ensure_cluster(&dir.0, &strings(&["node1"]), &strings(&["db.example.com"])).unwrap_err().to_string();
    assert!(err.contains("node1.crt") && err.contains("db.example.com") && err.contains("delete"), "{err}");

    // A certificate whose key is gone.
    std::fs::remove_file(dir.0.join("node1.key")).unwrap();
    let err = ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap_err().to_string();
    assert!(err.contains("node1.crt") && err.contains("node1.key"), "{err}");

    // A node pair from another cluster's CA.
    let other = TempDir::new();
    ensure_cluster(&other.0, &strings(&["node1"]), &default_hosts()).unwrap();
    for f in ["node1.crt", "node1.key"] {
        std::fs::copy(other.0.join(f), dir.0.join(f)).unwrap();
    }
    let err = ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap_err().to_string();
    assert!(err.contains("node1.crt") && err.contains("ca.crt"), "{err}");

    // A CA certificate that does not belong to the CA key.
    std::fs::copy(other.0.join("ca.crt"), dir.0.join("ca.crt")).unwrap();
    let err = ensure_cluster(&dir.0, &strings(&["node9"]), &default_hosts()).unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("does not belong"), "{err}");
    assert!(!dir.0.join("node9.crt").exists());
}

#[test]
fn interrupted_runs_are_completed_and_a_node_machine_needs_no_ca_key() {
    let dir = TempDir::new();
    let certs = ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap();
    let ca = first_cert(&certs.ca_cert);

    // Only ca.crt and the node's pair (a node's machine): fine as long as nothing is to be signed.
    let ca_key = std::fs::read(&certs.ca_key).unwrap();
    std::fs::remove_file(&certs.ca_key).unwrap();
    assert!(ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap().written.is_empty());
    let err = ensure_cluster(&dir.0, &strings(&["node2"]), &default_hosts()).unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("node2"), "{err}");
    std::fs::write(&certs.ca_key, ca_key).unwrap();

    // A key written but its certificate not: the certificate is made for that key.
    let key_before = std::fs::read(&certs.nodes[0].key).unwrap();
    std::fs::remove_file(&certs.nodes[0].cert).unwrap();
    let again = ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap();
    assert_eq!(again.written, vec![certs.nodes[0].cert.clone()]);
    assert_eq!(std::fs::read(&certs.nodes[0].key).unwrap(), key_before);

    // The CA key without its certificate: the certificate is made again and still verifies
    // the node certificates made before.
    std::fs::remove_file(&certs.ca_cert).unwrap();
    let again = ensure_cluster(&dir.0, &strings(&["node1"]), &default_hosts()).unwrap();
    assert_eq!(again.written, vec![certs.ca_cert.clone()]);
    let remade = first_cert(&certs.ca_cert);
    assert_eq!(issuer_and_subject(&remade).1, issuer_and_subject(&ca).1);
    let n = &again.nodes[0];
    check_node(&remade, read_certs(&n.cert).unwrap(), key_der(&n.key), &default_hosts()).unwrap();
}

#[test]
fn ensure_self_signed_makes_a_localhost_certificate_or_keeps_a_given_pair() {
    let dir = TempDir::new();
    let (cert, key) = ensure_self_signed(&dir.0).unwrap();
    assert_eq!(ensure_self_signed(&dir.0).unwrap(), (cert.clone(), key.clone()));
    let ca = first_cert(&dir.0.join(CA_CERT));
    check_node(&ca, read_certs(&cert).unwrap(), key_der(&key), &default_hosts()).unwrap();
    assert_eq!(mode(&key), 0o600);

    let given = TempDir::new();
    std::fs::write(given.0.join("cert.pem"), "x").unwrap();
    std::fs::write(given.0.join("key.pem"), "y").unwrap();
    assert_eq!(ensure_self_signed(&given.0).unwrap(), (given.0.join("cert.pem"), given.0.join("key.pem")));
}

fn roots(ca: &Path) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert(ca)).unwrap();
    Arc::new(roots)
}

/// A mutually authenticated TLS handshake over an in-memory pipe: `server` presents its node
/// certificate and requires a client certificate under `server_ca`; `client` presents its own
/// and checks the server's under `client_ca` for `name`. Then one byte each way.
async fn handshake(
    server: &NodeCert,
    server_ca: &Path,
    client: &NodeCert,
    client_ca: &Path,
    name: &str,
) -> Result<(), Failed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server_ca), provider.clone())
        .build()
        .unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&server.cert).unwrap(), key_der(&server.key))
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_ca))
        .with_client_auth_cert(read_certs(&client.cert).unwrap(), key_der(&client.key))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let server_side = async move {
        let mut tls = acceptor.accept(s).await.map_err(|e| format!("server: {e}"))?;
        let (_, conn) = tls.get_ref();
        let peer = conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
        assert_eq!(peer, 1, "the client presented its certificate");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&[b[0] + 1]).await.map_err(|e| format!("server write: {e}"))?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let client_side = async move {
        let mut tls = connector.connect(name, c).await.map_err(|e| format!("client: {e}"))?;
        tls.write_all(&[41]).await.map_err(|e| format!("client write: {e}"))?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| format!("client read: {e}"))?;
        assert_eq!(b[0], 42);
        Ok::<_, String>(())
    };
    let both = async { tokio::join!(server_side, client_side) };
    let (s, c) = tokio::time::timeout(std::time::Duration::from_secs(10), both).await.expect("handshake timed out");
    match (s, c) {
        (Ok(()), Ok(())) => Ok(()),
        (s, c) => Err(Failed { server: s.err(), client: c.err() }),
    }
}

/// What each side of a failed handshake said.
#[derive(Debug)]
struct Failed {
    server: Option<String>,
    client: Option<String>,
}

#[tokio::test]
async fn nodes_complete_a_mutual_tls_handshake_under_their_ca_and_strangers_do_not() {
    let dir = TempDir::new();
    let certs = ensure_cluster(&dir.0, &strings(&["node1", "node2"]), &default_hosts()).unwrap();
    let (n1, n2) = (certs.node("node1").unwrap(), certs.node("node2").unwrap());
    let ca = &certs.ca_cert;
    // node2 dials node1 by node name, by host name and by address (peer link / client TLS).
    for name in ["node1", "localhost", "127.0.0.1"] {
        handshake(n1, ca, n2, ca, name).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    handshake(n2, ca, n1, ca, "node2").await.unwrap();

    // The client checks the server's name.
    let err = handshake(n1, ca, n2, ca, "node2").await.unwrap_err();
    assert!(err.client.as_deref().is_some_and(|e| e.contains("not valid for name")), "{err:?}");

    // A node of another cluster is trusted neither as server nor as client.
    let other_dir = TempDir::new();
    let other = ensure_cluster(&other_dir.0, &strings(&["node3"]), &default_hosts()).unwrap();
    let n3 = other.node("node3").unwrap();
    let err = handshake(n3, &other.ca_cert, n2, ca, "node3").await.unwrap_err();
    assert!(err.client.as_deref().is_some_and(|e| e.contains("UnknownIssuer")), "{err:?}");
    let err = handshake(n1, ca, n3, ca, "node1").await.unwrap_err();
    assert!(err.server.as_deref().is_some_and(|e| e.contains("UnknownIssuer")), "{err:?}");
}
