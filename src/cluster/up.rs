//! `pgmix up`: initdb (once) and start one Postgres per node, start each node as its own
//! `pgmix serve` process, print connection strings and live status, restart a node process or a
//! Postgres that dies, and stop everything on Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::certs;
use super::error::{ClusterError, io_err};
use super::pg::{PgBin, PgInstance, PgOptions, free_port};
use super::process::NodeProcess;

/// Progress and status go to stdout; a closed stdout (a pipe whose reader left) must not stop
/// the cluster, so write errors are ignored instead of panicking as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u16,
    pub base_port: u16,
    pub data_dir: PathBuf,
    pub schema: Option<PathBuf>,
    /// Seconds between status lines; 0 turns them off.
    pub status_every: u64,
}

/// A started cluster: node i's Postgres is `pgs[i]`.
pub struct Cluster {
    pub pgs: Vec<PgInstance>,
    pub nodes: Vec<NodeProcess>,
}

/// The default base port of `pgmix up`.
pub const DEFAULT_BASE_PORT: u16 = 6432;

/// The default development login.
pub const DEV_USER: &str = "pgmix";
pub const DEV_PASSWORD: &str = "pgmix";
pub const DEV_DATABASE: &str = "pgmix";

/// The config `pgmix up` writes for one node; the ports are the client and the metrics port.
pub fn node_config_toml(
    name: &str,
    (listen_port, metrics_port): (u16, u16),
    socket_dir: &Path,
    pg_port: u16,
    (cert, key): (&Path, &Path),
    schema: Option<&Path>,
    cluster: &str,
) -> String {
    let schema = schema.map(|s| format!("schema = {:?}\n", s.display().to_string())).unwrap_or_default();
    format!(
        r#"# Written by `pgmix up`; regenerated on every start.
node_name = "{name}"
listen = "127.0.0.1:{listen_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
{schema}
[backend]
host = {socket:?}
port = {pg_port}
user = "postgres"
database = "{DEV_DATABASE}"

[tls]
mode = "allow"
cert = {cert:?}
key = {key:?}

[[users]]
name = "{DEV_USER}"
password = "{DEV_PASSWORD}"
{cluster}"#,
        socket = socket_dir.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    )
}

/// `./.pgmix`; but as root, where the `postgres` user cannot reach the current directory (a
/// checkout under /root, say), `/var/tmp/pgmix`, so that the README's command works as it is.
pub fn default_data_dir() -> PathBuf {
    let here = PathBuf::from("./.pgmix");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if super::pg::check_postgres_can_reach(&cwd).is_ok() {
        return here;
    }
    let elsewhere = PathBuf::from("/var/tmp/pgmix");
    say!(
        "pgmix: the postgres user cannot reach {}; the cluster's data goes to {} instead (--data-dir chooses)",
        cwd.display(),
        elsewhere.display()
    );
    elsewhere
}

/// Starts Postgres servers and nodes; prints progress as it goes.
pub async fn start(opts: &UpOptions) -> Result<Cluster, ClusterError> {
    let bin = PgBin::find()?;
    for i in 1..=opts.nodes {
        for port in [opts.base_port + i - 1, metrics_port(opts.base_port, i), peer_port(opts.base_port, i)] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(ClusterError::PortInUse { port });
            }
        }
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(io_err(&opts.data_dir))?;
    let data_dir = opts.data_dir.canonicalize().map_err(io_err(&opts.data_dir))?;
    super::pg::check_postgres_can_reach(&data_dir)?;
    // The cluster CA and a certificate per node, by the code of `pgmix certs`: clients that
    // verify the server use DATA/certs/ca.crt, and the peer links will authenticate nodes by them.
    let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
    let hosts: Vec<String> = certs::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    let certs = certs::ensure_cluster(&data_dir.join("certs"), &names, &hosts)?;
    let schema = match &opts.schema {
        Some(s) => Some(s.canonicalize().map_err(io_err(s))?),
        None => None,
    };

    let mut cluster = Cluster { pgs: Vec::new(), nodes: Vec::new() };
    match start_each(opts, &bin, &data_dir, &certs, schema.as_deref(), &mut cluster).await {
        Ok(()) => Ok(cluster),
        Err(e) => {
            // Leave nothing running behind a failed start.
            cluster.stop().await;
            Err(e)
        }
    }
}

