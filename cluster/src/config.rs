//! INI configuration files, as in the original deployment guide.
//!
//! This module owns reading a file and turning its strings into typed values
//! with errors that name the file, the section and key, and what was expected
//! — the message an operator sees when a process refuses to start. Each
//! binary builds its own config struct on top of [`IniFile`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A configuration problem, always tied to the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: cannot read it: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("config file {file}: [{section}] {key} is missing; expected {expected}")]
    Missing {
        file: PathBuf,
        section: String,
        key: String,
        expected: String,
    },
    #[error("config file {file}: [{section}] {key} = {value:?} is invalid; expected {expected}")]
    Invalid {
        file: PathBuf,
        section: String,
        key: String,
        value: String,
        expected: String,
    },
}

/// The message for a port that cannot be bound, with what to do about it.
pub fn listen_error(addr: &str, port: u16, file: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        return format!(
            "port {port} is in use: cannot listen on {addr} (`ss -ltnp | grep :{port}` shows who holds it; \
             change [server] port in {})",
            file.display()
        );
    }
    format!(
        "cannot listen on {addr}: {e} (is another process using port {port}? `ss -ltnp | grep :{port}` shows it; \
         change [server] port in {})",
        file.display()
    )
}

/// Reads the admin bearer token named by `[security] admin_token_file`: the
/// file's content, trimmed, at least 16 characters.
pub fn read_admin_token(config: &Path, token_file: &Path) -> Result<String, String> {
    let what = format!(
        "config file {}: [security] admin_token_file {}",
        config.display(),
        token_file.display()
    );
    let token = std::fs::read_to_string(token_file).map_err(|e| format!("{what}: cannot read it: {e}"))?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(format!("{what}: the token must be at least 16 characters"));
    }
    Ok(token)
}

/// The admin token a process uses, and where it came from.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub token: String,
    pub file: PathBuf,
    /// The file did not exist and was made now.
    pub created: bool,
    /// The config named no file: `file` is the default.
    pub defaulted: bool,
}

impl AdminToken {
    /// The token of `[security] admin_token_file` if the config names one,
    /// else of [`default_admin_token`].
    pub fn resolve(config: &Path, configured: Option<&Path>, default_file: &Path) -> Result<Self, String> {
        match configured {
            Some(file) => read_admin_token(config, file).map(|token| AdminToken {
                token,
                file: file.to_path_buf(),
                created: false,
                defaulted: false,
            }),
            None => default_admin_token(config, default_file),
        }
    }

    /// One log line about a defaulted token; `None` for a configured one.
    pub fn note(&self, config: &Path) -> Option<String> {
        self.defaulted.then(|| {
            format!(
                "config file {}: no [security] admin_token_file; admin token in {} ({})",
                config.display(),
                self.file.display(),
                if self.created { "created" } else { "existing" }
            )
        })
    }
}

/// The admin token of a config that names no `[security] admin_token_file`
/// (the original's configs have no such section): `default_file`, made with
/// a random token (mode 600) if it does not exist yet. Processes started
/// from one directory, as the guide starts them, thus share one token, and
/// admin routes and replication work without opening them to anyone.
/// Several processes may race to make it: the file appears whole or not at
/// all (written aside, then hard-linked into place), and the loser reads the
/// winner's.
pub fn default_admin_token(config: &Path, default_file: &Path) -> Result<AdminToken, String> {
    let created = create_secret_file(default_file, 16, "admin token")?;
    read_admin_token(config, default_file).map(|token| AdminToken {
        token,
        file: default_file.to_path_buf(),
        created,
        defaulted: true,
    })
}

/// Makes `file` (mode 600) holding `bytes` random bytes in hex unless it
/// exists; written aside and hard-linked into place, so racing processes
/// all end up reading one whole file. Returns whether this call made it.
pub fn create_secret_file(file: &Path, bytes: usize, what: &str) -> Result<bool, String> {
    if file.exists() {
        return Ok(false);
    }
    let fail = |e: std::io::Error| format!("cannot create the {what} file {}: {e}", file.display());
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let secret = random_hex(bytes).map_err(fail)?;
    let mut aside = file.as_os_str().to_owned();
    aside.push(format!(".tmp-{}", std::process::id()));
    let aside = PathBuf::from(aside);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&aside)
            .map_err(fail)?;
        f.write_all(format!("{secret}\n").as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    let linked = std::fs::hard_link(&aside, file);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(fail(e)),
    }
}

fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The default admin token file of a gateway: `./data/admin.token`, the
/// one nodes with the default database use (see `kamaitachi-node`).
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "./data/admin.token";

