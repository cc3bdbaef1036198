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
    // `people` is partly strong: its rows and emails are strong, its nicknames weak.
    let schema = format!("{SCHEMA}[tables.people]\nconsistency = \"weak\"\nstrong_columns = [\"email\"]\n");
    let setup = format!(
        "{SETUP}\nCREATE TABLE gone (id int PRIMARY KEY);\n\
         CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, nick text);\n\
         INSERT INTO people VALUES (1, 'a@x', 'a'), (2, 'b@x', 'b'), (3, 'c@x', 'c');"
    );
    let mut c = Cluster::start_with(3, &schema, &setup, "snapshot_entries = 20\n").await;
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
    writer.batch_execute("CREATE DATABASE made_while_away_db").await.unwrap();
    // A role, and a grant to it, while the node is away: the snapshot carries both.
    writer.batch_execute("CREATE ROLE away_reader LOGIN PASSWORD 'away'").await.unwrap();
    writer.batch_execute("GRANT SELECT ON accounts TO away_reader").await.unwrap();
    for sql in [
        // A unique strong value moves from one row to another.
        "DELETE FROM people WHERE id = 2",
        "UPDATE people SET email = 'b@x' WHERE id = 1",
        "INSERT INTO people VALUES (4, 'd@x', 'd')",
        // A backfill, then a constraint that holds only after it.
        "ALTER TABLE accounts ADD COLUMN tag text",
        "UPDATE accounts SET tag = 't'",
        "ALTER TABLE accounts ALTER COLUMN tag SET NOT NULL",
        "UPDATE people SET nick = 'c2' WHERE id = 3",
    ] {
        writer.batch_execute(sql).await.unwrap();
    }
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
    let people = c
        .converged("a partly strong table", "SELECT string_agg(id || email || nick, ',' ORDER BY id) FROM people")
        .await;
    assert_eq!(people, ["1b@xa,3c@xc2,4d@xd"]);
    let reader = c
        .converged(
            "a role made while away",
            "SELECT rolcanlogin || ' ' || left(rolpassword, 6) || ' ' || has_table_privilege('away_reader', 'accounts', 'SELECT')              FROM pg_authid WHERE rolname = 'away_reader'",
        )
        .await;
    assert_eq!(reader, ["true SCRAM- true"]);
    let dbs = c.each("SELECT count(*)::text FROM pg_database WHERE datname = 'made_while_away_db'").await;
    assert!(dbs.iter().all(|n| n == &["1"]), "CREATE DATABASE from the snapshot's journal: {dbs:?}");
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
    let insert = "INSERT INTO made_while_away (v) VALUES ('d') RETURNING id";
    let id: i32 = crate::harness::query_one_retrying(&back, insert).await.get(0);
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
