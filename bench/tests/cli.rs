//! End-to-end tests of the `kamaitachi-bench` binary against a tiny
//! keep-alive HTTP server on 127.0.0.1 that counts what it receives. For
//! `--scenario ingest` it acknowledges batches with an increasing seq, and a
//! second server sharing its ledger plays a slave whose /health shows each
//! seq a fixed delay after the acknowledgement. Every loop here is bounded,
//! and the servers stop by themselves.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const SNAPSHOT: &str = "/kamaitachi/api/data/v1/snapshot";
const PERIOD: &str = "/kamaitachi/api/data/v1/period";
const STATS: &str = "/kamaitachi/api/data/v1/stats";
const INGEST: &str = "/kamaitachi/api/data/v1/ingest";
const HEALTH: &str = "/health";
/// The admin token the test servers accept.
const TOKEN: &str = "test-token-1234";
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
    /// Ingest requests, accepted ones, and the records of the accepted.
    ingest: AtomicUsize,
    ingest_ok: AtomicUsize,
    rows: AtomicUsize,
    /// Health requests.
    health: AtomicUsize,
}

/// The write history shared by a master and its slaves: when each seq was
/// acknowledged (seq n is `acks[n - 1]`).
#[derive(Default)]
struct Ledger {
    acks: Mutex<Vec<Instant>>,
}

impl Ledger {
    /// Acknowledges a batch; returns its seq.
    fn ack(&self) -> usize {
        let mut acks = self.acks.lock().expect("ledger");
        acks.push(Instant::now());
        acks.len()
    }

    /// The highest seq acknowledged at least `lag` ago.
    fn applied(&self, lag: Duration) -> usize {
        let acks = self.acks.lock().expect("ledger");
        acks.partition_point(|at| at.elapsed() >= lag)
    }
}

