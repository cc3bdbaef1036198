//! One strong transaction on the leader, over a backend connection logged in as the client's
//! role: the session's own connection when the client is connected to the leader, or a relay
//! connection when a follower sent the transaction (`relay`).
//!
//! The client's messages arrive in units (up to a Sync, one Query, or a COPY's data); each unit
//! is sent to Postgres as it is and its reply returned, except the COMMIT, which pgmix carries
//! out itself (see the module `strong`), and the end of a single statement outside a
//! transaction block, which pgmix commits the same way.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::wire::{self, Reply, exchange};
use super::{Strong, StrongError};
use crate::classify::TxWord;
use crate::protocol::codec::{query_bytes as query, ready_bytes as ready};

/// A backend connection the strong path drives.
pub struct Backend<S> {
    pub stream: S,
    /// Bytes read ahead from it.
    pub buf: BytesMut,
    pub database: String,
    /// Its transaction status after the last reply ('I', 'T', 'E').
    pub status: u8,
    /// The log index of the last transaction it committed through the log (0: none since it
    /// was last taken): the node that relayed it waits until it has applied that far.
    pub committed: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Backend<S> {
    pub fn new(stream: S, buf: BytesMut, database: String) -> Self {
        Self { stream, buf, database, status: b'I', committed: 0 }
    }

    pub(super) async fn exchange(&mut self, unit: &[u8]) -> std::io::Result<Reply> {
        let r = exchange(&mut self.stream, &mut self.buf, unit).await?;
        if r.status != 0 {
            self.status = r.status;
        }
        Ok(r)
    }

    pub(super) async fn run(&mut self, sql: &str) -> std::io::Result<Reply> {
        self.exchange(&query(sql)).await
    }
}

/// How a strong transaction begins.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Begin {
    /// With the client's own BEGIN statement (its text), which pgmix answered already.
    Client(String),
    /// A single statement (or unit) outside a transaction block: pgmix begins and commits it.
    Autocommit,
    /// The first unit begins the transaction itself.
    InUnit,
}

/// What begins a strong transaction. Capture is on for the transaction only: the session goes
/// on to run weak statements and temporary tables on the same backend. A unit that begins the
/// transaction itself has it on for the session until `Strong::ended_in_unit`. The client's
/// BEGIN may end in a `--` comment: what follows it starts on a line of its own.
fn begin_sql(begin: &Begin) -> String {
    match begin {
        Begin::Client(text) => format!("{text}\n;SET LOCAL pgmix.strong = on"),
        Begin::Autocommit => "BEGIN; SET LOCAL pgmix.strong = on".to_owned(),
        Begin::InUnit => "SET pgmix.strong = on".to_owned(),
    }
}

/// What one unit got.
#[derive(Debug, Default)]
pub struct UnitReply {
    pub bytes: BytesMut,
    /// The transaction is over (the backend is idle).
    pub ended: bool,
    /// The backend waits for COPY data.
    pub copy: bool,
}

/// For a unit that is one Query of several statements: each statement's text.
fn several(unit: &[u8]) -> Option<Vec<String>> {
    let mut messages = crate::protocol::messages::iter(unit);
    let (tag, body) = messages.next()?;
    if tag != b'Q' || messages.next().is_some() {
        return None;
    }
    let text = std::str::from_utf8(crate::protocol::messages::query_text(body)).ok()?;
    crate::classify::statement_texts(text)
}

pub(super) fn error_bytes(e: &StrongError) -> BytesMut {
    let mut b = BytesMut::new();
    e.to_client().encode(&mut b);
    b
}

