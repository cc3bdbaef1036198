//! The client side of a node: TLS negotiation, start-up packet, authentication. What comes out is
//! an authenticated [`ClientHello`] that the session takes over, or a cancel request.

pub mod auth;
pub mod endpoint;
pub mod error;
pub mod handshake;
pub mod scram;
pub mod stream;

pub use error::FrontendError;
pub use handshake::{ClientHello, Handshake, handshake};
pub use stream::ClientStream;
