//! Each session runs as its user's Postgres role: Postgres's privileges hold through pgmix, the
//! client sees its own role, and it cannot make itself a superuser.

use std::path::Path;

use crate::harness::{TestNode, TestPg, node_toml, sqlstate};

const APP_USERS: &str = "[[users]]\nname = \"app\"\npassword = \"app-pw\"\n\
    [[users]]\nname = \"bob\"\npassword = \"bob-pw\"\nrole = \"reporting\"\n\
    [[users]]\nname = \"ghost\"\npassword = \"boo\"\n";

async fn node_with_roles() -> TestNode {
    let pg = TestPg::start();
    pg.direct()
        .await
        .batch_execute(
            "CREATE ROLE app LOGIN; CREATE ROLE reporting LOGIN; \
             CREATE TABLE secret (id int); CREATE TABLE shared (id int); GRANT SELECT ON shared TO app",
        )
        .await
        .unwrap();
    TestNode::start_on(pg, "allow", APP_USERS).await
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_as_its_users_role_with_that_roles_privileges() {
    let node = node_with_roles().await;
    let app = node.try_client("app", "app-pw").await.expect("app logs in");
    assert_eq!(one(&app, "SELECT current_user::text").await, "app");
    assert_eq!(one(&app, "SELECT session_user::text").await, "app");
    assert_eq!(one(&app, "SHOW session_authorization").await, "app");
    app.query("SELECT * FROM shared", &[]).await.expect("granted");
    let err = app.query("SELECT * FROM secret", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "no grant, no read: {err}");

    // A `role` key maps a login to another role name.
    let bob = node.try_client("bob", "bob-pw").await.expect("bob logs in");
    assert_eq!(one(&bob, "SELECT current_user::text").await, "reporting");

    // The harness's own user runs as its superuser role, not as pgmix's backend role.
    let dev = node.client().await;
    assert_eq!(one(&dev, "SELECT current_user::text").await, crate::harness::USER);

    // A configured user whose role does not exist gets Postgres's own refusal.
    let Err(err) = node.try_client("ghost", "boo").await else { panic!("no such role, yet it logged in") };
    assert_eq!(sqlstate(&err), "28000");
    assert!(err.as_db_error().unwrap().message().contains("ghost"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_superuser_cannot_escalate_through_pgmix() {
    let node = node_with_roles().await;
    let app = node.try_client("app", "app-pw").await.unwrap();
    for sql in [
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "ALTER ROLE app SUPERUSER",
        "CREATE ROLE evil SUPERUSER LOGIN",
        "SELECT set_config('role', 'postgres', false)",
        "COPY secret FROM PROGRAM 'true'",
    ] {
        let err = app.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
        assert_eq!(sqlstate(&err), "42501", "{sql}: {err}");
    }
    app.batch_execute("RESET SESSION AUTHORIZATION; RESET ROLE").await.unwrap();
    assert_eq!(one(&app, "SELECT current_user::text").await, "app");
    let su: bool = app.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'", &[]).await.unwrap().get(0);
    assert!(!su);

    // Start-up options are checked by Postgres the same way.
    let mut cfg = node.config();
    cfg.user("app").password("app-pw").options("-c role=postgres");
    let err = cfg.connect(tokio_postgres::NoTls).await.err().expect("start-up SET ROLE refused");
    assert_eq!(sqlstate(&err), "42501", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_whose_login_needs_a_password_pgmix_lacks_gets_28000_and_a_fix() {
    let pg = TestPg::start();
    pg.direct().await.batch_execute("CREATE ROLE app LOGIN PASSWORD 'in-postgres'").await.unwrap();
    let verifier = postgres_protocol::password::scram_sha_256(b"s3cret");
    let users = format!("[[users]]\nname = \"app\"\nscram = \"{verifier}\"\n");
    // Over TCP, where the test Postgres asks every login for a password.
    let text = node_toml(&pg, 0, "allow", &users)
        .replace(&format!("host = {:?}", pg.pg.socket_dir().display().to_string()), "host = \"127.0.0.1\"");
    let cfg = pgmix::config::from_toml_str(&text, "test.toml", Path::new(".")).expect("config");
    let node = TestNode::from_parts(pgmix::node::start(cfg).await.expect("node starts"), pg);
    let Err(err) = node.try_client("app", "s3cret").await else { panic!("logged in without a backend password") };
    assert_eq!(sqlstate(&err), "28000");
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("role \"app\""), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("trust or peer"), "{:?}", db.hint());
    assert!(node.handle().metrics.backend_up.load(std::sync::atomic::Ordering::Relaxed), "the node stays healthy");
}
