//! Faults of issue 12 at the gateway, each against a real gateway process
//! (and a fake upstream written here where a misbehaving node is needed).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn static_gateway(port: u16, extra: &str) -> Gateway {
    let gw = Gateway::start(&format!(
        "[gateway]\nstatic_upstreams = 127.0.0.1:{port}=master\n{extra}"
    ));
    gw.wait_nodes(1);
    gw
}

/// Fault 7: `Content-Length: N, N` failed to parse in the 413 check (so the
/// check passed) while pingora framed the request by it. Any Content-Length
/// that is not one plain number is now refused with a 400 naming the
/// header, and nothing reaches a node.
#[test]
fn a_listed_content_length_is_refused_not_forwarded() {
    let rec = Recorder::start();
    let gw = static_gateway(rec.port, "[limits]\nmax_body_bytes = 1048576\n");
    let body = snapshot_body("33:000001");
    let n = body.len();
    let big = 2 << 20;
    for (path, value, body) in [
        ("snapshot", format!("{big}, {big}"), String::new()),
        ("snapshot", format!("{n}, {n}"), body.clone()),
        ("ingest", format!("{big},{big}"), String::new()),
        ("stats", format!("{n} , {n}"), body.clone()),
    ] {
        let raw = format!(
            "POST /data/kamaitachi/api/data/v1/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\nConnection: close\r\n\r\n{body}"
        );
        let out = parse_responses(&send_raw(gw.port, raw.as_bytes()).unwrap());
        let first = out.first().unwrap_or_else(|| panic!("{value}: no answer"));
        assert_eq!(
            first.status,
            400,
            "{path} Content-Length {value}: {}",
            first.text()
        );
        assert!(first.msg().contains("Content-Length"), "{}", first.text());
    }
    assert_eq!(
        rec.data_requests.load(Ordering::SeqCst),
        0,
        "{:?}",
        rec.seen.lock().unwrap()
    );
}

/// Fault 1 at the gateway: a client that writes its whole over-limit body
/// before reading got a reset instead of the 413. The gateway now reads and
/// discards the body (bounded) after answering, then closes.
#[test]
fn an_urllib_style_client_sees_the_gateways_413() {
    let rec = Recorder::start();
    let gw = static_gateway(rec.port, "[limits]\nmax_body_bytes = 1048576\n");
    for (path, size) in [
        ("/data/kamaitachi/api/data/v1/snapshot", 2 << 20),
        ("/data/kamaitachi/api/data/v1/ingest", 8 << 20),
    ] {
        let r = post_whole_then_read(gw.port, path, size).unwrap_or_else(|e| panic!("{path} {size}: {e}"));
        assert_eq!(r.status, 413, "{}", r.text());
    }
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 0);
}

/// The value of an unlabelled metric on a `/metrics` page.
fn metric(port: u16, name: &str) -> f64 {
    let page = request(port, "GET", "/metrics", b"", &[]).text();
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics of :{port}:\n{page}"))
}

const RECONNECTS: &str = "kamaitachi_etcd_reconnects_total";

/// Fault 4: a 2 s HTTP/2 keepalive ping against etcd's 5 s minimum made etcd
/// answer GOAWAY `too_many_pings`; every registry connection broke about
/// every 8 s on a healthy etcd. A master, a slave and a gateway now stay 30 s
/// on a healthy etcd with zero reconnects; the counter does count when etcd
/// goes away.
#[test]
fn thirty_seconds_on_a_healthy_etcd_without_a_reconnect() {
    let dir = temp_dir("gw-etcd-churn");
    let mut etcd = Etcd::start(&dir);
    let master = registered_node(&etcd, "master");
    let slave = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(2);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(2));
        for (what, port) in [
            ("gateway", gw.port),
            ("master", master.port),
            ("slave", slave.port),
        ] {
            assert_eq!(
                metric(port, RECONNECTS),
                0.0,
                "{what} reconnected to a healthy etcd after {:?}",
                started.elapsed()
            );
        }
    }
    for (what, log) in [
        ("gateway", gw.log_text()),
        ("master", master.log_text()),
        ("slave", slave.log_text()),
    ] {
        assert!(!log.contains("Failed to connect to etcd"), "{what}: {log}");
    }
    assert_eq!(gw.health()["healthy_nodes"], 2);
    // The counter is live: losing etcd shows in it.
    etcd.kill();
    assert!(
        eventually(Duration::from_secs(20), || metric(gw.port, RECONNECTS) > 0.0
            && metric(slave.port, RECONNECTS) > 0.0),
        "etcd gone, yet no reconnect counted"
    );
}

