//! `kamaitachi-node backup` of a running master while writes go on, and
//! `restore` into a new master: the backup holds exactly the writes
//! acknowledged up to its data version, a damaged file is refused, and the
//! restored node serves at that version.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kamaitachi_testkit::eventually;
use rusqlite::{params, Connection, OptionalExtension};

/// Unix seconds of y-m-d 00:00 UTC.
fn day(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    (era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468) * 86_400
}

/// Batch `i`: one new report of 33:000001 (a quarter end of its own), with
/// net_profit = i.
fn batch(i: u64) -> (i64, String) {
    let year = 2031 + (i / 4) as i64;
    let (q, (m, d)) = [(1, (3, 31)), (2, (6, 30)), (3, (9, 30)), (4, (12, 31))][(i % 4) as usize];
    let date = day(year, m, d);
    let body = format!(
        r#"{{"records":[{{"subject":"33:000001","report_date":{date},"end_date":"{year}-{m:02}-{d:02}","year":"{year}","period":"Q{q}","declare_date":"{year}-{m:02}-{d:02}","values":{{"net_profit":{i}}}}}]}}"#
    );
    (date, body)
}

fn node_cmd(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run kamaitachi-node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn value_at(db: &Path, date: i64) -> Option<f64> {
    let conn = Connection::open(db).unwrap();
    conn.query_row(
        "SELECT v.value FROM report_values v JOIN indicators i ON i.id = v.indicator
         WHERE v.subject = '33:000001' AND v.report_date = ?1 AND i.code = 'net_profit'",
        params![date],
        |r| r.get(0),
    )
    .optional()
    .unwrap()
}

#[test]
fn backup_during_writes_restores_exactly_the_acknowledged_writes() {
    let dir = temp_dir("backup");
    let db = dir.join("master.db");
    gen_data(&db, 50, 3);
    let master = start_node(&NodeOpts::new(&db));
    let token = master.dir.join("admin.token");
    let auth = format!("Bearer {TOKEN}");

    // A steady ingest load, each write acknowledged with its sequence.
    let acked: Arc<Mutex<Vec<(u64, i64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, port) = (acked.clone(), stop.clone(), master.port);
        std::thread::spawn(move || {
            for i in 0..2000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (date, body) = batch(i);
                let r = request(
                    port,
                    "POST",
                    "/kamaitachi/api/data/v1/ingest",
                    body.as_bytes(),
                    &[("Authorization", &auth)],
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let seq = r.json()["data"]["seq"].as_u64().expect("seq");
                acked.lock().unwrap().push((i, date, seq));
            }
        })
    };
    assert!(eventually(Duration::from_secs(20), || acked
        .lock()
        .unwrap()
        .len()
        >= 20));

    let file = dir.join("backups/master.kdb");
    let url = format!("http://127.0.0.1:{}", master.port);
    let (code, err) = node_cmd(&[
        "backup",
        "--from",
        &url,
        "--to",
        file.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // Writes go on after the backup, then stop.
    let after = acked.lock().unwrap().len();
    assert!(eventually(Duration::from_secs(20), || acked
        .lock()
        .unwrap()
        .len()
        >= after + 10));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backups/master.kdb.json")).unwrap()).unwrap();
    let version = manifest["data_version"].as_u64().expect("data_version");
    assert!(err.contains(&format!("data version {version}")), "{err}");

    // A wrong token is refused by the node, and nothing is left behind.
    let bad_token = dir.join("bad.token");
    std::fs::write(&bad_token, "not-the-admin-token-at-all").unwrap();
    let other = dir.join("backups/other.kdb");
    let (code, err) = node_cmd(&[
        "backup",
        "--from",
        &url,
        "--to",
        other.to_str().unwrap(),
        "--token-file",
        bad_token.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("403"), "{err}");
    assert!(!other.exists());

    // A damaged copy is refused.
    let damaged = dir.join("backups/damaged.kdb");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::copy(
        dir.join("backups/master.kdb.json"),
        dir.join("backups/damaged.kdb.json"),
    )
    .unwrap();
    let restored = dir.join("restored/master.db");
    let (code, err) = node_cmd(&[
        "restore",
        "--from",
        damaged.to_str().unwrap(),
        "--db",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("damaged"), "{err}");
    assert!(!restored.exists());

    let (code, err) = node_cmd(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--db",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    // Exactly the writes acknowledged up to the backup's version are in it.
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().any(|a| a.2 > version),
        "writes went on after the backup"
    );
    for (i, date, seq) in &acked {
        let got = value_at(&restored, *date);
        if *seq <= version {
            assert_eq!(
                got,
                Some(*i as f64),
                "write {i} (seq {seq}) acknowledged before the backup"
            );
        } else {
            assert_eq!(
                got, None,
                "write {i} (seq {seq}) came after the backup ({version})"
            );
        }
    }

    // A new master on it serves at the backup's version.
    let restored_node = start_node(&NodeOpts::new(&restored));
    let h = restored_node.get("/health").json();
    assert_eq!(h["data_version"], version);
    let (_, date, seq) = acked
        .iter()
        .rev()
        .find(|a| a.2 <= version)
        .copied()
        .expect("one before");
    let r = restored_node.post(
        SNAPSHOT,
        &format!(r#"{{"ids":"net_profit","subjects":"33:000001","timestamp":{date}}}"#),
    );
    assert_eq!(
        r.json()["data"][0]["data"]["report_date"],
        date,
        "seq {seq}: {}",
        r.text()
    );
    drop(master);
}
