//! Applying committed strong entries to the local Postgres, and resolving prepared transactions
//! left in doubt.
//!
//! A `Commit` entry names the transaction the leader prepared (`gid`) and carries its effects.
//! On the node that prepared it the entry is applied by `COMMIT PREPARED`; on every other node
//! its effects are applied (`pgmix.apply_strong`) in one local transaction that also moves the
//! database's `pgmix.strong_applied` marker, so an entry is applied exactly once across crashes.
//!
//! In doubt: a transaction prepared here whose entry may or may not be on the log. Entries are
//! appended in the term of the leader that prepared them (the gid names that term), so once this
//! node applies an entry of a later term, every earlier entry that will ever commit has been
//! applied here: a prepared transaction of an earlier term that is still prepared did not commit
//! and is rolled back. A transaction whose commit is still being waited for in this process
//! (`InFlight`) is never touched: its append may land in a later term than its gid names.
//!
//! These writes commit asynchronously. One lost in a crash was not acknowledged as applied
//! either: the applied id (and each database's marker) is written after it in the same
//! write-ahead log, so the entry is applied again from the log.
//!
//! Crash meaning: `COMMIT PREPARED` and the applied marker cannot share a transaction; a crash
//! between them leaves the gid committed (no longer prepared), and applying the entry again
//! finds nothing prepared and skips it. A rollback is recorded before it is made, so an entry
//! that commits after all (which the rule above says cannot happen) is applied from its effects
//! rather than lost.

use std::collections::HashMap;

use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::config::BackendConfig;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The node is stopping at a failpoint (tests).
    #[error("{0}")]
    Stopped(std::io::Error),
}

/// A gid: `pgmix_<term>_<node>_<counter>_<cluster>`.
pub fn gid(term: u64, node: u32, counter: u64, cluster: &str) -> String {
    format!("pgmix_{term}_{node}_{counter}_{cluster}")
}

/// The term a gid of `cluster` names; None for anyone else's prepared transaction.
pub fn gid_term(gid: &str, cluster: &str) -> Option<u64> {
    let mut parts = gid.splitn(5, '_');
    if parts.next() != Some("pgmix") {
        return None;
    }
    let term = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    (parts.next()? == cluster).then_some(term)
}

pub struct Applier {
    backend: BackendConfig,
    node_id: u32,
    cluster: String,
    /// Connections to each database entries were applied in.
    dbs: Mutex<HashMap<String, tokio_postgres::Client>>,
    /// Prepared transactions of terms below this one are resolved.
    resolved_term: std::sync::atomic::AtomicU64,
    /// Told the database of each applied entry that held DDL (its catalog is read again).
    ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
    failpoints: std::sync::Arc<crate::strong::failpoint::FailPoints>,
}

