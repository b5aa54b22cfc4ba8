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

/// The header with which a node's 503 says "this answer is not ready yet,
/// the node is well" (a read waiting on an unacknowledged change): the
/// gateway relays it and does not eject the node.
pub const RETRY_AFTER: &str = "Retry-After";
