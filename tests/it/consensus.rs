//! Consensus on three nodes: one leader, agreed by all; a leader cut off is replaced by the
//! majority, and rejoins as a follower when the partition heals.

use std::time::Duration;

use pgmix::metrics::RaftStatus;

use crate::cluster::Cluster;
use crate::harness::wait_until;

pub fn raft(c: &Cluster, k: usize) -> RaftStatus {
    let m = &c.nodes[k - 1].handle().metrics;
    m.raft.lock().unwrap().clone().unwrap_or_default()
}

/// The leader all of `nodes` agree on, with its term, if they agree.
pub fn agreed(c: &Cluster, nodes: &[usize]) -> Option<(u64, u64)> {
    let all: Vec<RaftStatus> = nodes.iter().map(|k| raft(c, *k)).collect();
    let leader = all[0].leader?;
    let leaders = all.iter().filter(|r| r.role == "leader").count();
    (leaders == 1 && all.iter().all(|r| r.leader == Some(leader) && r.term == all[0].term))
        .then_some((leader, all[0].term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_replace_it_when_it_is_cut_off() {
    let c = Cluster::start(3, "", "").await;
    wait_until("one leader, agreed by every node", || async { agreed(&c, &[1, 2, 3]).is_some() }).await;
    let (leader, term) = agreed(&c, &[1, 2, 3]).unwrap();
    wait_until("the membership entry is committed and applied everywhere", || async {
        (1..=3).all(|k| raft(&c, k).commit_index >= 1 && raft(&c, k).applied_index >= 1)
    })
    .await;
    let text = c.nodes[leader as usize - 1].handle().metrics.render("x");
    assert!(text.contains("pgmix_raft_is_leader{node=\"x\"} 1"), "{text}");

    // The leader is cut off: the other two elect one of themselves, in a later term.
    c.isolate(leader as usize, true);
    let rest: Vec<usize> = (1..=3).filter(|k| *k as u64 != leader).collect();
    let started = std::time::Instant::now();
    wait_until("the majority elects a new leader", || async {
        agreed(&c, &rest).is_some_and(|(l, t)| l != leader && t > term)
    })
    .await;
    eprintln!("new leader after {:?}", started.elapsed());

    // Healed: the old leader follows the new one.
    c.isolate(leader as usize, false);
    wait_until("all three agree again", || async { agreed(&c, &[1, 2, 3]).is_some_and(|(l, _)| l != leader) }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_postgres_restarted_rejoins_the_group() {
    let mut c = Cluster::start(3, "", "").await;
    wait_until("one leader, agreed by every node", || async { agreed(&c, &[1, 2, 3]).is_some() }).await;
    let (leader, _) = agreed(&c, &[1, 2, 3]).unwrap();
    // A follower's Postgres stops: its Raft log is gone for a while, so its consensus stops.
    let k = if leader == 3 { 2 } else { 3 };
    let port = c.nodes[k - 1].pg.pg.port;
    c.nodes[k - 1].pg.pg.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nodes[k - 1].pg.pg.start(port).unwrap();
    // Once Postgres is back, the node reopens its Raft from what Postgres kept, and follows.
    let before = raft(&c, k).applied_index;
    wait_until("the node follows the leader again", || async {
        let r = raft(&c, k);
        agreed(&c, &[1, 2, 3]).is_some() && r.role == "follower" && r.applied_index >= before
    })
    .await;
    c.isolate(leader as usize, true);
    let rest: Vec<usize> = (1..=3).filter(|n| *n as u64 != leader).collect();
    wait_until("with it, the majority can elect a new leader", || async {
        agreed(&c, &rest).is_some_and(|(l, _)| l != leader)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_barrier_passes_with_a_majority_and_fails_in_time_without_one() {
    let c = Cluster::start(3, "", "").await;
    wait_until("one leader, agreed by every node", || async { agreed(&c, &[1, 2, 3]).is_some() }).await;
    let (leader, _) = agreed(&c, &[1, 2, 3]).unwrap();
    let barrier = |k: usize, secs: u64| {
        let consensus = c.nodes[k - 1].handle().consensus.clone().expect("a cluster node");
        async move { consensus.read_barrier(Duration::from_secs(secs)).await }
    };
    // On the leader and on followers (which ask the leader), once the membership is committed.
    for k in 1..=3 {
        let applied = barrier(k, 10).await.unwrap_or_else(|e| panic!("node {k}: {e}"));
        assert!(applied >= 1, "node {k} applied the membership before reading: {applied}");
        let consensus = c.nodes[k - 1].handle().consensus.clone().unwrap();
        let now = consensus.raft().metrics().borrow().last_applied.map_or(0, |l| l.index);
        assert!(now >= applied, "node {k} has applied {now}, the barrier said {applied}");
    }
    // A follower cut off from the others cannot confirm anything: it fails at the timeout.
    let k = if leader == 3 { 2 } else { 3 };
    c.isolate(k, true);
    wait_until("the cut-off node's links are down", || async {
        c.nodes[k - 1].handle().metrics.peers.get().is_some_and(|p| p.list.iter().all(|p| !p.is_up()))
    })
    .await;
    let err = barrier(k, 2).await.unwrap_err();
    assert!(matches!(err, pgmix::consensus::barrier::BarrierError::Timeout(_)), "{err:?}");
    // The majority goes on.
    assert!(barrier(leader as usize, 10).await.is_ok());
    c.isolate(k, false);
}
