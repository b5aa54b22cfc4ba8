//! What the gateway tests share beyond the test kit: the sample data, a
//! registered node, keep-alive read loops and a recording fake upstream.
//! Processes (etcd, nodes, the gateway itself) and their directories are
//! the kit's (`kamaitachi_testkit`).
#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use kamaitachi_testkit::*;

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_kamaitachi-gateway");

pub fn node_bin() -> PathBuf {
    workspace_bin("kamaitachi-node")
}

/// Sample data for this test binary (generated once).
pub fn sample_db() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let db = temp_dir("gw-sample").join("sample.db");
        gen_data(&node_bin(), &db, 200, 11);
        db
    })
}

/// The `n`-th subject of the sample data (wrapping around).
pub fn subject(n: usize) -> String {
    static ALL: OnceLock<Vec<String>> = OnceLock::new();
    let all = ALL.get_or_init(|| subjects(sample_db()));
    all[n % all.len()].clone()
}

/// An admin POST (bearer token) with an empty body.
pub fn admin_post(port: u16, path: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    request(port, "POST", path, b"", &[("Authorization", &auth)])
}

pub fn snapshot_body(subject: &str) -> String {
    format!(r#"{{"ids":"operating_income,net_profit","subjects":"{subject}"}}"#)
}

/// A node registered in `etcd` with a short lease. A master gets a copy of
/// the sample database of its own (a node keeps its election memory in
/// its database: two clusters must not share one file); a slave an empty
/// one, and copies the master's through replication.
pub fn registered_node(etcd: &Etcd, mode: &'static str) -> Node {
    let db = if mode == "master" {
        let db = temp_dir("gw-master").join("master.db");
        std::fs::copy(sample_db(), &db).expect("copy the sample database");
        db
    } else {
        temp_dir("gw-slave").join("slave.db")
    };
    let mut opts = NodeOpts::new(&db);
    opts.mode = mode;
    opts.extra = format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\nttl = 2\n",
        etcd.endpoint()
    );
    Node::start(&node_bin(), &opts)
}

/// `n` reads on one keep-alive connection, each for its own subject
/// (`{tag}:{i}`); asserts each is answered 200 and returns the slowest.
pub fn keepalive_reads(port: u16, route: &str, tag: u32, n: usize) -> Duration {
    let mut client = KeepAlive::connect(port).unwrap();
    let path = format!("/data/kamaitachi/api/data/v1/{route}");
    (0..n)
        .map(|i| {
            let started = Instant::now();
            let r = client
                .post(&path, &snapshot_body(&format!("{tag}:{i}")))
                .unwrap_or_else(|e| panic!("read {i}: {e}"));
            assert_eq!(r.status, 200, "read {i}: {}", r.text());
            started.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// A recording upstream on a free port: answers every request with 200 and
/// a small JSON body, and keeps each request's head and body. Stops when
/// dropped (its thread exits on the next connection or after 60 s idle).
/// Each request the recorder saw: its head and its body.
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The proof headers (each ending in CRLF) a fake node holding the cluster
/// secret answers the health check in `head` with, as `127.0.0.1:{port}`
/// in `role`; "" when the request carries no challenge.
pub fn health_proof_headers(head: &str, port: u16, role: &str) -> String {
    let key = cluster::auth::ClusterKey::from_secret(CLUSTER_SECRET.as_bytes());
    let challenge = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(cluster::auth::CHALLENGE_HEADER)
            .then(|| value.trim().to_string())
    });
    challenge
        .map(|c| {
            let me = format!("127.0.0.1:{port}");
            format!(
                "{}: {}\r\n{}: {me}\r\n",
                cluster::auth::PROOF_HEADER,
                key.health_proof(&c, &me, role),
                cluster::auth::NODE_HEADER
            )
        })
        .unwrap_or_default()
}

pub struct Recorder {
    pub port: u16,
    pub seen: Seen,
    pub data_requests: Arc<AtomicUsize>,
}

/// The body `Recorder::answering(len)` sends for its `n`th data request.
pub fn answer_of(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i * 7 + n) % 26) as u8).collect()
}

impl Recorder {
    pub fn start() -> Recorder {
        Recorder::closing_after(10_000)
    }

    /// Closes each connection after `per_conn` answers, without saying so
    /// (no `Connection: close`): a keep-alive connection the gateway holds
    /// for reuse goes stale under it.
    pub fn closing_after(per_conn: usize) -> Recorder {
        Recorder::spawn(per_conn, false, 0, "master", false)
    }

    /// Answers the first request of each connection; a data request that
    /// comes later on the same connection is read (and recorded) and the
    /// connection closed unanswered: the race of a node closing a
    /// keep-alive connection just as the gateway reuses it, every time.
    pub fn dropping_reused() -> Recorder {
        Recorder::spawn(10_000, false, 0, "master", true)
    }

    /// Answers its health checks but never a data request (it keeps the
    /// connection open, silent): a node that hangs.
    pub fn hanging() -> Recorder {
        Recorder::spawn(10_000, true, 0, "slave", false)
    }

    /// Answers each data request with a body of `len` bytes (the answer
    /// to request n is `answer_of(n, len)`).
    pub fn answering(len: usize) -> Recorder {
        Recorder::spawn(10_000, false, len, "master", false)
    }

    /// It holds the cluster secret: it answers health challenges with the
    /// proof for `127.0.0.1:{port}` as `role` (a fake *node*, not a rogue).
    fn spawn(
        per_conn: usize,
        hang: bool,
        answer_len: usize,
        role: &'static str,
        drop_reused: bool,
    ) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let data_requests = Arc::new(AtomicUsize::new(0));
        let (s, d) = (seen.clone(), data_requests.clone());
        std::thread::spawn(move || {
            listener.set_nonblocking(false).ok();
            let started = Instant::now();
            for conn in listener.incoming() {
                if started.elapsed() > Duration::from_secs(120) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (s, d) = (s.clone(), d.clone());
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    for nth in 0..per_conn {
                        // one request: head, then Content-Length bytes
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i;
                            }
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let len: usize = head
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + 4 + len {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[head_end + 4..head_end + 4 + len].to_vec();
                        buf.drain(..head_end + 4 + len);
                        let request_line = head.lines().next().unwrap_or("").to_string();
                        if !request_line.starts_with("GET /health ") {
                            d.fetch_add(1, Ordering::SeqCst);
                            s.lock().unwrap().push((head.clone(), body));
                            if hang {
                                std::thread::sleep(Duration::from_secs(10));
                                return;
                            }
                            if drop_reused && nth > 0 {
                                return;
                            }
                        }
                        let small = b"{\"status_code\":0,\"status_msg\":\"success\",\"data\":[]}";
                        let large = (answer_len > 0 && !request_line.starts_with("GET /health "))
                            .then(|| answer_of(d.load(Ordering::SeqCst), answer_len));
                        let reply: &[u8] = large.as_deref().unwrap_or(small);
                        let proof = health_proof_headers(&head, port, role);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{proof}Content-Length: {}\r\n\r\n",
                            reply.len()
                        );
                        if conn
                            .write_all(resp.as_bytes())
                            .and_then(|_| conn.write_all(reply))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Recorder {
            port,
            seen,
            data_requests,
        }
    }
}