impl Strong {
    /// Starts a strong transaction: once a majority has confirmed that this node leads and it
    /// has applied everything committed before the call, turns capture on and begins. Err: the
    /// reply for the client.
    pub async fn start<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        begin: &Begin,
    ) -> std::io::Result<Result<(), BytesMut>> {
        // Before the first read, on the leader too: its applier may lag a follower's (each of its
        // own entries waits for a COMMIT PREPARED), and a leader cut off from the majority does
        // not know it was replaced. A confirmation at COMMIT would come after the reads were
        // answered, and a ROLLBACK or a disconnect would skip it.
        if let Err(e) = self.barrier().await {
            return Ok(Err(error_bytes(&e)));
        }
        let r = b.run(&begin_sql(begin)).await?;
        if r.error.is_some() {
            return Ok(Err(BytesMut::from(r.without_ready())));
        }
        Ok(Ok(()))
    }

    /// A transaction whose first unit began it is over on this node's own backend: capture,
    /// which `start` turned on for the session, goes off.
    pub async fn ended_in_unit<S: AsyncRead + AsyncWrite + Unpin>(&self, b: &mut Backend<S>) -> std::io::Result<()> {
        b.run("RESET pgmix.strong").await.map(|_| ())
    }

    /// Runs one unit of the transaction and says what the client gets.
    pub async fn unit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        unit: &[u8],
        word: TxWord,
        autocommit: bool,
    ) -> std::io::Result<UnitReply> {
        if word == TxWord::Commit && b.status == b'T' {
            return self.commit_unit(b, unit).await;
        }
        if let Some(statements) = several(unit) {
            return self.each_statement(b, statements, autocommit).await;
        }
        let r = self.statement(b, unit).await?;
        if r.copy {
            return Ok(UnitReply { bytes: r.bytes, ended: false, copy: true });
        }
        if r.flushed {
            // The client wants its answers before it sends the rest (and its Sync).
            return Ok(UnitReply { bytes: r.bytes, ended: false, copy: false });
        }
        if !autocommit {
            return Ok(UnitReply { ended: r.status == b'I', bytes: r.bytes, copy: false });
        }
        let mut out = BytesMut::from(r.without_ready());
        // Postgres commits a simple Query's implicit transaction before it reports the command
        // complete, and an extended one's at Sync, after.
        let simple = crate::protocol::messages::iter(unit).all(|(tag, _)| tag != b'S');
        self.end_single(b, &mut out, simple).await?;
        out.extend_from_slice(&ready(b'I'));
        Ok(UnitReply { bytes: out, ended: true, copy: false })
    }

    /// Runs one unit of a statement on the backend. A statement about roles or other shared
    /// objects, for which Postgres fires no event trigger, also notes what it did in the
    /// transaction's effects (see `migrations/0007`); if that fails, so does the statement.
    async fn statement<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        unit: &[u8],
    ) -> std::io::Result<Reply> {
        use crate::classify::Global;
        use crate::protocol::codec::query_with;
        let Some((global, sql)) = global_statement(unit) else { return b.exchange(unit).await };
        let secret = self.secret(&b.database).await?;
        let before = match global {
            Global::Roles => {
                let r =
                    b.exchange(&query_with("SELECT pgmix_session.roles_state($1)", &[Some(secret.as_bytes())])).await?;
                if r.error.is_some() {
                    return Ok(r);
                }
                r.first_value
            }
            _ => None,
        };
        let r = b.exchange(unit).await?;
        if r.error.is_some() || r.flushed || r.copy {
            return Ok(r);
        }
        let note = match global {
            Global::Roles => {
                let before = before.unwrap_or_default();
                query_with("SELECT pgmix_session.note_roles($1::jsonb, $2)", &[Some(&before), Some(secret.as_bytes())])
            }
            _ => query_with(
                "SELECT pgmix_session.note_statement($1, current_setting('search_path'), $2)",
                &[Some(sql.as_bytes()), Some(secret.as_bytes())],
            ),
        };
        let n = b.exchange(&note).await?;
        if n.error.is_none() {
            return Ok(r);
        }
        // The statement did its work here, but it cannot travel: it fails.
        let mut bytes = BytesMut::from(r.without_ready());
        drop_last_complete(&mut bytes);
        for (tag, body) in crate::protocol::messages::iter(&n.bytes).filter(|(tag, _)| matches!(tag, b'E' | b'Z')) {
            bytes.extend_from_slice(&[tag]);
            bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        Ok(Reply { bytes, status: n.status, error: n.error, ..Reply::default() })
    }

    /// Ends the transaction pgmix began for a single statement: commits it, or rolls back a
    /// failed one. An error for the client goes to `out`; when the statement came in a simple
    /// Query (`simple`) the error takes the place of its CommandComplete, as Postgres reports a
    /// failed implicit commit, so a client is never told a statement completed that did not.
    async fn end_single<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        out: &mut BytesMut,
        simple: bool,
    ) -> std::io::Result<()> {
        match b.status {
            b'T' => {
                if let Err(e) = self.finish(b).await? {
                    if simple {
                        drop_last_complete(out);
                    }
                    out.extend_from_slice(&e);
                }
            }
            b'E' => {
                b.run("ROLLBACK").await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A Query of several statements runs them one by one, as Postgres would in one transaction:
    /// DDL is logged statement by statement, and a COMMIT among them is pgmix's own. It stops at
    /// the first error, as Postgres does.
    async fn each_statement<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        statements: Vec<String>,
        autocommit: bool,
    ) -> std::io::Result<UnitReply> {
        let mut out = BytesMut::new();
        let mut rest = statements.into_iter();
        while let Some(sql) = rest.next() {
            if crate::classify::words::words(&sql).word == TxWord::Commit && b.status == b'T' {
                let c = self.commit_unit(b, &query(&sql)).await?;
                out.extend_from_slice(&c.bytes[..c.bytes.len() - 6]);
                let after: Vec<String> = rest.collect();
                if !after.is_empty() {
                    // Whatever follows the COMMIT runs as Postgres would run it, outside.
                    let r = b.run(&after.join("; ")).await?;
                    out.extend_from_slice(r.without_ready());
                }
                out.extend_from_slice(&ready(b.status));
                return Ok(UnitReply { ended: b.status == b'I', bytes: out, copy: false });
            }
            let r = self.statement(b, &query(&sql)).await?;
            out.extend_from_slice(r.without_ready());
            if r.error.is_some() {
                break;
            }
        }
        if autocommit {
            self.end_single(b, &mut out, true).await?;
        }
        out.extend_from_slice(&ready(b.status));
        Ok(UnitReply { ended: b.status == b'I', bytes: out, copy: false })
    }

    /// The client's COMMIT: carried out by `finish`, then the client's own message runs on the
    /// idle backend for the reply its protocol expects (less the "no transaction" warning).
    async fn commit_unit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        unit: &[u8],
    ) -> std::io::Result<UnitReply> {
        match self.finish(b).await? {
            Ok(()) => {
                let r = b.exchange(unit).await?;
                Ok(UnitReply { bytes: wire::drop_notices(&r.bytes, "25P01"), ended: true, copy: false })
            }
            Err(mut e) => {
                e.extend_from_slice(&ready(b'I'));
                Ok(UnitReply { bytes: e, ended: true, copy: false })
            }
        }
    }

    /// Sends COPY data on (no reply comes until the COPY ends).
    pub async fn copy_data<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        b: &mut Backend<S>,
        data: &[u8],
    ) -> std::io::Result<()> {
        b.stream.write_all(data).await
    }
}

