//! Postgres's own login roles log in through pgmix: checked against their stored secrets, with
//! Postgres's errors in Postgres's order, secrets cached only briefly, guessing slowed down.

use std::path::Path;

use crate::harness::{TestNode, TestPg, node_toml, psql, sqlstate, wait_until};

async fn login(node: &TestNode, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    node.try_client(user, password).await
}

fn code_of(r: Result<tokio_postgres::Client, tokio_postgres::Error>) -> String {
    match r {
        Ok(_) => "logged in".to_owned(),
        Err(e) => sqlstate(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_through_pgmix_logs_in_as_itself() {
    let node = TestNode::start().await;
    let admin = node.client().await;
    admin.batch_execute("CREATE ROLE app LOGIN PASSWORD 'x'; CREATE TABLE private (id int)").await.unwrap();

    let app = login(&node, "app", "x").await.expect("app logs in with SCRAM");
    let who: String = app.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "app");
    let err = app.query("SELECT * FROM private", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // The catalog of secrets is not the client's to read.
    let err = app.query("SELECT rolpassword FROM pg_authid", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(code_of(login(&node, "app", "wrong").await), "28P01");

    // SCRAM-SHA-256-PLUS over TLS.
    let port = node.port;
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        psql(
            &format!(
                "host=127.0.0.1 port={port} user=app password=x dbname=postgres sslmode=require channel_binding=require"
            ),
            &["-c", "SELECT current_user"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_dropped_role_stops_working_within_the_cache_bound() {
    let node = TestNode::start_with("allow", "[auth]\nrole_cache_secs = 1\n").await;
    let admin = node.client().await;
    admin.batch_execute("CREATE ROLE app LOGIN PASSWORD 'x'").await.unwrap();
    login(&node, "app", "x").await.expect("logs in (and is now cached)");

    admin.batch_execute("ALTER ROLE app PASSWORD 'y'").await.unwrap();
    wait_until("the old password stops working", || async { login(&node, "app", "x").await.is_err() }).await;
    wait_until("the new password works", || async { login(&node, "app", "y").await.is_ok() }).await;

    admin.batch_execute("ALTER ROLE app NOLOGIN").await.unwrap();
    // Authentication succeeds; Postgres itself refuses the role, as it would directly.
    wait_until("NOLOGIN is refused with 28000", || async { code_of(login(&node, "app", "y").await) == "28000" }).await;

    admin.batch_execute("ALTER ROLE app LOGIN VALID UNTIL '2000-01-01'").await.unwrap();
    wait_until("an expired password is refused", || async { code_of(login(&node, "app", "y").await) == "28P01" }).await;

    admin.batch_execute("ALTER ROLE app VALID UNTIL 'infinity'").await.unwrap();
    wait_until("it works again", || async { login(&node, "app", "y").await.is_ok() }).await;
    admin.batch_execute("DROP ROLE app").await.unwrap();
    wait_until("a dropped role is refused", || async { code_of(login(&node, "app", "y").await) == "28P01" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_in_postgres_s_order_and_never_say_whether_the_role_exists() {
    let node = TestNode::start().await;
    node.client()
        .await
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'x'; CREATE ROLE shy PASSWORD 'x'")
        .await
        .unwrap();
    let mut cfg = node.config();
    // Unknown role and wrong database: the password fails first, as in Postgres.
    cfg.user("ghost").password("x").dbname("nope");
    let Err(e) = cfg.connect(tokio_postgres::NoTls).await else { panic!("ghost logged in") };
    assert_eq!(sqlstate(&e), "28P01");
    let unknown = e.as_db_error().unwrap().message().to_owned();
    // A wrong password for a real role reads exactly the same.
    cfg.user("app").password("wrong");
    let Err(e) = cfg.connect(tokio_postgres::NoTls).await else { panic!("wrong password logged in") };
    assert_eq!(e.as_db_error().unwrap().message().replace("\"app\"", "\"ghost\""), unknown);
    // Right password, wrong database: 3D000. Role without LOGIN: 28000.
    cfg.user("app").password("x");
    let Err(e) = cfg.connect(tokio_postgres::NoTls).await else { panic!("no such database") };
    assert_eq!(sqlstate(&e), "3D000");
    cfg.user("shy").password("x").dbname("postgres");
    let Err(e) = cfg.connect(tokio_postgres::NoTls).await else { panic!("NOLOGIN role logged in") };
    assert_eq!(sqlstate(&e), "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_role_logs_in_only_where_md5_is_allowed() {
    let pg = TestPg::start();
    pg.direct()
        .await
        .batch_execute("SET password_encryption = 'md5'; CREATE ROLE old LOGIN PASSWORD 'x'")
        .await
        .unwrap();
    let scram_only = TestNode::start_on(pg, "allow", "").await;
    assert_eq!(code_of(login(&scram_only, "old", "x").await), "28P01", "SCRAM cannot use an md5 secret");
    let pg = scram_only.into_pg().await;
    let md5 = TestNode::start_on(pg, "allow", "[auth]\nmethod = \"md5\"\n").await;
    let c = login(&md5, "old", "x").await.expect("md5 login");
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "old");
    assert_eq!(code_of(login(&md5, "old", "y").await), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_users_win_and_logins_can_be_limited_to_the_config() {
    // `app` is listed with another password; the listed entry decides.
    let pg = TestPg::start();
    pg.direct().await.batch_execute("CREATE ROLE app LOGIN PASSWORD 'in-postgres'").await.unwrap();
    let text =
        node_toml(&pg, 0, "allow", "[auth]\nlogins = \"config\"\n[[users]]\nname = \"app\"\npassword = \"listed\"\n");
    let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("config");
    let node = TestNode::from_parts(pgmix::node::start(cfg).await.expect("node starts"), pg);
    login(&node, "app", "listed").await.expect("the listed password");
    assert_eq!(code_of(login(&node, "app", "in-postgres").await), "28P01");
    node.pg.direct().await.batch_execute("CREATE ROLE other LOGIN PASSWORD 'x'").await.unwrap();
    assert_eq!(code_of(login(&node, "other", "x").await), "28P01", "logins = config: roles are not logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_and_counted() {
    let node = TestNode::start_with("allow", "[auth]\nfailures_before_delay = 2\n").await;
    let delayed = || node.handle().metrics.auth_delayed_total.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(code_of(login(&node, "nobody", "guess").await), "28P01");
    }
    assert_eq!(delayed(), 0, "two failures a minute are free, the third one counts");
    assert_eq!(node.handle().metrics.auth_failures_total.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Now every attempt from this address waits, the right password too: the wait says nothing.
    node.client().await.simple_query("SELECT 1").await.unwrap();
    assert_eq!(delayed(), 1);
}