impl Applier {
    pub fn new(
        backend: BackendConfig,
        node_id: u32,
        cluster: String,
        ddl_applied: tokio::sync::mpsc::UnboundedSender<String>,
        failpoints: std::sync::Arc<crate::strong::failpoint::FailPoints>,
    ) -> Self {
        Self {
            failpoints,
            ddl_applied,
            backend,
            node_id,
            cluster,
            dbs: Mutex::new(HashMap::new()),
            resolved_term: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn with_db<T>(
        &self,
        database: &str,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        let mut dbs = self.dbs.lock().await;
        if dbs.get(database).is_none_or(|c| c.is_closed()) {
            // Not synchronous: an apply lost in a crash is replayed from the log (see `mod`).
            let c = self.backend.connect(database, "SET synchronous_commit = off").await?;
            dbs.insert(database.to_owned(), c);
        }
        let Some(client) = dbs.get_mut(database) else { unreachable!("inserted above") };
        let result = f(client).await;
        if result.is_err() && client.is_closed() {
            dbs.remove(database);
        }
        result
    }

    /// Rolls back this cluster's prepared transactions of terms below `term` (see the module
    /// header). Cheap when nothing is prepared.
    pub async fn resolve_before(&self, term: u64) -> Result<(), tokio_postgres::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.resolved_term.load(Relaxed) >= term {
            return Ok(());
        }
        let main = self.backend.database.clone();
        let prepared = self
            .with_db(&main, async |c| {
                c.query("SELECT gid, database::text FROM pg_prepared_xacts WHERE gid LIKE 'pgmix\\_%'", &[]).await
            })
            .await?;
        for row in prepared {
            let (gid, database): (String, String) = (row.get(0), row.get(1));
            let Some(t) = gid_term(&gid, &self.cluster) else { continue };
            if t >= term {
                continue;
            }
            warn!(%gid, %database, "rolling back a strong transaction left in doubt: its entry never committed");
            self.with_db(&database, async |c| {
                c.execute("INSERT INTO pgmix.strong_rolled_back (gid) VALUES ($1) ON CONFLICT DO NOTHING", &[&gid])
                    .await?;
                c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await
            })
            .await?;
        }
        self.resolved_term.store(term, Relaxed);
        Ok(())
    }

    /// Applies the committed entry at `index`.
    pub async fn commit(
        &self,
        index: u64,
        origin: u32,
        gid: &str,
        database: &str,
        effects: &str,
    ) -> Result<(), ApplyError> {
        self.apply_commit(index, origin, gid, database, effects).await?;
        if effects.contains("\"op\": \"S\"") {
            let _ = self.ddl_applied.send(database.to_owned());
        }
        Ok(())
    }

    async fn apply_commit(
        &self,
        index: u64,
        origin: u32,
        gid: &str,
        database: &str,
        effects: &str,
    ) -> Result<(), ApplyError> {
        if origin == self.node_id {
            use crate::strong::failpoint::BEFORE_COMMIT_PREPARED;
            if let Err(e) = self.failpoints.hit(BEFORE_COMMIT_PREPARED).await {
                // As a crash here would: the entry stays unapplied in this process.
                warn!(%gid, "{e}");
                return Err(ApplyError::Stopped(e));
            }
            let prepared = self
                .with_db(database, async |c| {
                    let found = c.query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid]).await?.is_some();
                    if found {
                        c.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await?;
                        return Ok(true);
                    }
                    let rolled_back =
                        c.query_opt("SELECT 1 FROM pgmix.strong_rolled_back WHERE gid = $1", &[&gid]).await?.is_some();
                    Ok(!rolled_back)
                })
                .await?;
            if prepared {
                return Ok(());
            }
            warn!(%gid, "a strong transaction rolled back here committed after all: applying its effects");
        }
        let idx = index as i64;
        self.with_db(database, async |c| {
            let tx = c.transaction().await?;
            tx.batch_execute("SET LOCAL session_replication_role = replica").await?;
            let done: i64 = tx.query_one("SELECT idx FROM pgmix.strong_applied FOR UPDATE", &[]).await?.get(0);
            if done >= idx {
                return tx.rollback().await;
            }
            if let Err(e) = tx.execute("SELECT pgmix.apply_strong($1::text::jsonb)", &[&effects]).await {
                let what: String = effects.chars().take(400).collect();
                let why = e.as_db_error().map_or(e.to_string(), |d| d.to_string());
                tracing::error!(index, %gid, %database, error = %why, effects = %what, "a committed strong transaction cannot be applied here");
                return Err(e);
            }
            tx.execute("UPDATE pgmix.strong_applied SET idx = $1", &[&idx]).await?;
            tx.commit().await
        })
        .await?;
        debug!(index, %gid, "applied a strong transaction");
        Ok(())
    }
}

impl Applier {
    /// Runs a statement that cannot run in a transaction block. It is not applied exactly once:
    /// a crash right after it runs it again, so what it says when its work is already done
    /// (the database exists, the index exists) is only logged, like any failure here, and the
    /// outcome goes back to the leader's client.
    pub async fn standalone(&self, database: &str, sql: &str, role: &str, search_path: &str) -> super::Outcome {
        // CREATE and DROP DATABASE run from the node's own database; DROP needs no connection
        // of pgmix's left in the database it drops.
        let upper = sql.trim_start().to_ascii_uppercase();
        let on_db = if upper.contains("DATABASE") { self.backend.database.clone() } else { database.to_owned() };
        if upper.starts_with("DROP") && upper.contains("DATABASE") {
            self.dbs.lock().await.clear();
        }
        let setup = format!(
            "SET ROLE {}; SELECT set_config('search_path', {}, false)",
            crate::replicate::capture::ident(role),
            quote_literal(search_path)
        );
        let result = self
            .with_db(&on_db, async |c| {
                c.batch_execute(&setup).await?;
                let r = c.batch_execute(sql).await;
                c.batch_execute("RESET ROLE; RESET search_path").await?;
                r
            })
            .await;
        match result {
            Ok(()) => None,
            Err(e) => {
                let (code, message) = match e.as_db_error() {
                    Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
                    None => ("58000".to_owned(), e.to_string()),
                };
                warn!(%code, %message, sql, "a statement from the log failed here");
                Some((code, message))
            }
        }
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_term_and_only_this_cluster_s_are_read() {
        let g = gid(7, 2, 99, "my_cluster");
        assert_eq!(g, "pgmix_7_2_99_my_cluster");
        assert_eq!(gid_term(&g, "my_cluster"), Some(7));
        assert_eq!(gid_term(&g, "other"), None);
        assert_eq!(gid_term("pgmix_x_2_3_my_cluster", "my_cluster"), None);
        assert_eq!(gid_term("client_gid", "my_cluster"), None);
    }
}
