//! The cold path, against real node processes: concurrent misses of one
//! subject share one load from SQLite (`kamaitachi_store_loads_total`), a
//! cold topic question loads each subject once and answers like a node with
//! the cache off, `[cache] preload = all` fills the cache in the
//! background within `max_bytes` (at start and after a full sync), with its
//! progress in `/health`, and a database from before `subject_blob` gets it
//! built when the node opens it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use kamaitachi_testkit::{eventually, KeepAlive};

/// `kamaitachi_store_loads_total` from the node's `/metrics`.
fn store_loads(node: &Node) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("kamaitachi_store_loads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kamaitachi_store_loads_total in /metrics:\n{text}"))
}

/// Reads one `Content-Length` response from `conn`.
fn read_one_response(conn: &mut TcpStream) -> Resp {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return parse_responses(&buf).into_iter().next().expect("a response");
            }
        }
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn health(node: &Node) -> serde_json::Value {
    node.get("/health").json()
}

#[test]
fn two_hundred_concurrent_misses_of_one_subject_load_it_once() {
    const N: usize = 200;
    let node = start_node(&NodeOpts::new(sample_db()));
    let subject = all_subjects()[7].clone();
    // Every request is cold and distinct (no response-cache hits): periods
    // starting at different times, snapshots as of different times.
    let bodies: Vec<(&str, String)> = (0..N)
        .map(|i| {
            if i % 2 == 0 {
                (
                    PERIOD,
                    format!(r#"{{"ids":"net_profit","subjects":"{subject}","from":{i},"to":2000000000}}"#),
                )
            } else {
                (
                    SNAPSHOT,
                    format!(
                        r#"{{"ids":"net_profit","subjects":"{subject}","timestamp":{}}}"#,
                        2_000_000_000 + i
                    ),
                )
            }
        })
        .collect();
    // A cold question over the Shenzhen pool (which does not hold the
    // subject) keeps the reader threads busy while the 200 arrive, as on a
    // node under load: the window in which they all miss is wide.
    let shenzhen = all_subjects().iter().filter(|s| s.starts_with("33:")).count() as u64;
    assert!(subject.starts_with("17:") && shenzhen > 100);
    let busy = r#"{"ids":"net_profit","topic":"stock_sz_pool","limit":1}"#;
    for round in 0..2 {
        let before = store_loads(&node);
        let barrier = Arc::new(Barrier::new(N + 1));
        let background = {
            let (barrier, port) = (barrier.clone(), node.port);
            std::thread::spawn(move || {
                let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let raw = format!(
                    "POST {SNAPSHOT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{busy}",
                    busy.len()
                );
                conn.write_all(raw.as_bytes()).expect("send");
                std::thread::sleep(Duration::from_millis(3));
                barrier.wait();
                read_one_response(&mut conn)
            })
        };
        let threads: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|(path, body)| {
                let barrier = barrier.clone();
                let port = node.port;
                std::thread::spawn(move || {
                    let mut conn = KeepAlive::connect(port).expect("connect");
                    barrier.wait();
                    let r = conn.post(path, &body).expect("answer");
                    (path, r.status, r.json()["data"][0].clone())
                })
            })
            .collect();
        let answers: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect();
        assert_eq!(background.join().expect("background thread").status, 200);
        for (path, status, data) in &answers {
            assert_eq!(*status, 200, "{path}: {data}");
            assert_eq!(data["subject"]["subject"], subject.as_str());
        }
        // All periods saw the same series, all snapshots the same report.
        let first = |p: &str| answers.iter().find(|a| a.0 == p).map(|a| a.2.clone());
        for (path, _, data) in &answers {
            assert_eq!(Some(data.clone()), first(path), "{path}");
        }
        assert!(!first(PERIOD).unwrap()["data"].as_array().unwrap().is_empty());
        assert_eq!(
            store_loads(&node) - before,
            1 + shenzhen,
            "round {round}: {N} concurrent cold requests for {subject} (and one over {shenzhen} others)"
        );
        // Round two: cold again.
        let reset = request(
            node.port,
            "POST",
            RESET,
            b"",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        );
        assert_eq!(reset.status, 200);
    }
}

fn all_subjects() -> Vec<String> {
    kamaitachi_testkit::subjects(sample_db())
}

#[test]
fn a_cold_topic_question_loads_each_subject_once_and_matches_the_cache_off_answer() {
    let node = start_node(&NodeOpts::new(sample_db()));
    let reference = start_node(&NodeOpts {
        max_bytes: 0,
        ..NodeOpts::new(sample_db())
    });
    let body = r#"{"ids":"operating_income,net_profit","topic":"stock_a_listing_pool","field":"net_profit","limit":100}"#;
    let before = store_loads(&node);
    let cold = node.post(SNAPSHOT, body);
    assert_eq!(cold.status, 200, "{}", cold.text());
    assert_eq!(store_loads(&node) - before, SUBJECTS as u64);
    assert_eq!(cold.json(), reference.post(SNAPSHOT, body).json());
    // Warm: another question over the pool reads nothing.
    let other =
        r#"{"ids":"net_profit","topic":"stock_a_listing_pool","field":"net_profit","order":1,"limit":50}"#;
    assert_eq!(
        node.post(SNAPSHOT, other).json(),
        reference.post(SNAPSHOT, other).json()
    );
    assert_eq!(store_loads(&node) - before, SUBJECTS as u64);
}

