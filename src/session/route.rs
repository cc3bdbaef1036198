//! The session's one routing point. Every statement passes through here before it goes anywhere.
//!
//! Each Query and Parse is classified (strong or weak, see `classify`) against the node's schema;
//! the class is counted in a metric and logged at debug level. Statements pgmix refuses (client
//! two-phase commit) are turned into an error here. Everything else runs on the local Postgres for
//! now; this is where relaying to the leader will go.
//!
//! SQL-level prepared statements (`PREPARE name AS ...`, `EXECUTE name`) live in the session, so
//! the router keeps the class of each by name: an EXECUTE has the class of what it runs. A name
//! prepared again without DEALLOCATE keeps the stronger of its classes (Postgres refuses the
//! second PREPARE, but pgmix cannot tell whether the first one succeeded). An EXECUTE in a Parse
//! stays a strong write: the statement it names may be replaced before the Parse is executed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classify::{Class, SqlPrepared, strongest};
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
    /// SQL-level prepared statements of this session, by name, with their class.
    sql_prepared: HashMap<String, Class>,
}

impl Router {
    pub fn new(schema: Arc<LiveSchema>, metrics: Arc<Metrics>) -> Self {
        Self { schema, metrics, sql_prepared: HashMap::new() }
    }

    /// After DDL has finished in this session: the catalog may have changed.
    pub fn ddl_done(&self) {
        self.schema.refresh_in_background();
    }

    fn decide(&mut self, sql: &str, resolve_execute: bool) -> (Class, Route, Arc<str>) {
        let entry = self.schema.classify(sql);
        let reason = entry.reason;
        let mut class = entry.class;
        if !entry.sql_prepared.is_empty() {
            let executed = self.apply(&entry.sql_prepared);
            if resolve_execute {
                class = strongest(std::iter::once(entry.class_without_execute).chain(executed));
            }
        }
        self.metrics.count_class(class);
        tracing::debug!(class = class.as_str(), %reason, sql, "classified");
        let route = if class == Class::Refused { Route::Refuse } else { Route::Local };
        (class, route, reason)
    }

    /// A simple-protocol Query (possibly several statements).
    pub fn route_query(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        self.decide(sql, true)
    }

    /// An extended-protocol Parse; the decision is cached with the prepared statement.
    pub fn route_parse(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        self.decide(sql, false)
    }

    /// Applies PREPARE and DEALLOCATE in order; returns the class of each EXECUTE (its prepared
    /// statement's and its parameters', or a strong write when the name is unknown).
    fn apply(&mut self, effects: &[SqlPrepared]) -> Vec<Class> {
        let mut executed = Vec::new();
        for e in effects {
            match e {
                SqlPrepared::Prepare(name, class) => {
                    let c = self.sql_prepared.get(name).map_or(*class, |old| strongest([*old, *class]));
                    self.sql_prepared.insert(name.clone(), c);
                }
                SqlPrepared::Execute { name, params } => {
                    let runs = self.sql_prepared.get(name).copied().unwrap_or(Class::StrongWrite);
                    executed.push(strongest([runs, *params]));
                }
                SqlPrepared::Deallocate(Some(name)) => {
                    self.sql_prepared.remove(name);
                }
                SqlPrepared::Deallocate(None) => self.sql_prepared.clear(),
            }
        }
        executed
    }
}
