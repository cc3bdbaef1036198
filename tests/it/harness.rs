//! Test harness: a fresh Postgres per test (initdb'd into a temporary directory, run as the
//! `postgres` user when the tests run as root) and a pgmix node in front of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use pgmix::cluster::certs;
use pgmix::cluster::pg::{PgBin, PgInstance, PgOptions, free_port};
use pgmix::node::{self, NodeHandle};

pub const USER: &str = "pgmix";
pub const PASSWORD: &str = "pgmix";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pgmix-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running Postgres for one test, stopped on drop.
pub struct TestPg {
    pub pg: PgInstance,
    pub dir: TempDir,
}

impl TestPg {
    pub fn start() -> Self {
        let dir = TempDir::new("pg");
        let bin = PgBin::find().expect("PostgreSQL server binaries");
        let opts = PgOptions { unsafe_fast: true, max_connections: 100, ..PgOptions::default() };
        let mut pg = PgInstance::init(&bin, &dir.0.join("pg"), &opts).expect("initdb");
        pg.start(free_port().expect("free port")).expect("start postgres");
        let me = Self { pg, dir };
        // Sessions run as their user's role; the harness's user is a superuser, as `pgmix up`'s is.
        std::thread::scope(|s| {
            s.spawn(|| {
                // A runtime of its own, on a thread of its own: tests call this from async code.
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async {
                    // As `pgmix up` does: "$user" would otherwise be pgmix's metadata schema.
                    let sql = format!("CREATE ROLE {USER} SUPERUSER LOGIN; ALTER ROLE {USER} SET search_path = public");
                    me.direct().await.batch_execute(&sql).await.expect("create the test role");
                })
            });
        });
        me
    }

    /// A superuser connection straight to Postgres, bypassing pgmix.
    pub async fn direct(&self) -> tokio_postgres::Client {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(self.pg.socket_dir()).port(self.pg.port).user("postgres").dbname("postgres");
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("direct connection");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let _ = self.pg.stop();
    }
}

/// Node config text for a test; `extra` is appended (more [[users]], [auth], [limits] ...).
pub fn node_toml(pg: &TestPg, port: u16, tls_mode: &str, extra: &str) -> String {
    node_toml_with_top(pg, port, tls_mode, "", extra)
}

/// Like `node_toml`, with `top` inserted among the top-level keys (e.g. `schema = "..."`).
pub fn node_toml_with_top(pg: &TestPg, port: u16, tls_mode: &str, top: &str, extra: &str) -> String {
    let (cert, key) = certs::ensure_self_signed(&pg.dir.0).expect("cert");
    format!(
        r#"node_name = "test"
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:0"
{top}
[backend]
host = {socket:?}
port = {pgport}
user = "postgres"
[tls]
mode = "{tls_mode}"
cert = {cert:?}
key = {key:?}
[[users]]
name = "{USER}"
password = "{PASSWORD}"
{extra}
"#,
        socket = pg.pg.socket_dir().display().to_string(),
        pgport = pg.pg.port,
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    )
}

/// Postgres plus an in-process pgmix node in front of it.
pub struct TestNode {
    pub node: Option<NodeHandle>,
    pub port: u16,
    pub pg: TestPg,
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with("allow", "").await
    }

    pub async fn start_with(tls_mode: &str, extra: &str) -> Self {
        Self::start_on(TestPg::start(), tls_mode, extra).await
    }

    /// A node in front of `pg`; a `cert.pem`/`key.pem` already in its directory is used as is.
    pub async fn start_on(pg: TestPg, tls_mode: &str, extra: &str) -> Self {
        let text = node_toml(&pg, 0, tls_mode, extra);
        let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("valid test config");
        let node = node::start(cfg).await.expect("node starts");
        let port = node.addr.port();
        Self { node: Some(node), port, pg }
    }

    /// A node with a schema file, after `setup` ran directly on its Postgres.
    pub async fn start_with_schema(schema: &str, setup: &str) -> Result<Self, pgmix::node::NodeError> {
        let pg = TestPg::start();
        if !setup.is_empty() {
            pg.direct().await.batch_execute(setup).await.expect("setup SQL");
        }
        let path = pg.dir.0.join("schema.toml");
        std::fs::write(&path, schema).expect("write schema");
        let top = format!("schema = {:?}", path.display().to_string());
        let text = node_toml_with_top(&pg, 0, "allow", &top, "");
        let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("valid test config");
        let node = node::start(cfg).await?;
        let port = node.addr.port();
        Ok(Self { node: Some(node), port, pg })
    }

    /// A node already started (with a config the test built) in front of `pg`.
    pub fn from_parts(node: NodeHandle, pg: TestPg) -> Self {
        let port = node.addr.port();
        Self { node: Some(node), port, pg }
    }

    /// Stops the node and hands back its Postgres, for another node in front of it.
    pub async fn into_pg(mut self) -> TestPg {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
        self.pg
    }

    pub fn handle(&self) -> &NodeHandle {
        self.node.as_ref().expect("node running")
    }

    /// A libpq connection string to the node.
    pub fn conninfo(&self, user: &str, password: &str, sslmode: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} password={password} dbname=postgres sslmode={sslmode}", self.port)
    }

    pub fn config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(self.port).user(USER).password(PASSWORD).dbname("postgres");
        cfg
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = self.config().connect(tokio_postgres::NoTls).await.expect("connect through pgmix");
        tokio::spawn(conn);
        client
    }

    pub async fn try_client(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = self.config();
        cfg.user(user).password(password);
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The SQLSTATE of a tokio-postgres error, or a panic naming what came instead.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.code().code().to_owned(),
        None => panic!("expected a database error, got: {e:?}"),
    }
}

/// Runs psql against the node; returns (success, stdout, stderr).
pub fn psql(conninfo: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"])
        .args(args)
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The project's Python with psycopg and SQLAlchemy: $PGMIX_PYTHON or ./.venv (made by .ci/run).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PGMIX_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python client environment: run `bash .ci/run` once, or `python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt`"
    );
    venv
}

/// A protocol 3.0 start-up packet with these parameters, for raw-socket tests.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend(body);
    pkt
}

/// A typed message whose body is one NUL-terminated string (PasswordMessage 'p', Query 'Q').
pub fn string_message(tag: u8, text: &str) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend(((text.len() + 5) as i32).to_be_bytes());
    msg.extend(text.as_bytes());
    msg.push(0);
    msg
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after 30 s.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits up to 30 s for `get` to give a value, and returns it.
pub async fn wait_until_value<T, F, Fut>(what: &str, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = get().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `sql`'s one row, asked again while the answer is 40001 (a node that does not know a leader
/// yet says so, and the statement is safe to retry).
pub async fn query_one_retrying(client: &tokio_postgres::Client, sql: &str) -> tokio_postgres::Row {
    loop {
        match client.query_one(sql, &[]).await {
            Ok(row) => return row,
            Err(e) if sqlstate(&e) == "40001" => continue,
            Err(e) => panic!("{sql}: {e:?}"),
        }
    }
}
