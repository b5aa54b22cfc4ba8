//! End-to-end tests of the `kamaitachi-bench` binary against a tiny
//! keep-alive HTTP server on 127.0.0.1 that counts what it receives. Every
//! loop here is bounded, and the server stops by itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const SNAPSHOT: &str = "/kamaitachi/api/data/v1/snapshot";
const PERIOD: &str = "/kamaitachi/api/data/v1/period";
const STATS: &str = "/kamaitachi/api/data/v1/stats";
const OK_BODY: &str = r#"{"status_code":0,"status_msg":"success","data":[]}"#;
const STATS_BODY: &str =
    r#"{"status_code":0,"status_msg":"success","data":{"cache":{"hits":10,"misses":5,"hit_rate":0.66}}}"#;
/// The longest a server or a run of the binary may last.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counts {
    /// Requests on the snapshot and period routes.
    data: AtomicUsize,
    snapshot: AtomicUsize,
    period: AtomicUsize,
    stats: AtomicUsize,
    /// Connections that carried at least one data request.
    data_conns: AtomicUsize,
    /// Snapshot answers of HTTP 500.
    failed: AtomicUsize,
}

struct Server {
    port: u16,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server; `stats_ok` false makes the stats route answer 404.
    fn start(stats_ok: bool) -> Server {
        Server::start_with(stats_ok, Duration::ZERO)
    }

    /// As `start`, answering the period route only after `period_delay`.
    fn start_with(stats_ok: bool, period_delay: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        let accept = thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < LIMIT {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (c, s) = (c.clone(), s.clone());
                        thread::spawn(move || serve(stream, &c, &s, stats_ok, period_delay));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            port,
            counts,
            stop,
            accept: Some(accept),
        }
    }

