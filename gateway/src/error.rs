//! The gateway's own errors and the one place they become an HTTP status and
//! the contract's JSON envelope.

use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "no route {method} {path}; data routes live under /data (e.g. /data/kamaitachi/api/data/v1/snapshot)"
    )]
    NotFound { method: String, path: String },
    #[error("method {method} not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("request body is {got} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { got: u64, limit: u64 },
    /// Bad framing or input; the message names the header or field.
    #[error("{0}")]
    BadRequest(String),
    #[error("too many connections (the limit is {0}); retry later")]
    TooManyConnections(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("Transfer-Encoding is not supported; send the body with a Content-Length")]
    LengthRequired,
    #[error("the request did not arrive whole in time")]
    RequestTimeout,
    #[error("rate limit exceeded ({qps} requests/s, burst {burst}); retry later")]
    RateLimited { qps: u32, burst: u32 },
    #[error("missing admin token: send Authorization: Bearer <token>")]
    Unauthorized,
    #[error("wrong admin token")]
    Forbidden,
    #[error("no healthy node can answer: {0}")]
    NoUpstream(String),
    #[error("upstream failed: {0}")]
    BadGateway(String),
    #[error("upstream timed out: {0}")]
    GatewayTimeout(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::TooManyConnections(_) => 503,
            GatewayError::HeadTooLarge(_) => 431,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::RequestTimeout => 408,
            GatewayError::LengthRequired => 411,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::Unauthorized => 401,
            GatewayError::Forbidden => 403,
            GatewayError::NoUpstream(_) => 503,
            GatewayError::BadGateway(_) => 502,
            GatewayError::GatewayTimeout(_) => 504,
        }
    }

    /// `{"status_code":N,"status_msg":"…","data":null}`.
    pub fn body(&self) -> Bytes {
        envelope(self.status(), &self.to_string(), &serde_json::Value::Null)
    }

    /// [`GatewayError::body`] for a write the gateway could not get
    /// answered, with the node's `outcome` field: `"not_acknowledged"` when
    /// it never reached a node, `"unknown"` when it may have.
    pub fn write_body(&self, may_have_reached: bool) -> Bytes {
        let outcome = if may_have_reached {
            "unknown"
        } else {
            "not_acknowledged"
        };
        let v = serde_json::json!({
            "status_code": self.status(),
            "status_msg": self.to_string(),
            "data": null,
            "outcome": outcome,
        });
        Bytes::from(v.to_string())
    }
}

pub fn envelope(status_code: u16, msg: &str, data: &serde_json::Value) -> Bytes {
    let v = serde_json::json!({"status_code": status_code, "status_msg": msg, "data": data});
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_the_gateway_could_not_deliver_says_whether_it_may_have_reached_a_node() {
        let e = GatewayError::NoUpstream("no healthy master".into());
        let v: serde_json::Value = serde_json::from_slice(&e.write_body(false)).unwrap();
        assert_eq!(
            (v["status_code"].as_u64(), v["outcome"].as_str()),
            (Some(503), Some("not_acknowledged"))
        );
        let e = GatewayError::BadGateway("connection reset".into());
        let v: serde_json::Value = serde_json::from_slice(&e.write_body(true)).unwrap();
        assert_eq!(
            (v["status_code"].as_u64(), v["outcome"].as_str()),
            (Some(502), Some("unknown"))
        );
    }
}
