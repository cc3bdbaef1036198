//! The peer-link wire format: framed, versioned messages, with no I/O here.
//!
//! A frame is `[version u8][kind u8][length u32 BE][payload]`. A peer that speaks another version
//! is refused at its first frame, so nodes of different releases never misread each other. The
//! kinds: the greeting that names the cluster and the node, a heartbeat, and requests and their
//! responses. A request names the service it is for (weak replication today, consensus later), so
//! the transport knows nothing of what the services say.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u8 = 1;
/// Largest payload a peer may send in one frame. Batches of weak changes stop growing at 8 MiB,
/// so only a single change (one row) larger than this cannot travel.
pub const MAX_PAYLOAD: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first frame each way: which cluster and which node this is.
    Hello {
        cluster: String,
        node: u32,
    },
    Ping,
    Pong,
    /// A call to one of the peer's services; answered by a `Response` with the same id.
    Request {
        id: u64,
        service: u8,
        payload: Bytes,
    },
    /// The answer to a request: Ok(payload), or Err(reason) when the service failed.
    Response {
        id: u64,
        result: Result<Bytes, String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer speaks peer-link version {0}, this node {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const HELLO: u8 = 1;
const PING: u8 = 2;
const PONG: u8 = 3;
const REQUEST: u8 = 4;
const RESPONSE: u8 = 5;

impl Frame {
    pub fn encode(&self, buf: &mut BytesMut) {
        let (kind, payload) = match self {
            Frame::Hello { cluster, node } => {
                let mut p = BytesMut::new();
                p.put_u32(*node);
                p.put_slice(cluster.as_bytes());
                (HELLO, p)
            }
            Frame::Ping => (PING, BytesMut::new()),
            Frame::Pong => (PONG, BytesMut::new()),
            Frame::Request { id, service, payload } => {
                let mut p = BytesMut::with_capacity(9 + payload.len());
                p.put_u64(*id);
                p.put_u8(*service);
                p.put_slice(payload);
                (REQUEST, p)
            }
            Frame::Response { id, result } => {
                let mut p = BytesMut::new();
                p.put_u64(*id);
                match result {
                    Ok(payload) => {
                        p.put_u8(0);
                        p.put_slice(payload);
                    }
                    Err(reason) => {
                        p.put_u8(1);
                        p.put_slice(reason.as_bytes());
                    }
                }
                (RESPONSE, p)
            }
        };
        buf.put_u8(VERSION);
        buf.put_u8(kind);
        buf.put_u32(payload.len() as u32);
        buf.put_slice(&payload);
    }

    /// Takes one whole frame off the front of `buf`; Ok(None) while more bytes are needed.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 6 {
            return Ok(None);
        }
        if buf[0] != VERSION {
            return Err(FrameError::Version(buf[0]));
        }
        let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 6 + len {
            return Ok(None);
        }
        let kind = buf[1];
        buf.advance(6);
        let mut payload = buf.split_to(len);
        match kind {
            HELLO => {
                if payload.len() < 4 {
                    return Err(FrameError::Malformed("hello without a node id"));
                }
                let node = payload.get_u32();
                let cluster = String::from_utf8(payload.to_vec()).map_err(|_| FrameError::Malformed("cluster id"))?;
                Ok(Some(Frame::Hello { cluster, node }))
            }
            PING => Ok(Some(Frame::Ping)),
            PONG => Ok(Some(Frame::Pong)),
            REQUEST | RESPONSE => {
                if payload.len() < 9 {
                    return Err(FrameError::Malformed("request or response without its header"));
                }
                let id = payload.get_u64();
                let flag = payload.get_u8();
                let body = payload.freeze();
                if kind == REQUEST {
                    return Ok(Some(Frame::Request { id, service: flag, payload: body }));
                }
                let result = match flag {
                    0 => Ok(body),
                    _ => Err(String::from_utf8_lossy(&body).into_owned()),
                };
                Ok(Some(Frame::Response { id, result }))
            }
            other => Err(FrameError::Kind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let frames = [
            Frame::Hello { cluster: "dev".into(), node: 7 },
            Frame::Ping,
            Frame::Pong,
            Frame::Request { id: 9, service: 1, payload: Bytes::from_static(b"pull") },
            Frame::Response { id: 9, result: Ok(Bytes::from_static(b"batch")) },
            Frame::Response { id: 10, result: Err("no such database".into()) },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn another_version_an_unknown_kind_and_a_huge_length_are_refused() {
        let mut buf = BytesMut::from(&[2u8, 1, 0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::Version(2)));
        let mut buf = BytesMut::from(&[VERSION, 99, 0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::Kind(99)));
        let mut buf = BytesMut::from(&[VERSION, PING, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(Frame::decode(&mut buf), Err(FrameError::TooLarge(_))));
    }
}
