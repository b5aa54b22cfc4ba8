//! Idle keep-alive connections from the read path (`read_path/`) to the
//! nodes, one pool per worker thread.
//!
//! pingora runs one single-threaded runtime per worker thread here
//! (`work_stealing = false`), so a task never leaves the thread that
//! accepted its client. A pool per thread therefore needs no lock, and a
//! connection is always used on the runtime that registered its socket.
//! Taking and returning a connection touches no other thread: no wake-up
//! of an idle-watch task, no shared mutex (the two costs measured in
//! pingora's shared pool). A connection that went stale while idle is found
//! out on its next use, and the read path then retries on a fresh one.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The idle connections of one thread, per node address.
type Idle = Vec<(SocketAddr, Vec<(TcpStream, Instant)>)>;

thread_local! {
    static IDLE: RefCell<Idle> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamPool {
    /// Idle connections kept per node on each thread.
    pub per_node: usize,
    /// A connection idle for longer is closed rather than reused; the
    /// gateway sets `coupling::UPSTREAM_IDLE`, below the nodes' idle
    /// timeout (60 s by default).
    pub max_idle: Duration,
}

impl UpstreamPool {
    /// The most recently returned idle connection to `addr` that is young
    /// enough and readable-empty. A connection with bytes pending (a node
    /// that sent more than its answer) or at EOF (the node closed it) is
    /// closed, never reused: those bytes would be taken for the next
    /// client's answer.
    pub fn take(&self, addr: &SocketAddr) -> Option<TcpStream> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let conns = &mut idle.iter_mut().find(|(a, _)| a == addr)?.1;
            while let Some((conn, since)) = conns.pop() {
                if since.elapsed() > self.max_idle {
                    // The rest are older still.
                    conns.clear();
                    return None;
                }
                if readable_empty(&conn) {
                    return Some(conn);
                }
                tracing::debug!("pooled connection to {addr} had pending bytes or was closed; dropped");
            }
            None
        })
    }

    /// Keeps `conn` for reuse, unless the node already has enough idle ones.
    /// Closes the idle connections of nodes not used for `max_idle` (a node
    /// that left the ring keeps none open).
    pub fn put(&self, addr: SocketAddr, conn: TcpStream) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let now = Instant::now();
            idle.retain(|(a, conns)| {
                *a == addr
                    || conns
                        .last()
                        .is_some_and(|(_, t)| now.duration_since(*t) <= self.max_idle)
            });
            let conns = match idle.iter().position(|(a, _)| *a == addr) {
                Some(i) => &mut idle[i].1,
                None => {
                    idle.push((addr, Vec::new()));
                    &mut idle.last_mut().expect("just pushed").1
                }
            };
            if conns.len() < self.per_node {
                conns.push((conn, now));
            }
        })
    }

    /// Idle connections to `addr` on this thread.
    #[cfg(test)]
    pub fn idle(&self, addr: &SocketAddr) -> usize {
        IDLE.with(|idle| {
            idle.borrow()
                .iter()
                .find(|(a, _)| a == addr)
                .map_or(0, |(_, c)| c.len())
        })
    }
}

/// Whether nothing is waiting to be read on `conn` and the peer has not
/// closed it: a non-blocking `MSG_PEEK` of one byte must find nothing.
/// (tokio's `try_read` trusts its cached readiness; this asks the kernel.)
fn readable_empty(conn: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let sock = socket2::SockRef::from(conn);
    match sock.peek(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // Ok(0): EOF; Ok(n): stray bytes.
        Ok(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_newest_first_caps_and_expires() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = UpstreamPool {
            per_node: 2,
            max_idle: Duration::from_millis(200),
        };
        assert!(pool.take(&addr).is_none());
        let mut conns = Vec::new();
        let mut server_sides = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            server_sides.push(listener.accept().await.unwrap().0);
            conns.push(c);
        }
        let ports: Vec<u16> = conns.iter().map(|c| c.local_addr().unwrap().port()).collect();
        for c in conns {
            pool.put(addr, c);
        }
        assert_eq!(pool.idle(&addr), 2, "the cap was not kept");
        let newest = pool.take(&addr).unwrap();
        assert_eq!(newest.local_addr().unwrap().port(), ports[1]);
        pool.put(addr, newest);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pool.take(&addr).is_none(), "a stale connection was reused");
        assert_eq!(pool.idle(&addr), 0, "stale connections were kept");

        // A node no longer used: its idle connections close when another
        // node's connection is returned.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_addr = other.local_addr().unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        pool.put(addr, c);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = TcpStream::connect(other_addr).await.unwrap();
        pool.put(other_addr, c);
        assert_eq!(pool.idle(&addr), 0, "a departed node's connections were kept");
        assert_eq!(pool.idle(&other_addr), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_with_pending_bytes_or_closed_is_not_reused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = UpstreamPool {
            per_node: 4,
            max_idle: Duration::from_secs(10),
        };
        let clean = TcpStream::connect(addr).await.unwrap();
        let _clean_server = listener.accept().await.unwrap().0;
        let stray = TcpStream::connect(addr).await.unwrap();
        let mut stray_server = listener.accept().await.unwrap().0;
        let closed = TcpStream::connect(addr).await.unwrap();
        drop(listener.accept().await.unwrap().0);
        let clean_port = clean.local_addr().unwrap().port();
        pool.put(addr, clean);
        pool.put(addr, stray);
        pool.put(addr, closed);
        stray_server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool.take(&addr).expect("the clean connection");
        assert_eq!(got.local_addr().unwrap().port(), clean_port);
        assert_eq!(pool.idle(&addr), 0);
    }
}
