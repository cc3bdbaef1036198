//! The session's one routing point. Every statement passes through here before it goes anywhere.
//!
//! Each Query and Parse is classified (strong or weak, see `classify`) against the node's schema;
//! the class is counted in a metric and logged at debug level. Statements pgmix refuses (client
//! two-phase commit) are turned into an error here. Everything else runs on the local Postgres for
//! now; this is where relaying to the leader will go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::classify::{self, Class};
use crate::metrics::Metrics;
use crate::schema::Schema;

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward to this node's local Postgres.
    Local,
    /// Answer with an error instead of running it.
    Refuse,
}

/// Classes of recently seen SQL texts, shared by a node's sessions: applications send the same
/// texts again and again, and parsing is the expensive part of classification.
#[derive(Default)]
pub struct ClassCache {
    map: Mutex<HashMap<Box<str>, (Class, Arc<str>)>>,
}

const CACHE_ENTRIES: usize = 4096;

impl ClassCache {
    fn get_or_classify(&self, sql: &str, schema: &Schema) -> (Class, Arc<str>) {
        if let Some(hit) = self.map.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return hit;
        }
        let all = classify::classify(sql, schema);
        let class = classify::combined(&all);
        let reason: Arc<str> = Arc::from(all.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>().join("; "));
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CACHE_ENTRIES {
                // Crude but bounded: a workload with more distinct texts than this re-parses.
                m.clear();
            }
            m.insert(sql.into(), (class, reason.clone()));
        }
        (class, reason)
    }
}

/// Per-session routing decisions.
pub struct Router {
    schema: Arc<Schema>,
    cache: Arc<ClassCache>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(schema: Arc<Schema>, cache: Arc<ClassCache>, metrics: Arc<Metrics>) -> Self {
        Self { schema, cache, metrics }
    }

    fn decide(&mut self, sql: &str) -> (Class, Route, Arc<str>) {
        let (class, reason) = self.cache.get_or_classify(sql, &self.schema);
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
