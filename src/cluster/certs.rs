//! A self-signed certificate for development clusters.

use std::path::{Path, PathBuf};

use super::error::{ClusterError, io_err};

/// Writes `cert.pem` and `key.pem` into `dir` unless both exist; returns their paths.
pub fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), ClusterError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| ClusterError::Cert(e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(io_err(&cert))?;
    std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(io_err(&key))?;
    set_private(&key)?;
    Ok((cert, key))
}

fn set_private(path: &Path) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))
}
