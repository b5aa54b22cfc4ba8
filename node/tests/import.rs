//! `kamaitachi-node import`: a database built here the way KamaitachiGo's
//! `tools/generate_sample_db.go` builds it (its schema, its row shapes, plus
//! NULLs, a malformed date, a non-numeric value, a duplicate row and one more
//! indicator column) is imported, and a real node over the result answers
//! what SQL on the old file says.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection};
use serde_json::Value;

/// The original generator's schema, verbatim.
const GO_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS finance_data (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stock_code TEXT NOT NULL,
    market_code TEXT NOT NULL,
    subject_key TEXT NOT NULL,
    stock_name TEXT,
    report_date INTEGER NOT NULL,
    end_date TEXT,
    year TEXT,
    period TEXT,
    operating_income REAL,
    parent_holder_net_profit REAL,
    category TEXT DEFAULT 'stock',
    topic TEXT DEFAULT 'stock_a_listing_pool'
);
CREATE INDEX IF NOT EXISTS idx_subject_date ON finance_data(subject_key, report_date DESC);
CREATE INDEX IF NOT EXISTS idx_topic ON finance_data(topic);
CREATE INDEX IF NOT EXISTS idx_stock_code ON finance_data(stock_code);
";

const STOCKS: usize = 80;
const YEARS: std::ops::RangeInclusive<i32> = 2020..=2023;
const IDS: [&str; 3] = ["operating_income", "parent_holder_net_profit", "net_profit"];

/// Unix seconds of `y`-12-31 00:00 UTC.
fn year_end(y: i32) -> i64 {
    // 2020-12-31 is 1609372800; later ends step by the year's length.
    (2020..y).fold(1_609_372_800, |t, yy| {
        let leap = (yy + 1) % 4 == 0 && ((yy + 1) % 100 != 0 || (yy + 1) % 400 == 0);
        t + if leap { 366 } else { 365 } * 86_400
    })
}

