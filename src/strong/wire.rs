//! The few wire-protocol pieces the strong path reads and writes itself: whole messages from a
//! stream, a reply up to its ReadyForQuery, and pgmix's own statements.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one whole message (type byte, length, body) from `stream`, with `buf` holding what was
/// read ahead. None when the stream ended between messages.
pub async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<Option<Bytes>> {
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 || len as usize + 1 > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("message of type '{}' has length {len}", buf[0] as char),
                ));
            }
            let whole = len as usize + 1;
            if buf.len() >= whole {
                return Ok(Some(buf.split_to(whole).freeze()));
            }
            buf.reserve(whole - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

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
}

impl Reply {
    /// The reply without its closing ReadyForQuery.
    pub fn without_ready(&self) -> &[u8] {
        if self.status != 0 { &self.bytes[..self.bytes.len() - 6] } else { &self.bytes[..] }
    }
}

/// Reads messages from the backend until ReadyForQuery, or a CopyInResponse / CopyBothResponse
/// (the client must send data next).
pub async fn read_reply(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<Reply> {
    let mut reply = Reply::default();
    let mut first_row = true;
    loop {
        let Some(msg) = read_message(stream, buf, usize::MAX >> 1).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        match msg[0] {
            b'E' if reply.error.is_none() => reply.error = error_code(&msg[5..]),
            b'D' if first_row => {
                first_row = false;
                reply.first_value = first_column(&msg[5..]);
            }
            _ => {}
        }
        reply.bytes.extend_from_slice(&msg);
        match msg[0] {
            b'Z' => {
                reply.status = msg.get(5).copied().unwrap_or(b'I');
                return Ok(reply);
            }
            b'G' | b'W' => return Ok(reply),
            _ => {}
        }
    }
}

/// Sends `unit` and reads the reply.
pub async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    buf: &mut BytesMut,
    unit: &[u8],
) -> std::io::Result<Reply> {
    stream.write_all(unit).await?;
    read_reply(stream, buf).await
}

/// A simple Query message.
pub fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(sql.len() + 6);
    b.put_u8(b'Q');
    b.put_i32((4 + sql.len() + 1) as i32);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b
}