    fn target(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves one keep-alive connection until the client closes it, the server
/// stops, or it sits idle for 10 s.
fn serve(stream: TcpStream, counts: &Counts, stop: &AtomicBool, stats_ok: bool, period_delay: Duration) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut carried_data = false;
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        for _ in 0..100 {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = match path.as_str() {
            SNAPSHOT | PERIOD => {
                counts.data.fetch_add(1, Ordering::SeqCst);
                if !carried_data {
                    carried_data = true;
                    counts.data_conns.fetch_add(1, Ordering::SeqCst);
                }
                assert!(serde_json::from_slice::<Value>(&body).is_ok(), "bodies are JSON");
                if path == PERIOD {
                    counts.period.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(period_delay);
                    ("200 OK", OK_BODY)
                } else if (counts.snapshot.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(7) {
                    counts.failed.fetch_add(1, Ordering::SeqCst);
                    (
                        "500 Internal Server Error",
                        r#"{"status_code":1,"status_msg":"boom"}"#,
                    )
                } else {
                    ("200 OK", OK_BODY)
                }
            }
            STATS => {
                counts.stats.fetch_add(1, Ordering::SeqCst);
                if stats_ok {
                    ("200 OK", STATS_BODY)
                } else {
                    ("404 Not Found", "not found")
                }
            }
            _ => ("404 Not Found", "not found"),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Runs the binary with `args`, killing it if it outlives `LIMIT`.
fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kamaitachi-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kamaitachi-bench");
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
        panic!("kamaitachi-bench did not finish within {LIMIT:?}");
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn json_run_counts_every_request() {
    let server = Server::start(true);
    let target = server.target();
    let out = bench(&[
        "--target",
        &target,
        "--requests",
        "300",
        "--concurrency",
        "4",
        "--json",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    println!("{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    let c = &server.counts;
    assert_eq!(v["requests"], 300);
    assert_eq!(c.data.load(Ordering::SeqCst), 300, "the server saw every request");
    assert_eq!(c.snapshot.load(Ordering::SeqCst), 300);
    let failed = c.failed.load(Ordering::SeqCst) as u64;
    assert_eq!(failed, 42);
    let errors = v["errors"].as_object().expect("errors object");
    assert_eq!(
        errors.get("HTTP 500").and_then(Value::as_u64),
        Some(failed),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 1, "no other errors: {errors:?}");
    assert_eq!(v["errors_total"], failed);
    assert_eq!(v["ok"], 300 - failed);
    assert!(v["qps"].as_f64().expect("qps") > 0.0);
    for p in ["p50", "p95", "p99", "max"] {
        assert!(v["latency_ms"][p].as_f64().expect(p) > 0.0, "{p}");
    }
    assert_eq!(v["hit_rate"]["before"]["hit_rate"], 0.66);
    assert_eq!(v["hit_rate"]["after"]["hits"], 10);
    assert_eq!(
        v["hit_rate"]["run"],
        Value::Null,
        "no lookups between the two reads"
    );
    assert_eq!(c.stats.load(Ordering::SeqCst), 2, "stats read before and after");
    let conns = c.data_conns.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&conns),
        "keep-alive: {conns} data connections for 4 workers"
    );
    assert!(
        stderr.is_empty(),
        "no progress bar or noise off a terminal: {stderr:?}"
    );
}

#[test]
fn table_run_mixes_scenarios() {
    let server = Server::start(true);
    let target = format!("{}/", server.target());
    let args = [
        "--target",
        &target,
        "--scenario",
        "all",
        "--repeat",
        "10",
        "--requests",
        "100",
        "--concurrency",
        "3",
    ];
    let out = bench(&args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    println!("{stdout}");
    let c = &server.counts;
    assert_eq!(c.data.load(Ordering::SeqCst), 100);
    assert_eq!(c.period.load(Ordering::SeqCst), 20, "scenario 5 is one in five");
    let failed = c.failed.load(Ordering::SeqCst);
    assert_eq!(failed, 80 / 7);
    assert!(
        stdout.contains(&format!("100 (ok {}, errors {failed})", 100 - failed)),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("HTTP 500: {failed}")), "{stdout}");
    assert!(stdout.contains("0.6600 (10 hits, 5 misses)"), "{stdout}");
    assert!(stdout.contains("hot set of 10"), "{stdout}");
}

#[test]
fn duration_run_is_bounded_and_counted() {
    let server = Server::start(false);
    let target = server.target();
    let start = Instant::now();
    let out = bench(&[
        "--target",
        &target,
        "--duration",
        "0.5",
        "--concurrency",
        "2",
        "--scenario",
        "5",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let sent = v["requests"].as_u64().expect("requests");
    assert!(sent > 0);
    assert_eq!(sent as usize, server.counts.data.load(Ordering::SeqCst));
    assert_eq!(v["errors_total"], 0, "period requests never fail here");
    assert!(v["hit_rate"]["before"]["error"]
        .as_str()
        .expect("error")
        .contains("404"));
    assert!(
        text(&out.stderr).contains("unavailable"),
        "says the stats could not be read"
    );
}

#[test]
fn slow_answers_are_timeouts() {
    let server = Server::start_with(true, Duration::from_millis(400));
    let target = server.target();
    let args = [
        "--target",
        &target,
        "--scenario",
        "period",
        "--requests",
        "6",
        "--concurrency",
        "2",
    ];
    let out = bench(&[&args[..], &["--timeout-ms", "100", "--json"]].concat());
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["requests"], 6);
    assert_eq!(v["errors"]["timeout"], 6, "{v}");
    assert_eq!(v["latency_ms"], Value::Null, "no successful request");
    assert_eq!(server.counts.period.load(Ordering::SeqCst), 6);
}

#[test]
fn unreachable_target_fails_clearly() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!("http://127.0.0.1:{port}");
    let out = bench(&["--target", &target, "--requests", "10", "--timeout-ms", "2000"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach {target}")), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_fail() {
    for args in [
        &["--scenario", "9"][..],
        &["--concurrency", "0"],
        &["--requests", "0"],
        &["--duration", "-1"],
        &["--target", "localhost:9000"],
        &["--nope"],
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
}
