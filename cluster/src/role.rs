//! A data node's role in the cluster: master (takes writes) or slave
//! (replicates). It is what a registry entry's `role` says, what a health
//! proof is bound to and what the gateway routes writes by.
//!
//! Design: a two-variant enum, not [`Mode`]'s three (a gateway plays no
//! role in the registry), parsed once at the edge — when a registry entry
//! or a `[gateway] static_upstreams` item is read — so no code past the
//! edge compares strings. It serializes as the same lower-case word the
//! wire always carried (`"master"`, `"slave"`): JSON in etcd, `/health`,
//! the status page and the MACed health proof are unchanged. Parsing is
//! exact (case-sensitive), as the registry validation always was.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Slave,
}

impl Role {
    /// The wire word: `master` or `slave`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }

    /// `master` or `slave`, exactly; anything else is `None`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "master" => Some(Role::Master),
            "slave" => Some(Role::Slave),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a node of `[server] mode` registers with; a gateway has none.
impl TryFrom<Mode> for Role {
    type Error = String;
    fn try_from(mode: Mode) -> Result<Role, String> {
        match mode {
            Mode::Master => Ok(Role::Master),
            Mode::Slave => Ok(Role::Slave),
            Mode::Gateway => Err("a gateway has no role in the registry".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_words_round_trip() {
        for role in [Role::Master, Role::Slave] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(
                serde_json::to_string(&role).unwrap(),
                format!("\"{}\"", role.as_str())
            );
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(Role::parse("Master"), None);
        assert_eq!(Role::parse("gateway"), None);
        assert_eq!(Role::try_from(Mode::Slave), Ok(Role::Slave));
        assert!(Role::try_from(Mode::Gateway).is_err());
    }
}
