//! The system a fault run works on, as real processes on loopback: a
//! 3-member etcd ([`EtcdCluster`]), write-HA nodes and a gateway, with a
//! [`Proxy`] on every link a fault may slow or cut:
//!
//! - each node reaches each etcd member through a proxy of its own (its
//!   `[etcd] endpoints` are the proxies), so one node's etcd link can be
//!   slowed or cut without touching the others';
//! - each node advertises a proxy as its `service_addr`, so what comes *to*
//!   it from its peers — followers' polls, image copies, the gateway's
//!   requests and health checks — goes through that proxy; the test's
//!   clients and health checks use the node's own port.
//!
//! Nodes and the gateway are started from configs written here (as
//! `make cluster` writes them: cluster secret, admin token, etcd auth), so
//! they can be killed and started again on the same ports and data without
//! waiting for them to be healthy. Nothing here panics once the cluster
//! runs, except on a broken machine (a binary that cannot be spawned).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::client::health;
use super::etcd_cluster::{signal, EtcdCluster, MEMBERS};
use super::history::MARKET;
use super::proxy::{LinkMode, Proxy};
use crate::{
    db_fingerprint, eventually, free_port, gen_data, temp_dir, try_request_at, workspace_bin,
    write_cluster_secret, Process, TestDir, TOKEN,
};

/// How the cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Nodes; the first is `mode = master` with the data, the others start
    /// empty and copy it.
    pub nodes: usize,
    /// How many of them are candidates (the first `candidates` nodes).
    pub candidates: usize,
    /// `[etcd] ttl` (seconds).
    pub ttl: u64,
    pub sync_replicas: usize,
    pub sync_timeout_ms: u64,
    /// etcd auth on, as `make cluster` runs it.
    pub etcd_auth: bool,
    /// Subjects of the generated starting data.
    pub subjects: usize,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            candidates: 3,
            ttl: 2,
            sync_replicas: 1,
            sync_timeout_ms: 2000,
            etcd_auth: true,
            subjects: 50,
        }
    }
}

pub const PREFIX: &str = "/kmt-chaos";

pub struct ChaosNode {
    /// First, so it is killed before its proxies stop.
    process: Option<Process>,
    pub name: String,
    /// The node's own port (the test's clients use it).
    pub port: u16,
    pub db: PathBuf,
    pub candidate: bool,
    config: PathBuf,
    dir: PathBuf,
    /// What its peers reach it through (its `service_addr`).
    pub inbound: Proxy,
    /// Its link to each etcd member.
    pub etcd_links: Vec<Proxy>,
    starts: usize,
    paused: bool,
}

impl ChaosNode {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its address as registered in etcd (the inbound proxy's).
    pub fn advertised(&self) -> String {
        self.inbound.addr()
    }

    pub fn is_up(&self) -> bool {
        self.process.is_some() && !self.paused
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("node-{}.{}.log", self.name, self.starts));
        let mut cmd = Command::new(workspace_bin("kamaitachi-node"));
        cmd.arg("-config").arg(&self.config);
        self.process = Some(Process::spawn(&format!("node {}", self.name), &mut cmd, &log));
        self.paused = false;
    }

    /// kill -9 (resumed first when paused).
    pub fn kill9(&mut self) {
        self.resume();
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Starts it again on its data and config (no wait).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.process.as_ref().and_then(Process::pid) {
            signal(pid, "STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let (true, Some(pid)) = (self.paused, self.process.as_ref().and_then(Process::pid)) {
            signal(pid, "CONT");
        }
        self.paused = false;
    }

    pub fn health(&self) -> Option<serde_json::Value> {
        health(self.addr(), Duration::from_millis(700))
    }

    /// Its term while it says it leads.
    pub fn leading_term(&self) -> Option<i64> {
        self.is_up()
            .then(|| self.health())
            .flatten()
            .and_then(|h| h["term"].as_i64())
    }

    /// The tail of every log of this node.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.dir.join(format!("node-{}.{n}.log", self.name)))
                .unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {} (start {n}) ---\n", self.name));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }
}

pub struct ChaosGateway {
    pub port: u16,
    config: PathBuf,
    dir: PathBuf,
    process: Option<Process>,
    starts: usize,
}

impl ChaosGateway {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("gateway.{}.log", self.starts));
        let mut cmd = Command::new(workspace_bin("kamaitachi-gateway"));
        cmd.arg("-config").arg(&self.config);
        self.process = Some(Process::spawn("gateway", &mut cmd, &log));
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    pub fn is_up(&self) -> bool {
        self.process.is_some()
    }

