//! The gateway as a real process: in front of a recording upstream (what
//! exactly is forwarded), and in front of real nodes found through a real
//! etcd (routing, joins, failover, etcd loss).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn static_gateway(rec: &Recorder, extra: &str) -> Gateway {
    let gw = Gateway::start(&format!(
        "[gateway]\nstatic_upstreams = 127.0.0.1:{}=master\n{extra}",
        rec.port
    ));
    gw.wait_nodes(1);
    gw
}

#[test]
fn strips_the_prefix_keeps_the_query_and_replays_the_body() {
    let rec = Recorder::start();
    let gw = static_gateway(&rec, "");
    let body = snapshot_body("33:000001");
    let r = gw.post("/data/kamaitachi/api/data/v1/snapshot?x=1&y=%2Fdata", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(gw.port, "GET", "/data/anything/else?q=1", b"", &[]);
    assert_eq!(r.status, 200);
    // A body larger than the early-read window is streamed through whole.
    let big = format!(
        r#"{{"ids":"net_profit","subjects":"33:000001","pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(gw.post("/data/kamaitachi/api/data/v1/period", &big).status, 200);

    // A client that waits for `100 Continue` gets it, and its body goes on.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let head = format!(
        "POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut s, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    std::io::Write::write_all(&mut s, body.as_bytes()).unwrap();
    let mut reply = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(&reply, b"HTTP/1.1 200");

    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        !seen[3].0.to_ascii_lowercase().contains("expect:"),
        "Expect forwarded upstream: {}",
        seen[3].0
    );
    assert!(
        seen[0]
            .0
            .starts_with("POST /kamaitachi/api/data/v1/snapshot?x=1&y=%2Fdata HTTP/1.1"),
        "{}",
        seen[0].0
    );
    assert_eq!(
        seen[0].1,
        body.as_bytes(),
        "the body read for routing was not forwarded upstream"
    );
    // The `Expect` read went through pingora's proxy, which read the body
    // for its key and replayed it from the retry buffer.
    assert_eq!(
        seen[3].1,
        body.as_bytes(),
        "pingora did not replay the body read for routing"
    );
    assert!(
        seen[1].0.starts_with("GET /anything/else?q=1 HTTP/1.1"),
        "{}",
        seen[1].0
    );
    assert!(seen[2]
        .0
        .starts_with("POST /kamaitachi/api/data/v1/period HTTP/1.1"));
    assert_eq!(seen[2].1.len(), big.len());
}

/// The read path (`read_path/`) and pingora's proxy share each client
/// connection: pipelined requests of both kinds on one connection are
/// answered in order, a request that arrives a byte at a time is read
/// whole, stale pooled upstream connections cost the client nothing and no
/// request is sent twice, `Connection: close` is honoured, and the reads are
/// counted in `/metrics`.
#[test]
fn reads_and_other_requests_share_a_connection() {
    let rec = Recorder::closing_after(2);
    let gw = static_gateway(&rec, "");
    let read = |subject: &str, extra: &str| {
        let body = snapshot_body(subject);
        format!(
            "POST /data/kamaitachi/api/data/v1/snapshot?s={subject} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let pipelined = [
        read("1:a", ""),
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        read("1:b", "Connection: keep-alive\r\n"),
        "GET /data/anything/else?q=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        read("1:c", "Connection: close\r\n"),
    ]
    .concat();
    let out = parse_responses(&send_raw(gw.port, pipelined.as_bytes()).unwrap());
    let statuses: Vec<u16> = out.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200; 5], "{out:?}");
    assert!(out[1].json()["nodes"].is_array(), "{}", out[1].text());
    let close = out[4]
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("connection"));
    assert_eq!(
        close.map(|(_, v)| v.as_str()),
        Some("close"),
        "{:?}",
        out[4].headers
    );
    let seen: Vec<String> = rec.seen.lock().unwrap().iter().map(|(h, _)| h.clone()).collect();
    let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap_or("")).collect();
    assert_eq!(
        lines,
        [
            "POST /kamaitachi/api/data/v1/snapshot?s=1:a HTTP/1.1",
            "POST /kamaitachi/api/data/v1/snapshot?s=1:b HTTP/1.1",
            "GET /anything/else?q=1 HTTP/1.1",
            "POST /kamaitachi/api/data/v1/snapshot?s=1:c HTTP/1.1",
        ]
    );
    assert!(
        !seen[1].to_ascii_lowercase().contains("connection:")
            && !seen[3].to_ascii_lowercase().contains("connection:"),
        "hop-by-hop header forwarded: {seen:?}"
    );

    // One keep-alive client, 30 reads, the upstream dropping its side of
    // every second connection: each read answered, each sent upstream once.
    let before = rec.data_requests.load(Ordering::SeqCst);
    keepalive_reads(gw.port, "period", 2, 30);
    assert_eq!(rec.data_requests.load(Ordering::SeqCst) - before, 30);

    // A request sent a byte at a time.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for b in read("3:slow", "Connection: close\r\n").as_bytes() {
        std::io::Write::write_all(&mut s, &[*b]).unwrap();
    }
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut reply).unwrap();
    assert_eq!(parse_responses(&reply)[0].status, 200);

    let metrics = request(gw.port, "GET", "/metrics", b"", &[]).text();
    let count = |route: &str| -> f64 {
        let key = format!("kamaitachi_gateway_requests_total{{route=\"{route}\",status=\"200\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("snapshot"), 4.0, "{metrics}");
    assert_eq!(count("period"), 30.0, "{metrics}");
}

/// A node that closes a pooled keep-alive connection just as the gateway
/// reuses it costs the client nothing, on pingora's path and on the read
/// path, even when it is the only node: the request goes to it again on
/// another connection (once it went to "the next node", and with none left
/// the client got a 503).
#[test]
fn a_pooled_connection_closed_under_a_request_costs_the_client_nothing() {
    let rec = Recorder::dropping_reused();
    let gw = static_gateway(&rec, "");
    for i in 0..4 {
        let r = request(gw.port, "GET", &format!("/data/anything/else?i={i}"), b"", &[]);
        assert_eq!(r.status, 200, "pingora's path, request {i}: {}", r.text());
    }
    // The node did drop requests sent on reused connections.
    let sent = rec.data_requests.load(Ordering::SeqCst);
    assert!(sent > 4, "no pooled connection was reused ({sent} sent)");
    for i in 0..4 {
        let subject = format!("1:{i}");
        let r = gw.post("/data/kamaitachi/api/data/v1/snapshot", &snapshot_body(&subject));
        assert_eq!(r.status, 200, "read path, read {i}: {}", r.text());
    }
    assert_eq!(
        gw.health()["healthy_nodes"],
        1,
        "the node was ejected: {}",
        gw.health()
    );
}

/// A node that accepts a read and never answers: after `read_timeout_ms`
/// the read moves on to the next node of the ring, and the silent node is
/// ejected. No client sees an error, none waits much past the timeout. On
/// both paths: the read path, and pingora's proxy.
#[test]
fn a_hanging_node_times_out_and_the_read_moves_on() {
    for fast in [true, false] {
        hanging_node_case(fast);
    }
}

fn hanging_node_case(read_fast_path: bool) {
    let hung = Recorder::hanging();
    let rec = Recorder::start();
    let gw = Gateway::start(&format!(
        "[gateway]\nstatic_upstreams = 127.0.0.1:{}=master,127.0.0.1:{}=slave\nread_timeout_ms = 300\nread_fast_path = {read_fast_path}\n",
        rec.port, hung.port
    ));
    gw.wait_nodes(2);
    let slowest = keepalive_reads(gw.port, "snapshot", 5, 40);
    assert!(
        slowest < Duration::from_secs(2),
        "fast path {read_fast_path}: a read took {slowest:?}"
    );
    let timed_out = hung.data_requests.load(Ordering::SeqCst);
    assert!(
        timed_out >= 1,
        "no key hashed to the silent node: the test proves nothing"
    );
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 40);
    let metrics = request(gw.port, "GET", "/metrics", b"", &[]).text();
    let retries = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kamaitachi_gateway_retries_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(retries, Some(timed_out as f64), "{metrics}");
}

