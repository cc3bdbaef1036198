//! From an accepted TCP connection to an authenticated client: SSLRequest/TLS, the start-up
//! packet, protocol version negotiation, and authentication.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::auth;
use super::error::FrontendError;
use super::stream::ClientStream;
use crate::config::{NodeConfig, TlsMode};
use crate::protocol::messages::{self, FirstPacket, MAX_STARTUP_PACKET};
use crate::sqlstate::{ClientError, code};

/// What a new connection turned out to be.
pub enum Handshake {
    Session(ClientHello),
    /// A CancelRequest. The caller closes `stream` only once the cancel has been delivered:
    /// clients take the close to mean that it has.
    Cancel {
        pid: i32,
        secret: i32,
        stream: ClientStream,
    },
}

/// An authenticated client, ready for its session.
pub struct ClientHello {
    pub stream: ClientStream,
    pub user: String,
    /// The role its session runs as.
    pub login: super::auth::Authenticated,
    pub database: String,
    /// Start-up parameters other than user and database (application_name, options, ...).
    pub params: Vec<(String, String)>,
}

pub async fn handshake(tcp: TcpStream, cfg: &NodeConfig, gate: &super::Gate) -> Result<Handshake, FrontendError> {
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?.ip();
    let mut stream: ClientStream = Either::Left(tcp);
    loop {
        let body = match read_startup_packet(&mut stream).await {
            Ok(body) => body,
            Err(FrontendError::Refused(e)) => return refuse(&mut stream, e).await,
            Err(e) => return Err(e),
        };
        match messages::decode_first_packet(&body) {
            Some(FirstPacket::SslRequest) if !super::stream::is_tls(&stream) => {
                let Some(tls) = cfg.tls.as_ref().filter(|_| cfg.tls_mode != TlsMode::Disable) else {
                    stream.write_all(b"N").await?;
                    continue;
                };
                stream.write_all(b"S").await?;
                let Either::Left(tcp) = stream else { unreachable!("checked plaintext above") };
                let tls_stream = tls.acceptor.accept(tcp).await.map_err(FrontendError::Tls)?;
                stream = Either::Right(Box::new(tls_stream));
            }
            Some(FirstPacket::GssEncRequest) if !super::stream::is_tls(&stream) => {
                stream.write_all(b"N").await?;
            }
            Some(FirstPacket::Cancel { pid, secret }) => {
                return Ok(Handshake::Cancel { pid, secret, stream });
            }
            Some(FirstPacket::Startup { major: 3, minor, params }) => {
                return startup(stream, cfg, gate, peer, minor, params).await.map(Handshake::Session);
            }
            Some(FirstPacket::Startup { major, minor, .. }) => {
                let e = ClientError::fatal(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("unsupported frontend protocol {major}.{minor}: server supports 3.0"),
                );
                return refuse(&mut stream, e).await;
            }
            _ => {
                let e = ClientError::fatal(code::PROTOCOL_VIOLATION, "invalid startup packet layout");
                return refuse(&mut stream, e).await;
            }
        }
    }
}

async fn startup(
    mut stream: ClientStream,
    cfg: &NodeConfig,
    gate: &super::Gate,
    peer: std::net::IpAddr,
    minor: u16,
    params: Vec<(String, String)>,
) -> Result<ClientHello, FrontendError> {
    let tls = super::stream::is_tls(&stream);
    if cfg.tls_mode == TlsMode::Require && !tls {
        let e = ClientError::fatal(
            code::INVALID_AUTHORIZATION,
            format!("pgmix node \"{}\" requires TLS: plaintext connections are refused", cfg.node_name),
        )
        .with_hint("Connect with sslmode=require (or verify-ca / verify-full).");
        return refuse(&mut stream, e).await;
    }
    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    let mut unrecognized = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication" if v != "false" && v != "0" && v != "off" && v != "no" => {
                let e = ClientError::fatal(code::FEATURE_NOT_SUPPORTED, "pgmix does not serve replication connections")
                    .with_hint("Connect to the local Postgres directly for physical or logical replication.");
                return refuse(&mut stream, e).await;
            }
            "replication" => {}
            _ if k.starts_with("_pq_.") => unrecognized.push(k),
            _ => rest.push((k, v)),
        }
    }
    if minor > 0 || !unrecognized.is_empty() {
        let mut buf = BytesMut::new();
        crate::protocol::codec::negotiate_protocol_version(0, &unrecognized, &mut buf);
        stream.write_all(&buf).await?;
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        let e = ClientError::fatal(code::INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet");
        return refuse(&mut stream, e).await;
    };
    let database = database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    // An address that failed too often waits before every attempt, right or wrong, so that how
    // long an answer takes tells a guesser nothing.
    let delay = gate.failures.delay(peer, std::time::Instant::now());
    if !delay.is_zero() {
        crate::metrics::Metrics::inc(&gate.metrics.auth_delayed_total);
        tokio::time::sleep(delay).await;
    }
    let login = match auth::authenticate(&mut stream, cfg, gate, &user, tls).await {
        Ok(login) => login,
        Err(FrontendError::Refused(ce)) => {
            if ce.code == code::INVALID_PASSWORD {
                gate.failures.failed(peer, std::time::Instant::now());
            }
            return refuse(&mut stream, ce).await;
        }
        Err(other) => return Err(other),
    };
    Ok(ClientHello { stream, user, login, database, params: rest })
}

async fn read_startup_packet(stream: &mut ClientStream) -> Result<Vec<u8>, FrontendError> {
    let len = stream.read_i32().await? as i64;
    if !(8..=MAX_STARTUP_PACKET as i64).contains(&len) {
        return Err(FrontendError::Refused(ClientError::fatal(
            code::PROTOCOL_VIOLATION,
            format!("invalid length of startup packet: {len}"),
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Sends a FATAL error and reports it; the caller closes the connection.
pub(crate) async fn refuse<T>(stream: &mut ClientStream, e: ClientError) -> Result<T, FrontendError> {
    let mut buf = BytesMut::new();
    e.encode(&mut buf);
    // The client may already be gone; the refusal is logged either way.
    let _ = stream.write_all(&buf).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    Err(FrontendError::Refused(e))
}
