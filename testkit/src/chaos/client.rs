//! The clients of a fault run: a bounded number of worker threads issuing
//! writes (mostly through the gateway, some straight to the node that leads
//! per `/health`) and reads of cells written earlier (through the gateway
//! and straight to random nodes), each with a short timeout, every answer
//! recorded in the [`History`]. Bounded in operations and time; they stop
//! when told, finishing the operation in flight.
//!
//! [`send`] is the transport: one request on a fresh connection, with a
//! deadline, telling "nothing was sent" from "sent, no answer".

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::history::{
    cell_of, classify_write, read_value, short, value_of, History, Op, OpKind, Outcome, Sent, REPORT_DATE,
};
use super::rng::Rng;
use crate::{parse_responses, TOKEN};

pub const GATEWAY_INGEST: &str = "/data/kamaitachi/api/data/v1/ingest";
pub const NODE_INGEST: &str = "/kamaitachi/api/data/v1/ingest";
pub const GATEWAY_SNAPSHOT: &str = "/data/kamaitachi/api/data/v1/snapshot";
pub const NODE_SNAPSHOT: &str = "/kamaitachi/api/data/v1/snapshot";

/// The largest answer [`send`] reads.
const MAX_ANSWER: usize = 1 << 20;

/// One request on a fresh connection, answered within `timeout` (the
/// connect gets at most a second of it).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Sent {
    let deadline = Instant::now() + timeout;
    let mut s = match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(1))) {
        Ok(s) => s,
        Err(e) => return Sent::NotConnected(e.to_string()),
    };
    let mut with_type = vec![("Content-Type", "application/json")];
    with_type.extend_from_slice(headers);
    let bytes = crate::request_bytes(addr, method, path, body, &with_type);
    let _ = s.set_write_timeout(Some(timeout));
    if let Err(e) = s.write_all(&bytes) {
        return Sent::NoAnswer(format!("sending: {e}"));
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Sent::NoAnswer(format!("no answer within {timeout:?}"));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_ANSWER {
                    return Sent::NoAnswer("answer too large".into());
                }
                if let Some(r) = parse_responses(&out).into_iter().next() {
                    if r.status != 0 {
                        return Sent::Answer(r.status, r.text());
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Sent::NoAnswer(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Sent::NoAnswer(e.to_string()),
        }
    }
    match parse_responses(&out).into_iter().next() {
        Some(r) if r.status != 0 => Sent::Answer(r.status, r.text()),
        _ => Sent::NoAnswer(format!("closed after {} bytes", out.len())),
    }
}

/// `GET /health` of `addr` as JSON, if it answers 200 or 503 within `timeout`.
pub fn health(addr: SocketAddr, timeout: Duration) -> Option<serde_json::Value> {
    match send(addr, "GET", "/health", b"", &[], timeout) {
        Sent::Answer(_, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The body of write `id`: one new subject, one report, one value.
pub fn write_body(id: u64) -> String {
    serde_json::json!({"records": [{
        "subject": cell_of(id), "name": format!("chaos {id}"), "report_date": REPORT_DATE,
        "end_date": "2025-06-30", "year": "2025", "period": "Q2", "declare_date": "2025-08-01",
        "values": {"net_profit": value_of(id)}
    }]})
    .to_string()
}

/// Where the clients send: the gateway and each node's own port.
#[derive(Debug, Clone)]
pub struct Targets {
    pub gateway: SocketAddr,
    /// (name, address) of every node.
    pub nodes: Vec<(String, SocketAddr)>,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub writers: usize,
    pub readers: usize,
    /// Percent of writes sent through the gateway (the rest: straight to
    /// the node that leads per `/health`).
    pub gateway_writes: u64,
    /// Percent of reads sent through the gateway (the rest: a random node).
    pub gateway_reads: u64,
    /// Pause of each worker between two operations.
    pub think: Duration,
    pub write_timeout: Duration,
    pub read_timeout: Duration,
    /// Bound on operations per worker.
    pub max_ops_per_worker: usize,
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            writers: 3,
            readers: 2,
            gateway_writes: 80,
            gateway_reads: 50,
            think: Duration::from_millis(30),
            write_timeout: Duration::from_secs(7),
            read_timeout: Duration::from_secs(3),
            max_ops_per_worker: 20_000,
            seed: 1,
        }
    }
}

/// The running workers; [`Clients::stop`] ends them.
pub struct Clients {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// Shared by the workers: the next write id and the last leader seen.
struct Shared {
    history: Arc<History>,
    targets: Targets,
    work: Workload,
    next_write: AtomicU64,
    leader: Mutex<(Option<Instant>, Option<usize>)>,
    stop: Arc<AtomicBool>,
    until: Instant,
}

impl Clients {
    /// Starts the workers; each stops by itself after `max_time`.
    pub fn start(targets: Targets, work: Workload, history: Arc<History>, max_time: Duration) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            history,
            targets,
            next_write: AtomicU64::new(0),
            leader: Mutex::new((None, None)),
            stop: stop.clone(),
            until: Instant::now() + max_time,
            work: work.clone(),
        });
        let mut workers = Vec::new();
        for w in 0..work.writers + work.readers {
            let s = shared.clone();
            let writer = w < work.writers;
            let seed = work.seed.wrapping_mul(1000).wrapping_add(w as u64);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("chaos-client-{w}"))
                    .spawn(move || s.work(writer, Rng::new(seed)))
                    .expect("spawn a client thread"),
            );
        }
        Clients { stop, workers }
    }

    /// Stops the workers and waits for each (bounded by its operation's
    /// timeout).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

