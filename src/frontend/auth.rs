//! Client authentication against the users in `proxy.toml`: SCRAM-SHA-256 (and -PLUS over TLS) by
//! default; MD5 and cleartext only when `auth.method` asks for them.

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::FrontendError;
use super::scram::{ScramError, ScramServer};
use super::stream::ClientStream;
use crate::config::{AuthMethod, NodeConfig};
use crate::protocol::messages;
use crate::sqlstate::{ClientError, code};

/// Password-family messages are small; this bounds what an unauthenticated client can make us hold.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

fn failed(user: &str) -> FrontendError {
    FrontendError::Refused(ClientError::fatal(
        code::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

pub async fn authenticate(
    stream: &mut ClientStream,
    cfg: &NodeConfig,
    user: &str,
    tls: bool,
) -> Result<(), FrontendError> {
    let auth = cfg.users.get(user);
    let plain = auth.and_then(|a| a.plain.as_deref());
    let mut buf = BytesMut::new();
    match (cfg.auth_method, plain) {
        (AuthMethod::Password, _) => {
            messages::auth_cleartext(&mut buf);
            send(stream, &mut buf).await?;
            let body = read_password_message(stream).await?;
            let given = messages::cstr(&body).map(|(s, _)| s);
            if plain.is_none() || given != plain {
                return Err(failed(user));
            }
        }
        (AuthMethod::Md5, Some(password)) => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            messages::auth_md5(salt, &mut buf);
            send(stream, &mut buf).await?;
            let body = read_password_message(stream).await?;
            let expected = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
            if messages::cstr(&body).map(|(s, _)| s) != Some(expected.as_str()) {
                return Err(failed(user));
            }
        }
        // SCRAM, also for md5 users that only have a verifier, as Postgres does.
        _ => scram(stream, cfg, user, tls, &mut buf).await?,
    }
    messages::auth_ok(&mut buf);
    send(stream, &mut buf).await
}

async fn scram(
    stream: &mut ClientStream,
    cfg: &NodeConfig,
    user: &str,
    tls: bool,
    buf: &mut BytesMut,
) -> Result<(), FrontendError> {
    let binding = if tls { cfg.tls.as_ref().and_then(|t| t.end_point.clone().ok()) } else { None };
    let mut server = ScramServer::new(cfg.users.get(user).map(|u| u.scram.clone()), user, binding);
    messages::auth_sasl(server.mechanisms(), buf);
    send(stream, buf).await?;

    let body = read_password_message(stream).await?;
    let (mechanism, data) = messages::sasl_initial_response(&body)
        .ok_or_else(|| protocol_violation("malformed SASLInitialResponse message"))?;
    let server_first = server.client_first(mechanism, data).map_err(|e| scram_error(e, user))?;
    messages::auth_sasl_continue(server_first.as_bytes(), buf);
    send(stream, buf).await?;

    let body = read_password_message(stream).await?;
    let server_final = server.client_final(&body).map_err(|e| scram_error(e, user))?;
    messages::auth_sasl_final(server_final.as_bytes(), buf);
    Ok(())
}

fn scram_error(e: ScramError, user: &str) -> FrontendError {
    match e {
        ScramError::WrongPassword => failed(user),
        ScramError::ChannelBinding(_) | ScramError::Mechanism => {
            FrontendError::Refused(ClientError::fatal(code::INVALID_AUTHORIZATION, e.to_string()))
        }
        ScramError::Malformed(_) | ScramError::BadVerifier(_) => protocol_violation(&e.to_string()),
    }
}

fn protocol_violation(msg: &str) -> FrontendError {
    FrontendError::Refused(ClientError::fatal(code::PROTOCOL_VIOLATION, msg.to_owned()))
}

async fn send(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<(), FrontendError> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    buf.clear();
    Ok(())
}

/// Reads one 'p' message and returns its body.
async fn read_password_message(stream: &mut ClientStream) -> Result<Vec<u8>, FrontendError> {
    let tag = stream.read_u8().await?;
    if tag != b'p' {
        return Err(protocol_violation(&format!("expected password response, got message type {}", tag as char)));
    }
    let len = stream.read_i32().await?;
    if len < 4 || len as usize > MAX_AUTH_MESSAGE {
        return Err(protocol_violation(&format!("invalid password message length {len}")));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(body)
}
