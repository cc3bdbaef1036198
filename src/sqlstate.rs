//! Every error a client can see, with its SQLSTATE, decided in one place.
//!
//! Modules return their own `thiserror` enums; this module turns them into a [`ClientError`], which
//! the session writes as an `ErrorResponse`. Retryability is derived from the SQLSTATE here too, so
//! routing and clients agree on what a code means.

use bytes::BytesMut;

/// SQLSTATE codes pgmix emits itself. Codes that Postgres emits are forwarded untouched.
pub mod code {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const STATEMENT_COMPLETION_UNKNOWN: &str = "40003";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
}

/// How bad an error is for the connection that sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection is closed after the error is sent.
    Fatal,
}

/// An error as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Fatal, code, message: message.into(), hint: None }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Whether a client may retry the same work (here or on another node) and expect success.
    pub fn is_retryable(&self) -> bool {
        is_retryable(self.code)
    }

    /// Appends this error as an `ErrorResponse` message.
    pub fn encode(&self, buf: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut fields = vec![(b'S', severity), (b'V', severity), (b'C', self.code), (b'M', self.message.as_str())];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.as_str()));
        }
        crate::protocol::codec::error_fields(b'E', &fields, buf);
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// The one place that says which SQLSTATEs mean "try again".
pub fn is_retryable(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08001" | "08004")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_code_message_and_hint() {
        let mut buf = BytesMut::new();
        ClientError::fatal(code::INVALID_PASSWORD, "password authentication failed for user \"a\"")
            .with_hint("check the password")
            .encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let text = String::from_utf8_lossy(&buf[5..]);
        assert!(text.contains("FATAL"));
        assert!(text.contains("28P01"));
        assert!(text.contains("check the password"));
    }

    #[test]
    fn retryable_codes_are_classified_in_one_place() {
        assert!(is_retryable(code::SERIALIZATION_FAILURE));
        assert!(is_retryable(code::CANNOT_CONNECT_NOW));
        assert!(!is_retryable(code::INVALID_PASSWORD));
        assert!(!is_retryable("23505"));
    }
}