/// Answers larger than the read path holds before its first write (256 KiB)
/// are streamed through whole, and the connection stays usable.
#[test]
fn large_answers_are_streamed_whole() {
    let len = 1_500_000;
    let rec = Recorder::answering(len);
    let gw = static_gateway(&rec, "");
    let mut client = KeepAlive::connect(gw.port).unwrap();
    for n in 1..=3 {
        let r = client
            .post("/data/kamaitachi/api/data/v1/period", &snapshot_body("6:1"))
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), len, "answer {n} cut short");
        assert!(
            r.body == answer_of(n, len),
            "answer {n} differs from what the node sent"
        );
    }
}

/// A read that trickles in (slowloris) gets a 408 once
/// `request_timeout_secs` has passed since its first byte, however steadily
/// it trickles, whether in its head or its body.
#[test]
fn a_trickling_read_gets_408() {
    let rec = Recorder::start();
    let gw = static_gateway(&rec, "[limits]\nrequest_timeout_secs = 1\n");
    let body = snapshot_body("7:1");
    let head = format!(
        "POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (first, trickle) in [
        (head.clone(), "X-Slow: 1\r\n".to_string()),
        (format!("{head}\r\n"), "{".to_string()),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        std::io::Write::write_all(&mut s, first.as_bytes()).unwrap();
        let mut s2 = s.try_clone().unwrap();
        let dripper = std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(200));
                if std::io::Write::write_all(&mut s2, trickle.as_bytes()).is_err() {
                    break;
                }
            }
        });
        let mut reply = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut reply);
        let took = started.elapsed();
        dripper.join().unwrap();
        let out = parse_responses(&reply);
        assert_eq!(
            out.first().map(|r| r.status),
            Some(408),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert!(out[0].msg().contains("in time"), "{}", out[0].text());
        assert!(took < Duration::from_millis(2500), "took {took:?}");
    }
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 0);
}

