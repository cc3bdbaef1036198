//! Certificates for a cluster: one CA (`ca.crt`, `ca.key`) and, per node, a certificate it signed
//! (`<node>.crt`, `<node>.key`). A node certificate names the node in its subject CN and in a SAN,
//! names the given hosts in SANs, and allows both TLS server and client authentication, so the
//! same two files serve client TLS (`[tls]` in `proxy.toml`) and mutually authenticated peer
//! links. Everyone who trusts `ca.crt` accepts every node.
//!
//! Existing files are kept, so making certificates is idempotent: running again for more nodes
//! adds their certificates under the existing CA. Kept files are checked (the key fits the
//! certificate, which verifies against the CA for every wanted host name), so a stale or foreign
//! file is reported instead of silently producing a cluster whose nodes reject each other.
//!
//! `pgmix certs` and `pgmix up` both go through [`ensure_cluster`]; [`ensure_self_signed`] is the
//! one-node shortcut the development cluster and the tests use.
//!
//! Keys are ECDSA P-256, certificates ECDSA with SHA-256 (SCRAM channel binding hashes the
//! certificate with SHA-256). Validity is rcgen's default, 1975 to 4096: these certificates are
//! replaced by deleting them and running again, not by expiry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use super::error::{ClusterError, io_err};

/// The CA certificate every node and client trusts.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key: needed only to sign node certificates.
pub const CA_KEY: &str = "ca.key";
/// Host names and addresses node certificates are valid for when none are given.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// Where a cluster's certificate files are.
#[derive(Debug, Clone)]
pub struct ClusterCerts {
    pub ca_cert: PathBuf,
    /// The CA key's path; the file may be absent where every node certificate already existed
    /// (a node's machine needs `ca.crt` and its own pair, not the CA key).
    pub ca_key: PathBuf,
    /// One per node, in the order asked for.
    pub nodes: Vec<NodeCert>,
    /// The files this call wrote, in the order written; every other file was already there.
    pub written: Vec<PathBuf>,
}

impl ClusterCerts {
    pub fn node(&self, name: &str) -> Option<&NodeCert> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One node's certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Development TLS for one local node: a CA and a `localhost` node certificate (valid for
/// localhost and 127.0.0.1) in `dir`; returns the node's certificate and key paths.
///
/// A `cert.pem` and `key.pem` already in `dir` (written by hand, or by earlier versions, which
/// made a self-signed pair under those names) are returned as they are.
pub fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), ClusterError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let hosts: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    let certs = ensure_cluster(dir, &["localhost".to_owned()], &hosts)?;
    let node = certs.nodes.into_iter().next().expect("one node asked for");
    Ok((node.cert, node.key))
}

