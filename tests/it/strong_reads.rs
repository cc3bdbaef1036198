//! Strong reads inside transactions: every strong read a client sees is covered by a
//! confirmation of leadership taken before it, and by an applier that has caught up with the
//! confirmed index, however the transaction ends (COMMIT, ROLLBACK, COMMIT AND CHAIN) and on
//! whichever node it runs.

use crate::cluster::Cluster;
use crate::consensus::agreed;
use crate::harness::{sqlstate, wait_until};
use crate::strong::{SCHEMA, SETUP, leader};

/// The balance of account `id` read in `BEGIN; SELECT …; <end>` through `client`: Ok(balance)
/// or Err(the SQLSTATE the read, or its end, failed with).
async fn read_in_transaction(client: &tokio_postgres::Client, id: i32, end: &str) -> Result<i64, String> {
    client.batch_execute("BEGIN").await.map_err(|e| sqlstate(&e))?;
    let read = client.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id]).await;
    let ended = client.batch_execute(end).await;
    if end.contains("CHAIN") {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let balance: i64 = read.map_err(|e| sqlstate(&e))?.get(0);
    ended.map_err(|e| sqlstate(&e))?;
    Ok(balance)
}

/// The leader's applier lags: a write is committed (a majority has it) and applied on a
/// follower, but the leader has not yet committed it in its own Postgres. A client that saw the
/// new value through the follower must not then read the old one in a transaction on the
/// leader: it reads the new value, or gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_a_lagging_leader_never_reads_older_than_a_follower_did() {
    use pgmix::strong::failpoint::BEFORE_COMMIT_PREPARED;
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let f = if l == 1 { 2 } else { 1 };
    let on_leader = c.client(l).await;
    let on_follower = c.client(f).await;
    // A transaction on the leader before the lag, so its session is warm.
    assert_eq!(read_in_transaction(&on_leader, 1, "COMMIT").await, Ok(100));
    c.nodes[l - 1].handle().failpoints.arm(BEFORE_COMMIT_PREPARED);
    let writer = c.client(f).await;
    let write =
        tokio::spawn(async move { writer.execute("UPDATE accounts SET balance = 777 WHERE id = 1", &[]).await });
    wait_until("the leader's applier stops before its COMMIT PREPARED", || async {
        c.nodes[l - 1].handle().failpoints.hits() > 0
    })
    .await;
    wait_until("the follower serves the new value", || async {
        on_follower
            .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 777)
    })
    .await;
    for end in ["COMMIT", "ROLLBACK", "COMMIT AND CHAIN"] {
        let got = read_in_transaction(&on_leader, 1, end).await;
        eprintln!("BEGIN; SELECT; {end} on the lagging leader: {got:?}");
        assert!(got != Ok(100), "{end}: the leader served 100 after a follower had served 777");
    }
    write.abort();
}

/// A leader cut off from the others does not know it has been replaced: a transaction that
/// reads through it must fail, not return what the new majority has overwritten, however the
/// client ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_serves_no_read_in_a_transaction_however_it_ends() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let others: Vec<usize> = (1..=3).filter(|k| *k != l).collect();
    let on_old = c.client(l).await;
    assert_eq!(read_in_transaction(&on_old, 2, "COMMIT").await, Ok(100));
    c.isolate(l, true);
    wait_until("the others elect a new leader", || async {
        agreed(&c, &others).is_some_and(|(leader, _)| leader as usize != l)
    })
    .await;
    let on_new = c.client(others[0]).await;
    wait_until("the majority commits a new balance", || async {
        on_new.execute("UPDATE accounts SET balance = 555 WHERE id = 2", &[]).await.is_ok()
    })
    .await;
    for end in ["ROLLBACK", "COMMIT AND CHAIN", "/* the app's */ COMMIT", "COMMIT"] {
        let got = read_in_transaction(&on_old, 2, end).await;
        eprintln!("BEGIN; SELECT; {end} on the cut-off leader: {got:?}");
        assert!(got != Ok(100), "{end}: the cut-off leader served 100 after the majority wrote 555");
        if let Err(code) = &got {
            assert_eq!(code, "40001", "{end}: the read fails as one to retry");
        }
    }
    c.isolate(l, false);
}

/// A REPEATABLE READ or SERIALIZABLE transaction that began on a follower with a weak read took
/// its snapshot then: a strong read later in it would read that snapshot, older than a write
/// acknowledged before the strong read began. It fails as one to retry, and the retry (which
/// pgmix runs on the leader from its start) reads the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_read_never_uses_a_snapshot_a_weak_read_took_before_it() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let f = if l == 1 { 2 } else { 1 };
    let writer = c.client(l).await;
    for (n, begin) in
        ["BEGIN ISOLATION LEVEL REPEATABLE READ", "BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN"].into_iter().enumerate()
    {
        let reader = c.client(f).await;
        if begin == "BEGIN" {
            reader.batch_execute("SET default_transaction_isolation = 'repeatable read'").await.unwrap();
        }
        let id = 3 + n as i32;
        let tx = format!("{begin}; SELECT count(*) FROM notes");
        reader.batch_execute(&tx).await.unwrap();
        let balance = 1000 + n as i64;
        writer.execute("UPDATE accounts SET balance = $1 WHERE id = $2", &[&balance, &id]).await.unwrap();
        let read = reader.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id]).await;
        eprintln!("{begin}: {:?}", read.as_ref().map(|r| r.get::<_, i64>(0)));
        match read {
            Ok(row) => {
                assert_eq!(row.get::<_, i64>(0), balance, "{begin}: the strong read missed an acknowledged write")
            }
            Err(e) => assert_eq!(sqlstate(&e), "40001", "{begin}: {e}"),
        }
        reader.batch_execute("ROLLBACK").await.unwrap();
        reader.batch_execute(&tx).await.unwrap();
        let again: i64 = reader.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(again, balance, "{begin}: the retried transaction reads the write");
        reader.batch_execute("COMMIT").await.unwrap();
    }
}
