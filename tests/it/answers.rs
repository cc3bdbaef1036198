//! pgmix answering for itself: a refused statement gets pgmix's own ErrorResponse in its place
//! in the response stream, with Postgres's semantics around it (an open transaction fails, a
//! pipeline skips to Sync), and no trace of how it was done (no PL/pgSQL CONTEXT).

use std::sync::atomic::Ordering::Relaxed;

use pgmix::classify::Class;

use crate::harness::{PASSWORD, TestNode, USER};
use crate::raw::{self, Msg, Raw, error_field, tags};

const PASSWORD_AUTH: &str = "[auth]\nmethod = \"password\"\n";

fn only_error(msgs: &[Msg]) -> &[u8] {
    let errors: Vec<&Msg> = msgs.iter().filter(|(t, _)| *t == b'E').collect();
    assert_eq!(errors.len(), 1, "one error in {}", tags(msgs));
    &errors[0].1
}

fn assert_pgmix_refusal(body: &[u8]) {
    assert_eq!(error_field(body, b'C').as_deref(), Some("0A000"), "{}", raw::error_text(body));
    assert!(error_field(body, b'M').unwrap_or_default().contains("two-phase"), "{}", raw::error_text(body));
    assert_eq!(error_field(body, b'W'), None, "no CONTEXT: the error is pgmix's own, not a DO block's");
    assert!(!String::from_utf8_lossy(body).contains("pgmix_refusal"), "the stand-in never shows");
}

async fn count_rows(node: &TestNode) -> i64 {
    node.pg.direct().await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_between_transactions_is_answered_without_the_backend() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    c.send(&raw::query("PREPARE TRANSACTION 'x'")).await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_pgmix_refusal(only_error(&msgs));
    assert_eq!(msgs[1].1, b"I");
    assert_eq!(
        node.handle().metrics.statements_by_class[Class::ALL.iter().position(|c| *c == Class::Refused).unwrap()]
            .load(Relaxed),
        1
    );
    // The session goes on.
    c.send(&raw::query("SELECT 1")).await;
    assert_eq!(tags(&c.until_ready().await), "TDCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_transaction_fails_the_transaction_as_postgres_would() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    node.pg.direct().await.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    c.send(&raw::query("BEGIN; INSERT INTO t VALUES (1)")).await;
    assert_eq!(tags(&c.until_ready().await), "CCZ");
    c.send(&raw::query("PREPARE TRANSACTION 'x'")).await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_pgmix_refusal(only_error(&msgs));
    assert_eq!(msgs[1].1, b"E", "the transaction is failed");
    c.send(&raw::query("SELECT 1")).await;
    let msgs = c.until_ready().await;
    assert_eq!(error_field(only_error(&msgs), b'C').as_deref(), Some("25P02"));
    c.send(&raw::query("COMMIT")).await;
    let msgs = c.until_ready().await;
    assert_eq!(msgs.last().unwrap().1, b"I");
    assert_eq!(count_rows(&node).await, 0, "the failed transaction did not commit");
    let prepared: i64 =
        node.pg.direct().await.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parse_in_a_pipeline_skips_to_sync_and_rolls_back_the_pipeline() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    node.pg.direct().await.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    let mut pipeline = Vec::new();
    pipeline.extend(raw::parse("", "INSERT INTO t VALUES (1)"));
    pipeline.extend(raw::bind(""));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::parse("s2", "COMMIT PREPARED 'x'"));
    pipeline.extend(raw::bind("s2"));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::parse("", "INSERT INTO t VALUES (2)"));
    pipeline.extend(raw::bind(""));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::sync());
    pipeline.extend(raw::parse("", "SELECT count(*) FROM t"));
    pipeline.extend(raw::bind(""));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::sync());
    c.send(&pipeline).await;
    let first = c.until_ready().await;
    assert_eq!(tags(&first), "12CEZ", "the refusal stands where its ParseComplete would, then Sync");
    assert_pgmix_refusal(only_error(&first));
    let second = c.until_ready().await;
    assert_eq!(tags(&second), "12DCZ");
    assert_eq!(raw::first_value(&second[2].1).as_deref(), Some("0"), "the pipeline's implicit transaction rolled back");
    // The refused statement name was never created.
    c.send(&[raw::bind("s2"), raw::execute(), raw::sync()].concat()).await;
    let msgs = c.until_ready().await;
    assert_eq!(error_field(only_error(&msgs), b'C').as_deref(), Some("26000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_backend_skips_after_an_earlier_error_sends_nothing() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    let mut pipeline = Vec::new();
    // Fails at Execute (a constant 1/0 would fail at Bind, when the plan folds it).
    pipeline.extend(raw::parse("", "SELECT 1 / count(*)::int FROM pg_class WHERE false"));
    pipeline.extend(raw::bind(""));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::parse("", "ROLLBACK PREPARED 'x'"));
    pipeline.extend(raw::bind(""));
    pipeline.extend(raw::execute());
    pipeline.extend(raw::sync());
    // A refusal queued behind a pipelined query is a stand-in too.
    pipeline.extend(raw::query("SELECT 1"));
    pipeline.extend(raw::query("PREPARE TRANSACTION 'y'"));
    c.send(&pipeline).await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "12EZ");
    assert_eq!(error_field(only_error(&msgs), b'C').as_deref(), Some("22012"), "only the division's error");
    assert_eq!(tags(&c.until_ready().await), "TDCZ");
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "EZ");
    assert_pgmix_refusal(only_error(&msgs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_in_a_latin1_client_encoding_is_classified_never_skipped() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    node.pg.direct().await.batch_execute("CREATE TABLE t (id int, note text)").await.unwrap();
    let mut c = Raw::login(node.port, USER, PASSWORD, &[("client_encoding", "LATIN1")]).await;
    // 'é' in LATIN1 is the single byte 0xE9, which is not UTF-8.
    let mut q = b"Q\0\0\0\0PREPARE TRANSACTION '\xe9'\0".to_vec();
    let len = (q.len() - 1) as i32;
    q[1..5].copy_from_slice(&len.to_be_bytes());
    c.send(&q).await;
    let msgs = c.until_ready().await;
    assert_pgmix_refusal(only_error(&msgs));
    let prepared: i64 =
        node.pg.direct().await.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);

    // A statement pgmix cannot read as UTF-8 is never weak: the file-less node would call this
    // insert a strong write anyway, so count what it was classified as.
    let strong_writes = |n: &TestNode| {
        n.handle().metrics.statements_by_class[Class::ALL.iter().position(|c| *c == Class::StrongWrite).unwrap()]
            .load(Relaxed)
    };
    let before = strong_writes(&node);
    let mut q = b"Q\0\0\0\0SELECT '\xe9'\0".to_vec();
    let len = (q.len() - 1) as i32;
    q[1..5].copy_from_slice(&len.to_be_bytes());
    c.send(&q).await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "TDCZ");
    assert_eq!(strong_writes(&node), before + 1, "a table-less SELECT of non-UTF-8 text counts as a strong write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_unsynced_extended_messages_waits_for_their_replies() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    // No Sync: no ReadyForQuery is due for these, but their replies are still on the way when
    // the refused Query arrives, so pgmix must not answer before them.
    let flush = [b'H', 0, 0, 0, 4];
    let mut batch =
        [raw::parse("", "SELECT pg_sleep(0.2)::text"), raw::bind(""), raw::execute(), flush.to_vec()].concat();
    batch.extend(raw::query("PREPARE TRANSACTION 'x'"));
    c.send(&batch).await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), "12DCEZ", "the refusal comes after the earlier replies");
    assert_pgmix_refusal(only_error(&msgs));
}

