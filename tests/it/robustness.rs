//! Bad input, vanishing peers and shutdown: the client gets the right error, the node keeps
//! serving everyone else, and nothing is left behind on the backend.

use std::io::{Read, Write};
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_rolls_back_and_releases_the_backend() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    direct.batch_execute("CREATE TABLE acct (id int primary key, balance int)").await.unwrap();
    let (client, conn) = node.config().connect(tokio_postgres::NoTls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    client.batch_execute("BEGIN; INSERT INTO acct VALUES (1, 100)").await.unwrap();
    let running = tokio::spawn(async move {
        let _ = client.batch_execute("SELECT pg_sleep(60)").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client process dies: its socket closes with a transaction open and a query running.
    conn_task.abort();
    running.abort();

    let mut left = i64::MAX;
    for _ in 0..100 {
        left = pgmix_backends(&direct).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the backend connection is released");
    let rows: i64 = direct.query_one("SELECT count(*) FROM acct", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "the open transaction was rolled back");
    let prepared: i64 = direct.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_under_a_session_gives_an_error_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    let c = node.client().await;
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    direct.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    // Postgres's own FATAL 57P01 arrives, or the connection is simply closed.
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.code().code(), "57P01");
    } else {
        assert!(err.is_closed() || err.to_string().contains("closed"), "{err}");
    }
    let fresh = node.client().await;
    assert_eq!(fresh.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
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
