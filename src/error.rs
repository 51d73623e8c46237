//! The engine's one error type. `api::status` maps it to gRPC codes in one place.

/// Everything the engine can refuse or fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// The caller sent something invalid; `field` is a path such as `customers[3].email`.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// An id the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something the caller wanted to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A position outside the range that exists (an event sequence no longer retained).
    #[error("{0}")]
    OutOfRange(String),
    /// A limit was reached; the caller may retry later or with less.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server cannot take writes right now (shutting down, disk trouble).
    #[error("{0}")]
    Unavailable(String),
    /// Stored data failed a check.
    #[error("{0}")]
    DataLoss(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An `InvalidArgument` moved to `field`, keeping its message (for list items checked as a whole
    /// value: `customer_ids[3]: must not be empty`).
    pub fn within_field(self, field: &str) -> Self {
        match self {
            Error::InvalidArgument { message, .. } => Error::InvalidArgument {
                field: field.to_string(),
                message,
            },
            other => other,
        }
    }

    /// The same error with `prefix.` put before the field path of an `InvalidArgument`,
    /// so that item-level checks can be reused under `customers[3]` or `batch 12`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument { field, message } => Error::InvalidArgument {
                field: if field.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}.{field}")
                },
                message,
            },
            other => other,
        }
    }
}

/// Engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
