use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin. \
         Install them: `apt-get install postgresql` (Debian/Ubuntu) or `dnf install postgresql-server` (Fedora); \
         pgmix runs on Linux"
    )]
    NoPostgres,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("cannot generate a TLS certificate: {0}")]
    Cert(String),
    #[error("{path}: {reason}")]
    CertFile { path: PathBuf, reason: String },
    #[error(
        "pgmix runs Postgres as the OS user `postgres` when it runs as root (Postgres refuses to run as root), \
         and that user cannot reach {dir}: a parent directory is not searchable by it (/root, for one, is mode 0700). \
         Use a data directory it can reach, for example `pgmix up --data-dir /var/tmp/pgmix`, \
         or let it through with `chmod o+x` on each parent directory"
    )]
    PostgresCannotReach { dir: PathBuf },
    #[error(
        "pgmix runs Postgres as the OS user `postgres` when it runs as root (Postgres refuses to run as root), \
         and there is no such user: create it with `useradd --system --create-home postgres`"
    )]
    NoPostgresUser,
    #[error("port {port} is already in use; pass --port to choose another base port")]
    PortInUse { port: u16 },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{node}: {detail}")]
    NodeProcess { node: String, detail: String },
    #[error("cannot prepare database `{db}` on {node}: {detail}")]
    Bootstrap { node: String, db: String, detail: String },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |cause| ClusterError::Io { path: path.to_owned(), cause }
}
