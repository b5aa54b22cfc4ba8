//! The operator's status page, in the spirit of HAProxy's stats page:
//! `GET /status` (HTML) and `GET /status.json` (what the page reads).
//!
//! One row per node the gateway knows: role, state (up, ejected, down),
//! data version, lag, cache bytes / max, hit rate (from the node's `/stats`,
//! asked with a short timeout), requests per second and p99 of the answers
//! this gateway relayed from it (its own counters, see
//! `upstreams::Traffic`), and whether the registry lists it; then cluster
//! totals, the master (leader) and the registry's view.
//!
//! The page has no external assets (it must work offline): inline CSS and a
//! small inline script. The first state is embedded in the page, so it is
//! complete at load; the script then re-reads `/status.json` every 2 s and
//! turns a node's row red once the gateway's health check marks it down.
//! Every value is put into the page as text (`textContent`), never as
//! markup: registry entries come from etcd and are not trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cluster::{Discovery, Role};
use serde_json::{json, Value};

use crate::local::Local;
use crate::own_routes::fan_out;
use crate::routing::API;
use crate::upstreams::NodeView;

/// How long the page waits for each node's `/stats`.
const STATS_TIMEOUT: Duration = Duration::from_millis(800);

/// The state the page shows: nodes, totals, leader, registry.
pub async fn report(
    client: &reqwest::Client,
    nodes: &[NodeView],
    registry: Option<&Discovery>,
    gateway_addr: &str,
    key: &cluster::auth::ClusterKey,
) -> Value {
    let stats = fan_out(
        client,
        nodes,
        reqwest::Method::GET,
        &format!("{API}/stats"),
        key,
        STATS_TIMEOUT,
    )
    .await;
    let registered: Vec<(String, String, Role)> = registry
        .map(|d| {
            d.services()
                .iter()
                .map(|e| (e.key.clone(), e.info.addr.clone(), e.info.role))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let (mut bytes, mut max_bytes, mut hits, mut misses, mut answered) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (node, result) in stats {
        let state = match (node.healthy, node.ejected) {
            (false, _) => "down",
            (true, true) => "ejected",
            (true, false) => "up",
        };
        let mut row = json!({
            "addr": node.addr,
            "role": node.role,
            "state": state,
            "registered": registered.iter().any(|(_, a, _)| *a == node.addr),
            "answered": node.answered,
            "p99_ms": node.p99_ms,
        });
        answered += node.answered;
        match result {
            Ok((200, v)) => {
                let d = &v["data"];
                let c = &d["cache"];
                let u = |x: &Value| x.as_u64().unwrap_or(0);
                bytes += u(&c["bytes"]);
                max_bytes += u(&c["max_bytes"]);
                hits += u(&c["hits"]);
                misses += u(&c["misses"]);
                row["data_version"] = d["data_version"].clone();
                row["lag"] = d["replication"]["lag"].clone();
                row["cache_bytes"] = c["bytes"].clone();
                row["cache_max_bytes"] = c["max_bytes"].clone();
                row["hit_rate"] = c["hit_rate"].clone();
            }
            Ok((status, v)) => {
                row["error"] = json!(format!(
                    "HTTP {status}: {}",
                    v["status_msg"].as_str().unwrap_or("")
                ));
            }
            Err(e) => row["error"] = json!(e),
        }
        rows.push(row);
    }
    let leader = nodes
        .iter()
        .find(|n| n.role == Role::Master && n.healthy && !n.ejected)
        .map(|n| n.addr.clone());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "gateway": gateway_addr,
        "time_ms": now_ms,
        "leader": leader,
        "nodes": rows,
        "totals": {
            "nodes": nodes.len(),
            "up": nodes.iter().filter(|n| n.healthy && !n.ejected).count(),
            "answered": answered,
            "cache_bytes": bytes,
            "cache_max_bytes": max_bytes,
            "hit_rate": if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
        },
        "registry": match registry {
            None => json!({"source": "static list", "synced": true, "entries": []}),
            Some(d) => json!({
                "source": "etcd",
                "synced": d.synced(),
                "entries": registered
                    .iter()
                    .map(|(key, addr, role)| json!({"key": key, "addr": addr, "role": role}))
                    .collect::<Vec<_>>(),
            }),
        },
    })
}

/// `GET /status.json`.
pub fn json_answer(report: &Value) -> Local {
    Local::json(200, Bytes::from(report.to_string()))
}

