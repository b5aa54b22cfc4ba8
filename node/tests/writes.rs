//! Writes are never refused for the database being busy: a batch takes the
//! write lock when its transaction begins (waiting for it, bounded), so a
//! WAL checkpoint that resets the log between a batch's first read and its
//! first write cannot fail it with "database is locked". Reproduced with a
//! second connection checkpointing (TRUNCATE) in a loop under an ingest
//! load, as the node's own checkpointer does once the WAL is large.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Batch `i`: a report of each of `subjects` at a quarter of its own.
fn batch(i: u64, subjects: &[String]) -> String {
    let year = 2040 + (i / 4) as i64;
    let (q, m, d) = [(1, 3, 31), (2, 6, 30), (3, 9, 30), (4, 12, 31)][(i % 4) as usize];
    let days = {
        let y = if m <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
    };
    let records: Vec<String> = subjects
        .iter()
        .map(|s| {
            format!(
                r#"{{"subject":"{s}","report_date":{},"end_date":"{year}-{m:02}-{d:02}","year":"{year}","period":"Q{q}","declare_date":"{year}-{m:02}-{d:02}","values":{{"net_profit":{i}}}}}"#,
                days * 86_400
            )
        })
        .collect();
    format!(r#"{{"records":[{}]}}"#, records.join(","))
}

#[test]
fn ingest_is_not_refused_while_the_wal_is_checkpointed() {
    let dir = temp_dir("writes");
    let db = dir.join("master.db");
    gen_data(&db, 60, 5);
    let subjects: Vec<String> = kamaitachi_testkit::subjects(&db).into_iter().take(50).collect();
    let master = start_node(&NodeOpts::new(&db));
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_millis(50)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // Busy now and then: that is the checkpoint's problem, not
                // the writer's.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let auth = format!("Bearer {TOKEN}");
    let mut failed = Vec::new();
    for i in 0..150 {
        let r = request(
            master.port,
            "POST",
            "/kamaitachi/api/data/v1/ingest",
            batch(i, &subjects).as_bytes(),
            &[("Authorization", &auth)],
        );
        if r.status != 200 {
            failed.push((i, r.status, r.text()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let checkpoints = checkpointer.join().expect("checkpointer");
    assert!(checkpoints > 10, "the checkpointer ran ({checkpoints})");
    assert!(
        failed.is_empty(),
        "{} of 150 batches refused: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let v = master.get("/health").json();
    assert_eq!(v["data_version"], 1 + 150, "every batch is one change");
}
