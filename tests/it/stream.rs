//! Bounded memory: a 1 GB result streams through a pgmix process with flat memory, and a client
//! that stops reading stops the backend instead of filling pgmix's memory.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{PASSWORD, TestPg, USER, node_toml, startup_packet, string_message};

/// A pgmix node running as its own process, so its memory can be measured alone.
struct NodeProcess {
    child: Child,
    port: u16,
}

impl NodeProcess {
    fn start(pg: &TestPg, extra: &str) -> Self {
        let port = pgmix::cluster::pg::free_port().unwrap();
        let conf = pg.dir.0.join("proxy.toml");
        std::fs::write(&conf, node_toml(pg, port, "allow", extra)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgmix"))
            .args(["serve", "--config"])
            .arg(&conf)
            .env("PGMIX_LOG", "warn")
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgmix process did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// A field of /proc/<pid>/status, in kB.
    fn status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ONE_GB_QUERY: &str = "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 1050000)) TO STDOUT";

#[test]
fn one_gigabyte_result_streams_through_with_flat_memory() {
    let pg = TestPg::start();
    let node = NodeProcess::start(&pg, "");
    let before = node.status_kb("VmRSS:");
    let conninfo =
        format!("host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=postgres sslmode=disable", node.port);
    let mut psql = Command::new("psql")
        .args([conninfo.as_str(), "-X", "-v", "ON_ERROR_STOP=1", "-c", ONE_GB_QUERY])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = psql.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let status = psql.wait().unwrap();
    assert!(status.success(), "psql failed");
    assert!(total >= 1_000_000_000, "streamed {total} bytes");
    let peak = node.status_kb("VmHWM:");
    eprintln!("pgmix RSS before {before} kB, peak {peak} kB after {total} bytes");
    assert!(peak < before + 64 * 1024, "pgmix peak RSS grew from {before} kB to {peak} kB: the result was buffered");
}

#[test]
fn a_client_that_stops_reading_slows_the_backend_instead_of_filling_memory() {
    let pg = TestPg::start();
    let node = NodeProcess::start(&pg, "[auth]\nmethod = \"password\"\n");
    let before = node.status_kb("VmRSS:");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let params = [("user", USER), ("database", "postgres"), ("application_name", "stalled")];
    s.write_all(&startup_packet(&params)).unwrap();
    s.write_all(&string_message(b'p', PASSWORD)).unwrap();
    s.write_all(&string_message(b'Q', "SELECT repeat('x', 1000) FROM generate_series(1, 3000000)")).unwrap();
    // Now read nothing. Postgres must end up blocked writing to pgmix.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let waiting = rt.block_on(async {
        let direct = pg.direct().await;
        for _ in 0..100 {
            let row = direct
                .query_opt(
                    "SELECT wait_event FROM pg_stat_activity WHERE application_name = 'stalled' AND state = 'active'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(r) = row
                && r.get::<_, Option<String>>(0).as_deref() == Some("ClientWrite")
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(waiting, "the backend should be blocked on ClientWrite while the client does not read");
    std::thread::sleep(Duration::from_millis(500));
    let now = node.status_kb("VmRSS:");
    eprintln!("pgmix RSS before {before} kB, with a stalled 3 GB result {now} kB");
    assert!(now < before + 32 * 1024, "pgmix RSS grew from {before} kB to {now} kB");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_copies_both_ways_over_tls_arrive_whole() {
    // TLS holds written bytes in records until flushed, so the session's flushing matters here
    // in a way it does not in plaintext.
    let node = crate::harness::TestNode::start().await;
    let tls = node.conninfo(USER, PASSWORD, "require");
    let (ok, out, err) = crate::harness::psql(
        &tls,
        &["-c", "COPY (SELECT i, repeat('x', 1000) FROM generate_series(1, 50000) i) TO STDOUT"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 50_000);
    assert!(out.lines().all(|l| l.len() > 1000), "every row whole");
    let path = node.pg.dir.0.join("rows.tsv");
    std::fs::write(&path, &out).unwrap();
    let (ok, _, err) = crate::harness::psql(&tls, &["-c", "CREATE TABLE big (i int, s text)"]);
    assert!(ok, "{err}");
    let copy_in = format!("\\copy big FROM '{}'", path.display());
    let (ok, _, err) = crate::harness::psql(&tls, &["-c", &copy_in]);
    assert!(ok, "{err}");
    let (ok, out, err) = crate::harness::psql(&tls, &["-c", "SELECT count(*), sum(length(s)) FROM big"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "50000|50000000");
}
