//! Reading the messages pgmix looks at, in place, with no I/O: the start-up packet, and the few
//! fields of a Query, Parse, Bind, ErrorResponse, DataRow or ParameterStatus the session needs.
//! (What pgmix writes itself is encoded by `codec`.)

pub const SSL_REQUEST_CODE: i32 = 80877103;
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
pub const CANCEL_REQUEST_CODE: i32 = 80877102;
/// Largest start-up packet Postgres accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Reads a NUL-terminated string at the front of `buf`; returns it and the rest.
pub fn cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let end = buf.iter().position(|b| *b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    Some((s, &buf[end + 1..]))
}

/// The first packet of a connection, before any message has a type byte.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup { major: u16, minor: u16, params: Vec<(String, String)> },
}

/// Decodes a start-up packet body (after its length word).
pub fn decode_first_packet(body: &[u8]) -> Option<FirstPacket> {
    if body.len() < 4 {
        return None;
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST_CODE => Some(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE => Some(FirstPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if body.len() >= 12 => Some(FirstPacket::Cancel {
            pid: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            secret: i32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        }),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                // Refused by the caller as an unsupported version; its layout is unknown.
                return Some(FirstPacket::Startup { major, minor, params: Vec::new() });
            }
            let mut rest = &body[4..];
            let mut params = Vec::new();
            loop {
                let (key, after) = cstr(rest)?;
                if key.is_empty() {
                    break;
                }
                let (value, after) = cstr(after)?;
                params.push((key.to_owned(), value.to_owned()));
                rest = after;
            }
            Some(FirstPacket::Startup { major, minor, params })
        }
    }
}

/// The password-family message a client sends: a SASL initial response splits into the mechanism
/// name and its data.
pub fn sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let (mechanism, rest) = cstr(body)?;
    if rest.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 {
        return Some((mechanism, &[]));
    }
    if data.len() != len as usize {
        return None;
    }
    Some((mechanism, data))
}

/// The bytes up to the first NUL (all of `buf` when there is none), and what follows it.
fn until_nul(buf: &[u8]) -> (&[u8], &[u8]) {
    match buf.iter().position(|b| *b == 0) {
        Some(end) => (&buf[..end], &buf[end + 1..]),
        None => (buf, &[]),
    }
}

/// The SQL text of a simple Query message body, as bytes: it is in the session's
/// client_encoding, which need not be UTF-8, and the routing point decides what to make of it.
pub fn query_text(body: &[u8]) -> &[u8] {
    until_nul(body).0
}

/// Statement name and SQL text of a Parse message body, as bytes (see `query_text`).
pub fn parse_message(body: &[u8]) -> (&[u8], &[u8]) {
    let (name, rest) = until_nul(body);
    (name, until_nul(rest).0)
}

/// The whole messages in `buf` (type byte and body), in order; a partial one at the end is left.
pub fn iter(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let tag = *rest.first()?;
        let len = i32::from_be_bytes(rest.get(1..5)?.try_into().ok()?);
        let end = usize::try_from(len).ok().filter(|l| *l >= 4)? + 1;
        let body = rest.get(5..end)?;
        rest = &rest[end..];
        Some((tag, body))
    })
}

/// Name and value of a ParameterStatus message body.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &str)> {
    let (name, rest) = until_nul(body);
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// The prepared statement a Bind message body binds (its second string).
pub fn bind_statement(body: &[u8]) -> &[u8] {
    until_nul(until_nul(body).1).0
}

/// What a Describe or Close message body names: `b'S'` (a statement) or `b'P'` (a portal), and
/// the name.
pub fn target(body: &[u8]) -> (u8, &[u8]) {
    match body.split_first() {
        Some((kind, rest)) => (*kind, until_nul(rest).0),
        None => (0, &[]),
    }
}

/// The SQLSTATE (field 'C') of an ErrorResponse or NoticeResponse body.
pub fn error_code(body: &[u8]) -> Option<String> {
    error_field(body, b'C')
}

/// One field of an ErrorResponse or NoticeResponse body.
pub fn error_field(body: &[u8], wanted: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, after) = until_nul(tail);
        if field == wanted {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = after;
    }
    None
}

/// The columns of a DataRow body (None: NULL); empty when it is malformed.
pub fn columns(body: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let Some(n) = body.get(0..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return out };
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = body.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])) else {
            return Vec::new();
        };
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(v) = body.get(at..at + len as usize) else { return Vec::new() };
        out.push(Some(v));
        at += len as usize;
    }
    out
}

/// The first column of a DataRow body; None when the row has none or it is NULL.
pub fn first_column(body: &[u8]) -> Option<&[u8]> {
    let n = i16::from_be_bytes(body.get(0..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    body.get(6..6 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packet_decodes_parameters() {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        body.extend_from_slice(b"user\0alice\0database\0shop\0\0");
        assert_eq!(
            decode_first_packet(&body),
            Some(FirstPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![("user".into(), "alice".into()), ("database".into(), "shop".into())]
            })
        );
    }

    #[test]
    fn truncated_startup_packet_is_rejected() {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        body.extend_from_slice(b"user\0ali");
        assert_eq!(decode_first_packet(&body), None);
    }

    #[test]
    fn cancel_and_ssl_requests_decode() {
        let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(decode_first_packet(&body), Some(FirstPacket::Cancel { pid: 7, secret: -9 }));
        assert_eq!(decode_first_packet(&SSL_REQUEST_CODE.to_be_bytes()), Some(FirstPacket::SslRequest));
    }

    #[test]
    fn sasl_initial_response_checks_its_length() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(sasl_initial_response(&body), Some(("SCRAM-SHA-256", &b"abc"[..])));
        body.push(b'x');
        assert_eq!(sasl_initial_response(&body), None);
    }

    #[test]
    fn query_parse_and_parameter_status_bodies() {
        assert_eq!(parse_message(b"s1\0select $1\0\0\0"), (&b"s1"[..], &b"select $1"[..]));
        assert_eq!(query_text(b"select 1\0"), b"select 1");
        // Not UTF-8 (LATIN1 'e' acute): still read, never skipped.
        assert_eq!(query_text(b"select '\xe9'\0"), b"select '\xe9'");
        assert_eq!(parameter_status(b"client_encoding\0LATIN1\0"), Some((&b"client_encoding"[..], "LATIN1")));
        assert_eq!(bind_statement(b"portal\0stmt\0\0\0"), b"stmt");
        assert_eq!(bind_statement(b"\0\0\0\0"), b"");
        assert_eq!(target(b"Sname\0"), (b'S', &b"name"[..]));
    }

    #[test]
    fn error_codes_and_first_values_are_read() {
        assert_eq!(error_code(b"SERROR\0C40001\0Mboom\0\0").as_deref(), Some("40001"));
        assert_eq!(error_field(b"SERROR\0C40001\0Mboom\0\0", b'M').as_deref(), Some("boom"));
        let mut row = vec![0u8, 1];
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        assert_eq!(first_column(&row), Some(&b"abc"[..]));
        let mut null = vec![0u8, 1];
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null), None);
    }
}
