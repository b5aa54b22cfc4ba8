//! A userspace TCP proxy between a process and one of its peers, for the
//! link faults the kernel here cannot inject (no `netem`): it listens on a
//! free loopback port and forwards every connection to one target, in one
//! of three modes that can be switched at any time:
//!
//! - [`LinkMode::Pass`]: bytes go through at once.
//! - [`LinkMode::Delay`]: every chunk read is held until `delay` after it
//!   arrived, then written; order is kept per direction (a slow link, not a
//!   lossy one).
//! - [`LinkMode::Blackhole`]: nothing moves in either direction: bytes
//!   already read are held, nothing more is read, and a new connection is
//!   accepted but not connected onwards — as a partition looks to TCP,
//!   whose retransmissions make the stream whole again when it heals.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] forwarded connections at once (more
//! are closed at once), chunks of at most 16 KiB, and every thread wakes at
//! least every 50 ms to see the proxy stopped. Dropping the proxy stops
//! its threads and closes every connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Forwarded connections open at once through one proxy.
pub const MAX_CONNECTIONS: usize = 256;
const CHUNK: usize = 16 * 1024;
const TICK: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a link behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Delay(Duration),
    Blackhole,
}

struct Shared {
    mode: Mutex<LinkMode>,
    stop: AtomicBool,
    open: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> LinkMode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Waits while the link is black-holed; false once the proxy stops.
    fn wait_passable(&self) -> bool {
        while self.mode() == LinkMode::Blackhole {
            if self.stopped() {
                return false;
            }
            thread::sleep(TICK);
        }
        !self.stopped()
    }
}

/// One proxy: `127.0.0.1:port` → `target`.
pub struct Proxy {
    pub port: u16,
    pub target: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`, passing
    /// bytes through until told otherwise.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind a free port");
        let port = listener.local_addr().expect("proxy: local address").port();
        listener
            .set_nonblocking(true)
            .expect("proxy: non-blocking listener");
        let shared = Arc::new(Shared {
            mode: Mutex::new(LinkMode::Pass),
            stop: AtomicBool::new(false),
            open: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, target, s))
            .expect("proxy: spawn the accept thread");
        Proxy {
            port,
            target,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:port`, the address a process is given instead of the
    /// target's.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: LinkMode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    pub fn mode(&self) -> LinkMode {
        self.shared.mode()
    }

    /// Connections being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    drop(client);
                    continue;
                }
                shared.open.fetch_add(1, Ordering::Relaxed);
                let s = shared.clone();
                let spawned = thread::Builder::new().name("proxy-conn".into()).spawn(move || {
                    forward(client, target, &s);
                    s.open.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    shared.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// One connection: connects onwards once the link passes, then pumps both
/// directions until either side closes or the proxy stops.
fn forward(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    if !shared.wait_passable() {
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = pump(client, server, shared.clone());
    let down = pump(s2, c2, shared.clone());
    for h in [up, down].into_iter().flatten() {
        for t in h {
            let _ = t.join();
        }
    }
}

/// Copies `from` → `to` through a reader and a writer thread: the reader
/// stamps each chunk with when it may leave, the writer waits for that
/// (and for the link to pass) and writes it. `None` when a thread could
/// not be started.
fn pump(from: TcpStream, to: TcpStream, shared: Arc<Shared>) -> Option<Vec<thread::JoinHandle<()>>> {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(64);
    let _ = from.set_read_timeout(Some(TICK));
    let _ = to.set_write_timeout(Some(TICK));
    let rs = shared.clone();
    let reader = thread::Builder::new()
        .name("proxy-read".into())
        .spawn(move || {
            let mut from = from;
            let mut buf = vec![0u8; CHUNK];
            loop {
                if !rs.wait_passable() {
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let due = match rs.mode() {
                            LinkMode::Delay(d) => Instant::now() + d,
                            _ => Instant::now(),
                        };
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Read);
        })
        .ok()?;
    let writer = thread::Builder::new()
        .name("proxy-write".into())
        .spawn(move || {
            let mut to = to;
            loop {
                let (due, chunk) = match rx.recv_timeout(TICK) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if shared.stopped() {
                            break;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                loop {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    if shared.stopped() {
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    thread::sleep((due - now).min(TICK));
                }
                if !shared.wait_passable() || !write_whole(&mut to, &chunk, &shared) {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            // The sender side closed (or the proxy stopped): pass the close on.
            let _ = to.shutdown(if shared.stopped() {
                Shutdown::Both
            } else {
                Shutdown::Write
            });
        })
        .ok()?;
    Some(vec![reader, writer])
}

/// Writes all of `chunk`, however long the peer takes to read it (a
/// paused process: TCP does not give up either), until the proxy stops;
/// false when the connection failed or the proxy stopped.
fn write_whole(to: &mut TcpStream, mut chunk: &[u8], shared: &Shared) -> bool {
    while !chunk.is_empty() {
        match to.write(chunk) {
            Ok(0) => return false,
            Ok(n) => chunk = &chunk[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if shared.stopped() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns its address.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for c in l.incoming().take(8) {
                let Ok(mut c) = c else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Option<Duration> {
        let t = Instant::now();
        c.write_all(msg).ok()?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).ok()?;
        assert_eq!(got, msg);
        Some(t.elapsed())
    }

    #[test]
    fn passes_delays_and_black_holes_then_heals_with_the_stream_intact() {
        let p = Proxy::start(echo());
        let mut c = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let fast = round_trip(&mut c, b"hello").unwrap();
        assert!(fast < Duration::from_millis(200), "{fast:?}");

        p.set(LinkMode::Delay(Duration::from_millis(300)));
        let slow = round_trip(&mut c, b"slow").unwrap();
        // Delayed each way.
        assert!(slow >= Duration::from_millis(600), "{slow:?}");
        assert!(slow < Duration::from_millis(2000), "{slow:?}");

        p.set(LinkMode::Blackhole);
        c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        c.write_all(b"held").unwrap();
        let mut buf = [0u8; 4];
        assert!(c.read_exact(&mut buf).is_err(), "a black-holed link answered");
        // A new connection is accepted but goes nowhere.
        let mut c2 = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        c2.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        c2.write_all(b"x").unwrap();
        assert!(c2.read_exact(&mut [0u8; 1]).is_err());

        p.set(LinkMode::Pass);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
        c2.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut one = [0u8; 1];
        c2.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        assert!(p.open_connections() >= 1);
    }
}
