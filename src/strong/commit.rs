//! COMMIT of a strong transaction on the leader (steps 1 to 4 of the module `strong`).
//!
//! Before its effects are taken, pgmix sets its deferred constraints IMMEDIATE: nothing may fail
//! at COMMIT once the entry is on the log. Then, for all but SERIALIZABLE transactions, the
//! transaction is *held*: left open, its entry appended, and committed in its own session when
//! the state machine applies the entry here, with the database's applied marker in the same
//! local transaction (`consensus::apply::Held`). A SERIALIZABLE transaction is PREPAREd first,
//! so that its serialization check is done before its entry goes on the log; its entry then
//! applies here as COMMIT PREPARED. (A held transaction may hold temporary objects; PREPARE
//! refuses them.)
//!
//! Crash meaning, held: before the append, the transaction dies with its connection (nothing
//! committed). After it, the entry commits or is lost with the term; this node applies it from its
//! effects like any other node if its session is gone (the marker says whether it committed).
//! Prepared: see the module `strong`.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::tx::{Backend, error_bytes};
use super::{Strong, StrongError, failpoint};
use crate::consensus::apply::{self, Handoff};
use crate::protocol::{codec, messages};

/// The transaction's effects as `take_effects` gave them, and its isolation level.
struct Taken {
    effects: Option<String>,
    serializable: bool,
}

/// The values of the last row in a reply.
fn last_row(reply: &[u8]) -> Vec<Option<String>> {
    let row = messages::iter(reply).filter(|(tag, _)| *tag == b'D').last().map(|(_, body)| body);
    row.map(|body| {
        messages::columns(body).into_iter().map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned())).collect()
    })
    .unwrap_or_default()
}

