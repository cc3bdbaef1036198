//! Integration tests: real Postgres servers started by the harness, pgmix nodes in-process (or as
//! a separate process where memory is measured), real clients over real sockets.

mod answers;
mod auth;
mod cancel;
mod classify;
mod clients;
mod cluster;
mod cluster_roles;
mod configs;
mod consensus;
mod drivers;
mod durability;
mod harness;
mod linearizable;
mod logins;
mod migrate;
mod peers;
mod pgbench;
mod protocol;
mod raw;
mod robustness;
mod roles;
mod snapshot;
mod stream;
mod strong;
mod strong_chunks;
mod strong_reads;
mod strong_session;
mod suites;
mod unapplied;
pub mod up;
mod weak;
