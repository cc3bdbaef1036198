//! pgmix's own tables, in a `pgmix` schema of each replicated database, created and upgraded
//! from the SQL files in `migrations/` (compiled in). At start-up, and when a database is first
//! opened, pgmix applies the files it has not applied yet, in order, in one transaction that also
//! records each number in `pgmix.schema_version`, under a lock, so two sessions opening one
//! database cannot both apply a file. A database whose version is newer than this pgmix knows is
//! refused: an older pgmix must not write metadata whose meaning it does not know.
//!
//! Crash meaning: a crash mid-migration rolls the whole transaction back; the next start applies
//! the same files again.

use thiserror::Error;

use crate::config::{BackendConfig, ClusterConfig};

/// (number, file name, SQL), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_node_identity.sql", include_str!("../../migrations/0001_node_identity.sql")),
    (2, "0002_weak_replication.sql", include_str!("../../migrations/0002_weak_replication.sql")),
    (3, "0003_consensus.sql", include_str!("../../migrations/0003_consensus.sql")),
    (4, "0004_strong.sql", include_str!("../../migrations/0004_strong.sql")),
    (5, "0005_strong_chunks.sql", include_str!("../../migrations/0005_strong_chunks.sql")),
    (6, "0006_snapshots.sql", include_str!("../../migrations/0006_snapshots.sql")),
    (7, "0007_roles_and_privileges.sql", include_str!("../../migrations/0007_roles_and_privileges.sql")),
    (8, "0008_temporary_ddl.sql", include_str!("../../migrations/0008_temporary_ddl.sql")),
    (9, "0009_json_null.sql", include_str!("../../migrations/0009_json_null.sql")),
    (10, "0010_partly_strong_truncate.sql", include_str!("../../migrations/0010_partly_strong_truncate.sql")),
];

/// The newest version this pgmix knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error("database `{db}`: {cause}")]
    Postgres { db: String, cause: tokio_postgres::Error },
    #[error(
        "database `{db}` has pgmix schema version {found}, newer than this pgmix knows ({known}); run the newer pgmix"
    )]
    Newer { db: String, found: i32, known: i32 },
    #[error("database `{db}`: migration {file} failed: {cause}")]
    Failed { db: String, file: &'static str, cause: tokio_postgres::Error },
    #[error(
        "database `{db}` belongs to node {their_node} of cluster `{their_cluster}`, not to node {node} of `{cluster}`; point each node at its own Postgres"
    )]
    Foreign { db: String, their_cluster: String, their_node: i32, cluster: String, node: u32 },
}

const BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS pgmix; \
    CREATE TABLE IF NOT EXISTS pgmix.schema_version (version integer PRIMARY KEY, file text NOT NULL, \
    applied_at timestamptz NOT NULL DEFAULT now())";

/// Brings `backend.database`'s pgmix schema up to date and checks that it belongs to this node.
/// Returns the version it is at.
pub async fn migrate(backend: &BackendConfig, cluster: &ClusterConfig) -> Result<i32, MigrateError> {
    let db = backend.database.clone();
    let pg = |cause| MigrateError::Postgres { db: db.clone(), cause };
    let (mut client, conn) = backend.client_config().connect(tokio_postgres::NoTls).await.map_err(pg)?;
    let conn = tokio::spawn(conn);
    let result = async {
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(BOOTSTRAP).await.map_err(pg)?;
        tx.batch_execute("LOCK TABLE pgmix.schema_version IN EXCLUSIVE MODE").await.map_err(pg)?;
        let found: i32 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM pgmix.schema_version", &[]).await.map_err(pg)?.get(0);
        if found > latest() {
            return Err(MigrateError::Newer { db: db.clone(), found, known: latest() });
        }
        for (version, file, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            tx.batch_execute(sql).await.map_err(|cause| MigrateError::Failed { db: db.clone(), file, cause })?;
            tx.execute("INSERT INTO pgmix.schema_version (version, file) VALUES ($1, $2)", &[version, file])
                .await
                .map_err(pg)?;
        }
        let node_id = cluster.node_id as i32;
        tx.execute(
            "INSERT INTO pgmix.node (cluster, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&cluster.id, &node_id],
        )
        .await
        .map_err(pg)?;
        // Serial keys of weak tables step by it (pgmix.interleave).
        let max_nodes = cluster.max_nodes as i32;
        tx.execute("UPDATE pgmix.node SET max_nodes = $1", &[&max_nodes]).await.map_err(pg)?;
        let row = tx.query_one("SELECT cluster, node_id FROM pgmix.node", &[]).await.map_err(pg)?;
        let (their_cluster, their_node): (String, i32) = (row.get(0), row.get(1));
        if their_cluster != cluster.id || their_node != node_id {
            return Err(MigrateError::Foreign {
                db: db.clone(),
                their_cluster,
                their_node,
                cluster: cluster.id.clone(),
                node: cluster.node_id,
            });
        }
        tx.commit().await.map_err(pg)?;
        Ok(latest())
    }
    .await;
    drop(client);
    let _ = conn.await;
    result
}
