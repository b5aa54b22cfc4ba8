//! Server: HTTP framing, routing, the one API error, metrics.
pub mod api;
pub mod error;
pub mod http;
pub mod image_stream;
pub mod metrics;
