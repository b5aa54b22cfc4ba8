//! What can go wrong in storage: SQLite, opening a database, the database
//! threads, a replicated change out of order, a bad image.
//!
//! Its own file (not in `store.rs`) because everything in storage returns
//! it — the store, applying a batch, the writer — and `apply.rs` must not
//! import `store.rs`, which calls it (that pair was an import cycle).

use std::path::PathBuf;

use crate::storage::pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("database thread: {0}")]
    Worker(#[from] PoolError),
    #[error("replication out of order: at version {have}, change {got} arrived")]
    OutOfOrder { have: u64, got: u64 },
    #[error("{0}")]
    BadImage(String),
}
