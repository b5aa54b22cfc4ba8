//! The pingora proxy: one request's path through the gateway.
//!
//! 1. `request_filter`: rate limit, body limits, the gateway's own routes
//!    and 404s are answered here. For reads, the body is read now (with
//!    retry buffering on, so pingora replays it upstream, on the first try and
//!    on retries — pingora does not hand the body to `upstream_peer`) and the
//!    routing key taken from it. Bodies over the 64 KiB retry buffer are not
//!    read early: such a request is routed round robin and streamed.
//! 2. `upstream_peer`: the key's node on the ring (reads), the master
//!    (writes and admin), skipping nodes already tried for this request.
//! 3. `upstream_request_filter`: strip `/data`, keep the query string.
//! 4. Failures: a connect failure ejects the node and retries elsewhere; an
//!    error mid-proxy on a pooled connection (gone stale) sends a read or
//!    an idempotent request to the same node again on another connection;
//!    any other error mid-proxy retries a read on the next node; neither
//!    when a response has started downstream or the body was streamed (not
//!    replayable). A 5xx answer ejects the node. At most `max_tries` nodes.
//! 5. `fail_to_proxy`: a JSON error (502/503/504) when no node could answer.
//!
//! Steps 2, 4 and 5 only supply pingora with the failover policy, which is
//! written once in `failover.rs` and shared with the read path: pingora runs
//! the attempt loop, the hooks translate its `Error` (source, retry flag)
//! to and from the policy's terms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::coupling::UPSTREAM_IDLE;
use crate::error::GatewayError;
use crate::failover::{Failover, Failure, Retry, Target, Tries, Unanswered};
use crate::limits::Limits;
use crate::local::{Local, SERVER};
use crate::metrics::Metrics;
use crate::own_routes;
use crate::routing::{self, Route};
use crate::status_page;
use crate::upstreams::Upstreams;
use cluster::request_id::{self, RequestId};

/// Longest the gateway reads and discards a request body after an early
/// error answer (nginx: `lingering_time 30s`).
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Longest wait for each read while lingering (nginx: `lingering_timeout`).
pub const LINGER_READ: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
pub const LINGER_BYTES: usize = 64 << 20;

/// Lingering close: after an early error answer (413, 429, 404, …) the
/// unread body is read and discarded, bounded by [`LINGER_TIME`] and
/// [`LINGER_BYTES`], so closing does not make the kernel reset the
/// connection under a client that writes its whole body before reading
/// (Python's urllib), which would then never see the answer. The
/// connection closes afterwards unless the body was read whole.
async fn linger(session: &mut Session) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0usize;
    let whole = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || discarded > LINGER_BYTES {
            break false;
        }
        match pingora_timeout::timeout(left.min(LINGER_READ), session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => discarded += chunk.len(),
            Ok(Ok(None)) => break true,
            Ok(Err(_)) | Err(_) => break false,
        }
    };
    if !whole {
        session.set_keepalive(None);
    }
}

/// pingora's retry buffer; a larger read body is streamed without a key.
pub const RETRY_BUFFER: u64 = 64 * 1024;

pub struct Gateway {
    pub upstreams: Arc<Upstreams>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub admin_token: Option<String>,
    /// Key derived from the cluster secret: fan-out calls are signed with it.
    pub cluster_key: cluster::auth::ClusterKey,
    /// This gateway's address as others reach it (`[server] service_addr`).
    pub service_addr: String,
    /// The registry, when the gateway watches etcd (for the status page).
    pub registry: Option<cluster::Discovery>,
    /// Requests slower than this are logged (`[log] slow_ms`).
    pub slow: Duration,
    pub max_tries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub client: reqwest::Client,
}

pub struct Ctx {
    route: Route,
    key: Option<Vec<u8>>,
    /// The request can be sent again whole: no body, or a body held in
    /// pingora's retry buffer. A streamed body cannot.
    replayable: bool,
    tried: Tries,
    response_started: bool,
    /// A write failed after it was sent to a node: it may have reached it.
    maybe_delivered: bool,
    started: Instant,
    /// Sent upstream as `X-Request-Id`; the client's when it is sane.
    request_id: RequestId,
}

