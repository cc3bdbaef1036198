//! The data path: every part of the frontend/backend protocol passes through pgmix unchanged.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::AsyncMessage;

use crate::harness::{TestNode, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_with_several_statements_returns_every_result() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let msgs = c
        .simple_query("CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1,'a'),(2,'b'); SELECT v FROM t ORDER BY id")
        .await
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["a", "b"]);
    // An error in the middle of a multi-statement query aborts the rest, as in Postgres.
    let err = c.simple_query("SELECT 1; SELECT 1/0; SELECT 2").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get::<_, i64>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_round_trips_many_types_in_binary() {
    let node = TestNode::start().await;
    let c = node.client().await;
    // tokio-postgres uses the binary format for parameters and results.
    let row = c
        .query_one(
            "SELECT $1::int8, $2::text, $3::float8, $4::bool, $5::bytea, $6::int4[], NULL::text, 'ünïcødé'::text",
            &[&i64::MAX, &"hello", &1.5f64, &true, &vec![0u8, 255, 10], &vec![1i32, 2, 3]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::MAX);
    assert_eq!(row.get::<_, String>(1), "hello");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![0u8, 255, 10]);
    assert_eq!(row.get::<_, Vec<i32>>(5), vec![1, 2, 3]);
    assert_eq!(row.get::<_, Option<String>>(6), None);
    assert_eq!(row.get::<_, String>(7), "ünïcødé");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_version_is_the_backends_not_a_proxy_default() {
    let node = TestNode::start().await;
    let direct = node.pg.direct().await;
    let want: String = direct.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    let (ok, out, err) = crate::harness::psql(
        &node.conninfo("pgmix", "pgmix", "disable"),
        &["-c", "SELECT current_setting('server_version')"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    // libpq learned it from ParameterStatus at start-up: psql prints it in its banner variables.
    let (ok, out, _) =
        crate::harness::psql(&node.conninfo("pgmix", "pgmix", "disable"), &["-c", "\\echo :SERVER_VERSION_NAME"]);
    assert!(ok);
    assert_eq!(out.trim(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_outlive_their_transaction_and_pipeline() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE kv (k int primary key, v int)").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let ins = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
    let sel = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
    c.execute(&ins, &[&1i32, &10i32]).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    // Used after the transaction that prepared them: pipelined, many in flight at once.
    let futs: Vec<_> = (2..50i32)
        .map(|k| {
            let c = &c;
            let ins = &ins;
            async move { c.execute(ins, &[&k, &(k * 10)]).await }
        })
        .collect();
    for r in futures_util::future::join_all(futs).await {
        assert_eq!(r.unwrap(), 1);
    }
    for k in [1i32, 25, 49] {
        assert_eq!(c.query_one(&sel, &[&k]).await.unwrap().get::<_, i32>(0), k * 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_pipeline_that_fills_every_buffer_completes() {
    // 20 MB of requests in flight, and replies the client reads as they come (as libpq, psycopg
    // and tokio-postgres do). Postgres stops reading requests while its replies wait to be read,
    // so a session that blocked on sending requests before reading replies would hang here.
    let node = TestNode::start().await;
    let c = node.client().await;
    let stmt = c.prepare("SELECT length(repeat($1, 2))").await.unwrap();
    let big = "x".repeat(1000);
    let futs: Vec<_> = (0..20_000)
        .map(|_| {
            let (c, stmt, big) = (&c, &stmt, &big);
            async move { c.query_one(stmt, &[big]).await }
        })
        .collect();
    let all = tokio::time::timeout(std::time::Duration::from_secs(60), futures_util::future::join_all(futs))
        .await
        .expect("the pipeline deadlocked in pgmix");
    for r in all {
        assert_eq!(r.unwrap().get::<_, i32>(0), 2000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out_stream_through() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE c (id int, name text)").await.unwrap();
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    for chunk in data.as_bytes().chunks(7_001) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20_000);
    let out = c.copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let copied: Vec<u8> = chunks.concat();
    assert_eq!(copied, data.as_bytes());
    // A COPY the backend rejects comes back as its error, and the session goes on.
    let err = c.simple_query("COPY missing FROM STDIN").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_notices_reach_the_client() {
    let node = TestNode::start().await;
    let (listener, mut conn) = node.config().connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    listener.batch_execute("DO $$ BEGIN RAISE NOTICE 'careful: %', 42; END $$").await.unwrap();
    let talker = node.client().await;
    talker.batch_execute("NOTIFY jobs, 'job-7'").await.unwrap();

    let mut got_notice = false;
    let mut got_notification = false;
    while !(got_notice && got_notification) {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("message in time")
            .unwrap();
        match m {
            AsyncMessage::Notice(n) => {
                assert_eq!(n.message(), "careful: 42");
                got_notice = true;
            }
            AsyncMessage::Notification(n) => {
                assert_eq!((n.channel(), n.payload()), ("jobs", "job-7"));
                got_notification = true;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_the_query_on_the_backend() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = c.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "query_canceled");
    canceller.await.unwrap().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    // The session is still usable.
    assert_eq!(c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    assert_eq!(node.handle().metrics.cancel_requests_total.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_created_through_pgmix_can_be_connected_to() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE DATABASE shop").await.unwrap();
    let mut cfg = node.config();
    cfg.dbname("shop");
    let (shop, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(shop.query_one("SELECT current_database()", &[]).await.unwrap().get::<_, String>(0), "shop");
    cfg.dbname("nope");
    let err = cfg.connect(tokio_postgres::NoTls).await.err().expect("unknown database refused");
    assert_eq!(sqlstate(&err), "3D000");
}
