//! From the file's plain structs to the validated runtime [`NodeConfig`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::{AuthMethod, FileConfig, LoginSource, TlsMode};
use crate::frontend::scram::ScramVerifier;

/// A problem with `proxy.toml`: file, key and reason.
pub type ConfigError = crate::tomlfile::FileError;

/// Where the local Postgres listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// Path of the socket file itself (`<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BackendAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub addr: BackendAddr,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl BackendConfig {
    /// One of pgmix's own long-lived connections to `database`, its driver spawned, with the
    /// session `settings` (SQL) run before it is used.
    pub async fn connect(
        &self,
        database: &str,
        settings: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = self.client_config();
        cfg.dbname(database);
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(settings).await?;
        Ok(client)
    }

    /// A tokio-postgres config for pgmix's own connections (catalog checks, metadata).
    pub fn client_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.addr {
            BackendAddr::Tcp { host, port } => {
                c.host(host).port(*port);
            }
            BackendAddr::Unix(path) => {
                let port = path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.rsplit('.').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(5432);
                c.host_path(path.parent().unwrap_or(Path::new("/"))).port(port);
            }
        }
        c.user(&self.user).dbname(&self.database).application_name("pgmix");
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// TLS material, loaded and checked at start-up.
#[derive(Clone)]
pub struct TlsSettings {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// SCRAM-SHA-256-PLUS `tls-server-end-point` binding data of the leaf certificate, or why the
    /// certificate has none (then -PLUS is not offered).
    pub end_point: Result<Vec<u8>, crate::frontend::endpoint::EndPointError>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").field("end_point", &self.end_point.as_ref().map(Vec::len)).finish()
    }
}

/// A client login.
#[derive(Debug, Clone)]
pub struct UserAuth {
    pub scram: ScramVerifier,
    /// Present only when the config gives a plain password (needed for md5 and cleartext).
    pub plain: Option<String>,
    /// The Postgres role the user's sessions log in as.
    pub role: String,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub schema_path: Option<PathBuf>,
    pub backend: BackendConfig,
    pub tls_mode: TlsMode,
    pub tls: Option<TlsSettings>,
    pub auth_method: AuthMethod,
    pub logins: LoginSource,
    pub role_cache: Duration,
    pub failures_before_delay: u32,
    pub users: HashMap<String, UserAuth>,
    pub max_message_bytes: usize,
    pub shutdown_drain: Duration,
    pub auth_timeout: Duration,
    /// None for a node on its own.
    pub cluster: Option<super::cluster::ClusterConfig>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let (text, file) = crate::tomlfile::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_toml_str(&text, &file, base)
}

/// Validates config text; `file` names it in errors and relative paths resolve against `base`.
pub fn from_toml_str(text: &str, file: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
    let raw: FileConfig = crate::tomlfile::parse(text, file)?;
    let invalid = |key: &str, reason: String| crate::tomlfile::invalid(file, key, reason);

    if raw.node_name.trim().is_empty() {
        return Err(invalid("node_name", "must not be empty".into()));
    }
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|e| invalid("listen", format!("`{}` is not an address like 127.0.0.1:6432 ({e})", raw.listen)))?;
    let metrics_listen = match &raw.metrics_listen {
        None => None,
        Some(a) => Some(a.parse().map_err(|e| invalid("metrics_listen", format!("`{a}` is not an address ({e})")))?),
    };

    let b = &raw.backend;
    if b.user.is_empty() {
        return Err(invalid("backend.user", "must not be empty".into()));
    }
    let addr = if b.host.starts_with('/') {
        BackendAddr::Unix(Path::new(&b.host).join(format!(".s.PGSQL.{}", b.port)))
    } else if b.host.is_empty() {
        return Err(invalid("backend.host", "must be a host name, an IP address or a socket directory".into()));
    } else {
        BackendAddr::Tcp { host: b.host.clone(), port: b.port }
    };
    let backend =
        BackendConfig { addr, user: b.user.clone(), password: b.password.clone(), database: b.database.clone() };

    let tls = match (raw.tls.mode, &raw.tls.cert, &raw.tls.key) {
        (TlsMode::Disable, _, _) => None,
        (_, Some(cert), Some(key)) => Some(load_tls(&base.join(cert), &base.join(key)).map_err(|r| invalid(r.0, r.1))?),
        (mode, _, _) => {
            return Err(invalid(
                "tls",
                format!("mode `{mode:?}` needs both `tls.cert` and `tls.key` (PEM files)").to_lowercase(),
            ));
        }
    };

    let mut users = HashMap::new();
    for (i, u) in raw.users.iter().enumerate() {
        let key = format!("users[{i}]");
        if u.name.is_empty() {
            return Err(invalid(&format!("{key}.name"), "must not be empty".into()));
        }
        let scram = match (&u.scram, &u.password) {
            (Some(v), _) => ScramVerifier::parse(v).map_err(|e| invalid(&format!("{key}.scram"), e.to_string()))?,
            (None, Some(p)) => ScramVerifier::from_password(p),
            (None, None) => {
                return Err(invalid(&key, format!("user `{}` needs `scram` (a verifier) or `password`", u.name)));
            }
        };
        if raw.auth.method == AuthMethod::Password && u.password.is_none() {
            return Err(invalid(
                &key,
                format!("auth.method = \"password\" needs a plain `password` for user `{}`", u.name),
            ));
        }
        let role = u.role.clone().unwrap_or_else(|| u.name.clone());
        if role.is_empty() {
            return Err(invalid(&format!("{key}.role"), "must not be empty".into()));
        }
        if users.insert(u.name.clone(), UserAuth { scram, plain: u.password.clone(), role }).is_some() {
            return Err(invalid(&format!("{key}.name"), format!("user `{}` is listed twice", u.name)));
        }
    }
    if users.is_empty() && !raw.auth.logins.postgres() {
        return Err(invalid(
            "users",
            "at least one [[users]] entry is needed with auth.logins = \"config\", or no client can log in".into(),
        ));
    }
    let cluster = match &raw.cluster {
        Some(c) => Some(super::cluster::validate(c, &raw.node_name, base).map_err(|(k, r)| invalid(&k, r))?),
        None => None,
    };
    if raw.limits.max_message_bytes < 1024 {
        return Err(invalid("limits.max_message_bytes", "must be at least 1024".into()));
    }

    Ok(NodeConfig {
        node_name: raw.node_name,
        listen,
        metrics_listen,
        schema_path: raw.schema.map(|s| base.join(s)),
        backend,
        tls_mode: raw.tls.mode,
        tls,
        auth_method: raw.auth.method,
        logins: raw.auth.logins,
        role_cache: Duration::from_secs(raw.auth.role_cache_secs),
        failures_before_delay: raw.auth.failures_before_delay,
        users,
        max_message_bytes: raw.limits.max_message_bytes,
        shutdown_drain: Duration::from_secs(raw.limits.shutdown_drain_secs),
        auth_timeout: Duration::from_secs(raw.limits.auth_timeout_secs),
        cluster,
    })
}

