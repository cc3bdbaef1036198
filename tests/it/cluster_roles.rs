//! Roles on a 3-node cluster: role statements through any node reach every node (passwords as
//! their verifiers, never as typed), a role that is not a superuser uses the strong path through
//! any node, and nothing a client sends runs with more privilege on another node.

use crate::cluster::Cluster;
use crate::drivers::{ACCOUNTS, STRONG, follower};
use crate::harness::{psql, sqlstate, wait_until};
use crate::strong::leader;

/// A libpq connection string to node `k` (1-based) of `c`.
fn url(c: &Cluster, k: usize, user: &str, password: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{}/postgres?sslmode=disable", c.nodes[k - 1].port)
}

async fn logs_in(c: &Cluster, k: usize, user: &str, password: &str) -> bool {
    let mut cfg = c.nodes[k - 1].config();
    cfg.user(user).password(password);
    cfg.connect(tokio_postgres::NoTls).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_roles_example_works_through_a_follower_and_the_role_logs_in_on_every_node() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let f = follower(&c).await;
    // As the README has it.
    let (ok, _, err) = psql(
        &url(&c, f, "pgmix", "pgmix"),
        &[
            "-c",
            "CREATE ROLE app LOGIN PASSWORD 'change-me'",
            "-c",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app",
        ],
    );
    assert!(ok, "{err}");
    for k in 1..=3 {
        wait_until(&format!("app logs in on node {k}"), || logs_in(&c, k, "app", "change-me")).await;
        let (ok, out, err) = psql(&url(&c, k, "app", "change-me"), &["-c", "SELECT current_user"]);
        assert!(ok && out.trim() == "app", "node {k}: {out}{err}");
    }
    // The role, not a superuser, writes and reads strong data through every node.
    for k in 1..=3 {
        let (ok, out, err) = psql(
            &url(&c, k, "app", "change-me"),
            &[
                "-c",
                "BEGIN",
                "-c",
                "UPDATE accounts SET balance = balance - 1 WHERE id = 1",
                "-c",
                "UPDATE accounts SET balance = balance + 1 WHERE id = 2",
                "-c",
                "COMMIT",
                "-c",
                &format!("INSERT INTO accounts VALUES ({}, 0)", 100 + k),
                "-c",
                "SELECT balance FROM accounts WHERE id = 1",
            ],
        );
        assert!(ok, "node {k}: {err}");
        assert!(out.trim_end().ends_with(&(100 - k).to_string()), "node {k}: {out}");
    }
    let rows =
        c.converged("app's writes", "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts").await;
    assert!(rows[0].starts_with("1:97,2:103,"), "{rows:?}");
    assert!(rows[0].ends_with("101:0,102:0,103:0"), "{rows:?}");
    // The password the client typed is nowhere in what travelled or was kept.
    for (k, found) in c
        .each(
            "SELECT (SELECT count(*) FROM pgmix.raft_log WHERE entry LIKE '%change-me%') \
             + (SELECT count(*) FROM pgmix.ddl_journal WHERE sql LIKE '%change-me%') || ''",
        )
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(found, &["0".to_owned()], "node {}: the typed password was kept", k + 1);
    }
    let verifiers = c.each("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'").await;
    assert!(verifiers.iter().all(|v| v == &["SCRAM-SHA-256$".to_owned()]), "{verifiers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_changes_memberships_and_drops_reach_every_node() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let l = leader(&c).await;
    let f = follower(&c).await;
    let admin = c.client(f).await;
    admin
        .batch_execute(
            "CREATE ROLE readers NOLOGIN; CREATE ROLE carol LOGIN PASSWORD 'one' CONNECTION LIMIT 7; \
             GRANT SELECT ON accounts TO readers",
        )
        .await
        .unwrap();
    admin.batch_execute("GRANT readers TO carol").await.unwrap();
    admin.batch_execute("ALTER ROLE carol SET statement_timeout = '7s'").await.unwrap();
    let state = "SELECT r.rolname || ' ' || r.rolconnlimit || ' ' || r.rolcanlogin || ' ' || \
                 coalesce((SELECT string_agg(g.rolname, ',') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                           WHERE m.member = r.oid), '-') || ' ' || \
                 coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = r.oid), '-') \
                 FROM pg_roles r WHERE rolname = 'carol'";
    let seen = c.converged("carol's role", state).await;
    assert_eq!(seen, ["carol 7 true readers statement_timeout=7s"]);
    // Carol reads through her membership, on every node.
    for k in 1..=3 {
        wait_until(&format!("carol logs in on node {k}"), || logs_in(&c, k, "carol", "one")).await;
        let (ok, out, err) =
            psql(&url(&c, k, "carol", "one"), &["-c", "SELECT count(*) FROM accounts", "-c", "SHOW statement_timeout"]);
        assert!(ok && out.contains("10") && out.contains("7s"), "node {k}: {out}{err}");
    }
    // A new password set through the leader works on a follower within the cache bound.
    c.client(l).await.batch_execute("ALTER ROLE carol PASSWORD 'two'").await.unwrap();
    wait_until("carol's new password works on the follower", || logs_in(&c, f, "carol", "two")).await;
    wait_until("carol's old password stops working everywhere", || async {
        let mut any = false;
        for k in 1..=3 {
            any |= logs_in(&c, k, "carol", "one").await;
        }
        !any
    })
    .await;
    // A membership revoked, then the role dropped: on every node.
    admin.batch_execute("REVOKE readers FROM carol").await.unwrap();
    let seen = c.converged("carol's role", state).await;
    assert!(seen[0].starts_with("carol 7 true - "), "{seen:?}");
    admin.batch_execute("DROP ROLE carol").await.unwrap();
    c.converged("carol dropped", "SELECT count(*)::text FROM pg_roles WHERE rolname = 'carol'").await;
    assert_eq!(
        c.each("SELECT count(*)::text FROM pg_roles WHERE rolname = 'carol'").await,
        vec![vec!["0".to_owned()]; 3]
    );
    wait_until("carol cannot log in anywhere", || async {
        let mut any = false;
        for k in 1..=3 {
            any |= logs_in(&c, k, "carol", "two").await;
        }
        !any
    })
    .await;
    // The cluster goes on taking strong writes through every node.
    for k in 1..=3 {
        c.client(k).await.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 5", &[]).await.unwrap();
    }
    assert_eq!(c.converged("writes", "SELECT balance::text FROM accounts WHERE id = 5").await, ["103"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_cannot_become_more_than_it_is_on_another_node() {
    let c = Cluster::start(3, STRONG, ACCOUNTS).await;
    let l = leader(&c).await;
    let admin = c.client(l).await;
    admin
        .batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE SCHEMA mine AUTHORIZATION alice")
        .await
        .unwrap();
    for k in 1..=3 {
        wait_until(&format!("alice logs in on node {k}"), || logs_in(&c, k, "alice", "alice-pw")).await;
    }
    let mut cfg = c.nodes[l - 1].config();
    cfg.user("alice").password("alice-pw");
    let (alice, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // DDL inside a DO block that tries to become the superuser wherever pgmix's session is one.
    let e = alice
        .batch_execute(
            "DO $$ BEGIN CREATE TABLE mine.t1 (id int PRIMARY KEY); RESET ROLE; \
             IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN ALTER ROLE alice SUPERUSER; END IF; END $$",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    // Her own DDL, as a statement of its own, is hers on every node.
    alice.batch_execute("CREATE TABLE mine.t2 (id int PRIMARY KEY, v text)").await.unwrap();
    alice.execute("INSERT INTO mine.t2 VALUES (1, 'x')", &[]).await.unwrap();
    let owners = c
        .converged("alice's table", "SELECT relowner::regrole::text FROM pg_class WHERE oid = to_regclass('mine.t2')")
        .await;
    assert_eq!(owners, ["alice"]);
    assert_eq!(c.converged("alice's row", "SELECT string_agg(v, ',') FROM mine.t2").await, ["x"]);
    let supers = c.each("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'alice'").await;
    assert_eq!(supers, vec![vec!["false".to_owned()]; 3], "alice stays ordinary on every node's Postgres");
    assert_eq!(c.each("SELECT count(*)::text FROM pg_class WHERE relname = 't1'").await, vec![vec!["0".to_owned()]; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_transaction_keeps_the_session_s_role_settings_and_statements() {
    let setup = format!(
        "{ACCOUNTS}\nCREATE SCHEMA app; CREATE TABLE app.docs (id int PRIMARY KEY, tenant text NOT NULL);\n\
         INSERT INTO app.docs VALUES (1, 'tenant_42'), (2, 'tenant_7');\n\
         ALTER TABLE app.docs ENABLE ROW LEVEL SECURITY;\n\
         CREATE POLICY own ON app.docs USING (tenant = current_user);"
    );
    let c = Cluster::start(3, STRONG, &setup).await;
    let f = follower(&c).await;
    c.client(leader(&c).await)
        .await
        .batch_execute(
            "CREATE ROLE tenant_42 NOLOGIN; CREATE ROLE app_admin LOGIN PASSWORD 'adm' IN ROLE tenant_42 NOINHERIT",
        )
        .await
        .unwrap();
    c.client(leader(&c).await)
        .await
        .batch_execute("GRANT USAGE ON SCHEMA app TO tenant_42; GRANT SELECT ON app.docs TO tenant_42")
        .await
        .unwrap();
    wait_until("app_admin logs in on the follower", || logs_in(&c, f, "app_admin", "adm")).await;
    let mut cfg = c.nodes[f - 1].config();
    cfg.user("app_admin").password("adm");
    let (s, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // A lowered role holds on the leader too: its grants and its row-level security.
    s.batch_execute("SET ROLE tenant_42").await.unwrap();
    s.batch_execute("SET search_path = app, public").await.unwrap();
    let on_leader = |sql: &'static str| {
        let s = &s;
        async move {
            let rows = s.simple_query(sql).await.unwrap();
            rows.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    let got = on_leader("BEGIN; SELECT current_user || ':' || count(*) FROM docs; COMMIT").await;
    assert_eq!(got, ["tenant_42:1"], "the relayed transaction ran as the session's role, with its path");
    // A setting made here is made there, and one reset here is reset there too.
    s.batch_execute("SET app.flag = 'on'").await.unwrap();
    let got = on_leader("BEGIN; SELECT coalesce(current_setting('app.flag', true), '') FROM docs; COMMIT").await;
    assert_eq!(got, ["on"]);
    s.batch_execute("RESET app.flag").await.unwrap();
    let got = on_leader("BEGIN; SELECT coalesce(current_setting('app.flag', true), '') FROM docs; COMMIT").await;
    assert_eq!(got, [""]);
    s.batch_execute("RESET ROLE").await.unwrap();
    let e = s.simple_query("BEGIN; SELECT count(*) FROM docs; COMMIT").await.unwrap_err();
    // Without its role, app_admin (NOINHERIT) has no use of schema `app` on the leader either.
    assert_eq!(sqlstate(&e), "42P01", "{e}");
    s.batch_execute("ROLLBACK").await.unwrap();
    s.batch_execute("SET ROLE tenant_42").await.unwrap();
    s.batch_execute("GRANT SELECT ON accounts TO tenant_42").await.unwrap_err();
    s.batch_execute("RESET ROLE").await.unwrap();
    c.client(leader(&c).await).await.batch_execute("GRANT SELECT, UPDATE ON accounts TO app_admin").await.unwrap();
    // A statement name prepared again means the new statement on the leader too.
    let first = s.prepare("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE").await.unwrap();
    let b: i64 = s.query_one(&first, &[&1i32]).await.unwrap().get(0);
    assert_eq!(b, 100);
    drop(first);
    s.batch_execute("DISCARD ALL").await.unwrap();
    let second = s.prepare("SELECT id::bigint FROM accounts WHERE id = $1 FOR UPDATE").await.unwrap();
    let id: i64 = s.query_one(&second, &[&3i32]).await.unwrap().get(0);
    assert_eq!(id, 3);
}
