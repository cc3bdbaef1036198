//! Reading the TOML files a node is configured with (`proxy.toml`, the schema file): one error
//! type that always names the file, and the key with the reason where there is one.

use std::path::Path;

use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

/// The file's text and its name for messages.
pub fn read(path: &Path) -> Result<(String, String), FileError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(cause) => Err(FileError::Read { file, cause }),
    }
}

/// Parses TOML into the file's serde structs; unknown keys are the structs' business.
pub fn parse<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError::Syntax { file: file.to_owned(), message: e.to_string() })
}

/// An error about one key of the file.
pub fn invalid(file: &str, key: impl Into<String>, reason: impl Into<String>) -> FileError {
    FileError::Invalid { file: file.to_owned(), key: key.into(), reason: reason.into() }
}