/// The role a process plays, from `[server] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Master,
    Slave,
    Gateway,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Master => "master",
            Mode::Slave => "slave",
            Mode::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "master" => Ok(Mode::Master),
            "slave" => Ok(Mode::Slave),
            "gateway" => Ok(Mode::Gateway),
            _ => Err(()),
        }
    }
}

/// A parsed INI file: sections of `key = value`, `;` and `#` comments (also
/// after a value), keys case-sensitive.
#[derive(Debug, Clone)]
pub struct IniFile {
    path: PathBuf,
    sections: HashMap<String, HashMap<String, Option<String>>>,
}

impl IniFile {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Unreadable {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if it had been read from `path`.
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<Self, ConfigError> {
        let path = path.into();
        let mut ini = configparser::ini::Ini::new_cs();
        ini.set_inline_comment_symbols(Some(&[';', '#']));
        let sections = ini.read(text.to_string()).map_err(|e| ConfigError::Unreadable {
            file: path.clone(),
            reason: e,
        })?;
        Ok(IniFile { path, sections })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw value of `[section] key`, if present and not empty.
    pub fn raw(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_deref())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// A required value parsed as `T`; `expected` describes a valid value.
    pub fn require<T: FromStr>(&self, section: &str, key: &str, expected: &str) -> Result<T, ConfigError> {
        match self.raw(section, key) {
            None => Err(ConfigError::Missing {
                file: self.path.clone(),
                section: section.to_string(),
                key: key.to_string(),
                expected: expected.to_string(),
            }),
            Some(v) => v.parse().map_err(|_| self.invalid(section, key, v, expected)),
        }
    }

    /// An optional value parsed as `T`, or `default` when absent.
    pub fn get_or<T: FromStr>(
        &self,
        section: &str,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(section, key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| self.invalid(section, key, v, expected)),
        }
    }

    /// An optional string value.
    pub fn get_str(&self, section: &str, key: &str) -> Option<String> {
        self.raw(section, key).map(str::to_string)
    }

    /// An error for a value that was read but does not fit.
    pub fn invalid(&self, section: &str, key: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.path.clone(),
            section: section.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// Sets `[section] key = value`, as if the file said so (command-line
    /// overrides).
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.sections
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), Some(value.to_string()));
    }

    /// The keys of `[section]` that have a value, in no particular order.
    pub fn keys(&self, section: &str) -> Vec<&str> {
        self.sections
            .get(section)
            .map(|s| s.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether the file has a `[section]` header.
    pub fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    /// `[server] mode`, required.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        self.require("server", "mode", "one of master, slave, gateway")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
[server]
port = 8081
mode = slave                    ; master | slave | gateway
service_addr = localhost:8081   # what is registered in etcd

[cache]
max_bytes = 2147483648          ; hard bound on cached bytes
";

    #[test]
    fn reads_values_and_strips_inline_comments() {
        let ini = IniFile::parse("conf/slave.ini", SAMPLE).unwrap();
        assert_eq!(ini.require::<u16>("server", "port", "a port").unwrap(), 8081);
        assert_eq!(ini.mode().unwrap(), Mode::Slave);
        assert_eq!(
            ini.get_str("server", "service_addr").as_deref(),
            Some("localhost:8081")
        );
        assert_eq!(
            ini.require::<u64>("cache", "max_bytes", "bytes").unwrap(),
            2147483648
        );
    }

    #[test]
    fn missing_key_names_file_section_and_key() {
        let ini = IniFile::parse("conf/x.ini", "[server]\nport = 1\n").unwrap();
        let msg = ini.mode().unwrap_err().to_string();
        assert!(msg.contains("conf/x.ini"), "{msg}");
        assert!(msg.contains("[server] mode"), "{msg}");
        assert!(msg.contains("master, slave, gateway"), "{msg}");
    }

    #[test]
    fn invalid_value_names_value_and_expectation() {
        let ini = IniFile::parse("c.ini", "[server]\nmode = leader\nport = http\n").unwrap();
        let msg = ini.mode().unwrap_err().to_string();
        assert!(msg.contains("\"leader\""), "{msg}");
        let msg = ini
            .require::<u16>("server", "port", "a TCP port (1-65535)")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[server] port") && msg.contains("TCP port"), "{msg}");
    }

    #[test]
    fn default_admin_token_is_made_once_and_shared() {
        let dir = std::env::temp_dir().join(format!("kamaitachi-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("data/admin.token");
        let a = default_admin_token(Path::new("a.ini"), &file).unwrap();
        assert!(a.created && a.token.len() == 32, "{a:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = default_admin_token(Path::new("b.ini"), &file).unwrap();
        assert!(!b.created);
        assert_eq!(a.token, b.token, "a second process reads the first one's token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_file_is_named() {
        let msg = IniFile::load("/nonexistent/kamaitachi.ini")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/kamaitachi.ini"), "{msg}");
    }
}
