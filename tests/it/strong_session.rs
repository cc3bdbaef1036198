//! A session on the leader runs its strong transactions on its own backend, between its other
//! statements: what pgmix runs there for them (its BEGIN, its commit) must leave nothing behind
//! that the session's next statements see. A session on a follower must see the same.

use crate::cluster::Cluster;
use crate::harness::{PASSWORD, USER};
use crate::raw::{self, Raw, tags};
use crate::strong::{SCHEMA, SETUP, leader};

const PASSWORD_AUTH: &str = "[auth]\nmethod = \"password\"\n";

/// A value of the one row a simple query returns.
async fn value(r: &mut Raw, sql: &str) -> Option<String> {
    r.send(&raw::query(sql)).await;
    let msgs = r.until_ready().await;
    assert_eq!(
        tags(&msgs),
        "TDCZ",
        "{sql}: {}",
        msgs.iter().find(|m| m.0 == b'E').map_or(String::new(), |m| raw::error_text(&m.1))
    );
    msgs.iter().find(|m| m.0 == b'D').and_then(|m| raw::first_value(&m.1))
}

/// A count that must be 0 on every node.
async fn all_zero(c: &Cluster, count: &str, what: &str) {
    let got = c.each(count).await;
    assert!(got.iter().all(|n| n == &["0".to_owned()]), "{what}: {got:?}");
}