/// A fake node: answers `GET /health` with 200 and echoes every other
/// request's body as its answer; after each data answer it sends, 300 ms
/// later on the same connection, one more answer nobody asked for.
fn stray_answer_node() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    let answer = |body: &[u8]| {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(body);
                        out
                    };
                    if head.starts_with("get /health") {
                        let body = b"{\"status\":\"ok\"}";
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{}",
                            health_proof_headers(&head, port, "master"),
                            body.len(),
                            String::from_utf8_lossy(body)
                        );
                        if conn.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                        continue;
                    }
                    if conn.write_all(&answer(&body)).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    if conn.write_all(&answer(b"\"stray\"")).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Fault 5: a node that sent an extra answer after a normal one poisoned the
/// gateway's pooled connection: the next client got the stray bytes, every
/// later one the previous client's answer. A pooled connection is now
/// reused only when nothing is pending on it.
#[test]
fn a_pooled_connection_with_leftover_bytes_is_not_reused() {
    let port = stray_answer_node();
    let gw = static_gateway(port, "");
    // One client connection: its requests are served by one gateway thread,
    // so they share that thread's pool of node connections.
    let mut client = KeepAlive::connect(gw.port).unwrap();
    for i in 0..6 {
        let body = snapshot_body(&format!("33:{i:06}"));
        let r = client
            .post("/data/kamaitachi/api/data/v1/snapshot", &body)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), body, "request {i} got another request's answer");
        // The stray answer arrives on the pooled connection meanwhile.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends `first`, then one byte of `drip` every `every` until the gateway
/// closes the connection (or `give_up` passes); returns what it answered
/// and how long the connection stayed open.
fn slowloris(port: u16, first: &[u8], every: Duration, give_up: Duration) -> (Vec<u8>, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    let started = Instant::now();
    s.write_all(first).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        match s.read(&mut buf) {
            Ok(0) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if s.write_all(b"a").is_err() {
                    return (out, started.elapsed());
                }
            }
            Err(_) => return (out, started.elapsed()),
        }
    }
    (out, started.elapsed())
}

