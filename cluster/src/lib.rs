//! Kamaitachi's shared crate: what the node, the gateway and the bench agree
//! on — the INI configuration (`config`), logging (`logging`), the etcd
//! registry (`registry`), a node's role (`role`) and the `X-Request-Id`
//! rules (`request_id`).

pub mod auth;
pub mod config;
pub mod election;
pub mod logging;
pub mod registry;
pub mod request_id;
pub mod role;

pub use config::{ConfigError, IniFile, Mode};
pub use registry::{Discovery, EtcdConfig, Registration, ServiceEntry, ServiceInfo};
pub use role::Role;
