//! The gateway's configuration (`conf/gateway.ini` by default); every key is
//! commented in that file. A bad value stops the gateway at start with a
//! message naming the file, the key and what was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::logging::LogConfig;
use cluster::{ConfigError, EtcdConfig, IniFile, Mode, Role};

/// A node given in `[gateway] static_upstreams`.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticUpstream {
    pub addr: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub file: PathBuf,
    pub port: u16,
    pub bind: String,
    /// How others (Prometheus) reach this gateway: `[server] service_addr`,
    /// else `localhost:{port}` for a loopback or wildcard bind, else
    /// `{bind}:{port}`.
    pub service_addr: String,
    pub threads: usize,
    pub etcd: Option<EtcdConfig>,
    pub static_upstreams: Vec<StaticUpstream>,
    pub health_interval: Duration,
    pub max_tries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub eject_for: Duration,
    pub keepalive_pool: usize,
    /// Reads are proxied by the read path (`read_path/`); off: every
    /// request goes through pingora's proxy.
    pub read_fast_path: bool,
    pub grace_period_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub max_body_bytes: u64,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Client connections open at once; beyond it, 503 and close.
    pub max_connections: usize,
    pub qps: u32,
    pub burst: u32,
    pub admin_token_file: Option<PathBuf>,
    /// `[security] cluster_secret_file` (default `./data/cluster.secret`).
    pub cluster_secret_file: Option<PathBuf>,
    /// `[log]`: format, level, slow request threshold.
    pub log: LogConfig,
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let ini = IniFile::load(path)?;
        Self::from_ini(&ini)
    }

    pub fn from_ini(ini: &IniFile) -> Result<Self, ConfigError> {
        let mode = ini.mode()?;
        if mode != Mode::Gateway {
            return Err(ini.invalid("server", "mode", mode.as_str(), "gateway for kamaitachi-gateway"));
        }
        let port: u16 = ini.require("server", "port", "a TCP port (1-65535)")?;
        let bind = ini
            .get_str("server", "bind")
            .unwrap_or_else(|| "127.0.0.1".into());
        let service_addr = ini
            .get_str("server", "service_addr")
            .unwrap_or_else(|| match bind.as_str() {
                "127.0.0.1" | "0.0.0.0" | "::" | "::1" | "localhost" => format!("localhost:{port}"),
                host => format!("{host}:{port}"),
            });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads: usize = ini.get_or("server", "threads", cores, "a number of worker threads")?;
        let etcd = if ini.has_section("etcd") {
            Some(EtcdConfig::from_ini(ini)?)
        } else {
            None
        };
        let static_upstreams = match ini.get_str("gateway", "static_upstreams") {
            None => Vec::new(),
            Some(list) => parse_static(ini, &list)?,
        };
        if etcd.is_none() && static_upstreams.is_empty() {
            return Err(ini.invalid(
                "gateway",
                "static_upstreams",
                "",
                "an [etcd] section or a static list such as localhost:8080=master,localhost:8081=slave",
            ));
        }
        let ms = |key: &str, default: u64| -> Result<Duration, ConfigError> {
            let v: u64 = ini.get_or("gateway", key, default, "milliseconds")?;
            Ok(Duration::from_millis(v.max(1)))
        };
        let max_tries: usize = ini.get_or(
            "gateway",
            "max_tries",
            3,
            "a number of attempts per request (1-10)",
        )?;
        if !(1..=10).contains(&max_tries) {
            return Err(ini.invalid("gateway", "max_tries", &max_tries.to_string(), "1-10"));
        }
        Ok(GatewayConfig {
            file: ini.path().to_path_buf(),
            port,
            bind,
            service_addr,
            threads: threads.max(1),
            etcd,
            static_upstreams,
            health_interval: ms("health_interval_ms", 1000)?,
            max_tries,
            connect_timeout: ms("connect_timeout_ms", 500)?,
            read_timeout: ms("read_timeout_ms", 5000)?,
            eject_for: ms("eject_ms", 3000)?,
            keepalive_pool: ini.get_or("gateway", "keepalive_pool", 1024, "a connection count")?,
            read_fast_path: ini.get_or("gateway", "read_fast_path", true, "true or false")?,
            grace_period_secs: ini.get_or("gateway", "grace_period_secs", 0, "seconds")?,
            shutdown_timeout_secs: ini.get_or("gateway", "shutdown_timeout_secs", 2, "seconds")?,
            max_body_bytes: ini.get_or("limits", "max_body_bytes", 1 << 20, "a byte count")?,
            idle_timeout: Duration::from_secs(
                ini.get_or::<u64>("limits", "idle_timeout_secs", 60, "seconds")?
                    .max(1),
            ),
            request_timeout: Duration::from_secs(
                ini.get_or::<u64>("limits", "request_timeout_secs", 10, "seconds")?
                    .max(1),
            ),
            max_connections: ini
                .get_or::<usize>("limits", "max_connections", 10_000, "a connection count")?
                .max(1),
            qps: ini.get_or("limits", "qps", 0, "requests per second (0 = unlimited)")?,
            burst: ini.get_or("limits", "burst", 0, "requests (0 = same as qps)")?,
            admin_token_file: ini.get_str("security", "admin_token_file").map(PathBuf::from),
            cluster_secret_file: ini.get_str("security", "cluster_secret_file").map(PathBuf::from),
            log: LogConfig::from_ini(ini)?,
        })
    }
}

fn parse_static(ini: &IniFile, list: &str) -> Result<Vec<StaticUpstream>, ConfigError> {
    let expected = "host:port=master|slave, comma-separated";
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (addr, role) = item.split_once('=').unwrap_or((item, "slave"));
            let (addr, role) = (addr.trim(), role.trim());
            match Role::parse(role) {
                Some(role) if addr.contains(':') => Ok(StaticUpstream {
                    addr: addr.to_string(),
                    role,
                }),
                _ => Err(ini.invalid("gateway", "static_upstreams", item, expected)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_list_and_errors() {
        let ini = IniFile::parse(
            "g.ini",
            "[server]\nmode = gateway\nport = 9000\n[gateway]\nstatic_upstreams = localhost:8080=master, localhost:8081\n",
        )
        .unwrap();
        let cfg = GatewayConfig::from_ini(&ini).unwrap();
        assert_eq!(cfg.static_upstreams.len(), 2);
        assert_eq!(cfg.static_upstreams[1].role, Role::Slave);
        assert!(cfg.etcd.is_none());

        let ini = IniFile::parse("g.ini", "[server]\nmode = gateway\nport = 9000\n").unwrap();
        let msg = GatewayConfig::from_ini(&ini).unwrap_err().to_string();
        assert!(
            msg.contains("static_upstreams") && msg.contains("[etcd]"),
            "{msg}"
        );

        let ini = IniFile::parse("g.ini", "[server]\nmode = master\nport = 9000\n").unwrap();
        assert!(GatewayConfig::from_ini(&ini)
            .unwrap_err()
            .to_string()
            .contains("[server] mode"));
    }
}
