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
use tracing::{error, info, warn};

use super::Schema;
use super::live::LiveSchema;
use super::migrate::MigrateError;
use crate::config::{BackendConfig, ClusterConfig};
use crate::metrics::MetricsHandle;

pub struct Databases {
    /// In a cluster, each database gets pgmix's own schema (`migrate`) before it is used.
    cluster: Option<Arc<ClusterConfig>>,
    file_schema: Schema,
    file: Option<String>,
    backend: BackendConfig,
    metrics: MetricsHandle,
    by_name: Mutex<HashMap<String, Slot>>,
    /// Told the name of each database once it is open (migrated, checked, capture installed).
    opened: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// One database's schema once it has been checked, or why the database cannot be served.
type Slot = Arc<OnceCell<Result<Arc<LiveSchema>, String>>>;

impl Databases {
    pub fn new(
        file_schema: Schema,
        file: Option<String>,
        backend: BackendConfig,
        metrics: MetricsHandle,
        cluster: Option<Arc<ClusterConfig>>,
    ) -> Self {
        Self {
            cluster,
            file_schema,
            file,
            backend,
            metrics,
            by_name: Mutex::new(HashMap::new()),
            opened: Default::default(),
        }
    }

    async fn migrate(&self, database: &str) -> Result<(), MigrateError> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        let mut backend = self.backend.clone();
        backend.database = database.to_owned();
        let version = super::migrate::migrate(&backend, cluster).await?;
        info!(database, version, "pgmix schema up to date");
        Ok(())
    }

    fn live(&self, database: &str) -> LiveSchema {
        let mut backend = self.backend.clone();
        backend.database = database.to_owned();
        LiveSchema::new(
            self.file_schema.clone(),
            self.file.clone(),
            backend,
            self.metrics.clone(),
            self.cluster.clone(),
        )
    }

    /// From now on, each database opened is sent on `tx`; so are those already open.
    pub fn notify_opened(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        for (name, slot) in map.iter() {
            if matches!(slot.get(), Some(Ok(_))) {
                let _ = tx.send(name.clone());
            }
        }
        let _ = self.opened.set(tx);
    }

    fn announce(&self, database: &str) {
        if let Some(tx) = self.opened.get() {
            let _ = tx.send(database.to_owned());
        }
    }

    fn cell(&self, database: &str) -> Slot {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(database.to_owned()).or_default().clone()
    }

    /// Checks `backend.database` at start-up: Ok(errors), which stop the node when not empty.
    /// A failed migration stops the node too.
    pub async fn check_startup(&self) -> Result<Result<Vec<String>, tokio_postgres::Error>, MigrateError> {
        self.migrate(&self.backend.database).await?;
        let live = Arc::new(self.live(&self.backend.database));
        let result = live.check().await;
        let _ = self.cell(&self.backend.database).set(Ok(live));
        self.announce(&self.backend.database);
        Ok(result)
    }

    /// The schema of `database`, checked against its catalog the first time it is asked for; Err
    /// with the reason when the database cannot be used (its pgmix schema is newer than this
    /// pgmix, or belongs to another node).
    pub async fn get(&self, database: &str) -> Result<Arc<LiveSchema>, String> {
        let cell = self.cell(database);
        // A database that cannot be reached now (it does not exist yet, Postgres is restarting)
        // is tried again next time; one that is refused (foreign, newer) stays refused.
        let retry = std::sync::atomic::AtomicBool::new(false);
        let result = cell
            .get_or_init(|| async {
                if let Err(e) = self.migrate(database).await {
                    error!(database, "{e}");
                    retry.store(matches!(e, MigrateError::Postgres { .. }), std::sync::atomic::Ordering::Relaxed);
                    return Err(e.to_string());
                }
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
                self.announce(database);
                Ok(live)
            })
            .await
            .clone();
        if retry.load(std::sync::atomic::Ordering::Relaxed) {
            let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(database);
        }
        result
    }
}
