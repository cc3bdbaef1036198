//! A BEGIN that pgmix holds instead of running it: in a cluster, where a transaction runs (here,
//! or on the leader) is decided by its first statement that reads or writes data, so its BEGIN
//! cannot be sent anywhere before that statement arrives.
//!
//! A BEGIN comes as a simple Query, or by the extended protocol (Parse, Bind, Describe, Execute,
//! Close of a BEGIN statement, as pgjdbc, Npgsql, psycopg pipelines, pg8000 and `pgbench -M
//! extended` send it), alone or pipelined with the transaction's first statements before one
//! Sync. pgmix holds its messages as they came. When the client needs their replies (the Query,
//! a Sync, a Flush) before the deciding statement has come, pgmix answers them itself, exactly
//! as Postgres would (`answer`); the held messages are then sent where the transaction goes and
//! their replies there are not the client's.
//!
//! Crash meaning: none; this is per-session protocol state. A client whose BEGIN pgmix answered
//! and that goes away has nothing open anywhere.

use bytes::BytesMut;

use crate::protocol::{codec, messages};

/// The client's BEGIN, held.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// The BEGIN's messages, exactly as the client sent them.
    pub held: BytesMut,
    /// The BEGIN's text (with its options), to begin the transaction with where it runs.
    pub text: String,
    /// A Query, or an Execute of the bound BEGIN: the client's transaction has begun.
    pub executed: bool,
    /// pgmix has answered the held messages: their replies elsewhere are not the client's.
    pub answered: bool,
    /// The portal a held Bind made, if any.
    portal: Option<Vec<u8>>,
}

impl Deferred {
    /// A simple-Query BEGIN (it needs its answer at once).
    pub fn query(msg: &[u8], text: &[u8]) -> Self {
        Self {
            held: BytesMut::from(msg),
            text: String::from_utf8_lossy(text).into_owned(),
            executed: true,
            answered: false,
            portal: None,
        }
    }

    /// The first extended-protocol message of a BEGIN: a Parse of it (`text`), or a Bind of a
    /// statement that is one.
    pub fn extended(msg: &[u8], text: &[u8]) -> Self {
        let mut d = Self {
            held: BytesMut::new(),
            text: String::from_utf8_lossy(text).into_owned(),
            executed: false,
            answered: false,
            portal: None,
        };
        d.hold(msg);
        d
    }

    /// Whether a message of the client's belongs to the held BEGIN (and should be held with it):
    /// a Bind of the BEGIN statement, Describe, Execute or Close of it or its portal. `is_begin`
    /// says whether a statement name is a BEGIN statement.
    pub fn takes(&self, tag: u8, body: &[u8], is_begin: impl Fn(&[u8]) -> bool) -> bool {
        if self.answered {
            return false;
        }
        match tag {
            b'B' => is_begin(messages::bind_statement(body)),
            b'D' | b'C' => match messages::target(body) {
                (b'S', name) => is_begin(name),
                (b'P', name) => self.portal.as_deref() == Some(name),
                _ => false,
            },
            b'E' => self.portal.as_deref() == Some(until_nul(body)),
            _ => false,
        }
    }

    /// Holds one more message of the BEGIN.
    pub fn hold(&mut self, msg: &[u8]) {
        match msg.first() {
            Some(b'B') => self.portal = Some(until_nul(&msg[5..]).to_vec()),
            Some(b'E') => self.executed = true,
            _ => {}
        }
        self.held.extend_from_slice(msg);
    }

