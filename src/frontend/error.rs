use thiserror::Error;

use crate::sqlstate::ClientError;

#[derive(Debug, Error)]
pub enum FrontendError {
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The client was sent this error and the connection is closed.
    #[error("refused client: {0}")]
    Refused(ClientError),
    #[error("client took longer than {0:?} to log in")]
    Timeout(std::time::Duration),
}
