//! HTTP/1.1 on the wire: accept loop, per-connection coroutine, request
//! framing, limits and timeouts.
//!
//! This replaces may_minihttp's connection loop, whose traps are listed in
//! `shared/PITFALLS.md` (panic on a bad Content-Length, unread bodies parsed
//! as the next request, chunked bodies smuggled the same way, no header,
//! body or time limits, 17 headers closing the connection unanswered). Here:
//! - every request is framed by a strictly parsed `Content-Length`, and its
//!   body is always consumed before the next request is parsed;
//! - `Transfer-Encoding` is refused (501) and the connection closed, so a
//!   chunked body can never be read as a request;
//! - header bytes, header count, body bytes, idle time, time to receive one
//!   request and the number of connections are bounded, each with a JSON
//!   error (431, 413, 408, 503) before the connection closes;
//! - `Connection: close` and HTTP/1.0 are honoured; HEAD gets no body;
//!   `Expect: 100-continue` gets its `100 Continue`;
//! - pipelined requests are answered in order with one write per batch.
//!
//! It runs on may's coroutines (`may::net`), one per connection; the
//! [`Service`] must not block the worker thread (SQLite runs elsewhere).
//!
//! The HTTP/1 rules themselves (head limits, `Content-Length` framing,
//! `Connection`) are the shared codec's (`http1`), the same the gateway and
//! the test client use; this file only drives a connection with them. A
//! request that cannot be served fails here with a [`TransportError`],
//! which says what went wrong and nothing about how to answer it: the
//! server's error module maps it, like every other error, to a status and
//! a JSON body, so this layer does not depend on the application's error.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http1::{FramingError, HeadError, HeadLimits};
use may::net::{TcpListener, TcpStream};

/// Why a request was refused before it reached the [`Service`], or why a
/// connection ended without one: the transport's failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("request header section is larger than {limit} bytes or has more than {max_headers} headers")]
    HeadersTooLarge { limit: usize, max_headers: usize },
    /// Not an HTTP/1 request; says what the parser tripped on.
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("Transfer-Encoding is not supported; send the body with a Content-Length")]
    TransferEncodingUnsupported,
    /// A `Content-Length` that is not a number, or several that disagree.
    #[error("{0}")]
    BadLength(FramingError),
    #[error("request body is {got} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { got: u64, limit: u64 },
    #[error("request not received in time")]
    RequestTimeout,
    #[error("too many connections")]
    TooManyConnections,
}

