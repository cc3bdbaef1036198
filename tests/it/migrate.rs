//! pgmix's own schema in each database of a cluster node: created from `migrations/`, versioned,
//! never downgraded, and bound to the node it belongs to.

use pgmix::cluster::certs::ensure_cluster;
use pgmix::cluster::pg::free_port;

use crate::harness::{TempDir, sqlstate};
use crate::peers::{cluster_node, hosts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_gets_the_pgmix_schema_and_a_newer_or_foreign_one_is_refused() {
    let dir = TempDir::new("migrate");
    let certs = ensure_cluster(&dir.0.join("certs"), &["node1".into(), "node2".into()], &hosts()).unwrap();
    let node = cluster_node(&certs, 1, [free_port().unwrap(), free_port().unwrap()]).await;
    let direct = node.pg.direct().await;
    let version: i32 = direct.query_one("SELECT max(version) FROM pgmix.schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, pgmix::schema::migrate::latest());
    let row = direct.query_one("SELECT cluster, node_id FROM pgmix.node", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("test-cluster".to_owned(), 1));
    // Clients cannot read it.
    direct.batch_execute("CREATE ROLE app LOGIN PASSWORD 'x'").await.unwrap();
    let app = node.try_client("app", "x").await.unwrap();
    assert_eq!(sqlstate(&app.query("SELECT * FROM pgmix.node", &[]).await.unwrap_err()), "42501");

    // A database opened later gets it at its first session.
    for db in ["shop", "newer", "foreign_db"] {
        direct.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    }
    let open = |db: &'static str| {
        let mut cfg = node.config();
        cfg.dbname(db);
        async move { cfg.connect(tokio_postgres::NoTls).await.map(|(c, conn)| (c, tokio::spawn(conn))) }
    };
    let (shop, _) = open("shop").await.expect("shop is served");
    assert_eq!(shop.query_one("SELECT node_id FROM pgmix.node", &[]).await.unwrap().get::<_, i32>(0), 1);

    // One written by a newer pgmix, and one that belongs to another node, are refused.
    let direct_to = |db: &str| {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(node.pg.pg.socket_dir()).port(node.pg.pg.port).user("postgres").dbname(db);
        cfg
    };
    let (c, conn) = direct_to("newer").connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "CREATE SCHEMA pgmix; CREATE TABLE pgmix.schema_version (version int PRIMARY KEY, file text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO pgmix.schema_version (version, file) VALUES (999, 'future.sql')",
    )
    .await
    .unwrap();
    let Err(e) = open("newer").await else { panic!("a database of a newer pgmix was served") };
    assert_eq!(sqlstate(&e), "55000");
    assert!(e.as_db_error().unwrap().message().contains("newer than this pgmix"), "{e:?}");

    let (c, conn) = direct_to("foreign_db").connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "CREATE SCHEMA pgmix; CREATE TABLE pgmix.schema_version (version int PRIMARY KEY, file text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE pgmix.node (one boolean PRIMARY KEY DEFAULT true, cluster text NOT NULL, node_id integer NOT NULL); \
         INSERT INTO pgmix.schema_version (version, file) VALUES (1, '0001_node_identity.sql'); \
         INSERT INTO pgmix.node (cluster, node_id) VALUES ('test-cluster', 2)",
    )
    .await
    .unwrap();
    let Err(e) = open("foreign_db").await else { panic!("another node's database was served") };
    assert!(e.as_db_error().unwrap().message().contains("belongs to node 2"), "{e:?}");
    // The node goes on serving its own databases.
    assert_eq!(shop.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