/// Makes the cluster CA in `dir` unless it exists, and a certificate signed by it for each node
/// unless that exists; checks the files it keeps. `hosts` (host names and IP addresses) go into
/// each new node certificate's SANs besides the node's own name.
pub fn ensure_cluster(dir: &Path, nodes: &[String], hosts: &[String]) -> Result<ClusterCerts, ClusterError> {
    check_request(nodes, hosts).map_err(ClusterError::Cert)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let mut written = Vec::new();

    // The CA: its key signs, its certificate is what the node certificates are checked against.
    let issuer = if ca_key.exists() {
        let key = read_key_pair(&ca_key)?;
        if !ca_cert.exists() {
            // A key without its certificate (say, an interrupted first run): the subject is
            // derived from the key, so the remade certificate still verifies earlier node certs.
            let cert = ca_params(&key).self_signed(&key).map_err(cert_err)?;
            write_new(&ca_cert, &cert.pem(), false)?;
            written.push(ca_cert.clone());
        }
        Some(Issuer::new(ca_params(&key), key))
    } else if ca_cert.exists() {
        None
    } else {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params(&key).self_signed(&key).map_err(cert_err)?;
        write_new(&ca_key, &key.serialize_pem(), true)?;
        written.push(ca_key.clone());
        write_new(&ca_cert, &cert.pem(), false)?;
        written.push(ca_cert.clone());
        Some(Issuer::new(ca_params(&key), key))
    };
    let ca_der = read_certs(&ca_cert)?.into_iter().next().ok_or_else(|| file_err(&ca_cert, "holds no certificate"))?;
    if issuer.is_some() {
        let key = PrivateKeyDer::from_pem_file(&ca_key).map_err(|e| file_err(&ca_key, e))?;
        keys_match(vec![ca_der.clone()], key)
            .map_err(|e| file_err(&ca_key, format!("does not belong to {}: {e}", ca_cert.display())))?;
    }

    let mut out = Vec::new();
    for name in nodes {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let sans = subject_alt_names(name, hosts);
        match (cert.exists(), key.exists()) {
            (true, true) => {
                let chain = read_certs(&cert)?;
                let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_err(&key, e))?;
                check_node(&ca_der, chain, key_der, &sans).map_err(|e| explain_kept(&cert, &key, &ca_cert, e))?;
            }
            (true, false) => {
                return Err(file_err(
                    &cert,
                    format!(
                        "exists but its key {} does not; restore the key, or delete the certificate",
                        key.display()
                    ),
                ));
            }
            (false, key_exists) => {
                let Some(issuer) = &issuer else {
                    return Err(file_err(
                        &ca_key,
                        format!(
                            "is needed to sign a certificate for node `{name}` (only {} is here); run this where the CA key is",
                            ca_cert.display()
                        ),
                    ));
                };
                // A key without its certificate is an interrupted earlier run: certify that key.
                let node_key = if key_exists { read_key_pair(&key)? } else { KeyPair::generate().map_err(cert_err)? };
                let issued = node_params(name, hosts).map_err(ClusterError::Cert)?.signed_by(&node_key, issuer);
                let issued = issued.map_err(cert_err)?;
                let key_der = PrivatePkcs8KeyDer::from(node_key.serialize_der()).into();
                check_node(&ca_der, vec![issued.der().clone()], key_der, &sans).map_err(|e| {
                    file_err(
                        &ca_cert,
                        format!(
                            "a certificate signed with {} does not verify against it ({e}); \
                             pgmix can only sign with a CA that `pgmix certs` made",
                            ca_key.display()
                        ),
                    )
                })?;
                if !key_exists {
                    write_new(&key, &node_key.serialize_pem(), true)?;
                    written.push(key.clone());
                }
                write_new(&cert, &issued.pem(), false)?;
                written.push(cert.clone());
            }
        }
        out.push(NodeCert { name: name.clone(), cert, key });
    }
    Ok(ClusterCerts { ca_cert, ca_key, nodes: out, written })
}

/// The CA's parameters. Its subject is derived from its key (`pgmix cluster CA <key id>`), so it
/// differs between clusters and can be rebuilt from `ca.key` alone to sign more node certificates.
pub fn ca_params(ca_key: &KeyPair) -> CertificateParams {
    let mut p = CertificateParams::default();
    let id = p.key_identifier(ca_key);
    let id: String = id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "pgmix");
    p.distinguished_name.push(DnType::CommonName, format!("pgmix cluster CA {id}"));
    // Signs node certificates directly; no intermediates.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// A node certificate's parameters: CN = the node's name, SANs = the node's name and `hosts`,
/// usable as TLS server and as TLS client (peer links authenticate both ends).
pub fn node_params(node: &str, hosts: &[String]) -> Result<CertificateParams, String> {
    check_request(&[node.to_owned()], hosts)?;
    let mut p = CertificateParams::new(subject_alt_names(node, hosts)).map_err(|e| e.to_string())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "pgmix");
    p.distinguished_name.push(DnType::CommonName, node);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The names a node certificate is valid for: the node's own name, then the hosts (no repeats).
pub fn subject_alt_names(node: &str, hosts: &[String]) -> Vec<String> {
    let mut names = vec![node.to_owned()];
    for h in hosts {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            names.push(h.clone());
        }
    }
    names
}

