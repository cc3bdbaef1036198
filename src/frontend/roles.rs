//! Postgres's own roles as pgmix logins, in the way of PgBouncer's `auth_query`: a client names a
//! role, pgmix reads that role's stored secret from its local Postgres and runs the password
//! exchange itself, and the session then logs in to Postgres as that role.
//!
//! The secret is read from `pg_authid` over pgmix's own superuser connection (`backend.user`):
//! the catalog of secrets is never reachable by a client's session, whose role is not a superuser
//! unless an administrator made it one. Secrets are cached for `auth.role_cache_secs`, so a login
//! usually costs no extra round trip, and a changed or dropped role stops working within that
//! bound. A failed exchange re-reads the secret: an md5 response is checked again against the
//! fresh hash; a SCRAM proof cannot be (a new password comes with a new salt, which the client
//! has not used), so the next attempt uses the fresh secret.
//!
//! Crash meaning: none; the cache is memory only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::scram::ScramVerifier;
use crate::config::BackendConfig;

/// What Postgres stores for a role, as far as logging in goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSecret {
    pub password: StoredPassword,
    /// `VALID UNTIL` has passed: the password no longer works, as in Postgres.
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredPassword {
    Scram(ScramVerifier),
    /// `md5` followed by 32 hex digits: md5(password || role name).
    Md5(String),
    /// No password, or one in a form pgmix cannot check: nobody logs in with a password.
    None,
}

impl StoredPassword {
    fn parse(rolpassword: Option<&str>) -> Self {
        match rolpassword {
            Some(s) if s.starts_with("SCRAM-SHA-256$") => {
                ScramVerifier::parse(s).map(StoredPassword::Scram).unwrap_or(StoredPassword::None)
            }
            Some(s) if s.len() == 35 && s.starts_with("md5") => StoredPassword::Md5(s.to_owned()),
            _ => StoredPassword::None,
        }
    }
}

/// `md5` followed by the hex MD5 of `parts` concatenated: the form of Postgres's md5 secrets and
/// of md5 challenge responses.
pub fn md5_text(parts: &[&[u8]]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let mut out = String::from("md5");
    for b in h.finalize() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an md5 challenge response answers `salt` for the stored md5 secret.
pub fn md5_response_matches(stored: &str, salt: [u8; 4], response: &str) -> bool {
    let Some(inner) = stored.strip_prefix("md5") else { return false };
    same(&md5_text(&[inner.as_bytes(), &salt]), response)
}

/// Whether a cleartext password matches the stored md5 secret of `role`.
pub fn md5_password_matches(stored: &str, role: &str, password: &str) -> bool {
    same(&md5_text(&[password.as_bytes(), role.as_bytes()]), stored)
}

/// Reads and caches role secrets; shared by the node's connections.
pub struct RoleSecrets {
    backend: BackendConfig,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<RoleSecret>)>>,
    /// Bounds the connections pgmix opens to read secrets, so that a flood of logins with
    /// unknown names cannot take Postgres's connection slots.
    reads: tokio::sync::Semaphore,
}

/// Secret reads in flight at once.
const CONCURRENT_READS: usize = 4;

const QUERY: &str = "SELECT rolpassword, COALESCE(rolvaliduntil < now(), false) \
    FROM pg_catalog.pg_authid WHERE rolname = $1";

impl RoleSecrets {
    pub fn new(backend: BackendConfig, ttl: Duration) -> Self {
        Self { backend, ttl, cache: Mutex::new(HashMap::new()), reads: tokio::sync::Semaphore::new(CONCURRENT_READS) }
    }

    /// The secret of `role` (None: no such role), from the cache when it is younger than the
    /// bound and `fresh` is false.
    pub async fn get(&self, role: &str, fresh: bool) -> Result<Option<RoleSecret>, tokio_postgres::Error> {
        if !fresh {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, secret)) = cache.get(role)
                && at.elapsed() < self.ttl
            {
                return Ok(secret.clone());
            }
        }
        let secret = self.read(role).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: entries past the bound are worthless, and a flood of unknown names must not
        // grow the map without end.
        if cache.len() >= 4096 {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= 4096 {
                cache.clear();
            }
        }
        cache.insert(role.to_owned(), (Instant::now(), secret.clone()));
        Ok(secret)
    }

    async fn read(&self, role: &str) -> Result<Option<RoleSecret>, tokio_postgres::Error> {
        // Never closed, so acquiring cannot fail.
        let _permit = self.reads.acquire().await.ok();
        let (client, conn) = self.backend.client_config().connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let row = client.query_opt(QUERY, &[&role]).await;
        drop(client);
        let _ = conn.await;
        Ok(row?.map(|r| RoleSecret { password: StoredPassword::parse(r.get::<_, Option<&str>>(0)), expired: r.get(1) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_responses_are_checked_against_the_stored_hash() {
        // What Postgres stores for role `app` with password `x`: md5(password || role name).
        let inner = md5_text(&[b"x", b"app"]);
        assert!(md5_password_matches(&inner, "app", "x"));
        assert!(!md5_password_matches(&inner, "app", "y"));
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"app", b"x", salt);
        assert!(md5_response_matches(&inner, salt, &response));
        assert!(!md5_response_matches(&inner, [9, 9, 9, 9], &response));
        let wrong = postgres_protocol::authentication::md5_hash(b"app", b"y", salt);
        assert!(!md5_response_matches(&inner, salt, &wrong));
    }

    #[test]
    fn stored_passwords_parse_by_their_form() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(StoredPassword::parse(Some(&v)), StoredPassword::Scram(_)));
        let m = format!("md5{}", "0".repeat(32));
        assert_eq!(StoredPassword::parse(Some(&m)), StoredPassword::Md5(m.clone()));
        assert_eq!(StoredPassword::parse(None), StoredPassword::None);
        assert_eq!(StoredPassword::parse(Some("plain text")), StoredPassword::None);
    }
}
