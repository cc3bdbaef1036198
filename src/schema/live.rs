//! The schema a running node classifies against: the schema file plus what the local catalog
//! says (views), re-checked after DDL.
//!
//! At start-up a failed check stops the node. After DDL the check runs again in the background
//! once the session that ran it is idle (so the DDL has committed or rolled back); new views
//! become strong at once, and problems the DDL introduced (a weak table created without a primary
//! key, say) are logged as errors and counted in `pgmix_schema_errors`, because the node is
//! already serving and refusing the DDL after the fact is not possible.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use tracing::{error, info, warn};

use super::lint::{Severity, lint};
use super::{Schema, catalog};
use crate::classify::cache::ClassCache;
use crate::config::{BackendConfig, ClusterConfig};
use crate::metrics::MetricsHandle;

pub struct LiveSchema {
    /// As the file says, before the catalog is consulted.
    file_schema: Schema,
    file: Option<String>,
    current: RwLock<Arc<Schema>>,
    cache: ClassCache,
    backend: BackendConfig,
    refreshing: AtomicBool,
    wanted: AtomicBool,
    /// Errors found by this database's last check; `metrics.schema_errors` is the node's sum.
    errors: AtomicU64,
    /// Moves on every installed schema, so that sessions can tell a new one with one load.
    generation: AtomicU64,
    /// `schema_errors` there: errors found by the last check.
    metrics: MetricsHandle,
    /// In a cluster, every check also installs weak change capture for what it found.
    cluster: Option<Arc<ClusterConfig>>,
}

impl LiveSchema {
    pub fn new(
        file_schema: Schema,
        file: Option<String>,
        backend: BackendConfig,
        metrics: MetricsHandle,
        cluster: Option<Arc<ClusterConfig>>,
    ) -> Self {
        Self {
            current: RwLock::new(Arc::new(file_schema.clone())),
            file_schema,
            file,
            cache: ClassCache::default(),
            backend,
            refreshing: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            metrics,
            cluster,
        }
    }

    /// Changes whenever `current` does.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Schema> {
        self.current.read().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Classifies a Query or Parse text (cached by text).
    pub fn classify(&self, sql: &str) -> crate::classify::cache::Entry {
        self.cache.get_or_classify(sql, || self.current())
    }

    /// Reads the catalog, checks the schema file against it and installs the result. Returns the
    /// error messages (warnings are logged); Err when the catalog cannot be read.
    pub async fn check(&self) -> Result<Vec<String>, tokio_postgres::Error> {
        let (mut client, conn) = self.backend.client_config().connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let cat = catalog::read(&client).await;
        let capture = match (&cat, &self.cluster) {
            (Ok(cat), Some(_)) => {
                let plans = crate::replicate::capture::plan(&self.file_schema, cat);
                let strong = crate::replicate::capture::strong_plan(&self.file_schema, cat);
                crate::replicate::capture::install(&mut client, &self.file_schema, &plans, &strong, cat).await
            }
            _ => Ok(()),
        };
        drop(client);
        let _ = conn.await;
        let cat = cat?;
        if let Err(e) = capture {
            error!(error = %e.as_db_error().map_or(e.to_string(), |d| d.to_string()), "cannot install change capture: writes to new tables are not replicated until it is");
            return Err(e);
        }
        let mut errors = Vec::new();
        if let Some(file) = &self.file {
            for f in lint(&self.file_schema, &cat, file) {
                match f.severity {
                    Severity::Error => errors.push(f.message),
                    Severity::Warning => warn!(table = %f.table, "{}", f.message),
                }
            }
        }
        let mut schema = self.file_schema.clone();
        schema.relations = Some(cat.tables.keys().chain(cat.views.iter()).cloned().collect());
        schema.views = cat.views;
        schema.namespaces = Some(cat.namespaces);
        schema.trigger_functions = cat
            .tables
            .iter()
            .filter(|(_, t)| !t.trigger_functions.is_empty())
            .map(|(name, t)| (name.clone(), t.trigger_functions.clone()))
            .collect();
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(schema);
        }
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.cache.clear();
        let before = self.errors.swap(errors.len() as u64, Relaxed);
        self.metrics.schema_errors.fetch_add(errors.len() as u64, Relaxed);
        self.metrics.schema_errors.fetch_sub(before, Relaxed);
        Ok(errors)
    }

    /// After DDL: check again in the background. One check runs at a time; DDL that arrives
    /// while one runs gets a check of its own after it.
    pub fn refresh_in_background(self: &Arc<Self>) {
        self.wanted.store(true, Relaxed);
        if self.refreshing.swap(true, Relaxed) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                while me.wanted.swap(false, Relaxed) {
                    match me.check().await {
                        Ok(errors) if errors.is_empty() => info!("schema re-checked after DDL"),
                        Ok(errors) => {
                            for e in errors {
                                error!("after DDL: {e}");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot re-read the catalog after DDL"),
                    }
                }
                me.refreshing.store(false, Relaxed);
                // A request that came in between the last check and the store above.
                if !me.wanted.load(Relaxed) || me.refreshing.swap(true, Relaxed) {
                    return;
                }
            }
        });
    }
}