/// `GET /status`: the page, with `report` as its first state.
pub fn page(report: &Value) -> Local {
    // Inside <script>, "</" would end the element: JSON allows "<" escaped.
    let initial = report.to_string().replace('<', "\\u003c");
    Local {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(PAGE.replace("/*INITIAL*/null", &initial)),
    }
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Kamaitachi status</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
  h1 { font-size: 18px; margin: 0 0 4px; }
  .meta { color: #555; margin-bottom: 12px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
  th { background: #e8e8f0; }
  td.l, th.l { text-align: left; }
  tr.up td { background: #e6f6e6; }
  tr.ejected td { background: #fff3cd; }
  tr.down td { background: #f8d0d0; color: #700; font-weight: 600; }
  tr.totals td { background: #eef; font-weight: 600; }
  .small { color: #666; font-size: 12px; }
  h2 { font-size: 15px; margin: 16px 0 4px; }
</style>
</head>
<body>
<h1>Kamaitachi cluster</h1>
<div class="meta">gateway <span id="gateway"></span> · leader (master) <b id="leader"></b> ·
  updated <span id="updated"></span> · refreshes every 2 s</div>
<table>
  <thead><tr>
    <th class="l">node</th><th class="l">role</th><th class="l">state</th><th>data version</th><th>lag</th>
    <th>cache bytes / max</th><th>hit rate</th><th>req/s</th><th>p99 ms</th><th class="l">registry</th><th class="l">note</th>
  </tr></thead>
  <tbody id="nodes"></tbody>
</table>
<h2>Registry</h2>
<div class="small" id="registry"></div>
<script id="initial" type="application/json">/*INITIAL*/null</script>
<script>
"use strict";
let previous = null;
function mb(n) { return (n / 1048576).toFixed(1) + " MiB"; }
function pct(x) { return (typeof x === "number") ? (x * 100).toFixed(1) + " %" : "–"; }
function cell(tr, text, left) {
  const td = document.createElement("td");
  td.textContent = (text === undefined || text === null) ? "–" : String(text);
  if (left) td.className = "l";
  tr.appendChild(td);
}
function render(s) {
  document.getElementById("gateway").textContent = s.gateway;
  document.getElementById("leader").textContent = s.leader || "none";
  document.getElementById("updated").textContent = new Date(s.time_ms).toLocaleTimeString();
  const secs = previous ? (s.time_ms - previous.time_ms) / 1000 : 0;
  const before = {};
  if (previous) for (const n of previous.nodes) before[n.addr] = n.answered;
  const body = document.getElementById("nodes");
  body.textContent = "";
  for (const n of s.nodes) {
    const tr = document.createElement("tr");
    tr.className = n.state;
    tr.dataset.addr = n.addr;
    tr.dataset.role = n.role;
    tr.dataset.state = n.state;
    cell(tr, n.addr, true);
    cell(tr, n.role, true);
    cell(tr, n.state.toUpperCase(), true);
    cell(tr, n.data_version);
    cell(tr, n.lag);
    cell(tr, (n.cache_bytes === undefined) ? null : mb(n.cache_bytes) + " / " + mb(n.cache_max_bytes));
    cell(tr, pct(n.hit_rate));
    cell(tr, (secs > 0 && n.addr in before) ? ((n.answered - before[n.addr]) / secs).toFixed(1) : null);
    cell(tr, n.p99_ms);
    cell(tr, n.registered ? "listed" : "not listed", true);
    cell(tr, n.error || "", true);
    body.appendChild(tr);
  }
  const t = s.totals;
  const tr = document.createElement("tr");
  tr.className = "totals";
  cell(tr, "cluster: " + t.up + " of " + t.nodes + " up", true);
  cell(tr, "", true); cell(tr, "", true); cell(tr, ""); cell(tr, "");
  cell(tr, mb(t.cache_bytes) + " / " + mb(t.cache_max_bytes));
  cell(tr, pct(t.hit_rate));
  let rate = null;
  if (previous && secs > 0) rate = ((t.answered - previous.totals.answered) / secs).toFixed(1);
  cell(tr, rate); cell(tr, ""); cell(tr, "", true); cell(tr, "", true);
  body.appendChild(tr);
  const reg = document.getElementById("registry");
  reg.textContent = s.registry.source + (s.registry.synced ? "" : " (not synced yet)") + ": " +
    (s.registry.entries.length ? s.registry.entries.map(e => e.key + " → " + e.role).join(" · ") : "no entries");
  previous = s;
}
const first = JSON.parse(document.getElementById("initial").textContent);
if (first) render(first);
async function refresh() {
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (r.ok) render(await r.json());
  } catch (e) {
    document.getElementById("updated").textContent = "gateway unreachable (" + e + ")";
  }
}
setInterval(refresh, 2000);
</script>
</body>
</html>
"##;