#[test]
fn preload_fills_the_cache_in_the_background_and_reports_progress() {
    let node = start_node(&NodeOpts {
        extra: "[cache]\npreload = all\n".into(),
        ..NodeOpts::new(sample_db())
    });
    assert!(
        eventually(Duration::from_secs(30), || health(&node)["preload"]["state"]
            == "done"),
        "{}",
        health(&node)
    );
    let h = health(&node);
    assert_eq!(h["preload"]["loaded"], SUBJECTS);
    assert_eq!(h["preload"]["total"], SUBJECTS);
    assert_eq!(store_loads(&node), SUBJECTS as u64);
    let c = node.stats()["cache"].clone();
    assert_eq!(c["entries"], SUBJECTS, "{c}");
    // Every subject is now a hit: no more loads, whatever is asked.
    for s in all_subjects().iter().step_by(37) {
        let r = node.post(
            PERIOD,
            &format!(r#"{{"ids":"net_profit","subjects":"{s}","from":0,"to":2000000000}}"#),
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(store_loads(&node), SUBJECTS as u64);
    assert!(
        node.log_text().contains("preload (at start): done"),
        "{}",
        node.log_text()
    );
}

#[test]
fn preload_stops_when_the_cache_is_full_and_never_exceeds_max_bytes() {
    let max = 600_000u64;
    let node = start_node(&NodeOpts {
        max_bytes: max,
        extra: "[cache]\npreload = all\n".into(),
        ..NodeOpts::new(sample_db())
    });
    assert!(
        eventually(Duration::from_secs(30), || health(&node)["preload"]["state"]
            == "full"),
        "{}",
        health(&node)
    );
    let c = node.stats()["cache"].clone();
    let bytes = c["bytes"].as_u64().unwrap();
    assert!(bytes <= max, "{c}");
    assert!(bytes > max / 2, "preload left the cache mostly empty: {c}");
    let loaded = health(&node)["preload"]["loaded"].as_u64().unwrap();
    assert!(loaded > 0 && loaded < SUBJECTS as u64, "{}", health(&node));
    // It stopped rather than churning: loads stay well under the subject count.
    assert!(store_loads(&node) < SUBJECTS as u64, "{}", store_loads(&node));
    assert!(node.log_text().contains("cache full"), "{}", node.log_text());
}

#[test]
fn preload_runs_again_after_a_full_sync() {
    let master = start_node(&NodeOpts::new(sample_db()));
    let slave_db = temp_dir("preload-slave").join("slave.db");
    let slave = start_node(&NodeOpts {
        mode: "slave",
        extra: format!(
            "[replication]\nmaster = localhost:{}\n[cache]\npreload = all\n",
            master.port
        ),
        ..NodeOpts::new(&slave_db)
    });
    // The empty slave copied the master's database, then warmed up from it.
    assert!(
        eventually(Duration::from_secs(30), || {
            slave.log_text().contains("preload (after a full sync): done")
        }),
        "{}",
        slave.log_text()
    );
    let h = health(&slave);
    assert_eq!(h["preload"]["state"], "done", "{h}");
    assert_eq!(h["preload"]["loaded"], SUBJECTS, "{h}");
    assert_eq!(slave.stats()["cache"]["entries"], SUBJECTS);
    // The copy carried the compact form: the slave's blobs are the master's.
    assert_eq!(
        kamaitachi_testkit::db_fingerprint(&slave_db),
        kamaitachi_testkit::db_fingerprint(sample_db())
    );
}

#[test]
fn a_database_from_before_subject_blob_is_upgraded_at_open_and_answers_the_same() {
    let db = temp_dir("old-db").join("old.db");
    std::fs::copy(sample_db(), &db).expect("copy the sample");
    {
        let conn = rusqlite::Connection::open(&db).expect("open the copy");
        conn.execute_batch("DROP TABLE subject_blob; DELETE FROM meta WHERE key = 'subject_blob_version';")
            .expect("make it an older database");
    }
    let node = start_node(&NodeOpts::new(&db));
    assert!(
        node.log_text()
            .contains(&format!("built the compact form of {SUBJECTS} subjects")),
        "{}",
        node.log_text()
    );
    assert_eq!(
        kamaitachi_testkit::db_fingerprint(&db),
        kamaitachi_testkit::db_fingerprint(sample_db()),
        "the upgrade built the same blobs gen-data did"
    );
    let reference = start_node(&NodeOpts {
        max_bytes: 0,
        ..NodeOpts::new(sample_db())
    });
    for s in all_subjects().iter().step_by(23) {
        let body =
            format!(r#"{{"ids":"net_profit,operating_income","subjects":"{s}","from":0,"to":2000000000}}"#);
        assert_eq!(
            node.post(PERIOD, &body).json(),
            reference.post(PERIOD, &body).json(),
            "{s}"
        );
    }
}
