//! What a read may see, and what a follower may install
//! (docs/WRITE_PROTOCOL.md, V1–V2 and F3), on loopback with one real etcd
//! and real nodes.
//!
//! - A write answered 503 (its only sync candidate paused with SIGSTOP) is
//!   not readable, neither on the leader nor on a plain follower that
//!   applied it; once a later write is acknowledged it is, on both.
//! - A follower holding data refuses the elected leader's image of another
//!   dataset, says why in its log (once) and `/health`, and keeps its data;
//!   started with `--accept-image-from-leader` it installs the image.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SNAPSHOT: &str = "/kamaitachi/api/data/v1/snapshot";
const INGEST: &str = "/kamaitachi/api/data/v1/ingest";
/// A report date after the sample data's years: the latest row once written.
const Q2_2025: i64 = 1_751_241_600;

fn etcd_ini(etcd: &Etcd, prefix: &str) -> String {
    format!(
        "[etcd]\nendpoints = {}\nprefix = {prefix}\nttl = 2\n",
        etcd.endpoint()
    )
}

fn start(db: &Path, mode: &'static str, extra: String) -> Node {
    let mut opts = NodeOpts::new(db);
    opts.mode = mode;
    opts.extra = extra;
    Node::start(&node_bin(), &opts)
}

fn ingest(port: u16, subject: &str, value: f64) -> Resp {
    let body = serde_json::json!({"records": [{
        "subject": subject, "report_date": Q2_2025, "end_date": "2025-06-30", "year": "2025",
        "period": "Q2", "declare_date": "2025-08-01", "values": {"net_profit": value}
    }]})
    .to_string();
    let auth = format!("Bearer {TOKEN}");
    request(port, "POST", INGEST, body.as_bytes(), &[("Authorization", &auth)])
}

fn read(port: u16, subject: &str) -> Resp {
    let body = format!(r#"{{"ids":"net_profit","subjects":"{subject}"}}"#);
    request(port, "POST", SNAPSHOT, body.as_bytes(), &[])
}

/// The net profit a 200 read shows.
fn value(r: &Resp) -> Option<f64> {
    (r.status == 200)
        .then(|| r.json()["data"][0]["data"]["net_profit"].as_f64())
        .flatten()
}

fn health(port: u16) -> serde_json::Value {
    try_request(port, "GET", "/health", b"", &[]).map_or(serde_json::Value::Null, |r| r.json())
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_write_answered_503_is_read_nowhere_until_it_is_acknowledged() {
    let dir = TestDir::new(temp_dir("vis-503"));
    let etcd = Etcd::start(&dir);
    let ini = format!(
        "{}[replication]\nsync_timeout_ms = 300\n",
        etcd_ini(&etcd, "/kmt-vis")
    );
    let db = dir.join("a.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let a = start(&db, "master", ini.clone());
    assert!(
        eventually(Duration::from_secs(15), || health(a.port)["term"].is_i64()),
        "the master did not lead: {}",
        health(a.port)
    );
    let mut b = start(&dir.join("b.db"), "slave", format!("{ini}candidate = true\n"));
    let c = start(&dir.join("c.db"), "slave", ini.clone());
    let (x, y) = (subject(0), subject(1));
    let report = |what: &str| {
        format!(
            "{what}\nleader {}\nfollower {}\n--- leader log ---\n{}\n--- follower log ---\n{}",
            health(a.port),
            health(c.port),
            a.log_text(),
            c.log_text()
        )
    };

    // Acknowledged: readable everywhere.
    assert!(
        eventually(Duration::from_secs(15), || health(a.port)["sync"]["state"]
            == "ok"
            && ingest(a.port, &x, 1.0).status == 200),
        "{}",
        report("no acknowledged write")
    );
    assert!(
        eventually(Duration::from_secs(10), || value(&read(c.port, &x)) == Some(1.0)),
        "{}",
        report("the follower does not show the acknowledged write")
    );
    assert_eq!(value(&read(a.port, &x)), Some(1.0));

    // The only sync candidate stops: the next write is committed on the
    // leader but not acknowledged.
    let b_pid = b.pid().expect("candidate runs");
    signal(b_pid, "-STOP");
    let w = ingest(a.port, &x, 2.0);
    assert_eq!(w.status, 503, "{}", w.text());
    assert!(w.msg().contains("NOT acknowledged"), "{}", w.msg());
    let seq = health(a.port)["applied_seq"].as_u64().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || health(c.port)["applied_seq"].as_u64()
            >= Some(seq)),
        "{}",
        report("the follower did not apply the change")
    );
    // Neither node shows it: they wait up to 1 s for its acknowledgment,
    // then answer 503 naming the change.
    let want = format!("change {seq} touching {x} is not acknowledged yet");
    for (node, port) in [("leader", a.port), ("follower", c.port)] {
        let started = Instant::now();
        let r = read(port, &x);
        assert_eq!(r.status, 503, "{node} served {}", r.text());
        assert!(r.msg().contains(&want), "{node}: {}", r.msg());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{node} answered after {took:?}"
        );
        // Another subject is served at once.
        let started = Instant::now();
        assert_eq!(read(port, &y).status, 200, "{node}");
        assert!(started.elapsed() < Duration::from_millis(500), "{node}");
        let h = health(port);
        assert!(
            h["replication"]["pending"]["changes"].as_u64() >= Some(1),
            "{node}: {h}"
        );
        assert!(h["replication"]["acked_seq"].as_u64() < Some(seq), "{node}: {h}");
    }

    // The candidate is back: the next acknowledged write acknowledges the
    // earlier one too (a prefix), and both nodes show it.
    signal(b_pid, "-CONT");
    assert!(
        eventually(Duration::from_secs(10), || ingest(a.port, &y, 5.0).status == 200),
        "{}",
        report("no write acknowledged after the candidate came back")
    );
    assert_eq!(value(&read(a.port, &x)), Some(2.0), "{}", report("leader"));
    assert!(
        eventually(Duration::from_secs(10), || value(&read(c.port, &x)) == Some(2.0)),
        "{}",
        report("the follower does not show the acknowledged write")
    );
    assert_eq!(health(c.port)["replication"]["pending"]["changes"], 0);
    b.stop();
}

