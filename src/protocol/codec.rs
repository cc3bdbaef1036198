//! Every message pgmix writes itself, to a client or to a Postgres backend: one encoder each,
//! into a byte buffer, with no I/O. (What pgmix only forwards is never re-encoded; what it reads
//! is decoded in place by `messages`.)
//!
//! Names and texts are taken as bytes where they come from a client (a statement name, a query
//! in the client's encoding), so nothing is re-encoded on the way through.

use bytes::{BufMut, BytesMut};

/// Appends one message: its type byte, its length (which counts itself), and the body `fill`
/// writes.
fn message(buf: &mut BytesMut, tag: u8, fill: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    fill(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A NUL-terminated string; a NUL inside would end it early on the other side, so it is dropped.
fn cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.extend(s.iter().copied().filter(|b| *b != 0));
    buf.put_u8(0);
}

// ---- backend messages (pgmix speaking as the server) ----

pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

pub fn auth_md5(salt: [u8; 4], buf: &mut BytesMut) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn auth_sasl(mechanisms: &[&str], buf: &mut BytesMut) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(data: &[u8], buf: &mut BytesMut) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(data: &[u8], buf: &mut BytesMut) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn backend_key_data(pid: i32, secret: i32, buf: &mut BytesMut) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// `NegotiateProtocolVersion`: pgmix speaks 3.`newest_minor` and none of the `_pq_.` options the
/// client asked for.
pub fn negotiate_protocol_version(newest_minor: i32, unrecognized: &[String], buf: &mut BytesMut) {
    message(buf, b'v', |b| {
        b.put_i32(newest_minor);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            cstr(b, o.as_bytes());
        }
    });
}

/// An ErrorResponse (`tag` b'E') or NoticeResponse (b'N') with these fields (type byte, value).
pub fn error_fields(tag: u8, fields: &[(u8, &str)], buf: &mut BytesMut) {
    message(buf, tag, |b| {
        for (field, value) in fields {
            b.put_u8(*field);
            cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// An ErrorResponse (severity ERROR) with Postgres's own SQLSTATE and message, as another node's
/// Postgres gave them.
pub fn error_response(sqlstate: &str, message: &str, buf: &mut BytesMut) {
    error_fields(b'E', &[(b'S', "ERROR"), (b'V', "ERROR"), (b'C', sqlstate), (b'M', message)], buf);
}

pub fn ready(status: u8, buf: &mut BytesMut) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// ReadyForQuery as a value, for replies built in place.
pub fn ready_bytes(status: u8) -> [u8; 6] {
    [b'Z', 0, 0, 0, 5, status]
}

pub fn command_complete(tag: &str, buf: &mut BytesMut) {
    message(buf, b'C', |b| cstr(b, tag.as_bytes()));
}

pub fn parse_complete(buf: &mut BytesMut) {
    message(buf, b'1', |_| {});
}

pub fn bind_complete(buf: &mut BytesMut) {
    message(buf, b'2', |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    message(buf, b'3', |_| {});
}

pub fn no_data(buf: &mut BytesMut) {
    message(buf, b'n', |_| {});
}

/// ParameterDescription of a statement without parameters.
pub fn no_parameters(buf: &mut BytesMut) {
    message(buf, b't', |b| b.put_i16(0));
}

// ---- frontend messages (pgmix speaking as a client of Postgres) ----

/// A simple Query.
pub fn query(sql: &[u8], buf: &mut BytesMut) {
    message(buf, b'Q', |b| cstr(b, sql));
}

/// A simple Query as a fresh buffer.
pub fn query_bytes(sql: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(sql.len() + 6);
    query(sql.as_bytes(), &mut b);
    b
}

/// A Parse of statement `name` without declared parameter types.
pub fn parse(name: &[u8], sql: &[u8], buf: &mut BytesMut) {
    message(buf, b'P', |b| {
        cstr(b, name);
        cstr(b, sql);
        b.put_i16(0);
    });
}

/// A Bind of the unnamed portal to `statement`, with text parameters (None: NULL) and text
/// results.
pub fn bind(statement: &[u8], params: &[Option<&[u8]>], buf: &mut BytesMut) {
    message(buf, b'B', |b| {
        b.put_u8(0);
        cstr(b, statement);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i16(0);
    });
}

/// An Execute of the unnamed portal, all rows.
pub fn execute(buf: &mut BytesMut) {
    message(buf, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
}

/// One statement with text parameters, by the extended protocol (so the values are never part
/// of a query text anyone can see), up to its Sync.
pub fn query_with(sql: &str, params: &[Option<&[u8]>]) -> BytesMut {
    statements_with(&[(sql, params)])
}

/// Statements with text parameters, one after the other before one Sync (one transaction; an
/// error skips the rest).
pub fn statements_with(statements: &[(&str, &[Option<&[u8]>])]) -> BytesMut {
    let mut b = BytesMut::new();
    for (sql, params) in statements {
        parse(b"", sql.as_bytes(), &mut b);
        bind(b"", params, &mut b);
        execute(&mut b);
    }
    sync(&mut b);
    b
}

/// A Close of prepared statement `name`.
pub fn close_statement(name: &[u8], buf: &mut BytesMut) {
    message(buf, b'C', |b| {
        b.put_u8(b'S');
        cstr(b, name);
    });
}

pub fn sync(buf: &mut BytesMut) {
    message(buf, b'S', |_| {});
}

pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_own_length() {
        let mut b = BytesMut::new();
        command_complete("BEGIN", &mut b);
        assert_eq!(&b[..], b"C\0\0\0\x0aBEGIN\0");
        b.clear();
        ready(b'T', &mut b);
        assert_eq!(&b[..], &ready_bytes(b'T'));
        b.clear();
        parse(b"s1", b"select $1", &mut b);
        assert_eq!(&b[..], b"P\0\0\0\x13s1\0select $1\0\0\0");
        b.clear();
        bind(b"s", &[Some(b"x"), None], &mut b);
        assert_eq!(&b[..], b"B\0\0\0\x16\0s\0\0\0\0\x02\0\0\0\x01x\xff\xff\xff\xff\0\0");
        b.clear();
        close_statement(b"s\xe9", &mut b);
        assert_eq!(&b[..], b"C\0\0\0\x08Ss\xe9\0");
    }

    #[test]
    fn authentication_requests_match_the_protocol() {
        let mut b = BytesMut::new();
        auth_sasl(&["SCRAM-SHA-256"], &mut b);
        assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        b.clear();
        auth_md5([1, 2, 3, 4], &mut b);
        assert_eq!(&b[..], b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
        b.clear();
        backend_key_data(7, -1, &mut b);
        assert_eq!(&b[..], b"K\0\0\0\x0c\0\0\0\x07\xff\xff\xff\xff");
    }

    #[test]
    fn error_fields_end_with_a_nul_and_lose_inner_nuls() {
        let mut b = BytesMut::new();
        error_response("42P04", "a\0b", &mut b);
        assert_eq!(&b[..], b"E\0\0\0\x1eSERROR\0VERROR\0C42P04\0Mab\0\0");
        assert_eq!(crate::protocol::messages::error_code(&b[5..]).as_deref(), Some("42P04"));
    }
}
