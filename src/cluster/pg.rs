//! Finding the Postgres server binaries and running a local Postgres: initdb once, start on a
//! port, stop. Postgres refuses to run as root, so when pgmix runs as root the server commands run
//! as the `postgres` user and the data directory is handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::error::{ClusterError, io_err};

/// Where `initdb`, `pg_ctl` and `postgres` live.
#[derive(Debug, Clone)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// PATH first, then the newest `/usr/lib/postgresql/<version>/bin`.
    pub fn find() -> Result<Self, ClusterError> {
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file()) {
                    return Ok(Self { dir });
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| Self { dir }).ok_or(ClusterError::NoPostgres)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// True when this process runs as root, so servers must run as `postgres`.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// When running as root, checks that the `postgres` user can reach `dir` (every parent directory
/// searchable), so that initdb does not fail later with a bare "permission denied".
pub fn check_postgres_can_reach(dir: &Path) -> Result<(), ClusterError> {
    if !running_as_root() {
        return Ok(());
    }
    let user = Command::new("id").arg("postgres").output();
    if !user.is_ok_and(|o| o.status.success()) {
        return Err(ClusterError::NoPostgresUser);
    }
    let reach = Command::new("runuser").args(["-u", "postgres", "--", "test", "-x"]).arg(dir).status();
    match reach {
        Ok(s) if s.success() => Ok(()),
        _ => Err(ClusterError::PostgresCannotReach { dir: dir.to_owned() }),
    }
}

fn command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(|e| ClusterError::Command { what: what.to_owned(), detail: e.to_string() })?;
    if !out.status.success() {
        let detail =
            format!("{}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(ClusterError::Command { what: what.to_owned(), detail });
    }
    Ok(out)
}

/// Settings for a Postgres that pgmix fronts.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Two-phase commit needs prepared transactions.
    pub max_prepared_transactions: u32,
    pub max_connections: u32,
    /// Trade durability for speed: for tests only.
    pub unsafe_fast: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self { max_prepared_transactions: 64, max_connections: 200, unsafe_fast: false }
    }
}

/// One local Postgres server. Its Unix socket lives in its data directory.
#[derive(Debug)]
pub struct PgInstance {
    bin: PgBin,
    pub data_dir: PathBuf,
    pub port: u16,
    log: PathBuf,
}

impl PgInstance {
    /// Creates the data directory with initdb unless it already holds a cluster.
    pub fn init(bin: &PgBin, dir: &Path, opts: &PgOptions) -> Result<Self, ClusterError> {
        let data_dir = dir.join("pgdata");
        let log = dir.join("postgres.log");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if !data_dir.join("PG_VERSION").exists() {
            if running_as_root() {
                run("chown", Command::new("chown").args(["postgres:postgres"]).arg(dir))?;
            }
            run(
                "initdb",
                command(&bin.path("initdb")).arg("-D").arg(&data_dir).args([
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-N",
                ]),
            )?;
            let mut conf = format!(
                "\n# added by pgmix\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 max_prepared_transactions = {}\nmax_connections = {}\n",
                data_dir.display(),
                opts.max_prepared_transactions,
                opts.max_connections
            );
            if opts.unsafe_fast {
                conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
            }
            let conf_path = data_dir.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf_path).map_err(io_err(&conf_path))?;
            text.push_str(&conf);
            std::fs::write(&conf_path, text).map_err(io_err(&conf_path))?;
        }
        if running_as_root() {
            run("chown", Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir))?;
        }
        Ok(Self { bin: bin.clone(), data_dir, port: 0, log })
    }

    /// Starts the server on `port` and waits until it accepts connections.
    pub fn start(&mut self, port: u16) -> Result<(), ClusterError> {
        // A server left running by an earlier run that was killed: stop it first.
        if self.is_running() {
            self.stop()?;
        }
        self.port = port;
        run(
            "pg_ctl start",
            command(&self.bin.path("pg_ctl")).arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log).args([
                "-w",
                "-t",
                "60",
                "-o",
                &format!("-p {port}"),
                "start",
            ]),
        )
        .map_err(|e| match e {
            ClusterError::Command { what, detail } => ClusterError::Command {
                what,
                detail: format!("{detail}\nlast lines of {}:\n{}", self.log.display(), tail(&self.log, 20)),
            },
            other => other,
        })?;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        command(&self.bin.path("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Fast shutdown: open transactions are rolled back, prepared ones are kept.
    pub fn stop(&self) -> Result<(), ClusterError> {
        run(
            "pg_ctl stop",
            command(&self.bin.path("pg_ctl")).arg("-D").arg(&self.data_dir).args(["-m", "fast", "-w", "stop"]),
        )?;
        Ok(())
    }

    /// The directory of the Unix socket, as `backend.host` wants it.
    pub fn socket_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err(Path::new("127.0.0.1:0")))?;
    l.local_addr().map(|a| a.port()).map_err(io_err(Path::new("127.0.0.1:0")))
}
