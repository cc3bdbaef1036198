//! One direction of a session's bytes, and the backpressure between the two directions.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

use super::READ_CHUNK;

/// One direction's bytes: `buf[..ready]` is framed and may be sent, the rest awaits framing.
pub(super) struct Flow {
    pub buf: BytesMut,
    pub ready: usize,
}

impl Flow {
    pub fn new(buf: BytesMut) -> Self {
        Self { buf, ready: 0 }
    }

    /// Reading more is allowed while little waits to be sent, and always when nothing can be sent
    /// (a message held whole for inspection is still arriving; the framer bounds its size). This
    /// is the backpressure: a side that does not take its bytes stops the other side's reads.
    pub fn wants_more(&mut self) -> bool {
        if self.ready > 0 && self.buf.len() >= READ_CHUNK {
            return false;
        }
        self.buf.reserve(READ_CHUNK);
        true
    }

    /// Writes the ready bytes to `to` until all are sent or `to` takes no more for now (then its
    /// write readiness wakes the task). Returns how many were sent.
    pub fn send(&mut self, to: &mut (impl AsyncWrite + Unpin), cx: &mut Context<'_>) -> std::io::Result<usize> {
        let mut sent = 0;
        while self.ready > 0 {
            match Pin::new(&mut *to).poll_write(cx, &self.buf[..self.ready]) {
                Poll::Ready(Ok(0)) => return Err(write_zero()),
                Poll::Ready(Ok(n)) => {
                    self.buf.advance(n);
                    self.ready -= n;
                    sent += n;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(sent)
    }

    /// Drops the next `len` unframed bytes (one message).
    pub fn replace_next_dropping(&mut self, len: usize) {
        let tail = self.buf.split_off(self.ready + len);
        self.buf.truncate(self.ready);
        self.buf.unsplit(tail);
    }

    /// Replaces the next `len` unframed bytes (one message) with `with`, ready to send.
    pub fn replace_next(&mut self, len: usize, with: &[u8]) {
        let tail = self.buf.split_off(self.ready + len);
        self.buf.truncate(self.ready);
        self.buf.extend_from_slice(with);
        self.buf.extend_from_slice(&tail);
        self.ready += with.len();
    }
}

fn write_zero() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::WriteZero, "connection accepted no bytes")
}
