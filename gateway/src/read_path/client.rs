//! The client side of the read path: reading each request head under the
//! idle and whole-request deadlines (`next_request`), writing to the client
//! (`write_client`, and the gateway's own errors with `write_local`), the
//! lingering close after an early answer, and the count of open
//! connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora_timeout::timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framing::{parse_request, Head, ReadHead};
use super::{Buffers, ReadPath};
use crate::error::GatewayError;
use crate::local::Local;

/// What the next request on a connection is.
pub(super) enum Next {
    /// A read, and the time by which its body must have arrived.
    Read(ReadHead, Instant),
    General,
    Closed,
    TimedOut,
    /// The head is still incomplete at `MAX_HEAD` bytes.
    HeadTooLarge,
}

impl ReadPath {
    /// Reads until the next request's head is complete (or the client left,
    /// or the server is stopping while the connection is idle). A request
    /// has `request_time` from its first byte to arrive whole.
    pub(super) async fn next_request(
        &self,
        client: &mut Stream,
        bufs: &mut Buffers,
        shutdown: &ShutdownWatch,
    ) -> Next {
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

    pub(super) async fn write_client(&self, client: &mut Stream, bytes: &[u8]) -> bool {
        let write = async {
            client.write_all(bytes).await?;
            client.flush().await
        };
        matches!(timeout(self.read_timeout, write).await, Ok(Ok(())))
    }

    /// The gateway's own JSON error, as the general path writes it.
    pub(super) async fn write_local(&self, client: &mut Stream, e: &GatewayError, close: bool) -> bool {
        self.write_client(client, &Local::error(e).to_http1(close)).await
    }
}

/// Counts an open client connection while it lives.
pub(super) struct OpenGuard<'a>(pub(super) usize, &'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    pub(super) fn enter(open: &'a AtomicUsize) -> Self {
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
pub(super) async fn linger(client: &mut Stream) {
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

/// Time left until `deadline`.
pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Room for the next read.
pub(super) fn reserve(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
}