/// Builds the old database; returns the ids of the rows the import must
/// skip.
fn build_old_db(path: &Path) -> Vec<i64> {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(GO_SCHEMA).unwrap();
    // A later indicator column, as an operator of the original might add.
    conn.execute_batch("ALTER TABLE finance_data ADD COLUMN net_profit REAL;")
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut insert = conn
        .prepare(
            "INSERT INTO finance_data (stock_code, market_code, subject_key, stock_name, report_date, end_date,
             year, period, operating_income, parent_holder_net_profit, category, topic, net_profit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .unwrap();
    for i in 0..STOCKS {
        let code = format!("{:06}", 100_000 + i);
        let subject = format!("33:{code}");
        // Some names are NULL: the original then shows the subject key.
        let name = (i % 9 != 4).then(|| format!("Sample Corp {code}"));
        let scale = 10f64.powf(rng.random_range(7.0..11.0));
        for y in YEARS {
            let op = scale * (0.5 + rng.random::<f64>() * 1.5);
            let profit = op * (0.03 + rng.random::<f64>() * 0.25);
            let op = (rng.random_range(0..10) != 0).then_some(op); // NULLs
            let np = (i % 2 == 0).then_some(profit * 1.1);
            insert
                .execute(params![
                    code,
                    "33",
                    subject,
                    name,
                    year_end(y),
                    format!("{y}-12-31"),
                    y.to_string(),
                    "596001",
                    op,
                    profit,
                    "stock",
                    "stock_a_listing_pool",
                    np
                ])
                .unwrap();
        }
    }
    // A duplicate of a report: the later row wins.
    insert
        .execute(params![
            "100003",
            "33",
            "33:100003",
            "Sample Corp 100003",
            year_end(2023),
            "2023-12-31",
            "2023",
            "596001",
            123.0,
            456.0,
            "stock",
            "stock_a_listing_pool",
            789.0
        ])
        .unwrap();
    let mut bad = Vec::new();
    // A malformed date.
    insert
        .execute(params![
            "100005",
            "33",
            "33:100005",
            "x",
            year_end(2024),
            "2024-13-45",
            "2024",
            "596001",
            1.0,
            1.0,
            "stock",
            "stock_a_listing_pool",
            1.0
        ])
        .unwrap();
    bad.push(conn.last_insert_rowid());
    // A non-numeric value (SQLite keeps text that does not look like a number).
    insert
        .execute(params![
            "100006",
            "33",
            "33:100006",
            "x",
            year_end(2024),
            "2024-12-31",
            "2024",
            "596001",
            "n/a",
            1.0,
            "stock",
            "stock_a_listing_pool",
            1.0
        ])
        .unwrap();
    bad.push(conn.last_insert_rowid());
    bad
}

fn run_import(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("import")
        .args(args)
        .output()
        .expect("run import");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One old report as SQL on the old file gives it (later rows win).
#[derive(Debug, Clone)]
struct OldReport {
    name: Option<String>,
    report_date: i64,
    end_date: String,
    year: String,
    values: [Option<f64>; 3],
}

/// Every valid report of the old file, per subject, oldest first.
fn old_reports(old: &Path, bad: &[i64]) -> BTreeMap<String, Vec<OldReport>> {
    let conn = Connection::open(old).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT id, subject_key, stock_name, report_date, end_date, year,
                    operating_income, parent_holder_net_profit, net_profit
             FROM finance_data ORDER BY subject_key, report_date, id",
        )
        .unwrap();
    let mut out: BTreeMap<String, Vec<OldReport>> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                OldReport {
                    name: r.get(2)?,
                    report_date: r.get(3)?,
                    end_date: r.get(4)?,
                    year: r.get(5)?,
                    values: [
                        r.get(6).ok().flatten(),
                        r.get(7).ok().flatten(),
                        r.get(8).ok().flatten(),
                    ],
                },
            ))
        })
        .unwrap();
    for row in rows {
        let (id, subject, rep) = row.unwrap();
        if bad.contains(&id) {
            continue;
        }
        let reps = out.entry(subject).or_default();
        match reps.last_mut() {
            Some(last) if last.report_date == rep.report_date => *last = rep,
            _ => reps.push(rep),
        }
    }
    out
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