fn load_tls(cert: &Path, key: &Path) -> Result<TlsSettings, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("tls.cert", format!("cannot read PEM certificates from {}: {e}", cert.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(("tls.cert", format!("{} holds no certificate", cert.display())));
    };
    let end_point = crate::frontend::endpoint::tls_server_end_point(leaf.as_ref());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("tls.key", format!("cannot read a PEM private key from {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ("tls.key", format!("key does not fit the certificate: {e}")))?;
    Ok(TlsSettings { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), end_point })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_name = "n1"
listen = "127.0.0.1:6432"
[backend]
host = "/tmp"
user = "postgres"
[[users]]
name = "app"
password = "secret"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        from_toml_str(text, "proxy.toml", Path::new("."))
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.backend.addr, BackendAddr::Unix("/tmp/.s.PGSQL.5432".into()));
        assert_eq!(c.tls_mode, TlsMode::Disable);
        assert_eq!(c.auth_method, AuthMethod::ScramSha256);
        assert!(c.users.contains_key("app"));
    }

    #[test]
    fn unknown_key_is_rejected_with_file_and_key() {
        let err = parse(&GOOD.replace("listen =", "lisen = \"x\"\nlisten =")).unwrap_err().to_string();
        assert!(err.starts_with("proxy.toml:"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let err = parse(&GOOD.replace("127.0.0.1:6432", "nowhere")).unwrap_err().to_string();
        assert!(err.contains("key `listen`"), "{err}");
    }

    #[test]
    fn tls_without_files_is_an_error() {
        let err = parse(&format!("{GOOD}\n[tls]\nmode = \"require\"\n")).unwrap_err().to_string();
        assert!(err.contains("key `tls`") && err.contains("tls.cert"), "{err}");
    }

    #[test]
    fn tls_with_missing_file_names_the_path() {
        let err = parse(&format!("{GOOD}\n[tls]\nmode = \"allow\"\ncert = \"/nonexistent.pem\"\nkey = \"/k.pem\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.cert") && err.contains("/nonexistent.pem"), "{err}");
    }

    #[test]
    fn user_without_credentials_or_duplicate_is_rejected() {
        let err = parse(&GOOD.replace("password = \"secret\"", "")).unwrap_err().to_string();
        assert!(err.contains("users[0]"), "{err}");
        let twice = format!("{GOOD}\n[[users]]\nname = \"app\"\npassword = \"x\"\n");
        assert!(parse(&twice).unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn bad_scram_verifier_is_rejected() {
        let err = parse(&GOOD.replace("password = \"secret\"", "scram = \"SCRAM-SHA-256$x\"")).unwrap_err().to_string();
        assert!(err.contains("users[0].scram"), "{err}");
    }

    #[test]
    fn cluster_limits_name_their_key() {
        let cluster =
            "[cluster]\nid = \"c\"\nnode_id = 1\nlisten = \"127.0.0.1:1\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n";
        for (line, key) in [
            ("strong_chunk_kib = 4", "cluster.strong_chunk_kib"),
            ("strong_timeout_ms = 5", "cluster.strong_timeout_ms"),
            ("snapshot_entries = 1", "cluster.snapshot_entries"),
        ] {
            let err = parse(&format!("{GOOD}\n{cluster}{line}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_tls_mode_is_rejected() {
        let err = parse(&format!("{GOOD}\n[tls]\nmode = \"maybe\"\n")).unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn the_shipped_proxy_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Its certificate paths are placeholders; everything else must validate as shipped.
        let text = text.replace("mode = \"allow\"", "mode = \"disable\"");
        let cfg = from_toml_str(&text, "proxy.toml", Path::new(".")).unwrap();
        assert_eq!(cfg.users.len(), 2);
        let app = &cfg.users["app"];
        assert!(app.plain.is_none());
        // The verifier in the example really is the one for the documented password.
        let mut server = crate::frontend::scram::ScramServer::new(Some(app.scram.clone()), "app", None, b"key");
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"change-me",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let first = server.client_first("SCRAM-SHA-256", client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        assert!(server.client_final(client.message()).is_ok());
    }
}
