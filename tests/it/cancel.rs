//! Cancel keys and cancel delivery: the client holds its backend's real pid, and its cancel
//! socket closes only after Postgres has finished with the request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::harness::{PASSWORD, TempDir, TestNode, TestPg, USER, node_toml};
use crate::raw::{self, Raw, first_value};

const PASSWORD_AUTH: &str = "[auth]\nmethod = \"password\"\n";

/// Waits until backend `pid` is running a statement.
async fn wait_running(direct: &tokio_postgres::Client, pid: i32) {
    crate::harness::wait_until("the query runs", || async {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", &[&pid])
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
}

async fn backend_pid_of(raw: &mut Raw) -> i32 {
    raw.send(&raw::query("SELECT pg_backend_pid()")).await;
    let msgs = raw.until_ready().await;
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    first_value(&row.1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hold_the_real_backend_pid_and_can_terminate_it() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut a = Raw::login(node.port, USER, PASSWORD, &[]).await;
    let real = backend_pid_of(&mut a).await;
    assert_eq!(a.pid, real, "BackendKeyData carries the backend's pid");

    // LISTEN/NOTIFY: the notification's pid is the one the client holds.
    a.send(&raw::query("LISTEN ch; NOTIFY ch, 'hi'")).await;
    let msgs = a.until_ready().await;
    let (_, n) = msgs.iter().find(|(t, _)| *t == b'A').expect("a notification");
    assert_eq!(i32::from_be_bytes(n[0..4].try_into().unwrap()), a.pid);

    // Another session terminates it by that pid, as it would on Postgres itself.
    let b = node.client().await;
    let row = b.query_one("SELECT pg_terminate_backend($1)", &[&a.pid]).await.unwrap();
    assert!(row.get::<_, bool>(0), "pg_terminate_backend found the backend");
    let (tag, body) = a.read().await;
    assert_eq!(tag, b'E');
    assert_eq!(raw::error_field(&body, b'C').as_deref(), Some("57P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_the_wrong_secret_cancels_nothing() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut a = Raw::login(node.port, USER, PASSWORD, &[]).await;
    let direct = node.pg.direct().await;
    // The same running query gets a wrong key, then the right one: only the right one cancels.
    a.send(&raw::query("SELECT pg_sleep(30)")).await;
    wait_running(&direct, a.pid).await;
    for secret in [a.secret.wrapping_add(1), a.secret] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
        c.write_all(&raw::cancel_request(a.pid, secret)).await.unwrap();
        let _ = c.read(&mut [0u8; 1]).await;
        if secret != a.secret {
            // Delivered (the socket closed); give a wrongly accepted cancel time to land.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let still: i64 = direct
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", &[&a.pid])
                .await
                .unwrap()
                .get(0);
            assert_eq!(still, 1, "a wrong secret cancelled the query");
        }
    }
    let msgs = a.until_ready().await;
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("the right secret cancels");
    assert_eq!(raw::error_field(&err.1, b'C').as_deref(), Some("57014"));
}

/// A Unix-socket relay in front of Postgres. On a cancel connection it tells the test when
/// Postgres has closed its end, and holds pgmix's end open until the test releases it.
struct CancelRelay {
    dir: TempDir,
    upstream_closed: Arc<Notify>,
    release: Arc<Notify>,
}

impl CancelRelay {
    fn start(pg: &TestPg) -> Self {
        let dir = TempDir::new("relay");
        let name = format!(".s.PGSQL.{}", pg.pg.port);
        let listener = UnixListener::bind(dir.0.join(&name)).expect("relay socket");
        let upstream: PathBuf = pg.pg.socket_dir().join(&name);
        let upstream_closed = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (closed, rel) = (upstream_closed.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                tokio::spawn(relay_one(down, upstream.clone(), closed.clone(), rel.clone()));
            }
        });
        Self { dir, upstream_closed, release }
    }

    fn dir(&self) -> &Path {
        &self.dir.0
    }
}

async fn relay_one(mut down: UnixStream, upstream: PathBuf, closed: Arc<Notify>, release: Arc<Notify>) {
    let Ok(mut up) = UnixStream::connect(&upstream).await else { return };
    let mut head = [0u8; 8];
    if down.read_exact(&mut head).await.is_err() {
        return;
    }
    let _ = up.write_all(&head).await;
    if head == [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e] {
        // A CancelRequest: pass the key, wait for Postgres to close, then for the test.
        let mut key = [0u8; 8];
        let _ = down.read_exact(&mut key).await;
        let _ = up.write_all(&key).await;
        let _ = up.read(&mut [0u8; 16]).await;
        closed.notify_one();
        release.notified().await;
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_socket_closes_only_after_postgres_is_done_with_the_request() {
    let pg = TestPg::start();
    let relay = CancelRelay::start(&pg);
    let text = node_toml(&pg, 0, "allow", PASSWORD_AUTH).replace(
        &format!("{:?}", pg.pg.socket_dir().display().to_string()),
        &format!("{:?}", relay.dir().display().to_string()),
    );
    let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("config");
    let node = TestNode::from_parts(pgmix::node::start(cfg).await.expect("node starts"), pg);

    let mut a = Raw::login(node.port, USER, PASSWORD, &[]).await;
    a.send(&raw::query("SELECT pg_sleep(60)")).await;
    let direct = node.pg.direct().await;
    wait_running(&direct, a.pid).await;

    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    c.write_all(&raw::cancel_request(a.pid, a.secret)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), relay.upstream_closed.notified())
        .await
        .expect("Postgres got the cancel");
    // Postgres is done, but pgmix's own cancel connection is still held open by the relay:
    // the client's socket must still be open too.
    let early = tokio::time::timeout(Duration::from_millis(500), c.read(&mut [0u8; 1])).await;
    assert!(early.is_err(), "the client's cancel socket closed before the backend's did: {early:?}");
    relay.release.notify_one();
    let closed = tokio::time::timeout(Duration::from_secs(20), c.read(&mut [0u8; 1])).await;
    assert!(matches!(closed, Ok(Ok(0))), "the cancel socket closes once Postgres is done: {closed:?}");

    let msgs = a.until_ready().await;
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("the query was cancelled");
    assert_eq!(raw::error_field(&err.1, b'C').as_deref(), Some("57014"));
}
