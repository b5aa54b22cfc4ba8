//! What can go wrong inside the engine: bad input (named by field or by
//! record), a lower layer that failed (a worker pool gone, a read that
//! failed in SQLite), or an answer that would show a change not yet
//! acknowledged.
//!
//! The engine knows nothing of HTTP: the server turns an [`EngineError`]
//! into its `ApiError` (and so into a status) in `server/error.rs`, the one
//! place that mapping lives. The messages here are the ones clients see, so
//! they keep the wording they had when the engine returned `ApiError`.

use crate::storage::error::StoreError;
use crate::storage::pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: the message names the field.
    #[error("{field}: {reason}")]
    BadField { field: &'static str, reason: String },
    /// Bad input in one record of a batch: `records[3].values.net_profit`.
    #[error("{field}: {reason}")]
    BadRecord { field: String, reason: String },
    /// Bad input that is not about one field (not JSON, not an object, …).
    #[error("{0}")]
    BadRequest(String),
    /// A worker pool (readers, compute) is gone or its job panicked.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A read failed in the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The answer depends on a change that is not acknowledged yet
    /// (docs/WRITE_PROTOCOL.md, V2): the message names it.
    #[error("{0}")]
    NotAcknowledged(String),
}

impl EngineError {
    pub fn field(field: &'static str, reason: impl Into<String>) -> Self {
        EngineError::BadField {
            field,
            reason: reason.into(),
        }
    }
}