impl From<FramingError> for TransportError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::TransferEncoding => TransportError::TransferEncodingUnsupported,
            FramingError::TooLarge { got, limit } => TransportError::PayloadTooLarge { got, limit },
            e @ (FramingError::BadLength(_) | FramingError::ConflictingLengths) => {
                TransportError::BadLength(e)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// A request must arrive whole within this time of its first byte.
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Graceful stop: the signal thread sets `stopping` and stops the listener;
/// connections then finish the request they are in (answered with
/// `Connection: close`) and start no other; `busy` counts connections with
/// a request in progress, which the stop waits for (bounded).
#[derive(Default)]
pub struct Drain {
    stopping: AtomicBool,
    busy: AtomicUsize,
}

impl Drain {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stops accepting without dropping a connection the kernel already
    /// accepted: first a socket filter makes the listening socket ignore new
    /// SYNs (a client retries its SYN a second later and is then refused),
    /// the accept loop takes what is already queued, then the listening
    /// socket is shut down (connections refused) and the accept loop ends.
    /// Shutting it down at once would reset the queued connections, whose
    /// requests were sent but never read.
    pub fn stop_accepting(&self, listener: &std::net::TcpListener) {
        self.stopping.store(true, Ordering::Release);
        let sock = socket2::SockRef::from(listener);
        // BPF `ret #0`: drop every packet addressed to the listening socket.
        let drop_all = [libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        match sock.attach_filter(&drop_all) {
            Ok(()) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => tracing::warn!("stopping the listener: cannot attach a socket filter: {e}"),
        }
        if let Err(e) = sock.shutdown(std::net::Shutdown::Both) {
            tracing::warn!("stopping the listener: {e}");
        }
    }

    /// Waits until no connection has a request in progress, at most
    /// `timeout`; returns how many still had one.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let busy = self.busy.load(Ordering::Acquire);
            if busy == 0 || Instant::now() >= deadline {
                return busy;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Marks a connection busy while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(drain: &'a Drain) -> Self {
        drain.busy.fetch_add(1, Ordering::AcqRel);
        Busy(&drain.busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A parsed request; borrows the connection's read buffer.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// What follows `?`, or "".
    pub query: &'a str,
    pub headers: &'a [http1::Header<'a>],
    pub body: &'a [u8],
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        http1::header(self.headers, name)
    }
}

pub enum Body {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// Produced piece by piece and written as it comes (a database image):
    /// never held whole in memory.
    Stream(Box<dyn BodyStream>),
}

/// A response body read in chunks.
pub trait BodyStream: Send {
    /// Total bytes: the Content-Length.
    fn len(&self) -> u64;
    /// The next chunk; `Ok(None)` at the end.
    fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>>;
}

impl Body {
    /// The bytes of an in-memory body (none for a stream) and the length.
    fn bytes_and_len(&self) -> (&[u8], u64) {
        match self {
            Body::Owned(v) => (v, v.len() as u64),
            Body::Shared(b) => (b, b.len() as u64),
            Body::Stream(s) => (&[], s.len()),
        }
    }
}

/// Longest wait for a client to take a chunk of a streamed body.
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// Extra headers, e.g. `Allow` on a 405.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: Body) -> Self {
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }
}

/// What the connection loop calls for each request.
pub trait Service: Send + Sync + 'static {
    fn call(&self, req: &Request<'_>) -> Response;
    /// The response for a request rejected before it reached `call`.
    fn reject(&self, err: &TransportError) -> Response;
}

/// A listening socket on `addr` that the port is not shared on.
///
/// may's `TcpListener::bind` sets `SO_REUSEPORT`, so a second process
/// binding the same port succeeds and the kernel splits connections between
/// the two. Here the socket is made with `socket2` with `SO_REUSEADDR` only
/// (a restart may bind over `TIME_WAIT` leftovers, as nginx does) and handed
/// to may: a busy port fails with `AddrInUse`.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let sockaddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sockaddr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&sockaddr.into())?;
    socket.listen(1024)?;
    let std_listener: std::net::TcpListener = socket.into();
    // SAFETY: the descriptor was just taken out of an owned, listening
    // socket; may takes over its ownership.
    Ok(unsafe { TcpListener::from_raw_fd(std_listener.into_raw_fd()) })
}

/// Accepts connections until the node stops; one coroutine each.
pub fn serve<S: Service>(listener: TcpListener, service: Arc<S>, limits: Limits, drain: Arc<Drain>) {
    let limits = Arc::new(limits);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(_) if drain.stopping() => break,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                may::coroutine::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let service = service.clone();
        let limits = limits.clone();
        let open = open.clone();
        let drain = drain.clone();
        // Busy from accept until its first request is answered: a
        // connection the kernel accepted is not dropped by a stop.
        let busy_drain = drain.clone();
        may::go!(move || {
            let busy = Busy::new(&busy_drain);
            let guard = ConnGuard::enter(&open);
            if guard.count > limits.max_connections {
                let err = TransportError::TooManyConnections;
                let mut out = Vec::new();
                write_response(&mut out, &service.reject(&err), false, false);
                let mut stream = stream;
                if stream.write_all(&out).is_ok() {
                    linger_close(&mut stream);
                }
                return;
            }
            let _ = handle_connection(stream, &*service, &limits, &drain, busy);
        });
    }
    tracing::info!("stopped accepting connections");
}

struct ConnGuard<'a> {
    open: &'a AtomicUsize,
    count: usize,
}

