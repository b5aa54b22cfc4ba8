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
//! Failover is as on the general path: a connect failure, a reset, a close
//! or a timeout before any byte went to the client ejects the node and
//! tries the next one on the ring, at most `max_tries` nodes; a stale pooled
//! connection is retried once on a fresh one to the same node first. Once
//! the answer has started downstream nothing is retried. A 5xx answer is
//! relayed and ejects the node.

use std::net::SocketAddr as InetAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora_timeout::timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::GatewayError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::own_routes::Local;
use crate::proxy::Gateway;
use crate::routing::{self, Route};
use crate::upstream_pool::UpstreamPool;
use crate::upstreams::Upstreams;
use cluster::request_id::{self, RequestId};

/// A request head larger than this goes to the general path (which answers
/// it or refuses it).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = http1::MAX_HEADERS;
/// Read bodies up to this size are held whole, as on the general path.
const MAX_READ_BODY: u64 = crate::proxy::RETRY_BUFFER;
/// Answer bytes gathered before the first write downstream: an answer up to
/// this size leaves in one write, and can still be retried elsewhere if the
/// node fails while sending it.
const HOLD: usize = 256 * 1024;
const CONNECTION_CLOSE: &[u8] = b"Connection: close\r\n";

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
    tried: Vec<SocketAddr>,
}

/// What the next request on a connection is.
enum Next {
    /// A read, and the time by which its body must have arrived.
    Read(ReadHead, Instant),
    General,
    Closed,
    TimedOut,
    /// The head is still incomplete at `MAX_HEAD` bytes.
    HeadTooLarge,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Partial,
    /// Still incomplete at `MAX_HEAD` bytes: refused (431), never handed
    /// to pingora, whose per-read timeout would let a client that sends a
    /// byte now and then hold the connection for ever.
    TooLarge,
    /// Not for this path. `Some(n)`: the request is exactly `n` bytes (head
    /// and Content-Length body), so pingora is handed just those and the
    /// next pipelined request stays here; `None`: its length is unknown
    /// (chunked, malformed) and pingora is handed everything.
    General(Option<usize>),
    Read(ReadHead),
}

#[derive(Debug, PartialEq, Eq)]
struct ReadHead {
    route: Route,
    head_len: usize,
    body_len: usize,
    /// The client sent `Connection: close`.
    close: bool,
    /// Sent to the node as `X-Request-Id` and logged with errors.
    request_id: RequestId,
}

/// A parsed answer head.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    head_len: usize,
    /// `None`: the body runs until the node closes the connection.
    body_len: Option<usize>,
    /// The node closes the connection after this answer.
    close: bool,
}

