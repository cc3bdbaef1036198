//! Snapshots: the log is trimmed behind a snapshot of the strong state, and a node that was away
//! for longer than the log reaches comes back from the snapshot: the DDL made while it was away,
//! then the strong rows and sequences.

use crate::cluster::Cluster;
use crate::harness::wait_until;
use crate::strong::{SCHEMA, SETUP, leader};

const STATE: &str = "SELECT (SELECT string_agg(id || ':' || balance || ':' || note, ',' ORDER BY id) FROM accounts) \
    || ' | ' || (SELECT string_agg(id || v, ',' ORDER BY id) FROM made_while_away) \
    || ' | gone: ' || (to_regclass('gone') IS NOT NULL)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_too_far_behind_comes_back_from_a_snapshot() {
    let setup = format!("{SETUP}\nCREATE TABLE gone (id int PRIMARY KEY);");
    let mut c = Cluster::start_with(3, SCHEMA, &setup, "snapshot_entries = 20\n").await;
    let l = leader(&c).await;
    let down = if l == 3 { 2 } else { 3 };
    let pg = c.stop(down).await;
    let applied: i64 = pg
        .direct()
        .await
        .query_one("SELECT coalesce((applied->>'index')::bigint, 0) FROM pgmix.raft_state", &[])
        .await
        .unwrap()
        .get(0);

    // While it is away: DDL among writes, more than two snapshots' worth of entries.
    let writer = c.client(if down == 1 { 2 } else { 1 }).await;
    for i in 0..30 {
        writer.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", &[&(i % 10 + 1)]).await.unwrap();
    }
    writer
        .batch_execute(
            "CREATE TABLE made_while_away (id serial PRIMARY KEY, v text); \
             INSERT INTO made_while_away (v) VALUES ('a'), ('b'), ('c'); \
             ALTER TABLE accounts ADD COLUMN note text NOT NULL DEFAULT 'n'; \
             DROP TABLE gone",
        )
        .await
        .unwrap();
    for i in 0..30 {
        writer
            .execute("UPDATE accounts SET note = $1 WHERE id = $2", &[&format!("w{i}"), &(i % 10 + 1)])
            .await
            .unwrap();
    }
    wait_until("the live nodes trim their logs past what the stopped node has", || async {
        c.each("SELECT coalesce(min(idx), 0)::text FROM pgmix.raft_log")
            .await
            .iter()
            .all(|m| m[0].parse::<i64>().unwrap() > applied + 1)
    })
    .await;

    c.start_again(down, pg).await;
    wait_until("the returning node has the new shape", || async {
        c.nodes[down - 1].pg.direct().await.query_one(STATE, &[]).await.is_ok()
    })
    .await;
    let all = c.converged("the node back from a snapshot", STATE).await;
    assert!(all[0].starts_with("1:103:w20,2:103:w21"), "{all:?}");
    assert!(all[0].ends_with(" | 1a,2b,3c | gone: false"), "{all:?}");
    let snapshots = c.nodes[down - 1]
        .pg
        .direct()
        .await
        .query_one("SELECT snapshot IS NOT NULL FROM pgmix.raft_state", &[])
        .await
        .unwrap();
    assert!(snapshots.get::<_, bool>(0), "node {down} installed a snapshot");

    // Through the returning node: a strong write, and a sequence that goes on where it was.
    let back = c.client(down).await;
    let id: i32 = loop {
        match back.query_one("INSERT INTO made_while_away (v) VALUES ('d') RETURNING id", &[]).await {
            Ok(r) => break r.get(0),
            Err(e) if crate::harness::sqlstate(&e) == "40001" => continue,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(id, 4, "the sequence goes on from the snapshot's value");
    let all = c
        .converged(
            "a write through the returning node",
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM made_while_away",
        )
        .await;
    assert_eq!(all, ["1a,2b,3c,4d"]);
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0"]), "{prepared:?}");
}
