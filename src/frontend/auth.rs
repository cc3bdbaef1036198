//! Client authentication: against the users in `proxy.toml`, or against the login roles of the
//! local Postgres (`auth.logins`; see `roles`). SCRAM-SHA-256 (and -PLUS over TLS) by default;
//! MD5 and cleartext only when `auth.method` asks for them. An unknown name goes through the same
//! exchange as a wrong password and gets the same 28P01, never saying which of the two it was.

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::FrontendError;
use super::roles::{RoleSecret, RoleSecrets, StoredPassword, md5_password_matches, md5_response_matches};
use super::scram::{ScramError, ScramServer, ScramVerifier};
use super::stream::ClientStream;
use crate::config::{AuthMethod, NodeConfig, UserAuth};
use crate::protocol::{codec, messages};
use crate::sqlstate::{ClientError, code};

/// Password-family messages are small; this bounds what an unauthenticated client can make us hold.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Who an authenticated client runs as.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The Postgres role its session logs in as.
    pub role: String,
    /// A password for that login, when pgmix has one (a plain password in `proxy.toml`).
    pub password: Option<String>,
}

fn failed(user: &str) -> FrontendError {
    FrontendError::Refused(ClientError::fatal(
        code::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

pub async fn authenticate(
    stream: &mut ClientStream,
    cfg: &NodeConfig,
    gate: &super::Gate,
    user: &str,
    tls: bool,
) -> Result<Authenticated, FrontendError> {
    let mut buf = BytesMut::new();
    let ex = Exchange { cfg, mock_key: &gate.mock_key, user, tls };
    if let Some(entry) = cfg.users.get(user).filter(|_| cfg.logins.config()) {
        listed(stream, &ex, entry, &mut buf).await?;
        // The backend role's own password serves when a user runs as that role.
        let password =
            entry.plain.clone().or_else(|| cfg.backend.password.clone().filter(|_| entry.role == cfg.backend.user));
        codec::auth_ok(&mut buf);
        send(stream, &mut buf).await?;
        return Ok(Authenticated { role: entry.role.clone(), password });
    }
    let secret = if cfg.logins.postgres() {
        gate.roles.get(user, false).await.map_err(|e| {
            FrontendError::Refused(
                ClientError::fatal(
                    code::CANNOT_CONNECT_NOW,
                    format!("pgmix node \"{}\" cannot read the roles of its local Postgres: {e}", cfg.node_name),
                )
                .with_hint("This node is unhealthy; connect to another node of the cluster, or retry later."),
            )
        })?
    } else {
        None
    };
    role(stream, &ex, &gate.roles, secret, &mut buf).await?;
    codec::auth_ok(&mut buf);
    send(stream, &mut buf).await?;
    Ok(Authenticated { role: user.to_owned(), password: None })
}

/// What every exchange of one login needs.
struct Exchange<'a> {
    cfg: &'a NodeConfig,
    mock_key: &'a [u8],
    user: &'a str,
    tls: bool,
}

/// A user listed in `proxy.toml`.
async fn listed(
    stream: &mut ClientStream,
    ex: &Exchange<'_>,
    entry: &UserAuth,
    buf: &mut BytesMut,
) -> Result<(), FrontendError> {
    let user = ex.user;
    match (ex.cfg.auth_method, entry.plain.as_deref()) {
        (AuthMethod::Password, plain) => {
            let given = cleartext(stream, buf).await?;
            if plain.is_none() || Some(given.as_str()) != plain {
                return Err(failed(user));
            }
            Ok(())
        }
        (AuthMethod::Md5, Some(password)) => {
            let (salt, given) = md5_challenge(stream, buf).await?;
            let expected = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
            if given != expected {
                return Err(failed(user));
            }
            Ok(())
        }
        // SCRAM, also for md5 users that only have a verifier, as Postgres does.
        _ => scram(stream, ex, Some(entry.scram.clone()), buf).await,
    }
}

/// A login role of the local Postgres (`secret` None: no such role, or it may not be used).
async fn role(
    stream: &mut ClientStream,
    ex: &Exchange<'_>,
    roles: &RoleSecrets,
    secret: Option<RoleSecret>,
    buf: &mut BytesMut,
) -> Result<(), FrontendError> {
    let user = ex.user;
    let stored = secret.as_ref().map_or(StoredPassword::None, |s| s.password.clone());
    let result = match (ex.cfg.auth_method, &stored) {
        (AuthMethod::Password, _) => {
            let given = cleartext(stream, buf).await?;
            if cleartext_matches(&stored, user, &given).await {
                Ok(())
            } else {
                // The cache may be stale: check against the role's current secret.
                match roles.get(user, true).await {
                    Ok(Some(fresh)) if !fresh.expired && cleartext_matches(&fresh.password, user, &given).await => {
                        return Ok(());
                    }
                    _ => Err(failed(user)),
                }
            }
        }
        (AuthMethod::Md5, StoredPassword::Md5(h)) => {
            let (salt, given) = md5_challenge(stream, buf).await?;
            if md5_response_matches(h, salt, &given) {
                Ok(())
            } else {
                // The cache may be stale: check the answer against the role's current hash.
                match roles.get(user, true).await {
                    Ok(Some(RoleSecret { password: StoredPassword::Md5(fresh), expired: false }))
                        if md5_response_matches(&fresh, salt, &given) =>
                    {
                        return Ok(());
                    }
                    _ => Err(failed(user)),
                }
            }
        }
        // SCRAM against a SCRAM secret; anything else (an md5 secret where md5 is not allowed,
        // no password, no role) runs a mock exchange that fails like a wrong password.
        (_, stored) => {
            let verifier = match stored {
                StoredPassword::Scram(v) => Some(v.clone()),
                _ => None,
            };
            let r = scram(stream, ex, verifier, buf).await;
            if r.is_err() {
                // Refresh the cache, so that the next attempt meets a changed password.
                let _ = roles.get(user, true).await;
            }
            r
        }
    };
    result?;
    // As in Postgres: a password past VALID UNTIL fails like a wrong one.
    if secret.is_some_and(|s| s.expired) {
        return Err(failed(user));
    }
    Ok(())
}

/// Most SCRAM iterations pgmix computes for a cleartext login: a role may set any count in its
/// own verifier, and the computation runs on pgmix's threads.
const MAX_CLEARTEXT_ITERATIONS: u32 = 1_000_000;

async fn cleartext_matches(stored: &StoredPassword, user: &str, given: &str) -> bool {
    match stored {
        StoredPassword::Scram(v) if v.iterations <= MAX_CLEARTEXT_ITERATIONS => {
            let (v, given) = (v.clone(), given.to_owned());
            tokio::task::spawn_blocking(move || v.matches_password(&given)).await.unwrap_or(false)
        }
        StoredPassword::Md5(h) => md5_password_matches(h, user, given),
        _ => false,
    }
}

async fn cleartext(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<String, FrontendError> {
    codec::auth_cleartext(buf);
    send(stream, buf).await?;
    let body = read_password_message(stream).await?;
    Ok(messages::cstr(&body).map(|(s, _)| s.to_owned()).unwrap_or_default())
}

/// Sends an md5 challenge; returns its salt and the client's answer.
async fn md5_challenge(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<([u8; 4], String), FrontendError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    codec::auth_md5(salt, buf);
    send(stream, buf).await?;
    let body = read_password_message(stream).await?;
    Ok((salt, messages::cstr(&body).map(|(s, _)| s.to_owned()).unwrap_or_default()))
}

async fn scram(
    stream: &mut ClientStream,
    ex: &Exchange<'_>,
    verifier: Option<ScramVerifier>,
    buf: &mut BytesMut,
) -> Result<(), FrontendError> {
    let user = ex.user;
    let binding = if ex.tls { ex.cfg.tls.as_ref().and_then(|t| t.end_point.clone().ok()) } else { None };
    let mut server = ScramServer::new(verifier, user, binding, ex.mock_key);
    codec::auth_sasl(server.mechanisms(), buf);
    send(stream, buf).await?;

    let body = read_password_message(stream).await?;
    let (mechanism, data) = messages::sasl_initial_response(&body)
        .ok_or_else(|| protocol_violation("malformed SASLInitialResponse message"))?;
    let server_first = server.client_first(mechanism, data).map_err(|e| scram_error(e, user))?;
    codec::auth_sasl_continue(server_first.as_bytes(), buf);
    send(stream, buf).await?;

    let body = read_password_message(stream).await?;
    let server_final = server.client_final(&body).map_err(|e| scram_error(e, user))?;
    codec::auth_sasl_final(server_final.as_bytes(), buf);
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
