//! The node's side towards its local Postgres: opening an authenticated connection for a session,
//! and forwarding cancel requests.

pub mod cancel;
pub mod connect;
pub mod error;

pub use cancel::{CancelGuard, CancelRegistry, send_cancel};
pub use connect::{BackendConn, BackendStream, Login, connect, open_stream};
pub use error::BackendError;
