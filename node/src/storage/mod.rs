//! Storage: SQLite and everything that touches it — the store (schema,
//! reads), the one writer (commit / apply / restore, published in order),
//! applying a batch, the packed per-subject blobs, the worker-thread pools
//! SQLite runs on, the data version, the acknowledged horizon and what is
//! pending above it, readiness, files written whole, the cache dump's file
//! format.
//!
//! Storage imports only the model (and `json.rs`). What must follow a write
//! — the engine's cache and catalog — is reached through
//! [`writer::Publish`], a trait the engine implements, so the dependency
//! still points down.

pub mod apply;
pub mod blob;
pub mod db_file;
pub mod dump;
pub mod error;
pub mod horizon;
pub mod pool;
pub mod state;
pub mod store;
pub mod writer;
