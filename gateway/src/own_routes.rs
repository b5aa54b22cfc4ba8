//! The gateway's own routes: `GET /health` (status and the node list),
//! `GET /kamaitachi/api/data/v1/stats` (every node's stats and cluster
//! totals), `POST /kamaitachi/api/data/v1/cache/reset` (admin; fans out to
//! every node), `GET /metrics`, `GET /prometheus/targets`. The status page
//! has a file of its own (`status_page.rs`), the answer type these return
//! its own too (`local.rs`).

use std::time::Duration;

use bytes::Bytes;
use cluster::Role;
use serde_json::{json, Value};

use crate::coupling::FAN_OUT_TIMEOUT;
use crate::error::envelope;
use crate::local::Local;
use crate::routing::API;
use crate::upstreams::NodeView;

/// `GET /health`: 200 while at least one node can answer, else 503.
pub fn health(nodes: &[NodeView]) -> Local {
    let usable = nodes.iter().filter(|n| n.healthy && !n.ejected).count();
    let master = nodes
        .iter()
        .any(|n| n.role == Role::Master && n.healthy && !n.ejected);
    let status = if usable > 0 { "ok" } else { "unavailable" };
    let body = json!({
        "status": status,
        "mode": "gateway",
        "healthy_nodes": usable,
        // The original's name for the same number, which its scripts read.
        "count": usable,
        "master_available": master,
        "nodes": nodes,
    });
    Local::json(if usable > 0 { 200 } else { 503 }, Bytes::from(body.to_string()))
}

/// `GET /prometheus/targets`: Prometheus' HTTP service discovery format
/// (`http_sd_configs`), one target group per node the gateway knows
/// (healthy or not, so a node that stops answering shows as `up == 0`)
/// and one for this gateway. Labels: `kind` (node, gateway) and `role`.
pub fn prometheus_targets(nodes: &[NodeView], gateway_addr: &str) -> Local {
    let mut groups: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"targets": [n.addr], "labels": {"kind": "node", "role": n.role}}))
        .collect();
    groups.push(json!({"targets": [gateway_addr], "labels": {"kind": "gateway", "role": "gateway"}}));
    Local::json(200, Bytes::from(Value::Array(groups).to_string()))
}

/// Fans a request out to every node, concurrently, each bounded by
/// `timeout`.
pub(crate) async fn fan_out(
    client: &reqwest::Client,
    nodes: &[NodeView],
    method: reqwest::Method,
    path: &str,
    key: &cluster::auth::ClusterKey,
    timeout: Duration,
) -> Vec<(NodeView, Result<(u16, Value), String>)> {
    // Only nodes that proved they hold the cluster secret; each call is
    // signed with the cluster key (never the caller's token), bound to the
    // node's registered address, the method and path, a nonce and the time.
    let calls = nodes.iter().filter(|n| n.proven).map(|n| {
        let signed = key.sign_request("fanout", method.as_str(), &n.identity, path);
        let req = client
            .request(method.clone(), format!("http://{}{path}", n.addr))
            .timeout(timeout)
            .header(cluster::auth::NONCE_HEADER, signed.nonce)
            .header(cluster::auth::TIME_HEADER, signed.time)
            .header(cluster::auth::PROOF_HEADER, signed.mac);
        let node = n.clone();
        async move {
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.json::<Value>().await {
                        Ok(v) => Ok((status, v)),
                        Err(e) => Err(format!("answer is not JSON: {e}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            (node, result)
        }
    });
    futures::future::join_all(calls).await
}

/// `GET /kamaitachi/api/data/v1/stats`.
pub async fn stats(client: &reqwest::Client, nodes: &[NodeView], key: &cluster::auth::ClusterKey) -> Local {
    let results = fan_out(
        client,
        nodes,
        reqwest::Method::GET,
        &format!("{API}/stats"),
        key,
        FAN_OUT_TIMEOUT,
    )
    .await;
    let mut totals = json!({"hits": 0u64, "misses": 0u64, "entries": 0u64, "bytes": 0u64, "evictions": 0u64});
    let mut per_node = Vec::new();
    let mut answered = 0;
    for (node, result) in results {
        match result {
            Ok((200, v)) => {
                answered += 1;
                let cache = &v["data"]["cache"];
                for k in ["hits", "misses", "entries", "bytes", "evictions"] {
                    let add = cache[k].as_u64().unwrap_or(0);
                    totals[k] = json!(totals[k].as_u64().unwrap_or(0) + add);
                }
                per_node.push(json!({"addr": node.addr, "role": node.role, "healthy": node.healthy, "stats": v["data"]}));
            }
            Ok((status, v)) => per_node.push(
                json!({"addr": node.addr, "role": node.role, "healthy": node.healthy,
                "error": format!("HTTP {status}: {}", v["status_msg"].as_str().unwrap_or(""))}),
            ),
            Err(e) => per_node
                .push(json!({"addr": node.addr, "role": node.role, "healthy": node.healthy, "error": e})),
        }
    }
    let hits = totals["hits"].as_u64().unwrap_or(0);
    let misses = totals["misses"].as_u64().unwrap_or(0);
    totals["hit_rate"] = json!(if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    });
    totals["nodes"] = json!(nodes.len());
    totals["nodes_answering"] = json!(answered);
    let data = json!({"nodes": per_node, "totals": totals});
    Local::json(200, envelope(0, "success", &data))
}

/// `POST /kamaitachi/api/data/v1/cache/reset`: the gateway checked the
/// caller's token; every proven node gets a call signed with the cluster key.
pub async fn cache_reset(
    client: &reqwest::Client,
    nodes: &[NodeView],
    key: &cluster::auth::ClusterKey,
) -> Local {
    let results = fan_out(
        client,
        nodes,
        reqwest::Method::POST,
        &format!("{API}/cache/reset"),
        key,
        FAN_OUT_TIMEOUT,
    )
    .await;
    let mut all_ok = !results.is_empty();
    let per_node: Vec<Value> = results
        .into_iter()
        .map(|(node, r)| match r {
            Ok((200, _)) => json!({"addr": node.addr, "reset": true}),
            Ok((status, v)) => {
                all_ok = false;
                json!({"addr": node.addr, "reset": false, "error": format!("HTTP {status}: {}", v["status_msg"].as_str().unwrap_or(""))})
            }
            Err(e) => {
                all_ok = false;
                json!({"addr": node.addr, "reset": false, "error": e})
            }
        })
        .collect();
    let (status, msg) = if all_ok {
        (200, "success")
    } else {
        (502, "some nodes did not reset their cache")
    };
    Local::json(
        status,
        envelope(if all_ok { 0 } else { 502 }, msg, &json!({"nodes": per_node})),
    )
}
