//! A real node against a real etcd: it registers itself, leaves at once on
//! SIGTERM, leaves within ttl + 1 s when killed, and keeps serving (and
//! registers later) when etcd is down at start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kamaitachi_testkit::{eventually, Etcd};

/// A node with a copy of the sample database of its own (it keeps its
/// election memory there: two tests must not share one file).
fn node_with_etcd(etcd: &Etcd, ttl: u64) -> Node {
    let db = temp_dir("reg-node").join("node.db");
    std::fs::copy(sample_db(), &db).expect("copy the sample database");
    let mut opts = NodeOpts::new(&db);
    opts.extra = format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-node\nttl = {ttl}\n",
        etcd.endpoint()
    );
    start_node(&opts)
}

#[test]
fn registers_and_revokes_on_sigterm() {
    let etcd = Etcd::start(&temp_dir("reg-etcd"));
    let mut node = node_with_etcd(&etcd, 10);
    let key = format!("/kmt-node/services/kamaitachi-master/localhost:{}", node.port);
    assert!(eventually(Duration::from_secs(10), || etcd
        .keys("/kmt-node/services")
        == vec![key.clone()]));
    let (_, value) = etcd.etcdctl(&["get", &key, "--print-value-only"]);
    let v: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(v["role"], "master");
    assert_eq!(v["addr"], format!("localhost:{}", node.port));
    // Write availability (issue 14): the master leads, and the election's
    // keys show under the prefix.
    assert!(eventually(Duration::from_secs(10), || etcd
        .keys("/kmt-node/election")
        .contains(&"/kmt-node/election/leader".to_string())));
    assert_eq!(v["term"].as_i64(), node.get("/health").json()["term"].as_i64());

    assert!(node.stop().success());
    assert!(
        etcd.keys("/kmt-node/services").is_empty(),
        "lease not revoked at stop"
    );
    // A graceful stop resigns: the leader key goes at once.
    assert!(
        !etcd
            .keys("/kmt-node/election")
            .contains(&"/kmt-node/election/leader".to_string()),
        "the leader did not resign at stop"
    );
}

#[test]
fn killed_node_leaves_within_ttl() {
    let etcd = Etcd::start(&temp_dir("kill-etcd"));
    let mut node = node_with_etcd(&etcd, 2);
    assert!(eventually(Duration::from_secs(10), || etcd
        .keys("/kmt-node/services")
        .len()
        == 1));
    node.kill9();
    let killed = Instant::now();
    assert!(eventually(Duration::from_secs(6), || etcd
        .keys("/kmt-node/services")
        .is_empty()));
    assert!(
        killed.elapsed() <= Duration::from_secs(3),
        "gone after {:?}",
        killed.elapsed()
    );
}

#[test]
fn serves_without_etcd_and_registers_when_it_comes() {
    let mut etcd = Etcd::start(&temp_dir("late-etcd"));
    etcd.kill();
    let node = node_with_etcd(&etcd, 3);
    // Serving regardless.
    let r = node.post(SNAPSHOT, r#"{"ids":"net_profit","subjects":"33:000001"}"#);
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(5), || node
        .log_text()
        .contains("Failed to connect to etcd")));
    etcd.restart(false);
    assert!(eventually(Duration::from_secs(15), || etcd
        .keys("/kmt-node/services")
        .len()
        == 1));
    // An etcd restart with its data wiped: registered again with a new lease.
    etcd.restart(true);
    assert!(eventually(Duration::from_secs(20), || etcd
        .keys("/kmt-node/services")
        .len()
        == 1));
    assert_eq!(node.get("/health").status, 200);
}