/// Fault 2: a partial request head of 16 KiB or more was handed to pingora,
/// where only a per-read timeout applies: one byte now and then held the
/// connection open indefinitely. Every head now has the whole-head deadline
/// (`request_timeout_secs`), with the read fast path on or off, and a head
/// still incomplete at 16 KiB is refused with 431.
#[test]
fn a_slow_head_is_cut_at_the_deadline_on_every_path() {
    let rec = Recorder::start();
    for fast in [true, false] {
        let gw = static_gateway(
            rec.port,
            &format!("read_fast_path = {fast}\n[limits]\nrequest_timeout_secs = 1\n"),
        );
        // Under 16 KiB, dripping: 408 at the deadline.
        let small = b"POST /data/kamaitachi/api/data/v1/ingest HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        let (out, open) = slowloris(
            gw.port,
            &small,
            Duration::from_millis(200),
            Duration::from_secs(8),
        );
        assert!(
            open < Duration::from_millis(2500),
            "fast {fast}: small head open {open:?}"
        );
        let r = parse_responses(&out);
        assert_eq!(
            r.first().map(|r| r.status),
            Some(408),
            "fast {fast}: {:?}",
            String::from_utf8_lossy(&out)
        );

        // 16 KiB and more, dripping: refused, and closed within the deadline.
        let mut big = small.clone();
        big.extend(std::iter::repeat_n(b'a', 17 * 1024));
        let (out, open) = slowloris(gw.port, &big, Duration::from_millis(200), Duration::from_secs(8));
        assert!(
            open < Duration::from_millis(2500),
            "fast {fast}: big head open {open:?}"
        );
        let r = parse_responses(&out);
        let status = r.first().map(|r| r.status);
        assert!(
            matches!(status, Some(408 | 431)),
            "fast {fast}: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 0);
}

/// Fault 2, second half: the gateway had no connection cap, so slow clients
/// could take every file descriptor. Beyond `[limits] max_connections` a
/// connection gets 503 and is closed; once some close, new ones are served.
#[test]
fn connections_beyond_the_cap_get_503() {
    let rec = Recorder::start();
    let gw = static_gateway(rec.port, "[limits]\nmax_connections = 4\n");
    let path = "/data/kamaitachi/api/data/v1/snapshot";
    let mut held: Vec<KeepAlive> = (0..4)
        .map(|i| {
            let mut c = KeepAlive::connect(gw.port).unwrap();
            let r = c.post(path, &snapshot_body("33:000001")).unwrap();
            assert_eq!(r.status, 200, "connection {i}: {}", r.text());
            c
        })
        .collect();
    let r = try_request(gw.port, "POST", path, snapshot_body("33:000001").as_bytes(), &[])
        .expect("an answer, not a reset");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.msg().contains("too many connections"), "{}", r.text());
    held.truncate(2);
    assert!(
        eventually(Duration::from_secs(5), || {
            try_request(gw.port, "POST", path, snapshot_body("33:000001").as_bytes(), &[])
                .is_ok_and(|r| r.status == 200)
        }),
        "no connection served after others closed"
    );
    for c in &mut held {
        assert_eq!(c.post(path, &snapshot_body("33:000002")).unwrap().status, 200);
    }
}

/// Fault 6: a request handed to pingora whose body arrives late, followed
/// in the same segment by a pipelined read, got a reset and no answer to
/// either (pingora: "Sent data after end of body"). Both are answered now,
/// in order, and the connection goes on serving.
#[test]
fn a_pipelined_read_after_a_late_body_is_answered_in_order() {
    use std::io::{Read, Write};
    let rec = Recorder::start();
    let gw = static_gateway(rec.port, "");
    let snapshot = snapshot_body("33:000001");
    let read = format!(
        "POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{snapshot}",
        snapshot.len()
    );
    for path in [
        "/data/kamaitachi/api/data/v1/stats",
        "/data/kamaitachi/api/data/v1/ingest",
    ] {
        let before = rec.data_requests.load(Ordering::SeqCst);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(format!("abcde{read}").as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while parse_responses(&out).len() < 2 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{path}: {e} after {:?}", String::from_utf8_lossy(&out)),
            }
        }
        let answers = parse_responses(&out);
        assert_eq!(answers.len(), 2, "{path}: {:?}", String::from_utf8_lossy(&out));
        assert!(
            answers.iter().all(|r| r.status == 200),
            "{path}: {:?}",
            String::from_utf8_lossy(&out)
        );
        // In order, each with its own body.
        let seen = rec.seen.lock().unwrap();
        let mine: Vec<_> = seen[before..].iter().collect();
        assert_eq!(mine.len(), 2, "{path}: {mine:?}");
        assert!(
            mine[0].0.contains(&path[5..]) && mine[0].1 == b"abcde",
            "{mine:?}"
        );
        assert!(
            mine[1].0.contains("/snapshot") && mine[1].1 == snapshot.as_bytes(),
            "{mine:?}"
        );
        drop(seen);
        // The connection still serves, on the read path.
        s.write_all(read.as_bytes()).unwrap();
        let mut out = Vec::new();
        while parse_responses(&out).is_empty() {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{path}, third request: {e}"),
            }
        }
        assert_eq!(parse_responses(&out)[0].status, 200);
    }
}