impl Gateway {
    /// The failover policy over this gateway's nodes and metrics.
    fn failover(&self) -> Failover<'_> {
        Failover {
            upstreams: &self.upstreams,
            metrics: &self.metrics,
            max_tries: self.max_tries,
        }
    }

    async fn answer(&self, session: &mut Session, local: Local) -> Result<bool> {
        let mut resp = ResponseHeader::build(local.status, Some(3))?;
        resp.insert_header("Content-Type", local.content_type)?;
        resp.insert_header("Content-Length", local.body.len().to_string())?;
        resp.insert_header("Server", SERVER)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(local.body), true).await?;
        if local.status >= 400 && !session.is_body_done() {
            linger(session).await;
        }
        Ok(true)
    }

    fn authorize(&self, req: &RequestHeader) -> Result<String, GatewayError> {
        let header = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(GatewayError::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(GatewayError::Unauthorized)?
            .trim();
        match &self.admin_token {
            Some(expected) if !constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                Err(GatewayError::Forbidden)
            }
            _ => Ok(header.to_string()),
        }
    }

    async fn own_route(&self, session: &mut Session, route: Route) -> Local {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let (allowed, ok) = match route {
            Route::CacheReset => ("POST", method == "POST"),
            _ => ("GET", method == "GET" || method == "HEAD"),
        };
        if !ok {
            return Local::error(&GatewayError::MethodNotAllowed {
                method,
                path,
                allowed,
            });
        }
        match route {
            Route::Health => own_routes::health(&self.upstreams.nodes()),
            Route::Metrics => Local {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: Bytes::from(self.metrics.render(&self.upstreams.nodes())),
            },
            Route::Stats => own_routes::stats(&self.client, &self.upstreams.nodes(), &self.cluster_key).await,
            Route::PrometheusTargets => {
                own_routes::prometheus_targets(&self.upstreams.nodes(), &self.service_addr)
            }
            Route::Status | Route::StatusJson => {
                let report = status_page::report(
                    &self.client,
                    &self.upstreams.nodes(),
                    self.registry.as_ref(),
                    &self.service_addr,
                    &self.cluster_key,
                )
                .await;
                if route == Route::Status {
                    status_page::page(&report)
                } else {
                    status_page::json_answer(&report)
                }
            }
            Route::CacheReset => match self.authorize(session.req_header()) {
                Err(e) => Local::error(&e),
                Ok(_) => {
                    own_routes::cache_reset(&self.client, &self.upstreams.nodes(), &self.cluster_key).await
                }
            },
            _ => Local::error(&GatewayError::NotFound { method, path }),
        }
    }

    /// Reads a small read body (replayed upstream by pingora) for its key.
    /// Returns the key and whether the body is held for replay.
    async fn read_key(
        &self,
        session: &mut Session,
        content_length: Option<u64>,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        match content_length {
            None | Some(0) => return Ok((None, true)),
            Some(n) if n > RETRY_BUFFER => return Ok((None, false)),
            Some(_) => {}
        }
        session.as_downstream_mut().enable_retry_buffering();
        let mut body = Vec::with_capacity(content_length.unwrap_or(0) as usize);
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > RETRY_BUFFER {
                return Ok((None, false));
            }
        }
        Ok((routing::routing_key(&body), true))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: Route::NotFound,
            key: None,
            replayable: false,
            tried: Tries::default(),
            response_started: false,
            maybe_delivered: false,
            started: Instant::now(),
            request_id: RequestId::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let route = routing::classify(session.req_header().uri.path());
        ctx.route = route;
        if let Some(id) = session
            .req_header()
            .headers
            .get(request_id::HEADER)
            .and_then(|v| RequestId::from_client(v.as_bytes()))
        {
            ctx.request_id = id;
        }
        if !matches!(route, Route::Health | Route::Metrics) {
            if let Err(e) = self.limits.admit() {
                return self.answer(session, Local::error(&e)).await;
            }
        }
        let headers = &session.req_header().headers;
        if headers.contains_key("transfer-encoding") {
            return self
                .answer(session, Local::error(&GatewayError::LengthRequired))
                .await;
        }
        // The same length for the 413 check as for the framing: a value
        // that is not one plain number is refused, never skipped.
        let content_length =
            match Limits::content_length(headers.get_all("content-length").iter().map(|v| v.as_bytes())) {
                Ok(n) => n,
                Err(e) => {
                    session.set_keepalive(None);
                    return self.answer(session, Local::error(&e)).await;
                }
            };
        if let Err(e) = self.limits.check_body(content_length) {
            return self.answer(session, Local::error(&e)).await;
        }
        // `Expect: 100-continue` is answered here, once the limits passed;
        // the upstream request goes without it (upstream_request_filter).
        let expects_continue = session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && route.is_proxied() {
            session.as_downstream_mut().write_continue_response().await?;
        }
        match route {
            Route::Read(_) => {
                (ctx.key, ctx.replayable) = self.read_key(session, content_length).await?;
                Ok(false)
            }
            Route::Master | Route::Other => {
                ctx.replayable = matches!(content_length, None | Some(0));
                Ok(false)
            }
            Route::NotFound => {
                let e = GatewayError::NotFound {
                    method: session.req_header().method.to_string(),
                    path: session.req_header().uri.path().to_string(),
                };
                self.answer(session, Local::error(&e)).await
            }
            own => {
                let local = self.own_route(session, own).await;
                self.answer(session, local).await
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let target = match ctx.route {
            Route::Master => Target::Master,
            _ => Target::Read(ctx.key.as_deref()),
        };
        let Some(backend) = self.failover().pick(target, &mut ctx.tried) else {
            let why = Failover::no_node(target, &ctx.tried);
            return Err(Error::explain(ErrorType::HTTPStatus(503), why));
        };
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Answered by the gateway already (request_filter).
        upstream_request.remove_header("expect");
        upstream_request.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        let original = upstream_request
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let stripped = routing::strip_prefix(original);
        if stripped.len() != original.len() {
            let uri = stripped
                .parse()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting the path", e))?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.response_started = true;
        let retry_later = upstream_response.headers.contains_key(cluster::RETRY_AFTER);
        self.failover()
            .answered(&ctx.tried, upstream_response.status.as_u16(), retry_later);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: safe to try the next node, for reads and writes.
        let retry = self
            .failover()
            .failed(&peer._address, Failure::Node, &mut ctx.tried);
        e.set_retry(retry == Retry::NextNode);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let read = matches!(ctx.route, Route::Read(_));
        ctx.maybe_delivered |= ctx.route == Route::Master;
        let failure = Failure::MidProxy {
            reused: client_reused,
            replayable: ctx.replayable && !ctx.response_started && !session.as_ref().retry_buffer_truncated(),
            read,
            idempotent: session.req_header().method.is_idempotent(),
        };
        match self.failover().failed(&peer._address, failure, &mut ctx.tried) {
            Retry::NextNode | Retry::SameNode => e.set_retry(true),
            Retry::No => e.set_retry(false),
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let Some(unanswered) = Unanswered::of_pingora(e) else {
            // The client's side failed: nobody to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let err = unanswered.answer(e.to_string());
        let code = err.status();
        if !ctx.response_started {
            // A write says whether it may have reached the master, as the
            // node's own 503 does (docs/WRITE_PROTOCOL.md, P5).
            let local = if ctx.route == Route::Master {
                Local::json(code, err.write_body(ctx.maybe_delivered))
            } else {
                Local::error(&err)
            };
            let _ = self.answer(session, local).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        if ctx.response_started {
            if let Some(addr) = ctx.tried.last() {
                self.upstreams.record_answer_from(addr, elapsed);
            }
        }
        self.metrics.observe(ctx.route, status, elapsed.as_secs_f64());
        if ctx.route.is_proxied() && (status >= 500 || elapsed >= self.slow) {
            tracing::warn!(
                request_id = %ctx.request_id,
                route = ctx.route.label(),
                status,
                elapsed_ms = elapsed.as_millis() as u64,
                node = ctx.tried.last().map(|a| a.to_string()).unwrap_or_default(),
                "request answered {}",
                if status >= 500 { "with an error" } else { "slowly" }
            );
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        // Retried failures are expected during failover; the final outcome is
        // counted in the metrics.
        ctx.tried.count() > 1
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
