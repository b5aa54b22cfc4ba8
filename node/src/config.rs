//! The node's configuration, read from its INI file (`conf/master.ini` by
//! default). Every key is described in `conf/master.ini`; a missing or bad
//! value stops the node at start with a message naming file, key and what
//! was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{ConfigError, EtcdConfig, IniFile, Mode};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub file: PathBuf,
    pub mode: Mode,
    pub port: u16,
    /// Address to listen on; loopback unless set.
    pub bind: String,
    /// may worker threads; 0 = half the cores.
    pub workers: usize,
    pub service_name: String,
    pub service_addr: String,
    pub db_path: PathBuf,
    pub readers: usize,
    pub max_bytes: u64,
    pub snapshot_path: Option<PathBuf>,
    pub snapshot_interval: Duration,
    pub admin_token_file: Option<PathBuf>,
    /// The registry; `None` when the file has no `[etcd]` section.
    pub etcd: Option<EtcdConfig>,
    /// `[replication] master`: where a slave finds the master when etcd
    /// does not say.
    pub master: Option<String>,
    /// `[replication] log_retain`: change-log entries the master keeps.
    pub log_retain: u64,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// On SIGTERM, longest wait for requests in progress.
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let ini = IniFile::load(path)?;
        Self::from_ini(&ini)
    }

    pub fn from_ini(ini: &IniFile) -> Result<Self, ConfigError> {
        let mode = ini.mode()?;
        if mode == Mode::Gateway {
            return Err(ini.invalid("server", "mode", "gateway", "master or slave for kamaitachi-node"));
        }
        let port: u16 = ini.require("server", "port", "a TCP port (1-65535)")?;
        if port == 0 {
            return Err(ini.invalid("server", "port", "0", "a TCP port (1-65535)"));
        }
        let service_name = ini
            .get_str("server", "service_name")
            .unwrap_or_else(|| format!("kamaitachi-{mode}"));
        let service_addr = ini
            .get_str("server", "service_addr")
            .unwrap_or_else(|| format!("localhost:{port}"));
        let bind = ini
            .get_str("server", "bind")
            .unwrap_or_else(|| "127.0.0.1".into());
        let workers: usize = ini.get_or(
            "server",
            "workers",
            0,
            "a number of worker threads (0 = half the cores)",
        )?;
        let db_path =
            ini.require::<PathBuf>("database", "path", "the SQLite file path, e.g. ./data/master.db")?;
        let default_readers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let readers: usize = ini.get_or(
            "database",
            "readers",
            default_readers,
            "a number of reader threads (1-64)",
        )?;
        if !(1..=64).contains(&readers) {
            return Err(ini.invalid("database", "readers", &readers.to_string(), "1-64"));
        }
        let max_bytes: u64 = ini.require("cache", "max_bytes", "a byte count (0 disables the cache)")?;
        let snapshot_path = ini.get_str("cache", "snapshot_path").map(PathBuf::from);
        let minutes: u64 = ini.get_or(
            "cache",
            "snapshot_interval",
            10,
            "minutes between cache dumps (0 = only at stop)",
        )?;
        let admin_token_file = ini.get_str("security", "admin_token_file").map(PathBuf::from);
        let max_body_bytes: usize = ini.get_or("limits", "max_body_bytes", 1 << 20, "a byte count")?;
        let idle: u64 = ini.get_or("limits", "idle_timeout_secs", 60, "seconds")?;
        let request_secs: u64 = ini.get_or("limits", "request_timeout_secs", 10, "seconds")?;
        let drain_secs: u64 = ini.get_or("limits", "drain_timeout_secs", 10, "seconds")?;
        let max_connections: usize = ini.get_or("limits", "max_connections", 10_000, "a connection count")?;
        let etcd = if ini.has_section("etcd") {
            Some(EtcdConfig::from_ini(ini)?)
        } else {
            None
        };
        let master = ini.get_str("replication", "master");
        if mode == Mode::Slave && master.is_none() && etcd.is_none() {
            return Err(ini.invalid(
                "replication",
                "master",
                "",
                "host:port of the master (or an [etcd] section to find it) for a slave",
            ));
        }
        let log_retain: u64 =
            ini.get_or("replication", "log_retain", 100_000, "a number of changes (>= 1)")?;
        Ok(NodeConfig {
            file: ini.path().to_path_buf(),
            mode,
            port,
            bind,
            workers,
            service_name,
            service_addr,
            db_path,
            readers,
            max_bytes,
            snapshot_path,
            snapshot_interval: Duration::from_secs(minutes * 60),
            admin_token_file,
            etcd,
            master,
            log_retain: log_retain.max(1),
            max_body_bytes,
            idle_timeout: Duration::from_secs(idle.max(1)),
            request_timeout: Duration::from_secs(request_secs.max(1)),
            drain_timeout: Duration::from_secs(drain_secs.min(3600)),
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_mode_is_refused_with_file_and_key() {
        let ini = IniFile::parse("conf/g.ini", "[server]\nmode = gateway\nport = 9000\n").unwrap();
        let msg = NodeConfig::from_ini(&ini).unwrap_err().to_string();
        assert!(
            msg.contains("conf/g.ini") && msg.contains("[server] mode"),
            "{msg}"
        );
    }

    #[test]
    fn database_path_is_required() {
        let ini = IniFile::parse(
            "c.ini",
            "[server]\nmode = master\nport = 8080\n[cache]\nmax_bytes = 1\n",
        )
        .unwrap();
        let msg = NodeConfig::from_ini(&ini).unwrap_err().to_string();
        assert!(msg.contains("[database] path"), "{msg}");
    }
}
