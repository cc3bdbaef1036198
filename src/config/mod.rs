//! Node configuration: `proxy.toml` parsed into plain serde structs (`file`), then validated into
//! the runtime [`NodeConfig`] in one function that names the file, the key and the reason for
//! every problem.

mod file;
mod validate;

pub mod cluster;

pub use cluster::{ClusterConfig, Peer};
pub use file::{AuthMethod, LoginSource, TlsMode};
pub use validate::{BackendAddr, BackendConfig, ConfigError, NodeConfig, TlsSettings, UserAuth, from_toml_str, load};
