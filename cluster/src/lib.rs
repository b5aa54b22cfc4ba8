//! Kamaitachi's shared crate: what the node, the gateway and the bench agree
//! on — the INI configuration (`config`) and the etcd registry (`registry`).

pub mod config;
pub mod registry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{ConfigError, IniFile, Mode};
pub use registry::{Discovery, EtcdConfig, Registration, ServiceEntry, ServiceInfo};
