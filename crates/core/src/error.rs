//! The crate's one error type, and the reason a valid event can still be
//! refused by the fold.

/// Why bytes could not become a valid [`crate::Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("event too large: {size} bytes, limit {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable protobuf: {0}")]
    Protobuf(String),
    #[error("invalid json: {0}")]
    Json(String),
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("corrupt stored aggregate: {0}")]
    Corrupt(String),
}

impl Error {
    /// Machine-readable class, used as the dead letter's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::TooLarge { .. } => "too_large",
            Error::Protobuf(_) | Error::Json(_) => "decode",
            Error::Invalid { .. } | Error::Missing(_) => "validation",
            Error::Config(_) => "config",
            Error::Corrupt(_) => "corrupt",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid { field, reason: reason.into() }
    }
}

/// A valid event the fold refuses given the member's state (for example a
/// return for an order it does not know). It goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);
