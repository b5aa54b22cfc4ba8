//! Monitoring with a real Prometheus (Debian's, installed by
//! scripts/install-deps.sh): the config in deploy/prometheus/ finds every
//! node and the gateway through the gateway's /prometheus/targets (a node
//! started later too), its rules load (and pass `promtool check rules`), the
//! cluster hit rate has a value, and every expression of the Grafana
//! dashboard in deploy/grafana/ returns a series.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A Prometheus process; killed when dropped.
struct Prometheus {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    /// Renders deploy/prometheus/ for a gateway on `gateway_port` (and a 1 s
    /// scrape interval, so rates exist within seconds) and starts it.
    fn start(dir: &Path, gateway_port: u16) -> Prometheus {
        let conf = dir.join("prometheus");
        std::fs::create_dir_all(&conf).unwrap();
        let yml = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml")).unwrap();
        assert!(yml.contains("localhost:9000/prometheus/targets"), "{yml}");
        let yml = yml
            .replace("localhost:9000", &format!("localhost:{gateway_port}"))
            .replace("interval: 5s", "interval: 1s");
        std::fs::write(conf.join("prometheus.yml"), yml).unwrap();
        std::fs::copy(deploy().join("prometheus/rules.yml"), conf.join("rules.yml")).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn prometheus (scripts/install-deps.sh installs it)");
        let mut p = Prometheus { port, child, log };
        let ready = eventually(Duration::from_secs(30), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}: {}", p.log_text());
            }
            try_request(port, "GET", "/-/ready", b"", &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "prometheus not ready: {}", p.log_text());
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/{path}`: the `data` of a successful answer.
    /// (Prometheus answers large results chunked: a full client reads them.)
    fn api(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let mut resp = ureq::get(&url).call().unwrap_or_else(|e| panic!("{url}: {e}"));
        let text = resp
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("query?query={}", percent_encode(expr)))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Active scrape targets: instance -> health.
    fn targets(&self) -> Vec<(String, String)> {
        self.api("targets?state=active")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["instance"].as_str().unwrap_or("").to_string(),
                    t["health"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("grafana/kamaitachi.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

#[test]
fn prometheus_finds_every_node_and_the_dashboard_queries_answer() {
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(deploy().join("prometheus/rules.yml"))
        .output()
        .expect("promtool (from Debian's prometheus package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let dir = temp_dir("monitor");
    let etcd = Etcd::start(&dir);
    let master = registered_node(&etcd, "master");
    let slave = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    assert!(eventually(Duration::from_secs(20), || {
        request(gw.port, "GET", "/health", b"", &[]).json()["count"] == 2
    }));

    // The discovery document itself.
    let r = request(gw.port, "GET", "/prometheus/targets", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let groups = r.json();
    let listed: Vec<(String, String)> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["targets"][0].as_str().unwrap().to_string(),
                g["labels"]["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (port, role) in [(master.port, "master"), (slave.port, "slave")] {
        assert!(
            listed.contains(&(format!("localhost:{port}"), role.to_string())),
            "{listed:?}"
        );
    }
    assert!(
        listed.contains(&(format!("localhost:{}", gw.port), "gateway".into())),
        "{listed:?}"
    );

    // Some traffic, so the rates and the hit rate have something to say.
    for i in 0..60 {
        let body = snapshot_body(&subject(i % 7));
        let r = request(
            gw.port,
            "POST",
            "/data/kamaitachi/api/data/v1/snapshot",
            body.as_bytes(),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let prom = Prometheus::start(&dir, gw.port);
    let all_up = |want: &[u16], prom: &Prometheus| {
        let t = prom.targets();
        want.iter().all(|p| {
            t.iter()
                .any(|(inst, h)| inst == &format!("localhost:{p}") && h == "up")
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || all_up(
            &[master.port, slave.port, gw.port],
            &prom
        )),
        "targets: {:?}\n{}",
        prom.targets(),
        prom.log_text()
    );
    for port in [master.port, slave.port] {
        let up = prom.query(&format!("up{{job=\"kamaitachi\",instance=\"localhost:{port}\"}}"));
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!(up[0]["value"][1], "1");
    }

    // The cluster hit rate (a recording rule) has a value.
    assert!(
        eventually(Duration::from_secs(20), || !prom
            .query("kamaitachi:cache_hit_rate")
            .is_empty()),
        "no hit rate"
    );
    let rate: f64 = prom.query("kamaitachi:cache_hit_rate")[0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0.0..=1.0).contains(&rate) && rate > 0.5,
        "60 reads of 7 subjects mostly hit: {rate}"
    );

    // The rules are loaded and healthy.
    let groups = prom.api("rules")["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rules: Vec<Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 8, "{groups:?}");
    assert!(
        rules
            .iter()
            .all(|r| r["health"] == "ok" || r["health"] == "unknown"),
        "{rules:?}"
    );
    assert!(rules.iter().any(|r| r["name"] == "KamaitachiNodeDown"));

    // Every dashboard expression returns a series (rates need two scrapes).
    for expr in dashboard_exprs() {
        assert!(
            eventually(Duration::from_secs(20), || !prom.query(&expr).is_empty()),
            "dashboard expression returns nothing: {expr}"
        );
    }

    // A node added later is found without touching the config.
    let later = registered_node(&etcd, "slave");
    assert!(
        eventually(Duration::from_secs(30), || all_up(&[later.port], &prom)),
        "the added node is not scraped: {:?}",
        prom.targets()
    );
    drop((master, slave, later));
}
