//! Writes through the gateway reach every node; an empty slave that joins a
//! running cluster copies the master's data first and enters the gateway's
//! ring only once it is ready.

mod common;

use std::time::Duration;

use common::*;

const Q2_2025: i64 = 1_751_241_600;

#[test]
fn ingest_through_the_gateway_and_an_empty_slave_joins() {
    let dir = temp_dir("gw-repl");
    let etcd = Etcd::start(&dir);
    // The master writes: give it a private copy of the sample data.
    let db = dir.join("master.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let mut opts = NodeOpts::new(&db);
    opts.extra = format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\nttl = 2\n",
        etcd.endpoint()
    );
    let master = Node::start(&node_bin(), &opts);
    let slave = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(2);

    let body = serde_json::json!({"records": [{
        "subject": subject(3), "report_date": Q2_2025, "end_date": "2025-06-30", "year": "2025",
        "period": "Q2", "declare_date": "2025-08-01", "values": {"net_profit": 4242.0}
    }]})
    .to_string();
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        gw.port,
        "POST",
        "/data/kamaitachi/api/data/v1/ingest",
        body.as_bytes(),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seq = r.json()["data"]["seq"].as_u64().unwrap();

    // A third node, empty, joins while the cluster runs.
    let late = registered_node(&etcd, "slave");
    assert!(
        late.log_text().contains("copying the database"),
        "{}",
        late.log_text()
    );
    gw.wait_nodes(3);
    let q = format!(r#"{{"ids":"net_profit","subjects":"{}"}}"#, subject(3));
    for n in [&master, &slave, &late] {
        assert!(
            eventually(Duration::from_secs(10), || n.get("/health").json()["applied_seq"]
                .as_u64()
                >= Some(seq)),
            "node on {} did not apply {seq}",
            n.port
        );
        let got = n.post(SNAPSHOT, &q).json();
        assert_eq!(
            got["data"][0]["data"]["net_profit"], 4242.0,
            "node {}: {got}",
            n.port
        );
    }
    // And through the gateway, whichever node owns the key.
    let got = gw.post("/data/kamaitachi/api/data/v1/snapshot", &q).json();
    assert_eq!(got["data"][0]["data"]["net_profit"], 4242.0);
}
