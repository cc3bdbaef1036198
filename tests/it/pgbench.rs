//! pgbench on strong tables of a 3-node `pgmix up`: initialized through a follower, then
//! tpcb-like with clients on every node at once. No transaction fails (40001 is retried by
//! pgbench's --max-tries), the tpcb invariant holds, and the four tables are identical on every
//! node.

use std::process::{Command, Output};

use crate::harness::TempDir;
use crate::up::{base_port, metrics, run_up_with, stop};

fn pgbench(port: u16, args: &[&str]) -> Output {
    Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pgmix"])
        .args(args)
        .arg("pgmix")
        .env("PGPASSWORD", "pgmix")
        .output()
        .expect("pgbench runs")
}

fn psql(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pgmix", "-AtX", "-c", sql, "pgmix"])
        .env("PGPASSWORD", "pgmix")
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_every_node_keeps_tpcb_consistent_and_the_nodes_identical() {
    let dir = TempDir::new("pgbench");
    let port = base_port();
    let (up, _lines, _rx) = run_up_with(&dir.0, port, 3, "default = \"strong\"\n");
    let leader = crate::harness::wait_until_value("a leader", || async move {
        (1..=3u16).find(|i| {
            metrics(pgmix::cluster::up::metrics_port(port, *i))
                .contains(&format!("pgmix_raft_is_leader{{node=\"node{i}\"}} 1"))
        })
    })
    .await;
    let follower = port + if leader == 1 { 1 } else { 0 };
    // A leader change while the cluster settles fails the load with 40001 ("safe to retry"),
    // which pgbench -i does not retry itself; a client would, and so does the test (twice).
    let mut init = pgbench(follower, &["-i", "-s", "1", "-q"]);
    for _ in 0..2 {
        if init.status.success() || !String::from_utf8_lossy(&init.stderr).contains("safe to retry") {
            break;
        }
        eprintln!("pgbench -i got a retryable error, again: {}", String::from_utf8_lossy(&init.stderr));
        init = pgbench(follower, &["-i", "-s", "1", "-q"]);
    }
    assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));

    let runs: Vec<_> = (0..3)
        .map(|i| {
            let p = (port + i).to_string();
            std::thread::spawn(move || {
                Command::new("pgbench")
                    .args(["-h", "127.0.0.1", "-p", &p, "-U", "pgmix", "-c", "2", "-j", "1", "-T", "5"])
                    // No vacuum: it would also empty pgbench_history, under the other runs.
                    .arg("-n")
                    .args(["--max-tries=100", "pgmix"])
                    .env("PGPASSWORD", "pgmix")
                    .output()
                    .expect("pgbench runs")
            })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "node{}: {text}{}", i + 1, String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("number of failed transactions: 0 "), "node{}: {text}", i + 1);
        let done = text.lines().find(|l| l.contains("actually processed")).unwrap_or_default().to_owned();
        eprintln!("node{}: {done}", i + 1);
    }
    let sums = "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) \
                || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT sum(delta) FROM pgbench_history)";
    let digest = "SELECT md5((SELECT string_agg(a::text, ',' ORDER BY aid) FROM pgbench_accounts a) \
                  || (SELECT string_agg(b::text, ',' ORDER BY bid) FROM pgbench_branches b) \
                  || (SELECT string_agg(t::text, ',' ORDER BY tid) FROM pgbench_tellers t) \
                  || (SELECT string_agg(h::text, ',' ORDER BY h::text) FROM pgbench_history h))";
    let mut seen = Vec::new();
    for i in 0..3 {
        let s = psql(port + i, sums);
        let parts: Vec<&str> = s.split(' ').collect();
        assert!(parts.len() == 4 && parts.iter().all(|p| *p == parts[0]), "node{}: sums {s}", i + 1);
        seen.push(psql(port + i, digest));
    }
    assert!(seen.iter().all(|d| d == &seen[0]), "the nodes differ: {seen:?}");
    let prepared = psql(port, "SELECT count(*) FROM pg_prepared_xacts");
    assert_eq!(prepared, "0");
    stop(up);
}
