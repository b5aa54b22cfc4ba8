//! Issue 14 across hosts: every process (etcd, the nodes, the gateway) in a
//! network namespace of its own on a private test subnet ([`TestNet`]),
//! talking through a bridge on real addresses — never loopback, which is
//! private to each namespace. The first test proves the cluster works
//! across hosts (`bind`, `service_addr`, discovery, replication, routing);
//! the network, its namespaces and every process are removed at the end,
//! also when the test fails (the harnesses' Drop, net declared first).
//!
//! Needs root and iproute2 (CI runs as root; scripts/install-deps.sh).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const Q2_2025: i64 = 1_751_241_600;
const INGEST: &str = "/data/kamaitachi/api/data/v1/ingest";

/// One ingest record: `value` as `net_profit` of `subject` for Q2 2025.
fn ingest_body(subject: &str, value: f64) -> String {
    serde_json::json!({"records": [{
        "subject": subject, "report_date": Q2_2025, "end_date": "2025-06-30", "year": "2025",
        "period": "Q2", "declare_date": "2025-08-01", "values": {"net_profit": value}
    }]})
    .to_string()
}

fn net_profit_query(subject: &str) -> String {
    format!(r#"{{"ids":"net_profit","subjects":"{subject}"}}"#)
}

/// `[etcd]` lines for a node or the gateway, with lease `ttl` seconds.
fn etcd_ini(etcd: &Etcd, ttl: u64) -> String {
    format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-net\nttl = {ttl}\n",
        etcd.endpoint()
    )
}

/// A node on `host`, its database `db` (copied from the sample data first
/// when `data`), registered in etcd.
fn node_on(host: &NetHost, db: &Path, mode: &'static str, data: bool, extra: &str) -> Node {
    if data {
        std::fs::copy(sample_db(), db).expect("copy sample data");
    }
    let mut opts = NodeOpts::new(db);
    opts.mode = mode;
    opts.host = Some(host.clone());
    opts.extra = extra.to_string();
    Node::start(&node_bin(), &opts)
}

fn applied_seq(n: &Node) -> Option<u64> {
    n.get("/health").json()["applied_seq"].as_u64()
}

/// Builds the cross-host cluster, checks it, and returns the namespaces it
/// made (all processes and the net are dropped on return).
fn cross_host_cluster() -> Vec<String> {
    let mut net = TestNet::create();
    let dir = TestDir::new(temp_dir("gw-net"));
    let h_etcd = net.host("etcd");
    let h_master = net.host("m");
    let h_s1 = net.host("s1");
    let h_s2 = net.host("s2");
    let h_gw = net.host("gw");
    let etcd = Etcd::start_on(&dir, &h_etcd);
    let ini = etcd_ini(&etcd, 2);
    let master = node_on(&h_master, &dir.join("m.db"), "master", true, &ini);
    let s1 = node_on(&h_s1, &dir.join("s1.db"), "slave", false, &ini);
    let s2 = node_on(&h_s2, &dir.join("s2.db"), "slave", false, &ini);
    let gw = Gateway::start_on(&h_gw, &etcd_ini(&etcd, 2));
    gw.wait_nodes(3);

    // Registered by their addresses on the test network, not localhost.
    let keys = etcd.keys("/kmt-net/services/");
    for n in [&master, &s1, &s2] {
        let addr = n.addr.to_string();
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("/{addr}"))),
            "{addr} not registered: {keys:?}"
        );
        assert!(!addr.starts_with("127."), "{addr}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("localhost") || k.contains("/127.")),
        "{keys:?}"
    );

    // A write through the gateway reaches every host.
    let auth = format!("Bearer {TOKEN}");
    let subj = subject(5);
    let r = request_at(
        gw.addr,
        "POST",
        INGEST,
        ingest_body(&subj, 7321.0).as_bytes(),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seq = r.json()["data"]["seq"].as_u64().expect("seq");
    for n in [&master, &s1, &s2] {
        assert!(
            eventually(Duration::from_secs(15), || applied_seq(n) >= Some(seq)),
            "node {} did not apply {seq}: {}",
            n.addr,
            n.log_text()
        );
        let got = n.post(SNAPSHOT, &net_profit_query(&subj)).json();
        assert_eq!(
            got["data"][0]["data"]["net_profit"], 7321.0,
            "node {}: {got}",
            n.addr
        );
    }
    // Reads through the gateway, for keys every node owns.
    for i in 0..30 {
        let r = gw.post(
            "/data/kamaitachi/api/data/v1/snapshot",
            &net_profit_query(&subject(i)),
        );
        assert_eq!(r.status, 200, "read {i}: {}", r.text());
    }
    let got = gw
        .post("/data/kamaitachi/api/data/v1/snapshot", &net_profit_query(&subj))
        .json();
    assert_eq!(got["data"][0]["data"]["net_profit"], 7321.0, "{got}");

    // The traffic really crosses the test network: a slave cut off from it
    // leaves the gateway's ring, and comes back when plugged in again.
    net.cut(&h_s2);
    assert!(
        eventually(Duration::from_secs(15), || gw.health()["healthy_nodes"] == 2),
        "the gateway still sees a cut-off node: {}",
        gw.health()
    );
    net.heal(&h_s2);
    gw.wait_nodes(3);

    let mut names = net.namespaces();
    names.sort();
    names
}

#[test]
fn the_cluster_works_across_hosts() {
    let started = Instant::now();
    let namespaces = cross_host_cluster();
    assert_eq!(namespaces.len(), 6, "{namespaces:?}");
    for ns in &namespaces {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    eprintln!("cross-host test took {:?}", started.elapsed());
}
