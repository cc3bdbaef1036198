//! Weak replication on three nodes: every weak write commits locally and every node converges,
//! per column, whatever the interleaving, the partitions and the duplicates.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::Cluster;
use crate::harness::sqlstate;

const SCHEMA: &str = "[tables.kv]\nconsistency = \"weak\"\n[tables.items]\nconsistency = \"weak\"\n\
    [tables.fresh]\nconsistency = \"weak\"\n[tables.prices]\nconsistency = \"weak\"\n\
    [tables.people]\nconsistency = \"weak\"\nstrong_columns = [\"email\"]\n";
const SETUP: &str = "CREATE TABLE kv (id int PRIMARY KEY, a text, b text, n int); \
    CREATE TABLE items (id serial PRIMARY KEY, origin text, body jsonb, price numeric, at timestamptz); \
    CREATE TABLE prices (id int PRIMARY KEY, amount numeric, span interval, note text); \
    INSERT INTO prices VALUES (1, 1.0, '1 day', 'seed'); \
    CREATE TABLE people (id int PRIMARY KEY, email text, bio text); INSERT INTO people VALUES (1, 'a@b', 'bio'); \
    GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;";
const KV: &str = "SELECT coalesce(string_agg(format('%s|%s|%s|%s', id, a, b, n), ',' ORDER BY id), '') FROM kv";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_reach_every_node() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let n1 = c.client(1).await;
    n1.batch_execute("INSERT INTO kv VALUES (1, 'x', 'y', 1), (2, 'p', NULL, 2)").await.unwrap();
    assert_eq!(c.converged("inserts", KV).await, ["1|x|y|1,2|p||2"]);
    let n2 = c.client(2).await;
    n2.batch_execute("UPDATE kv SET a = 'x2' WHERE id = 1; DELETE FROM kv WHERE id = 2").await.unwrap();
    assert_eq!(c.converged("update and delete", KV).await, ["1|x2|y|1"]);
    // Types travel as Postgres wrote them: JSON, exact numerics, timestamps.
    let n3 = c.client(3).await;
    n3.batch_execute(
        "INSERT INTO items (origin, body, price, at) VALUES \
         ('n3', '{\"k\": [1, 2.50, \"s\"]}', 12345678901234567890.123456789, '2026-01-02 03:04:05.678901+00')",
    )
    .await
    .unwrap();
    let items = "SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s', id, origin, body, price, at AT TIME ZONE 'UTC'), ','), '') FROM items";
    let got = c.converged("typed values", items).await;
    assert_eq!(got, ["3|n3|{\"k\": [1, 2.50, \"s\"]}|12345678901234567890.123456789|2026-01-02 03:04:05.678901"]);

    // Every way of writing rows is captured: upserts, MERGE, COPY, INSERT ... SELECT.
    n1.batch_execute(
        "INSERT INTO kv VALUES (1, 'ignored', 'up', 9) ON CONFLICT (id) DO UPDATE SET b = excluded.b; \
         MERGE INTO kv USING (VALUES (1), (5)) s(id) ON kv.id = s.id \
           WHEN MATCHED THEN UPDATE SET n = 10 WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'merged', NULL, 5); \
         INSERT INTO kv SELECT id + 100, a, b, n FROM kv WHERE id = 5",
    )
    .await
    .unwrap();
    let copy = n2.copy_in::<_, bytes::Bytes>("COPY kv FROM STDIN").await.unwrap();
    futures_util::pin_mut!(copy);
    use futures_util::SinkExt;
    copy.send(bytes::Bytes::from_static(b"7\tcopied\t\\N\t7\n")).await.unwrap();
    copy.finish().await.unwrap();
    assert_eq!(c.converged("upsert, merge, copy", KV).await, ["1|x2|up|10,5|merged||5,7|copied||7,105|merged||5"]);

    // Once every peer has a change, it leaves the log.
    crate::harness::wait_until("the change logs are pruned", || async {
        c.each("SELECT count(*)::text FROM pgmix.changes").await.iter().all(|n| n == &["0"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_writing_different_columns_of_one_row_both_survive() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.client(1).await.batch_execute("INSERT INTO kv VALUES (1, 'a0', 'b0', 0)").await.unwrap();
    c.converged("the row", KV).await;
    // Both transactions are open at once, each on its own node, neither sees the other.
    let (mut x, mut y) = (c.client(1).await, c.client(2).await);
    let tx1 = x.transaction().await.unwrap();
    let tx2 = y.transaction().await.unwrap();
    tx1.execute("UPDATE kv SET a = 'from-node1' WHERE id = 1", &[]).await.unwrap();
    tx2.execute("UPDATE kv SET b = 'from-node2' WHERE id = 1", &[]).await.unwrap();
    tx2.commit().await.unwrap();
    tx1.commit().await.unwrap();
    assert_eq!(c.converged("both columns", KV).await, ["1|from-node1|from-node2|0"]);
}

/// Every field on every node ends with a value that was really written to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_updates_on_all_nodes_converge_to_written_values() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.client(1)
        .await
        .batch_execute("INSERT INTO kv SELECT g, 'a0', 'b0', 0 FROM generate_series(1, 5) g")
        .await
        .unwrap();
    c.converged("the rows", KV).await;
    let mut written: BTreeMap<(i32, &str), BTreeSet<String>> = BTreeMap::new();
    for id in 1..=5 {
        written.entry((id, "a")).or_default().insert("a0".into());
        written.entry((id, "b")).or_default().insert("b0".into());
    }
    let mut tasks = Vec::new();
    for node in 1..=3 {
        let client = c.client(node).await;
        let mut plan = Vec::new();
        for i in 0..60 {
            let id = (i * 7 + node * 3) % 5 + 1;
            let col = if (i + node) % 3 == 0 { "b" } else { "a" };
            let value = format!("n{node}-{i}");
            written.entry((id as i32, col)).or_default().insert(value.clone());
            plan.push((id as i32, col, value));
        }
        tasks.push(tokio::spawn(async move {
            for (id, col, value) in plan {
                client
                    .execute(&format!("UPDATE kv SET {col} = $1, n = n + 1 WHERE id = $2"), &[&value, &id])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = c.converged("after the storm", KV).await;
    for row in rows[0].split(',') {
        let f: Vec<&str> = row.split('|').collect();
        let id: i32 = f[0].parse().unwrap();
        assert!(written[&(id, "a")].contains(f[1]), "row {id}: a = {} was never written", f[1]);
        assert!(written[&(id, "b")].contains(f[2]), "row {id}: b = {} was never written", f[2]);
    }
    // Every batch applied whole: the change-by-change path is for changes that fail.
    for n in &c.nodes {
        let text = n.handle().metrics.render("x");
        assert!(text.contains("pgmix_weak_batches_change_by_change_total{node=\"x\"} 0"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_updates_and_reinserts_racing_converge() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.client(1)
        .await
        .batch_execute("INSERT INTO kv SELECT g, 'a', 'b', 0 FROM generate_series(1, 20) g")
        .await
        .unwrap();
    c.converged("the rows", KV).await;
    // Node 3 is cut off while the others race it, so the writes really are concurrent.
    c.isolate(3, true);
    let (n1, n2, n3) = (c.client(1).await, c.client(2).await, c.client(3).await);
    for id in 1..=20 {
        match id % 4 {
            0 => {
                n1.execute("DELETE FROM kv WHERE id = $1", &[&id]).await.unwrap();
                n3.execute("UPDATE kv SET a = 'updated' WHERE id = $1", &[&id]).await.unwrap();
            }
            1 => {
                n3.execute("DELETE FROM kv WHERE id = $1", &[&id]).await.unwrap();
                n3.execute("INSERT INTO kv VALUES ($1, 'again', 'n3', 3)", &[&id]).await.unwrap();
                n2.execute("DELETE FROM kv WHERE id = $1", &[&id]).await.unwrap();
            }
            2 => {
                n1.execute("DELETE FROM kv WHERE id = $1", &[&id]).await.unwrap();
                n1.execute("INSERT INTO kv VALUES ($1, 'back', 'n1', 1)", &[&id]).await.unwrap();
                n3.execute("UPDATE kv SET b = 'n3-b' WHERE id = $1", &[&id]).await.unwrap();
            }
            _ => {
                n2.execute("UPDATE kv SET a = 'n2' WHERE id = $1", &[&id]).await.unwrap();
                n3.execute("UPDATE kv SET a = 'n3' WHERE id = $1", &[&id]).await.unwrap();
            }
        }
    }
    c.isolate(3, false);
    let rows = c.converged("after healing", KV).await;
    // Delete against update: the delete wins, the row stays gone.
    for id in (4..=20).step_by(4) {
        assert!(!rows[0].split(',').any(|r| r.starts_with(&format!("{id}|"))), "row {id} came back: {rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_both_sides_of_a_partition_converge_after_it_heals() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.client(1)
        .await
        .batch_execute("INSERT INTO kv SELECT g, 'a', 'b', 0 FROM generate_series(1, 10) g")
        .await
        .unwrap();
    c.converged("the rows", KV).await;
    c.isolate(1, true);
    let (n1, n2, n3) = (c.client(1).await, c.client(2).await, c.client(3).await);
    // Weak writes go on working on both sides.
    n1.batch_execute("UPDATE kv SET a = 'minority' WHERE id <= 5; INSERT INTO kv VALUES (11, 'n1', 'n1', 1)")
        .await
        .unwrap();
    n2.batch_execute("UPDATE kv SET b = 'majority' WHERE id >= 5; INSERT INTO kv VALUES (12, 'n2', 'n2', 2)")
        .await
        .unwrap();
    n3.batch_execute("DELETE FROM kv WHERE id = 10").await.unwrap();
    let before = c.each(KV).await;
    assert_ne!(before[0], before[1], "node1 is cut off");
    c.isolate(1, false);
    let rows = c.converged("after healing", KV).await;
    assert!(rows[0].contains("5|minority|majority|0"), "{rows:?}");
    assert!(rows[0].contains("11|n1|n1|1") && rows[0].contains("12|n2|n2|2") && !rows[0].contains("10|"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_keys_are_unique_per_node_and_truncate_is_refused() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    for node in 1..=3 {
        let client = c.client(node).await;
        for _ in 0..3 {
            client.execute("INSERT INTO items (origin) VALUES ($1)", &[&format!("n{node}")]).await.unwrap();
        }
    }
    let q = "SELECT coalesce(string_agg(format('%s:%s', id, origin), ',' ORDER BY id), '') FROM items";
    let rows = c.converged("serial keys", q).await;
    let ids: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(ids.len(), 9, "no key was handed out twice: {rows:?}");
    let err = c.client(2).await.batch_execute("TRUNCATE kv").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err:?}");
    let msg = err.as_db_error().map(|d| format!("{} {:?}", d.message(), d.hint())).unwrap_or_default();
    assert!(msg.contains("DELETE FROM"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_apply_yet_is_parked_and_applied_later() {
    // Node 3 lacks the column `extra` until the test adds it.
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    for node in 1..=2 {
        c.nodes[node - 1].pg.direct().await.batch_execute("ALTER TABLE kv ADD COLUMN extra text").await.unwrap();
    }
    // Capture follows ALTER TABLE in the same transaction, even one made straight in Postgres.
    c.client(1).await.batch_execute("INSERT INTO kv VALUES (1, 'a', 'b', 0, 'e')").await.unwrap();
    let n3 = &c.nodes[2];
    // Parked once per peer it came from (node2 forwards what it applied from node1).
    let parked_metric = || {
        let text = n3.handle().metrics.render("node3");
        let line = text.lines().find(|l| l.starts_with("pgmix_weak_conflicts_parked{")).unwrap_or_default().to_owned();
        line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_default()
    };
    crate::harness::wait_until("node3 parks the change and says so", || async { parked_metric() > 0 }).await;
    let parked = n3.pg.direct().await.query("SELECT reason FROM pgmix.conflicts", &[]).await.unwrap();
    assert!(!parked.is_empty());
    for row in parked {
        assert!(row.get::<_, String>(0).contains("extra"), "{:?}", row.get::<_, String>(0));
    }
    n3.pg.direct().await.batch_execute("ALTER TABLE kv ADD COLUMN extra text").await.unwrap();
    let q = "SELECT coalesce(string_agg(format('%s|%s', id, extra), ','), '') FROM kv";
    assert_eq!(c.converged("the parked change applied", q).await, ["1|e"]);
    crate::harness::wait_until("nothing parked", || async { parked_metric() == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_keys_that_differ_after_a_change_made_behind_pgmix() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.client(1)
        .await
        .batch_execute("INSERT INTO kv SELECT g, 'a', 'b', g FROM generate_series(1, 200) g")
        .await
        .unwrap();
    c.converged("the rows", KV).await;
    let nodes: Vec<(String, tokio_postgres::Config)> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host_path(n.pg.pg.socket_dir()).port(n.pg.pg.port).user("postgres").dbname("postgres");
            (format!("node{}", i + 1), cfg)
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
    let reports = pgmix::verify::verify(&nodes).await.unwrap();
    let (text, equal) = pgmix::verify::render(&reports, &names);
    assert!(equal, "{text}");
    assert!(text.contains("\"public\".\"kv\": equal on 3 nodes (200 rows)"), "{text}");
    // By hand, on node3's Postgres, with capture off: a real divergence.
    c.nodes[2]
        .pg
        .direct()
        .await
        .batch_execute(
            "SET session_replication_role = replica; UPDATE kv SET b = 'hand' WHERE id = 117; DELETE FROM kv WHERE id = 3",
        )
        .await
        .unwrap();
    let reports = pgmix::verify::verify(&nodes).await.unwrap();
    let (text, equal) = pgmix::verify::render(&reports, &names);
    assert!(!equal, "{text}");
    let kv = reports.iter().find(|r| r.table.contains("kv")).unwrap();
    let keys: Vec<&str> = kv.differing.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["{\"id\": 117}", "{\"id\": 3}"], "{text}");
    assert!(text.contains("node3: missing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_table_created_through_any_path_is_captured_from_its_first_row() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    // Created and written in one transaction: capture is installed by the CREATE itself, and
    // the identity sequence is interleaved before its first value. The DDL goes on the log, so
    // the table appears on every node; each then writes to it in a transaction of its own.
    c.client(1)
        .await
        .batch_execute(
            "BEGIN; CREATE TABLE fresh (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
             INSERT INTO fresh (v) VALUES ('n1-a'), ('n1-b'); COMMIT",
        )
        .await
        .unwrap();
    c.converged("the table on every node", "SELECT to_regclass('fresh')::text").await;
    for node in 2..=3 {
        c.client(node)
            .await
            .batch_execute(&format!("BEGIN; INSERT INTO fresh (v) VALUES ('n{node}-a'), ('n{node}-b'); COMMIT"))
            .await
            .unwrap();
    }
    let q = "SELECT coalesce(string_agg(format('%s:%s', id, v), ',' ORDER BY id), '') FROM fresh";
    let rows = c.converged("rows written in the creating transaction", q).await;
    assert_eq!(rows[0].split(',').count(), 6, "every row on every node, no key twice: {rows:?}");
    // A column added later, straight in one node's Postgres (not through pgmix), is captured too.
    for n in &c.nodes {
        n.pg.direct().await.batch_execute("ALTER TABLE fresh ADD COLUMN note text").await.unwrap();
    }
    c.nodes[0].pg.direct().await.batch_execute("UPDATE fresh SET note = 'later'").await.unwrap();
    let q = "SELECT coalesce(string_agg(format('%s:%s', id, note), ',' ORDER BY id), '') FROM fresh";
    let rows = c.converged("the new column", q).await;
    assert_eq!(rows[0].matches(":later").count(), 6, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_opened_on_one_node_replicates_to_the_others_which_open_it_on_demand() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    for n in &c.nodes {
        n.pg.direct().await.batch_execute("CREATE DATABASE app").await.unwrap();
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(n.pg.pg.socket_dir()).port(n.pg.pg.port).user("postgres").dbname("app");
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute("CREATE TABLE kv (id int PRIMARY KEY, a text, b text, n int)").await.unwrap();
    }
    // Only node1 has a client in `app`; the others open it when node1 asks them for its log.
    let mut cfg = c.nodes[0].config();
    cfg.dbname("app");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("INSERT INTO kv VALUES (1, 'in app', NULL, 1)").await.unwrap();
    crate::harness::wait_until("the row reaches every node's `app`", || async {
        let mut all = Vec::new();
        for n in &c.nodes {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host_path(n.pg.pg.socket_dir()).port(n.pg.pg.port).user("postgres").dbname("app");
            let Ok((client, conn)) = cfg.connect(tokio_postgres::NoTls).await else { return false };
            tokio::spawn(conn);
            let Ok(rows) = client.query("SELECT a FROM kv", &[]).await else { return false };
            all.push(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>());
        }
        all.iter().all(|r| r == &["in app"])
    })
    .await;
    // The `postgres` database is untouched by it.
    assert_eq!(c.converged("postgres", KV).await, [""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_postgres_was_set_up_anew_is_read_from_the_start_of_its_new_log() {
    let mut c = Cluster::start(3, SCHEMA, SETUP).await;
    let n2 = c.client(2).await;
    for id in 1..=50 {
        n2.execute("INSERT INTO kv VALUES ($1, 'old', NULL, 0)", &[&id]).await.unwrap();
    }
    drop(n2);
    c.converged("the old rows", KV).await;
    // Node2's data is lost; it comes back empty, with the same node id. Its new change log
    // restarts its transaction ids, below where its peers' cursors stood in the old one.
    c.replace_postgres(2).await;
    c.client(2).await.batch_execute("INSERT INTO kv VALUES (99, 'after', NULL, 0)").await.unwrap();
    let q = "SELECT coalesce(string_agg(a, ','), '') FROM kv WHERE id = 99";
    crate::harness::wait_until("node1 and node3 read node2's new log", || async {
        let all = c.each(q).await;
        all[0] == ["after"] && all[2] == ["after"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catches_up_through_a_live_peer_with_changes_of_a_node_that_is_gone() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    c.isolate(3, true);
    c.client(1).await.batch_execute("INSERT INTO kv VALUES (7, 'from node1', NULL, 1)").await.unwrap();
    let q = "SELECT coalesce(string_agg(a, ','), '') FROM kv";
    crate::harness::wait_until("node2 has node1's write", || async { c.each(q).await[1] == ["from node1"] }).await;
    // Node1 goes away before node3 comes back: node3 can only learn the write from node2.
    c.isolate(1, true);
    c.cut(2, 3, false);
    crate::harness::wait_until("node3 gets node1's write from node2", || async {
        c.each(q).await[2] == ["from node1"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_but_different_values_rows_from_before_capture_and_key_changes_are_handled() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let q =
        "SELECT coalesce(string_agg(format('%s|%s|%s|%s', id, amount, span, note), ',' ORDER BY id), '') FROM prices";
    // The seed row predates capture: its first update ships it whole.
    c.client(1).await.batch_execute("UPDATE prices SET note = 'seen' WHERE id = 1").await.unwrap();
    assert_eq!(c.converged("seen", q).await, ["1|1.0|1 day|seen"]);
    // 1.0 = 1.00 and '1 day' = '24 hours' for Postgres, but they are other values: captured.
    c.client(1).await.batch_execute("UPDATE prices SET amount = 1.00, span = '24 hours' WHERE id = 1").await.unwrap();
    assert_eq!(c.converged("equal but different", q).await, ["1|1.00|24:00:00|seen"]);
    // A row written on node2 before capture saw it: its first update ships it whole.
    c.nodes[1]
        .pg
        .direct()
        .await
        .batch_execute("SET session_replication_role = replica; INSERT INTO prices VALUES (2, 5, NULL, 'only here')")
        .await
        .unwrap();
    c.client(2).await.batch_execute("UPDATE prices SET note = 'shipped' WHERE id = 2").await.unwrap();
    assert_eq!(c.converged("the row from before capture", q).await, ["1|1.00|24:00:00|seen,2|5||shipped"]);
    // A table with strong columns: its key cannot change through a weak update.
    let err = c.client(3).await.batch_execute("UPDATE people SET id = 9 WHERE id = 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err:?}");
    // Its weak columns replicate.
    c.client(3).await.batch_execute("UPDATE people SET bio = 'new bio' WHERE id = 1").await.unwrap();
    let people = "SELECT coalesce(string_agg(format('%s|%s|%s', id, email, bio), ','), '') FROM people";
    assert_eq!(c.converged("weak columns of a mixed table", people).await, ["1|a@b|new bio"]);
}

/// A local insert still open while a peer's insert and delete of the same key are applied: the
/// apply must not overwrite what the local transaction wrote, and every node ends the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_races_an_open_local_insert_of_the_same_key_converges() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let mut n1 = c.client(1).await;
    let local = n1.transaction().await.unwrap();
    local.execute("INSERT INTO kv VALUES (500, 'local', NULL, 1)", &[]).await.unwrap();
    // Stamped after the local insert: node2's insert and its delete win over it.
    let n2 = c.client(2).await;
    n2.batch_execute("INSERT INTO kv VALUES (500, 'remote', NULL, 2); DELETE FROM kv WHERE id = 500").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    local.commit().await.unwrap();
    n2.batch_execute("INSERT INTO kv VALUES (501, 'marker', NULL, 0)").await.unwrap();
    let rows = c.converged("after the race", KV).await;
    assert_eq!(rows, ["501|marker||0"], "the delete is the latest write of key 500");
}
