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
    cluster::testkit::subjects(db)
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
