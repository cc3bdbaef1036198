//! The `pgmix` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pgmix", version, about = "Mixed-consistency replicated PostgreSQL: one wire-protocol proxy node per local Postgres")]
struct Cli {
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
        #[arg(long = "port", default_value_t = 6432)]
        base_port: u16,
        /// Where the Postgres data directories, certificates and node configs live.
        #[arg(long, default_value = "./.pgmix")]
        data_dir: PathBuf,
        /// Schema file marking tables strong or weak.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Seconds between status lines (0: none).
        #[arg(long, default_value_t = 10)]
        status_every: u64,
    },
    /// Run one node with a config file (see proxy.toml).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGMIX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pgmix=info,warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Up { nodes, base_port, data_dir, schema, status_every } => {
                if nodes == 0 {
                    anyhow::bail!("--nodes must be at least 1");
                }
                let opts = pgmix::cluster::up::UpOptions { nodes, base_port, data_dir, schema, status_every };
                pgmix::cluster::up::run(opts).await.context("pgmix up")?;
            }
            Command::Serve { config } => serve(config).await?,
        }
        Ok(())
    })
}

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let cfg = pgmix::config::load(&config)?;
    let node = pgmix::node::start(cfg).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    node.stop().await;
    Ok(())
}