#[test]
fn go_database_imports_and_answers_like_sql_on_the_old_file() {
    let dir = temp_dir("import");
    let old = dir.join("finance_test.db");
    let new = dir.join("kamaitachi.db");
    let bad = build_old_db(&old);

    // --strict refuses the whole import and writes nothing.
    let (code, err) = run_import(&[
        "--from",
        old.to_str().unwrap(),
        "--db",
        new.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("row id {}", bad[0])) || err.contains(&format!("row id {}", bad[1])),
        "{err}"
    );
    assert!(!new.exists(), "a refused import leaves nothing behind");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("import-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Default: bad rows are reported by id and skipped.
    let (code, err) = run_import(&["--from", old.to_str().unwrap(), "--db", new.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "row id {}: end_date \"2024-13-45\" is not a date",
            bad[0]
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "row id {}: operating_income \"n/a\" is not a number",
            bad[1]
        )),
        "{err}"
    );
    assert!(
        err.contains("2 rows skipped") && err.contains("1 superseded"),
        "{err}"
    );

    // An existing target is not replaced without --force.
    let (code, err) = run_import(&["--from", old.to_str().unwrap(), "--db", new.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");

    let expected = old_reports(&old, &bad);
    assert_eq!(
        expected.len(),
        STOCKS,
        "the bad rows were the only rows of their subjects' 2024"
    );
    let node = start_node(&NodeOpts::new(&new));
    let ids = IDS.join(",");

    // The original server's command line (`server.exe -db X -port N
    // -cache B -debug`) runs a master; pointed at the old file it refuses,
    // naming import, and leaves the old file as it was.
    let port = free_port();
    let old_schema = |p: &Path| -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap()
    };
    let before = old_schema(&old);
    let out = Command::new(BIN)
        .args(["-db", old.to_str().unwrap(), "-port", &port.to_string()])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("KamaitachiGo database") && err.contains("kamaitachi-node import"),
        "{err}"
    );
    assert_eq!(old_schema(&old), before, "the old file is not touched");
    let mut flags_only = Command::new(BIN)
        .args([
            "-db",
            new.to_str().unwrap(),
            "-port",
            &port.to_string(),
            "-cache",
            "1000000",
            "-debug",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = kamaitachi_testkit::eventually(std::time::Duration::from_secs(20), || {
        try_request(port, "GET", "/health", b"", &[]).is_ok_and(|r| r.status == 200)
    });
    let stats = try_request(port, "GET", STATS, b"", &[]);
    let _ = flags_only.kill();
    let _ = flags_only.wait();
    assert!(up, "a node from the original's flags alone did not start");
    let stats = stats.unwrap().json();
    assert_eq!(stats["data"]["cache"]["max_bytes"], 1_000_000, "{stats}");
    assert_eq!(stats["data"]["stock_count"], STOCKS, "{stats}");

    // Snapshot of every subject (latest report), through the API.
    let subjects: Vec<&String> = expected.keys().collect();
    for chunk in subjects.chunks(25) {
        let list = chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
        let r = node.post(
            SNAPSHOT,
            &format!(r#"{{"ids":"{ids}","subjects":"{list}","field":"report_date","limit":1000}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let rows = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(rows.len(), chunk.len());
        for row in rows {
            let subject = row["subject"]["subject"].as_str().unwrap().to_string();
            let latest = expected[&subject].last().unwrap();
            let name = latest.name.clone().unwrap_or_else(|| subject.clone());
            assert_eq!(row["subject"]["name"], name.as_str(), "{subject}");
            assert_eq!(row["data"]["report_date"], latest.report_date, "{subject}");
            assert_eq!(row["data"]["end_date"], latest.end_date.as_str(), "{subject}");
            for (i, id) in IDS.iter().enumerate() {
                assert!(
                    close(num(&row["data"][id]), latest.values[i]),
                    "{subject} {id}: {} vs {:?}",
                    row["data"][id],
                    latest.values[i]
                );
            }
        }
    }

    // Period: every report, newest first, quarter derived from 596001.
    for subject in subjects.iter().take(10) {
        let r = node.post(
            PERIOD,
            &format!(r#"{{"ids":"{ids}","subjects":"{subject}","from":1577836800,"to":1735603200}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let got = r.json()["data"][0]["data"].as_array().unwrap().clone();
        let want: Vec<&OldReport> = expected[*subject].iter().rev().collect();
        assert_eq!(got.len(), want.len(), "{subject}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["end_date"], w.end_date.as_str());
            assert_eq!(g["year"], w.year.as_str());
            assert_eq!(g["period"], "Q4");
            assert_eq!(g["combine"], format!("{subject}:{}_Q4", w.year));
            for (i, id) in IDS.iter().enumerate() {
                assert!(close(num(&g[id]), w.values[i]), "{subject} {id}");
            }
        }
    }

    // The topic, top 20 by operating income: the original's ORDER BY on
    // the latest rows (NULLs last).
    let r = node.post(
        SNAPSHOT,
        r#"{"ids":"operating_income","topic":"stock_a_listing_pool","field":"operating_income","order":-1,"limit":20}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["subject"]["subject"].as_str().unwrap().to_string())
        .collect();
    let mut ranked: Vec<(&String, f64)> = expected
        .iter()
        .filter_map(|(s, reps)| reps.last().and_then(|r| r.values[0]).map(|v| (s, v)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let want: Vec<String> = ranked.iter().take(20).map(|(s, _)| s.to_string()).collect();
    assert_eq!(got, want);
}
