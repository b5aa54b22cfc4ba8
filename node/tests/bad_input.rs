//! Bad input, at the API and on the wire: each gets the right status and a
//! message naming what was wrong, and none of it stops the node. The wire
//! cases are the may_minihttp traps of `shared/PITFALLS.md`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn node() -> Node {
    let mut opts = NodeOpts::new(sample_db());
    opts.extra = "[limits]\nrequest_timeout_secs = 1\n".into();
    start_node(&opts)
}

#[track_caller]
fn expect(node: &Node, path: &str, body: &str, status: u16, needle: &str) {
    let r = node.post(path, body);
    assert_eq!(r.status, status, "{body} -> {}", r.text());
    let j = r.json();
    assert_eq!(j["status_code"], status, "{}", r.text());
    let msg = j["status_msg"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "{body}: message {msg:?} lacks {needle:?}");
}

#[test]
fn bad_query_fields_are_named() {
    let n = node();
    let many: Vec<String> = (1..=1001).map(|i| format!("33:{i:06}")).collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (SNAPSHOT, "".into(), "empty body"),
        (SNAPSHOT, "not json".into(), "not valid JSON"),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001""#.into(),
            "not valid JSON",
        ),
        (SNAPSHOT, "[1,2,3]".into(), "JSON object"),
        (SNAPSHOT, r#"{"subjects":"33:000001"}"#.into(), "ids"),
        (SNAPSHOT, r#"{"ids":"","subjects":"33:000001"}"#.into(), "ids"),
        (SNAPSHOT, r#"{"ids":" , ","subjects":"33:000001"}"#.into(), "ids"),
        (SNAPSHOT, r#"{"ids":42,"subjects":"33:000001"}"#.into(), "ids"),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit,bogus","subjects":"33:000001"}"#.into(),
            "bogus",
        ),
        (SNAPSHOT, r#"{"ids":"net_profit"}"#.into(), "subjects"),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"abc"}"#.into(),
            "subjects",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","topic":"no_such_pool"}"#.into(),
            "topic",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","field":"no_such_indicator"}"#.into(),
            "field",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","field":"net_profit; DROP TABLE reports"}"#.into(),
            "field",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","order":"sideways"}"#.into(),
            "order",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","order":0.5}"#.into(),
            "order",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","limit":1001}"#.into(),
            "limit",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","limit":-1}"#.into(),
            "limit",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","offset":-5}"#.into(),
            "offset",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","limit":1.5}"#.into(),
            "limit",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","timestamp":"soon"}"#.into(),
            "timestamp",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","timestamp":-1}"#.into(),
            "timestamp",
        ),
        (
            SNAPSHOT,
            r#"{"ids":"net_profit","subjects":"33:000001","method":[1]}"#.into(),
            "method",
        ),
        (
            SNAPSHOT,
            format!(r#"{{"ids":"net_profit","subjects":"{}"}}"#, many.join(",")),
            "at most 1000",
        ),
        (
            PERIOD,
            r#"{"ids":"net_profit","subjects":"33:000001","from":200,"to":100}"#.into(),
            "from",
        ),
        (
            PERIOD,
            r#"{"ids":"net_profit","topic":"stock_a_listing_pool"}"#.into(),
            "subjects",
        ),
        (PERIOD, r#"{"ids":"nope","subjects":"33:000001"}"#.into(), "ids"),
        (
            PERIOD,
            r#"{"ids":"net_profit","subjects":"33:000001","from":"x"}"#.into(),
            "from",
        ),
    ];
    for (path, body, needle) in &cases {
        expect(&n, path, body, 400, needle);
    }
    // The injection attempt reached no SQL: the data is all still there.
    let r = n.post(
        SNAPSHOT,
        r#"{"ids":"net_profit","topic":"stock_a_listing_pool","limit":1000}"#,
    );
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(SUBJECTS));
}

#[test]
fn hostile_bodies_do_not_crash_the_node() {
    let mut n = node();
    // Non-UTF-8, deep nesting (arrays and objects), huge numbers, NUL bytes.
    let mut bodies: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, 0x80, b'{'],
        b"{\"ids\":\"net_\xff\xfeprofit\",\"subjects\":\"33:000001\"}".to_vec(),
        "[".repeat(200_000).into_bytes(),
        "{\"a\":".repeat(100_000).into_bytes(),
        format!(
            "{{\"ids\":\"net_profit\",\"subjects\":\"33:000001\",\"limit\":1{}}}",
            "0".repeat(5000)
        )
        .into_bytes(),
        b"{\"ids\":\"net_profit\\u0000\",\"subjects\":\"33:000001\"}".to_vec(),
    ];
    let mut nested = "[".repeat(127);
    nested.push_str(&"]".repeat(127));
    bodies.push(format!("{{\"ids\":\"net_profit\",\"subjects\":\"33:000001\",\"x\":{nested}}}").into_bytes());
    for (i, body) in bodies.iter().enumerate() {
        for path in [SNAPSHOT, PERIOD] {
            let r = request(n.port, "POST", path, body, &[]);
            assert!(
                r.status == 400 || (i == 6 && r.status == 200),
                "body {i} on {path}: {} {}",
                r.status,
                r.text()
            );
            assert!(n.is_running(), "node died on body {i}");
        }
    }
    assert_eq!(n.get("/health").status, 200);
}

