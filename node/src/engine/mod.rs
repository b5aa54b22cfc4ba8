//! Engine: from a request body to response bytes — parsing and validating
//! requests (queries and write batches), answering queries from the cache
//! or the store, rendering, the cache itself, the background warm-up.
//!
//! The engine knows nothing of HTTP: it returns its own
//! [`error::EngineError`], which the server maps to a status. It uses
//! storage and the model below it, never the server above.

pub mod cache;
pub mod error;
pub mod preload;
pub mod query;
pub mod render;
pub mod request;
pub mod write_request;
