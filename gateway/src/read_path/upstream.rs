//! The upstream side of the read path: one request to one node over this
//! thread's keep-alive pool (`exchange`, retried once on a fresh
//! connection when a pooled one had gone stale), reading the answer
//! (`round_trip`) and relaying it to the client (`relay`). Which node, and
//! what a failure here means for the request, is `failover.rs`'s to say;
//! `UpstreamError` is the failure's source it decides on.

use std::net::SocketAddr as InetAddr;

use pingora::protocols::Stream;
use pingora_timeout::timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::reserve;
use super::framing::{parse_answer, Answer, MAX_HEAD};
use super::ReadPath;
use crate::failover::{Cause, Unanswered};

/// Answer bytes gathered before the first write downstream: an answer up to
/// this size leaves in one write, and can still be retried elsewhere if the
/// node fails while sending it.
const HOLD: usize = 256 * 1024;
const CONNECTION_CLOSE: &[u8] = b"Connection: close\r\n";

/// Why a node did not answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
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

/// As on pingora's path: a timeout (connecting or answering) is a 504,
/// every other failure a 502.
impl Cause for UpstreamError {
    fn class(&self) -> Unanswered {
        match self {
            UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_) => Unanswered::TimedOut,
            _ => Unanswered::Failed,
        }
    }
}

/// How the relay of an answer ended.
pub(super) struct Relayed {
    pub(super) status: u16,
    pub(super) keep_client: bool,
}

impl ReadPath {
    /// One request to one node: over a pooled connection if there is one
    /// (and once more on a fresh connection if that one had gone stale).
    pub(super) async fn exchange(
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
    pub(super) async fn relay(
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
}