#[test]
fn routes_methods_and_admin_token() {
    let n = node();
    let r = n.get("/nope");
    assert_eq!(r.status, 404);
    assert!(r.msg().contains("/nope"));
    let r = n.get(SNAPSHOT);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(n.post("/health", "").status, 405);
    // Trailing slash accepted.
    assert_eq!(
        n.post(
            &format!("{SNAPSHOT}/"),
            r#"{"ids":"net_profit","subjects":"33:000001"}"#
        )
        .status,
        200
    );

    let r = n.post(RESET, "");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        n.port,
        "POST",
        RESET,
        b"",
        &[("Authorization", "Bearer wrong-token-wrong-token")],
    );
    assert_eq!(r.status, 403);
    let auth = format!("Bearer {TOKEN}");
    let r = request(n.port, "POST", RESET, b"", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn bad_content_length_is_400_and_node_lives() {
    let mut n = node();
    for cl in ["abc", "-1", "99999999999999999999999", "1 2", "0x10"] {
        let raw = format!("POST {SNAPSHOT} HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n{{}}");
        let out = parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap());
        assert_eq!(out.len(), 1, "Content-Length {cl}");
        assert_eq!(out[0].status, 400, "Content-Length {cl}: {}", out[0].text());
        assert!(out[0].msg().contains("Content-Length"));
    }
    let raw = format!("POST {SNAPSHOT} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}} ");
    assert_eq!(
        parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap())[0].status,
        400
    );
    assert!(n.is_running());
}

#[test]
fn oversized_bodies_and_headers_are_refused() {
    let n = node();
    // Declared too large: refused before the body is read.
    let raw = format!("POST {SNAPSHOT} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 2 << 20);
    let out = parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap());
    assert_eq!(out[0].status, 413);
    assert!(out[0].msg().contains("limit"), "{}", out[0].text());
    // Actually sent: 1 MiB + 1.
    let body = vec![b' '; (1 << 20) + 1];
    assert_eq!(request(n.port, "POST", SNAPSHOT, &body, &[]).status, 413);
    // Exactly 1 MiB is allowed through to JSON parsing.
    let mut body = br#"{"ids":"net_profit","subjects":"33:000001"}"#.to_vec();
    body.resize(1 << 20, b' ');
    assert_eq!(request(n.port, "POST", SNAPSHOT, &body, &[]).status, 200);

    // 65 headers (one over the limit), and one 100 KB header.
    let mut raw = String::from("GET /health HTTP/1.1\r\n");
    for i in 0..65 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert_eq!(
        parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap())[0].status,
        431
    );
    let raw = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    assert_eq!(
        parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap())[0].status,
        431
    );
    // 20 headers are fine (may_minihttp closed the connection at 17).
    let mut raw = String::from("GET /health HTTP/1.1\r\n");
    for i in 0..20 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    assert_eq!(
        parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap())[0].status,
        200
    );
}

#[test]
fn no_request_smuggling() {
    let n = node();
    // A body the route does not use is consumed, not parsed as a request.
    let inner = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = format!(
        "GET /health HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        inner.len()
    );
    let out = parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap());
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out.iter().all(|r| r.text().contains("\"mode\"")),
        "a smuggled /metrics was served"
    );

    // Chunked bodies are refused and the connection closed: the chunk bytes
    // never become a request.
    let raw = format!(
        "POST {SNAPSHOT} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let out = parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].status, 501);
    assert!(out[0].msg().contains("Transfer-Encoding"));
}