fn count(node: &TestNode, class: Class) -> u64 {
    node.handle().metrics.statements_by_class[Class::ALL.iter().position(|c| *c == class).unwrap()].load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_encoding_set_at_start_up_is_known_from_the_first_statement() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut c = Raw::login(node.port, USER, PASSWORD, &[("client_encoding", "SJIS")]).await;
    // Valid UTF-8, but in SJIS these bytes are other characters: pgmix cannot read it as is.
    let before = count(&node, Class::StrongWrite);
    c.send(&raw::query("SELECT 'é'")).await;
    assert_eq!(tags(&c.until_ready().await), "TDCZ");
    assert_eq!(count(&node, Class::StrongWrite), before + 1, "non-ASCII SJIS text is never weak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_backslash_escapes_on_a_refusal_cannot_hide_in_a_string() {
    let node = TestNode::start_with("allow", PASSWORD_AUTH).await;
    let mut c = Raw::login(node.port, USER, PASSWORD, &[]).await;
    c.send(&raw::query("SET standard_conforming_strings = off")).await;
    c.until_ready().await;
    // With escapes, Postgres ends the first string at the second quote, and what pgmix would
    // read as the inside of a string is a PREPARE TRANSACTION.
    c.send(&raw::query("SELECT '\\', '; PREPARE TRANSACTION $$x$$; SELECT 1 --'")).await;
    let msgs = c.until_ready().await;
    assert_pgmix_refusal(only_error(&msgs));
    let prepared: i64 =
        node.pg.direct().await.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);
}