async fn start_each(
    opts: &UpOptions,
    bin: &PgBin,
    data_dir: &Path,
    certs: &certs::ClusterCerts,
    schema: Option<&Path>,
    cluster: &mut Cluster,
) -> Result<(), ClusterError> {
    for i in 1..=opts.nodes {
        let name = format!("node{i}");
        let dir = data_dir.join(&name);
        let fresh = !dir.join("pgdata/PG_VERSION").exists();
        say!("pgmix: {name}: {} Postgres in {}", if fresh { "initializing" } else { "reusing" }, dir.display());
        let mut pg = PgInstance::init(bin, &dir, &PgOptions::default())?;
        let pg_port = free_port()?;
        pg.start(pg_port)?;
        say!("pgmix: {name}: Postgres running on port {pg_port}");
        ensure_database(&pg, DEV_DATABASE).await.map_err(|detail| ClusterError::Bootstrap {
            node: name.clone(),
            db: DEV_DATABASE.into(),
            detail,
        })?;
        cluster.pgs.push(pg);

        let port = opts.base_port + i - 1;
        let tls = certs.node(&name).ok_or_else(|| ClusterError::Cert(format!("no certificate for {name}")))?;
        let text = node_config_toml(
            &name,
            (port, metrics_port(opts.base_port, i)),
            cluster.pgs[(i - 1) as usize].socket_dir(),
            pg_port,
            (&tls.cert, &tls.key),
            schema,
            &cluster_section(opts.base_port, i, opts.nodes, certs),
        );
        let conf_path = dir.join("proxy.toml");
        std::fs::write(&conf_path, &text).map_err(io_err(&conf_path))?;
        // Checked here, so that a bad config is reported once, by file, key and reason.
        crate::config::load(&conf_path)?;
        let node = NodeProcess::spawn(&name, conf_path, port, metrics_port(opts.base_port, i)).await?;
        say!("pgmix: {name}: node process {} listening on 127.0.0.1:{port}", node.pid().unwrap_or_default());
        cluster.nodes.push(node);
    }
    Ok(())
}

/// The id of the clusters `pgmix up` makes.
pub const DEV_CLUSTER: &str = "pgmix-dev";

/// Where node `i`'s (1-based) peer links listen, for base port `base`.
pub fn peer_port(base: u16, i: u16) -> u16 {
    base.wrapping_add(2000).wrapping_add(i - 1)
}

/// The `[cluster]` section of node `i` of `n`.
fn cluster_section(base: u16, i: u16, n: u16, certs: &certs::ClusterCerts) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let Some(me) = certs.node(&format!("node{i}")) else { return String::new() };
    let mut s = format!(
        "\n[cluster]\nid = \"{DEV_CLUSTER}\"\nnode_id = {i}\nlisten = \"127.0.0.1:{}\"\nca = {}\ncert = {}\nkey = {}\n",
        peer_port(base, i),
        q(&certs.ca_cert),
        q(&me.cert),
        q(&me.key)
    );
    for j in (1..=n).filter(|j| *j != i) {
        s.push_str(&format!(
            "\n[[cluster.peers]]\nid = {j}\nname = \"node{j}\"\naddr = \"127.0.0.1:{}\"\n",
            peer_port(base, j)
        ));
    }
    s
}

/// Where `pgmix up` serves node `i`'s (1-based) metrics, for base port `base`.
pub fn metrics_port(base: u16, i: u16) -> u16 {
    base.wrapping_add(1000).wrapping_add(i - 1)
}

