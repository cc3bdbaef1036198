//! The drivers people use, through a follower of a 3-node cluster with everything strong:
//! pgjdbc (Debian's package), asyncpg, pg8000 and psycopg 3 (pipeline mode, executemany, COPY
//! in a transaction), tokio-postgres with parameterized statements, and pgbench in all three
//! query modes through every node at once. Each must do what it does against Postgres itself.

use crate::cluster::Cluster;
use crate::harness::{PASSWORD, USER, python, wait_until};
use crate::strong::leader;
use std::process::Command;

pub const STRONG: &str = "default = \"strong\"\n";
pub const ACCOUNTS: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);\n\
    INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;";

/// A node that does not lead (1-based).
pub async fn follower(c: &Cluster) -> usize {
    let l = leader(c).await;
    if l == 1 { 2 } else { 1 }
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Debian's pgjdbc, from `libpostgresql-jdbc-java` (`.ci/run` installs it).
fn pgjdbc() -> &'static str {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "pgjdbc is missing: apt-get install libpostgresql-jdbc-java (bash .ci/run does)"
    );
    jar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_commits_transactions_of_prepared_statements_through_a_follower() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let f = follower(&c).await;
    let url = format!("jdbc:postgresql://127.0.0.1:{}/postgres?sslmode=disable", c.nodes[f - 1].port);
    // More rounds than pgjdbc's prepareThreshold (5): its named server-side statements too.
    let out = Command::new("java")
        .args(["-cp", pgjdbc(), concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/Transfers.java")])
        .args([&url, USER, PASSWORD, "20"])
        .output()
        .expect("java runs");
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("jdbc: ok 20"), "{text}");
    let totals = c.converged("the transfers", "SELECT sum(balance)::text FROM accounts").await;
    assert_eq!(totals, ["1000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pg8000_and_psycopg_pipelines_work_through_a_follower() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let f = follower(&c).await;
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/drivers.py"))
        .args(["127.0.0.1", &c.nodes[f - 1].port.to_string(), USER, PASSWORD, "postgres"])
        .output()
        .expect("python runs");
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("drivers: ok"), "{text}");
    let copied = c.converged("the copied rows", "SELECT count(*)::text FROM driver_copy").await;
    assert_eq!(copied, ["100"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_parameterized_statements_work_in_and_out_of_transactions_through_a_follower() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let f = follower(&c).await;
    let mut client = c.client(f).await;
    // Prepared first (Parse, Describe, Sync), then bound and executed, as tokio-postgres does.
    let debit = client.prepare("UPDATE accounts SET balance = balance - $1 WHERE id = $2").await.unwrap();
    let read = client.prepare("SELECT balance FROM accounts WHERE id = $1").await.unwrap();
    assert_eq!(client.execute(&debit, &[&5i64, &1i32]).await.unwrap(), 1);
    let b: i64 = client.query_one(&read, &[&1i32]).await.unwrap().get(0);
    assert_eq!(b, 95);
    for i in 0..5i64 {
        let tx = client.transaction().await.unwrap();
        tx.execute(&debit, &[&1i64, &2i32]).await.unwrap();
        tx.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&1i64, &3i32]).await.unwrap();
        let b: i64 = tx.query_one(&read, &[&2i32]).await.unwrap().get(0);
        assert_eq!(b, 99 - i);
        tx.commit().await.unwrap();
    }
    // A rolled-back transaction leaves nothing, and the session goes on.
    let tx = client.transaction().await.unwrap();
    tx.execute(&debit, &[&1000i64, &4i32]).await.unwrap();
    tx.rollback().await.unwrap();
    let rows = client
        .query("SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id", &[&vec![1i32, 2, 3, 4]])
        .await
        .unwrap();
    let got: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(1, 95), (2, 95), (3, 105), (4, 100)]);
    let all = c.converged("the writes", "SELECT string_agg(balance::text, ',' ORDER BY id) FROM accounts").await;
    assert!(all[0].starts_with("95,95,105,100,"), "{all:?}");
}

fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_query_mode_through_every_node_at_once_fails_no_transaction() {
    let c = Cluster::start(3, STRONG, "").await;
    let f = follower(&c).await;
    let init = pgbench(c.nodes[f - 1].port, &["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "pgbench -i: {}", output_text(&init));
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
    let mut total = 0u64;
    for mode in ["simple", "extended", "prepared"] {
        let runs: Vec<_> = ports
            .iter()
            .map(|p| {
                let p = *p;
                std::thread::spawn(move || pgbench(p, &["-n", "-M", mode, "-c", "2", "-j", "1", "-t", "15"]))
            })
            .collect();
        for r in runs {
            let out = r.join().unwrap();
            let text = output_text(&out);
            assert!(out.status.success(), "{mode}: {text}");
            assert!(text.contains("number of transactions actually processed: 30/30"), "{mode}: {text}");
            assert!(
                !text.contains("number of failed transactions") || text.contains("failed transactions: 0 "),
                "{mode}: {text}"
            );
            total += 30;
        }
    }
    let history = c.converged("pgbench's history", "SELECT count(*)::text FROM pgbench_history").await;
    assert_eq!(history, [total.to_string()], "every transaction committed once, on every node");
    let sums = c
        .converged(
            "pgbench's balances",
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) \
             || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT sum(delta) FROM pgbench_history)",
        )
        .await;
    let parts: Vec<&str> = sums[0].split(' ').collect();
    assert!(parts.iter().all(|p| *p == parts[0]), "{sums:?}");
    wait_until("nothing is left prepared", || async {
        c.each("SELECT count(*)::text FROM pg_prepared_xacts").await.iter().all(|r| r == &["0".to_owned()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_do_not_decide_where_a_transaction_runs_go_with_it_to_the_leader() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let f = follower(&c).await;
    let mut client = c.client(f).await;
    // Simple-protocol BEGIN, then SET LOCAL, SAVEPOINT and SHOW by the extended protocol: they
    // ran here, and run again on the leader when the UPDATE comes.
    for i in 0..3i64 {
        let tx = client.transaction().await.unwrap();
        tx.execute("SET LOCAL statement_timeout = '17s'", &[]).await.unwrap();
        tx.batch_execute("SAVEPOINT before_update").await.unwrap();
        let shown: String = tx.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
        assert_eq!(shown, "17s");
        tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1", &[]).await.unwrap();
        // The leader's transaction has what ran before the UPDATE.
        let there: String = tx
            .query_one("SELECT current_setting('statement_timeout') FROM accounts WHERE id = 1 FOR UPDATE", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(there, "17s");
        tx.batch_execute("ROLLBACK TO SAVEPOINT before_update").await.unwrap();
        tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2", &[]).await.unwrap();
        tx.commit().await.unwrap();
        let b: i64 = client.query_one("SELECT balance FROM accounts WHERE id = 2", &[]).await.unwrap().get(0);
        assert_eq!(b, 99 - i);
    }
    // What ran here gives another reply on the leader (each node has its own port): 40001, and
    // the retry runs on the leader from its start.
    let tx = client.transaction().await.unwrap();
    let here: String = tx.query_one("SHOW port", &[]).await.unwrap().get(0);
    let e = tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 3", &[]).await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "40001", "{e}");
    drop(tx);
    let tx = client.transaction().await.unwrap();
    let there: String = tx.query_one("SHOW port", &[]).await.unwrap().get(0);
    assert_ne!(here, there, "the retry ran on the leader from its start");
    tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 3", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let all = c.converged("the transactions", "SELECT string_agg(balance::text, ',' ORDER BY id) FROM accounts").await;
    assert!(all[0].starts_with("100,97,99,"), "{all:?}");
}
