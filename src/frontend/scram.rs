//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side (RFC 5802, RFC 7677, RFC 5929), as a pure
//! state machine: client messages in, server messages or a verdict out. No I/O, so it is tested
//! directly against `postgres-protocol`'s client implementation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding check failed: {0}")]
    ChannelBinding(&'static str),
    #[error("password authentication failed")]
    WrongPassword,
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    #[error("client selected an invalid SASL authentication mechanism")]
    Mechanism,
}

/// What the server stores for a user: never the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// Parses Postgres's stored form `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier("must start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier("missing `$` before the keys"))?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier("missing `:` after the iterations"))?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier("missing `:` between the keys"))?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier("iterations is not a number"))?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier("iterations must be positive"));
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::BadVerifier("salt is not base64"))?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
                .ok_or(ScramError::BadVerifier("keys must be 32 bytes of base64"))
        };
        Ok(Self { iterations, salt, stored_key: key(stored)?, server_key: key(server)? })
    }

    /// Derives a verifier from a plain password, with a random salt, as `ALTER ROLE ... PASSWORD` does.
    pub fn from_password(password: &str) -> Self {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The library writes exactly the format `parse` reads.
        Self::parse(&text).unwrap_or_else(|_| Self::mock("fallback", &rand::random::<[u8; 32]>()))
    }

    /// A verifier for a user that does not exist, so that an unknown user goes through the same
    /// exchange as a wrong password and learns nothing more. Its salt is stable per user (a real
    /// user's salt does not change between attempts either) but keyed with `key`, a secret of
    /// the node: a salt anyone could compute from the name would tell unknown users apart.
    pub fn mock(user: &str, key: &[u8]) -> Self {
        let salt = hmac(key, format!("pgmix-mock-salt:{user}").as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        rand::rng().fill_bytes(&mut stored_key);
        Self { iterations: 4096, salt, stored_key, server_key: [0u8; 32] }
    }
}

