//! Logging, the same for every process: `[log] format = text | json` and
//! `[log] level` in its INI file (`RUST_LOG` overrides the level).
//!
//! JSON lines carry `timestamp`, `level`, `target`, the message under
//! `fields.message`, and the event's structured fields beside it
//! (`request_id`, `node`, `seq`, …), so ELK or Loki index them without
//! parsing text. Logging is set up before the rest of the config is read,
//! so a config error is itself logged in the chosen format; a file that
//! cannot be read yet gives the defaults (the config load then names the
//! problem).

use std::path::Path;

use crate::config::{ConfigError, IniFile};

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]` of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,kamaitachi_node=debug`.
    pub level: String,
    /// Requests slower than this are logged with their request id.
    pub slow_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            slow_ms: 1000,
        }
    }
}

impl LogConfig {
    pub fn from_ini(ini: &IniFile) -> Result<Self, ConfigError> {
        let format = match ini.get_str("log", "format").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ini.invalid("log", "format", other, "text or json")),
        };
        let level = ini.get_str("log", "level").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(ini.invalid(
                "log",
                "level",
                &level,
                "a level (error, warn, info, debug, trace) or a filter such as info,kamaitachi_node=debug",
            ));
        }
        let slow_ms = ini.get_or("log", "slow_ms", 1000, "milliseconds")?;
        Ok(LogConfig {
            format,
            level,
            slow_ms,
        })
    }

    /// The `[log]` section of `path`; the defaults when the file cannot be
    /// read or parsed (the full config load reports that).
    pub fn peek(path: &Path) -> Result<Self, ConfigError> {
        match IniFile::load(path) {
            Ok(ini) => Self::from_ini(&ini),
            Err(_) => Ok(LogConfig::default()),
        }
    }

    /// Installs the global subscriber (stderr). `quiet` is appended to the
    /// level, e.g. `may=warn`.
    pub fn install(&self, quiet: &str) {
        let directive = match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => v,
            _ if quiet.is_empty() => self.level.clone(),
            _ => format!("{},{quiet}", self.level),
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&directive)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().with_current_span(false).try_init(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_format_level_and_slow_ms() {
        let ini = IniFile::parse(
            "n.ini",
            "[log]\nformat = json ; for Loki\nlevel = debug\nslow_ms = 50\n",
        )
        .unwrap();
        let c = LogConfig::from_ini(&ini).unwrap();
        assert_eq!(
            (c.format, c.level.as_str(), c.slow_ms),
            (LogFormat::Json, "debug", 50)
        );
        let none = IniFile::parse("n.ini", "[server]\nport = 1\n").unwrap();
        assert_eq!(LogConfig::from_ini(&none).unwrap(), LogConfig::default());
        let bad = IniFile::parse("n.ini", "[log]\nformat = xml\n").unwrap();
        let msg = LogConfig::from_ini(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("[log] format") && msg.contains("text or json"),
            "{msg}"
        );
        let bad = IniFile::parse("n.ini", "[log]\nlevel = lots=of=noise\n").unwrap();
        assert!(LogConfig::from_ini(&bad)
            .unwrap_err()
            .to_string()
            .contains("[log] level"));
    }
}
