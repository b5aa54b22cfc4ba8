//! The cache's byte bound, and cache dumps: written at a graceful stop,
//! loaded warm at start, and ignored — with a log line, never a crash or a
//! wrong answer — when truncated, corrupted or stale.

mod common;

use std::path::Path;

use common::*;

fn snapshot_body(subject: &str) -> String {
    format!(r#"{{"ids":"operating_income,net_profit","subjects":"{subject}"}}"#)
}

fn all_subjects(db: &Path) -> Vec<String> {
    kamaitachi_testkit::subjects(db)
}

#[test]
fn bytes_never_exceed_max_bytes_while_touching_every_subject() {
    let max = 400_000u64;
    let mut opts = NodeOpts::new(sample_db());
    opts.max_bytes = max;
    let node = start_node(&opts);
    let reference = start_node(&NodeOpts {
        max_bytes: 0,
        ..NodeOpts::new(sample_db())
    });
    for (i, s) in all_subjects(sample_db()).iter().enumerate() {
        let body = snapshot_body(s);
        let got = node.post(SNAPSHOT, &body);
        assert_eq!(got.status, 200);
        if i % 10 == 0 {
            // Evicting never changes an answer.
            assert_eq!(got.json(), reference.post(SNAPSHOT, &body).json(), "{s}");
        }
        let period = format!(r#"{{"ids":"net_profit","subjects":"{s}","from":0,"to":2000000000}}"#);
        assert_eq!(node.post(PERIOD, &period).status, 200);
        if i % 25 == 0 {
            let c = &node.stats()["cache"];
            assert!(c["bytes"].as_u64().unwrap() <= max, "{c}");
        }
    }
    let c = node.stats()["cache"].clone();
    assert!(c["bytes"].as_u64().unwrap() <= max, "{c}");
    assert!(c["bytes"].as_u64().unwrap() > max / 2, "cache barely used: {c}");
    assert!(c["evictions"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["max_bytes"].as_u64(), Some(max));
}

/// Starts a node with a dump path, warms `subjects`, stops it gracefully.
fn warm_and_stop(db: &Path, dump: &Path, subjects: &[String]) -> Vec<serde_json::Value> {
    let mut opts = NodeOpts::new(db);
    opts.dump = Some(dump.to_path_buf());
    let mut node = start_node(&opts);
    let answers = subjects
        .iter()
        .map(|s| node.post(SNAPSHOT, &snapshot_body(s)).json())
        .collect();
    assert!(node.stop().success());
    assert!(dump.exists(), "no dump written at stop: {}", node.log_text());
    assert!(node.log_text().contains("cache dump"), "{}", node.log_text());
    answers
}

fn restart(db: &Path, dump: &Path) -> Node {
    let mut opts = NodeOpts::new(db);
    opts.dump = Some(dump.to_path_buf());
    start_node(&opts)
}

#[test]
fn dump_at_stop_gives_a_warm_restart() {
    let dir = temp_dir("dump-warm");
    let dump = dir.join("cache.dat");
    let subjects: Vec<String> = all_subjects(sample_db()).into_iter().take(50).collect();
    let before = warm_and_stop(sample_db(), &dump, &subjects);

    let node = restart(sample_db(), &dump);
    assert!(
        node.log_text().contains("loaded 50 series"),
        "{}",
        node.log_text()
    );
    for (s, want) in subjects.iter().zip(&before) {
        assert_eq!(&node.post(SNAPSHOT, &snapshot_body(s)).json(), want);
    }
    let c = node.stats()["cache"].clone();
    assert_eq!(c["misses"], 0, "warm restart still read SQLite: {c}");
    assert_eq!(c["hits"].as_u64(), Some(50));
}

#[test]
fn damaged_or_stale_dumps_are_ignored() {
    let dir = temp_dir("dump-bad");
    // A private copy of the database, so its data version can be changed.
    let db = dir.join("data.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let dump = dir.join("cache.dat");
    let subjects: Vec<String> = all_subjects(&db).into_iter().take(20).collect();
    let before = warm_and_stop(&db, &dump, &subjects);
    let good = std::fs::read(&dump).unwrap();

    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage, &str); 3] = [
        ("truncated", |b| b.truncate(b.len() / 2), "truncated"),
        (
            "flipped byte",
            |b| {
                let i = b.len() - 7;
                b[i] ^= 0x01
            },
            "checksum",
        ),
        ("garbage", |b| b.iter_mut().for_each(|x| *x = 0x5a), "magic"),
    ];
    for (name, damage, needle) in cases {
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(&dump, &bytes).unwrap();
        let node = restart(&db, &dump);
        let log = node.log_text();
        assert!(log.contains("ignored") && log.contains(needle), "{name}: {log}");
        for (s, want) in subjects.iter().zip(&before) {
            assert_eq!(&node.post(SNAPSHOT, &snapshot_body(s)).json(), want, "{name}");
        }
        let c = node.stats()["cache"].clone();
        assert!(
            c["misses"].as_u64().unwrap() > 0,
            "{name}: served from a damaged dump: {c}"
        );
    }

    // Stale: the database moved on after the dump was taken.
    std::fs::write(&dump, &good).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'data_version'", [])
        .unwrap();
    drop(conn);
    let node = restart(&db, &dump);
    let log = node.log_text();
    assert!(log.contains("ignored") && log.contains("version 1"), "{log}");
    assert_eq!(node.stats()["cache"]["entries"], 0);
}

/// How one request of the stream in `sigterm_drains_requests_in_progress`
/// ended.
#[derive(Debug)]
enum Outcome {
    Ok,
    Refused,
    Cut(String),
}

/// One request on a new connection, with `Connection: close`.
fn one_request(port: u16, body: &str) -> Outcome {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Cut(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(20)));
    let raw = format!(
        "POST {SNAPSHOT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(raw.as_bytes()) {
        return Outcome::Cut(format!("write: {e}"));
    }
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        return Outcome::Cut(format!("read after {} bytes: {e}", out.len()));
    }
    let Some(r) = parse_responses(&out).into_iter().next() else {
        return Outcome::Cut(format!("no answer ({} bytes)", out.len()));
    };
    let whole = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n == r.body.len());
    if r.status == 200 && whole && serde_json::from_slice::<serde_json::Value>(&r.body).is_ok() {
        Outcome::Ok
    } else {
        Outcome::Cut(format!("status {}, {} body bytes", r.status, r.body.len()))
    }
}

