//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS.
//!
//! The binding is the hash of the server certificate, with the hash function of the
//! certificate's own signature algorithm (MD5 and SHA-1 are replaced by SHA-256). libpq computes
//! it the same way, so a SHA-384 certificate hashed with SHA-256 would fail every
//! `channel_binding=require` login. For signature algorithms with no single hash (Ed25519,
//! RSASSA-PSS) there is no defined binding: pgmix then does not offer -PLUS at all.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The hash a certificate's signature algorithm calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EndPointHash::Sha224 => Sha224::digest(data).to_vec(),
            EndPointHash::Sha256 => Sha256::digest(data).to_vec(),
            EndPointHash::Sha384 => Sha384::digest(data).to_vec(),
            EndPointHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Why a certificate has no binding, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndPointError {
    #[error("the certificate is not well-formed DER")]
    Malformed,
    #[error("its signature algorithm (OID {0}) defines no tls-server-end-point hash")]
    NoHash(String),
}

/// The channel binding data for a DER certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, EndPointError> {
    let oid = signature_algorithm(cert_der).ok_or(EndPointError::Malformed)?;
    let hash = hash_for(oid).ok_or_else(|| EndPointError::NoHash(oid_string(oid)))?;
    Ok(hash.digest(cert_der))
}

/// RFC 5929 §4.1's choice, by signature algorithm OID (DER content bytes).
fn hash_for(oid: &[u8]) -> Option<EndPointHash> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    let (prefix, last) = oid.split_last().map(|(l, p)| (p, *l))?;
    match (prefix, last) {
        (RSA, 4 | 5 | 11) => Some(EndPointHash::Sha256), // md5, sha1, sha256 WithRSAEncryption
        (RSA, 12) => Some(EndPointHash::Sha384),
        (RSA, 13) => Some(EndPointHash::Sha512),
        (RSA, 14) => Some(EndPointHash::Sha224),
        (ECDSA_SHA2, 1) => Some(EndPointHash::Sha224),
        (ECDSA_SHA2, 2) => Some(EndPointHash::Sha256),
        (ECDSA_SHA2, 3) => Some(EndPointHash::Sha384),
        (ECDSA_SHA2, 4) => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// One DER element: (tag, contents, rest).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signature }
/// AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
fn signature_algorithm(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, cert, _) = element(cert_der)? else { return None };
    let (SEQUENCE, _tbs, rest) = element(cert)? else { return None };
    let (SEQUENCE, alg, _) = element(rest)? else { return None };
    let (OID, oid, _) = element(alg)? else { return None };
    Some(oid)
}

fn oid_string(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_certificate_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(tls_server_end_point(&p256), Ok(Sha256::digest(&p256).to_vec()));
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(tls_server_end_point(&p384), Ok(Sha384::digest(&p384).to_vec()));
    }

    #[test]
    fn algorithms_without_a_single_hash_have_no_binding() {
        let ed = cert(&rcgen::PKCS_ED25519);
        assert_eq!(tls_server_end_point(&ed), Err(EndPointError::NoHash("1.3.101.112".to_owned())));
        assert_eq!(tls_server_end_point(b"not a certificate"), Err(EndPointError::Malformed));
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), Err(EndPointError::Malformed));
    }

    #[test]
    fn rsa_and_legacy_hashes() {
        let rsa = |last: u8| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last];
        assert_eq!(hash_for(&rsa(5)), Some(EndPointHash::Sha256), "SHA-1 is replaced by SHA-256");
        assert_eq!(hash_for(&rsa(12)), Some(EndPointHash::Sha384));
        assert_eq!(hash_for(&rsa(13)), Some(EndPointHash::Sha512));
        assert_eq!(hash_for(&rsa(10)), None, "RSASSA-PSS carries its hash in parameters");
        assert_eq!(oid_string(&rsa(11)), "1.2.840.113549.1.1.11");
    }
}