/// Why a node did not answer.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connect to {0} failed: {1}")]
    Connect(InetAddr, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(InetAddr),
    #[error("{0} closed the connection before answering")]
    Closed(InetAddr),
    #[error("{0}: {1}")]
    Io(InetAddr, std::io::Error),
    #[error("{0} did not answer in time")]
    Timeout(InetAddr),
    #[error("{0} sent an answer the gateway cannot relay: {1}")]
    BadAnswer(InetAddr, &'static str),
}

impl UpstreamError {
    /// A pooled connection that failed this way may just have gone stale.
    fn stale_connection(&self) -> bool {
        matches!(self, UpstreamError::Closed(_) | UpstreamError::Io(..))
    }
}

/// How the relay of an answer ended.
struct Relayed {
    status: u16,
    keep_client: bool,
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
    /// Reads until the next request's head is complete (or the client left,
    /// or the server is stopping while the connection is idle). A request
    /// has `request_time` from its first byte to arrive whole.
    async fn next_request(&self, client: &mut Stream, bufs: &mut Buffers, shutdown: &ShutdownWatch) -> Next {
        let mut deadline = Instant::now() + self.request_time;
        loop {
            if !bufs.client.is_empty() {
                match parse_request(
                    &bufs.client,
                    self.limits.max_body_bytes,
                    &mut bufs.upstream_request,
                ) {
                    Head::Read(head) if self.fast_reads => return Next::Read(head, deadline),
                    Head::Read(_) | Head::General(_) => return Next::General,
                    Head::TooLarge => return Next::HeadTooLarge,
                    Head::Partial => {}
                }
            }
            reserve(&mut bufs.client);
            let read = if bufs.client.is_empty() {
                if *shutdown.borrow() {
                    return Next::Closed;
                }
                let mut stopping = shutdown.clone();
                let idle_read = async {
                    tokio::select! {
                        r = client.read_buf(&mut bufs.client) => Some(r),
                        _ = stopping.changed() => None,
                    }
                };
                let read = match timeout(self.client_idle, idle_read).await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return Next::Closed,
                };
                deadline = Instant::now() + self.request_time;
                read
            } else {
                match timeout(left(deadline), client.read_buf(&mut bufs.client)).await {
                    Ok(r) => r,
                    Err(_) => return Next::TimedOut,
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Gives the connection to pingora's proxy, with every byte already
    /// read from the client (the request and whatever was pipelined after
    /// it), for as long as pingora holds bytes of a next request; returns
    /// the connection when pingora keeps it alive and has read nothing
    /// past its last request.
    ///
    /// pingora reads the rest of the body from the socket itself, and the
    /// same read may bring the next pipelined request (`abcde` and a whole
    /// snapshot request in one segment). With pipelining on, pingora keeps
    /// those bytes for the next session instead of failing with "Sent data
    /// after end of body"; they are then fed to a next pingora session, so
    /// requests are answered in the order they came.
    async fn hand_over(
        &self,
        client: Stream,
        pending: &mut Vec<u8>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(client);
        session.set_pipelining_enabled(true);
        if !pending.is_empty() {
            session.set_pipelined_prefix(BytesMut::from(&pending[..]));
            pending.clear();
        }
        session.set_keepalive((!*shutdown.borrow()).then_some(self.client_idle.as_secs().max(1)));
        loop {
            let (stream, settings) = self.general.process_new_http(session, shutdown).await?.consume();
            match settings {
                Some(settings) if holds_pipelined_bytes(&settings) => {
                    session = ServerSession::new_http1(stream);
                    settings.apply_to_session(&mut session);
                }
                _ => return Some(stream),
            }
        }
    }

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
    /// and relays the answer.
    async fn proxy(
        &self,
        client: &mut Stream,
        bufs: &mut Buffers,
        key: Option<&[u8]>,
        client_close: bool,
    ) -> Result<Relayed, GatewayError> {
        bufs.tried.clear();
        let mut last_error = None;
        while bufs.tried.len() < self.max_tries {
            let Some(backend) = self.upstreams.pick_read(key, &bufs.tried) else {
                break;
            };
            if !bufs.tried.is_empty() {
                self.metrics.retried();
            }
            bufs.tried.push(backend.addr.clone());
            let Some(&addr) = backend.addr.as_inet() else {
                continue;
            };
            let sent = Instant::now();
            match self
                .exchange(addr, &bufs.upstream_request, &mut bufs.answer)
                .await
            {
                Ok((answer, conn)) => {
                    if matches!(answer.status, 500 | 502 | 503 | 504) {
                        self.upstreams.eject(&backend.addr);
                    }
                    let relayed = self
                        .relay(client, &mut bufs.answer, answer, conn, addr, client_close)
                        .await;
                    self.upstreams.record_answer(&backend, sent.elapsed());
                    return Ok(relayed);
                }
                Err(e) => {
                    self.upstreams.eject(&backend.addr);
                    last_error = Some(e);
                }
            }
        }
        Err(match last_error {
            None if bufs.tried.is_empty() => GatewayError::NoUpstream("no healthy node".into()),
            None => GatewayError::NoUpstream("every node tried failed".into()),
            Some(e @ (UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_))) => {
                GatewayError::GatewayTimeout(e.to_string())
            }
            Some(e) => GatewayError::BadGateway(e.to_string()),
        })
    }

    /// One request to one node: over a pooled connection if there is one
    /// (and once more on a fresh connection if that one had gone stale).
    async fn exchange(
        &self,
        addr: InetAddr,
        request: &[u8],
        answer: &mut Vec<u8>,
    ) -> Result<(Answer, TcpStream), UpstreamError> {
        if let Some(conn) = self.pool.take(&addr) {
            match self.round_trip(addr, conn, request, answer).await {
                Err(e) if e.stale_connection() => {}
                done => return done,
            }
        }
        let conn = match timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(UpstreamError::Connect(addr, e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
        };
        let _ = conn.set_nodelay(true);
        self.round_trip(addr, conn, request, answer).await
    }

    /// Writes the request; reads the answer's head and as much of its body
    /// as `HOLD` allows.
    async fn round_trip(
        &self,
        addr: InetAddr,
        mut conn: TcpStream,
        request: &[u8],
        answer: &mut Vec<u8>,
    ) -> Result<(Answer, TcpStream), UpstreamError> {
        match timeout(self.read_timeout, conn.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UpstreamError::Io(addr, e)),
            Err(_) => return Err(UpstreamError::Timeout(addr)),
        }
        answer.clear();
        let mut head = None;
        loop {
            if head.is_none() {
                head = match parse_answer(answer) {
                    Ok(h) => h,
                    Err(why) => return Err(UpstreamError::BadAnswer(addr, why)),
                };
            }
            if let Some(h) = &head {
                let whole = h.body_len.map(|b| h.head_len + b);
                if whole.is_some_and(|w| answer.len() >= w) || answer.len() >= HOLD {
                    break;
                }
            } else if answer.len() >= MAX_HEAD {
                return Err(UpstreamError::BadAnswer(addr, "answer head too large"));
            }
            reserve(answer);
            match timeout(self.read_timeout, conn.read_buf(answer)).await {
                Ok(Ok(0)) => match &mut head {
                    // The body runs until close: this is its end.
                    Some(h) if h.body_len.is_none() => {
                        h.body_len = Some(answer.len() - h.head_len);
                        break;
                    }
                    _ => return Err(UpstreamError::Closed(addr)),
                },
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(UpstreamError::Io(addr, e)),
                Err(_) => return Err(UpstreamError::Timeout(addr)),
            }
        }
        let head = head.ok_or(UpstreamError::Closed(addr))?;
        Ok((head, conn))
    }

    /// Relays an answer (its held part, then the rest as it comes) and keeps
    /// the node connection for reuse when its framing allows.
    async fn relay(
        &self,
        client: &mut Stream,
        buf: &mut Vec<u8>,
        answer: Answer,
        mut conn: TcpStream,
        addr: InetAddr,
        client_close: bool,
    ) -> Relayed {
        let status = answer.status;
        let gone = Relayed {
            status,
            keep_client: false,
        };
        let mut whole = answer.body_len.map(|b| answer.head_len + b);
        // Bytes past the answer (there should be none) make the connection unusable.
        let mut reusable = !answer.close && whole.is_some_and(|w| buf.len() <= w);
        let mut keep_client = !answer.close && answer.body_len.is_some();
        if client_close && !answer.close {
            let at = answer.head_len - 2;
            buf.splice(at..at, CONNECTION_CLOSE.iter().copied());
            whole = whole.map(|w| w + CONNECTION_CLOSE.len());
            keep_client = false;
        }
        let held = whole.map_or(buf.len(), |w| w.min(buf.len()));
        let mut sent = held;
        if !self.write_client(client, &buf[..held]).await {
            return gone;
        }
        // The rest of a large answer, streamed.
        while whole.is_none_or(|w| sent < w) {
            buf.clear();
            reserve(buf);
            match timeout(self.read_timeout, conn.read_buf(buf)).await {
                Ok(Ok(0)) if whole.is_none() => {
                    reusable = false;
                    break;
                }
                Ok(Ok(n)) if n > 0 => {}
                // The node failed mid-answer: the client cannot be told
                // otherwise than by closing.
                _ => return gone,
            }
            let n = whole.map_or(buf.len(), |w| (w - sent).min(buf.len()));
            if n < buf.len() {
                reusable = false;
            }
            if !self.write_client(client, &buf[..n]).await {
                return gone;
            }
            sent += n;
        }
        if reusable {
            self.pool.put(addr, conn);
        }
        Relayed { status, keep_client }
    }

    async fn write_client(&self, client: &mut Stream, bytes: &[u8]) -> bool {
        let write = async {
            client.write_all(bytes).await?;
            client.flush().await
        };
        matches!(timeout(self.read_timeout, write).await, Ok(Ok(())))
    }

    /// The gateway's own JSON error, as the general path writes it.
    async fn write_local(&self, client: &mut Stream, e: &GatewayError, close: bool) -> bool {
        let local = Local::error(e);
        let reason = pingora::http::StatusCode::from_u16(local.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: kamaitachi-gateway\r\n{}\r\n",
            local.status,
            local.content_type,
            local.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        out.extend_from_slice(&local.body);
        self.write_client(client, &out).await
    }
}

/// Whether pingora kept bytes of a next pipelined request for the next
/// session. pingora 0.9.1 offers no getter for them, only
/// `apply_to_session`, so this reads the settings' `Debug` form (pinned
/// version; if the form changed this would say "no", the behaviour before
/// pipelining was handled).
fn holds_pipelined_bytes(settings: &pingora::apps::HttpPersistentSettings) -> bool {
    format!("{settings:?}").contains("pipelined_prefix: Some(")
}

/// Counts an open client connection while it lives.
struct OpenGuard<'a>(usize, &'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn enter(open: &'a AtomicUsize) -> Self {
        OpenGuard(open.fetch_add(1, Ordering::AcqRel) + 1, open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lingering close after an early answer: shut the write side (the answer
/// is complete), read and discard what the client still sends, bounded by
/// the same limits as the general path's (`proxy::LINGER_*`).
async fn linger(client: &mut Stream) {
    if timeout(Duration::from_secs(1), client.shutdown()).await.is_err() {
        return;
    }
    let deadline = Instant::now() + crate::proxy::LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0usize;
    while discarded < crate::proxy::LINGER_BYTES {
        let wait = left(deadline).min(crate::proxy::LINGER_READ);
        match timeout(wait, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// Registers a fresh client connection with this thread's runtime.
///
/// pingora accepts on one worker's runtime and hands the connection to a
/// random one (`pingora_runtime::current_handle`). The socket stays
/// registered with the accepting runtime's reactor, so for about half the
/// connections every readiness event is a wake-up sent across threads
/// (measured: 0.6 eventfd writes per request). A duplicate of the socket,
/// registered here, replaces pingora's stream; if anything in that fails
/// the original is kept.
fn rehome(client: Stream) -> Stream {
    use std::os::fd::BorrowedFd;
    // SAFETY: `client` owns this descriptor and stays alive until the
    // duplicate exists; the borrow ends before `client` is dropped.
    let fd = unsafe { BorrowedFd::borrow_raw(client.id()) };
    let Ok(owned) = fd.try_clone_to_owned() else {
        return client;
    };
    let std_stream = std::net::TcpStream::from(owned);
    if std_stream.peer_addr().is_err() || std_stream.set_nonblocking(true).is_err() {
        return client;
    }
    match TcpStream::from_std(std_stream) {
        Ok(local) => Box::new(pingora::protocols::l4::stream::Stream::from(local)),
        Err(_) => client,
    }
}

/// Time left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Room for the next read.
fn reserve(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
}

/// Parses a client request head; for a read, writes the head it goes
/// upstream with (`/data` stripped, hop-by-hop headers dropped) into
/// `upstream`.
///
/// The HTTP/1 rules (head limits, `Content-Length`, `Connection`) are the
/// shared codec's (`http1`), the same the nodes apply, so the gateway and a
/// node never frame one request two ways; what this path takes is its own
/// policy. A head over `MAX_HEAD` bytes is refused whether or not it
/// arrived whole, so the answer does not depend on how the client's bytes
/// were split into reads.
fn parse_request(buf: &[u8], max_body: u64, upstream: &mut Vec<u8>) -> Head {
    let mut headers = http1::headers();
    let limits = http1::HeadLimits {
        max_bytes: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let req = match http1::parse_request(buf, &mut headers, limits) {
        Ok(Some(req)) => req,
        Ok(None) => return Head::Partial,
        Err(http1::HeadError::TooLarge) => return Head::TooLarge,
        // Too many headers, or malformed: the general path answers it as
        // pingora does.
        Err(http1::HeadError::TooManyHeaders | http1::HeadError::Malformed(_)) => return Head::General(None),
    };
    let head_len = req.len;
    // Unframed (chunked, a bad or conflicting length): its length is unknown.
    let (body_len, framed) = match http1::content_length(req.headers) {
        Ok(n) => (n, true),
        Err(_) => (None, false),
    };
    let connection = http1::connection(req.version, req.headers);
    let close = !connection.keep_alive;
    let plain = !connection.other_options
        && !req.headers.iter().any(|h| {
            ["expect", "upgrade", "te", "trailer"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
        });
    let general = Head::General(
        framed
            .then(|| usize::try_from(body_len.unwrap_or(0)).ok())
            .flatten()
            .and_then(|b| head_len.checked_add(b)),
    );
    let target = req.target;
    let route = routing::classify(target.split('?').next().unwrap_or(target));
    let (Route::Read(_), Some(body_len), true, 1, "POST") =
        (route, body_len, framed && plain, req.version, req.method)
    else {
        return general;
    };
    if body_len > MAX_READ_BODY || body_len > max_body {
        return general;
    }
    upstream.clear();
    upstream.extend_from_slice(b"POST ");
    upstream.extend_from_slice(routing::strip_prefix(target).as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    let mut client_id = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case(request_id::HEADER) {
            client_id = client_id.or_else(|| RequestId::from_client(h.value));
            continue;
        }
        if ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        upstream.extend_from_slice(h.name.as_bytes());
        upstream.extend_from_slice(b": ");
        upstream.extend_from_slice(h.value);
        upstream.extend_from_slice(b"\r\n");
    }
    let request_id = client_id.unwrap_or_default();
    upstream.extend_from_slice(b"X-Request-Id: ");
    upstream.extend_from_slice(request_id.as_bytes());
    upstream.extend_from_slice(b"\r\n\r\n");
    Head::Read(ReadHead {
        route,
        head_len,
        body_len: body_len as usize,
        close,
        request_id,
    })
}

/// Parses an answer head: `Ok(None)` while incomplete. Framing and
/// persistence are the codec's rules; refusing an interim (1xx) answer is
/// this path's (it sends no `Expect`, so a node never owes one).
fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut headers = http1::headers();
    let head = match http1::parse_answer(buf, &mut headers) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(http1::AnswerError::Malformed(_) | http1::AnswerError::TooManyHeaders) => {
            return Err("malformed answer head")
        }
        Err(http1::AnswerError::Framing(http1::FramingError::TransferEncoding)) => {
            return Err("Transfer-Encoding (the nodes send Content-Length)")
        }
        Err(http1::AnswerError::Framing(_)) => return Err("bad Content-Length"),
    };
    if head.status < 200 {
        return Err("interim (1xx) answer");
    }
    let body_len = head
        .body_len
        .map(usize::try_from)
        .transpose()
        .map_err(|_| "bad Content-Length")?;
    Ok(Some(Answer {
        status: head.status,
        head_len: head.len,
        body_len,
        close: head.close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ReadKind;

    fn parse(raw: &str) -> (Head, String) {
        let mut up = Vec::new();
        let head = parse_request(raw.as_bytes(), 1 << 20, &mut up);
        (head, String::from_utf8(up).unwrap())
    }

    #[test]
    fn a_read_is_taken_and_rewritten() {
        let raw = "POST /data/kamaitachi/api/data/v1/period?x=/data HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-Request-Id: client-7\r\nX-A: b\r\n\r\n{}";
        let (head, up) = parse(raw);
        assert_eq!(
            head,
            Head::Read(ReadHead {
                route: Route::Read(ReadKind::Period),
                head_len: raw.len() - 2,
                body_len: 2,
                close: false,
                request_id: RequestId::from_client(b"client-7").expect("sane"),
            })
        );
        assert_eq!(
            up,
            "POST /kamaitachi/api/data/v1/period?x=/data HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: b\r\nX-Request-Id: client-7\r\n\r\n"
        );
        // No id, or one that is not sane: the gateway makes one.
        for extra in ["", "X-Request-Id: a b\r\n"] {
            let raw = format!(
                "POST /data/kamaitachi/api/data/v1/period HTTP/1.1\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            let (head, up) = parse(&raw);
            let Head::Read(h) = head else { panic!("{raw}") };
            assert!(
                up.ends_with(&format!("X-Request-Id: {}\r\n\r\n", h.request_id)),
                "{up}"
            );
            assert!(!up.contains("a b"), "{up}");
        }
        let (head, _) = parse("POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(head, Head::Read(ReadHead { close: true, .. })));
        let (head, _) = parse("POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nContent-Le");
        assert_eq!(head, Head::Partial);
    }

    #[test]
    fn everything_else_goes_to_the_general_path() {
        let read = "POST /data/kamaitachi/api/data/v1/snapshot";
        // Framed by Content-Length: pingora gets exactly this request.
        for (raw, body) in [
            (format!("{read} HTTP/1.0\r\nContent-Length: 2\r\n\r\n"), 2),
            (
                format!("{read} HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"),
                2,
            ),
            (
                format!("{read} HTTP/1.1\r\nConnection: upgrade\r\nContent-Length: 2\r\n\r\n"),
                2,
            ),
            (
                format!("{read} HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"),
                70_000,
            ),
            (format!("{read} HTTP/1.1\r\n\r\n"), 0),
            (
                "GET /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\n\r\n".into(),
                0,
            ),
            (
                "POST /data/kamaitachi/api/data/v1/ingest HTTP/1.1\r\nContent-Length: 2\r\n\r\n".into(),
                2,
            ),
            (
                "POST /kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nContent-Length: 2\r\n\r\n".into(),
                2,
            ),
            ("GET /health HTTP/1.1\r\n\r\n".into(), 0),
        ] {
            let pipelined = format!("{raw}GET /next HTTP/1.1\r\n");
            assert_eq!(
                parse(&pipelined).0,
                Head::General(Some(raw.len() + body)),
                "{raw:?}"
            );
        }
        // Length unknown: pingora gets everything read so far.
        for raw in [
            format!("{read} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"),
            format!("{read} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            format!("{read} HTTP/1.1\r\nContent-Length: +2\r\n\r\n"),
            "POST /data/\0 HTTP/1.1\r\n\r\n".into(),
        ] {
            assert_eq!(parse(&raw).0, Head::General(None), "{raw:?}");
        }
        // Still incomplete at MAX_HEAD: refused here, never handed over.
        let raw = format!("{read} HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert_eq!(parse(&raw).0, Head::TooLarge);
        let raw = format!("{read} HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(
            parse_request(raw.as_bytes(), 10, &mut Vec::new()),
            Head::General(Some(raw.len() + 11)),
            "the body limit is the general path's to answer"
        );
    }

    #[test]
    fn answers_are_framed_or_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_answer(ok).unwrap(),
            Some(Answer {
                status: 200,
                head_len: ok.len() - 5,
                body_len: Some(5),
                close: false
            })
        );
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let close =
            parse_answer(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(close.is_some_and(|a| a.close && a.status == 503));
        let eof = parse_answer(b"HTTP/1.1 200 OK\r\n\r\nabc").unwrap().unwrap();
        assert_eq!((eof.body_len, eof.close), (None, true));
        assert_eq!(
            parse_answer(b"HTTP/1.1 204 No\r\n\r\n")
                .unwrap()
                .unwrap()
                .body_len,
            Some(0)
        );
        assert!(parse_answer(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }
}
