//! The node's configuration, read from its INI file (`conf/master.ini` by
//! default). Every key is described in `conf/master.ini`; a missing or bad
//! value stops the node at start with a message naming file, key and what
//! was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::logging::LogConfig;
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
    /// The file had no `[database] path`: `db_path` was derived from the
    /// service name and port (see [`default_db_path`]).
    pub db_path_defaulted: bool,
    /// Keys of the file that are read but have no effect here (the
    /// original's MySQL settings), for one log line at start.
    pub ignored_keys: Vec<String>,
    pub readers: usize,
    pub max_bytes: u64,
    pub snapshot_path: Option<PathBuf>,
    pub snapshot_interval: Duration,
    /// `[cache] preload = all`: warm the cache in the background at start
    /// and after a full sync.
    pub preload: bool,
    pub admin_token_file: Option<PathBuf>,
    /// `[security] cluster_secret_file`: what nodes and gateways prove to
    /// each other (never the admin token).
    pub cluster_secret_file: Option<PathBuf>,
    /// The registry; `None` when the file has no `[etcd]` section.
    pub etcd: Option<EtcdConfig>,
    /// `[replication] master`: where a slave finds the master when etcd
    /// does not say.
    pub master: Option<String>,
    /// `[replication] log_retain`: change-log entries the master keeps.
    pub log_retain: u64,
    /// Write availability (issue 14): campaigns for the lead through etcd.
    /// `mode = master`, or `[replication] candidate = true` on a slave.
    /// Only meaningful with an `[etcd]` section.
    pub candidate: bool,
    /// `[replication] sync_replicas`: candidate followers that must have
    /// applied a write before it is acknowledged (default 1).
    pub sync_replicas: usize,
    /// `[replication] sync_timeout_ms`: longest wait for them (default 5000).
    pub sync_timeout: Duration,
    /// `[replication] sync_strict`: refuse writes (503) while fewer
    /// candidates than `sync_replicas` are connected, instead of
    /// acknowledging with the ones connected (default false).
    pub sync_strict: bool,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// On SIGTERM, longest wait for requests in progress.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    /// `[log]`: format, level, slow request threshold.
    pub log: LogConfig,
}

impl NodeConfig {
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
        let configured_db: Option<PathBuf> = ini.get_str("database", "path").map(PathBuf::from);
        let db_path_defaulted = configured_db.is_none();
        let db_path = configured_db.unwrap_or_else(|| default_db_path(&service_name, port));
        let mut ignored_keys: Vec<String> = ini
            .keys("database")
            .into_iter()
            .filter(|k| LEGACY_DATABASE_KEYS.contains(k))
            .map(|k| format!("[database] {k}"))
            .collect();
        ignored_keys.sort();
        // Half the cores, but at least two: a big cold question is split
        // across the readers, and one reader would serialise it.
        let default_readers = std::thread::available_parallelism().map_or(2, |n| (n.get() / 2).max(2));
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
        let preload = match ini.get_str("cache", "preload").as_deref().map(str::trim) {
            None | Some("off") => false,
            Some("all") => true,
            Some(other) => return Err(ini.invalid("cache", "preload", other, "all or off")),
        };
        let admin_token_file = ini.get_str("security", "admin_token_file").map(PathBuf::from);
        let cluster_secret_file = ini.get_str("security", "cluster_secret_file").map(PathBuf::from);
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
        let bool_key = |key: &str, default: bool| -> Result<bool, ConfigError> {
            match ini.get_str("replication", key).as_deref().map(str::trim) {
                None => Ok(default),
                Some("true" | "yes" | "on" | "1") => Ok(true),
                Some("false" | "no" | "off" | "0") => Ok(false),
                Some(other) => Err(ini.invalid("replication", key, other, "true or false")),
            }
        };
        let candidate = mode == Mode::Master || bool_key("candidate", false)?;
        let sync_strict = bool_key("sync_strict", false)?;
        let sync_replicas: usize = ini.get_or(
            "replication",
            "sync_replicas",
            1,
            "a number of candidate followers (0-16)",
        )?;
        if sync_replicas > 16 {
            return Err(ini.invalid("replication", "sync_replicas", &sync_replicas.to_string(), "0-16"));
        }
        let sync_ms: u64 = ini.get_or("replication", "sync_timeout_ms", 5000, "milliseconds (10-600000)")?;
        if !(10..=600_000).contains(&sync_ms) {
            return Err(ini.invalid(
                "replication",
                "sync_timeout_ms",
                &sync_ms.to_string(),
                "milliseconds (10-600000)",
            ));
        }
        Ok(NodeConfig {
            file: ini.path().to_path_buf(),
            mode,
            port,
            bind,
            workers,
            service_name,
            service_addr,
            db_path,
            db_path_defaulted,
            ignored_keys,
            readers,
            max_bytes,
            snapshot_path,
            snapshot_interval: Duration::from_secs(minutes * 60),
            preload,
            admin_token_file,
            cluster_secret_file,
            etcd,
            master,
            log_retain: log_retain.max(1),
            candidate,
            sync_replicas,
            sync_timeout: Duration::from_millis(sync_ms),
            sync_strict,
            max_body_bytes,
            idle_timeout: Duration::from_secs(idle.max(1)),
            request_timeout: Duration::from_secs(request_secs.max(1)),
            drain_timeout: Duration::from_secs(drain_secs.min(3600)),
            max_connections,
            log: LogConfig::from_ini(ini)?,
        })
    }
}