/// The development role (a superuser, so ORMs and test suites can create schemas and
/// extensions) and its database.
async fn ensure_database(pg: &PgInstance, db: &str) -> Result<(), String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(pg.socket_dir()).port(pg.port).user("postgres").dbname("postgres");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let role_exists =
        client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&DEV_USER]).await.map_err(|e| e.to_string())?;
    if role_exists.is_none() {
        client
            .batch_execute(&format!("CREATE ROLE \"{DEV_USER}\" SUPERUSER LOGIN"))
            .await
            .map_err(|e| e.to_string())?;
    }
    // Postgres's default path starts with "$user", which for this role is pgmix's own metadata
    // schema: without this, its tables would be created among pgmix's.
    client
        .batch_execute(&format!("ALTER ROLE \"{DEV_USER}\" SET search_path = public"))
        .await
        .map_err(|e| e.to_string())?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE \"{}\" OWNER \"{DEV_USER}\"", db.replace('"', "\"\"")))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Cluster {
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("postgres://{DEV_USER}:{DEV_PASSWORD}@127.0.0.1:{}/{DEV_DATABASE}", n.port))
            .collect()
    }

    /// One line for all nodes, from their metrics endpoints.
    pub async fn status_line(&self) -> String {
        let mut parts = Vec::new();
        for n in &self.nodes {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], n.metrics_port));
            let st = tokio::task::spawn_blocking(move || crate::status::fetch(addr)).await;
            parts.push(match st {
                Ok(Ok(s)) => format!(
                    "{} [{}] sessions={} connections={} refused={}",
                    n.name,
                    if s.backend_up { "up" } else { "POSTGRES DOWN" },
                    s.sessions,
                    s.connections,
                    s.refused
                ),
                _ => format!("{} [NOT ANSWERING]", n.name),
            });
        }
        parts.join(" | ")
    }

    /// Restarts what died: a node process, or a Postgres (checked with pg_ctl). Says what it did.
    pub async fn supervise(&mut self) {
        for (node, pg) in self.nodes.iter_mut().zip(self.pgs.iter_mut()) {
            if !pg.is_running() {
                say!("pgmix: {}: Postgres is down; restarting it", node.name);
                match pg.start(pg.port) {
                    Ok(()) => say!("pgmix: {}: Postgres restarted on port {}", node.name, pg.port),
                    Err(e) => say!("pgmix: {}: cannot restart Postgres: {e}", node.name),
                }
            }
            if let Some(how) = node.ended() {
                say!("pgmix: {}: node process exited ({how}); restarting it", node.name);
                match node.restart().await {
                    Ok(()) => say!("pgmix: {}: node process {} restarted", node.name, node.pid().unwrap_or_default()),
                    Err(e) => say!("pgmix: {}: cannot restart the node: {e}", node.name),
                }
            }
        }
    }

    /// Stops the nodes (draining sessions) and then their Postgres servers.
    pub async fn stop(mut self) {
        for n in &mut self.nodes {
            n.stop(Duration::from_secs(15)).await;
        }
        for pg in &self.pgs {
            if let Err(e) = pg.stop() {
                say!("pgmix: stopping Postgres in {}: {e}", pg.data_dir.display());
            }
        }
    }
}

/// `pgmix up`: runs until Ctrl-C or SIGTERM.
pub async fn run(opts: UpOptions) -> Result<(), ClusterError> {
    let mut cluster = start(&opts).await?;
    for url in cluster.urls() {
        say!("{url}");
    }
    say!("pgmix: cluster ready ({} nodes; Ctrl-C stops it)", cluster.nodes.len());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ClusterError::Command { what: "installing SIGTERM handler".into(), detail: e.to_string() })?;
    let every = Duration::from_secs(opts.status_every.max(1));
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = watch.tick() => cluster.supervise().await,
            _ = ticker.tick(), if opts.status_every > 0 => say!("pgmix: status: {}", cluster.status_line().await),
        }
    }
    say!("pgmix: stopping");
    cluster.stop().await;
    say!("pgmix: stopped");
    Ok(())
}
