//! The front door of every client connection, and the hot path for reads.
//!
//! This pingora `ServerApp` owns each accepted connection. It parses each
//! request head once (the shared `http1` codec) and decides:
//!
//! - A read (`POST /data/…/snapshot|period`, HTTP/1.1, a `Content-Length`
//!   body of at most 64 KiB, no `Expect`, no `Transfer-Encoding`, no
//!   upgrade) is proxied here: routed on its key (`routing.rs`, the same
//!   ring and ejections as the general path, `upstreams.rs`), written to the
//!   node in one write over a keep-alive connection of this thread's pool
//!   (`upstream_pool.rs`), and the answer relayed back in one write.
//! - Everything else (the gateway's own routes, writes and admin calls,
//!   `Expect: 100-continue`, chunked or large bodies, HTTP/1.0, malformed
//!   requests) goes, with the bytes already read, to pingora's HTTP proxy
//!   (`proxy.rs`) for that one request; the connection comes back here
//!   afterwards.
//!
//! Why: pingora's proxy costs about twice nginx's CPU per request on this
//! workload (separate header and body writes, a shared upstream pool whose
//! idle-watch tasks are woken across threads, per-request header maps); see
//! docs/BENCHMARKS.md. The read path does what nginx does per request: one
//! read and one write on each side.
//!
//! Failover is the general path's, from the same policy (`failover.rs`): a
//! connect failure, a reset, a close or a timeout before any byte went to
//! the client ejects the node and tries the next one on the ring, at most
//! `max_tries` nodes; a stale pooled connection is retried once on a fresh
//! one to the same node first (`upstream.rs`). Once the answer has started
//! downstream nothing is retried. A 5xx answer is relayed and ejects the
//! node.
//!
//! By concern, each `impl ReadPath` block in its own file:
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the connection loop, one read's life (`serve`), the attempts at nodes (`proxy`) |
//! | `client.rs` | reading request heads and writing to the client; deadlines, lingering close, the connection count |
//! | `framing.rs` | which requests this path takes, the head it sends upstream, framing the answer (pure, unit-tested) |
//! | `upstream.rs` | one exchange with one node over the pool, reading and relaying its answer |
//! | `hand_over.rs` | giving a connection to pingora's proxy and taking it back |
//! | `rehome.rs` | moving an accepted socket to the serving thread's reactor |

mod client;
mod framing;
mod hand_over;
mod rehome;
mod upstream;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora_timeout::timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::client::{left, linger, Next, OpenGuard};
use self::framing::{ReadHead, MAX_HEAD};
use self::rehome::rehome;
use self::upstream::Relayed;
use crate::error::GatewayError;
use crate::failover::{Failover, Failure, Retry, Target, Tries};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::routing;
use crate::upstream_pool::UpstreamPool;
use crate::upstreams::Upstreams;

pub struct ReadPath {
    /// Reads are proxied here; when false every request is handed over.
    pub fast_reads: bool,
    /// Client connections open now.
    pub open: Arc<AtomicUsize>,
    /// Beyond this many open client connections: 503 and close.
    pub max_connections: usize,
    /// pingora's HTTP proxy, for every request this path does not take.
    pub general: Arc<HttpProxy<Gateway>>,
    pub upstreams: Arc<Upstreams>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub pool: UpstreamPool,
    pub max_tries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// An idle keep-alive client is closed after this long.
    pub client_idle: Duration,
    /// A started request must arrive whole within this long (else 408).
    pub request_time: Duration,
    /// Requests slower than this are logged (`[log] slow_ms`).
    pub slow: Duration,
}

/// One client connection's reusable buffers.
#[derive(Default)]
struct Buffers {
    /// Bytes read from the client and not yet consumed.
    client: Vec<u8>,
    /// The request as it goes upstream.
    upstream_request: Vec<u8>,
    /// The answer as it comes from upstream.
    answer: Vec<u8>,
    /// The nodes the current read was sent to.
    tries: Tries,
}

