//! The `pgmix` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

// glibc malloc was a fifth of classification time (many small AST allocations); mimalloc's
// per-thread free lists are markedly cheaper for that pattern.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pgmix",
    version,
    about = "Mixed-consistency replicated PostgreSQL: one wire-protocol proxy node per local Postgres"
)]
struct Cli {
    /// Worker threads of the async runtime. The default is half the cores (at least one): a node
    /// shares its machine with its local Postgres, which needs the rest.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a complete local cluster: one Postgres and one pgmix node per node, until Ctrl-C.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Node i listens on BASE+i-1.
        #[arg(long = "port", default_value_t = pgmix::cluster::up::DEFAULT_BASE_PORT)]
        base_port: u16,
        /// Where the Postgres data directories, certificates and node configs live [default:
        /// ./.pgmix, or /var/tmp/pgmix when run as root from a directory the postgres user
        /// cannot reach].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Schema file marking tables strong or weak.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Seconds between status lines (0: none).
        #[arg(long, default_value_t = 10)]
        status_every: u64,
    },
    /// Show how a statement is classified (strong or weak) and why. Needs no database.
    Explain {
        /// Schema file; without one every table is strong.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Print one JSON object: class, reads, writes, reason.
        #[arg(long)]
        json: bool,
        /// The SQL (several statements separated by `;` are allowed).
        sql: String,
    },
    /// Show each node's health, sessions and statement classes, from its metrics endpoint.
    Status {
        /// Metrics addresses (host:port). Default: those of `pgmix up` with the default ports.
        #[arg(long = "metrics", value_delimiter = ',')]
        metrics: Vec<std::net::SocketAddr>,
        /// Read the metrics address from a node config instead.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Compare every weak table across the nodes: a checksum per table, then per key range; names
    /// the keys that differ. Reads each node's Postgres as its config's [backend] says.
    Verify {
        /// The nodes' configs. Default: those `pgmix up` wrote in --data-dir.
        #[arg(long = "config")]
        configs: Vec<PathBuf>,
        /// Where `pgmix up` keeps its nodes [default: as `pgmix up`].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The database to compare [default: each config's backend database].
        #[arg(long)]
        database: Option<String>,
    },
    /// Run one node with a config file (see proxy.toml).
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Stop when standard input closes: `pgmix up` starts its nodes this way, so that they
        /// end with it however it ends.
        #[arg(long, hide = true)]
        until_stdin_closes: bool,
    },
    /// Make a cluster CA and a certificate signed by it for each node, for client TLS and peer
    /// links. Existing files are kept: run it again to add nodes under the same CA.
    Certs {
        /// Directory for ca.crt, ca.key and <node>.crt, <node>.key (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node names, comma-separated; each is its certificate's CN and one of its SANs.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Further host names and IP addresses every node certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
}

fn main() {
    // Errors are for people: the cause chain on one line, no backtrace.
    if let Err(e) = run() {
        eprintln!("pgmix: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // openraft reports every failed message to an unreachable peer as an error; pgmix reports
    // peer links, elections and storage failures itself. Named in PGMIX_LOG, it is shown.
    let mut filter = std::env::var("PGMIX_LOG").unwrap_or_else(|_| "pgmix=info,warn".to_owned());
    if !filter.contains("openraft") {
        filter.push_str(",openraft=off");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
            eprintln!("pgmix: PGMIX_LOG `{filter}` is not a log filter ({e}); using pgmix=info,warn");
            tracing_subscriber::EnvFilter::new("pgmix=info,warn,openraft=off")
        }))
        // Colours only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let threads = cli.threads.unwrap_or((cores / 2).max(1)).max(1);
    // One thread: a current-thread runtime drives I/O and tasks on one thread with no cross-thread
    // wake-ups, which is what a proxy on a small machine wants.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder.enable_all().build().context("starting the async runtime")?;
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up { nodes, base_port, data_dir, schema, status_every } => {
                if nodes == 0 {
                    anyhow::bail!("--nodes must be at least 1");
                }
                let data_dir = data_dir.unwrap_or_else(pgmix::cluster::up::default_data_dir);
                let opts = pgmix::cluster::up::UpOptions { nodes, base_port, data_dir, schema, status_every };
                pgmix::cluster::up::run(opts).await.context("pgmix up")?;
            }
            Command::Serve { config, until_stdin_closes } => serve(config, until_stdin_closes).await?,
            Command::Explain { schema, json, sql } => explain(schema, json, &sql)?,
            Command::Status { metrics, config } => status(metrics, config)?,
            Command::Certs { dir, nodes, hosts } => certs(&dir, &nodes, &hosts)?,
            Command::Verify { configs, data_dir, database } => verify(configs, data_dir, database).await?,
        }
        Ok(())
    });
    // A node started by `pgmix up` has a blocking read of its standard input in flight, which
    // would hold a plain drop of the runtime forever.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(config: PathBuf, until_stdin_closes: bool) -> anyhow::Result<()> {
    let cfg = pgmix::config::load(&config)?;
    let node = pgmix::node::start(cfg).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stdin_closed = async {
        if !until_stdin_closes {
            return std::future::pending().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        })
        .await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
        _ = stdin_closed => tracing::warn!("the process that started this node is gone: stopping"),
    }
    node.stop().await;
    Ok(())
}