/// How a server answers.
#[derive(Clone)]
struct Config {
    /// false: the stats route answers 404.
    stats_ok: bool,
    /// Delay of the period route's answers.
    period_delay: Duration,
    ledger: Arc<Ledger>,
    /// How long after the acknowledgement /health shows a seq.
    lag: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stats_ok: true,
            period_delay: Duration::ZERO,
            ledger: Arc::new(Ledger::default()),
            lag: Duration::ZERO,
        }
    }
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
        Server::start_config(Config {
            stats_ok,
            period_delay,
            ..Config::default()
        })
    }

    fn start_config(config: Config) -> Server {
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
                        let (c, s, config) = (c.clone(), s.clone(), config.clone());
                        thread::spawn(move || serve(stream, &c, &s, &config));
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
fn serve(stream: TcpStream, counts: &Counts, stop: &AtomicBool, config: &Config) {
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
        let mut authorization = String::new();
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
                } else if name.trim().eq_ignore_ascii_case("authorization") {
                    authorization = value.trim().to_string();
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let ingest_answer;
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
                    thread::sleep(config.period_delay);
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
                if config.stats_ok {
                    ("200 OK", STATS_BODY)
                } else {
                    ("404 Not Found", "not found")
                }
            }
            INGEST => {
                counts.ingest.fetch_add(1, Ordering::SeqCst);
                if authorization != format!("Bearer {TOKEN}") {
                    (
                        "401 Unauthorized",
                        r#"{"status_code":401,"status_msg":"missing admin token"}"#,
                    )
                } else {
                    let records = valid_records(&body).expect("valid ingest body");
                    counts.ingest_ok.fetch_add(1, Ordering::SeqCst);
                    counts.rows.fetch_add(records, Ordering::SeqCst);
                    let seq = config.ledger.ack();
                    ingest_answer = format!(
                        r#"{{"status_code":0,"status_msg":"success","data":{{"written":{records},"seq":{seq}}}}}"#
                    );
                    ("200 OK", ingest_answer.as_str())
                }
            }
            HEALTH => {
                counts.health.fetch_add(1, Ordering::SeqCst);
                let master = config.ledger.applied(Duration::ZERO);
                let applied = config.ledger.applied(config.lag);
                ingest_answer = format!(
                    r#"{{"status":"ok","mode":"slave","applied_seq":{applied},"master_seq":{master},"lag":{}}}"#,
                    master - applied
                );
                ("200 OK", ingest_answer.as_str())
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

/// The number of records of an ingest body, checking what the node checks:
/// report_date is 00:00 UTC of end_date (a 2025 quarter end), year and
/// period match, and no (subject, report_date) appears twice.
fn valid_records(body: &[u8]) -> Result<usize, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let records = v["records"].as_array().ok_or("no records")?;
    let quarters = [
        ("2025-03-31", 1_743_379_200, "Q1"),
        ("2025-06-30", 1_751_241_600, "Q2"),
        ("2025-09-30", 1_759_190_400, "Q3"),
        ("2025-12-31", 1_767_139_200, "Q4"),
    ];
    let mut keys = HashSet::new();
    for r in records {
        let end = r["end_date"].as_str().ok_or("end_date")?;
        let (_, date, period) = quarters
            .iter()
            .find(|(e, _, _)| *e == end)
            .ok_or(format!("{end} is not a 2025 quarter end"))?;
        if r["report_date"] != *date || r["period"] != *period || r["year"] != "2025" {
            return Err(format!("inconsistent record {r}"));
        }
        if r["declare_date"].as_str().is_none_or(|d| d.len() != 10) || !r["values"].is_object() {
            return Err(format!("bad record {r}"));
        }
        let subject = r["subject"].as_str().ok_or("subject")?;
        if !keys.insert((subject.to_string(), *date)) {
            return Err(format!("duplicate key {subject} {end}"));
        }
    }
    Ok(records.len())
}

/// A token file unique to the test, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(name: &str, token: &str) -> TokenFile {
        let path = std::env::temp_dir().join(format!("kamaitachi-bench-{}-{name}.token", std::process::id()));
        std::fs::write(&path, format!("{token}\n")).expect("write token file");
        TokenFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
    assert_eq!(v["requests_limit"], 300);
    assert_eq!(v["concurrency"], 4);
    assert_eq!(v["target"], target.as_str());
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
fn the_original_tools_flags_are_understood() {
    // As the guide runs it: `-scenario 1 -requests 10000 -concurrent 50
    // -target "http://localhost:9000/data" -repeat 10`, scaled down.
    let server = Server::start(false);
    let target = server.target();
    let out = bench(&[
        "-scenario",
        "2",
        "-requests=40",
        "-concurrent",
        "3",
        "-target",
        &target,
        "-repeat",
        "5",
        "-nodes",
        "3",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["requests"], 40);
    assert_eq!(v["concurrency"], 3);
    assert_eq!(server.counts.snapshot.load(Ordering::SeqCst), 40);
    assert_eq!(server.counts.data_conns.load(Ordering::SeqCst), 3);
    // --concurrent is an alias of --concurrency.
    let out = bench(&[
        "--target",
        &target,
        "--requests",
        "6",
        "--concurrent",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
    assert_eq!(v["concurrency"], 2);
}

#[test]
fn html_reports_of_a_run_and_of_a_comparison() {
    let server = Server::start(true);
    let target = server.target();
    let dir = std::env::temp_dir().join(format!("kmt-bench-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut jsons = Vec::new();
    for name in ["direct", "gateway"] {
        let html = dir.join(format!("{name}.html"));
        let out = bench(&[
            "--target",
            &target,
            "--requests",
            "60",
            "--concurrency",
            "2",
            "--json",
            "--html",
            html.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let page = std::fs::read_to_string(&html).expect("report written");
        assert!(
            page.starts_with("<!doctype html>") && !page.contains("<script"),
            "self-contained"
        );
        assert_eq!(page.matches("<svg").count(), 2, "throughput and latency charts");
        let v: Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
        let failed = v["errors_total"].as_u64().expect("errors");
        assert!(failed > 0, "the test server fails some requests");
        assert!(page.contains("HTTP 500"), "errors are listed");
        let timeline: u64 = v["timeline"]["ok"]
            .as_array()
            .expect("timeline")
            .iter()
            .chain(v["timeline"]["errors"].as_array().expect("timeline"))
            .map(|n| n.as_u64().unwrap_or(0))
            .sum();
        assert_eq!(timeline, 60, "every answer is on the timeline");
        assert!(v["latency_curve_ms"].as_array().is_some_and(|c| c.len() > 10));
        let json = dir.join(format!("{name}.json"));
        std::fs::write(&json, text(&out.stdout)).unwrap();
        jsons.push(json.to_str().unwrap().to_string());
    }
    let compare = dir.join("compare.html");
    let out = bench(&[
        "--compare-json",
        &jsons.join(","),
        "--html",
        compare.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(&compare).unwrap();
    assert!(
        page.contains(">direct<") && page.contains(">gateway<"),
        "both runs"
    );
    assert_eq!(page.matches("<polyline").count(), 4, "two curves in each chart");
    let out = bench(&["--compare-json", &jsons[0]]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--html"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
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

/// A master and a slave sharing a ledger; the slave shows each seq `lag`
/// after the master acknowledged it.
fn cluster(lag: Duration) -> (Server, Server) {
    let ledger = Arc::new(Ledger::default());
    let master = Server::start_config(Config {
        ledger: ledger.clone(),
        ..Config::default()
    });
    let slave = Server::start_config(Config {
        ledger,
        lag,
        ..Config::default()
    });
    (master, slave)
}

#[test]
fn ingest_measures_rows_and_replication_delay() {
    let (master, slave) = cluster(Duration::from_millis(20));
    let token = TokenFile::new("ingest-json", TOKEN);
    let (target, follow) = (master.target(), slave.target());
    let out = bench(&[
        "--target",
        &target,
        "--scenario",
        "ingest",
        "--batch",
        "50",
        "--requests",
        "20",
        "--token-file",
        token.path(),
        "--follow",
        &follow,
        "--json",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    println!("{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    assert_eq!(v["scenario"], "ingest");
    assert_eq!(v["batches"], 20);
    assert_eq!(v["ok"], 20);
    assert_eq!(v["errors_total"], 0, "{v}");
    assert_eq!(v["rows_written"], 1000);
    assert_eq!(v["last_seq"], 20);
    assert_eq!(v["concurrency"], 1, "one writer by default");
    assert!(v["rows_per_s"].as_f64().expect("rows_per_s") > 0.0);
    for p in ["p50", "p95", "p99"] {
        assert!(v["latency_ms"][p].as_f64().expect(p) > 0.0, "{p}");
    }
    let followers = v["followers"].as_array().expect("followers");
    assert_eq!(followers.len(), 1);
    let f = &followers[0];
    assert_eq!(f["url"], follow.as_str());
    assert_eq!(f["replicated"], 20);
    assert_eq!(f["not_replicated"], 0);
    assert_eq!(f["applied_seq"], 20);
    let p50 = f["delay_ms"]["p50"].as_f64().expect("delay p50");
    assert!((15.0..=500.0).contains(&p50), "delay p50 {p50} ms");
    for p in ["p95", "p99", "max"] {
        assert!(f["delay_ms"][p].as_f64().expect(p) >= p50, "{p}");
    }
    assert!(f["polls"].as_u64().expect("polls") >= 5, "{f}");
    let c = &master.counts;
    assert_eq!(c.ingest_ok.load(Ordering::SeqCst), 20);
    assert_eq!(c.rows.load(Ordering::SeqCst), 1000);
    assert_eq!(c.data.load(Ordering::SeqCst), 0, "no reads");
    assert!(slave.counts.health.load(Ordering::SeqCst) >= 5);
    assert!(stderr.is_empty(), "{stderr:?}");
}

#[test]
fn ingest_rate_is_a_schedule() {
    let (master, slave) = cluster(Duration::from_millis(20));
    let token = TokenFile::new("ingest-rate", TOKEN);
    let (target, follow) = (master.target(), slave.target());
    let start = Instant::now();
    // 2000 rows/s in batches of 100: 20 batches/s, so 10 batches take 0.45 s.
    let out = bench(&[
        "--target",
        &target,
        "--scenario",
        "ingest",
        "--batch",
        "100",
        "--rate",
        "2000",
        "--requests",
        "10",
        "--concurrency",
        "2",
        "--token-file",
        token.path(),
        "--follow",
        &format!("{follow},{follow}/"),
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    println!("{stdout}");
    assert!(start.elapsed() >= Duration::from_millis(450));
    let elapsed: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("elapsed"))
        .and_then(|l| l.trim().strip_suffix(" s"))
        .and_then(|l| l.parse().ok())
        .expect("elapsed row");
    assert!((0.44..5.0).contains(&elapsed), "{elapsed}");
    assert!(stdout.contains("target 2000 rows/s (20.0 batches/s)"), "{stdout}");
    assert!(stdout.contains("10 (ok 10, errors 0)"), "{stdout}");
    assert_eq!(
        stdout.matches("10 of 10 (not replicated 0)").count(),
        2,
        "{stdout}"
    );
    assert_eq!(master.counts.rows.load(Ordering::SeqCst), 1000);
}

#[test]
fn ingest_reports_a_wrong_token() {
    let server = Server::start(true);
    let token = TokenFile::new("ingest-wrong", "not-the-token");
    let target = server.target();
    let args = [
        "--target",
        &target,
        "--scenario",
        "ingest",
        "--batch",
        "10",
        "--requests",
        "3",
    ];
    let out = bench(&[&args[..], &["--token-file", token.path(), "--json"]].concat());
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["errors"]["HTTP 401"], 3, "{v}");
    assert_eq!(v["rows_written"], 0);
    assert!(v["first_error"]
        .as_str()
        .expect("first_error")
        .contains("missing admin token"));
    assert!(text(&out.stderr).contains("first failed batch: HTTP 401"));
    assert_eq!(server.counts.ingest.load(Ordering::SeqCst), 3);
}

#[test]
fn ingest_needs_a_token_file() {
    let server = Server::start(true);
    let target = server.target();
    let base = ["--target", &target, "--scenario", "ingest", "--requests", "2"];
    let out = bench(&base);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--scenario ingest needs --token-file"),
        "{stderr}"
    );
    let missing = std::env::temp_dir().join("kamaitachi-bench-no-such-dir/admin.token");
    let missing = missing.to_str().expect("UTF-8");
    let out = bench(&[&base[..], &["--token-file", missing]].concat());
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read --token-file"), "{stderr}");
    let empty = TokenFile::new("ingest-empty", "  ");
    let out = bench(&[&base[..], &["--token-file", empty.path()]].concat());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
    assert_eq!(server.counts.ingest.load(Ordering::SeqCst), 0, "nothing written");
}

#[test]
fn ingest_flags_are_checked() {
    let token = TokenFile::new("ingest-flags", TOKEN);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!("http://127.0.0.1:{port}");
    let ingest = [
        "--target",
        &target,
        "--scenario",
        "ingest",
        "--token-file",
        token.path(),
    ];
    for (args, says) in [
        (&["--batch", "10"][..], "only applies to --scenario ingest"),
        (
            &["--follow", "http://127.0.0.1:1"],
            "only applies to --scenario ingest",
        ),
        (&[&ingest[..], &["--batch", "10001"]].concat(), "10001"),
        (
            &[&ingest[..], &["--batch", "500", "--subjects", "100"]].concat(),
            "distinct",
        ),
        (
            &[&ingest[..], &["--follow", "localhost:8081"]].concat(),
            "--follow",
        ),
        (&[&ingest[..], &["--requests", "1"]].concat(), "cannot reach"),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // An unreachable follower is refused before anything is written.
    let server = Server::start(true);
    let target = server.target();
    let follow = format!("http://127.0.0.1:{port}");
    let args = [
        "--target",
        &target,
        "--scenario",
        "ingest",
        "--token-file",
        token.path(),
    ];
    let out = bench(&[&args[..], &["--follow", &follow]].concat());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("cannot follow {follow}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(server.counts.ingest.load(Ordering::SeqCst), 0);
}
