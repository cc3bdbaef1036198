//! The strong path on three nodes: strong writes through any node commit on every node, in log
//! order; strong reads see every write committed before them; a node without a majority fails
//! strong statements with 40001 and keeps serving weak ones.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::consensus::agreed;
use crate::harness::wait_until;

pub const SCHEMA: &str = "default = \"strong\"\n[tables.notes]\nconsistency = \"weak\"\n";
pub const SETUP: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);\n\
    INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;\n\
    CREATE TABLE notes (id int PRIMARY KEY, body text);";

pub async fn leader(c: &Cluster) -> usize {
    wait_until("one leader, agreed by every node", || async { agreed(c, &[1, 2, 3]).is_some() }).await;
    agreed(c, &[1, 2, 3]).unwrap().0 as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_writes_through_every_node_commit_on_every_node() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    for k in 1..=3 {
        let client = c.client(k).await;
        // A single statement, and an explicit transaction.
        client.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1", &[]).await.unwrap();
        // A whole transaction in one Query.
        client.batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 2; COMMIT").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        client.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2", &[]).await.unwrap();
        client.execute("INSERT INTO accounts VALUES ($1, 0)", &[&(100 + k as i32)]).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        // A strong read sees it at once, on this node.
        let b: i64 = client.query_one("SELECT balance FROM accounts WHERE id = 2", &[]).await.unwrap().get(0);
        assert_eq!(b, 100 + 2 * k as i64, "node {k} (leader {l}) reads its own strong write");
    }
    // Behind pgmix's back, a strong table cannot be written.
    let e = c.nodes[0].pg.direct().await.execute("UPDATE accounts SET balance = 0", &[]).await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "0A000", "{e}");
    let all =
        c.converged("strong writes", "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts").await;
    assert!(all[0].starts_with("1:97,2:106,3:100"), "{all:?}");
    assert!(all[0].ends_with("101:0,102:0,103:0"), "{all:?}");
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0".to_owned()]), "{prepared:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// `client`, connected again through `cfg` when it is gone; None (after a pause) when it cannot be.
async fn reconnected<'a>(
    cfg: &tokio_postgres::Config,
    client: &'a mut Option<tokio_postgres::Client>,
) -> Option<&'a tokio_postgres::Client> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = match cfg.connect(tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                Some(c)
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        };
    }
    client.as_ref()
}

#[derive(Default)]
struct Tally {
    committed: std::sync::atomic::AtomicU64,
    retried: std::sync::atomic::AtomicU64,
    unknown: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
    wrong: std::sync::Mutex<Vec<String>>,
}

