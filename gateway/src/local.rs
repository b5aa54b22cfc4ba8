//! `Local`: an answer the gateway makes itself (its own routes, and every
//! error it answers instead of a node), shared by both paths that write
//! answers: the read path writes it as raw HTTP/1 bytes
//! ([`Local::to_http1`]), pingora's proxy through its response header
//! (`proxy.rs`). Both send the same three headers, so a client cannot tell
//! which path answered.
//!
//! It lives apart from `own_routes.rs` because the failover policy, the
//! read path and the proxy all make one, and none of them should depend on
//! the own routes for it.

use bytes::Bytes;

use crate::error::GatewayError;

/// The `Server` header of every answer the gateway makes itself.
pub const SERVER: &str = "kamaitachi-gateway";

/// A finished local answer.
pub struct Local {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Local {
    pub fn json(status: u16, body: Bytes) -> Self {
        Local {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn error(e: &GatewayError) -> Self {
        Local::json(e.status(), e.body())
    }

    /// The whole answer as HTTP/1.1 bytes, with `Connection: close` when
    /// the connection closes after it (the read path's writer; pingora
    /// writes the same headers from `proxy.rs`).
    pub fn to_http1(&self, close: bool) -> Vec<u8> {
        let reason = pingora::http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: {SERVER}\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_pingora_writes_it() {
        let local = Local::json(503, Bytes::from_static(b"{}"));
        assert_eq!(
            local.to_http1(true),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\nServer: kamaitachi-gateway\r\nConnection: close\r\n\r\n{}"
        );
        assert!(!String::from_utf8_lossy(&local.to_http1(false)).contains("Connection"));
    }
}
