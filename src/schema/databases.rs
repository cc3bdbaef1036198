//! One [`LiveSchema`] per database that clients open. The schema file applies to the tables of
//! every database on the node, but each database has its own catalog: its own tables, views and
//! schemas, so names resolve, views are found and the file is checked per database.
//!
//! The database in `backend.database` is checked at start-up, where an error stops the node.
//! Every other database is checked when the first session opens it, before that session's first
//! statement is classified; errors found then (the node is already serving) are logged and
//! counted in `pgmix_schema_errors`, as errors found after DDL are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tracing::{error, warn};

use super::Schema;
use super::live::LiveSchema;
use crate::config::BackendConfig;
use crate::metrics::MetricsHandle;

pub struct Databases {
    file_schema: Schema,
    file: Option<String>,
    backend: BackendConfig,
    metrics: MetricsHandle,
    by_name: Mutex<HashMap<String, Arc<OnceCell<Arc<LiveSchema>>>>>,
}

impl Databases {
    pub fn new(file_schema: Schema, file: Option<String>, backend: BackendConfig, metrics: MetricsHandle) -> Self {
        Self { file_schema, file, backend, metrics, by_name: Mutex::new(HashMap::new()) }
    }

    fn live(&self, database: &str) -> LiveSchema {
        let mut backend = self.backend.clone();
        backend.database = database.to_owned();
        LiveSchema::new(self.file_schema.clone(), self.file.clone(), backend, self.metrics.clone())
    }

    fn cell(&self, database: &str) -> Arc<OnceCell<Arc<LiveSchema>>> {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(database.to_owned()).or_default().clone()
    }

    /// Checks `backend.database` at start-up: Ok(errors), which stop the node when not empty.
    pub async fn check_startup(&self) -> Result<Vec<String>, tokio_postgres::Error> {
        let live = Arc::new(self.live(&self.backend.database));
        let result = live.check().await;
        let _ = self.cell(&self.backend.database).set(live);
        result
    }

    /// The schema of `database`, checked against its catalog the first time it is asked for.
    pub async fn get(&self, database: &str) -> Arc<LiveSchema> {
        let cell = self.cell(database);
        cell.get_or_init(|| async {
            let live = Arc::new(self.live(database));
            match live.check().await {
                Ok(errors) => {
                    for e in errors {
                        error!(database, "the schema file does not fit this database: {e}");
                    }
                }
                Err(e) => {
                    warn!(database, error = %e, "cannot read the catalog: names resolve by the schema file alone")
                }
            }
            live
        })
        .await
        .clone()
    }
}