/// With `read_fast_path = false` every request goes through pingora's proxy
/// (the escape hatch, and the peer in `make bench`).
#[test]
fn reads_work_with_the_read_path_off() {
    let rec = Recorder::start();
    let gw = static_gateway(&rec, "read_fast_path = false\n");
    keepalive_reads(gw.port, "snapshot", 4, 5);
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 5);
    assert!(gw.log_text().contains("read fast path off"), "{}", gw.log_text());
}

#[test]
fn bad_requests_are_answered_at_the_gateway() {
    let rec = Recorder::start();
    let gw = static_gateway(&rec, "[limits]\nmax_body_bytes = 1048576\n");
    let r = gw.post("/kamaitachi/api/data/v1/snapshot", "{}");
    assert_eq!(r.status, 404);
    assert!(r.msg().contains("/data"), "{}", r.text());
    assert_eq!(request(gw.port, "GET", "/database", b"", &[]).status, 404);

    let raw = format!(
        "POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 << 20
    );
    let out = parse_responses(&send_raw(gw.port, raw.as_bytes()).unwrap());
    assert_eq!(out[0].status, 413);
    assert!(out[0].msg().contains("limit"));

    let raw = "POST /data/kamaitachi/api/data/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    assert_eq!(
        parse_responses(&send_raw(gw.port, raw.as_bytes()).unwrap())[0].status,
        411
    );

    let r = request(gw.port, "POST", "/kamaitachi/api/data/v1/cache/reset", b"", &[]);
    assert_eq!(r.status, 401);
    let r = request(
        gw.port,
        "POST",
        "/kamaitachi/api/data/v1/cache/reset",
        b"",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        request(gw.port, "GET", "/kamaitachi/api/data/v1/cache/reset", b"", &[]).status,
        405
    );
    // None of these reached the upstream.
    assert_eq!(rec.data_requests.load(Ordering::SeqCst), 0);
}

#[test]
fn rate_limit_answers_429() {
    let rec = Recorder::start();
    let gw = static_gateway(&rec, "[limits]\nqps = 5\nburst = 5\n");
    let statuses: Vec<u16> = (0..30)
        .map(|_| {
            gw.post(
                "/data/kamaitachi/api/data/v1/snapshot",
                &snapshot_body("33:000001"),
            )
            .status
        })
        .collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 20, "{statuses:?}");
    assert!(
        statuses[..5].iter().all(|s| *s == 200),
        "burst not honoured: {statuses:?}"
    );
    let r = gw.post("/data/kamaitachi/api/data/v1/snapshot", "{}");
    assert_eq!(r.status, 429);
    assert!(r.msg().contains("rate limit"), "{}", r.text());
    // Health stays reachable for the checks.
    assert_eq!(request(gw.port, "GET", "/health", b"", &[]).status, 200);
}

