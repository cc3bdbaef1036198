//! The strong path on three nodes: strong writes through any node commit on every node, in log
//! order; strong reads see every write committed before them; a node without a majority fails
//! strong statements with 40001 and keeps serving weak ones.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::consensus::agreed;
use crate::harness::wait_until;

pub const SCHEMA: &str = "default = \"strong\"\n[tables.notes]\nconsistency = \"weak\"\n";
pub const SETUP: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);\n\
    INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;\n\
    CREATE TABLE notes (id int PRIMARY KEY, body text);";

pub async fn leader(c: &Cluster) -> usize {
    wait_until("one leader, agreed by every node", || async { agreed(c, &[1, 2, 3]).is_some() }).await;
    agreed(c, &[1, 2, 3]).unwrap().0 as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_writes_through_every_node_commit_on_every_node() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    for k in 1..=3 {
        let client = c.client(k).await;
        // A single statement, and an explicit transaction.
        client.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1", &[]).await.unwrap();
        // A whole transaction in one Query.
        client.batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 2; COMMIT").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        client.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2", &[]).await.unwrap();
        client.execute("INSERT INTO accounts VALUES ($1, 0)", &[&(100 + k as i32)]).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        // A strong read sees it at once, on this node.
        let b: i64 = client.query_one("SELECT balance FROM accounts WHERE id = 2", &[]).await.unwrap().get(0);
        assert_eq!(b, 100 + 2 * k as i64, "node {k} (leader {l}) reads its own strong write");
    }
    // Behind pgmix's back, a strong table cannot be written.
    let e = c.nodes[0].pg.direct().await.execute("UPDATE accounts SET balance = 0", &[]).await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "0A000", "{e}");
    let all =
        c.converged("strong writes", "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts").await;
    assert!(all[0].starts_with("1:97,2:106,3:100"), "{all:?}");
    assert!(all[0].ends_with("101:0,102:0,103:0"), "{all:?}");
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0".to_owned()]), "{prepared:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