async fn expect(r: &mut Raw, what: &str, bytes: &[u8], want: &str) {
    r.send(bytes).await;
    let msgs = r.until_ready().await;
    let error = msgs.iter().find(|m| m.0 == b'E').map_or(String::new(), |m| raw::error_text(&m.1));
    assert_eq!(tags(&msgs), want, "{what}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_unnamed_statement_and_weak_writes_across_strong_transactions() {
    let c = Cluster::start_with(3, SCHEMA, SETUP, PASSWORD_AUTH).await;
    let l = leader(&c).await;
    let follower = if l == 1 { 2 } else { 1 };
    for (n, k) in [l, follower].into_iter().enumerate() {
        let mut r = Raw::login(c.nodes[k - 1].port, USER, PASSWORD, &[]).await;
        let update = "UPDATE accounts SET balance = balance + 1 WHERE id = 3";
        // pg8000 prepares, describes and executes the unnamed statement in three round trips.
        expect(&mut r, "Parse, Sync", &[raw::parse("", update), raw::sync()].concat(), "1Z").await;
        expect(&mut r, "Describe, Sync", &[raw::describe_statement(""), raw::sync()].concat(), "tnZ").await;
        expect(&mut r, "Bind, Execute, Sync", &[raw::bind(""), raw::execute(), raw::sync()].concat(), "2CZ").await;
        // A BEGIN that ends in a comment, which pgmix runs with its own statement after it.
        expect(&mut r, "BEGIN with a comment", &raw::query("BEGIN -- the client's note"), "CZ").await;
        expect(&mut r, "a strong write in it", &raw::query(update), "CZ").await;
        expect(&mut r, "its COMMIT", &raw::query("COMMIT"), "CZ").await;
        // A transaction that begins in its own Query.
        let tx = format!("BEGIN; {update}; COMMIT");
        expect(&mut r, "a whole transaction", &raw::query(&tx), "CCCZ").await;
        // After them, the session's weak writes and temporary tables are its own again.
        let id = 10 * (n + 1);
        let weak = format!(
            "INSERT INTO notes VALUES ({id}, 'a'); CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (1)"
        );
        expect(&mut r, "weak writes after strong ones", &raw::query(&weak), "CCCZ").await;
        expect(&mut r, "a strong write again", &raw::query(update), "CZ").await;
        let weak = format!("INSERT INTO notes VALUES ({}, 'b'); INSERT INTO scratch VALUES (2)", id + 1);
        expect(&mut r, "weak writes after an autocommit one", &raw::query(&weak), "CCZ").await;
        // Temporary tables made, used and dropped inside strong transactions stay in the
        // session: twice, since a copy on the other nodes would outlive the first.
        for _ in 0..2 {
            let tx = format!(
                "BEGIN; {update}; CREATE TEMP TABLE held (id serial PRIMARY KEY, v text); \
                 INSERT INTO held (v) VALUES ('x'); ALTER TABLE held ADD COLUMN w int; DROP TABLE held; COMMIT"
            );
            expect(&mut r, "temporary tables in a strong transaction", &raw::query(&tx), "CCCCCCCZ").await;
        }
        let capture = value(&mut r, "SELECT coalesce(current_setting('pgmix.strong', true), '')").await;
        assert_ne!(capture.as_deref(), Some("on"), "node {k}: capture is off between strong transactions");
        assert_eq!(value(&mut r, "SELECT count(*) FROM scratch").await.as_deref(), Some("2"));
    }
    let all = c
        .converged(
            "strong and weak writes",
            "SELECT (SELECT balance FROM accounts WHERE id = 3) || '/' || (SELECT count(*) FROM notes)",
        )
        .await;
    assert_eq!(all[0], "112/4", "{all:?}");
    all_zero(&c, "SELECT count(*)::text FROM pgmix.unapplied", "every node applied every entry").await;
    all_zero(&c, "SELECT count(*)::text FROM pg_prepared_xacts", "nothing is left prepared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_null_is_json_null_on_every_node_not_sql_null() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let client = c.client(if l == 1 { 2 } else { 1 }).await;
    client
        .batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body jsonb NOT NULL, extra json, note text)")
        .await
        .expect("CREATE TABLE through a follower");
    // JSON null in a NOT NULL column could not be applied elsewhere; in a nullable one it became
    // SQL NULL there.
    client.batch_execute("INSERT INTO docs VALUES (1, 'null', 'null', NULL), (2, '{}', NULL, 'x')").await.unwrap();
    client.execute("UPDATE docs SET extra = 'null', body = $1::text::jsonb WHERE id = 2", &[&"[null]"]).await.unwrap();
    client
        .batch_execute("INSERT INTO docs VALUES (3, '1', NULL, NULL); UPDATE docs SET body = 'null' WHERE id = 3")
        .await
        .unwrap();
    let all = c
        .converged(
            "JSON nulls",
            "SELECT string_agg(id || ':' || body::text || ':' || coalesce(extra::text, 'SQL NULL') || ':' || coalesce(note, 'SQL NULL'), ',' ORDER BY id) FROM docs",
        )
        .await;
    assert_eq!(all[0], "1:null:null:SQL NULL,2:[null]:null:x,3:null:SQL NULL:SQL NULL", "{all:?}");
    all_zero(&c, "SELECT count(*)::text FROM pgmix.unapplied", "every node applied every entry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_a_partly_strong_table_is_refused_and_empties_nothing() {
    let schema = "default = \"strong\"\n[tables.orders]\nconsistency = \"weak\"\nstrong_columns = [\"total\"]\n";
    let c = Cluster::start(3, schema, "CREATE TABLE orders (id int PRIMARY KEY, status text, total bigint);").await;
    let l = leader(&c).await;
    for k in [l, if l == 1 { 2 } else { 1 }] {
        let client = c.client(k).await;
        client.batch_execute(&format!("INSERT INTO orders VALUES ({k}, 'new', 10)")).await.expect("insert");
        // It emptied the leader's table only: neither capture covers it.
        let e = client.batch_execute("TRUNCATE orders").await.expect_err("TRUNCATE is refused");
        assert_eq!(crate::harness::sqlstate(&e), "0A000", "{e}");
    }
    let all = c.converged("rows kept", "SELECT count(*)::text FROM orders").await;
    assert_eq!(all[0], "2", "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_reads_each_strong_write_at_once_from_another_session() {
    // Its leader is the only voter and confirms its reads with nobody (see `consensus::barrier`).
    let c = Cluster::start(1, SCHEMA, SETUP).await;
    let (writer, reader) = (c.client(1).await, c.client(1).await);
    for v in 1..=50i64 {
        writer.execute("UPDATE accounts SET balance = $1 WHERE id = 1", &[&v]).await.expect("strong write");
        let row = reader.query_one("SELECT balance FROM accounts WHERE id = 1", &[]).await.expect("strong read");
        assert_eq!(row.get::<_, i64>(0), v, "a read that began after the write's answer sees it");
    }
}