    /// pgmix's own replies to the held messages, as Postgres would give them, and with `ready`
    /// a ReadyForQuery after them (in a transaction, once it has begun). They are answered from
    /// now on.
    pub fn answer(&mut self, ready: bool) -> BytesMut {
        let mut out = BytesMut::new();
        if !self.answered {
            for (tag, body) in messages::iter(&self.held) {
                match tag {
                    b'P' => codec::parse_complete(&mut out),
                    b'B' => codec::bind_complete(&mut out),
                    b'D' => {
                        if messages::target(body).0 == b'S' {
                            codec::no_parameters(&mut out);
                        }
                        codec::no_data(&mut out);
                    }
                    b'E' => codec::command_complete(crate::classify::words::begin_tag(&self.text), &mut out),
                    b'C' => codec::close_complete(&mut out),
                    b'Q' => {
                        codec::command_complete(crate::classify::words::begin_tag(&self.text), &mut out);
                    }
                    _ => {}
                }
            }
            self.answered = true;
        }
        if ready {
            codec::ready(if self.executed { b'T' } else { b'I' }, &mut out);
        }
        out
    }

    /// The names of the statements the held messages prepare (the local backend does not have
    /// them when the held messages never reach it).
    pub fn prepared_names(&self) -> impl Iterator<Item = &[u8]> {
        messages::iter(&self.held).filter(|(tag, _)| *tag == b'P').map(|(_, body)| messages::parse_message(body).0)
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn tags(b: &[u8]) -> Vec<u8> {
        messages::iter(b).map(|(t, _)| t).collect()
    }

    #[test]
    fn an_extended_begin_is_answered_as_postgres_would() {
        let parse = msg(b'P', b"\0BEGIN\0\0\0");
        let mut d = Deferred::extended(&parse, b"BEGIN");
        let is_begin = |name: &[u8]| name.is_empty();
        let bind = msg(b'B', b"\0\0\0\0\0\0\0\0");
        assert!(d.takes(b'B', &bind[5..], is_begin));
        d.hold(&bind);
        let describe = msg(b'D', b"P\0");
        assert!(d.takes(b'D', &describe[5..], is_begin));
        d.hold(&describe);
        let execute = msg(b'E', b"\0\0\0\0\0");
        assert!(d.takes(b'E', &execute[5..], is_begin));
        d.hold(&execute);
        assert!(d.executed);
        let out = d.answer(true);
        assert_eq!(tags(&out), b"12nCZ");
        assert!(out.ends_with(b"Z\0\0\0\x05T"));
        assert!(String::from_utf8_lossy(&out).contains("BEGIN"));
        // Answered: nothing more is held, and a second answer is only the ReadyForQuery.
        assert!(!d.takes(b'E', &execute[5..], is_begin));
        assert_eq!(tags(&d.answer(true)), b"Z");
        assert_eq!(d.prepared_names().collect::<Vec<_>>(), vec![&b""[..]]);
    }

    #[test]
    fn other_statements_and_portals_are_not_the_begin_s() {
        let d = Deferred::extended(&msg(b'B', b"p1\0S_1\0\0\0\0\0\0\0"), b"START TRANSACTION");
        let is_begin = |name: &[u8]| name == b"S_1";
        assert!(!d.takes(b'B', b"\0S_2\0\0\0\0\0\0\0", is_begin));
        assert!(!d.takes(b'E', b"\0\0\0\0\0", is_begin));
        assert!(d.takes(b'E', b"p1\0\0\0\0\0", is_begin));
        assert!(d.takes(b'D', b"SS_1\0", is_begin));
        assert!(!d.takes(b'D', b"SS_2\0", is_begin));
        assert!(!d.takes(b'Q', b"COMMIT\0", is_begin));
    }

    #[test]
    fn a_begin_prepared_but_not_executed_leaves_the_session_idle() {
        let mut d = Deferred::extended(&msg(b'P', b"S_1\0BEGIN\0\0\0"), b"BEGIN");
        let out = d.answer(true);
        assert_eq!(tags(&out), b"1Z");
        assert!(out.ends_with(b"I"));
    }

    #[test]
    fn a_replay_compares_the_replies_whatever_their_notices() {
        let mut r = Replay::new(Some("BEGIN".into()));
        assert!(r.sent(&msg(b'Q', b"SET LOCAL work_mem = '8MB'\0")));
        assert!(r.whole());
        assert!(r.sent(&msg(b'P', b"\0SHOW work_mem\0\0\0")));
        assert!(!r.whole());
        assert!(r.sent(&msg(b'S', b"")));
        assert_eq!(r.units.len(), 2);
        let here =
            [msg(b'C', b"SET\0"), msg(b'Z', b"T"), msg(b'1', b""), msg(b'D', b"\0\x01\0\0\0\x038MB"), msg(b'Z', b"T")];
        for m in &here {
            r.reply(m[0], &m[5..]);
        }
        let there = [here[0].clone(), msg(b'N', b"SNOTICE\0Mhi\0\0"), here[1].clone(), here[2..].concat()].concat();
        assert_eq!(r.digest(), Replay::digest_of(&[&there]));
        let other = [here[..3].concat(), msg(b'D', b"\0\x01\0\0\0\x034MB"), here[4].clone()].concat();
        assert_ne!(r.digest(), Replay::digest_of(&[&other]));
    }

    #[test]
    fn a_simple_begin_is_its_command_complete() {
        let q = msg(b'Q', b"start transaction isolation level serializable\0");
        let mut d = Deferred::query(&q, b"start transaction isolation level serializable");
        let out = d.answer(true);
        assert_eq!(tags(&out), b"CZ");
        assert!(String::from_utf8_lossy(&out).contains("START TRANSACTION"));
    }
}

/// A transaction that began here with statements that do not decide where it runs (SET LOCAL,
/// SAVEPOINT, SHOW, ...): what ran, recorded, so that if a strong statement comes it can run
/// again on the leader, and the replies compared with those the client got.
#[derive(Debug)]
pub struct Replay {
    /// The BEGIN's text when pgmix answered it (the leader begins with it); None when the
    /// BEGIN's own messages are the start of `units`.
    pub begin: Option<String>,
    /// The client's units that ran here, in order, each up to its Sync (or a Query).
    pub units: Vec<BytesMut>,
    /// The unit being sent.
    current: BytesMut,
    /// The replies the client got to them, hashed (without notices, parameter statuses and
    /// notifications, which may differ between nodes).
    hash: std::collections::hash_map::DefaultHasher,
    bytes: usize,
}

/// Past this many bytes of recorded units a transaction is decided: it runs here.
pub const REPLAY_LIMIT: usize = 1 << 20;

impl Replay {
    pub fn new(begin: Option<String>) -> Self {
        Self { begin, units: Vec::new(), current: BytesMut::new(), hash: Default::default(), bytes: 0 }
    }

