//! A committed entry that one node cannot apply (its Postgres was changed behind pgmix's back)
//! never stops the cluster: that node passes over it and goes on acknowledging the log, says so
//! in its metrics, and sends its strong reads to the leader; the others go on serving.

use crate::cluster::Cluster;
use crate::drivers::{ACCOUNTS, STRONG, follower};
use crate::harness::{sqlstate, wait_until};
use crate::strong::leader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_one_node_cannot_apply_leaves_the_cluster_serving() {
    let mut c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let l = leader(&c).await;
    let poisoned = follower(&c).await;
    let other = (1..=3).find(|k| *k != l && *k != poisoned).unwrap();
    // Behind pgmix's back, on one follower only.
    c.nodes[poisoned - 1]
        .pg
        .direct()
        .await
        .batch_execute("ALTER TABLE accounts ADD CONSTRAINT poison CHECK (balance < 1000)")
        .await
        .unwrap();
    c.client(l).await.execute("UPDATE accounts SET balance = 5000 WHERE id = 1", &[]).await.unwrap();
    let metric = |k: usize| c.nodes[k - 1].handle().metrics.render("x");
    wait_until("the poisoned node reports the entry it passed over", || async {
        metric(poisoned).contains("pgmix_strong_unapplied_entries{node=\"x\"} 1")
    })
    .await;
    assert!(metric(other).contains("pgmix_strong_unapplied_entries{node=\"x\"} 0"));
    // It acknowledges the log: with the other follower gone, it is the leader's majority.
    let pg = c.stop(other).await;
    let at = |k: usize| if k > other { k - 1 } else { k };
    for k in [l, poisoned] {
        let client = c.client(at(k)).await;
        client.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2", &[]).await.unwrap();
        // A strong read through the poisoned node is the leader's, and current.
        let b: i64 = client.query_one("SELECT balance FROM accounts WHERE id = 1", &[]).await.unwrap().get(0);
        assert_eq!(b, 5000, "node {k}");
    }
    // A transaction that began on the poisoned node cannot read strong data there.
    let p = c.client(at(poisoned)).await;
    p.batch_execute("BEGIN").await.unwrap();
    // A weak statement first: the transaction begins here.
    p.query("SELECT 1", &[]).await.unwrap();
    let e = p.query_one("SELECT balance FROM accounts WHERE id = 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "40001", "{e}");
    p.batch_execute("ROLLBACK").await.unwrap();
    c.start_again(other, pg).await;
    let balances =
        "SELECT (SELECT balance FROM accounts WHERE id = 1) || ' ' || (SELECT balance FROM accounts WHERE id = 2)";
    for k in [l, other] {
        let pg = c.nodes[k - 1].pg.direct().await;
        wait_until(&format!("node {k} has every write"), || async {
            pg.query_one(balances, &[]).await.unwrap().get::<_, String>(0) == "5000 102"
        })
        .await;
    }
    let on_poisoned: String = c.nodes[poisoned - 1].pg.direct().await.query_one(balances, &[]).await.unwrap().get(0);
    assert_eq!(on_poisoned, "100 102", "the poisoned node passed over the one entry it could not apply");
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0"]), "{prepared:?}");
}