#[test]
fn sigterm_stops_the_gateway_quickly() {
    let rec = Recorder::start();
    let mut gw = static_gateway(&rec, "");
    let took = gw.stop();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Requests answered by each node so far (hits + misses of its cache).
fn served(node: &Node) -> u64 {
    let c = &node.stats()["cache"];
    c["hits"].as_u64().unwrap_or(0) + c["misses"].as_u64().unwrap_or(0)
}

#[test]
fn routes_by_subject_follows_etcd_and_fails_over() {
    let dir = temp_dir("gw-cluster");
    let mut etcd = Etcd::start(&dir);
    let master = registered_node(&etcd, "master");
    let slave1 = registered_node(&etcd, "slave");
    let mut slave2 = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(3);
    let nodes = gw.health()["nodes"].as_array().unwrap().clone();
    assert!(nodes.iter().any(|n| n["role"] == "master"));

    // One subject, one node.
    let before: Vec<u64> = [&master, &slave1, &slave2].iter().map(|n| served(n)).collect();
    for _ in 0..12 {
        let r = gw.post(
            "/data/kamaitachi/api/data/v1/snapshot",
            &snapshot_body(&subject(5)),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after: Vec<u64> = [&master, &slave1, &slave2].iter().map(|n| served(n)).collect();
    let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        deltas.iter().filter(|d| **d == 12).count(),
        1,
        "one subject spread over nodes: {deltas:?}"
    );
    assert_eq!(deltas.iter().sum::<u64>(), 12);

    // Malformed JSON is forwarded and answered by a node.
    let r = gw.post("/data/kamaitachi/api/data/v1/snapshot", "{not json");
    assert_eq!(r.status, 400);
    assert!(r.msg().contains("JSON"), "{}", r.text());

    // A new node joins through etcd, no restart, and takes a share of keys.
    let joined = registered_node(&etcd, "slave");
    gw.wait_nodes(4);
    let before = served(&joined);
    for n in 0..200 {
        assert_eq!(
            gw.post(
                "/data/kamaitachi/api/data/v1/snapshot",
                &snapshot_body(&subject(n))
            )
            .status,
            200
        );
    }
    assert!(served(&joined) > before, "the joined node got no keys");

    // Failover: kill a node during a bounded load; no client sees a failure.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let port = gw.port;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                let mut conn = KeepAlive::connect(port).expect("connect");
                let started = Instant::now();
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    let body = snapshot_body(&subject((i * 7 + w * 13) % 200));
                    let ok = match conn.post("/data/kamaitachi/api/data/v1/snapshot", &body) {
                        Ok(r) => r.status == 200,
                        Err(_) => {
                            conn = KeepAlive::connect(port).expect("reconnect");
                            false
                        }
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    slave2.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = done.load(Ordering::Relaxed);
    assert!(total > 200, "load too small to mean anything: {total}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "{} of {total} requests failed during failover",
        failures.load(Ordering::Relaxed)
    );

    // The dead node was really tried and its requests retried elsewhere.
    let metrics = request(gw.port, "GET", "/metrics", b"", &[]).text();
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kamaitachi_gateway_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(retries > 0.0, "no retry happened; the kill did not hit the load");
    eprintln!("failover: {total} requests, {retries} retried, 0 failed");

    // The killed node leaves the ring (lease expiry or health check).
    gw.wait_nodes(3);

    // etcd dies: the gateway keeps serving on its last-known set.
    etcd.kill();
    for n in 0..50 {
        let r = gw.post(
            "/data/kamaitachi/api/data/v1/snapshot",
            &snapshot_body(&subject(n)),
        );
        assert_eq!(r.status, 200, "with etcd down: {}", r.text());
    }
    // Cluster stats through the gateway add up the nodes.
    let stats = request(gw.port, "GET", "/kamaitachi/api/data/v1/stats", b"", &[]).json();
    assert_eq!(stats["data"]["totals"]["nodes_answering"], 3, "{stats}");
    assert!(stats["data"]["totals"]["hit_rate"].as_f64().unwrap() > 0.0);
    let r = admin_post(gw.port, "/kamaitachi/api/data/v1/cache/reset");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served(&master), 0);
    drop(slave1);
}

#[test]
fn writes_go_to_the_master_and_no_master_is_a_clear_503() {
    let dir = temp_dir("gw-master");
    let etcd = Etcd::start(&dir);
    let master = registered_node(&etcd, "master");
    let _slave = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(2);
    // The proxied admin call reaches the master only (it resets its counters).
    for n in 0..20 {
        gw.post(
            "/data/kamaitachi/api/data/v1/snapshot",
            &snapshot_body(&subject(n)),
        );
    }
    let r = admin_post(gw.port, "/data/kamaitachi/api/data/v1/cache/reset");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served(&master), 0);
    drop(master);
    gw.wait_nodes(1);
    let r = admin_post(gw.port, "/data/kamaitachi/api/data/v1/cache/reset");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.msg().contains("master"), "{}", r.text());
}