fn explain(schema: Option<PathBuf>, json: bool, sql: &str) -> anyhow::Result<()> {
    use pgmix::classify;
    let schema = match schema {
        Some(p) => pgmix::schema::Schema::load(&p)?,
        None => pgmix::schema::Schema::default(),
    };
    let all = classify::classify(sql, &schema);
    if json {
        let out = match all.as_slice() {
            [one] => serde_json::to_value(one)?,
            many => serde_json::json!({
                "class": classify::combined(many),
                "reads": many.iter().flat_map(|c| c.reads.iter()).collect::<std::collections::BTreeSet<_>>(),
                "writes": many.iter().flat_map(|c| c.writes.iter()).collect::<std::collections::BTreeSet<_>>(),
                "reason": many.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>().join("; "),
                "statements": many,
            }),
        };
        println!("{out}");
        return Ok(());
    }
    for (i, c) in all.iter().enumerate() {
        if all.len() > 1 {
            println!("statement {}:", i + 1);
        }
        println!("class:  {}", c.class.as_str());
        println!("kind:   {:?}", c.kind);
        println!("reads:  {}", c.reads.iter().cloned().collect::<Vec<_>>().join(", "));
        println!("writes: {}", c.writes.iter().cloned().collect::<Vec<_>>().join(", "));
        println!("reason: {}", c.reason);
        if let Some(tx) = &c.tx {
            println!("transaction: {tx:?}");
        }
    }
    Ok(())
}

fn certs(dir: &std::path::Path, nodes: &[String], hosts: &[String]) -> anyhow::Result<()> {
    let made = pgmix::cluster::certs::ensure_cluster(dir, nodes, hosts).context("pgmix certs")?;
    let mut files = vec![made.ca_cert.clone()];
    if made.ca_key.exists() {
        files.push(made.ca_key.clone());
    }
    files.extend(made.nodes.iter().flat_map(|n| [n.cert.clone(), n.key.clone()]));
    for f in &files {
        let what = if made.written.contains(f) { "wrote" } else { "kept " };
        println!("{what} {}", f.display());
    }
    println!("CA certificate (clients and peers trust it): {}", made.ca_cert.display());
    for n in &made.nodes {
        println!(
            "{}: [tls] cert = {:?}, key = {:?}",
            n.name,
            n.cert.display().to_string(),
            n.key.display().to_string()
        );
    }
    if made.ca_key.exists() {
        println!("Keep {} off the nodes' machines; it is only needed to add nodes.", made.ca_key.display());
    }
    Ok(())
}

async fn verify(mut configs: Vec<PathBuf>, data_dir: Option<PathBuf>, database: Option<String>) -> anyhow::Result<()> {
    if configs.is_empty() {
        let dir = data_dir.unwrap_or_else(pgmix::cluster::up::default_data_dir);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: no `pgmix up` data here; pass --config for each node", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path().join("proxy.toml")))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        configs = found;
    }
    let mut nodes = Vec::new();
    for path in &configs {
        let cfg = pgmix::config::load(path)?;
        let mut backend = cfg.backend.clone();
        if let Some(db) = &database {
            backend.database = db.clone();
        }
        nodes.push((cfg.node_name.clone(), backend.client_config()));
    }
    let names: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
    let reports = pgmix::verify::verify(&nodes).await?;
    let (text, equal) = pgmix::verify::render(&reports, &names);
    print!("{text}");
    anyhow::ensure!(equal, "the nodes differ");
    Ok(())
}

fn status(mut addrs: Vec<std::net::SocketAddr>, config: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = config {
        let cfg = pgmix::config::load(&path)?;
        let addr =
            cfg.metrics_listen.with_context(|| format!("{}: no metrics_listen, so no status", path.display()))?;
        addrs.push(addr);
    }
    if addrs.is_empty() {
        use pgmix::cluster::up::{DEFAULT_BASE_PORT, metrics_port};
        addrs =
            (1..=3).map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port(DEFAULT_BASE_PORT, i)))).collect();
    }
    let mut failed = 0;
    for addr in addrs {
        match pgmix::status::fetch(addr) {
            Ok(st) => println!("{st}"),
            Err(e) => {
                failed += 1;
                println!("{e}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} node(s) did not answer");
    Ok(())
}
