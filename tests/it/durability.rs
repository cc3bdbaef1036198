//! Weak writes under faults, with real processes: a three-node `pgmix up`, a node process killed
//! with SIGKILL under write load, then a node's Postgres stopped under load. Every acknowledged
//! write is present on every node or superseded by a write of the same field with a higher
//! version, and `pgmix verify` finds the nodes equal.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{TempDir, wait_until};
use crate::up::{base_port, pg_stop_immediate, run_up_with, stop, wait_for_line};

/// One write a client saw committed: the key, the value and the version pgmix gave it.
#[derive(Debug, Clone)]
struct Acked {
    id: i32,
    value: String,
    version: (i64, i32),
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let url = format!("postgres://pgmix:pgmix@127.0.0.1:{port}/pgmix");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Writes to node `k` until `stop`, reconnecting whenever the node goes away.
async fn writer(port: u16, k: usize, stop: Arc<AtomicBool>) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut client) = connect(port).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = ((i * 7 + k * 13) % 30) as i32 + 1;
            let value = format!("n{k}-{i}");
            let result = async {
                let tx = client.transaction().await?;
                tx.execute(
                    "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                    &[&id, &value],
                )
                .await?;
                let row = tx
                    .query_one(
                        "SELECT (cols->'v'->>0)::bigint, (cols->'v'->>1)::int FROM pgmix.versions \
                         WHERE tbl = '\"public\".\"kv\"' AND key = jsonb_build_object('id', $1::int)",
                        &[&id],
                    )
                    .await?;
                let version: (i64, i32) = (row.get(0), row.get(1));
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>(version)
            }
            .await;
            match result {
                Ok(version) => acked.push(Acked { id, value, version }),
                Err(_) if client.is_closed() => break,
                Err(_) => {}
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_weak_write_is_lost_when_a_node_or_its_postgres_dies_under_load() {
    let dir = TempDir::new("durability");
    let port = base_port();
    let (up, lines, rx) = run_up_with(&dir.0, port, 3, "[tables.kv]\nconsistency = \"weak\"\n");
    let ports: Vec<u16> = (0..3).map(|i| port + i).collect();
    // DDL goes on the log: made through one node, the table appears on each, with capture.
    connect(ports[1]).await.unwrap().batch_execute("CREATE TABLE kv (id int PRIMARY KEY, v text)").await.unwrap();
    for p in &ports {
        let c = connect(*p).await.unwrap();
        wait_until("capture is installed", || async {
            c.query_one("SELECT count(*) FROM pgmix.tables WHERE tbl = '\"public\".\"kv\"'", &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        })
        .await;
    }
    let halt = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        ports.iter().enumerate().map(|(k, p)| tokio::spawn(writer(*p, k + 1, halt.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL node1's process under load; `pgmix up` restarts it.
    let pid = lines
        .iter()
        .find_map(|l| l.strip_prefix("pgmix: node1: node process ")?.split(' ').next()?.parse::<u32>().ok())
        .expect("node1's pid is printed");
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    wait_for_line(&rx, "node1: node process exited");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Node2's Postgres stopped under load; restarted too.
    pg_stop_immediate(&dir.0.join("node2/pgdata"));
    wait_for_line(&rx, "node2: Postgres restarted");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    halt.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "the load ran: {} writes acknowledged", acked.len());

    // Every node ends with the same rows and the same versions.
    let state = "SELECT coalesce(string_agg(v.key::text || v.cols::text || coalesce(k.v, '-'), ',' ORDER BY v.key::text), '') \
        FROM pgmix.versions v LEFT JOIN kv k ON k.id = (v.key->>'id')::int WHERE v.tbl = '\"public\".\"kv\"'";
    wait_until("the nodes converge", || {
        let ports = ports.clone();
        async move {
            let mut all = Vec::new();
            for p in &ports {
                let Ok(c) = connect(*p).await else { return false };
                let Ok(r) = c.query_one(state, &[]).await else { return false };
                all.push(r.get::<_, String>(0));
            }
            all.windows(2).all(|w| w[0] == w[1])
        }
    })
    .await;
    let c = connect(ports[0]).await.unwrap();
    let finals: BTreeMap<i32, ((i64, i32), String)> = c
        .query(
            "SELECT k.id, (v.cols->'v'->>0)::bigint, (v.cols->'v'->>1)::int, k.v FROM kv k \
             JOIN pgmix.versions v ON v.tbl = '\"public\".\"kv\"' AND v.key = jsonb_build_object('id', k.id)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), ((r.get(1), r.get(2)), r.get(3))))
        .collect();
    for a in &acked {
        let Some((version, value)) = finals.get(&a.id) else { panic!("acknowledged write {a:?} lost its row") };
        assert!(*version >= a.version, "acknowledged {a:?} is above the final version {version:?}: lost");
        if *version == a.version {
            assert_eq!(value, &a.value, "{a:?}");
        }
    }
    // `pgmix verify` agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_pgmix")).args(["verify", "--data-dir"]).arg(&dir.0).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("\"public\".\"kv\": equal on 3 nodes (30 rows)"), "{text}");
    stop(up);
}
