//! Kamaitachi's shared crate: what the node, the gateway and the bench agree
//! on. Today that is the INI configuration (`config`); the etcd registry and
//! the wire types join it as their issues land.

pub mod config;

pub use config::{ConfigError, IniFile, Mode};
