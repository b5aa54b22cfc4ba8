//! `[log] format = json`: a real gateway and a real node write JSON lines
//! (timestamp, level, target, message and structured fields), and one
//! request carries one `X-Request-Id` through both: the client's when it
//! sends a sane one, else one the gateway makes, on both of its paths.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const JSON_LOGS: &str = "[log]\nformat = json\nlevel = info\nslow_ms = 0\n";

/// Every line of a log, each of which must be a JSON object.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The request ids of the "slow" lines (slow_ms = 0: every request) of
/// the test's requests (not the gateway's health checks).
fn request_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            matches!(
                l["fields"]["route"].as_str(),
                Some("snapshot" | "ingest" | "master")
            )
        })
        .filter_map(|l| l["fields"]["request_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn json_logs_carry_one_request_id_through_gateway_and_node() {
    let mut opts = NodeOpts::new(sample_db());
    opts.extra = JSON_LOGS.into();
    let node = Node::start(Path::new(&node_bin()), &opts);
    let gw = Gateway::start(&format!(
        "[gateway]\nstatic_upstreams = localhost:{}=master\n{JSON_LOGS}",
        node.port
    ));
    assert!(eventually(Duration::from_secs(10), || {
        request(gw.port, "GET", "/health", b"", &[]).status == 200
    }));
    let body = snapshot_body(&subject(1));
    let snapshot = "/data/kamaitachi/api/data/v1/snapshot";
    // The client's id, on the read path.
    let r = request(
        gw.port,
        "POST",
        snapshot,
        body.as_bytes(),
        &[("X-Request-Id", "trace-abc-1")],
    );
    assert_eq!(r.status, 200);
    // No id, on the read path; then on pingora's path (a write, refused by
    // the node for want of a token, still proxied).
    let r = request(gw.port, "POST", snapshot, body.as_bytes(), &[]);
    assert_eq!(r.status, 200);
    let r = request(
        gw.port,
        "POST",
        "/data/kamaitachi/api/data/v1/ingest",
        b"{}",
        &[("X-Request-Id", "bad id!")],
    );
    assert_eq!(r.status, 401);

    let (gw_ids, node_ids) = {
        let mut found = (Vec::new(), Vec::new());
        let ok = eventually(Duration::from_secs(5), || {
            let g = json_lines(&gw.log_text());
            let n = json_lines(&node.log_text());
            found = (request_ids(&g), request_ids(&n));
            found.0.len() >= 3 && found.1.len() >= 3
        });
        assert!(ok, "gateway: {}\nnode: {}", gw.log_text(), node.log_text());
        found
    };
    for line in json_lines(&gw.log_text())
        .iter()
        .chain(json_lines(&node.log_text()).iter())
    {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    assert_eq!(gw_ids[0], "trace-abc-1", "{gw_ids:?}");
    assert_eq!(
        node_ids[0], "trace-abc-1",
        "the node logs the client's id: {node_ids:?}"
    );
    assert_ne!(gw_ids[1], "-");
    assert_eq!(gw_ids[1], node_ids[1], "a made id reaches the node");
    assert_ne!(gw_ids[2], "bad id!", "a client id that is not sane is replaced");
    assert_eq!(gw_ids[2], node_ids[2], "pingora's path sends the id too");
    let node_line = json_lines(&node.log_text())
        .into_iter()
        .find(|l| l["fields"]["request_id"] == "trace-abc-1")
        .expect("node line");
    assert_eq!(node_line["fields"]["route"], "snapshot");
    assert_eq!(node_line["fields"]["status"], 200);
}