impl Shared {
    fn work(&self, writer: bool, mut rng: Rng) {
        for _ in 0..self.work.max_ops_per_worker {
            if self.stop.load(Ordering::Relaxed) || Instant::now() > self.until {
                return;
            }
            if writer {
                self.write(&mut rng);
            } else {
                self.read(&mut rng);
            }
            std::thread::sleep(self.work.think);
        }
    }

    /// The node that leads per `/health`, asked at most every 300 ms.
    fn leader(&self) -> Option<usize> {
        let mut cached = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0.is_some_and(|t| t.elapsed() < Duration::from_millis(300)) {
            return cached.1;
        }
        let found = self.targets.nodes.iter().position(|(_, addr)| {
            health(*addr, Duration::from_millis(400)).is_some_and(|h| h["term"].as_i64().is_some())
        });
        *cached = (Some(Instant::now()), found);
        found
    }

    fn write(&self, rng: &mut Rng) {
        let id = self.next_write.fetch_add(1, Ordering::Relaxed);
        let (target, addr, path) = match rng.chance(self.work.gateway_writes) {
            true => ("gateway".to_string(), self.targets.gateway, GATEWAY_INGEST),
            false => {
                let i = self
                    .leader()
                    .unwrap_or_else(|| rng.below(self.targets.nodes.len()));
                let (name, addr) = &self.targets.nodes[i];
                (name.clone(), *addr, NODE_INGEST)
            }
        };
        let auth = format!("Bearer {TOKEN}");
        let invoked = self.history.now();
        let sent = send(
            addr,
            "POST",
            path,
            write_body(id).as_bytes(),
            &[("Authorization", &auth)],
            self.work.write_timeout,
        );
        let completed = self.history.now();
        self.history.record(Op {
            kind: OpKind::Write { id },
            target,
            invoked,
            completed,
            outcome: classify_write(&sent),
            detail: detail(&sent),
        });
    }

    fn read(&self, rng: &mut Rng) {
        let written = self.next_write.load(Ordering::Relaxed);
        if written == 0 {
            return;
        }
        // Mostly the latest writes (in flight or just answered), some older.
        let id = if rng.chance(70) {
            written - 1 - rng.range(0, 20.min(written - 1))
        } else {
            rng.range(0, written - 1)
        };
        let (target, addr, path) = match rng.chance(self.work.gateway_reads) {
            true => ("gateway".to_string(), self.targets.gateway, GATEWAY_SNAPSHOT),
            false => {
                let (name, addr) = &self.targets.nodes[rng.below(self.targets.nodes.len())];
                (name.clone(), *addr, NODE_SNAPSHOT)
            }
        };
        let subject = cell_of(id);
        let body = format!(r#"{{"ids":"net_profit","subjects":"{subject}"}}"#);
        let invoked = self.history.now();
        let sent = send(addr, "POST", path, body.as_bytes(), &[], self.work.read_timeout);
        let completed = self.history.now();
        let (outcome, seen, why) = match read_value(&sent, &subject) {
            Ok(v) => (Outcome::Ok, v, String::new()),
            Err(e) => (Outcome::Failed, None, e),
        };
        self.history.record(Op {
            kind: OpKind::Read { id, seen },
            target,
            invoked,
            completed,
            outcome,
            detail: if why.is_empty() { detail(&sent) } else { why },
        });
    }
}

fn detail(sent: &Sent) -> String {
    match sent {
        Sent::Answer(status, body) => format!("{status} {}", short(body)),
        Sent::NotConnected(e) => format!("not connected: {e}"),
        Sent::NoAnswer(e) => format!("no answer: {e}"),
    }
}