/// Fault 9: the node's stop was `process::exit` from the signal thread, so
/// requests in progress were cut. Under a steady stream of requests straight
/// to a node, SIGTERM now lets every request either complete with 200 or be
/// refused before it was read (connection refused); none is cut. The node
/// exits 0 with its cache dump written.
#[test]
fn sigterm_drains_requests_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = temp_dir("drain");
    let dump = dir.join("cache.dump");
    let mut opts = NodeOpts::new(sample_db());
    opts.dump = Some(dump.clone());
    let mut node = start_node(&opts);
    let port = node.port;
    // Whole-pool questions (hundreds of subjects, sorted) keep each request
    // in progress for a while.
    let bodies: Vec<String> = [
        "operating_income",
        "net_profit",
        "total_profit",
        "operating_profit",
    ]
    .iter()
    .enumerate()
    .map(|(i, id)| {
        format!(
            r#"{{"ids":"{id}","topic":"stock_a_listing_pool","limit":1000,"order":{}}}"#,
            if i % 2 == 0 { 1 } else { -1 }
        )
    })
    .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let body = bodies[c % bodies.len()].clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused, mut cut) = (0usize, 0usize, Vec::new());
                let mut n = 0usize;
                while !stop.load(Ordering::Acquire) {
                    // Vary the question so the response cache does not
                    // answer everything.
                    let body = body.replace("\"limit\":1000", &format!("\"limit\":{}", 900 + n % 100));
                    n += 1;
                    match one_request(port, &body) {
                        Outcome::Ok => ok += 1,
                        Outcome::Refused => {
                            refused += 1;
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        Outcome::Cut(why) => cut.push(why),
                    }
                }
                (ok, refused, cut)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = node.stop();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let (mut ok, mut refused, mut cut) = (0, 0, Vec::new());
    for c in clients {
        let (o, r, k) = c.join().unwrap();
        ok += o;
        refused += r;
        cut.extend(k);
    }
    let log = node.log_text();
    assert!(
        cut.is_empty(),
        "{} requests cut ({ok} ok, {refused} refused): {cut:?}\n{log}",
        cut.len()
    );
    assert!(ok > 20, "too few requests completed: {ok}");
    assert!(refused > 0, "the node never refused a connection");
    assert!(status.success(), "{status}: {log}");
    assert!(dump.exists(), "no cache dump at stop: {log}");
    assert!(log.contains("requests in progress finished"), "{log}");
}