/// The statement of a unit (a Query of one statement, or the statement a Parse in it prepares)
/// when it is about shared objects.
fn global_statement(unit: &[u8]) -> Option<(crate::classify::Global, String)> {
    let text = crate::protocol::messages::iter(unit).find_map(|(tag, body)| match tag {
        b'Q' => Some(crate::protocol::messages::query_text(body)),
        b'P' => Some(crate::protocol::messages::parse_message(body).1),
        _ => None,
    })?;
    let text = String::from_utf8_lossy(text).into_owned();
    let global = crate::classify::words::words(&text).global?;
    Some((global, text))
}

/// Removes the last message of `out` when it is a CommandComplete.
fn drop_last_complete(out: &mut BytesMut) {
    let mut offset = 0;
    let mut last = None;
    for (tag, body) in crate::protocol::messages::iter(out) {
        last = Some((tag, offset));
        offset += 5 + body.len();
    }
    if let Some((b'C', at)) = last {
        out.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_failed_implicit_commit_takes_the_place_of_the_last_command_complete() {
        let rows = message(b'D', b"\0\x01\0\0\0\x011");
        let done = message(b'C', b"INSERT 0 2\0");
        let mut out = BytesMut::from([rows.clone(), done.clone()].concat().as_slice());
        drop_last_complete(&mut out);
        assert_eq!(&out[..], &rows[..]);
        // Nothing else is removed.
        drop_last_complete(&mut out);
        assert_eq!(&out[..], &rows[..]);
        let mut only = BytesMut::from(done.as_slice());
        drop_last_complete(&mut only);
        assert!(only.is_empty());
    }
}
