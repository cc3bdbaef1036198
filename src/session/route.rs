//! The session's one routing point. Every statement passes through here before it goes anywhere.
//!
//! Today every statement runs on the local Postgres. Later this is where a statement is
//! classified (weak/strong), relayed to the leader, or where pgmix injects its own statements;
//! the session already calls it at each statement boundary with the SQL text.

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward to this node's local Postgres.
    Local,
}

/// Per-session routing decisions.
#[derive(Debug, Default)]
pub struct Router {}

impl Router {
    /// A simple-protocol Query (possibly several statements).
    pub fn route_query(&mut self, sql: &str) -> Route {
        tracing::trace!(sql, "route query");
        Route::Local
    }

    /// An extended-protocol Parse; the decision is cached with the prepared statement.
    pub fn route_parse(&mut self, name: &str, sql: &str) -> Route {
        tracing::trace!(name, sql, "route parse");
        Route::Local
    }
}