impl<'a> ConnGuard<'a> {
    fn enter(open: &'a AtomicUsize) -> Self {
        let count = open.fetch_add(1, Ordering::AcqRel) + 1;
        ConnGuard { open, count }
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most headers a request may carry; one more is a 431.
pub const MAX_HEADERS: usize = http1::MAX_HEADERS;

/// The outcome of trying to answer the first request in the buffer.
enum Step {
    /// Not all of it has arrived yet; `expects_continue` when its head is in
    /// and asks for `100 Continue` before sending the body.
    Partial { expects_continue: bool },
    /// Answered a request of `len` bytes; keep reading if `keep_alive`.
    /// `body`: a body to stream after what was written to the output.
    Answered {
        len: usize,
        keep_alive: bool,
        body: Option<Box<dyn BodyStream>>,
    },
    /// Unusable: answer with this error and close.
    Reject(TransportError),
}

const READ_CHUNK: usize = 16 * 1024;

fn handle_connection<S: Service>(
    mut stream: TcpStream,
    service: &S,
    limits: &Limits,
    drain: &Drain,
    busy: Busy<'_>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // `Some` while a request is in progress (or the connection is new).
    let mut busy = Some(busy);
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut wbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0usize;
    let mut pending_since: Option<Instant> = None;
    let mut timeout_set = Duration::ZERO;
    let mut sent_continue = false;
    let mut served_any = false;
    loop {
        // Answer every whole request already in the buffer.
        while start < rbuf.len() {
            match answer_one(&rbuf[start..], service, limits, drain, &mut wbuf) {
                Step::Partial { expects_continue } => {
                    if expects_continue && !sent_continue {
                        wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        sent_continue = true;
                    }
                    break;
                }
                Step::Reject(err) => {
                    write_response(&mut wbuf, &service.reject(&err), false, false);
                    stream.write_all(&wbuf)?;
                    drop(busy.take());
                    linger_close(&mut stream);
                    return Ok(());
                }
                Step::Answered {
                    len,
                    keep_alive,
                    body,
                } => {
                    served_any = true;
                    start += len;
                    if let Some(body) = body {
                        stream.write_all(&wbuf)?;
                        wbuf.clear();
                        stream_body(&mut stream, body)?;
                    }
                    pending_since = None;
                    sent_continue = false;
                    if !keep_alive {
                        stream.write_all(&wbuf)?;
                        if start < rbuf.len() {
                            // Pipelined bytes after a `Connection: close`.
                            drop(busy.take());
                            linger_close(&mut stream);
                        }
                        return Ok(());
                    }
                }
            }
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf)?;
            wbuf.clear();
        }
        if start == rbuf.len() {
            rbuf.clear();
            start = 0;
            if pending_since.is_none() && served_any {
                // Idle between requests: not in the way of a stop.
                drop(busy.take());
                if drain.stopping() {
                    return Ok(());
                }
            }
        } else {
            if start > 0 {
                rbuf.drain(..start);
                start = 0;
            }
            let since = *pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= limits.request_timeout {
                write_response(
                    &mut wbuf,
                    &service.reject(&TransportError::RequestTimeout),
                    false,
                    false,
                );
                stream.write_all(&wbuf)?;
                drop(busy.take());
                linger_close(&mut stream);
                return Ok(());
            }
        }
        // Wait for more bytes: the idle limit between requests, the rest of
        // the request limit inside one.
        let wait = match pending_since {
            None => limits.idle_timeout,
            Some(since) => limits
                .request_timeout
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(1)),
        };
        if wait != timeout_set {
            stream.set_read_timeout(Some(wait))?;
            timeout_set = wait;
        }
        let filled = rbuf.len();
        rbuf.resize(filled + READ_CHUNK, 0);
        match stream.read(&mut rbuf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                rbuf.truncate(filled + n);
                if busy.is_none() {
                    busy = Some(Busy::new(drain));
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                rbuf.truncate(filled);
                if pending_since.is_some() {
                    write_response(
                        &mut wbuf,
                        &service.reject(&TransportError::RequestTimeout),
                        false,
                        false,
                    );
                    if stream.write_all(&wbuf).is_ok() {
                        drop(busy.take());
                        linger_close(&mut stream);
                    }
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes a streamed body chunk by chunk. A body that fails or ends short
/// closes the connection (the client sees fewer bytes than announced).
fn stream_body(stream: &mut TcpStream, mut body: Box<dyn BodyStream>) -> io::Result<()> {
    stream.set_write_timeout(Some(STREAM_WRITE_TIMEOUT))?;
    let mut sent = 0u64;
    while let Some(chunk) = body.next_chunk()? {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    stream.set_write_timeout(None)?;
    if sent != body.len() {
        return Err(io::Error::other(format!(
            "streamed body ended after {sent} of {} bytes",
            body.len()
        )));
    }
    Ok(())
}

/// Longest a connection is kept, after an early answer, to read and discard
/// what the client still sends (nginx: `lingering_time 30s`).
const LINGER_TIME: Duration = Duration::from_secs(5);
/// Longest wait for each read while lingering (nginx: `lingering_timeout 5s`).
const LINGER_READ: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 << 20;

/// Lingering close, as nginx does: after an answer sent before the request
/// was read whole (413, 431, 400, 408, 503), closing at once with unread
/// bytes makes the kernel send a reset, and a client that writes its whole
/// body before reading (Python's urllib) sees `Connection reset` instead of
/// the answer. So: send FIN (the answer is complete), then read and discard
/// until the client closes, for at most [`LINGER_TIME`] and
/// [`LINGER_BYTES`], then close.
fn linger_close(stream: &mut TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left.min(LINGER_READ))).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Frames the first request in `buf` (enforcing the limits) and, once it is
/// whole, calls the service and appends the response to `out`.
fn answer_one<S: Service>(
    buf: &[u8],
    service: &S,
    limits: &Limits,
    drain: &Drain,
    out: &mut Vec<u8>,
) -> Step {
    let mut headers = http1::headers();
    let head_limits = HeadLimits {
        max_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
    };
    let head = match http1::parse_request(buf, &mut headers, head_limits) {
        Ok(Some(head)) => head,
        Ok(None) => {
            return Step::Partial {
                expects_continue: false,
            }
        }
        Err(HeadError::TooLarge | HeadError::TooManyHeaders) => {
            return Step::Reject(headers_too_large(limits))
        }
        Err(HeadError::Malformed(e)) => return Step::Reject(TransportError::Malformed(e)),
    };
    let body_len = match http1::body_length(head.headers, limits.max_body_bytes as u64) {
        // At most `max_body_bytes`, a `usize`.
        Ok(n) => n as usize,
        Err(e) => return Step::Reject(e.into()),
    };
    let head_len = head.len;
    if buf.len() < head_len + body_len {
        return Step::Partial {
            expects_continue: http1::expects_continue(head.headers),
        };
    }
    let (path, query) = head.target.split_once('?').unwrap_or((head.target, ""));
    let keep_alive = http1::connection(head.version, head.headers).keep_alive;
    let is_head = head.method == "HEAD";
    let request = Request {
        method: if is_head { "GET" } else { head.method },
        path,
        query,
        headers: head.headers,
        body: &buf[head_len..head_len + body_len],
    };
    let response = service.call(&request);
    // A stopping node closes each connection after the request in progress.
    let keep_alive = keep_alive && !drain.stopping();
    write_response(out, &response, keep_alive, is_head);
    let body = match response.body {
        Body::Stream(s) if !is_head => Some(s),
        _ => None,
    };
    Step::Answered {
        len: head_len + body_len,
        keep_alive,
        body,
    }
}

fn headers_too_large(limits: &Limits) -> TransportError {
    TransportError::HeadersTooLarge {
        limit: limits.max_header_bytes,
        max_headers: limits.max_headers.min(MAX_HEADERS),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool, head: bool) {
    let (body, len) = resp.body.bytes_and_len();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\nServer: kamaitachi\r\nContent-Type: ");
    out.extend_from_slice(resp.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body);
    }
}