#[async_trait]
impl ServerApp for ReadPath {
    async fn process_new(self: &Arc<Self>, client: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut client = rehome(client);
        let guard = OpenGuard::enter(&self.open);
        if guard.0 > self.max_connections {
            let e = GatewayError::TooManyConnections(self.max_connections);
            let _ = self.write_local(&mut client, &e, true).await;
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            return None;
        }
        let mut bufs = Buffers::default();
        loop {
            match self.next_request(&mut client, &mut bufs, shutdown).await {
                Next::Read(head, deadline) => {
                    if !self.serve(&mut client, &mut bufs, head, deadline).await {
                        return None;
                    }
                }
                Next::General => client = self.hand_over(client, &mut bufs.client, shutdown).await?,
                Next::TimedOut => {
                    let _ = self
                        .write_local(&mut client, &GatewayError::RequestTimeout, true)
                        .await;
                    return None;
                }
                Next::HeadTooLarge => {
                    let e = GatewayError::HeadTooLarge(MAX_HEAD);
                    if self.write_local(&mut client, &e, true).await {
                        linger(&mut client).await;
                    }
                    return None;
                }
                Next::Closed => return None,
            }
        }
    }

    async fn cleanup(&self) {
        self.general.http_cleanup().await;
    }
}

impl ReadPath {
    /// Serves one read; returns whether the client connection stays open.
    async fn serve(
        &self,
        client: &mut Stream,
        bufs: &mut Buffers,
        head: ReadHead,
        deadline: Instant,
    ) -> bool {
        let started = Instant::now();
        let total = head.head_len + head.body_len;
        while bufs.client.len() < total {
            bufs.client.reserve(total - bufs.client.len());
            match timeout(left(deadline), client.read_buf(&mut bufs.client)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return false,
                Err(_) => {
                    let _ = self
                        .write_local(client, &GatewayError::RequestTimeout, true)
                        .await;
                    return false;
                }
            }
        }
        let body = &bufs.client[head.head_len..total];
        let outcome = match self.limits.admit() {
            Err(e) => Err(e),
            Ok(()) => {
                bufs.upstream_request.extend_from_slice(body);
                let key = routing::routing_key(body);
                self.proxy(client, bufs, key.as_deref(), head.close).await
            }
        };
        bufs.client.drain(..total);
        let (status, keep) = match outcome {
            Ok(r) => (r.status, r.keep_client && !head.close),
            Err(e) => {
                let written = self.write_local(client, &e, head.close).await;
                (e.status(), written && !head.close)
            }
        };
        let elapsed = started.elapsed();
        self.metrics.observe(head.route, status, elapsed.as_secs_f64());
        if status >= 500 || elapsed >= self.slow {
            tracing::warn!(
                request_id = %head.request_id,
                route = head.route.label(),
                status,
                elapsed_ms = elapsed.as_millis() as u64,
                "read answered {}",
                if status >= 500 { "with an error" } else { "slowly" }
            );
        }
        keep
    }

    /// Sends the request to the key's node (or the next ones on the ring)
    /// and relays the answer; the failover policy (`failover.rs`) picks,
    /// ejects and decides each retry.
    async fn proxy(
        &self,
        client: &mut Stream,
        bufs: &mut Buffers,
        key: Option<&[u8]>,
        client_close: bool,
    ) -> Result<Relayed, GatewayError> {
        let failover = self.failover();
        let target = Target::Read(key);
        bufs.tries.clear();
        let mut last_error = None;
        while failover.tries_left(&bufs.tries) {
            let Some(backend) = failover.pick(target, &mut bufs.tries) else {
                break;
            };
            let Some(&addr) = backend.addr.as_inet() else {
                continue;
            };
            let sent = Instant::now();
            match self
                .exchange(addr, &bufs.upstream_request, &mut bufs.answer)
                .await
            {
                Ok((answer, conn)) => {
                    failover.answered(&bufs.tries, answer.status, answer.retry_later);
                    let relayed = self
                        .relay(client, &mut bufs.answer, answer, conn, addr, client_close)
                        .await;
                    self.upstreams.record_answer(&backend, sent.elapsed());
                    return Ok(relayed);
                }
                Err(e) => {
                    // A stale pooled connection was already retried on a
                    // fresh one (`exchange`): this failure is the node's.
                    let retry = failover.failed(&backend.addr, Failure::Node, &mut bufs.tries);
                    last_error = Some(e);
                    if retry == Retry::No {
                        break;
                    }
                }
            }
        }
        Err(Failover::give_up(target, &bufs.tries, last_error.as_ref()))
    }

    /// The failover policy over this path's nodes and metrics.
    fn failover(&self) -> Failover<'_> {
        Failover {
            upstreams: &self.upstreams,
            metrics: &self.metrics,
            max_tries: self.max_tries,
        }
    }
}