/// The `[database]` keys of the original's configs (a MySQL connection it
/// never used): accepted so its files start unchanged, and ignored.
const LEGACY_DATABASE_KEYS: &[&str] = &[
    "host", "port", "username", "password", "database", "max_idle", "max_open",
];

/// The database of a node whose file names none, as the original's configs
/// do: `./data/{service_name}-{port}.db`. The guide tells users to copy
/// `slave.ini` and change the port, so two such copies get two files.
pub fn default_db_path(service_name: &str, port: u16) -> PathBuf {
    let name: String = service_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    PathBuf::from(format!("./data/{name}-{port}.db"))
}

/// The admin token of a node whose file names none: `admin.token` beside
/// its database (`./data/admin.token` for the default database), where a
/// master and the slaves started from the same directory find the same one.
pub fn default_cluster_secret_file(db_path: &Path) -> PathBuf {
    match db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join("cluster.secret"),
        None => PathBuf::from("cluster.secret"),
    }
}

/// The admin token of a node whose file names none (see above).
pub fn default_admin_token_file(db_path: &Path) -> PathBuf {
    match db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join("admin.token"),
        None => PathBuf::from("admin.token"),
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

    /// The guide's slave.ini, copied and given another port, as its
    /// "start Slave2" step says.
    const GUIDE_SLAVE: &str = "\
[server]
port = 8081
mode = slave
service_name = kamaitachi-slave
service_addr = localhost:8081

[cache]
max_bytes = 2147483648
snapshot_path = ./data/slave_snapshot.dat
snapshot_interval = 10

[etcd]
endpoints = localhost:2379
prefix = /kamaitachi
ttl = 10
";

    #[test]
    fn database_path_defaults_per_service_and_port() {
        let a = NodeConfig::from_ini(&IniFile::parse("slave.ini", GUIDE_SLAVE).unwrap()).unwrap();
        let copy = GUIDE_SLAVE.replace("8081", "8082");
        let b = NodeConfig::from_ini(&IniFile::parse("slave2.ini", &copy).unwrap()).unwrap();
        assert!(a.db_path_defaulted && b.db_path_defaulted);
        assert_eq!(a.db_path, PathBuf::from("./data/kamaitachi-slave-8081.db"));
        assert_ne!(a.db_path, b.db_path, "copies with another port get another file");
        assert_eq!(
            default_db_path("a/../b c", 1),
            PathBuf::from("./data/a____b_c-1.db")
        );
        let explicit = format!("{GUIDE_SLAVE}[database]\npath = /x/y.db\n");
        let c = NodeConfig::from_ini(&IniFile::parse("s.ini", &explicit).unwrap()).unwrap();
        assert_eq!(
            (c.db_path, c.db_path_defaulted),
            (PathBuf::from("/x/y.db"), false)
        );
    }

    #[test]
    fn preload_is_all_or_off() {
        let base = "[server]\nmode = master\nport = 8080\n[database]\npath = x.db\n[cache]\nmax_bytes = 1\n";
        let parse =
            |extra: &str| NodeConfig::from_ini(&IniFile::parse("c.ini", &format!("{base}{extra}")).unwrap());
        assert!(!parse("").unwrap().preload);
        assert!(parse("preload = all\n").unwrap().preload);
        assert!(!parse("preload = off\n").unwrap().preload);
        let msg = parse("preload = ring\n").unwrap_err().to_string();
        assert!(
            msg.contains("[cache] preload") && msg.contains("all or off"),
            "{msg}"
        );
    }

    #[test]
    fn the_originals_mysql_keys_are_accepted_and_reported() {
        let text = format!(
            "{GUIDE_SLAVE}[database]\nhost = localhost\nport = 3306\nusername = root\npassword = password\n"
        );
        let c = NodeConfig::from_ini(&IniFile::parse("s.ini", &text).unwrap()).unwrap();
        assert!(c.db_path_defaulted);
        assert_eq!(c.port, 8081, "[database] port is not the server's");
        assert_eq!(
            c.ignored_keys,
            [
                "[database] host",
                "[database] password",
                "[database] port",
                "[database] username"
            ]
        );
    }
}
