//! The command line: config errors stop the node with a message naming the
//! file, key and expectation; `gen-data` is deterministic.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn run_node(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_stop_the_node_with_a_clear_message() {
    let dir = temp_dir("cli");
    let (code, err) = run_node(&["-config", "/nonexistent/node.ini"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/node.ini"), "{err}");

    let cases = [
        ("[server]\nport = 1\nmode = leader\n", "[server] mode", "master, slave, gateway"),
        ("[server]\nport = http\nmode = master\n", "[server] port", "TCP port"),
        (
            "[server]\nport = 8080\nmode = slave\n[cache]\nmax_bytes = 1\n",
            "[replication] master",
            "host:port",
        ),
        (
            "[server]\nport = 8080\nmode = master\n[database]\npath = x.db\n[cache]\nmax_bytes = lots\n",
            "[cache] max_bytes",
            "byte count",
        ),
        (
            "[server]\nport = 8080\nmode = master\n[database]\npath = /nonexistent/x.db\n[cache]\nmax_bytes = 1\n",
            "[database] path",
            "no such file",
        ),
    ];
    for (i, (ini, key, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.ini"));
        std::fs::write(&path, ini).unwrap();
        let (code, err) = run_node(&["--config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{ini}");
        assert!(err.contains(path.to_str().unwrap()), "file not named: {err}");
        assert!(err.contains(key), "key {key} not named: {err}");
        assert!(err.contains(expected), "expectation {expected} not said: {err}");
    }
}

#[test]
fn port_in_use_is_explained() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = temp_dir("cli-port");
    let path = dir.join("n.ini");
    std::fs::write(
        &path,
        format!(
            "[server]\nport = {port}\nmode = master\n[database]\npath = {}\n[cache]\nmax_bytes = 0\n",
            sample_db().display()
        ),
    )
    .unwrap();
    let (code, err) = run_node(&["-config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("[server] port"),
        "{err}"
    );
}

/// Fault: may's listener sets `SO_REUSEPORT`, so a second node on a busy
/// port started and the kernel split the first node's traffic with it. A
/// second real node must exit at once, code 2, `port N is in use`, and the
/// first must keep answering every request alone.
#[test]
fn a_second_node_on_a_busy_port_exits_with_code_2() {
    let first = start_node(&NodeOpts::new(sample_db()));
    let port = first.port;
    let dir = temp_dir("cli-second");
    let small = dir.join("small.db");
    gen_data(&small, 5, 3);
    let path = dir.join("second.ini");
    std::fs::write(
        &path,
        format!(
            "[server]\nport = {port}\nmode = master\nbind = 127.0.0.1\n[database]\npath = {}\n[cache]\nmax_bytes = 0\n",
            small.display()
        ),
    )
    .unwrap();
    let log = dir.join("second.log");
    /// Kills the second node if the test fails while it runs.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut second = Reap(
        Command::new(BIN)
            .args(["-config", path.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn second node"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        // Meanwhile every request must reach the first node (400 subjects),
        // never the second (5 subjects).
        let stats = first.stats();
        assert_eq!(
            stats["stock_count"], SUBJECTS,
            "a request reached the second node: {stats}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(status) = status else {
        panic!("the second node on busy port {port} kept running: {err}");
    };
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("port {port} is in use")), "{err}");
    for _ in 0..50 {
        assert_eq!(first.stats()["stock_count"], SUBJECTS);
    }
}

fn table_dump(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut out = String::new();
    for sql in [
        "SELECT * FROM indicators ORDER BY id",
        "SELECT * FROM subjects ORDER BY subject",
        "SELECT * FROM topic_members ORDER BY topic, subject",
        "SELECT * FROM reports ORDER BY subject, report_date",
        "SELECT subject, report_date, indicator, quote(value) FROM report_values ORDER BY 1, 2, 3",
        "SELECT * FROM meta ORDER BY key",
    ] {
        let mut st = conn.prepare(sql).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i).unwrap();
                out.push_str(&format!("{v:?}|"));
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn gen_data_is_deterministic() {
    let dir = temp_dir("gen");
    let (a, b, c) = (dir.join("a.db"), dir.join("b.db"), dir.join("c.db"));
    gen_data(&a, 60, 3);
    gen_data(&b, 60, 3);
    gen_data(&c, 60, 4);
    let (da, db, dc) = (table_dump(&a), table_dump(&b), table_dump(&c));
    assert!(da.lines().count() > 60 * 30, "too little data");
    assert_eq!(da, db, "same seed, different data");
    assert_ne!(da, dc, "different seed, same data");

    // Shape: both markets, the pool, six or more indicators, quarterly rows.
    let conn = rusqlite::Connection::open(&a).unwrap();
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert!(q("SELECT count(*) FROM indicators") >= 6);
    assert!(q("SELECT count(*) FROM subjects WHERE market = 33") > 0);
    assert!(q("SELECT count(*) FROM subjects WHERE market = 17") > 0);
    assert_eq!(
        q("SELECT count(*) FROM topic_members WHERE topic = 'stock_a_listing_pool'"),
        60
    );
    assert_eq!(q("SELECT count(DISTINCT period) FROM reports"), 4);

    // An existing file is not replaced without --force.
    let out = Command::new(BIN)
        .args(["gen-data", "--db"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}