/// Node names become file names and DNS names; hosts must be DNS names or IP addresses.
fn check_request(nodes: &[String], hosts: &[String]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("no node names given".into());
    }
    for (i, name) in nodes.iter().enumerate() {
        let is_dns = matches!(ServerName::try_from(name.as_str()), Ok(ServerName::DnsName(_)));
        if !is_dns || name.contains('_') {
            return Err(format!(
                "node name `{name}` must be a DNS name (letters, digits, `-` and `.`): it names the node's files and is in its certificate"
            ));
        }
        if name.eq_ignore_ascii_case("ca") {
            return Err("node name `ca` is taken by the CA's own files".into());
        }
        if nodes[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(format!("node name `{name}` is given twice"));
        }
    }
    for h in hosts {
        if ServerName::try_from(h.as_str()).is_err() {
            return Err(format!("host `{h}` is neither a DNS name nor an IP address"));
        }
    }
    Ok(())
}

/// Whether `chain` with `key` is a usable node identity under `ca`: the key fits, and the
/// certificate verifies as a TLS server for each of `names` and as a TLS client.
fn check_node(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    names: &[String],
) -> Result<(), NodeProblem> {
    use rustls::client::danger::ServerCertVerifier as _;
    let Some(leaf) = chain.first().cloned() else {
        return Err(NodeProblem::Other("holds no certificate".into()));
    };
    keys_match(chain.clone(), key).map_err(NodeProblem::KeyMismatch)?;
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| NodeProblem::Other(format!("the CA certificate is unusable: {e}")))?;
    let roots = Arc::new(roots);
    let now = UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| NodeProblem::Other(e.to_string()))?;
    for name in names {
        let server_name = ServerName::try_from(name.as_str()).map_err(|e| NodeProblem::Other(e.to_string()))?;
        if let Err(e) = server.verify_server_cert(&leaf, &chain[1..], &server_name, &[], now) {
            use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
            return Err(match e {
                rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }) => {
                    NodeProblem::NotForName(name.clone())
                }
                e => NodeProblem::Other(e.to_string()),
            });
        }
    }
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| NodeProblem::Other(e.to_string()))?;
    client.verify_client_cert(&leaf, &chain[1..], now).map_err(|e| NodeProblem::Other(format!("as a client: {e}")))?;
    Ok(())
}

#[derive(Debug)]
enum NodeProblem {
    KeyMismatch(String),
    NotForName(String),
    Other(String),
}

impl std::fmt::Display for NodeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeProblem::KeyMismatch(e) => write!(f, "the key does not fit the certificate: {e}"),
            NodeProblem::NotForName(name) => write!(f, "the certificate is not valid for `{name}`"),
            NodeProblem::Other(e) => f.write_str(e),
        }
    }
}

/// The error for a kept node pair that fails its check, with what to do about it.
fn explain_kept(cert: &Path, key: &Path, ca: &Path, problem: NodeProblem) -> ClusterError {
    let fix = format!("delete {} and {} to have them made again", cert.display(), key.display());
    let reason = match problem {
        NodeProblem::KeyMismatch(e) => format!("{} does not fit it ({e}); {fix}", key.display()),
        NodeProblem::NotForName(name) => {
            format!("is not valid for `{name}` (it was made for other hosts); {fix}")
        }
        NodeProblem::Other(e) => format!("does not verify against {} ({e}); {fix}", ca.display()),
    };
    file_err(cert, reason)
}

fn keys_match(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), String> {
    let provider = provider();
    let key = provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::new(chain, key).keys_match().map_err(|e| e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(path, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no certificate"));
    }
    Ok(certs)
}

fn read_key_pair(path: &Path) -> Result<KeyPair, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    KeyPair::from_pem(&text).map_err(|e| file_err(path, format!("cannot read a PEM private key: {e}")))
}

/// Writes a file that does not exist yet, atomically (a temporary file renamed into place);
/// private files get mode 0600.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), ClusterError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)?;
        if private {
            // Exactly 0600 whatever the umask.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ClusterError {
    ClusterError::CertFile { path: path.to_owned(), reason: reason.to_string() }
}

fn cert_err(e: rcgen::Error) -> ClusterError {
    ClusterError::Cert(e.to_string())
}

#[cfg(test)]
mod tests;