impl ScramVerifier {
    /// Whether `password` is the one this verifier was made from (for a cleartext login against
    /// a stored SCRAM secret): Hi() as RFC 5802 defines it, then StoredKey compared in constant
    /// time.
    pub fn matches_password(&self, password: &str) -> bool {
        let mut block = self.salt.clone();
        block.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hmac(password.as_bytes(), &block);
        let mut salted = u;
        for _ in 1..self.iterations {
            u = hmac(password.as_bytes(), &u);
            for (s, x) in salted.iter_mut().zip(u) {
                *s ^= x;
            }
        }
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        stored.iter().zip(self.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

enum State {
    Initial,
    SentFirst { client_first_bare: String, server_first: String, nonce: String, gs2_header: String },
    Done,
}

/// One SCRAM exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    user_exists: bool,
    /// `Some` on a TLS connection: the binding data a `-PLUS` client must present.
    channel_binding: Option<Vec<u8>>,
    state: State,
}

impl ScramServer {
    /// `mock_key`: the node's secret for the salts of unknown users (see `ScramVerifier::mock`).
    pub fn new(verifier: Option<ScramVerifier>, user: &str, channel_binding: Option<Vec<u8>>, mock_key: &[u8]) -> Self {
        let user_exists = verifier.is_some();
        let verifier = verifier.unwrap_or_else(|| ScramVerifier::mock(user, mock_key));
        Self { verifier, user_exists, channel_binding, state: State::Initial }
    }

    /// The mechanisms to offer: `-PLUS` only where channel binding is possible (TLS).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() { &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256] } else { &[SCRAM_SHA_256] }
    }

    /// Handles the client-first message; returns the server-first message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<String, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            _ => return Err(ScramError::Mechanism),
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (flag, rest) = text.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        match (flag, plus) {
            ("n", false) => {}
            // The client could bind but believes we cannot; we offered -PLUS, so this is a downgrade.
            ("y", false) if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBinding("client thinks the server does not support channel binding"));
            }
            ("y", false) => {}
            ("p=tls-server-end-point", true) => {}
            (f, true) if !f.starts_with("p=") => {
                return Err(ScramError::ChannelBinding("SCRAM-SHA-256-PLUS requires channel binding data"));
            }
            (f, _) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBinding("unsupported or unexpected channel binding type"));
            }
            _ => return Err(ScramError::Malformed("unexpected GS2 channel binding flag")),
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authorization identity is not supported"));
        }
        let mut client_nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_at_checked(2)) {
                (0, Some(("n=", _))) => {}
                (0, Some(("m=", _))) => {
                    return Err(ScramError::Malformed("mandatory extensions are not supported"));
                }
                (1, Some(("r=", n))) if !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') => {
                    client_nonce = Some(n)
                }
                (0 | 1, _) => return Err(ScramError::Malformed("expected n= and r= attributes")),
                _ => {}
            }
        }
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("missing client nonce"))?;
        let mut server_part = [0u8; 18];
        rand::rng().fill_bytes(&mut server_part);
        let nonce = format!("{client_nonce}{}", B64.encode(server_part));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&self.verifier.salt), self.verifier.iterations);
        let gs2_header = format!("{flag},{authzid},");
        self.state = State::SentFirst {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            gs2_header,
        };
        Ok(server_first)
    }

    /// Handles the client-final message; returns the server-final message when the proof is right.
    pub fn client_final(&mut self, message: &[u8]) -> Result<String, ScramError> {
        let State::SentFirst { client_first_bare, server_first, nonce, gs2_header } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected message order"));
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or(ScramError::Malformed("missing c="))?;
        let their_nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("missing r="))?;

        let cbind = B64.decode(cbind).map_err(|_| ScramError::Malformed("c= is not base64"))?;
        let mut expected = gs2_header.clone().into_bytes();
        if gs2_header.starts_with("p=") {
            // Only set when the client chose -PLUS, which `client_first` allowed only over TLS.
            expected.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        if cbind != expected {
            return Err(ScramError::ChannelBinding("channel binding data does not match this TLS connection"));
        }
        if their_nonce != nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed("proof must be 32 bytes of base64"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: a timing difference must not reveal how much of the key matched.
        let diff = stored.iter().zip(self.verifier.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 || !self.user_exists {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn an_unknown_users_salt_is_stable_but_not_computable_from_the_name() {
        let a = ScramVerifier::mock("ghost", b"node secret");
        assert_eq!(a.salt, ScramVerifier::mock("ghost", b"node secret").salt, "stable, like a real user's");
        assert_ne!(a.salt, ScramVerifier::mock("ghost", b"another secret").salt);
        assert_ne!(a.salt, Sha256::digest(b"pgmix-mock-salt:ghost")[..16].to_vec());
    }

    #[test]
    fn a_cleartext_password_is_checked_against_a_stored_verifier() {
        let v = ScramVerifier::from_password("s3cret");
        assert!(v.matches_password("s3cret"));
        assert!(!v.matches_password("s3cre"));
    }

    /// Binding data as the server derives it; here any bytes stand in for a certificate.
    fn tls_server_end_point(cert: &[u8]) -> Vec<u8> {
        Sha256::digest(cert).to_vec()
    }

    fn run(
        server_pw: Option<&str>,
        client_pw: &str,
        tls_cert: Option<&[u8]>,
        client_cb: ChannelBinding,
        mechanism: &str,
    ) -> Result<(), ScramError> {
        let verifier = server_pw.map(ScramVerifier::from_password);
        let mut server = ScramServer::new(verifier, "alice", tls_cert.map(tls_server_end_point), b"key");
        let mut client = ScramSha256::new(client_pw.as_bytes(), client_cb);
        let first = server.client_first(mechanism, client.message())?;
        client.update(first.as_bytes()).map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let last = server.client_final(client.message())?;
        client.finish(last.as_bytes()).map_err(|_| ScramError::Malformed("client rejected server signature"))
    }

    #[test]
    fn right_password_authenticates_and_server_proves_itself() {
        assert_eq!(run(Some("pw"), "pw", None, ChannelBinding::unsupported(), SCRAM_SHA_256), Ok(()));
    }

    #[test]
    fn wrong_password_is_refused() {
        assert_eq!(
            run(Some("pw"), "nope", None, ChannelBinding::unsupported(), SCRAM_SHA_256),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn unknown_user_looks_like_a_wrong_password() {
        assert_eq!(run(None, "pw", None, ChannelBinding::unsupported(), SCRAM_SHA_256), Err(ScramError::WrongPassword));
    }

    #[test]
    fn plus_with_matching_certificate_authenticates() {
        let cert = b"certificate bytes";
        let cb = ChannelBinding::tls_server_end_point(tls_server_end_point(cert));
        assert_eq!(run(Some("pw"), "pw", Some(cert), cb, SCRAM_SHA_256_PLUS), Ok(()));
    }

    #[test]
    fn plus_with_another_certificate_is_refused() {
        let cb = ChannelBinding::tls_server_end_point(tls_server_end_point(b"a man in the middle"));
        assert!(matches!(
            run(Some("pw"), "pw", Some(b"real cert"), cb, SCRAM_SHA_256_PLUS),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn plus_is_never_accepted_without_tls() {
        let cb = ChannelBinding::tls_server_end_point(vec![1; 32]);
        assert_eq!(run(Some("pw"), "pw", None, cb, SCRAM_SHA_256_PLUS), Err(ScramError::Mechanism));
        let server = ScramServer::new(None, "a", None, b"key");
        assert_eq!(server.mechanisms(), &[SCRAM_SHA_256]);
    }

    #[test]
    fn downgrade_from_plus_is_detected() {
        // 'y' means: I could bind, but I think you cannot. Over TLS we offered -PLUS.
        assert!(matches!(
            run(Some("pw"), "pw", Some(b"cert"), ChannelBinding::unrequested(), SCRAM_SHA_256),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut s = ScramServer::new(None, "a", None, b"key");
        for junk in [&b""[..], b"n", b"n,,", b"x,,n=,r=abc", b"n,,r=abc", b"n,a=b,n=,r=x", b"\xff\xfe"] {
            assert!(s.client_first(SCRAM_SHA_256, junk).is_err(), "{junk:?}");
        }
        assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
    }

    #[test]
    fn verifier_round_trips_postgres_format() {
        let text = postgres_protocol::password::scram_sha_256(b"secret");
        let v = ScramVerifier::parse(&text).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert!(ScramVerifier::parse("SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB").is_err());
        assert!(ScramVerifier::parse("md5abc").is_err());
    }
}
