//! The one error type of silo: what failed, and what the caller can do about it.
//!
//! Variants are semantic rather than per-backend so that a caller can decide on a retry or a
//! fix without knowing which store it talks to. Every message names the operation or path
//! involved and, where there is one, the remedy.

use std::io;

/// Everything a silo operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed something the store will not take (too large, malformed, out of range).
    /// Retrying the same call fails the same way.
    #[error("invalid input: {message}")]
    InvalidInput { message: String },

    /// A store URL, option or environment variable is wrong.
    #[error("configuration error: {message}")]
    Config { message: String },

    /// The server rejected the credentials.
    #[error("unauthorized: {message} (check SILO_TOKEN / VGI_STORAGE_TOKEN)")]
    Unauthorized { message: String },

    /// A transient condition (lock contention that outlasted the retry budget, server down,
    /// overload). The caller may retry the operation.
    #[error("temporarily unavailable: {message} (the operation may be retried)")]
    Unavailable { message: String },

    /// The request contradicts what the store already recorded: an idempotency key reused
    /// for a different request. Retrying the same call fails the same way; use a new key.
    #[error("conflict: {message}")]
    Conflict { message: String },

    /// The backend or the server does not implement this operation.
    #[error("unsupported: {op} is not available on {backend}")]
    Unsupported { op: String, backend: String },

    /// Stored bytes are not what silo wrote: the file is damaged or is not a silo store.
    #[error("corrupt store at {path}: {detail}")]
    Corrupt { path: String, detail: String },

    /// The disk (or a quota or file-size limit) is full; nothing of the failed operation was stored.
    #[error("storage full at {path}: {detail} (free space or raise the limit, then retry)")]
    StorageFull { path: String, detail: String },

    /// An operating-system I/O error, with what silo was doing when it happened.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Any other failure reported by the underlying engine (SQLite, PostgreSQL, HTTP peer).
    #[error("{backend} error: {message}")]
    Backend { backend: String, message: String },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    /// Builds [`Error::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }

    /// Builds [`Error::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds [`Error::Unsupported`].
    pub fn unsupported(op: impl Into<String>, backend: impl Into<String>) -> Self {
        Error::Unsupported {
            op: op.into(),
            backend: backend.into(),
        }
    }

    /// The same error, its message prefixed with where it happened (`what: …`); the kind is
    /// kept, so a caller decides on a retry exactly as for the bare error.
    pub fn within(self, what: &str) -> Self {
        let prefixed = |message: String| format!("{what}: {message}");
        match self {
            Error::InvalidInput { message } => Error::InvalidInput {
                message: prefixed(message),
            },
            Error::Config { message } => Error::Config {
                message: prefixed(message),
            },
            Error::Unauthorized { message } => Error::Unauthorized {
                message: prefixed(message),
            },
            Error::Unavailable { message } => Error::Unavailable {
                message: prefixed(message),
            },
            Error::Conflict { message } => Error::Conflict {
                message: prefixed(message),
            },
            Error::Unsupported { op, backend } => Error::Unsupported {
                op: prefixed(op),
                backend,
            },
            Error::Corrupt { path, detail } => Error::Corrupt {
                path,
                detail: prefixed(detail),
            },
            Error::StorageFull { path, detail } => Error::StorageFull {
                path,
                detail: prefixed(detail),
            },
            Error::Io { context, source } => Error::Io {
                context: prefixed(context),
                source,
            },
            Error::Backend { backend, message } => Error::Backend {
                backend,
                message: prefixed(message),
            },
        }
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
