//! The election's values in etcd, and how much of them is believed.
//!
//! Three kinds of value live under `{prefix}/election/`
//! (docs/WRITE_PROTOCOL.md, "State"): the leader key ([`LeaderRecord`]),
//! the acknowledged position ([`Acked`]) and one [`Report`] per node. Each is
//! decoded only when it is small and sane; anything else reads as absent,
//! so a hostile or corrupt entry can delay an election but never make a
//! node believe a position or an address it should not.

use serde::{Deserialize, Serialize};

use crate::registry::{validate_addr, MAX_VALUE_BYTES};

/// Most candidate members a report may name.
pub const MAX_REPORTED_MEMBERS: usize = 64;

/// The leader as etcd says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub addr: String,
    /// The leader's term: chosen larger than every term known when it was
    /// elected, kept in the nodes' data, so it grows across etcd wipes.
    pub term: i64,
    /// Unix seconds when it took the lead.
    pub since: u64,
    /// The leader key's create revision in etcd (how far the watch must
    /// have read before it can say the key is gone).
    pub rev: i64,
}

/// The value of the leader key. Its exact bytes are the fence: a random
/// nonce makes them unique to one reign, even across an etcd wipe (a
/// revision can repeat, a nonce does not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub addr: String,
    pub since: u64,
    /// Absent in a record from an earlier version: its create revision
    /// stands for the term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The last position a leader acknowledged (or took as its baseline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    pub term: i64,
    pub seq: u64,
    /// The running history digest after change `seq` (64 hex digits), or
    /// empty for an empty history.
    pub digest: String,
}

/// What a node says of itself while an election may be needed: enough for
/// the candidates to agree who holds the most recent history after etcd
/// lost its data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub addr: String,
    pub candidate: bool,
    /// The highest term this node has seen (durable).
    pub term: i64,
    /// The term of its last change (0: none in its change log).
    pub last_term: i64,
    /// Its last applied change.
    pub seq: u64,
    /// The highest acknowledged position it knows of (durable).
    pub acked_term: i64,
    pub acked_seq: u64,
    /// Whether it holds any data (rows or changes).
    pub has_data: bool,
    pub dataset: u64,
    /// The candidate members it remembers.
    #[serde(default)]
    pub members: Vec<String>,
    /// Whether it sees that etcd lost or went back in its data.
    #[serde(default)]
    pub recovering: bool,
}

impl Report {
    /// The order of "most recent history" (Raft's up-to-date rule, then
    /// data over none): larger is better.
    pub fn history_rank(&self) -> (i64, u64, bool) {
        (self.last_term, self.seq, self.has_data)
    }
}

fn is_digest(d: &str) -> bool {
    d.is_empty() || (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A leader key's value, believed only if it is small, names a sane
/// address and a positive term.
pub fn decode_leader(value: &[u8], create_revision: i64) -> Option<Leader> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let r: LeaderRecord = serde_json::from_slice(value).ok()?;
    validate_addr(&r.addr).ok()?;
    let term = r.term.unwrap_or(create_revision);
    (term > 0).then_some(Leader {
        addr: r.addr,
        term,
        since: r.since,
        rev: create_revision,
    })
}

pub fn decode_acked(value: &[u8]) -> Option<Acked> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let a: Acked = serde_json::from_slice(value).ok()?;
    (is_digest(&a.digest) && a.term > 0).then_some(a)
}

/// A report, believed only if it is small, sane, and stored under its own
/// address (`key_addr`).
pub fn decode_report(value: &[u8], key_addr: &str) -> Option<Report> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let r: Report = serde_json::from_slice(value).ok()?;
    let sane = r.addr == key_addr
        && validate_addr(&r.addr).is_ok()
        && r.term >= 0
        && r.last_term >= 0
        && r.acked_term >= 0
        && r.members.len() <= MAX_REPORTED_MEMBERS
        && r.members.iter().all(|m| validate_addr(m).is_ok());
    sane.then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_values_are_believed_only_when_sane() {
        let good = br#"{"addr":"10.0.0.1:8080","since":1,"term":42,"nonce":"n"}"#;
        assert_eq!(decode_leader(good, 7).map(|l| (l.term, l.rev)), Some((42, 7)));
        // A record of an earlier version: its create revision is the term.
        let old = br#"{"addr":"10.0.0.1:8080","since":1}"#;
        assert_eq!(decode_leader(old, 42).map(|l| l.term), Some(42));
        assert!(decode_leader(br#"{"addr":"0.0.0.0:8080","since":1}"#, 42).is_none());
        assert!(decode_leader(br#"{"addr":"10.0.0.1:8080","since":1,"term":0}"#, 42).is_none());
        assert!(decode_leader(b"nonsense", 42).is_none());
        assert!(decode_acked(br#"{"term":3,"seq":9,"digest":"zz"}"#).is_none());
        assert!(decode_acked(br#"{"term":0,"seq":9,"digest":""}"#).is_none());
        assert!(decode_acked(br#"{"term":3,"seq":9,"digest":""}"#).is_some());
    }

    #[test]
    fn a_report_is_believed_only_under_its_own_address() {
        let r = Report {
            addr: "10.0.0.1:8080".into(),
            candidate: true,
            term: 3,
            seq: 9,
            members: vec!["10.0.0.2:8080".into()],
            ..Report::default()
        };
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode_report(&json, "10.0.0.1:8080"), Some(r.clone()));
        assert_eq!(decode_report(&json, "10.0.0.9:8080"), None);
        let mut bad = r;
        bad.members = vec!["nonsense".into()];
        assert_eq!(
            decode_report(&serde_json::to_vec(&bad).unwrap(), "10.0.0.1:8080"),
            None
        );
    }
}
