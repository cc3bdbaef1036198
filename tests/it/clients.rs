//! Real clients through pgmix: psql, pgbench in every query mode, psycopg 3 and SQLAlchemy.

use std::process::Command;

use crate::harness::{PASSWORD, TestNode, USER, psql, python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_script_with_transactions_and_meta_commands() {
    let node = TestNode::start().await;
    let script = r#"
CREATE TABLE notes (id int primary key, body text);
BEGIN;
INSERT INTO notes VALUES (1, 'kept');
COMMIT;
BEGIN;
INSERT INTO notes VALUES (2, 'dropped');
ROLLBACK;
PREPARE q(int) AS SELECT body FROM notes WHERE id = $1;
EXECUTE q(1);
\d notes
SELECT count(*) FROM notes;
"#;
    let path = node.pg.dir.0.join("script.sql");
    std::fs::write(&path, script).unwrap();
    for sslmode in ["disable", "require"] {
        let (ok, out, err) = psql(&node.conninfo(USER, PASSWORD, sslmode), &["-f", path.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(out.contains("kept"), "{out}");
        assert!(out.contains("body"), "\\d output: {out}");
        assert!(out.trim_end().ends_with('1'), "{out}");
        psql(&node.conninfo(USER, PASSWORD, sslmode), &["-c", "DROP TABLE notes"]);
    }
}

fn pgbench(node: &TestNode, args: &[&str]) -> String {
    // Next to initdb when the server binaries are not on PATH (Debian: /usr/lib/postgresql/NN/bin).
    let beside = pgmix::cluster::pg::PgBin::find().map(|b| b.path("pgbench")).ok().filter(|p| p.is_file());
    let out = Command::new(beside.unwrap_or_else(|| "pgbench".into()))
        .args(["-h", "127.0.0.1", "-p", &node.port.to_string(), "-U", USER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_in_simple_extended_and_prepared_modes() {
    let node = TestNode::start().await;
    pgbench(&node, &["-i", "-q", "-s", "2"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&node, &["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "200"]);
        let processed = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(processed.split('/').next(), Some("800"), "{mode}: {out}");
        let failed = out.lines().find_map(|l| l.strip_prefix("number of failed transactions: ")).unwrap_or("0");
        assert!(failed.starts_with('0'), "{mode}: {out}");
    }
    let c = node.client().await;
    let n: i64 = c.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
    assert_eq!(n, 2400, "every tpcb transaction committed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_sqlalchemy_work_through_pgmix() {
    let node = TestNode::start().await;
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py"))
        .arg(node.conninfo(USER, PASSWORD, "disable"))
        .arg(format!("postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable", node.port))
        .output()
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("python clients: ok"), "{text}");
}