/// Moves money between accounts through node `addr` until `halt`; every outcome is counted.
async fn transfers(cfg: tokio_postgres::Config, seed: u64, halt: Arc<AtomicBool>, tally: Arc<Tally>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut n = seed;
    let mut client = None;
    while !halt.load(Relaxed) {
        let Some(cl) = reconnected(&cfg, &mut client).await else { continue };
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let (from, to, amount) = ((n >> 33) % 10 + 1, (n >> 40) % 10 + 1, (n >> 50) % 7 + 1);
        if from == to {
            continue;
        }
        let sql = format!(
            "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
             UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; COMMIT"
        );
        match cl.batch_execute(&sql).await {
            Ok(()) => {
                tally.committed.fetch_add(1, Relaxed);
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
                match code.as_str() {
                    "40001" | "40P01" => tally.retried.fetch_add(1, Relaxed),
                    _ => tally.unknown.fetch_add(1, Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
                if !code.is_empty() && cl.batch_execute("ROLLBACK").await.is_err() {
                    client = None;
                }
                if code.is_empty() {
                    client = None;
                }
            }
        }
    }
}

/// Reads the total through node `cfg` until `halt`: a strong read never sees it other than 1000.
async fn auditor(cfg: tokio_postgres::Config, halt: Arc<AtomicBool>, tally: Arc<Tally>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut client = None;
    while !halt.load(Relaxed) {
        let Some(cl) = reconnected(&cfg, &mut client).await else { continue };
        match cl.query_one("SELECT sum(balance)::bigint, count(*) FROM accounts", &[]).await {
            Ok(row) => {
                tally.reads.fetch_add(1, Relaxed);
                let (sum, count): (i64, i64) = (row.get(0), row.get(1));
                if sum != 1000 || count != 10 {
                    tally.wrong.lock().unwrap().push(format!("sum {sum} over {count} rows"));
                }
            }
            Err(e) if e.code().is_some() => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => client = None,
        }
    }
}

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_keep_the_total_across_a_leader_restart_and_a_partition() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut c = Cluster::start(3, SCHEMA, SETUP).await;
    let old_leader = leader(&c).await;
    let tally = Arc::new(Tally::default());
    let run = |c: &Cluster, halt: &Arc<AtomicBool>| {
        let mut tasks = Vec::new();
        for k in 1..=3 {
            let cfg = c.nodes[k - 1].config();
            tasks.push(tokio::spawn(transfers(cfg.clone(), k as u64, halt.clone(), tally.clone())));
            tasks.push(tokio::spawn(auditor(cfg, halt.clone(), tally.clone())));
        }
        tasks
    };
    // Phase 1: the leader is stopped and started again under load.
    let halt = Arc::new(AtomicBool::new(false));
    let tasks = run(&c, &halt);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(old_leader).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    halt.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let after_restart = tally.committed.load(Relaxed);
    // Phase 2: a follower is cut off from the others under load, then healed.
    c.wait_linked().await;
    let l = leader(&c).await;
    let cut = if l == 1 { 2 } else { 1 };
    let halt = Arc::new(AtomicBool::new(false));
    let tasks = run(&c, &halt);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.isolate(cut, true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.isolate(cut, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    halt.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "committed {} ({after_restart} before the partition), retried {}, unknown {}, reads {}",
        tally.committed.load(Relaxed),
        tally.retried.load(Relaxed),
        tally.unknown.load(Relaxed),
        tally.reads.load(Relaxed)
    );
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "reads saw a wrong total: {wrong:?}");
    assert!(after_restart > 0 && tally.committed.load(Relaxed) > after_restart, "transfers committed in both phases");
    assert!(tally.reads.load(Relaxed) > 0);
    // The nodes end identical, with nothing prepared left behind.
    let q = "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts";
    let all = c.converged("the accounts", q).await;
    let total: i64 = all[0].split(',').map(|p| p.split(':').nth(1).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 1000, "{all:?}");
    wait_until("no prepared transaction is left on any node", || async {
        c.each("SELECT count(*)::text FROM pg_prepared_xacts").await.iter().all(|p| p == &["0".to_owned()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_fails_strong_statements_and_serves_weak_ones() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let cut = if l == 3 { 2 } else { 3 };
    let client = c.client(cut).await;
    c.isolate(cut, true);
    wait_until("the cut-off node's links are down", || async {
        c.nodes[cut - 1].handle().metrics.peers.get().is_some_and(|p| p.list.iter().all(|p| !p.is_up()))
    })
    .await;
    for sql in [
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
        "SELECT balance FROM accounts WHERE id = 1",
        "CREATE TABLE made_in_a_minority (id int PRIMARY KEY)",
    ] {
        let started = std::time::Instant::now();
        let e = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(crate::harness::sqlstate(&e), "40001", "{sql}: {e}");
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(message.contains("safe to retry"), "{message}");
        let took = started.elapsed();
        eprintln!("{sql}: 40001 after {took:?}");
        assert!(took < Duration::from_secs(10), "{sql} failed only after {took:?}");
    }
    // Weak writes and reads go on.
    client.execute("INSERT INTO notes VALUES (1, 'written in the minority')", &[]).await.unwrap();
    let n: i64 = client.query_one("SELECT count(*) FROM notes", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // The majority was unaffected, and nothing of the minority's strong attempts happened.
    c.isolate(cut, false);
    let b = c.converged("the balance", "SELECT balance::text FROM accounts WHERE id = 1").await;
    assert_eq!(b, ["100"]);
    c.converged("the weak note", "SELECT count(*)::text FROM notes").await;
    let made = c.each("SELECT count(*)::text FROM pg_class WHERE relname = 'made_in_a_minority'").await;
    assert!(made.iter().all(|m| m == &["0".to_owned()]), "{made:?}");
}

/// Where each node's clients connect now (a restarted node listens on a new port).
type Book = Arc<std::sync::Mutex<Vec<tokio_postgres::Config>>>;

fn book(c: &Cluster) -> Book {
    Arc::new(std::sync::Mutex::new(c.nodes.iter().map(|n| n.config()).collect()))
}

async fn connect_to(book: &Book, k: usize) -> Option<tokio_postgres::Client> {
    let cfg = book.lock().unwrap()[k - 1].clone();
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(2), cfg.connect(tokio_postgres::NoTls)).await.ok()?.ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Reads and writes registers through node `k` until `halt`, recording each operation.
async fn register_client(
    book: Book,
    k: usize,
    seed: u64,
    clock: std::time::Instant,
    halt: Arc<AtomicBool>,
) -> Vec<crate::linearizable::Op> {
    use crate::linearizable::{Kind, Op};
    use std::sync::atomic::Ordering::Relaxed;
    let now = || clock.elapsed().as_micros() as u64;
    let mut history = Vec::new();
    let mut n = seed;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut written = 0i64;
    while !halt.load(Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect_to(&book, k).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some(cl) = &client else { continue };
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let key = (n >> 33) % 3;
        let invoked = now();
        if (n >> 40).is_multiple_of(2) {
            written += 1;
            let v = (seed as i64) * 1_000_000 + written;
            let r = cl
                .execute(
                    "INSERT INTO regs VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    &[&(key as i32), &v],
                )
                .await;
            let returned = match &r {
                Ok(_) => Some(now()),
                // Nothing was committed: not an operation at all.
                Err(e) if e.code().is_some_and(|c| c.code() == "40001") => continue,
                Err(e) => {
                    if e.code().is_none() {
                        client = None;
                    }
                    None
                }
            };
            history.push(Op { key: key.to_string(), kind: Kind::Write(v), invoked, returned });
        } else {
            match cl.query_opt("SELECT v FROM regs WHERE k = $1", &[&(key as i32)]).await {
                Ok(row) => {
                    let value = row.map(|r| r.get::<_, i64>(0));
                    history.push(Op { key: key.to_string(), kind: Kind::Read(value), invoked, returned: Some(now()) });
                }
                Err(e) => {
                    if e.code().is_none() {
                        client = None;
                    }
                }
            }
        }
        if !matches!(history.last().map(|o| o.returned), Some(Some(_))) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_registers_are_linearizable_across_a_leader_restart() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut c = Cluster::start(3, SCHEMA, "CREATE TABLE regs (k int PRIMARY KEY, v bigint NOT NULL);").await;
    let l = leader(&c).await;
    let addresses = book(&c);
    let clock = std::time::Instant::now();
    let halt = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 1..=3 {
        for j in 0..2 {
            tasks.push(tokio::spawn(register_client(addresses.clone(), k, (k * 10 + j) as u64, clock, halt.clone())));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("restarting the leader, node {l}");
    c.restart(l).await;
    eprintln!("restarted");
    addresses.lock().unwrap()[l - 1] = c.nodes[l - 1].config();
    tokio::time::sleep(Duration::from_secs(4)).await;
    halt.store(true, Relaxed);
    let mut history = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(h) => history.extend(h.unwrap()),
            Err(_) => {
                for (k, n) in c.nodes.iter().enumerate() {
                    let d = n.pg.direct().await;
                    for r in d.query("SELECT pid::text, coalesce(wait_event_type,'') || ':' || coalesce(wait_event,''), state, left(query, 100) FROM pg_stat_activity WHERE backend_type = 'client backend'", &[]).await.unwrap() {
                        eprintln!("node {}: {} {} {:?} {}", k + 1, r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, Option<String>>(2), r.get::<_, String>(3));
                    }
                    for r in d.query("SELECT gid FROM pg_prepared_xacts", &[]).await.unwrap() {
                        eprintln!("node {}: prepared {}", k + 1, r.get::<_, String>(0));
                    }
                    eprintln!("node {}: raft {:?}", k + 1, crate::consensus::raft(&c, k + 1));
                }
                panic!("a client is stuck");
            }
        }
    }
    let known = history.iter().filter(|o| o.returned.is_some()).count();
    eprintln!("{} operations, {known} with a known outcome", history.len());
    assert!(known > 50, "too few operations completed: {known}");
    crate::linearizable::check(&history).unwrap();
}

/// The leader stopped at each step of the strong commit, as if killed there: the transaction
/// is then on every node or on none, the client was not told it committed unless it did, and
/// nothing stays prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_at_each_step_of_the_commit_leaves_no_half_commit() {
    use pgmix::strong::failpoint::{AFTER_PREPARE, BEFORE_ANSWER, BEFORE_COMMIT_PREPARED, BEFORE_HELD_COMMIT};
    let mut c = Cluster::start(3, SCHEMA, SETUP).await;
    for (step, (point, committed)) in
        [(AFTER_PREPARE, false), (BEFORE_COMMIT_PREPARED, true), (BEFORE_HELD_COMMIT, true), (BEFORE_ANSWER, true)]
            .into_iter()
            .enumerate()
    {
        c.wait_linked().await;
        let l = leader(&c).await;
        let via = if l == 1 { 2 } else { 1 };
        let id = 1000 + step as i32;
        c.nodes[l - 1].handle().failpoints.arm(point);
        let client = c.client(via).await;
        let write = tokio::spawn(async move { client.execute("INSERT INTO accounts VALUES ($1, 7)", &[&id]).await });
        wait_until("the leader reaches the failpoint", || async { c.nodes[l - 1].handle().failpoints.hits() > 0 })
            .await;
        c.restart(l).await;
        let answer = write.await.unwrap();
        let code = answer.as_ref().err().and_then(|e| e.code()).map(|c| c.code().to_owned());
        eprintln!("{point}: the client got {code:?}");
        assert!(answer.is_err(), "{point}: the client was told it committed before the commit was done");
        assert!(
            matches!(code.as_deref(), Some("40001" | "40003")),
            "{point}: the client gets 40001 or 40003, not {answer:?}"
        );
        let q = format!("SELECT count(*)::text FROM accounts WHERE id = {id}");
        let want = if committed { "1" } else { "0" };
        wait_until("every node agrees on the outcome", || async {
            c.each(&q).await.iter().all(|r| r == &[want.to_owned()])
        })
        .await;
        wait_until("no prepared transaction is left on any node", || async {
            c.each("SELECT count(*)::text FROM pg_prepared_xacts").await.iter().all(|p| p == &["0".to_owned()])
        })
        .await;
    }
    // The cluster goes on.
    let l = leader(&c).await;
    c.client(if l == 3 { 1 } else { 3 })
        .await
        .execute("UPDATE accounts SET balance = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    c.converged("a write after all that", "SELECT balance::text FROM accounts WHERE id = 1").await;
}

/// DDL through a follower reaches every node in log order; the SQLAlchemy ORM works through a
/// follower (its schema made and dropped there, its transactions run on the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_the_sqlalchemy_orm_through_a_follower_reach_every_node() {
    use crate::harness::{PASSWORD, USER, python};
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let f = if l == 1 { 2 } else { 1 };
    let client = c.client(f).await;
    for sql in [
        "CREATE TABLE ledger (id int PRIMARY KEY, amount bigint)",
        "ALTER TABLE ledger ADD COLUMN memo text",
        "INSERT INTO ledger VALUES (1, 10, 'after the new column')",
        "CREATE INDEX ledger_memo ON ledger (memo)",
        "ALTER TABLE ledger RENAME COLUMN amount TO cents",
        "UPDATE ledger SET cents = cents * 100",
    ] {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let columns = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute \
                   WHERE attrelid = to_regclass('ledger') AND attnum > 0 AND NOT attisdropped";
    assert_eq!(c.converged("the ledger's columns", columns).await, ["id,cents,memo"]);
    let rows = c.converged("the ledger", "SELECT string_agg(id || ':' || cents || ':' || memo, ',') FROM ledger").await;
    assert_eq!(rows, ["1:1000:after the new column"]);
    let indexes = c.each("SELECT count(*)::text FROM pg_indexes WHERE indexname = 'ledger_memo'").await;
    assert!(indexes.iter().all(|i| i == &["1".to_owned()]), "{indexes:?}");
    // Statements that cannot run in a transaction block go on the log on their own.
    for sql in ["CREATE INDEX CONCURRENTLY ledger_cents ON ledger (cents)", "CREATE DATABASE shop"] {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let q = "SELECT (SELECT count(*) FROM pg_indexes WHERE indexname = 'ledger_cents') || ' ' || \
             (SELECT count(*) FROM pg_database WHERE datname = 'shop')";
    assert_eq!(c.converged("the index and the database", q).await, ["1 1"]);
    let e = client.batch_execute("CREATE DATABASE shop").await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "42P04", "the leader's own error comes back: {e:?}");
    client.batch_execute("DROP DATABASE shop").await.unwrap();
    assert_eq!(c.converged("the database dropped", q).await, ["1 0"]);

    let node = &c.nodes[f - 1];
    let out = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py"))
        .arg(node.conninfo(USER, PASSWORD, "disable"))
        .arg(format!("postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable", node.port))
        .arg("orm")
        .output()
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("python clients: ok"), "{text}");
    // Its tables were dropped at the end, on every node.
    let left = c.each("SELECT count(*)::text FROM pg_class WHERE relname IN ('orm_author', 'orm_book')").await;
    assert!(left.iter().all(|n| n == &["0".to_owned()]), "{left:?}");
}

/// A follower that was down catches up from the log when it comes back, and its first strong
/// read already sees every write committed while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_was_down_catches_up_and_then_reads_linearizably() {
    let mut c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let down = if l == 3 { 2 } else { 3 };
    let pg = c.stop(down).await;
    // While it is away: writes through the other follower or the leader, one of them DDL.
    let writer = c.client(if down == 1 { 2 } else { 1 }).await;
    for i in 0..50 {
        writer.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", &[&(i % 10 + 1)]).await.unwrap();
    }
    writer
        .batch_execute("CREATE TABLE made_while_away (id int PRIMARY KEY); INSERT INTO made_while_away VALUES (7)")
        .await
        .unwrap();
    c.start_again(down, pg).await;
    c.wait_linked().await;
    let reader = c.client(down).await;
    // Until the returning node knows a leader its strong reads fail with 40001 (retryable);
    // the first one that succeeds must already see everything.
    let total: i64 =
        crate::harness::query_one_retrying(&reader, "SELECT sum(balance)::bigint FROM accounts").await.get(0);
    assert_eq!(total, 1050, "the first strong read on the returning node sees every write made while it was away");
    let id: i32 = reader.query_one("SELECT id FROM made_while_away", &[]).await.unwrap().get(0);
    assert_eq!(id, 7);
}

/// Sequence values come from the effects: after the leader changes, the new leader goes on from
/// where the old one was and never hands out a value again. A client that disconnects in the
/// middle of a strong transaction leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_never_reissues_a_sequence_value_and_a_vanished_client_leaves_nothing() {
    let setup = "CREATE TABLE orders (id serial PRIMARY KEY, what text);";
    let c = Cluster::start(3, SCHEMA, setup).await;
    let l = leader(&c).await;
    let via = if l == 1 { 2 } else { 1 };
    for i in 0..5 {
        c.client(via).await.execute("INSERT INTO orders (what) VALUES ($1)", &[&format!("before {i}")]).await.unwrap();
    }
    // The leader is cut off: one of the others leads, with the sequence the effects gave it.
    c.isolate(l, true);
    let rest: Vec<usize> = (1..=3).filter(|k| *k != l).collect();
    wait_until("a new leader", || async { agreed(&c, &rest).is_some_and(|(n, _)| n as usize != l) }).await;
    let l2 = agreed(&c, &rest).unwrap().0 as usize;
    for i in 0..5 {
        let client = c.client(l2).await;
        client.execute("INSERT INTO orders (what) VALUES ($1)", &[&format!("after {i}")]).await.unwrap();
    }
    c.isolate(l, false);
    let ids = c.converged("the orders", "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders").await;
    assert_eq!(ids, ["1,2,3,4,5,6,7,8,9,10"], "leader {l} then {l2}");

    // A client that goes away mid-transaction: its row is not written, nothing stays prepared,
    // and the row it locked is free again.
    let client = c.client(via).await;
    client.batch_execute("BEGIN; UPDATE orders SET what = 'abandoned' WHERE id = 1").await.unwrap();
    drop(client);
    let other = c.client(via).await;
    tokio::time::timeout(Duration::from_secs(70), other.execute("UPDATE orders SET what = 'kept' WHERE id = 1", &[]))
        .await
        .expect("the abandoned transaction's lock is released")
        .unwrap();
    let what = c.converged("order 1", "SELECT what FROM orders WHERE id = 1").await;
    assert_eq!(what, ["kept"]);
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0".to_owned()]), "{prepared:?}");
}

/// A strong transaction is held open until its entry commits (it may hold temporary objects,
/// which PREPARE TRANSACTION refuses); a SERIALIZABLE one is prepared first. Both commit on
/// every node, and a deferred constraint that fails is checked before anything is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_serializable_and_temporary_object_transactions_commit_on_every_node() {
    let c = Cluster::start(3, SCHEMA, SETUP).await;
    let l = leader(&c).await;
    let f = if l == 1 { 2 } else { 1 };
    let client = c.client(f).await;
    client
        .batch_execute(
            "BEGIN; CREATE TEMP TABLE scratch (id int); INSERT INTO scratch VALUES (1); \
             CREATE TABLE made_with_temp (id int PRIMARY KEY); \
             INSERT INTO accounts SELECT 200 + id, 0 FROM scratch; COMMIT",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL SERIALIZABLE; UPDATE accounts SET balance = balance + 7 WHERE id = 3; COMMIT",
        )
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE d (id int, CONSTRAINT d_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
        .await
        .unwrap();
    let e = client.batch_execute("BEGIN; INSERT INTO d VALUES (1), (1); COMMIT").await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "23505", "{e:?}");
    wait_until("d is on every node", || async {
        c.each("SELECT (to_regclass('d') IS NOT NULL)::text").await.iter().all(|r| r == &["true"])
    })
    .await;
    let state = "SELECT (SELECT balance FROM accounts WHERE id = 201) || ' ' || (SELECT balance FROM accounts WHERE id = 3) \
                 || ' ' || (to_regclass('made_with_temp') IS NOT NULL) || ' ' || (SELECT count(*) FROM d)";
    assert_eq!(c.converged("the transactions", state).await, ["0 107 true 0"]);
    let prepared = c.each("SELECT count(*)::text FROM pg_prepared_xacts").await;
    assert!(prepared.iter().all(|p| p == &["0"]), "{prepared:?}");
}