#[test]
fn connection_semantics() {
    let n = node();
    // Pipelined requests are answered in order.
    let body = r#"{"ids":"net_profit","subjects":"33:000001"}"#;
    let raw = format!(
        "GET /health HTTP/1.1\r\n\r\nPOST {SNAPSHOT} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let out = parse_responses(&send_raw(n.port, raw.as_bytes()).unwrap());
    assert_eq!(
        out.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200, 404]
    );

    // Connection: close and HTTP/1.0 close the connection right away.
    for raw in [
        "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /health HTTP/1.0\r\n\r\n",
    ] {
        let started = Instant::now();
        let out = send_raw(n.port, raw.as_bytes()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "connection left open: {raw:?}"
        );
        assert_eq!(parse_responses(&out)[0].status, 200);
    }

    // HEAD: headers, no body.
    let out = send_raw(n.port, b"HEAD /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD carried a body: {text}");

    // Expect: 100-continue is answered before the body is sent.
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let head = format!(
        "POST {SNAPSHOT} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(parse_responses(&rest)[0].status, 200);

    // Garbage is a 400, not a hang or a crash.
    let out = parse_responses(&send_raw(n.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap());
    assert_eq!(out[0].status, 400);
}

#[test]
fn half_sent_request_times_out_with_408() {
    let n = node();
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("POST {SNAPSHOT} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{\"ids\"").as_bytes())
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "held for {waited:?}");
    let r = parse_responses(&out);
    assert_eq!(
        r.first().map(|r| r.status),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(node: &Node, name: &str) -> f64 {
    let page = node.get("/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{page}"))
}

/// Fault: a job that panicked on a SQLite reader or the writer killed its
/// thread for good; every later read or write failed ("worker threads are
/// gone"). Now the request that hit it gets a 500, the panic is counted in
/// `/metrics`, and the thread is replaced: later requests succeed.
#[test]
fn a_panicking_worker_is_replaced_and_its_request_gets_500() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the panic hook exists in debug builds only");
        return;
    }
    let subjects = kamaitachi_testkit::subjects(sample_db());
    let doomed = subjects[0].clone();
    let mut opts = NodeOpts::new(sample_db());
    // One reader thread, so a dead one would fail every later read.
    opts.extra = "[database]\nreaders = 1\n".into();
    opts.env = vec![("KAMAITACHI_DEBUG_PANIC_SUBJECT".into(), doomed.clone())];
    let n = start_node(&opts);
    let snap = |s: &str| n.post(SNAPSHOT, &format!(r#"{{"ids":"net_profit","subjects":"{s}"}}"#));
    for round in 0..3 {
        let r = snap(&doomed);
        assert_eq!(r.status, 500, "round {round}: {}", r.text());
        assert!(r.msg().contains("panicked"), "{}", r.msg());
        // Every reader still works (more requests than reader threads).
        for s in &subjects[1 + round * 8..1 + (round + 1) * 8] {
            let r = snap(s);
            assert_eq!(r.status, 200, "{s} after a panic: {}", r.text());
        }
    }
    assert_eq!(metric(&n, "kamaitachi_node_worker_panics_total"), 3.0);

    // The single writer: a panicking write rolls back and gets 500; the next
    // writes are served by its replacement.
    let ingest = |s: &str, v: f64| {
        let body = format!(
            r#"{{"records":[{{"subject":"{s}","report_date":1743379200,"end_date":"2025-03-31","year":"2025","period":"Q1","declare_date":"2025-04-25","values":{{"net_profit":{v}}}}}]}}"#
        );
        request(
            n.port,
            "POST",
            "/kamaitachi/api/data/v1/ingest",
            body.as_bytes(),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        )
    };
    let r = ingest(&doomed, 1.0);
    assert_eq!(r.status, 500, "{}", r.text());
    for (i, s) in subjects[30..33].iter().enumerate() {
        let r = ingest(s, 2.0 + i as f64);
        assert_eq!(r.status, 200, "write after a writer panic: {}", r.text());
    }
    assert_eq!(metric(&n, "kamaitachi_node_worker_panics_total"), 4.0);
    let r = snap(&subjects[31]);
    assert_eq!(r.json()["data"][0]["data"]["net_profit"], 3.0, "{}", r.text());
    assert!(n.log_text().contains("replacing the thread"), "{}", n.log_text());
}

/// Fault: `replication/changes?from=18446744073709551615` overflowed
/// (`from + 1`: a panic in debug, 0 in release) and `from >= 2^63` became a
/// negative SQL integer. Every numeric query parameter is range-checked:
/// 400 naming the parameter.
#[test]
fn numeric_query_parameters_are_range_checked() {
    let n = node();
    let get = |query: &str| {
        let target = format!("/kamaitachi/api/data/v1/replication/changes?{query}");
        let signed = kamaitachi_testkit::replication_headers(n.port, &target);
        let headers: Vec<(&str, &str)> = signed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(n.port, "GET", &target, b"", &headers)
    };
    let cases = [
        ("from=18446744073709551615", "from"),
        ("from=18446744073709551616", "from"),
        ("from=9223372036854775808", "from"),
        ("from=9223372036854775807", "from"),
        ("from=-1", "from"),
        ("from=1e3", "from"),
        ("from=", "from"),
        ("wait_ms=5", "from"),
        ("from=0&wait_ms=18446744073709551615", "wait_ms"),
        ("from=0&wait_ms=10001", "wait_ms"),
        ("from=0&wait_ms=-5", "wait_ms"),
        ("from=0&dataset=18446744073709551616", "dataset"),
        ("from=0&dataset=x", "dataset"),
        ("from=0&term=x", "term"),
        ("from=0&term=-1", "term"),
        ("from=0&term=9007199254740992", "term"),
        ("from=0&term=18446744073709551616", "term"),
        ("from=0&known=1", "known"),
        ("from=0&known=x.1", "known"),
        ("from=0&known=1.-1", "known"),
        ("from=0&known=9007199254740992.1", "known"),
        ("from=0&acked=x", "acked"),
        ("from=0&acked=-1", "acked"),
        ("from=0&acked=9223372036854775807", "acked"),
        ("from=0&acked=", "acked"),
    ];
    for (query, field) in cases {
        let r = get(query);
        assert_eq!(r.status, 400, "{query} -> {}", r.text());
        assert_eq!(r.json()["status_code"], 400, "{query}");
        assert!(r.msg().starts_with(&format!("{field}:")), "{query}: {}", r.msg());
    }
    // The edges that are allowed.
    let v = n.get("/health").json()["data_version"].as_u64().unwrap_or(0);
    for query in [
        format!("from={v}"),
        format!("from={v}&wait_ms=1"),
        format!("from={v}&term=9007199254740991"),
        format!("from={v}&known=0.0"),
        format!("from={v}&wait_ms=1&acked=9223372036854775806"),
    ] {
        let r = get(&query);
        assert_eq!(r.status, 200, "{query} -> {}", r.text());
        // The answer carries the node's acknowledged horizon (a master
        // without an election: its data version).
        assert_eq!(r.json()["data"]["acked"], v, "{query} -> {}", r.text());
    }
    // The largest `from` parses, but a follower ahead of this node holds a
    // history this node never made (issue 14): 410, copy the image — not a
    // wait and a skip.
    for query in ["from=9223372036854775806".to_string(), format!("from={}", v + 1)] {
        let r = get(&query);
        assert_eq!(r.status, 410, "{query} -> {}", r.text());
        assert!(r.msg().contains("the follower is ahead"), "{query}: {}", r.msg());
    }
    assert_eq!(n.get("/health").status, 200);
}

/// Fault: a 2 MiB POST from a client that writes its whole body before
/// reading (Python's urllib) got `Connection reset` instead of the 413: the
/// node answered and closed with unread bytes. The node now lingers (reads
/// and discards, bounded) before closing, so the client reads the 413.
#[test]
fn an_urllib_style_client_sees_the_413() {
    let n = node();
    for size in [2 << 20, 8 << 20] {
        let r = post_whole_then_read(n.port, SNAPSHOT, size).unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(r.msg().contains("limit"), "{}", r.text());
    }
    assert_eq!(n.get("/health").status, 200);
}
