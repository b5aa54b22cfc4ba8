//! A real `kamaitachi-gateway` process on a free loopback port, in a
//! directory of its own (config, admin token, cluster secret, log), killed
//! when dropped. Its upstreams come from the `[gateway]`/`[etcd]` lines a
//! test passes; active health checks run every 300 ms so tests see nodes
//! come and go quickly. [`Gateway::start_on`] runs it inside a host of a
//! [`crate::TestNet`], bound to the host's address.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::Process;
use crate::{
    eventually, free_port, request_at, temp_dir, try_request_at, workspace_bin, write_cluster_secret,
    NetHost, Resp, TestDir, TOKEN,
};

pub struct Gateway {
    pub port: u16,
    /// Where it listens: `127.0.0.1:PORT`, or its host's `IP:PORT`.
    pub addr: SocketAddr,
    pub log: PathBuf,
    process: Process,
    /// Last, so it is removed after the process is gone.
    _dir: TestDir,
}

impl Gateway {
    /// The workspace's `kamaitachi-gateway` with `extra` (`[gateway]`,
    /// `[etcd]`, `[limits]`… lines) appended to its config.
    pub fn start(extra: &str) -> Gateway {
        Gateway::start_with_bin(&workspace_bin("kamaitachi-gateway"), extra)
    }

    /// [`Gateway::start`] with the binary `bin`; waits until it answers.
    pub fn start_with_bin(bin: &Path, extra: &str) -> Gateway {
        Gateway::launch(bin, extra, None)
    }

    /// The workspace's gateway inside `host`'s namespace, bound to its
    /// address (`bind` and `service_addr`), with `extra` as for
    /// [`Gateway::start`].
    pub fn start_on(host: &NetHost, extra: &str) -> Gateway {
        Gateway::launch(&workspace_bin("kamaitachi-gateway"), extra, Some(host))
    }

    fn launch(bin: &Path, extra: &str, host: Option<&NetHost>) -> Gateway {
        let dir = TestDir::new(temp_dir("gateway"));
        let port = free_port();
        let config = dir.join("gateway.ini");
        let token = dir.join("admin.token");
        std::fs::write(&token, TOKEN).expect("write token");
        let secret = write_cluster_secret(&dir);
        let (addr, bind) = match host {
            Some(h) => (
                h.socket(port),
                format!("bind = {}\nservice_addr = {}\n", h.ip, h.addr(port)),
            ),
            None => (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), String::new()),
        };
        let ini = format!(
            "[server]\nport = {port}\nmode = gateway\nthreads = 2\n{bind}\
             [security]\nadmin_token_file = {}\ncluster_secret_file = {}\n{extra}",
            token.display(),
            secret.display()
        );
        let ini = if ini.contains("[gateway]") {
            ini.replace("[gateway]\n", "[gateway]\nhealth_interval_ms = 300\n")
        } else {
            format!("{ini}\n[gateway]\nhealth_interval_ms = 300\n")
        };
        std::fs::write(&config, ini).expect("write config");
        let log = dir.join("gateway.log");
        let mut cmd = match host {
            Some(h) => h.command(bin),
            None => Command::new(bin),
        };
        let mut process = Process::spawn("gateway", cmd.arg("-config").arg(&config), &log);
        process.wait_ready(Duration::from_secs(20), "did not start", || {
            try_request_at(addr, "GET", "/metrics", b"", &[]).is_ok()
        });
        Gateway {
            port,
            addr,
            log,
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn health(&self) -> serde_json::Value {
        request_at(self.addr, "GET", "/health", b"", &[]).json()
    }

    /// Waits until `/health` lists `n` usable nodes.
    pub fn wait_nodes(&self, n: u64) {
        assert!(
            eventually(Duration::from_secs(15), || self.health()["healthy_nodes"] == n),
            "gateway never saw {n} healthy nodes: {}",
            self.health()
        );
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        request_at(self.addr, "POST", path, body.as_bytes(), &[])
    }

    /// The process id; 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    /// SIGTERM; returns how long the gateway took to exit.
    pub fn stop(&mut self) -> Duration {
        self.process.stop(Duration::from_secs(30)).1
    }
}
