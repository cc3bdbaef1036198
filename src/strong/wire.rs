//! Exchanges with a backend that the strong path drives itself: a unit of messages sent, and the
//! reply read up to where the client speaks next, through the protocol's one framer.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{Framer, Step, messages};

/// A backend's reply to one unit of client messages, up to where the client speaks next.
#[derive(Debug, Default)]
pub struct Reply {
    pub bytes: BytesMut,
    /// The ReadyForQuery status ('I', 'T', 'E'), or 0 when the reply ended at a COPY start.
    pub status: u8,
    /// The SQLSTATE of the first error in it.
    pub error: Option<String>,
    /// The first column of the first row, for pgmix's own queries (None: no row, or NULL).
    pub first_value: Option<Bytes>,
    /// The unit ended at a Flush, not a Sync: the reply is every message's answer, without a
    /// ReadyForQuery (`status` is 0).
    pub flushed: bool,
    /// The reply ended at a COPY start: the client sends (or receives) data next.
    pub copy: bool,
}

impl Reply {
    /// The reply without its closing ReadyForQuery.
    pub fn without_ready(&self) -> &[u8] {
        if self.status != 0 { &self.bytes[..self.bytes.len() - 6] } else { &self.bytes[..] }
    }
}

/// How many answers the backend gives the messages of a unit that ends at a Flush (without a
/// Sync, no ReadyForQuery comes): one for each Parse, Bind, Execute (after its rows), Close and
/// portal Describe, two for a statement Describe (its parameters and its rows' description).
/// None for a unit that ends at a Sync or is a Query.
pub fn flushed_answers(unit: &[u8]) -> Option<usize> {
    let mut n = 0;
    let mut last = 0;
    for (tag, body) in messages::iter(unit) {
        last = tag;
        n += match tag {
            b'P' | b'B' | b'E' | b'C' => 1,
            b'D' if body.first() == Some(&b'S') => 2,
            b'D' => 1,
            _ => 0,
        };
    }
    (last == b'H').then_some(n)
}

/// Reads messages from the backend until ReadyForQuery, or a CopyInResponse / CopyBothResponse
/// (the client must send data next; a CopyOutResponse is followed by the rows and the Execute's
/// CommandComplete), or, for a unit that ended at a Flush, its `flushed` answers (an error ends
/// them: the backend skips the rest until a Sync). `buf` holds what was read ahead.
pub async fn read_reply(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<Reply> {
    read_answers(stream, buf, None).await
}

async fn read_answers(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    flushed: Option<usize>,
) -> std::io::Result<Reply> {
    let mut reply = Reply { flushed: flushed.is_some(), ..Reply::default() };
    let mut left = flushed.unwrap_or(usize::MAX);
    if left == 0 {
        return Ok(reply);
    }
    let mut first_row = true;
    // A backend's messages are as large as its rows; the reply is held whole anyway.
    let mut framer = Framer::new(usize::MAX >> 1);
    loop {
        let step = framer.step(buf, |_| true).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let (tag, len) = match step {
            Step::Message { tag, len, .. } => (tag, len),
            Step::Pass(_) | Step::Incomplete => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                continue;
            }
        };
        let msg = buf.split_to(len);
        match tag {
            b'E' if reply.error.is_none() => reply.error = messages::error_code(&msg[5..]),
            b'D' if first_row => {
                first_row = false;
                reply.first_value = messages::first_column(&msg[5..]).map(Bytes::copy_from_slice);
            }
            _ => {}
        }
        reply.bytes.extend_from_slice(&msg);
        match tag {
            b'Z' => {
                reply.status = msg.get(5).copied().unwrap_or(b'I');
                return Ok(reply);
            }
            b'G' | b'W' => {
                reply.copy = true;
                return Ok(reply);
            }
            b'E' if reply.flushed => return Ok(reply),
            b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'C' | b'I' | b's' if reply.flushed => {
                left -= 1;
                if left == 0 {
                    return Ok(reply);
                }
            }
            _ => {}
        }
    }
}

/// Sends `unit` and reads the reply (to its ReadyForQuery, or its answers when it ends at a
/// Flush).
pub async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    buf: &mut BytesMut,
    unit: &[u8],
) -> std::io::Result<Reply> {
    stream.write_all(unit).await?;
    read_answers(stream, buf, flushed_answers(unit)).await
}

/// `bytes` without the NoticeResponses of SQLSTATE `code` (the warning a COMMIT pgmix already
/// carried out gets from an idle backend).
pub fn drop_notices(bytes: &[u8], code: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(bytes.len());
    for (tag, body) in messages::iter(bytes) {
        if tag == b'N' && messages::error_code(body).as_deref() == Some(code) {
            continue;
        }
        out.extend_from_slice(&[tag]);
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_is_read_to_its_ready_for_query_in_any_pieces() {
        let mut wire = Vec::new();
        let mut b = BytesMut::new();
        crate::protocol::codec::error_response("42P04", "exists", &mut b);
        wire.extend_from_slice(&b);
        let mut row = vec![b'D'];
        row.extend_from_slice(&13i32.to_be_bytes());
        row.extend_from_slice(&1i16.to_be_bytes());
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        wire.extend_from_slice(&row);
        wire.extend_from_slice(&crate::protocol::codec::ready_bytes(b'T'));
        let (mut a, mut z) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move { z.write_all(&wire).await });
        let mut buf = BytesMut::new();
        let r = read_reply(&mut a, &mut buf).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(r.status, b'T');
        assert_eq!(r.error.as_deref(), Some("42P04"));
        assert_eq!(r.first_value.as_deref(), Some(&b"abc"[..]));
        assert!(r.without_ready().ends_with(b"abc"));
    }

    #[test]
    fn a_unit_that_ends_at_a_flush_is_answered_message_by_message() {
        let msg = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let prepare = [msg(b'P', b"s\0select 1\0\0\0"), msg(b'D', b"Ss\0"), msg(b'H', b"")].concat();
        assert_eq!(flushed_answers(&prepare), Some(3));
        let run = [msg(b'B', b"\0s\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat();
        assert_eq!(flushed_answers(&run), None);
        assert_eq!(flushed_answers(&[msg(b'B', b"\0s\0\0\0\0\0\0\0"), msg(b'H', b"")].concat()), Some(1));
    }
}
