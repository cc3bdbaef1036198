//! pgmix: a mixed-consistency replicated database made of ordinary PostgreSQL servers.
//!
//! Each node is a Postgres wire-protocol proxy in front of its own local Postgres. This crate is the
//! node (`node`), its parts (`frontend`, `session`, `backend`, `protocol`), its configuration
//! (`config`), statement classification (`classify`, `schema`), weak replication (`replicate`,
//! `clock`), the strong path (`consensus`, `strong`), the links between nodes (`peer`), and the
//! local development cluster behind `pgmix up` (`cluster`).

pub mod backend;
pub mod classify;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod frontend;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod protocol;
pub mod replicate;
pub mod schema;
pub mod session;
pub mod sqlstate;
pub mod status;
pub mod strong;
#[cfg(test)]
mod testrng;
pub mod tomlfile;
pub mod verify;