    /// A client message that ran here; false when the record grew too large to keep.
    pub fn sent(&mut self, msg: &[u8]) -> bool {
        self.bytes += msg.len();
        self.current.extend_from_slice(msg);
        if matches!(msg.first(), Some(b'S' | b'Q')) {
            self.units.push(std::mem::take(&mut self.current));
        }
        self.bytes <= REPLAY_LIMIT
    }

    /// Whether every unit that ran is complete (ended at its Sync or was a Query).
    pub fn whole(&self) -> bool {
        self.current.is_empty()
    }

    /// A reply message the client got.
    pub fn reply(&mut self, tag: u8, body: &[u8]) {
        use std::hash::Hasher;
        if !matches!(tag, b'N' | b'S' | b'A') {
            self.hash.write_u8(tag);
            self.hash.write(body);
        }
    }

    /// A piece of a reply message too large to look at whole.
    pub fn piece(&mut self, bytes: &[u8]) {
        use std::hash::Hasher;
        self.hash.write(bytes);
    }

    pub fn digest(&self) -> u64 {
        use std::hash::Hasher;
        self.hash.finish()
    }

    /// The digest the same replies, got elsewhere whole, have.
    pub fn digest_of(replies: &[&[u8]]) -> u64 {
        let mut r = Replay::new(None);
        for reply in replies {
            for (tag, body) in messages::iter(reply) {
                r.reply(tag, body);
            }
        }
        r.digest()
    }
}
