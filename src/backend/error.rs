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
}

impl BackendError {
    /// What the client sees when its session cannot get a backend connection.
    pub fn to_client(&self, node: &str) -> ClientError {
        ClientError::fatal(
            code::CANNOT_CONNECT_NOW,
            format!("pgmix node \"{node}\" cannot use its local Postgres: {self}"),
        )
        .with_hint("This node is unhealthy; connect to another node of the cluster, or retry later.")
    }
}
