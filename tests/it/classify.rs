//! Classification at the node: every statement is classified and counted, client two-phase commit
//! is refused with a clear error, the schema file is checked against the database at start-up, and
//! `pgmix explain` works without a database.

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;

use pgmix::classify::Class;

use crate::harness::{TempDir, TestNode, TestPg, sqlstate};

const SCHEMA: &str = r#"
default = "strong"
[tables.posts]
consistency = "weak"
[tables.accounts]
consistency = "strong"
[tables.users]
consistency = "weak"
strong_columns = ["email"]
"#;

const SETUP: &str = "CREATE TABLE posts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text);
    CREATE TABLE accounts (id int PRIMARY KEY, balance int);
    CREATE TABLE users (id uuid PRIMARY KEY, name text, email text);";

fn count(node: &TestNode, class: Class) -> u64 {
    let i = Class::ALL.iter().position(|c| *c == class).unwrap();
    node.handle().metrics.statements_by_class[i].load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_classified_at_the_routing_point_and_counted() {
    let node = TestNode::start_with_schema(SCHEMA, SETUP).await.expect("node starts");
    let c = node.client().await;
    c.simple_query("SELECT title FROM posts").await.unwrap();
    c.simple_query("INSERT INTO posts (title) VALUES ('a')").await.unwrap();
    c.simple_query("UPDATE accounts SET balance = 1 WHERE id = 1").await.unwrap();
    // Extended protocol: classified once at Parse, then executed three times.
    let stmt = c.prepare("SELECT email FROM users WHERE id::text = $1").await.unwrap();
    for _ in 0..3 {
        c.query(&stmt, &[&uuid_like()]).await.unwrap();
    }
    assert_eq!(count(&node, Class::WeakRead), 1);
    assert_eq!(count(&node, Class::WeakWrite), 1);
    assert_eq!(count(&node, Class::StrongWrite), 1);
    assert_eq!(count(&node, Class::StrongRead), 1, "prepared once, classified once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_level_execute_has_the_class_of_what_it_runs() {
    let node = TestNode::start_with_schema(SCHEMA, SETUP).await.expect("node starts");
    let c = node.client().await;
    let before = |class| count(&node, class);
    let (weak_reads, strong_writes) = (before(Class::WeakRead), before(Class::StrongWrite));
    c.simple_query("PREPARE p(text) AS SELECT title FROM posts WHERE title = $1").await.unwrap();
    c.simple_query("EXECUTE p('a')").await.unwrap();
    c.simple_query("EXECUTE p('b')").await.unwrap();
    // PREPARE itself plus two EXECUTEs: weak reads, not strong writes.
    assert_eq!(count(&node, Class::WeakRead), weak_reads + 3);
    assert_eq!(count(&node, Class::StrongWrite), strong_writes);
    // Parameters are statements too: a writing function in them makes the EXECUTE strong.
    c.simple_query("CREATE SEQUENCE s").await.unwrap();
    c.simple_query("EXECUTE p(nextval('s')::text)").await.unwrap();
    assert_eq!(count(&node, Class::StrongWrite), strong_writes + 1);
    // The same name, deallocated and prepared again as a strong write.
    c.simple_query("DEALLOCATE p").await.unwrap();
    c.simple_query("PREPARE p(int) AS UPDATE accounts SET balance = balance + 1 WHERE id = $1").await.unwrap();
    c.simple_query("EXECUTE p(1)").await.unwrap();
    assert_eq!(count(&node, Class::StrongWrite), strong_writes + 3);
    // After DISCARD ALL the name is unknown: an EXECUTE of it is a strong write (Postgres then
    // reports that it does not exist).
    c.simple_query("DISCARD ALL").await.unwrap();
    c.simple_query("PREPARE q AS SELECT title FROM posts").await.unwrap();
    c.simple_query("DISCARD ALL").await.unwrap();
    let err = c.simple_query("EXECUTE q").await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000");
    assert_eq!(count(&node, Class::StrongWrite), strong_writes + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_search_path_other_than_the_files_makes_its_weak_statements_strong() {
    // `posts` is weak along the schema file's search_path (public); secret.posts is another,
    // unlisted (so strong) table that a session reaches by changing its search_path.
    let setup = format!("{SETUP} CREATE SCHEMA secret; CREATE TABLE secret.posts (id uuid PRIMARY KEY, title text);");
    let node = TestNode::start_with_schema(SCHEMA, &setup).await.expect("node starts");
    let c = node.client().await;
    let insert = "INSERT INTO posts (id, title) VALUES (gen_random_uuid(), 'x')";
    let weak_writes = std::cell::Cell::new(count(&node, Class::WeakWrite));
    let strong_writes = std::cell::Cell::new(count(&node, Class::StrongWrite));
    let run = |sql: &'static str, weak: bool| {
        let n = if weak { &weak_writes } else { &strong_writes };
        n.set(n.get() + 1);
        let c = &c;
        async move { c.simple_query(sql).await.unwrap() }
    };
    run(insert, true).await;
    c.simple_query("SET search_path TO secret").await.unwrap();
    run(insert, false).await;
    c.simple_query("SET search_path = public").await.unwrap();
    run(insert, true).await;
    // A change in the same text as the statement.
    run("SET search_path TO secret; INSERT INTO posts (id) VALUES (gen_random_uuid())", false).await;
    // Back to public inside a transaction that rolls back: Postgres keeps `secret`, so pgmix
    // must not believe the SET.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SET search_path TO public").await.unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    run(insert, false).await;
    c.simple_query("RESET search_path").await.unwrap();
    run(insert, true).await;
    // set_config() changes it too.
    c.simple_query("SELECT set_config('search_path', 'secret', false)").await.unwrap();
    run(insert, false).await;
    c.simple_query("DISCARD ALL").await.unwrap();
    run(insert, true).await;
    assert_eq!(count(&node, Class::WeakWrite), weak_writes.get());
    assert_eq!(count(&node, Class::StrongWrite), strong_writes.get());
    let strengthened = node.handle().metrics.strengthened_for_search_path_total.load(Relaxed);
    assert_eq!(strengthened, 4, "each strong insert above was weak by the schema file");
    // The rows really went where the search_path pointed.
    let direct = node.pg.direct().await;
    let secret: i64 = direct.query_one("SELECT count(*) FROM secret.posts", &[]).await.unwrap().get(0);
    assert_eq!(secret, 4);

    // Set at start-up.
    let mut cfg = node.config();
    cfg.options("-c search_path=secret");
    let (s, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let strong = count(&node, Class::StrongWrite);
    s.simple_query(insert).await.unwrap();
    assert_eq!(count(&node, Class::StrongWrite), strong + 1);
}

/// Runs `sql` through `c` and says whether it was counted a weak or a strong write.
async fn write_class(node: &TestNode, c: &tokio_postgres::Client, sql: &str) -> Class {
    let (weak, strong) = (count(node, Class::WeakWrite), count(node, Class::StrongWrite));
    c.simple_query(sql).await.unwrap();
    match (count(node, Class::WeakWrite) - weak, count(node, Class::StrongWrite) - strong) {
        (1, 0) => Class::WeakWrite,
        (0, 1) => Class::StrongWrite,
        other => panic!("{sql}: counted {other:?}"),
    }
}

const INSERT_POST: &str = "INSERT INTO posts (id, title) VALUES (gen_random_uuid(), 'x')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_pgmix_cannot_be_sure_of_the_search_path_weak_becomes_strong() {
    let setup = format!(
        "{SETUP} CREATE SCHEMA secret; CREATE TABLE secret.posts (id uuid PRIMARY KEY, title text); \
         CREATE FUNCTION go_secret() RETURNS text LANGUAGE sql AS $$ SELECT set_config('search_path', 'secret', false) $$;"
    );
    let node = TestNode::start_with_schema(SCHEMA, &setup).await.expect("node starts");
    let (weak, strong) = (Class::WeakWrite, Class::StrongWrite);

    // RESET and DISCARD ALL return to the start-up value, which here is not the file's.
    let mut cfg = node.config();
    cfg.options("-c search_path=secret");
    let (s, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(write_class(&node, &s, INSERT_POST).await, strong);
    s.simple_query("SET search_path = public").await.unwrap();
    assert_eq!(write_class(&node, &s, INSERT_POST).await, weak);
    s.simple_query("RESET search_path").await.unwrap();
    assert_eq!(write_class(&node, &s, INSERT_POST).await, strong, "RESET went back to `secret`");
    s.simple_query("SET search_path = public").await.unwrap();
    s.simple_query("DISCARD ALL").await.unwrap();
    assert_eq!(write_class(&node, &s, INSERT_POST).await, strong, "DISCARD ALL went back to `secret`");

    // User code can change it unseen: a DO block, a function.
    let c = node.client().await;
    assert_eq!(write_class(&node, &c, INSERT_POST).await, weak);
    c.simple_query("DO $$ BEGIN PERFORM set_config('search_path', 'secret', false); END $$").await.unwrap();
    assert_eq!(write_class(&node, &c, INSERT_POST).await, strong, "after a DO block");
    c.simple_query("RESET search_path").await.unwrap();
    assert_eq!(write_class(&node, &c, INSERT_POST).await, weak);
    c.simple_query("SELECT go_secret()").await.unwrap();
    assert_eq!(write_class(&node, &c, INSERT_POST).await, strong, "after a user function");
    c.simple_query("RESET search_path").await.unwrap();
    // SET ROLE changes what "$user" means.
    c.simple_query("SET ROLE postgres").await.unwrap();
    assert_eq!(write_class(&node, &c, INSERT_POST).await, strong, "after SET ROLE");

    // The strong inserts before SET ROLE landed in secret.posts: the strengthening was needed.
    let direct = node.pg.direct().await;
    let secret: i64 = direct.query_one("SELECT count(*) FROM secret.posts", &[]).await.unwrap().get(0);
    assert_eq!(secret, 5);

    // A prepared statement that runs user code changes the path at every EXECUTE, after any
    // number of SETs pgmix trusted.
    let p = node.client().await;
    p.simple_query("PREPARE go AS SELECT public.go_secret()").await.unwrap();
    p.simple_query("SET search_path = public").await.unwrap();
    p.simple_query("EXECUTE go").await.unwrap();
    assert_eq!(write_class(&node, &p, INSERT_POST).await, strong, "after EXECUTE of user code");
    let secret: i64 = direct.query_one("SELECT count(*) FROM secret.posts", &[]).await.unwrap().get(0);
    assert_eq!(secret, 6, "that insert went to secret.posts");

    // A role default the session never states is learned at start-up.
    direct.batch_execute(&format!("ALTER ROLE {} SET search_path = secret", crate::harness::USER)).await.unwrap();
    let r = node.client().await;
    assert_eq!(write_class(&node, &r, INSERT_POST).await, strong, "the role's default path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_after_the_role_comes_first_in_the_default_path() {
    // Postgres's default path is "$user", public: with a schema named after the login role, an
    // unqualified `posts` means that schema's table.
    let user = crate::harness::USER;
    let setup = format!(
        "{SETUP} ALTER ROLE {user} RESET search_path; CREATE SCHEMA {user}; CREATE TABLE {user}.posts (id uuid PRIMARY KEY, title text);"
    );
    let node = TestNode::start_with_schema(SCHEMA, &setup).await.expect("node starts");
    let c = node.client().await;
    assert_eq!(write_class(&node, &c, INSERT_POST).await, Class::StrongWrite);
    let direct = node.pg.direct().await;
    let mine: i64 = direct.query_one(&format!("SELECT count(*) FROM {user}.posts"), &[]).await.unwrap().get(0);
    assert_eq!(mine, 1, "the insert went to the role's own schema");
    // Where the schema is gone (and the catalog re-read after that DDL), the default path
    // resolves like the file's again.
    c.batch_execute(&format!("DROP SCHEMA {user} CASCADE")).await.unwrap();
    crate::harness::wait_until("the dropped schema is seen", || async {
        write_class(&node, &c, "INSERT INTO public.posts (id, title) VALUES (gen_random_uuid(), 'x')").await
            == Class::WeakWrite
    })
    .await;
    assert_eq!(write_class(&node, &c, INSERT_POST).await, Class::WeakWrite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_function_calls_are_strong_writes_and_complete() {
    // psql's \lo_import writes a large object through libpq's fast-path function calls.
    let node = TestNode::start().await;
    let file = node.pg.dir.0.join("blob.bin");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();
    let strong = count(&node, Class::StrongWrite);
    let import = format!("\\lo_import '{}'", file.display());
    let (ok, out, err) = crate::harness::psql(
        &node.conninfo(crate::harness::USER, crate::harness::PASSWORD, "disable"),
        &["-c", &import],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("lo_import "), "{out}");
    // lo_creat/lo_open/lowrite.../lo_close, each a FunctionCall.
    assert!(count(&node, Class::StrongWrite) >= strong + 4, "{}", count(&node, Class::StrongWrite));
    let direct = node.pg.direct().await;
    let size: i64 = direct.query_one("SELECT sum(length(data)) FROM pg_largeobject", &[]).await.unwrap().get(0);
    assert_eq!(size, 300_000);
}

fn uuid_like() -> String {
    "00000000-0000-0000-0000-000000000000".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_two_phase_commit_is_refused_with_a_clear_error() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let err = c.simple_query("PREPARE TRANSACTION 'mine'").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("two-phase commit"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("BEGIN/COMMIT"), "{:?}", db.hint());
    c.batch_execute("ROLLBACK").await.unwrap();
    // The extended protocol gets the same answer.
    let err = c.execute("COMMIT PREPARED 'mine'", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    let direct = node.pg.direct().await;
    let prepared: i64 = direct.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0, "nothing was prepared");
    assert_eq!(count(&node, Class::Refused), 2);
    // The session is fine afterwards.
    assert_eq!(c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get::<_, i64>(0), 0);
    // In the middle of a pipeline, the refusal replaces just its own statement.
    let (before, refused, after) = tokio::join!(
        c.query_one("SELECT 1::int", &[]),
        c.execute("ROLLBACK PREPARED 'mine'", &[]),
        c.query_one("SELECT 2::int", &[]),
    );
    assert_eq!(before.unwrap().get::<_, i32>(0), 1);
    assert_eq!(sqlstate(&refused.unwrap_err()), "0A000");
    assert_eq!(after.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_file_that_breaks_the_contract_stops_the_node_with_file_table_and_fix() {
    // A weak table without a primary key, and a strong column that does not exist.
    let schema =
        "[tables.logs]\nconsistency = \"weak\"\n[tables.users]\nconsistency = \"weak\"\nstrong_columns = [\"emial\"]\n";
    let setup = "CREATE TABLE logs (line text); CREATE TABLE users (id uuid PRIMARY KEY, email text);";
    let err = TestNode::start_with_schema(schema, setup).await.err().expect("start-up refused").to_string();
    assert!(err.contains("schema.toml"), "{err}");
    assert!(err.contains("logs has no primary key") && err.contains("ADD PRIMARY KEY"), "{err}");
    assert!(err.contains("no column \"emial\""), "{err}");

    // Deleting a weak post would cascade into the (unlisted, so strong) audit table.
    let schema = "[tables.posts]\nconsistency = \"weak\"\n";
    let setup = "CREATE TABLE posts (id uuid PRIMARY KEY); \
        CREATE TABLE audit (id int PRIMARY KEY, post_id uuid REFERENCES posts ON DELETE CASCADE);";
    let err = TestNode::start_with_schema(schema, setup).await.err().expect("start-up refused").to_string();
    assert!(err.contains("public.audit references weak table public.posts with ON DELETE CASCADE"), "{err}");

    // Tables that do not exist yet are fine: they may be created through pgmix later.
    let later = "[tables.future]\nconsistency = \"weak\"\nstrong_columns = [\"x\"]\n";
    TestNode::start_with_schema(later, "").await.expect("missing tables are allowed");

    let bad = "[tables.t]\nconsistency = \"weak\"\nstrong_colums = [\"a\"]\n";
    let err = TestNode::start_with_schema(bad, "").await.err().expect("unknown key refused").to_string();
    assert!(err.contains("schema.toml") && err.contains("strong_colums"), "{err}");
}

fn explain(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgmix")).arg("explain").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_prints_json_for_scripts_and_needs_no_database() {
    let dir = TempDir::new("explain");
    let path = dir.0.join("schema.toml");
    std::fs::write(&path, SCHEMA).unwrap();
    let schema = path.to_str().unwrap();
    let (ok, out, err) =
        explain(&["--schema", schema, "--json", "UPDATE users SET email = 'x', name = 'y' WHERE id = $1"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["class"], "strong_write");
    assert_eq!(v["writes"], serde_json::json!(["users.email", "users.name"]));
    assert_eq!(v["reads"], serde_json::json!(["users.id"]));
    assert!(v["reason"].as_str().unwrap().contains("users.email"), "{v}");

    let (ok, out, _) = explain(&["--schema", schema, "--json", "SELECT title FROM posts"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["class"], "weak_read");

    // Without a schema file every table is strong.
    let (ok, out, _) = explain(&["--json", "SELECT title FROM posts"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["class"], "strong_read");

    // Human-readable output names the class and the reason.
    let (ok, out, _) = explain(&["--schema", schema, "COMMIT PREPARED 'x'"]);
    assert!(ok);
    assert!(out.contains("class:  refused") && out.contains("two-phase"), "{out}");

    // A broken schema file is an error naming the file and the key.
    std::fs::write(&path, "[tables.t]\nconsistency = \"maybe\"\n").unwrap();
    let (ok, _, err) = explain(&["--schema", schema, "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("schema.toml") && err.contains("maybe"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_through_pgmix_is_rechecked_new_views_become_strong_and_problems_are_counted() {
    let schema = "default = \"weak\"\n[tables.logs]\nconsistency = \"weak\"\n";
    let node = TestNode::start_with_schema(schema, "").await.expect("node starts");
    let c = node.client().await;
    c.batch_execute("CREATE TABLE base (id int PRIMARY KEY, v int)").await.unwrap();
    c.simple_query("SELECT v FROM base").await.unwrap();
    assert_eq!(count(&node, Class::WeakRead), 1, "a weak table by default");
    c.batch_execute("CREATE VIEW summary AS SELECT * FROM base").await.unwrap();
    // The catalog is re-read in the background once the DDL is done; the view then reads strong.
    let mut strong = false;
    for _ in 0..50 {
        c.simple_query("SELECT v FROM summary").await.unwrap();
        if count(&node, Class::StrongRead) > 0 {
            strong = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(strong, "a view created through pgmix is treated as strong");
    // A weak table created without a primary key breaks the contract: counted, since the node is
    // already serving.
    c.batch_execute("CREATE TABLE logs (line text)").await.unwrap();
    let mut errors = 0;
    for _ in 0..50 {
        errors = node.handle().metrics.schema_errors.load(Relaxed);
        if errors > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(errors, 1, "the missing primary key of weak table logs is reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_clients_open_is_checked_and_resolved_against_its_own_catalog() {
    // The schema file applies in every database. `postgres` fits it; `shop` has a weak table
    // without a primary key and a view named like a weak table.
    let schema = "default = \"weak\"\n[tables.logs]\nconsistency = \"weak\"\n[tables.notes]\nconsistency = \"weak\"\n";
    let node = TestNode::start_with_schema(schema, "CREATE DATABASE shop").await.expect("node starts");
    let mut shop_direct = tokio_postgres::Config::new();
    shop_direct.host_path(node.pg.pg.socket_dir()).port(node.pg.pg.port).user("postgres").dbname("shop");
    let (direct, conn) = shop_direct.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    direct.batch_execute("CREATE TABLE logs (line text); CREATE VIEW notes AS SELECT line FROM logs").await.unwrap();
    assert_eq!(node.handle().metrics.schema_errors.load(Relaxed), 0, "postgres fits the file");

    let mut cfg = node.config();
    cfg.dbname("shop");
    let (shop, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Checked before the first statement of the first session of `shop` is classified.
    assert_eq!(node.handle().metrics.schema_errors.load(Relaxed), 1, "logs in shop has no primary key");
    let strong_reads = count(&node, Class::StrongRead);
    shop.simple_query("SELECT * FROM notes").await.unwrap();
    assert_eq!(count(&node, Class::StrongRead), strong_reads + 1, "notes is a view in shop, so strong");
    // In `postgres`, where there is no such view, the same text is weak.
    let weak_reads = count(&node, Class::WeakRead);
    node.client().await.batch_execute("CREATE TABLE notes (id int PRIMARY KEY)").await.unwrap();
    node.client().await.simple_query("SELECT * FROM notes").await.unwrap();
    assert_eq!(count(&node, Class::WeakRead), weak_reads + 1);
}

/// Garbage made of SQL words: whatever Postgres's own parser rejects, pgmix must not classify
/// weak (a weak class needs a statement the classifier understood completely). The oracle is a
/// real Postgres, not the classifier's parser: each text is sent as a Parse (it is never executed)
/// to a database without the tables it names, and a rejection counts when it is SQLSTATE 42601
/// raised by Postgres's scanner or grammar (scan.l, gram.y). Errors of later stages (no such
/// table; "subquery must return only one column", also 42601) mean the grammar accepted it.
/// Texts with several statements cannot be prepared, but Postgres parses the whole text before
/// refusing that, so a syntax error anywhere still shows; such a text is routed by its strongest
/// statement, so that is what must not be weak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_postgres_cannot_parse_is_never_classified_weak() {
    const TEXTS: usize = 3000;
    let pg = TestPg::start();
    let direct = pg.direct().await;
    let schema = pgmix::schema::Schema::from_toml_str("default = \"weak\"", "s.toml").unwrap();
    let words = [
        "SELECT", "UPDATE", "FROM", "WHERE", "(", ")", "'", "$$", ";", "t", "SET", "=", ",", "INSERT", "DO", "--", "/*",
    ];
    // xorshift64*, fixed seed: the same texts every run.
    let mut state = 42u64;
    let mut below = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545F4914F6CDD1D) % n as u64) as usize
    };
    let (mut rejected, mut parsed, mut weak) = (0, 0, Vec::new());
    for _ in 0..TEXTS {
        let n = 1 + below(12);
        let sql = (0..n).map(|_| words[below(words.len())]).collect::<Vec<_>>().join(" ");
        let grammar_error = match direct.prepare(&sql).await {
            Ok(_) => None,
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("Parse of {sql:?} failed without an error: {e}"));
                let by_parser = matches!(db.file(), Some("scan.l" | "gram.y"));
                (db.code().code() == "42601" && by_parser).then(|| db.message().to_owned())
            }
        };
        let Some(pg_says) = grammar_error else {
            parsed += 1;
            continue;
        };
        rejected += 1;
        let classes = pgmix::classify::classify(&sql, &schema);
        let class = pgmix::classify::combined(&classes);
        if matches!(class, Class::WeakRead | Class::WeakWrite) {
            let reasons: Vec<_> = classes.iter().map(|c| (c.class.as_str(), c.reason.clone())).collect();
            weak.push(format!("{sql}\n    Postgres: {pg_says}\n    pgmix: {reasons:?}"));
        }
    }
    assert!(
        weak.is_empty(),
        "{} texts that Postgres's parser rejects are classified weak by pgmix; the first ones:\n{}",
        weak.len(),
        weak.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    // The oracle said both things often enough for the check to mean something.
    assert!(rejected > TEXTS / 2 && parsed > 100, "{rejected} rejected by Postgres's parser, {parsed} not");
}
