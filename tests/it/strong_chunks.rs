//! A large strong transaction goes on the log in chunks: its COPY commits on every node, and a
//! transaction whose leader stopped between its chunks leaves nothing behind, not even the
//! chunks staged on each node.

use crate::cluster::Cluster;
use crate::harness::wait_until;
use crate::strong::{SCHEMA, SETUP, leader};

const DIGEST: &str = "SELECT count(*) || ':' || md5(coalesce(string_agg(id || body, ',' ORDER BY id), '')) FROM big";
const STAGED: &str = "SELECT count(*)::text FROM pgmix.strong_staged";

/// COPYs rows `from..=to` into `big` through `client`, a few hundred bytes each.
async fn copy_rows(client: &tokio_postgres::Client, from: i32, to: i32) -> Result<u64, tokio_postgres::Error> {
    copy_ids(client, "big", from..=to).await
}

/// COPYs a row for each id into `table` (id, body) through `client`.
async fn copy_ids(
    client: &tokio_postgres::Client,
    table: &str,
    ids: impl IntoIterator<Item = i32>,
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::SinkExt;
    let copy = client.copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN")).await?;
    futures_util::pin_mut!(copy);
    let mut batch = String::new();
    for id in ids {
        batch.push_str(&format!("{id}\t{}{id}\n", "x".repeat(200)));
        if batch.len() > 64 * 1024 {
            copy.send(bytes::Bytes::from(std::mem::take(&mut batch))).await?;
        }
    }
    copy.send(bytes::Bytes::from(batch)).await?;
    copy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_strong_copy_commits_in_chunks_and_an_abandoned_one_leaves_nothing() {
    use pgmix::strong::failpoint::AFTER_CHUNK;
    let mut c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let via = if l == 1 { 2 } else { 1 };
    let client = c.client(via).await;
    client.batch_execute("CREATE TABLE big (id int PRIMARY KEY, body text NOT NULL)").await.unwrap();
    // About 6 MB of effects through a follower: the tests log chunks of 256 KiB.
    assert_eq!(copy_rows(&client, 1, 20_000).await.unwrap(), 20_000);
    let all = c.converged("the large COPY", DIGEST).await;
    assert!(all[0].starts_with("20000:"), "{all:?}");
    let chunks = c.each("SELECT count(*)::text FROM pgmix.raft_log WHERE entry LIKE '%\"Chunk\"%'").await;
    for (k, n) in chunks.iter().enumerate() {
        let n: u32 = n[0].parse().unwrap();
        assert!(n >= 10, "node {}: the COPY went on the log in {n} chunks, not in ten or more", k + 1);
    }
    wait_until("no chunk stays staged", || async { c.each(STAGED).await.iter().all(|n| n == &["0"]) }).await;

    // A large COPY that breaks a deferred unique key with its last row: the client's COMMIT gets
    // the error (pgmix checks deferred constraints before it logs anything), and no node keeps
    // a chunk of it.
    client
        .batch_execute(
            "CREATE TABLE late (id int, body text, CONSTRAINT late_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(copy_ids(&client, "late", (1..=20_000).chain([1])).await.unwrap(), 20_001);
    let e = client.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "23505", "{e:?}");
    wait_until("the failed COPY's chunks are dropped on every node", || async {
        c.each(STAGED).await.iter().all(|n| n == &["0"])
    })
    .await;
    let late = c.each("SELECT count(*)::text FROM late").await;
    assert!(late.iter().all(|n| n == &["0"]), "{late:?}");

    // The leader stops right after logging the first chunk of the next one.
    c.nodes[l - 1].handle().failpoints.arm(AFTER_CHUNK);
    let client = c.client(via).await;
    let write = tokio::spawn(async move { copy_rows(&client, 100_001, 120_000).await });
    wait_until("the leader logs a chunk and stops", || async { c.nodes[l - 1].handle().failpoints.hits() > 0 }).await;
    wait_until("the chunk is staged on every node", || async { c.each(STAGED).await.iter().all(|n| n != &["0"]) })
        .await;
    c.restart(l).await;
    let answer = write.await.unwrap();
    let code = answer.as_ref().err().and_then(|e| e.code()).map(|c| c.code().to_owned());
    // The follower cannot tell how far the leader got with the commit: 40003 is honest too.
    assert!(matches!(code.as_deref(), Some("40001" | "40003")), "{answer:?}");

    // The next term's first write to the database drops the abandoned chunks everywhere.
    let l = leader(&c).await;
    c.client(if l == 3 { 1 } else { 3 }).await.execute("INSERT INTO big VALUES (0, 'after')", &[]).await.unwrap();
    wait_until("the abandoned chunks are dropped on every node", || async {
        c.each(STAGED).await.iter().all(|n| n == &["0"])
    })
    .await;
    let all = c.converged("after the abandoned COPY", DIGEST).await;
    assert!(all[0].starts_with("20001:"), "none of the abandoned rows is anywhere: {all:?}");
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0"]), "{prepared:?}");
}