    pub fn start(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.dir.join(format!("gateway.{n}.log"))).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- gateway (start {n}) ---\n"));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }
}

/// What every node's database holds at the end: write cells and the rows'
/// fingerprint.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    /// subject → net_profit of every cell of the run's market.
    pub cells: std::collections::BTreeMap<String, f64>,
    pub fingerprint: String,
}

/// The cluster. Declared fields drop in order: processes before proxies
/// and etcd, the directory last.
pub struct ChaosCluster {
    pub spec: ClusterSpec,
    pub gateway: ChaosGateway,
    pub nodes: Vec<ChaosNode>,
    pub etcd: EtcdCluster,
    dir: TestDir,
}

impl ChaosCluster {
    /// Starts etcd, the nodes (the first with the data; waits until it
    /// leads and every node is healthy) and the gateway (waits until it
    /// sees every node). Panics with the logs when that does not happen.
    pub fn start(spec: ClusterSpec) -> ChaosCluster {
        assert!(spec.nodes >= 1 && spec.candidates <= spec.nodes);
        let dir = TestDir::new(temp_dir("chaos"));
        let etcd = EtcdCluster::start(&dir, &format!("{PREFIX}/"), spec.etcd_auth);
        let token = dir.join("admin.token");
        std::fs::write(&token, TOKEN).expect("write token");
        let secret = write_cluster_secret(&dir);
        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            let name = ((b'a' + i as u8) as char).to_string();
            let port = free_port();
            let db = dir.join(format!("{name}.db"));
            if i == 0 {
                gen_data(&workspace_bin("kamaitachi-node"), &db, spec.subjects, 11);
            }
            let inbound = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
            let etcd_links: Vec<Proxy> = (0..MEMBERS)
                .map(|m| Proxy::start(etcd.endpoint(m).parse().expect("etcd endpoint")))
                .collect();
            let candidate = i < spec.candidates;
            let mode = if i == 0 { "master" } else { "slave" };
            let config = dir.join(format!("node-{name}.ini"));
            let endpoints: Vec<String> = etcd_links.iter().map(Proxy::addr).collect();
            let ini = format!(
                "[server]\nport = {port}\nmode = {mode}\nbind = 127.0.0.1\nservice_addr = {}\n\
                 [database]\npath = {}\n\
                 [cache]\nmax_bytes = 67108864\n\
                 [security]\nadmin_token_file = {}\ncluster_secret_file = {}\n\
                 [etcd]\nendpoints = {}\nprefix = {PREFIX}\nttl = {}\n{}\
                 [replication]\ncandidate = {candidate}\nsync_replicas = {}\nsync_timeout_ms = {}\n",
                inbound.addr(),
                db.display(),
                token.display(),
                secret.display(),
                endpoints.join(","),
                spec.ttl,
                etcd.ini_auth(),
                spec.sync_replicas,
                spec.sync_timeout_ms,
            );
            std::fs::write(&config, ini).expect("write node config");
            let mut node = ChaosNode {
                name,
                port,
                db,
                candidate,
                config,
                dir: dir.to_path_buf(),
                inbound,
                etcd_links,
                process: None,
                starts: 0,
                paused: false,
            };
            node.spawn();
            nodes.push(node);
            if i == 0 {
                let n = &nodes[0];
                assert!(
                    eventually(Duration::from_secs(30), || n.leading_term().is_some()),
                    "the node with the data did not lead: {:?}\n{}\n{}",
                    n.health(),
                    n.logs(40),
                    etcd.logs()
                );
            }
        }
        let gw_port = free_port();
        let gw_config = dir.join("gateway.ini");
        let ini = format!(
            "[server]\nport = {gw_port}\nmode = gateway\nthreads = 2\n\
             [security]\nadmin_token_file = {}\ncluster_secret_file = {}\n\
             [etcd]\nendpoints = {}\nprefix = {PREFIX}\n{}\
             [gateway]\nhealth_interval_ms = 300\neject_ms = 500\n",
            token.display(),
            secret.display(),
            etcd.endpoints(),
            etcd.ini_auth()
        );
        std::fs::write(&gw_config, ini).expect("write gateway config");
        let mut gateway = ChaosGateway {
            port: gw_port,
            config: gw_config,
            dir: dir.to_path_buf(),
            process: None,
            starts: 0,
        };
        gateway.spawn();
        let cluster = ChaosCluster {
            spec,
            gateway,
            nodes,
            etcd,
            dir,
        };
        let n = cluster.nodes.len() as u64;
        let gw = cluster.gateway.addr();
        assert!(
            eventually(Duration::from_secs(40), || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| n.health().is_some_and(|h| h["status"] == "ok"))
                    && try_request_at(gw, "GET", "/health", b"", &[])
                        .ok()
                        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                        .is_some_and(|h| h["healthy_nodes"] == n)
            }),
            "the cluster did not come up: {}",
            cluster.describe()
        );
        cluster
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node that says it leads, if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leading: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].leading_term().is_some())
            .collect();
        (leading.len() == 1).then(|| leading[0])
    }

    /// Every node's `/health` (or why not), one line each.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let h = if n.paused {
                    "paused".to_string()
                } else if n.process.is_none() {
                    "down".to_string()
                } else {
                    n.health()
                        .map_or_else(|| "no answer".to_string(), |h| h.to_string())
                };
                format!("node {} (:{}, {}): {h}\n", n.name, n.port, n.advertised())
            })
            .collect()
    }

    /// The tail of every log (nodes, gateway, etcd).
    pub fn logs(&self, lines: usize) -> String {
        let mut out: String = self.nodes.iter().map(|n| n.logs(lines)).collect();
        out.push_str(&self.gateway.logs(lines));
        out.push_str(&self.etcd.logs());
        out
    }

    /// Ends every fault: every link passes, paused processes resume, dead
    /// ones start again, etcd's members all run.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.inbound.set(LinkMode::Pass);
            for l in &n.etcd_links {
                l.set(LinkMode::Pass);
            }
            n.resume();
            if n.process.is_none() {
                n.spawn();
            }
        }
        self.etcd.heal();
        if !self.gateway.is_up() {
            self.gateway.spawn();
        }
    }

    /// Waits up to `timeout` until one node leads and every node is healthy
    /// at the leader's sequence, twice in a row 300 ms apart; `Err` says
    /// how far it got.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::new();
        let mut stable = 0;
        while started.elapsed() < timeout {
            let hs: Vec<Option<serde_json::Value>> = self.nodes.iter().map(ChaosNode::health).collect();
            let leaders = hs
                .iter()
                .flatten()
                .filter(|h| h["term"].as_i64().is_some())
                .count();
            let seqs: Vec<Option<u64>> = hs
                .iter()
                .map(|h| {
                    h.as_ref()
                        .filter(|h| h["status"] == "ok")
                        .and_then(|h| h["applied_seq"].as_u64())
                })
                .collect();
            let same = seqs.iter().all(|s| s.is_some() && *s == seqs[0]);
            if leaders == 1 && same {
                stable += 1;
                if stable >= 2 {
                    return Ok(started.elapsed());
                }
            } else {
                stable = 0;
            }
            last = format!("{leaders} leader(s), applied sequences {seqs:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!(
            "not converged after {timeout:?}: {last}\n{}",
            self.describe()
        ))
    }

    /// What every node's database holds now (read with SQLite, read-only).
    pub fn states(&self) -> Vec<NodeState> {
        self.nodes
            .iter()
            .map(|n| NodeState {
                name: n.name.clone(),
                cells: cells(&n.db),
                fingerprint: db_fingerprint(&n.db),
            })
            .collect()
    }

    /// kill -9 of every process (before the databases are read for good).
    pub fn stop_nodes(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        self.gateway.kill9();
    }
}

/// subject → net_profit of every cell of the run's market in `db`.
pub fn cells(db: &Path) -> std::collections::BTreeMap<String, f64> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Default::default();
    };
    let sql = "SELECT rv.subject, rv.value FROM report_values rv JOIN indicators i ON i.id = rv.indicator \
               WHERE i.code = 'net_profit' AND rv.subject >= ?1 AND rv.subject < ?2";
    let Ok(mut st) = conn.prepare(sql) else {
        return Default::default();
    };
    let lo = format!("{MARKET}:");
    let hi = format!("{MARKET};");
    st.query_map([lo, hi], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}
