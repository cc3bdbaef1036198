//! The units a strong transaction runs in: the client messages that get one reply together. A
//! unit is one Query, or extended-protocol messages up to their Sync, or one COPY data message
//! (the end of a COPY started by a Query is a unit of its own; one started by Execute runs up to
//! the Sync after it, which is when Postgres answers it). Pure: messages in, units out.

use bytes::BytesMut;

use crate::classify::{Standalone, TxWord, Words};

/// One unit of client messages.
#[derive(Debug, Default)]
pub struct Unit {
    pub bytes: BytesMut,
    /// The last transaction word among its statements: what the unit does to the transaction.
    pub word: TxWord,
    /// Its first statement begins a transaction block.
    pub begins: bool,
    /// A Query of one statement that runs on every node on its own (see `Strong::run_standalone`).
    pub standalone: Option<Standalone>,
    /// The client said goodbye (Terminate); nothing after it counts.
    pub terminate: bool,
    /// Messages of a COPY under way (its data, and a Flush or Sync sent before its end, which the
    /// backend ignores in copy-in): sent on, with no reply to wait for.
    pub copy_data: bool,
}

impl Unit {
    /// Whether it is COPY data (see `copy_data`).
    pub fn is_copy_data(&self) -> bool {
        self.copy_data
    }

    /// Whether it came by the extended protocol (not a Query).
    pub fn extended(&self) -> bool {
        self.bytes.first() != Some(&b'Q')
    }
}

/// Collects client messages into units.
#[derive(Debug, Default)]
pub struct Units {
    unit: Unit,
    /// A COPY from the client is under way (Some), started by Execute (true: its end waits for
    /// the Sync after it).
    copying: Option<bool>,
    /// The end of a COPY started by Execute came: the unit runs to the Sync.
    awaiting_sync: bool,
}

impl Units {
    /// Messages that go in front of the next unit (a BEGIN pgmix held and did not answer): the
    /// unit begins the transaction.
    pub fn prepend(&mut self, held: &[u8]) {
        self.unit.bytes.extend_from_slice(held);
        self.unit.begins = true;
    }

    /// The reply to the last unit started a COPY from the client; `by_execute` when the unit
    /// was extended.
    pub fn copy_started(&mut self, by_execute: bool) {
        self.copying = Some(by_execute);
    }

    /// Adds one whole message (`tag`, `msg` with its header); `words` for a statement it runs
    /// (a Query, a Parse, a Bind of a known statement). A finished unit comes out.
    pub fn push(&mut self, tag: u8, msg: &[u8], words: Option<Words>) -> Option<Unit> {
        if tag == b'X' {
            self.unit.terminate = true;
            return Some(std::mem::take(&mut self.unit));
        }
        if let Some(w) = words {
            if w.word != TxWord::Other {
                self.unit.word = w.word;
            }
            if self.unit.bytes.is_empty() {
                self.unit.begins = w.begins;
            }
            if tag == b'Q' && self.unit.bytes.is_empty() {
                self.unit.standalone = w.standalone;
            }
        }
        self.unit.bytes.extend_from_slice(msg);
        let done = match (self.copying, tag) {
            (Some(_), b'd' | b'H' | b'S') if self.unit.bytes.len() == msg.len() => {
                self.unit.copy_data = true;
                true
            }
            (Some(by_execute), b'c' | b'f') => {
                self.copying = None;
                // The end of a COPY started by Execute is answered only at the Sync after it.
                self.awaiting_sync = by_execute;
                !by_execute
            }
            (_, b'S') => {
                self.awaiting_sync = false;
                true
            }
            // A Flush asks for the answers so far: the client may wait for them.
            (_, b'Q' | b'H') => !self.awaiting_sync,
            _ => false,
        };
        done.then(|| std::mem::take(&mut self.unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(word: TxWord, begins: bool) -> Option<Words> {
        Some(Words { word, begins, ..Words::OTHER })
    }

    #[test]
    fn a_query_is_a_unit_and_extended_messages_run_to_their_sync() {
        let mut u = Units::default();
        let q = u.push(b'Q', b"Q....COMMIT\0", w(TxWord::Commit, false)).expect("a query is a unit");
        assert_eq!(q.word, TxWord::Commit);
        assert!(!q.extended());
        assert!(u.push(b'P', b"P..begin", w(TxWord::Begin, true)).is_none());
        assert!(u.push(b'B', b"B..", w(TxWord::Begin, true)).is_none());
        assert!(u.push(b'E', b"E..", None).is_none());
        assert!(u.push(b'P', b"P..update", w(TxWord::Other, false)).is_none());
        let unit = u.push(b'S', b"S....", None).expect("Sync ends it");
        assert!(unit.begins);
        assert_eq!(unit.word, TxWord::Begin);
        assert!(unit.extended());
    }

    #[test]
    fn a_held_begin_goes_first_and_copy_by_execute_ends_at_sync() {
        let mut u = Units::default();
        u.prepend(b"P..BEGIN");
        let unit = u.push(b'Q', b"Q..", w(TxWord::Other, false)).unwrap();
        assert!(unit.begins);
        assert!(unit.bytes.starts_with(b"P..BEGIN"));
        u.copy_started(true);
        assert!(u.push(b'd', b"d..", None).unwrap().is_copy_data());
        // A Sync and a Flush the client sent before its data are passed on with it.
        assert!(u.push(b'S', b"S..", None).unwrap().is_copy_data());
        assert!(u.push(b'H', b"H..", None).unwrap().is_copy_data());
        assert!(u.push(b'c', b"c..", None).is_none());
        assert!(u.push(b'H', b"H..", None).is_none());
        let end = u.push(b'S', b"S..", None).unwrap();
        assert!(!end.is_copy_data());
        assert_eq!(&end.bytes[..], b"c..H..S..");
        u.copy_started(false);
        assert!(u.push(b'c', b"c..", None).is_some());
        assert!(!u.push(b'S', b"S..", None).unwrap().is_copy_data());
        assert!(u.push(b'X', b"X..", None).unwrap().terminate);
    }
}
