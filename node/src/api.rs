//! The node's HTTP routes: where a request goes after `http.rs` framed it.
//!
//! | route | handler |
//! | --- | --- |
//! | `POST /kamaitachi/api/data/v1/snapshot` | [`QueryEngine::snapshot`] |
//! | `POST /kamaitachi/api/data/v1/period` | [`QueryEngine::period`] |
//! | `GET /kamaitachi/api/data/v1/stats` | counts, cache, replication |
//! | `POST /kamaitachi/api/data/v1/cache/reset` | admin: empty the cache |
//! | `GET /health` | readiness for the gateway |
//! | `GET /metrics` | Prometheus text |
//!
//! A trailing slash is accepted. Errors become the JSON envelope here, with
//! the status [`ApiError::status`] gives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cluster::Mode;

use crate::error::ApiError;
use crate::http::{Body, Request, Response, Service};
use crate::metrics::{Metrics, RouteLabel};
use crate::query::QueryEngine;
use crate::response;

const PREFIX: &str = "/kamaitachi/api/data/v1";

/// Who this node is, for `/health` and `/stats`.
pub struct NodeIdentity {
    pub mode: Mode,
    pub addr: String,
}

pub struct Api {
    pub engine: Arc<QueryEngine>,
    pub identity: NodeIdentity,
    pub metrics: Metrics,
    /// Admin bearer token; admin routes are refused when none is configured.
    pub admin_token: Option<String>,
    pub data_version: AtomicU64,
    pub total_records: AtomicU64,
    /// False until the node can answer (and again while it stops).
    pub ready: AtomicBool,
}

impl Api {
    fn route(&self, req: &Request<'_>) -> (RouteLabel, Result<Response, ApiError>) {
        let path = match req.path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => req.path,
        };
        let (label, allowed): (RouteLabel, &'static str) = match path.strip_prefix(PREFIX) {
            Some("/snapshot") => (RouteLabel::Snapshot, "POST"),
            Some("/period") => (RouteLabel::Period, "POST"),
            Some("/stats") => (RouteLabel::Stats, "GET"),
            Some("/cache/reset") => (RouteLabel::CacheReset, "POST"),
            _ => match path {
                "/health" => (RouteLabel::Health, "GET"),
                "/metrics" => (RouteLabel::Metrics, "GET"),
                _ => {
                    let err = ApiError::NotFound {
                        method: req.method.to_string(),
                        path: req.path.to_string(),
                    };
                    return (RouteLabel::Other, Err(err));
                }
            },
        };
        if req.method != allowed {
            let err = ApiError::MethodNotAllowed {
                method: req.method.to_string(),
                path: path.to_string(),
                allowed,
            };
            return (label, Err(err));
        }
        let result = match label {
            RouteLabel::Snapshot => self.engine.snapshot(req.body).map(ok_shared),
            RouteLabel::Period => self.engine.period(req.body).map(ok_shared),
            RouteLabel::Stats => Ok(self.stats()),
            RouteLabel::CacheReset => self.authorize(req).map(|()| {
                self.engine.cache().reset();
                ok_json(&serde_json::json!({"reset": true}))
            }),
            RouteLabel::Health => Ok(self.health()),
            RouteLabel::Metrics => Ok(self.metrics()),
            RouteLabel::Other => unreachable_route(),
        };
        (label, result)
    }

    fn authorize(&self, req: &Request<'_>) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token else {
            return Err(ApiError::Unavailable(
                "admin routes are disabled: set [security] admin_token_file in the node's config".into(),
            ));
        };
        let header = req.header("authorization").ok_or(ApiError::Unauthorized)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(token.trim_ascii(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    fn health(&self) -> Response {
        let ready = self.ready.load(Ordering::Acquire);
        let mut body = serde_json::json!({
            "status": if ready { "ok" } else { "unavailable" },
            "mode": self.identity.mode.as_str(),
            "addr": self.identity.addr,
            "data_version": self.data_version.load(Ordering::Relaxed),
            "applied_seq": self.data_version.load(Ordering::Relaxed),
            "lag": 0,
        });
        if !ready {
            body["reason"] = "node is starting or stopping".into();
        }
        Response::json(
            if ready { 200 } else { 503 },
            Body::Owned(body.to_string().into_bytes()),
        )
    }

    fn stats(&self) -> Response {
        let c = self.engine.cache().stats();
        let version = self.data_version.load(Ordering::Relaxed);
        ok_json(&serde_json::json!({
            "total_records": self.total_records.load(Ordering::Relaxed),
            "stock_count": self.engine.catalog().subject_count(),
            "data_version": version,
            "cache": {
                "entries": c.entries,
                "bytes": c.bytes,
                "max_bytes": c.max_bytes,
                "hits": c.hits,
                "misses": c.misses,
                "hit_rate": c.hit_rate(),
                "evictions": c.evictions,
            },
            "replication": {
                "role": self.identity.mode.as_str(),
                "applied_seq": version,
                "master_seq": version,
                "lag": 0,
            },
        }))
    }

    fn metrics(&self) -> Response {
        let body = self.metrics.render(
            &self.engine.cache().stats(),
            self.data_version.load(Ordering::Relaxed),
            0,
        );
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: Body::Owned(body),
            headers: Vec::new(),
        }
    }
}

impl Service for Api {
    fn call(&self, req: &Request<'_>) -> Response {
        let started = Instant::now();
        let (label, result) = self.route(req);
        let response = result.unwrap_or_else(|e| self.reject(&e));
        self.metrics
            .observe(label, response.status, started.elapsed().as_secs_f64());
        response
    }

    fn reject(&self, err: &ApiError) -> Response {
        let status = err.status();
        if status >= 500 {
            tracing::warn!("answering {status}: {err}");
        }
        let mut resp = Response::json(
            status,
            Body::Owned(response::envelope(status, &err.to_string(), b"null")),
        );
        if let ApiError::MethodNotAllowed { allowed, .. } = err {
            resp.headers.push(("Allow", allowed.to_string()));
        }
        resp
    }
}

fn ok_shared(bytes: Arc<[u8]>) -> Response {
    Response::json(200, Body::Shared(bytes))
}

fn ok_json(data: &serde_json::Value) -> Response {
    Response::json(
        200,
        Body::Owned(response::envelope(0, "success", data.to_string().as_bytes())),
    )
}

fn unreachable_route() -> Result<Response, ApiError> {
    Err(ApiError::Internal("route table out of step".into()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
