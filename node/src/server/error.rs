//! The one place where a failure becomes an HTTP status.
//!
//! Handlers return [`ApiError`]; `api.rs` renders it as the contract's JSON
//! envelope with the status from [`ApiError::status`] and, for a write that
//! was not acknowledged, the `outcome` field from [`ApiError::outcome`].
//! Every message says what was wrong and, for bad input, with which field.
//!
//! Each lower layer has its own error (the connection loop's
//! `TransportError`, `EngineError`, `StoreError`, `PoolError`); the `From`
//! impls are the only place they become an `ApiError`, so a status is
//! decided here and nowhere else.

use crate::engine::error::EngineError;
use crate::server::ha::{AckFailure, Outcome};
use crate::server::http::TransportError;
use crate::storage::error::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: the message names the field.
    #[error("{field}: {reason}")]
    BadField { field: &'static str, reason: String },
    /// Bad input in one record of a batch: `records[3].values.net_profit`.
    #[error("{field}: {reason}")]
    BadRecord { field: String, reason: String },
    /// Bad input that is not about one field (not JSON, not an object, …).
    #[error("{0}")]
    BadRequest(String),
    #[error("missing admin token: send Authorization: Bearer <token>")]
    Unauthorized,
    #[error("wrong admin token")]
    Forbidden,
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// Refused by the connection loop before routing (framing, limits,
    /// timeouts).
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Unavailable(String),
    /// A read whose answer depends on a change not acknowledged yet
    /// (docs/WRITE_PROTOCOL.md, V2): 503 with `Retry-After`, the node
    /// itself is well.
    #[error("{0}")]
    Pending(String),
    /// A write that is not acknowledged, and whether it may have been.
    #[error("{message}")]
    Write { outcome: Outcome, message: String },
    /// The replication request cannot be served incrementally.
    #[error("{0}")]
    Gone(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: &'static str, reason: impl Into<String>) -> Self {
        ApiError::BadField {
            field,
            reason: reason.into(),
        }
    }

    /// The HTTP status for this error; the envelope's `status_code` is the same
    /// number.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadField { .. } | ApiError::BadRecord { .. } | ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden => 403,
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Transport(t) => match t {
                TransportError::Malformed(_) | TransportError::BadLength(_) => 400,
                TransportError::RequestTimeout => 408,
                TransportError::PayloadTooLarge { .. } => 413,
                TransportError::HeadersTooLarge { .. } => 431,
                TransportError::TransferEncodingUnsupported => 501,
                TransportError::TooManyConnections => 503,
            },
            ApiError::Unavailable(_) | ApiError::Pending(_) | ApiError::Write { .. } => 503,
            ApiError::Gone(_) => 410,
            ApiError::Internal(_) => 500,
        }
    }

    /// The answer's `outcome` field: for a write, whether it is known not
    /// to be acknowledged or may have been.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            ApiError::Write { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }

    /// A write refused, or failed, with nothing acknowledged.
    pub fn not_acknowledged(message: impl Into<String>) -> Self {
        ApiError::Write {
            outcome: Outcome::NotAcknowledged,
            message: message.into(),
        }
    }
}

impl From<AckFailure> for ApiError {
    fn from(f: AckFailure) -> Self {
        ApiError::Write {
            outcome: f.outcome(),
            message: f.to_string(),
        }
    }
}

impl From<crate::storage::pool::PoolError> for ApiError {
    fn from(e: crate::storage::pool::PoolError) -> Self {
        match e {
            crate::storage::pool::PoolError::Gone => ApiError::Unavailable(e.to_string()),
            crate::storage::pool::PoolError::Panicked(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadField { field, reason } => ApiError::BadField { field, reason },
            EngineError::BadRecord { field, reason } => ApiError::BadRecord { field, reason },
            EngineError::BadRequest(m) => ApiError::BadRequest(m),
            EngineError::Pool(e) => ApiError::from(e),
            EngineError::Store(e) => ApiError::from(e),
            EngineError::NotAcknowledged(m) => ApiError::Pending(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unacknowledged_write_is_a_503_that_says_whether_it_may_have_been() {
        let cases = [
            (AckFailure::NotLeader(4), Some(Outcome::NotAcknowledged)),
            (
                AckFailure::Unreachable("refused".into()),
                Some(Outcome::NotAcknowledged),
            ),
            (
                AckFailure::Unconfirmed {
                    seq: 9,
                    needed: 1,
                    ms: 20,
                },
                Some(Outcome::NotAcknowledged),
            ),
            (
                AckFailure::Unknown("attempt timed out".into()),
                Some(Outcome::Unknown),
            ),
        ];
        for (failure, outcome) in cases {
            let text = failure.to_string();
            let e = ApiError::from(failure);
            assert_eq!(e.status(), 503, "{e}");
            assert_eq!(e.outcome(), outcome, "{e}");
            assert_eq!(e.to_string(), text, "the message is the failure's");
        }
        assert_eq!(ApiError::Unavailable("x".into()).outcome(), None);
        assert_eq!(ApiError::field("from", "required").outcome(), None);
    }
}
