//! Bad input, vanishing peers and shutdown: the client gets the right error, the node keeps
//! serving everyone else, and nothing is left behind on the backend.

use std::future::Future;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::{PASSWORD, TestNode, USER, sqlstate, startup_packet, string_message};

/// Reads messages until an ErrorResponse; returns its SQLSTATE.
fn read_error_code(s: &mut std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("a message before the connection closes");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        if head[0] == b'E' {
            let mut fields = body.split(|b| *b == 0);
            return fields
                .find_map(|f| f.strip_prefix(b"C").map(|c| String::from_utf8_lossy(c).into_owned()))
                .expect("error has a code");
        }
    }
}

fn connected_closed(s: &mut std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// A raw, authenticated-by-cleartext connection is not possible with SCRAM, so raw tests log in
/// through a node configured for cleartext passwords.
fn raw_login(port: u16) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup_packet(&[("user", USER), ("database", "postgres")])).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(i32::from_be_bytes([head[5], head[6], head[7], head[8]]), 3, "cleartext password requested");
    s.write_all(&string_message(b'p', PASSWORD)).unwrap();
    // Read up to the first ReadyForQuery.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        assert_ne!(head[0], b'E', "login failed");
        if head[0] == b'Z' {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_get_protocol_errors_and_the_node_keeps_serving() {
    let node =
        TestNode::start_with("allow", "[auth]\nmethod = \"password\"\n[limits]\nmax_message_bytes = 65536\n").await;
    let port = node.port;
    tokio::task::spawn_blocking(move || {
        // A start-up packet whose length is impossible.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
        assert_eq!(read_error_code(&mut s), "08P01");
        assert!(connected_closed(&mut s));

        // Somebody speaking HTTP at us.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_error_code(&mut s), "08P01");

        // An unsupported protocol version.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap();
        assert_eq!(read_error_code(&mut s), "0A000");

        // A start-up packet with no user.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut pkt = vec![0, 0, 0, 0];
        pkt.extend(196608i32.to_be_bytes());
        pkt.extend(b"database\0postgres\0\0");
        let n = pkt.len() as i32;
        pkt[..4].copy_from_slice(&n.to_be_bytes());
        s.write_all(&pkt).unwrap();
        assert_eq!(read_error_code(&mut s), "28000");

        // After login: a message length below 4.
        let mut s = raw_login(port);
        s.write_all(&[b'Q', 0, 0, 0, 1]).unwrap();
        assert_eq!(read_error_code(&mut s), "08P01");
        assert!(connected_closed(&mut s));

        // After login: a query bigger than limits.max_message_bytes.
        let mut s = raw_login(port);
        let mut q = vec![b'Q'];
        q.extend((10_000_000i32).to_be_bytes());
        q.extend(vec![b' '; 70_000]);
        s.write_all(&q).unwrap();
        assert_eq!(read_error_code(&mut s), "54000");

        // A truncated message and then silence: the client disconnects mid-message.
        let mut s = raw_login(port);
        s.write_all(&[b'Q', 0, 0, 1, 0, b'S', b'E']).unwrap();
        drop(s);
    })
    .await
    .unwrap();

    // Everyone else is unaffected.
    let (ok, out, err) =
        crate::harness::psql(&node.conninfo(USER, PASSWORD, "require"), &["-c", "SELECT 'still here'"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "still here");
    assert!(node.handle().metrics.protocol_errors_total.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

async fn pgmix_backends(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Asks `check` every 50 ms until it answers; fails naming `what` after `secs` seconds.
async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, secs: u64, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of the backend running `query`, once it is inside pg_sleep.
async fn sleeping_backend(direct: &tokio_postgres::Client, query: &str) -> Option<i32> {
    direct
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active' AND wait_event = 'PgSleep'",
            &[&query],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn backend_exists(direct: &tokio_postgres::Client, pid: i32) -> bool {
    direct.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_rolls_back_and_releases_the_backend() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    let d = &direct;
    direct.batch_execute("CREATE TABLE acct (id int primary key, balance int)").await.unwrap();
    let (client, conn) = node.config().connect(tokio_postgres::NoTls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    client.batch_execute("BEGIN; INSERT INTO acct VALUES (1, 100)").await.unwrap();
    // Far longer than the test waits below: only a cancel ends it in time.
    const SLEEP: &str = "SELECT pg_sleep(60) -- vanishing client";
    let running = tokio::spawn(async move {
        let _ = client.batch_execute(SLEEP).await;
    });
    let pid = wait_for("the query to be sleeping in Postgres", 20, || sleeping_backend(d, SLEEP)).await;
    // The client process dies: its socket closes with a transaction open and a query running.
    conn_task.abort();
    running.abort();

    // Postgres notices a closed socket only when it next talks to it; without pgmix's cancel the
    // backend would sleep on for a minute.
    wait_for(&format!("backend {pid} to end (pgmix must cancel the query of a vanished client)"), 20, || async move {
        (!backend_exists(d, pid).await).then_some(())
    })
    .await;
    assert_eq!(pgmix_backends(&direct).await, 0, "the backend connection is released");
    let rows: i64 = direct.query_one("SELECT count(*) FROM acct", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "the open transaction was rolled back");
    let prepared: i64 = direct.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_under_a_session_passes_on_postgres_fatal_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    let (c, conn) = node.config().connect(tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    // A simple query: the extended protocol would leave the client's Close of its statement in
    // flight, racing the termination below (that race can cost the client the FATAL).
    let rows = c.simple_query("SELECT pg_backend_pid()").await.unwrap();
    let pid: i32 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("a pid");
    direct.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    // The client is idle: Postgres's FATAL, passed on by pgmix, ends its connection.
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await.expect("the connection ends").unwrap();
    let err = ended.expect_err("the connection ends with an error");
    assert_eq!(sqlstate(&err), "57P01", "Postgres's own FATAL: {err}");
    assert!(c.simple_query("SELECT 1").await.unwrap_err().is_closed());
    let fresh = node.client().await;
    assert_eq!(fresh.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_without_a_word_gets_the_client_08006_from_pgmix() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    // The test Postgres commits asynchronously: without this, the crash restart below would lose
    // the setup the harness just did (the test role).
    direct.batch_execute("CHECKPOINT").await.unwrap();
    let (c, conn) = node.config().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    const SLEEP: &str = "SELECT pg_sleep(60) -- backend to be killed";
    let running = tokio::spawn(async move { c.simple_query(SLEEP).await.map(drop) });
    let pid = wait_for("the query to be sleeping in Postgres", 20, || sleeping_backend(&direct, SLEEP)).await;
    // SIGKILL: the backend's socket closes with no FATAL first, so whatever the client is told
    // comes from pgmix. (Postgres then restarts all its backends, the direct connection too.)
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill runs");
    assert!(killed.success(), "kill -KILL {pid}");
    let answer = tokio::time::timeout(Duration::from_secs(20), running).await.expect("the query is answered").unwrap();
    let err = answer.expect_err("the query's backend died");
    assert_eq!(sqlstate(&err), "08006", "{err}");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("pgmix lost its connection to the local Postgres"), "{msg}");

    // The node serves new sessions once Postgres has recovered.
    let node = &node;
    let fresh = wait_for("a new session after Postgres's crash restart", 60, || async move {
        let c = node.try_client(USER, PASSWORD).await.ok()?;
        c.query_one("SELECT 1", &[]).await.ok().map(|r| r.get::<_, i32>(0))
    })
    .await;
    assert_eq!(fresh, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_postgres_down_refuses_clients_with_57p03_until_it_returns() {
    let mut node = TestNode::start().await;
    node.pg.pg.stop().unwrap();
    let err = node.try_client(USER, PASSWORD).await.err().unwrap();
    assert_eq!(sqlstate(&err), "57P03");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("cannot use its local Postgres"), "{msg}");
    assert!(!node.handle().metrics.backend_up.load(std::sync::atomic::Ordering::Relaxed));

    let port = node.pg.pg.port;
    node.pg.pg.start(port).unwrap();
    let c = node.client().await;
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_transaction_finish_then_closes_sessions() {
    // A drain timeout far beyond the test's own: the node must stop because its sessions reached
    // a quiet point, not because the drain timed out and aborted them.
    let mut node = TestNode::start_with("allow", "[limits]\nshutdown_drain_secs = 120\n").await;
    let direct = node.pg.direct().await;
    direct.batch_execute("CREATE TABLE s (id int)").await.unwrap();
    let busy = node.client().await;
    let idle = node.client().await;
    busy.batch_execute("BEGIN; INSERT INTO s VALUES (1)").await.unwrap();
    let handle = node.node.take().unwrap();
    handle.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are no longer accepted.
    assert!(node.try_client(USER, PASSWORD).await.is_err());
    // The open transaction may still commit.
    busy.batch_execute("INSERT INTO s VALUES (2); COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle.wait()).await.expect("node stops after draining");
    assert!(idle.simple_query("SELECT 1").await.is_err(), "idle session was closed");
    let n: i64 = direct.query_one("SELECT count(*) FROM s", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}
