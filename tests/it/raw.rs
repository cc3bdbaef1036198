//! A raw protocol client for tests that need to see every message (BackendKeyData, the exact
//! order of replies in a pipeline) or send bytes no driver would. It logs in with a cleartext
//! password, so the node must run with `[auth] method = "password"`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{startup_packet, string_message};

pub struct Raw {
    pub s: TcpStream,
    /// From BackendKeyData.
    pub pid: i32,
    pub secret: i32,
}

/// One backend message: its type byte and body.
pub type Msg = (u8, Vec<u8>);

impl Raw {
    pub async fn login(port: u16, user: &str, password: &str, params: &[(&str, &str)]) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let mut all = vec![("user", user), ("database", "postgres")];
        all.extend_from_slice(params);
        s.write_all(&startup_packet(&all)).await.unwrap();
        let mut raw = Raw { s, pid: 0, secret: 0 };
        let (tag, body) = raw.read().await;
        assert_eq!((tag, &body[..]), (b'R', &3i32.to_be_bytes()[..]), "cleartext password requested");
        raw.s.write_all(&string_message(b'p', password)).await.unwrap();
        for (tag, body) in raw.until_ready().await {
            assert_ne!(tag, b'E', "login failed: {}", error_text(&body));
            if tag == b'K' {
                raw.pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
                raw.secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
            }
        }
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next message; panics after 20 s of silence, so a lost reply fails the test.
    pub async fn read(&mut self) -> Msg {
        let fut = async {
            let tag = self.s.read_u8().await?;
            let len = self.s.read_i32().await?;
            let mut body = vec![0u8; len as usize - 4];
            self.s.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>((tag, body))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(20), fut).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("connection ended while a message was expected: {e}"),
            Err(_) => panic!("no message from the node within 20 s"),
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read().await;
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

/// The type bytes of `msgs`, as a string ("1ECZ") for compact assertions.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// A field of an ErrorResponse or NoticeResponse body ('C' code, 'M' message, 'W' context...).
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    body.split(|b| *b == 0).find_map(|f| f.strip_prefix(&[field]).map(|v| String::from_utf8_lossy(v).into_owned()))
}

pub fn error_text(body: &[u8]) -> String {
    format!("{:?} {:?}", error_field(body, b'C'), error_field(body, b'M'))
}

/// The first column of a DataRow body, as text.
pub fn first_value(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body[2..6].try_into().ok()?);
    (len >= 0).then(|| String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned())
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend(((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub fn query(sql: &str) -> Vec<u8> {
    string_message(b'Q', sql)
}

/// Parse of an unnamed-or-named statement with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend(0i16.to_be_bytes());
    message(b'P', &b)
}

/// Bind of `stmt` to the unnamed portal with no parameters, text results.
pub fn bind(stmt: &str) -> Vec<u8> {
    let mut b = format!("\0{stmt}\0").into_bytes();
    b.extend(0i16.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    message(b'B', &b)
}

/// Describe of a prepared statement.
pub fn describe_statement(name: &str) -> Vec<u8> {
    message(b'D', format!("S{name}\0").as_bytes())
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend(0i32.to_be_bytes());
    message(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut m = 16i32.to_be_bytes().to_vec();
    m.extend(80877102i32.to_be_bytes());
    m.extend(pid.to_be_bytes());
    m.extend(secret.to_be_bytes());
    m
}