/// An ErrorResponse (severity ERROR) with Postgres's own SQLSTATE and message, as the leader's
/// Postgres gave them.
pub fn error_response(sqlstate: &str, message: &str, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', sqlstate), (b'M', message)] {
        body.put_u8(field);
        body.put_slice(value.replace('\0', "").as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    out.put_u8(b'E');
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
}

pub fn ready(status: u8) -> [u8; 6] {
    [b'Z', 0, 0, 0, 5, status]
}

/// The SQLSTATE (field 'C') of an ErrorResponse or NoticeResponse body.
pub fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if field == b'C' {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

fn first_column(body: &[u8]) -> Option<Bytes> {
    let n = i16::from_be_bytes(body.get(0..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    Some(Bytes::copy_from_slice(body.get(6..6 + len)?))
}

/// `bytes` without the NoticeResponses of SQLSTATE `code` (the warning a COMMIT pgmix already
/// carried out gets from an idle backend).
pub fn drop_notices(bytes: &[u8], code: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(bytes.len());
    for (tag, body) in crate::protocol::messages::iter(bytes) {
        if tag == b'N' && error_code(body).as_deref() == Some(code) {
            continue;
        }
        out.put_u8(tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
    }
    out
}

/// Whether a statement text is a transaction start, end, or something else; only single
/// statements count (`BEGIN; UPDATE ...` is something else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxWord {
    Begin,
    Commit,
    Rollback,
    Other,
}

pub fn tx_word(sql: &[u8]) -> TxWord {
    let text = String::from_utf8_lossy(sql);
    let t = text.trim().trim_end_matches(';').trim();
    if t.contains(';') || t.contains("--") || t.contains("/*") {
        return TxWord::Other;
    }
    let words: Vec<String> = t.split_ascii_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["begin", ..] | ["start", "transaction", ..] => TxWord::Begin,
        ["commit"] | ["commit", "work" | "transaction"] | ["end"] | ["end", "work" | "transaction"] => TxWord::Commit,
        ["rollback"] | ["rollback", "work" | "transaction"] | ["abort"] | ["abort", "work" | "transaction"] => {
            TxWord::Rollback
        }
        _ => TxWord::Other,
    }
}

/// For a statement that cannot run in a transaction block and changes every node (CREATE and
/// DROP DATABASE, CREATE / DROP INDEX CONCURRENTLY, REINDEX CONCURRENTLY): true.
pub fn is_standalone(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let t = text.trim().trim_end_matches(';');
    if t.contains(';') {
        return false;
    }
    let words: Vec<&str> = t.split_ascii_whitespace().take(6).collect();
    match words.as_slice() {
        ["create" | "drop", "database", ..] => true,
        ["create" | "drop" | "reindex", rest @ ..] => {
            rest.contains(&"concurrently")
                && (rest.first() == Some(&"index") || rest.starts_with(&["unique", "index"]) || words[0] == "reindex")
        }
        _ => false,
    }
}

/// The CommandComplete tag of a standalone statement.
pub fn standalone_tag(sql: &str) -> String {
    let words: Vec<String> = sql.split_ascii_whitespace().take(2).map(|w| w.to_ascii_uppercase()).collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["REINDEX", ..] => "REINDEX".to_owned(),
        ["CREATE", "UNIQUE"] => "CREATE INDEX".to_owned(),
        [a, b] => format!("{a} {b}"),
        _ => words.join(" "),
    }
}

/// Whether a statement text begins a transaction block (`BEGIN; UPDATE ...` does).
pub fn starts_tx(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    let mut words = text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("").to_ascii_lowercase();
    first == "begin" || (first == "start" && words.next().is_some_and(|w| w.eq_ignore_ascii_case("transaction")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_words_are_recognised_only_alone() {
        assert_eq!(tx_word(b"BEGIN"), TxWord::Begin);
        assert_eq!(tx_word(b" begin isolation level serializable; "), TxWord::Begin);
        assert_eq!(tx_word(b"START TRANSACTION READ ONLY"), TxWord::Begin);
        assert_eq!(tx_word(b"commit;"), TxWord::Commit);
        assert_eq!(tx_word(b"END"), TxWord::Commit);
        assert_eq!(tx_word(b"ROLLBACK"), TxWord::Rollback);
        assert_eq!(tx_word(b"rollback to savepoint a"), TxWord::Other);
        assert_eq!(tx_word(b"commit prepared 'x'"), TxWord::Other);
        assert_eq!(tx_word(b"BEGIN; UPDATE t SET a = 1"), TxWord::Other);
        assert_eq!(tx_word(b"update t set a = 1"), TxWord::Other);
        assert!(starts_tx(b"BEGIN; UPDATE t SET a = 1"));
        assert!(starts_tx(b" start transaction;"));
        assert!(!starts_tx(b"starter()"));
        assert!(!starts_tx(b"SELECT 1"));
        assert!(is_standalone(b"CREATE DATABASE shop"));
        assert!(is_standalone(b"drop database if exists shop;"));
        assert!(is_standalone(b"CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)"));
        assert!(is_standalone(b"DROP INDEX CONCURRENTLY i"));
        assert!(is_standalone(b"REINDEX TABLE CONCURRENTLY t"));
        assert!(!is_standalone(b"CREATE INDEX i ON t (a)"));
        assert!(!is_standalone(b"CREATE TABLE database (concurrently int)"));
        assert!(!is_standalone(b"CREATE DATABASE a; CREATE DATABASE b"));
        assert_eq!(standalone_tag("create unique index concurrently i on t (a)"), "CREATE INDEX");
        assert_eq!(standalone_tag("DROP DATABASE shop"), "DROP DATABASE");
    }

    #[test]
    fn error_codes_and_first_values_are_read() {
        let body = b"SERROR\0C40001\0Mboom\0\0";
        assert_eq!(error_code(body).as_deref(), Some("40001"));
        let mut own = BytesMut::new();
        error_response("42P04", "database \"shop\" already exists", &mut own);
        assert_eq!(own[0], b'E');
        assert_eq!(error_code(&own[5..]).as_deref(), Some("42P04"));
        let mut row = vec![0u8, 1];
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        assert_eq!(first_column(&row).as_deref(), Some(&b"abc"[..]));
        let mut null = vec![0u8, 1];
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null), None);
    }
}
