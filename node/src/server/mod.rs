//! Server: the node on the wire — HTTP/1 framing and the connection loop,
//! routing and authorization, the one [`error::ApiError`] with a `From` for
//! each lower error and the status mapping in one place, metrics, and the
//! streamed database image.
//!
//! The top of the request path: it may use every layer below (engine,
//! storage, model, json); nothing below uses it.

pub mod api;
pub mod error;
pub mod ha;
pub mod http;
pub mod image_stream;
pub mod metrics;
