//! Opening a session's connection to the local Postgres, logged in as the client's own role, on
//! the database the client asked for. Postgres then enforces that role's privileges itself:
//! pgmix never runs a client's statements as a superuser it did not log in as.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use super::error::BackendError;
use crate::config::{BackendAddr, BackendConfig};

pub type BackendStream = Either<TcpStream, UnixStream>;

/// An authenticated backend connection, positioned after its first ReadyForQuery.
pub struct BackendConn {
    pub stream: BackendStream,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus, NoticeResponse and the final ReadyForQuery, raw, to replay to the client.
    pub greeting: BytesMut,
    /// Bytes that arrived after the first ReadyForQuery (normally none).
    pub leftover: BytesMut,
    /// The session's search_path as Postgres settled it at start-up (server, database and role
    /// defaults and the client's start-up options all apply); None if it could not be read.
    pub search_path: Option<String>,
}

pub async fn open_stream(addr: &BackendAddr) -> Result<BackendStream, BackendError> {
    let unreachable = |cause| BackendError::Unreachable { addr: addr.to_string(), cause };
    match addr {
        BackendAddr::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await.map_err(unreachable)?;
            s.set_nodelay(true)?;
            Ok(Either::Left(s))
        }
        BackendAddr::Unix(path) => Ok(Either::Right(UnixStream::connect(path).await.map_err(unreachable)?)),
    }
}

/// Who a backend connection logs in as.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub role: &'a str,
    /// Sent when Postgres asks for a password; None means the login must not need one.
    pub password: Option<&'a str>,
}

/// Asked once per backend connection, before the client's first statement.
/// SHOW, not current_setting(): a function of that name earlier on the session's own path could
/// answer instead of Postgres's.
const SEARCH_PATH_QUERY: &str = "SHOW search_path";

pub async fn connect(
    cfg: &BackendConfig,
    login: Login<'_>,
    database: &str,
    client_params: &[(String, String)],
) -> Result<BackendConn, BackendError> {
    let mut stream = open_stream(&cfg.addr).await?;
    let mut buf = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![("user", login.role), ("database", database)];
    params.extend(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params.iter().copied(), &mut buf).map_err(|e| BackendError::Protocol(e.to_string()))?;
    stream.write_all(&buf).await?;
    buf.clear();

    let needs_password = || BackendError::NeedsPassword { role: login.role.to_owned() };
    let password = login.password.map(str::as_bytes);
    let mut scram: Option<ScramSha256> = None;
    let mut greeting = BytesMut::new();
    // After the first ReadyForQuery: pgmix's own question, whose answer the client never sees.
    let mut asked = false;
    let mut search_path = None;
    let mut pid_secret = (0, 0);
    let mut rbuf = BytesMut::with_capacity(8192);
    loop {
        // Keep the raw bytes of each message: most of them are forwarded to the client as they are.
        let raw_len = loop {
            if rbuf.len() >= 5 {
                let len = i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]);
                if len < 4 {
                    return Err(BackendError::Protocol(format!("invalid message length {len}")));
                }
                if rbuf.len() > len as usize {
                    break len as usize + 1;
                }
            }
            if stream.read_buf(&mut rbuf).await? == 0 {
                return Err(BackendError::Protocol("connection closed during start-up".into()));
            }
        };
        let raw = rbuf.split_to(raw_len);
        let mut parse_buf = raw.clone();
        let msg = Message::parse(&mut parse_buf)
            .map_err(|e| BackendError::Protocol(e.to_string()))?
            .ok_or_else(|| BackendError::Protocol("incomplete message".into()))?;
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let password = password.ok_or_else(needs_password)?;
                frontend::password_message(password, &mut buf).map_err(|e| BackendError::Protocol(e.to_string()))?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password.ok_or_else(needs_password)?;
                let hash = postgres_protocol::authentication::md5_hash(login.role.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf)
                    .map_err(|e| BackendError::Protocol(e.to_string()))?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut has_scram = false;
                while let Ok(Some(m)) = mechanisms.next() {
                    has_scram |= m == "SCRAM-SHA-256";
                }
                if !has_scram {
                    return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256".into()));
                }
                let s = ScramSha256::new(password.ok_or_else(needs_password)?, ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut buf)
                    .map_err(|e| BackendError::Protocol(e.to_string()))?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or_else(|| BackendError::Protocol("SASL continue before SASL".into()))?;
                s.update(body.data()).map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut buf).map_err(|e| BackendError::Protocol(e.to_string()))?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram.as_mut().ok_or_else(|| BackendError::Protocol("SASL final before SASL".into()))?;
                s.finish(body.data()).map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
            }
            Message::BackendKeyData(body) => pid_secret = (body.process_id(), body.secret_key()),
            Message::ParameterStatus(_) | Message::NoticeResponse(_) if !asked => greeting.extend_from_slice(&raw),
            Message::ReadyForQuery(_) if !asked => {
                greeting.extend_from_slice(&raw);
                asked = true;
                frontend::query(SEARCH_PATH_QUERY, &mut buf).map_err(|e| BackendError::Protocol(e.to_string()))?;
            }
            Message::DataRow(body) if asked => {
                let mut ranges = body.ranges();
                if let Ok(Some(Some(r))) = ranges.next() {
                    search_path = std::str::from_utf8(&body.buffer()[r]).ok().map(str::to_owned);
                }
            }
            Message::RowDescription(_)
            | Message::CommandComplete(_)
            | Message::NoticeResponse(_)
            | Message::ParameterStatus(_)
                if asked => {}
            // The question failed (it cannot, short of a broken server): the path stays unknown.
            Message::ErrorResponse(_) if asked => search_path = None,
            Message::ReadyForQuery(_) => {
                return Ok(BackendConn {
                    stream,
                    pid: pid_secret.0,
                    secret: pid_secret.1,
                    greeting,
                    leftover: rbuf,
                    search_path,
                });
            }
            Message::ErrorResponse(body) => {
                let (code, message) = error_fields(&body);
                return Err(BackendError::Refused { code, message, raw: raw.to_vec() });
            }
            _ => {
                return Err(BackendError::UnsupportedAuth(format!("message type '{}'", raw[0] as char)));
            }
        }
        if !buf.is_empty() {
            stream.write_all(&buf).await?;
            buf.clear();
        }
    }
}

fn error_fields(body: &postgres_protocol::message::backend::ErrorResponseBody) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}
