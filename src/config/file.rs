//! The on-disk shape of `proxy.toml`. The doc comments here are the user documentation of each key.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's name: shown in logs, metrics and error messages.
    pub node_name: String,
    /// Address clients connect to, e.g. "0.0.0.0:6432".
    pub listen: String,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); absent means no endpoint.
    pub metrics_listen: Option<String>,
    /// Path of the schema file that marks tables strong or weak (relative to this file).
    pub schema: Option<String>,
    /// The local Postgres this node fronts.
    pub backend: BackendSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthSection,
    /// Client logins accepted by this node.
    #[serde(default)]
    pub users: Vec<UserSection>,
    #[serde(default)]
    pub limits: LimitsSection,
    /// This node's place in a cluster; leave out for a node on its own.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: the cluster id, this node's id, the peer links' address and TLS files, and the
/// other nodes. Peer links are mutually authenticated TLS: each side proves with a certificate
/// from the cluster CA that it is the node it says (`pgmix certs` makes them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's id; a node of another cluster is refused on the peer port.
    pub id: String,
    /// This node's id: unique in the cluster, from 1 to `max_nodes`.
    pub node_id: u32,
    /// The most nodes the cluster will ever have. Serial keys of weak tables step by it, each node
    /// taking the values of its own id modulo it, so nodes never hand out the same key. Fixed
    /// for the cluster's life.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
    /// How long a strong statement waits for a leader and a majority before it fails with 40001
    /// (nothing committed, safe to retry), in milliseconds.
    #[serde(default = "default_strong_timeout")]
    pub strong_timeout_ms: u64,
    /// About how many KiB of a strong transaction's effects go in one log entry: a larger
    /// transaction is logged in chunks, so no node holds all of it in memory (16 to 2048).
    #[serde(default = "default_strong_chunk_kib")]
    pub strong_chunk_kib: u64,
    /// A snapshot of the strong tables is taken every this many log entries, and the log is
    /// trimmed behind it; a node further behind is sent the snapshot (at least 10).
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_entries: u64,
    /// Where this node's peer links listen, e.g. "0.0.0.0:7432".
    pub listen: String,
    /// The cluster CA certificate (PEM), relative to this file.
    pub ca: String,
    /// This node's certificate (PEM), valid for `node_name`, and its key.
    pub cert: String,
    pub key: String,
    /// The other nodes.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
}

fn default_max_nodes() -> u32 {
    16
}

fn default_strong_timeout() -> u64 {
    5000
}

fn default_snapshot_entries() -> u64 {
    10_000
}

fn default_strong_chunk_kib() -> u64 {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub id: u32,
    /// The node's name, which its certificate must be valid for.
    pub name: String,
    /// Its peer links' address, `host:port`.
    pub addr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// Host name, IP address, or a directory holding the Postgres Unix socket (starts with '/').
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The role pgmix logs in as for its own work (reading the catalog). It must be a superuser.
    /// Client sessions log in as their own roles (see `users.role`).
    pub user: String,
    /// Its password; may be absent when the local Postgres trusts the connection.
    pub password: Option<String>,
    /// Database pgmix uses for its own metadata.
    #[serde(default = "default_database")]
    pub database: String,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only; SSLRequest is answered 'N'.
    #[default]
    Disable,
    /// TLS when the client asks for it, plaintext otherwise.
    Allow,
    /// TLS only; a plaintext client is refused with SQLSTATE 28000.
    Require,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM certificate chain (relative to this file).
    pub cert: Option<String>,
    /// PEM private key (relative to this file).
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS over TLS). The default.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge; users with only a SCRAM verifier still use SCRAM, as in Postgres.
    #[serde(rename = "md5")]
    Md5,
    /// Cleartext password. Only sensible over TLS.
    #[serde(rename = "password")]
    Password,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// "scram-sha-256" (default), "md5" or "password".
    #[serde(default)]
    pub method: AuthMethod,
    /// Who may log in: "config" (the [[users]] of this file), "postgres" (the login roles of
    /// the local Postgres, checked against their stored passwords), or "both" (the default; a
    /// name listed in [[users]] is checked against its entry).
    #[serde(default)]
    pub logins: LoginSource,
    /// How long a role's stored secret is cached, in seconds: a changed or dropped role stops
    /// working within this time.
    #[serde(default = "default_role_cache")]
    pub role_cache_secs: u64,
    /// Failed logins from one client address in a minute before each further failure is
    /// answered only after a delay (1 s more per failure, at most 10 s), to slow guessing.
    #[serde(default = "default_failures_before_delay")]
    pub failures_before_delay: u32,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            method: AuthMethod::default(),
            logins: LoginSource::default(),
            role_cache_secs: default_role_cache(),
            failures_before_delay: default_failures_before_delay(),
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LoginSource {
    Config,
    Postgres,
    #[default]
    Both,
}

impl LoginSource {
    pub fn config(self) -> bool {
        self != LoginSource::Postgres
    }

    pub fn postgres(self) -> bool {
        self != LoginSource::Config
    }
}

fn default_role_cache() -> u64 {
    5
}

fn default_failures_before_delay() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub name: String,
    /// A SCRAM verifier as Postgres stores it: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub scram: Option<String>,
    /// A plain password, for development. Prefer `scram`.
    pub password: Option<String>,
    /// The Postgres role this user's sessions run as (default: `name`). pgmix logs in to its
    /// local Postgres as this role, so the role's privileges hold through pgmix and
    /// `current_user` is this role. That login must not need a password (a Unix socket with
    /// `trust` or `peer` rules in a directory only pgmix can reach), unless `password` is given
    /// and is also the role's password in Postgres.
    pub role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest Query or Parse message pgmix holds whole to look at, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// How long shutdown waits for sessions to finish before closing them, in seconds.
    #[serde(default = "default_drain")]
    pub shutdown_drain_secs: u64,
    /// How long a client may take to connect and authenticate, in seconds.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message(),
            shutdown_drain_secs: default_drain(),
            auth_timeout_secs: default_auth_timeout(),
        }
    }
}

fn default_pg_port() -> u16 {
    5432
}
fn default_database() -> String {
    "postgres".into()
}
fn default_max_message() -> usize {
    64 << 20
}
fn default_drain() -> u64 {
    10
}
fn default_auth_timeout() -> u64 {
    60
}
