//! Engine: request parsing, queries, rendering, the cache.
pub mod cache;
pub mod error;
pub mod preload;
pub mod query;
pub mod render;
pub mod request;
pub mod write_request;
