//! Local Postgres servers and `pgmix up`, the one-command development cluster. The test harness
//! starts its Postgres servers through the same code.

pub mod certs;
pub mod error;
pub mod pg;
pub mod process;
pub mod up;

pub use error::ClusterError;
