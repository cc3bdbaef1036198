//! A cluster of in-process nodes for replication tests, each in front of its own Postgres, with
//! every peer link through a fault-injecting relay, so a test can partition any node away.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgmix::cluster::certs::{ClusterCerts, ensure_cluster};

use pgmix::cluster::pg::free_port;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{TempDir, TestNode, TestPg, node_toml_with_top, wait_until};

/// A TCP relay to `target` that can be cut: while cut, its connections are closed and new
/// ones are closed at once, as a network partition would leave them.
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Moves on every cut, so connections made before it end.
    epoch: Arc<AtomicU64>,
}

impl Relay {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let port = listener.local_addr().expect("relay addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (c, e) = (c.clone(), e.clone());
                tokio::spawn(async move {
                    let mine = e.load(Ordering::SeqCst);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let (mut a, mut b) = (inbound, outbound);
                    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
                    let watch = async {
                        while !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == mine {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        Self { port, cut, epoch }
    }

    pub fn set_cut(&self, cut: bool) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(cut, Ordering::SeqCst);
    }
}

pub struct Cluster {
    pub nodes: Vec<TestNode>,
    /// relays[i][j]: node i+1's way to node j+1's peer port (used when i < j: the lower id dials).
    relays: Vec<Vec<Option<Relay>>>,
    ports: Vec<u16>,
    certs: ClusterCerts,
    setup: String,
    /// More `[cluster]` settings, as TOML lines.
    extra: String,
    /// Kept for the nodes' lifetime: their certificates and schema file live there.
    dir: TempDir,
}

impl Cluster {
    /// `n` nodes with `schema` as their schema file, after `setup` ran directly on each Postgres.
    pub async fn start(n: usize, schema: &str, setup: &str) -> Self {
        Self::start_with(n, schema, setup, "").await
    }

    /// As `start`, with more `[cluster]` settings (TOML lines).
    pub async fn start_with(n: usize, schema: &str, setup: &str, extra: &str) -> Self {
        if let Ok(filter) = std::env::var("PGMIX_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let dir = TempDir::new("cluster");
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let certs =
            ensure_cluster(&dir.0.join("certs"), &names, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
        let schema_path = dir.0.join("schema.toml");
        std::fs::write(&schema_path, schema).expect("schema file");
        for _ in 0..5 {
            let ports: Vec<u16> = (0..n).map(|_| free_port().expect("free port")).collect();
            let mut relays: Vec<Vec<Option<Relay>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
            for (i, row) in relays.iter_mut().enumerate() {
                for (j, slot) in row.iter_mut().enumerate().skip(i + 1) {
                    *slot = Some(Relay::start(ports[j]).await);
                }
            }
            let mut pgs = Vec::new();
            for _ in 0..n {
                let pg = TestPg::start();
                if !setup.is_empty() {
                    pg.direct().await.batch_execute(setup).await.expect("setup SQL");
                }
                pgs.push(pg);
            }
            let mut nodes = Vec::new();
            let mut taken = false;
            for (i, pg) in pgs.into_iter().enumerate() {
                let text = node_config(&certs, &schema_path, &pg, i, &ports, &relays, extra);
                let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("cluster config");
                match pgmix::node::start(cfg).await {
                    Ok(node) => nodes.push(TestNode::from_parts(node, pg)),
                    Err(pgmix::node::NodeError::Peer(e)) => {
                        eprintln!("retrying: {e}");
                        taken = true;
                        break;
                    }
                    Err(e) => panic!("node {} starts: {e}", i + 1),
                }
            }
            if taken {
                for node in nodes {
                    node.into_pg().await;
                }
                continue;
            }
            let me = Self { nodes, relays, ports, certs, setup: setup.to_owned(), extra: extra.to_owned(), dir };
            me.wait_linked().await;
            return me;
        }
        panic!("no free peer ports after 5 tries");
    }

    /// Node `k` (1-based) stopped and started again in front of a Postgres set up anew (its
    /// data lost), with the same identity and peers.
    pub async fn replace_postgres(&mut self, k: usize) {
        let old = std::mem::replace(&mut self.nodes[k - 1], placeholder().await);
        drop(old.into_pg().await);
        let pg = TestPg::start();
        if !self.setup.is_empty() {
            pg.direct().await.batch_execute(&self.setup).await.expect("setup SQL");
        }
        self.nodes[k - 1] = self.start_node(k, pg).await;
        self.wait_linked().await;
    }

    /// Node `k` (1-based) stopped and started again in front of the same Postgres.
    pub async fn restart(&mut self, k: usize) {
        let pg = self.stop(k).await;
        self.start_again(k, pg).await;
    }

    /// Stops node `k` (1-based), leaving a gap in `nodes` until `start_again`; returns its Postgres.
    pub async fn stop(&mut self, k: usize) -> TestPg {
        self.nodes.remove(k - 1).into_pg().await
    }

    pub async fn start_again(&mut self, k: usize, pg: TestPg) {
        let node = self.start_node(k, pg).await;
        self.nodes.insert(k - 1, node);
    }

    /// Node `k` (1-based) started in front of `pg`, with its identity and peers.
    async fn start_node(&self, k: usize, pg: TestPg) -> TestNode {
        let text = node_config(
            &self.certs,
            &self.dir.0.join("schema.toml"),
            &pg,
            k - 1,
            &self.ports,
            &self.relays,
            &self.extra,
        );
        let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("cluster config");
        let node = pgmix::node::start(cfg).await.expect("the node starts again");
        TestNode::from_parts(node, pg)
    }

    pub async fn wait_linked(&self) {
        wait_until("every peer link is up", || async {
            self.nodes.iter().all(|n| n.handle().metrics.peers.get().is_some_and(|p| p.list.iter().all(|p| p.is_up())))
        })
        .await;
    }

    /// Cuts (or heals) every link of node `k` (1-based).
    pub fn isolate(&self, k: usize, cut: bool) {
        let k = k - 1;
        for i in 0..self.nodes.len() {
            for j in 0..self.nodes.len() {
                if (i == k || j == k)
                    && let Some(r) = &self.relays[i][j]
                {
                    r.set_cut(cut);
                }
            }
        }
    }

    /// Cuts (or heals) the link between nodes `a` and `b` (1-based).
    pub fn cut(&self, a: usize, b: usize, cut: bool) {
        let (i, j) = (a.min(b) - 1, a.max(b) - 1);
        if let Some(r) = &self.relays[i][j] {
            r.set_cut(cut);
        }
    }

    /// A client of node `k` (1-based), through pgmix.
    pub async fn client(&self, k: usize) -> tokio_postgres::Client {
        self.nodes[k - 1].client().await
    }

    /// `query`'s rows on every node, straight from each Postgres, as text.
    pub async fn each(&self, query: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let rows = n.pg.direct().await.query(query, &[]).await.expect("query each node");
            out.push(rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect());
        }
        out
    }

    /// Waits until `query` (one text column) reads the same on every node, and returns that.
    pub async fn converged(&self, what: &str, query: &str) -> Vec<String> {
        let mut last = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.each(query).await;
            if all.windows(2).all(|w| w[0] == w[1]) {
                return all.into_iter().next().unwrap_or_default();
            }
            if std::time::Instant::now() > deadline {
                panic!("{what}: the nodes did not converge:\n{all:#?}\n(before: {last:#?})");
            }
            last = all;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A stand-in while a node is replaced: a node of its own, outside the cluster.
async fn placeholder() -> TestNode {
    TestNode::start().await
}

fn node_config(
    certs: &ClusterCerts,
    schema: &Path,
    pg: &TestPg,
    i: usize,
    ports: &[u16],
    relays: &[Vec<Option<Relay>>],
    extra: &str,
) -> String {
    let id = i + 1;
    let me = certs.node(&format!("node{id}")).expect("node cert");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut section = format!(
        "[cluster]\nid = \"test-cluster\"\nnode_id = {id}\nstrong_timeout_ms = 2000\nstrong_chunk_kib = 256\nlisten = \"127.0.0.1:{}\"\nca = {}\ncert = {}\nkey = {}\n{extra}",
        ports[i],
        q(&certs.ca_cert),
        q(&me.cert),
        q(&me.key),
    );
    for j in 0..ports.len() {
        if j == i {
            continue;
        }
        // The lower id dials: its side of the pair goes through the relay.
        let port = match &relays[i][j] {
            Some(r) => r.port,
            None => ports[j],
        };
        section.push_str(&format!(
            "[[cluster.peers]]\nid = {}\nname = \"node{}\"\naddr = \"127.0.0.1:{port}\"\n",
            j + 1,
            j + 1
        ));
    }
    let top = format!("schema = {:?}", schema.display().to_string());
    node_toml_with_top(pg, 0, "allow", &top, &section)
        .replace("node_name = \"test\"", &format!("node_name = \"node{id}\""))
}
