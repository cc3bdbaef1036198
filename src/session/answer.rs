//! pgmix answering a client itself, in a statement's place in the response stream.
//!
//! A refused statement must fail as if Postgres had refused it: its ErrorResponse arrives where
//! that statement's reply would have, a pipeline after it is skipped up to its Sync, and an open
//! transaction becomes failed (every later statement gets 25P02 until ROLLBACK). Two ways, both
//! without any SQL of pgmix's reaching the client's view:
//!
//! - **Direct**, for a simple Query between transactions with nothing in flight: the session
//!   writes ErrorResponse and ReadyForQuery(idle) itself and the backend never sees the statement.
//!   Nothing is open in the backend for the error to abort, so there is nothing else to do.
//! - **Stand-in**, everywhere else: the statement is replaced by one that fails in the backend at
//!   once (a Query, or a Parse under the same statement name, naming a column that cannot exist).
//!   The backend then does what Postgres does after an error: aborts the open transaction, skips
//!   the rest of the pipeline to Sync, and reports the right transaction status. The session
//!   swaps the stand-in's ErrorResponse for pgmix's own. The column name carries a per-session
//!   random marker and a sequence number, so only a stand-in's error is ever swapped; when the
//!   backend skips a stand-in (an earlier statement of the pipeline failed), no error comes for
//!   it, exactly as Postgres would have sent none for the refused statement, and the stand-in is
//!   forgotten at the next ReadyForQuery that leaves nothing in flight.
//!
//! Crash meaning: none; this is per-session protocol state.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};

use crate::sqlstate::ClientError;

/// Stand-ins of one session that the backend has not answered yet.
pub struct Answers {
    /// `pgmix_refusal_<random>_`; a stand-in's column is this plus its sequence number.
    marker: String,
    next: u64,
    pending: VecDeque<(u64, ClientError)>,
}

impl Default for Answers {
    fn default() -> Self {
        Self::new(rand::random())
    }
}

impl Answers {
    pub fn new(nonce: u64) -> Self {
        Self { marker: format!("pgmix_refusal_{nonce:016x}_"), next: 0, pending: VecDeque::new() }
    }

    /// True while a stand-in's answer may still come (the data path checks errors only then).
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// ErrorResponse and ReadyForQuery with `status` ('I', 'T', 'E'): a complete answer to a
    /// simple Query.
    pub fn direct(e: &ClientError, status: u8) -> BytesMut {
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        buf.put_u8(b'Z');
        buf.put_i32(5);
        buf.put_u8(status);
        buf
    }

    fn stand_in_sql(&mut self, e: ClientError) -> String {
        let seq = self.next;
        self.next += 1;
        self.pending.push_back((seq, e));
        format!("SELECT \"{}{seq}\"", self.marker)
    }

    /// A Query that fails in the backend with this stand-in's error.
    pub fn stand_in_query(&mut self, e: ClientError) -> BytesMut {
        let sql = self.stand_in_sql(e);
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32((4 + sql.len() + 1) as i32);
        buf.put_slice(sql.as_bytes());
        buf.put_u8(0);
        buf
    }

    /// A Parse of statement `name` (raw bytes, as the client sent them) that fails in the backend.
    pub fn stand_in_parse(&mut self, name: &[u8], e: ClientError) -> BytesMut {
        let sql = self.stand_in_sql(e);
        let mut buf = BytesMut::new();
        buf.put_u8(b'P');
        buf.put_i32((4 + name.len() + 1 + sql.len() + 1 + 2) as i32);
        buf.put_slice(name);
        buf.put_u8(0);
        buf.put_slice(sql.as_bytes());
        buf.put_u8(0);
        buf.put_i16(0);
        buf
    }

    /// For the body of an ErrorResponse from the backend: pgmix's own ErrorResponse to send in its
    /// place when it is a stand-in's. Stand-ins older than the one answered were skipped by the
    /// backend and are dropped.
    pub fn substitute(&mut self, body: &[u8]) -> Option<BytesMut> {
        let at = find(body, self.marker.as_bytes())? + self.marker.len();
        let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let seq: u64 = std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()?;
        while let Some((s, e)) = self.pending.pop_front() {
            if s == seq {
                let mut buf = BytesMut::new();
                e.encode(&mut buf);
                return Some(buf);
            }
        }
        None
    }

    /// Nothing is in flight any more: stand-ins without an answer were skipped by the backend.
    pub fn settle(&mut self) {
        self.pending.clear();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlstate::code;

    fn backend_error_naming(column: &str) -> Vec<u8> {
        format!("SERROR\0C42703\0Mcolumn \"{column}\" does not exist\0\0").into_bytes()
    }

    fn refusal(n: u32) -> ClientError {
        ClientError::error(code::FEATURE_NOT_SUPPORTED, format!("refused {n}"))
    }

    #[test]
    fn a_stand_ins_error_is_swapped_for_pgmix_s_own() {
        let mut a = Answers::new(7);
        let q = a.stand_in_query(refusal(1));
        let sql = std::str::from_utf8(&q[5..q.len() - 1]).unwrap();
        assert_eq!(sql, "SELECT \"pgmix_refusal_0000000000000007_0\"");
        let own = a.substitute(&backend_error_naming("pgmix_refusal_0000000000000007_0")).expect("swapped");
        assert!(String::from_utf8_lossy(&own).contains("refused 1"));
        assert!(!a.waiting());
    }

    #[test]
    fn errors_that_are_not_a_stand_ins_pass_untouched() {
        let mut a = Answers::new(7);
        let _ = a.stand_in_query(refusal(1));
        assert!(a.substitute(b"SERROR\0C25P02\0Mcurrent transaction is aborted\0\0").is_none());
        // Another session's marker (another nonce) is not ours.
        assert!(a.substitute(&backend_error_naming("pgmix_refusal_0000000000000008_0")).is_none());
        assert!(a.waiting());
        a.settle();
        assert!(!a.waiting());
    }

    #[test]
    fn skipped_stand_ins_are_dropped_when_a_later_one_answers() {
        let mut a = Answers::new(1);
        let _ = a.stand_in_parse(b"s1", refusal(1));
        let _ = a.stand_in_parse(b"", refusal(2));
        let own = a.substitute(&backend_error_naming("pgmix_refusal_0000000000000001_1")).expect("second");
        assert!(String::from_utf8_lossy(&own).contains("refused 2"));
        assert!(!a.waiting());
    }

    #[test]
    fn stand_in_parse_keeps_the_statement_name() {
        let mut a = Answers::new(1);
        let p = a.stand_in_parse(b"stmt\xe9", refusal(1));
        assert_eq!(p[0], b'P');
        assert_eq!(i32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize, p.len() - 1);
        assert!(p[5..].starts_with(b"stmt\xe9\0SELECT \"pgmix_refusal_"));
        assert!(p.ends_with(b"\0\0\0"));
    }

    #[test]
    fn a_direct_answer_ends_with_ready_for_query() {
        let buf = Answers::direct(&refusal(1), b'I');
        assert_eq!(buf[0], b'E');
        assert_eq!(&buf[buf.len() - 6..], &[b'Z', 0, 0, 0, 5, b'I']);
    }
}
