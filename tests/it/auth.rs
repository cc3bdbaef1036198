//! TLS and authentication at the front end.

use std::io::{Read, Write};

use crate::harness::{PASSWORD, TestNode, TestPg, USER, psql, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_right_password_connects_wrong_password_gets_28p01() {
    let verifier = postgres_protocol::password::scram_sha_256(b"s3cret");
    let node = TestNode::start_with(
        "allow",
        &format!("[[users]]\nname = \"alice\"\nscram = \"{verifier}\"\nrole = \"{USER}\"\n"),
    )
    .await;
    let alice = node.try_client("alice", "s3cret").await.expect("alice logs in with her verifier");
    assert_eq!(alice.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    let err = node.try_client("alice", "wrong").await.err().unwrap();
    assert_eq!(sqlstate(&err), "28P01");
    assert!(err.as_db_error().unwrap().message().contains("password authentication failed for user \"alice\""));
    // An unknown user gets exactly the same answer.
    let err = node.try_client("mallory", "s3cret").await.err().unwrap();
    assert_eq!(sqlstate(&err), "28P01");
    assert_eq!(node.handle().metrics.auth_failures_total.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plaintext_with_28000_and_accepts_tls() {
    let node = TestNode::start_with("require", "").await;
    let err = node.try_client(USER, PASSWORD).await.err().unwrap();
    assert_eq!(sqlstate(&err), "28000");
    assert!(err.as_db_error().unwrap().message().contains("requires TLS"), "{err}");

    let (ok, out, err) = psql(&node.conninfo(USER, PASSWORD, "require"), &["-c", "SELECT 'over tls'"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "over tls");
    let (ok, _, err) = psql(&node.conninfo(USER, PASSWORD, "disable"), &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("requires TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_channel_binding_works_over_tls_and_is_never_offered_in_plaintext() {
    let node = TestNode::start_with("allow", "").await;
    let tls = format!("{} channel_binding=require", node.conninfo(USER, PASSWORD, "require"));
    let (ok, out, err) = psql(&tls, &["-c", "SELECT 'bound'"]);
    assert!(ok, "SCRAM-SHA-256-PLUS over TLS: {err}");
    assert_eq!(out.trim(), "bound");
    let plain = format!("{} channel_binding=require", node.conninfo(USER, PASSWORD, "disable"));
    let (ok, _, err) = psql(&plain, &["-c", "SELECT 1"]);
    assert!(!ok, "channel binding must be impossible without TLS");
    assert!(err.contains("channel binding"), "{err}");
    let (ok, _, err) = psql(&node.conninfo(USER, PASSWORD, "disable"), &["-c", "SELECT 1"]);
    assert!(ok, "plain SCRAM without TLS: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_disabled_answers_ssl_request_with_n() {
    let node = TestNode::start_with("disable", "").await;
    let (ok, _, err) = psql(&node.conninfo(USER, PASSWORD, "require"), &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("does not support SSL"), "{err}");
    let (ok, _, err) = psql(&node.conninfo(USER, PASSWORD, "prefer"), &["-c", "SELECT 1"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_work_only_when_configured() {
    let md5 = TestNode::start_with("allow", "[auth]\nmethod = \"md5\"\n").await;
    assert_eq!(first_auth_request(md5.port, USER), 5, "AuthenticationMD5Password");
    md5.try_client(USER, PASSWORD).await.expect("md5 login");
    assert_eq!(sqlstate(&md5.try_client(USER, "bad").await.err().unwrap()), "28P01");

    let clear = TestNode::start_with("allow", "[auth]\nmethod = \"password\"\n").await;
    assert_eq!(first_auth_request(clear.port, USER), 3, "AuthenticationCleartextPassword");
    let (ok, _, err) = psql(&clear.conninfo(USER, PASSWORD, "require"), &["-c", "SELECT 1"]);
    assert!(ok, "cleartext login: {err}");
    assert_eq!(sqlstate(&clear.try_client(USER, "bad").await.err().unwrap()), "28P01");

    // The default asks for SASL (SCRAM), never md5 or a cleartext password.
    let scram = TestNode::start().await;
    assert_eq!(first_auth_request(scram.port, USER), 10, "AuthenticationSASL");
}

/// Sends a start-up packet and returns the code of the authentication request that comes back.
fn first_auth_request(port: u16, user: &str) -> i32 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&crate::harness::startup_packet(&[("user", user)])).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'R', "an Authentication message");
    i32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    let addr = node.handle().metrics_addr.expect("metrics address");
    let body = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("pgmix_connections_active{node=\"test\"} 1"), "{body}");
    assert!(body.contains("pgmix_queries_total{node=\"test\"} 1"), "{body}");
    assert!(body.contains("pgmix_backend_up{node=\"test\"} 1"), "{body}");
    assert!(body.contains("pgmix_statements_total{node=\"test\",class=\"local\"} 1"), "{body}");
    assert!(body.contains("pgmix_schema_errors{node=\"test\"} 0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_summarises_each_node_from_its_metrics() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    let addr = node.handle().metrics_addr.expect("metrics address").to_string();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_pgmix")).args(["status", "--metrics", &addr]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("test postgres=up sessions=1"), "{text}");
    assert!(text.contains("local=1"), "{text}");
    // A node that does not answer makes the command fail, naming the address.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgmix"))
        .args(["status", "--metrics", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:1: cannot read metrics"));
}

/// Writes a self-signed certificate with this signature algorithm where the node will find it.
fn install_cert(pg: &TestPg, alg: &'static rcgen::SignatureAlgorithm) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(pg.dir.0.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(pg.dir.0.join("key.pem"), key.serialize_pem()).expect("write key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_hashes_with_the_certificate_signature_hash() {
    // libpq binds to the certificate hashed with its signature's hash (SHA-384 here); a server
    // that always used SHA-256 would fail this login.
    let pg = TestPg::start();
    install_cert(&pg, &rcgen::PKCS_ECDSA_P384_SHA384);
    let node = TestNode::start_on(pg, "allow", "").await;
    let tls = format!("{} channel_binding=require", node.conninfo(USER, PASSWORD, "require"));
    let (ok, out, err) = psql(&tls, &["-c", "SELECT 'bound'"]);
    assert!(ok, "SCRAM-SHA-256-PLUS with a P-384/SHA-384 certificate: {err}");
    assert_eq!(out.trim(), "bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_defined_binding_plus_is_not_offered_and_plain_scram_still_works() {
    let pg = TestPg::start();
    install_cert(&pg, &rcgen::PKCS_ED25519);
    let node = TestNode::start_on(pg, "allow", "").await;
    let required = format!("{} channel_binding=require", node.conninfo(USER, PASSWORD, "require"));
    let (ok, _, err) = psql(&required, &["-c", "SELECT 1"]);
    assert!(!ok, "an Ed25519 certificate has no tls-server-end-point hash, so binding cannot be offered");
    assert!(err.contains("channel binding"), "{err}");
    let (ok, out, err) = psql(&node.conninfo(USER, PASSWORD, "require"), &["-c", "SELECT 'tls'"]);
    assert!(ok, "SCRAM over TLS without binding: {err}");
    assert_eq!(out.trim(), "tls");
}
