//! Third-party drivers' own test suites, through a follower of a 3-node cluster with everything
//! strong: SQLAlchemy's dialect compliance suite (over psycopg 3) and pg8000's suite. Both come
//! from their sdists on the Python registry, which `.ci/run` downloads into `.venv/sdists`. Each
//! must pass as it does against Postgres itself; what pgmix refuses by design (a client's own
//! two-phase commit) is deselected by name, with the reason beside it.

use crate::cluster::Cluster;
use crate::drivers::{STRONG, follower};
use crate::harness::{PASSWORD, USER, python};
use std::path::PathBuf;
use std::time::Duration;

/// An unpacked sdist under `.venv/sdists` (or `$PGMIX_SDISTS`).
fn sdist(name: &str) -> PathBuf {
    let root = std::env::var_os("PGMIX_SDISTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/sdists")));
    let dir = root.join(name);
    assert!(
        dir.join("test").is_dir(),
        "{} is missing: `bash .ci/run` downloads and unpacks the drivers' sdists there",
        dir.display()
    );
    dir
}

/// Runs pytest in `dir` with `args`, at most `limit`, and returns whether it passed and its
/// output's tail.
async fn pytest(dir: &PathBuf, env: &[(&str, String)], args: &[&str], limit: Duration) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(python());
    cmd.current_dir(dir)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rfE",
            "--timeout",
            "120",
            "--timeout-method",
            "signal",
        ])
        .args(args)
        .env("PGSSLMODE", "disable")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("pytest in {} ran past {limit:?}", dir.display()))
        .expect("pytest runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(80).collect();
    (out.status.success(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_dialect_compliance_suite_passes_through_a_follower() {
    let dir = sdist("sqlalchemy");
    let c = Cluster::start(3, STRONG, "").await;
    let f = follower(&c).await;
    let port = c.nodes[f - 1].port;
    c.client(f).await.batch_execute("CREATE DATABASE test").await.expect("CREATE DATABASE through the follower");
    // The schemas the suite expects beside the default one, made through the follower too.
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(USER)
        .password(PASSWORD)
        .dbname("test")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to test through the follower");
    tokio::spawn(conn);
    client.batch_execute("CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2").await.expect("schemas");
    let uri = format!("postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/test");
    let (ok, tail) = pytest(
        &dir,
        &[],
        &["test/dialect/test_suite.py", "--dburi", &uri, "--maxfail", "20"],
        Duration::from_secs(900),
    )
    .await;
    assert!(ok, "SQLAlchemy's compliance suite failed through a follower:\n{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg8000_suite_passes_through_a_follower() {
    let dir = sdist("pg8000");
    // pg8000's tests log in as `postgres` with the password `pw`. That is each Postgres's
    // bootstrap superuser, which pgmix never replicates (it is pgmix's own login there), so
    // it is set on every node beforehand.
    let c = Cluster::start(3, STRONG, "ALTER ROLE postgres PASSWORD 'pw'").await;
    let f = follower(&c).await;
    // Its hstore tests expect the extension, as its own CI sets it up; made through the follower.
    c.client(f).await.batch_execute("CREATE EXTENSION hstore").await.expect("CREATE EXTENSION through the follower");
    let env = [("PGHOST", "127.0.0.1".to_string()), ("PGPORT", c.nodes[f - 1].port.to_string())];
    let mut args: Vec<String> = ["test/native", "test/dbapi", "test/legacy"].map(String::from).to_vec();
    // Their own pg_hba set-ups (md5, password, gss) and timings, not the driver's behaviour.
    for suite in ["native", "dbapi", "legacy"] {
        args.extend(["--ignore".into(), format!("test/{suite}/auth")]);
        args.extend(["--ignore".into(), format!("test/{suite}/test_benchmarks.py")]);
    }
    // A client's own PREPARE TRANSACTION is refused by design (0A000): pgmix runs the strong
    // path's commit itself.
    args.extend(["-k".into(), "not tpc_prepare".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, tail) = pytest(&dir, &env, &args, Duration::from_secs(600)).await;
    assert!(ok, "pg8000's suite failed through a follower:\n{tail}");
}
