//! Message framing for the forwarding data path.
//!
//! After start-up every message is a type byte, a big-endian `i32` length that counts itself, and
//! a body. The session only needs to *look* at a few message types (a Query, a Parse, a
//! ReadyForQuery); everything else, DataRow above all, is passed through as bytes, and a large
//! message is passed through in pieces as it arrives so that memory stays flat whatever its size.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{}'", *tag as char)]
    BadLength { tag: u8, len: i32 },
    #[error("message of type '{}' is {len} bytes, over the limit of {max} bytes", *tag as char)]
    TooLarge { tag: u8, len: usize, max: usize },
}

/// One step of scanning a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A whole message sits at the front of the buffer: `len` bytes including type and length.
    Message { tag: u8, body: &'a [u8], len: usize },
    /// The front `n` bytes belong to a message that is passed through uninspected.
    Pass(usize),
    /// Nothing more can be decided until more bytes arrive.
    Incomplete,
}

/// Scanner state for one direction of one connection.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    /// Bytes of a pass-through message that have not arrived yet.
    pending: usize,
    /// Largest message that is held whole for inspection.
    max_whole: usize,
}

impl Framer {
    pub fn new(max_whole: usize) -> Self {
        Self { pending: 0, max_whole }
    }

    /// True while the stream is inside a message, so nothing may be injected into it.
    pub fn mid_message(&self) -> bool {
        self.pending > 0
    }

    /// Scans the front of `buf`. `inspect(tag)` says whether a message of that type must be seen
    /// whole; others may be passed through in pieces.
    pub fn step<'a>(&mut self, buf: &'a [u8], inspect: impl Fn(u8) -> bool) -> Result<Step<'a>, FrameError> {
        if self.pending > 0 {
            if buf.is_empty() {
                return Ok(Step::Incomplete);
            }
            let n = self.pending.min(buf.len());
            self.pending -= n;
            return Ok(Step::Pass(n));
        }
        if buf.len() < 5 {
            return Ok(Step::Incomplete);
        }
        let tag = buf[0];
        let raw_len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if raw_len < 4 {
            return Err(FrameError::BadLength { tag, len: raw_len });
        }
        let len = raw_len as usize + 1;
        if buf.len() >= len {
            return Ok(Step::Message { tag, body: &buf[5..len], len });
        }
        if inspect(tag) {
            if len > self.max_whole {
                return Err(FrameError::TooLarge { tag, len, max: self.max_whole });
            }
            return Ok(Step::Incomplete);
        }
        self.pending = len - buf.len();
        Ok(Step::Pass(buf.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn whole_messages_are_returned_one_by_one() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend(msg(b'Z', b"I"));
        let mut f = Framer::new(1024);
        let Step::Message { tag, body, len } = f.step(&buf, |_| true).unwrap() else { panic!() };
        assert_eq!((tag, body, len), (b'Q', &b"select 1\0"[..], 14));
        let Step::Message { tag, body, .. } = f.step(&buf[len..], |_| true).unwrap() else { panic!() };
        assert_eq!((tag, body), (b'Z', &b"I"[..]));
        assert_eq!(f.step(&buf[len + 6..], |_| true).unwrap(), Step::Incomplete);
    }

    #[test]
    fn uninspected_large_message_passes_in_pieces() {
        let big = msg(b'D', &[7u8; 100]);
        let mut f = Framer::new(16);
        assert_eq!(f.step(&big[..30], |t| t == b'Z').unwrap(), Step::Pass(30));
        assert!(f.mid_message());
        assert_eq!(f.step(&big[30..60], |t| t == b'Z').unwrap(), Step::Pass(30));
        // The next read holds the rest of the row and the start of the next message.
        let mut rest = big[60..].to_vec();
        rest.extend(msg(b'Z', b"T"));
        assert_eq!(f.step(&rest, |t| t == b'Z').unwrap(), Step::Pass(45));
        assert!(!f.mid_message());
        let Step::Message { tag, .. } = f.step(&rest[45..], |t| t == b'Z').unwrap() else { panic!() };
        assert_eq!(tag, b'Z');
    }

    #[test]
    fn inspected_message_waits_until_whole_and_respects_limit() {
        let q = msg(b'Q', &[b'x'; 40]);
        let mut f = Framer::new(1024);
        assert_eq!(f.step(&q[..10], |_| true).unwrap(), Step::Incomplete);
        let mut small = Framer::new(16);
        assert_eq!(small.step(&q[..10], |_| true), Err(FrameError::TooLarge { tag: b'Q', len: 45, max: 16 }));
    }

    #[test]
    fn length_below_four_is_malformed() {
        let mut f = Framer::new(1024);
        assert_eq!(f.step(&[b'Q', 0, 0, 0, 2, 0], |_| true), Err(FrameError::BadLength { tag: b'Q', len: 2 }));
        assert_eq!(
            f.step(&[b'Q', 0xff, 0xff, 0xff, 0xff], |_| true),
            Err(FrameError::BadLength { tag: b'Q', len: -1 })
        );
    }

    #[test]
    fn arbitrary_splits_yield_the_same_messages() {
        let mut stream = Vec::new();
        for i in 0..50u8 {
            stream.extend(msg(if i % 3 == 0 { b'Z' } else { b'D' }, &vec![i; i as usize * 7]));
        }
        for chunk in [1usize, 2, 3, 5, 7, 64, 1000] {
            let mut f = Framer::new(1 << 20);
            let mut buf: Vec<u8> = Vec::new();
            let mut seen = Vec::new();
            let mut passed = 0usize;
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match f.step(&buf, |t| t == b'Z').unwrap() {
                        Step::Message { tag, len, .. } => {
                            seen.push(tag);
                            passed += len;
                            buf.drain(..len);
                        }
                        Step::Pass(n) if n > 0 => {
                            passed += n;
                            buf.drain(..n);
                        }
                        _ => break,
                    }
                }
            }
            assert_eq!(passed, stream.len(), "chunk {chunk}");
            assert_eq!(seen.iter().filter(|t| **t == b'Z').count(), 17, "chunk {chunk}");
        }
    }
}
