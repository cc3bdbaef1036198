//! The session's one routing point. Every statement passes through here before it goes anywhere.
//!
//! Each Query and Parse is classified (strong or weak, see `classify`) against the node's schema;
//! the class is counted in a metric and logged at debug level. Statements pgmix refuses (client
//! two-phase commit) are turned into an error here. Everything else runs on the local Postgres for
//! now; this is where relaying to the leader will go.

use std::sync::Arc;

use crate::classify::Class;
use crate::metrics::Metrics;
use crate::schema::live::LiveSchema;

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward to this node's local Postgres.
    Local,
    /// Answer with an error instead of running it.
    Refuse,
}

/// Per-session routing decisions.
pub struct Router {
    schema: Arc<LiveSchema>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(schema: Arc<LiveSchema>, metrics: Arc<Metrics>) -> Self {
        Self { schema, metrics }
    }

    /// After DDL has finished in this session: the catalog may have changed.
    pub fn ddl_done(&self) {
        self.schema.refresh_in_background();
    }

    fn decide(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        let (class, reason) = self.schema.classify(sql);
        self.metrics.count_class(class);
        tracing::debug!(class = class.as_str(), %reason, sql, "classified");
        let route = if class == Class::Refused { Route::Refuse } else { Route::Local };
        (class, route, reason)
    }

    /// A simple-protocol Query (possibly several statements).
    pub fn route_query(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        self.decide(sql)
    }

    /// An extended-protocol Parse; the decision is cached with the prepared statement.
    pub fn route_parse(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        self.decide(sql)
    }
}