/// The errors of a reply to pgmix's own statements: all the client is to see of it.
fn errors(reply: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    for (tag, body) in messages::iter(reply).filter(|(tag, _)| *tag == b'E') {
        out.extend_from_slice(&[tag]);
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Whether `take_effects` left effects for another chunk.
fn has_more(taken: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Taken {
        #[serde(default)]
        more: bool,
    }
    serde_json::from_str::<Taken>(taken).is_ok_and(|t| t.more)
}

/// Whether taken effects hold DDL (it is journaled where the transaction commits).
fn has_ddl(taken: &str) -> bool {
    taken.contains("\"op\": \"S\"")
}

impl Strong {
    /// Commits the open transaction, leaving the backend idle. Err: the error messages for the
    /// client.
    pub(super) async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
    ) -> std::io::Result<Result<(), BytesMut>> {
        let started = std::time::Instant::now();
        let secret = self.secret(&b.database).await?;
        let chunk = self.chunk_bytes.to_string();
        let take_sql = "SELECT pgmix_session.take_effects($1::bigint, $2), current_setting('transaction_isolation')";
        let params: [Option<&[u8]>; 2] = [Some(chunk.as_bytes()), Some(secret.as_bytes())];
        let first = codec::statements_with(&[
            ("SELECT set_config('pgmix.committing', $1, true)", &[Some(secret.as_bytes())]),
            ("SET CONSTRAINTS ALL IMMEDIATE", &[]),
            (take_sql, &params),
        ]);
        let take = codec::query_with(take_sql, &params);
        let r = b.exchange(&first).await?;
        if r.error.is_some() {
            // A deferred constraint the transaction broke, say.
            b.run("ROLLBACK").await?;
            return Ok(Err(errors(&r.bytes)));
        }
        let row = last_row(&r.bytes);
        let taken = Taken {
            effects: row.first().cloned().flatten(),
            serializable: row.get(1).cloned().flatten().as_deref() == Some("serializable"),
        };
        let Some(mut effects) = taken.effects else {
            // Nothing strong changed: an ordinary commit. What it read was current when it
            // began (`start` took a read barrier before it).
            let r = b.run("COMMIT").await?;
            if r.error.is_some() {
                return Ok(Err(BytesMut::from(r.without_ready())));
            }
            return Ok(Ok(()));
        };
        let Some(gid) = self.next_gid() else {
            b.run("ROLLBACK").await?;
            return Ok(Err(error_bytes(&StrongError::NotLeader)));
        };
        // A large transaction: all but its last chunk go on the log first (see `apply`).
        let mut chunks = 0u32;
        while has_more(&effects) {
            if let Err(e) = self.chunk(&gid, &b.database, effects).await {
                b.run("ROLLBACK").await?;
                if chunks > 0 {
                    self.abandon(&gid, &b.database).await;
                }
                return Ok(Err(error_bytes(&e)));
            }
            chunks += 1;
            self.failpoints.hit(failpoint::AFTER_CHUNK).await?;
            let r = b.exchange(&take).await?;
            if r.error.is_some() {
                b.run("ROLLBACK").await?;
                self.abandon(&gid, &b.database).await;
                return Ok(Err(errors(&r.bytes)));
            }
            effects = r.first_value.map_or_else(
                || r#"{"effects": [], "sequences": {}}"#.to_owned(),
                |v| String::from_utf8_lossy(&v).into_owned(),
            );
        }
        if chunks > 0 && self.consensus.leading_term() != apply::gid_term(&gid, self.consensus.cluster_id()) {
            // Its Commit would be logged in another term than its chunks, and abandoned.
            b.run("ROLLBACK").await?;
            return Ok(Err(error_bytes(&StrongError::TermChanged)));
        }
        let result = if taken.serializable {
            self.commit_prepared(b, &gid, effects, chunks).await?
        } else {
            self.commit_held(b, &gid, effects, chunks, &secret).await?.map_err(|e| error_bytes(&e))
        };
        match result {
            Ok(index) => {
                tracing::debug!(%gid, index, took = ?started.elapsed(), "strong commit");
                b.committed = b.committed.max(index);
                Ok(Ok(()))
            }
            Err(e) => {
                tracing::info!(%gid, "strong commit failed");
                Ok(Err(e))
            }
        }
    }

    /// PREPARE TRANSACTION, the entry, and COMMIT PREPARED when it applies here.
    async fn commit_prepared<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        gid: &str,
        effects: String,
        chunks: u32,
    ) -> std::io::Result<Result<u64, BytesMut>> {
        let r = b.run(&format!("PREPARE TRANSACTION '{gid}'")).await?;
        if r.error.is_some() {
            // A failed PREPARE rolls the transaction back; Postgres's error is the client's.
            if chunks > 0 {
                self.abandon(gid, &b.database).await;
            }
            return Ok(Err(BytesMut::from(r.without_ready())));
        }
        self.failpoints.hit(failpoint::AFTER_PREPARE).await?;
        match self.commit(gid, &b.database, effects, chunks).await {
            Ok(index) => Ok(Ok(index)),
            Err(e) => {
                if e == StrongError::NotLeader {
                    let r = b.run(&format!("ROLLBACK PREPARED '{gid}'")).await?;
                    if r.error.is_some() {
                        tracing::warn!(%gid, "could not roll back a transaction the log refused; it is resolved later");
                    }
                }
                Ok(Err(error_bytes(&e)))
            }
        }
    }

    /// The entry, with the transaction held open; committed in this session when the state
    /// machine hands it the entry.
    async fn commit_held<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        gid: &str,
        effects: String,
        chunks: u32,
        secret: &str,
    ) -> std::io::Result<Result<u64, StrongError>> {
        let held = self.consensus.held().clone();
        let mut handed = held.hold(gid);
        if let Err(e) = self.failpoints.hit(failpoint::AFTER_PREPARE).await {
            held.release(gid);
            return Err(e);
        }
        let ddl = has_ddl(&effects).then(|| effects.clone());
        let (mut write, wait) = match self.append(gid, &b.database, effects, chunks, true) {
            Ok(w) => w,
            Err(e) => {
                held.release(gid);
                b.run("ROLLBACK").await?;
                return Ok(Err(e));
            }
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let handoff = tokio::select! {
            h = &mut handed => h.ok(),
            w = &mut write => {
                if held.release(gid) {
                    // The entry applied (or failed) without this session: it rolls back; what
                    // committed is on every node from the log.
                    b.run("ROLLBACK").await?;
                    return Ok(self.outcome(w).await);
                }
                (&mut handed).await.ok()
            }
            _ = &mut deadline => {
                if held.release(gid) {
                    b.run("ROLLBACK").await?;
                    let why = format!("no majority confirmed it within {wait:?}");
                    return Ok(Err(StrongError::Unknown(why)));
                }
                (&mut handed).await.ok()
            }
        };
        let Some(Handoff { index, done }) = handoff else {
            b.run("ROLLBACK").await?;
            return Ok(Err(StrongError::Unknown("the node stopped applying the log".to_owned())));
        };
        if let Err(e) = self.failpoints.hit(failpoint::BEFORE_HELD_COMMIT).await {
            let _ = b.run("ROLLBACK").await;
            let _ = done.send(false);
            return Err(e);
        }
        let index_text = index.to_string();
        let mark = codec::query_with(
            "SELECT pgmix_session.committed($1::bigint, $2, $3::jsonb, $4)",
            &[
                Some(index_text.as_bytes()),
                Some(gid.as_bytes()),
                ddl.as_deref().map(str::as_bytes),
                Some(secret.as_bytes()),
            ],
        );
        let committed = match b.exchange(&mark).await {
            Ok(r) if r.error.is_none() => matches!(b.run("COMMIT").await, Ok(c) if c.error.is_none()),
            _ => false,
        };
        if !committed && b.status != b'I' {
            // Its locks go before the state machine applies the entry from its effects.
            let _ = b.run("ROLLBACK").await;
        }
        let _ = done.send(committed);
        match tokio::time::timeout(wait, write).await {
            Ok(w) => Ok(self.outcome(w).await),
            Err(_) => Ok(Err(StrongError::Unknown(format!("it was not applied here within {wait:?}")))),
        }
    }
}