/// A node process started on a config this test writes (a follower that
/// refuses the leader's image never becomes ready, which `Node::start`
/// waits for), with extra command-line arguments.
fn start_follower(dir: &Path, config: &Path, port: u16, args: &[&str]) -> Process {
    let log = dir.join(format!("follower-{}.log", args.len()));
    let mut cmd = Command::new(node_bin());
    cmd.arg("-config").arg(config).args(args);
    let mut process = Process::spawn("follower", &mut cmd, &log);
    process.wait_ready(Duration::from_secs(20), "does not answer /health", || {
        try_request(port, "GET", "/health", b"", &[]).is_ok()
    });
    process
}

fn write_follower_config(dir: &Path, db: &Path, etcd: &Etcd) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let secret = write_cluster_secret(dir);
    let config = dir.join("follower.ini");
    let ini = format!(
        "[server]\nport = {port}\nmode = slave\nbind = 127.0.0.1\nservice_addr = localhost:{port}\n\
         [database]\npath = {}\n[cache]\nmax_bytes = 67108864\n[security]\nadmin_token_file = {}\ncluster_secret_file = {}\n{}",
        db.display(),
        token.display(),
        secret.display(),
        etcd_ini(etcd, "/kmt-vis-f3")
    );
    std::fs::write(&config, ini).unwrap();
    (config, port)
}

#[test]
fn a_follower_with_data_refuses_an_image_of_another_dataset_and_keeps_its_data() {
    let dir = TestDir::new(temp_dir("vis-f3"));
    let etcd = Etcd::start(&dir);
    // The leader: a dataset of its own (another seed, another id).
    let other = dir.join("other.db");
    gen_data(&node_bin(), &other, 30, 99);
    let leader = start(&other, "master", etcd_ini(&etcd, "/kmt-vis-f3"));
    assert!(
        eventually(Duration::from_secs(15), || health(leader.port)["term"].is_i64()),
        "the master did not lead: {}",
        health(leader.port)
    );
    // The follower holds the sample dataset.
    let db = dir.join("follower.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let before = db_fingerprint(&db);
    assert_ne!(before, db_fingerprint(&other));
    let (config, port) = write_follower_config(&dir, &db, &etcd);
    let mut f = start_follower(&dir, &config, port, &[]);

    let refused = || {
        health(port)["replication"]["refused"]
            .as_str()
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(20), || refused().is_some()),
        "no refusal: {}\n{}",
        health(port),
        f.log_text()
    );
    let why = refused().unwrap();
    assert!(why.contains("the image is of dataset"), "{why}");
    // It keeps trying (the leader makes an image each time), and says so
    // in its log once.
    let images = || leader.log_text().matches("image of").count();
    assert!(
        eventually(Duration::from_secs(20), || images() >= 3),
        "the follower did not try again: {}",
        leader.log_text()
    );
    let log = f.log_text();
    assert_eq!(
        log.matches("refusing the image").count(),
        1,
        "logged once per reason: {log}"
    );
    assert!(log.contains("--accept-image-from-leader"), "{log}");
    assert_eq!(health(port)["status"], "unavailable", "it does not follow");
    f.stop(Duration::from_secs(20));
    assert_eq!(db_fingerprint(&db), before, "the follower's data changed");

    // The operator's decision: the same node, told to accept the image.
    let f = start_follower(&dir, &config, port, &["--accept-image-from-leader"]);
    assert!(
        eventually(Duration::from_secs(20), || health(port)["status"] == "ok"),
        "{}\n{}",
        health(port),
        f.log_text()
    );
    assert!(health(port)["replication"]["refused"].is_null());
    assert!(
        f.log_text().contains("installing the leader's image although"),
        "{}",
        f.log_text()
    );
    drop(f);
    assert_eq!(db_fingerprint(&db), db_fingerprint(&other));
}
