//! The client side of a node: TLS negotiation, start-up packet, authentication. What comes out is
//! an authenticated [`ClientHello`] that the session takes over, or a cancel request.

pub mod auth;
pub mod endpoint;
pub mod error;
pub mod handshake;
pub mod roles;
pub mod scram;
pub mod stream;
pub mod throttle;

pub use error::FrontendError;

/// What the node's connections share for logging clients in.
pub struct Gate {
    pub roles: roles::RoleSecrets,
    pub failures: throttle::FailedLogins,
    pub metrics: crate::metrics::MetricsHandle,
    /// Keys the salts of unknown users' mock exchanges (random per node process).
    pub mock_key: [u8; 32],
}

impl Gate {
    pub fn new(cfg: &crate::config::NodeConfig, metrics: crate::metrics::MetricsHandle) -> Self {
        Self {
            roles: roles::RoleSecrets::new(cfg.backend.clone(), cfg.role_cache),
            failures: throttle::FailedLogins::new(cfg.failures_before_delay),
            metrics,
            mock_key: rand::random(),
        }
    }
}
pub use handshake::{ClientHello, Handshake, handshake};
pub use stream::ClientStream;
