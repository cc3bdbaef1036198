use thiserror::Error;

use crate::sqlstate::{ClientError, code};

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot reach the local Postgres at {addr}: {cause}")]
    Unreachable { addr: String, cause: std::io::Error },
    #[error("local Postgres connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Postgres refused the connection with this ErrorResponse (unknown database, too many
    /// connections, ...); the raw message is forwarded to the client unchanged.
    #[error("local Postgres refused the connection: {message} ({code})")]
    Refused { code: String, message: String, raw: Vec<u8> },
    #[error("local Postgres asked for an authentication method pgmix does not support: {0}")]
    UnsupportedAuth(String),
    #[error("protocol error talking to the local Postgres: {0}")]
    Protocol(String),
    /// The local Postgres wants a password for a client's role, and pgmix has none for it.
    #[error("the local Postgres asked for a password to log in as role \"{role}\"")]
    NeedsPassword { role: String },
}

impl BackendError {
    /// Whether the local Postgres itself is unreachable or broken (as opposed to refusing this
    /// one login), which makes the node unhealthy.
    pub fn node_unhealthy(&self) -> bool {
        !matches!(self, BackendError::Refused { .. } | BackendError::NeedsPassword { .. })
    }

    /// What the client sees when its session cannot get a backend connection.
    pub fn to_client(&self, node: &str) -> ClientError {
        if let BackendError::NeedsPassword { role } = self {
            return ClientError::fatal(
                code::INVALID_AUTHORIZATION,
                format!("pgmix node \"{node}\" cannot log in to its local Postgres as role \"{role}\": Postgres asked for a password"),
            )
            .with_hint(
                "pgmix runs each session as the client's own role. Let pgmix's local connections in without a password \
                 (a Unix socket with trust or peer rules in a directory only pgmix can reach), or give the user a \
                 `password` in proxy.toml that is also the role's password in Postgres.",
            );
        }
        ClientError::fatal(
            code::CANNOT_CONNECT_NOW,
            format!("pgmix node \"{node}\" cannot use its local Postgres: {self}"),
        )
        .with_hint("This node is unhealthy; connect to another node of the cluster, or retry later.")
    }
}
