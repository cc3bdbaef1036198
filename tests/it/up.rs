//! The README's first command: `pgmix up` starts a working cluster and stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::TempDir;

/// A running `pgmix up`: stopped with SIGTERM (and killed if it does not stop) when dropped, so
/// that a failing test leaves no cluster behind.
pub struct Up(pub std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..300 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A base port for a 2-node `pgmix up` whose client, metrics (+1000) and peer (+2000) ports are
/// all free. Chosen below the kernel's ephemeral range, where the other tests' `free_port` never
/// lands, so they cannot take one of them in the meantime.
pub fn base_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = 20_000 + (std::process::id() as u16 % 500) * 10 + n * 3 % 5000;
        // Room for three nodes.
        let all = (0..3).flat_map(|i| [base + i, base + 1000 + i, base + 2000 + i]);
        if all.into_iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

fn run_up(dir: &std::path::Path, port: u16) -> (Up, Vec<String>) {
    let (child, lines, _rest) = run_up_watching(dir, port);
    (child, lines)
}

/// `pgmix up` with 2 nodes: its output up to `cluster ready`, and a channel with the lines after.
fn run_up_watching(dir: &std::path::Path, port: u16) -> (Up, Vec<String>, std::sync::mpsc::Receiver<String>) {
    run_up_with(dir, port, 2, "default = \"strong\"\n[tables.logs]\nconsistency = \"weak\"\n")
}

/// `pgmix up` with `nodes` nodes and `schema` as its schema file.
pub fn run_up_with(
    dir: &std::path::Path,
    port: u16,
    nodes: u16,
    schema_text: &str,
) -> (Up, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let schema = dir.join("schema.toml");
    std::fs::write(&schema, schema_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgmix"))
        .args(["up", "--nodes", &nodes.to_string(), "--port", &port.to_string(), "--schema"])
        .arg(&schema)
        .arg("--data-dir")
        .arg(dir)
        .env("PGMIX_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        let ready = line.contains("pgmix: cluster ready");
        lines.push(line);
        if ready {
            return (Up(child), lines, rx);
        }
    }
    // Do not leave a half-started cluster behind.
    let _ = child.kill();
    let _ = child.wait();
    panic!("pgmix up ended without `cluster ready`: {lines:#?}");
}

pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

pub fn stop(mut up: Up) {
    let child = &mut up.0;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "pgmix up exits cleanly: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("pgmix up did not stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_cluster_prints_urls_and_stops_on_sigterm_then_reuses_its_data() {
    let dir = TempDir::new("up");
    let port = base_port();
    let (child, lines) = run_up(&dir.0, port);
    let urls: Vec<&String> = lines.iter().filter(|l| l.starts_with("postgres://")).collect();
    assert_eq!(urls.len(), 2, "{lines:#?}");
    assert_eq!(urls[0], &format!("postgres://pgmix:pgmix@127.0.0.1:{port}/pgmix"));

    for url in &urls {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to printed URL");
        tokio::spawn(conn);
        client.batch_execute("CREATE TABLE IF NOT EXISTS hello (id int)").await.unwrap();
        let su: bool =
            client.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).await.unwrap().get(0);
        assert!(su, "backend role can create schemas and extensions");
        let prepared: String = client.query_one("SHOW max_prepared_transactions", &[]).await.unwrap().get(0);
        assert_ne!(prepared, "0");
    }
    // The nodes are linked to each other.
    let m1 = pgmix::cluster::up::metrics_port(port, 1);
    crate::harness::wait_until("node1's peer link to node2 is up", || async move {
        metrics(m1).contains("pgmix_peer_up{node=\"node1\",peer=\"node2\"} 1")
    })
    .await;
    // Each node's certificate comes from the cluster CA in DATA/certs: a client can verify it.
    let ca = dir.0.join("certs/ca.crt");
    let (ok, out, err) = crate::harness::psql(
        &format!(
            "host=localhost port={port} user=pgmix password=pgmix dbname=pgmix sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
        &["-c", "SELECT 1"],
    );
    assert!(ok && out.trim() == "1", "verify-full against the cluster CA: {err}");
    // The dev login works in database `pgmix`: the schema file is checked against that database,
    // so a weak table created there without a primary key is reported.
    let (client, conn) = tokio_postgres::connect(urls[0], tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("CREATE TABLE logs (line text)").await.unwrap();
    let metrics_port = pgmix::cluster::up::metrics_port(port, 1);
    crate::harness::wait_until("the missing primary key is reported", || async move {
        metrics(metrics_port).contains("pgmix_schema_errors{node=\"node1\"} 1")
    })
    .await;
    client.batch_execute("ALTER TABLE logs ADD COLUMN id int PRIMARY KEY").await.unwrap();
    crate::harness::wait_until("the fixed table is no longer reported", || async move {
        metrics(metrics_port).contains("pgmix_schema_errors{node=\"node1\"} 0")
    })
    .await;
    drop(client);
    stop(child);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "node port closed after stop");

    // Again: the data directory is reused, and the table made last time is still there. The
    // stopped node processes may still hold their peer and metrics ports for a moment.
    let ports = [port, port + 1, port + 1000, port + 1001, port + 2000, port + 2001];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !ports.iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (child, lines) = run_up(&dir.0, port);
    assert!(lines.iter().any(|l| l.contains("reusing Postgres")), "{lines:#?}");
    let (client, conn) =
        tokio_postgres::connect(&format!("postgres://pgmix:pgmix@127.0.0.1:{port}/pgmix"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client.query("SELECT * FROM hello", &[]).await.expect("table survived the restart");
    drop(client);
    stop(child);
}

#[test]
fn up_as_root_says_exactly_what_to_do_when_postgres_cannot_reach_the_data_dir() {
    if !pgmix::cluster::pg::running_as_root() {
        eprintln!("not root: Postgres runs as this user, so there is nothing to check");
        return;
    }
    let dir = TempDir::new("up-private");
    let private = dir.0.join("home");
    std::fs::create_dir(&private).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgmix"))
        .args(["up", "--nodes", "1", "--port", "1", "--data-dir"])
        .arg(private.join(".pgmix"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot reach") && text.contains("--data-dir /var/tmp/pgmix"), "{text}");

    // Without --data-dir, from such a directory, the default moves where Postgres can reach.
    // (A port held here stops it right after that choice, before anything is created.)
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_pgmix"))
        .args(["up", "--nodes", "1", "--port", &port.to_string()])
        .current_dir(&private)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("data goes to /var/tmp/pgmix instead"), "{text}");
    assert!(text.contains(&format!("port {port} is already in use")), "{text}");
}

/// `pg_ctl stop -m immediate` on `pgdata`, as the postgres user when running as root: a
/// Postgres dying behind pgmix's back.
pub fn pg_stop_immediate(pgdata: &std::path::Path) {
    let bin = pgmix::cluster::pg::PgBin::find().unwrap();
    let mut c = if pgmix::cluster::pg::running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.path("pg_ctl"));
        c
    } else {
        Command::new(bin.path("pg_ctl"))
    };
    assert!(c.arg("-D").arg(pgdata).args(["-m", "immediate", "stop"]).status().unwrap().success());
}

/// Waits for a line of `pgmix up` containing `what`.
pub fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(e) => panic!("pgmix up never printed `{what}`: {e}"),
        }
    }
}

async fn select_one(port: u16) -> Result<i32, tokio_postgres::Error> {
    let url = format!("postgres://pgmix:pgmix@127.0.0.1:{port}/pgmix");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_a_node_process_or_a_postgres_that_dies_and_says_so() {
    let dir = TempDir::new("up-restart");
    let port = base_port();
    let (child, lines, rx) = run_up_watching(&dir.0, port);
    // Each node is a process of its own.
    let pid = lines
        .iter()
        .find_map(|l| l.strip_prefix("pgmix: node1: node process ")?.split(' ').next()?.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("node1's process id is printed: {lines:#?}"));
    assert_ne!(pid, child.0.id(), "node1 runs in a process of its own");
    assert_eq!(select_one(port).await.unwrap(), 1);

    // SIGKILL node1's process: node2 goes on serving, and node1 comes back.
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    wait_for_line(&rx, "node1: node process exited");
    assert_eq!(select_one(port + 1).await.unwrap(), 1, "node2 is unaffected");
    wait_for_line(&rx, "node1: node process");
    crate::harness::wait_until("node1 serves again", || async { select_one(port).await.is_ok() }).await;
    let m2 = pgmix::cluster::up::metrics_port(port, 2);
    crate::harness::wait_until("node2's link to the restarted node1 is up again", || async move {
        metrics(m2).contains("pgmix_peer_up{node=\"node2\",peer=\"node1\"} 1")
    })
    .await;

    // Stop node2's Postgres behind pgmix's back: it is restarted too.
    pg_stop_immediate(&dir.0.join("node2/pgdata"));
    wait_for_line(&rx, "node2: Postgres restarted");
    crate::harness::wait_until("node2 serves again", || async { select_one(port + 1).await.is_ok() }).await;

    // `pgmix up` itself killed outright: its node processes stop by themselves.
    let mut child = child;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    crate::harness::wait_until("the orphaned nodes stop", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
            && tokio::net::TcpStream::connect(("127.0.0.1", port + 1)).await.is_err()
    })
    .await;
    // Its Postgres servers are left for the next `pgmix up` to stop; stop them here.
    let bin = pgmix::cluster::pg::PgBin::find().unwrap();
    for node in ["node1", "node2"] {
        let mut c = if pgmix::cluster::pg::running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.path("pg_ctl"));
            c
        } else {
            Command::new(bin.path("pg_ctl"))
        };
        let _ = c.arg("-D").arg(dir.0.join(node).join("pgdata")).args(["-m", "immediate", "stop"]).status();
    }
}
