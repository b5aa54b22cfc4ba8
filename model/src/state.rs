//! The state of the modelled cluster: three nodes, etcd, the etcd snapshot
//! a restore goes back to, the clients' history and the run's budget.
//!
//! Everything is small integers so that a state hashes fast and the
//! explored space stays in memory: a history digest is the id of the last
//! change (ids are unique, so the id names the whole prefix before it).

use std::fmt;

/// Nodes 0 and 1 are candidates; node 2 is a plain follower.
pub const NODES: usize = 3;
/// The candidates are the nodes `0..CANDIDATES`.
pub const CANDIDATES: usize = 2;

/// Digest of a history at sequence 0 over the imported dataset.
pub const DIGEST_BASE: u8 = 100;
/// Digest of a history at sequence 0 of a node with no dataset.
pub const DIGEST_EMPTY: u8 = 0;

pub fn is_candidate(n: usize) -> bool {
    n < CANDIDATES
}

/// One change of the change log: the client write it carries (unique,
/// 1-based) and the term of the leader that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub id: u8,
    pub term: u8,
}

/// An acknowledged position: the term of the reign that acknowledged it and
/// the sequence it reaches. Compared as `(term, seq)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub term: u8,
    pub seq: u8,
}

/// What survives a crash: the node's database.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Durable {
    /// Holds the imported dataset (data with no change log).
    pub base: bool,
    /// Changes 1..=seq; `seq == log.len()`.
    pub log: Vec<Entry>,
    /// `meta.term`.
    pub term: u8,
    /// `meta.acked_*`: the highest acknowledged position this node knows
    /// of, which is also its persisted horizon H (never above `seq`).
    pub acked: Pos,
    /// `meta.members`: bit i set when candidate i was seen.
    pub members: u8,
}

impl Durable {
    pub fn seq(&self) -> u8 {
        self.log.len() as u8
    }

    /// The term of the last change; 0 for data with no change log.
    pub fn last_term(&self) -> u8 {
        self.log.last().map_or(0, |e| e.term)
    }

    pub fn has_data(&self) -> bool {
        self.base || !self.log.is_empty()
    }

    /// The history digest at `seq` (which must be at or below `self.seq()`).
    pub fn digest_at(&self, seq: u8) -> u8 {
        if seq == 0 {
            if self.base {
                DIGEST_BASE
            } else {
                DIGEST_EMPTY
            }
        } else {
            self.log[seq as usize - 1].id
        }
    }

    /// Whether this history is a prefix of `other`'s (same dataset, same
    /// changes up to this one's sequence).
    pub fn is_prefix_of(&self, other: &Durable) -> bool {
        self.seq() <= other.seq() && self.digest_at(self.seq()) == other.digest_at(self.seq())
    }

    pub fn holds(&self, id: u8) -> bool {
        self.log.iter().any(|e| e.id == id)
    }
}

/// One reign: its term and the nonce of its leader record (a unique
/// number per successful campaign, which is also the reign's ordinal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reign {
    pub term: u8,
    pub nonce: u8,
}

/// A follower's position as the leader recorded it (A1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Progress {
    pub term: u8,
    pub from: u8,
}

/// A write committed on the leader, waiting for its confirmations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Waiter {
    pub seq: u8,
    pub needed: u8,
}

/// Which put of `P/acked` a view saw: the etcd generation it was made in
/// and its number among the puts of that generation.
pub type PutId = (u8, u8);

/// A campaign decided on a view of etcd (which may be stale by the time
/// the transaction runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The term chosen (unused when terms are revisions).
    pub term: u8,
    /// The put of `acked` the view saw (its mod_revision R); `None`: absent.
    pub seen: Option<PutId>,
    /// The etcd generation of the view (the lease of this node's session).
    pub gen: u8,
}

/// Whether `mod_revision(P/acked) == R` holds, as far as the model can
/// tell: revisions strictly grow within one etcd generation; a wipe starts
/// them again (any earlier R may come back); a restore goes back to the
/// snapshot's revision, so an R the snapshot already covered cannot come
/// back through a new put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Equal,
    Different,
    /// Different puts whose revisions may coincide.
    Either,
}

/// What a crash loses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Volatile {
    pub leading: Option<Reign>,
    pub plan: Option<Plan>,
    pub progress: [Option<Progress>; NODES],
    pub waiting: Vec<Waiter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub durable: Durable,
    pub volatile: Volatile,
}

/// `P/leader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaderKey {
    pub node: u8,
    pub reign: Reign,
}

/// `P/acked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckedVal {
    pub term: u8,
    pub seq: u8,
    pub digest: u8,
}

/// `P/nodes/{addr}` of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Report {
    pub term: u8,
    pub last_term: u8,
    pub seq: u8,
    /// The sequence of the highest acknowledged position it knows of.
    pub acked_seq: u8,
    pub has_data: bool,
}

impl Report {
    pub fn of(d: &Durable) -> Report {
        Report {
            term: d.term,
            last_term: d.last_term(),
            seq: d.seq(),
            acked_seq: d.acked.seq,
            has_data: d.has_data(),
        }
    }
}

/// etcd, one linearizable store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Etcd {
    pub leader: Option<LeaderKey>,
    pub acked: Option<AckedVal>,
    /// The put that holds `acked` (meaningful when it is present).
    pub acked_put: PutId,
    /// Puts of `acked` made in this generation.
    pub puts: u8,
    pub reports: [Option<Report>; CANDIDATES],
    /// Bumped by every wipe and restore.
    pub gen: u8,
    /// For a generation begun by a restore: the generation and put count
    /// of the snapshot.
    pub origin: Option<PutId>,
    /// The revision counter (only kept when terms are revisions).
    pub rev: u8,
}

impl Etcd {
    pub fn empty(gen: u8) -> Etcd {
        Etcd {
            leader: None,
            acked: None,
            acked_put: (0, 0),
            puts: 0,
            reports: [None; CANDIDATES],
            gen,
            origin: None,
            rev: 0,
        }
    }

    /// Puts `acked` (a new revision).
    pub fn put_acked(&mut self, value: AckedVal) {
        self.puts += 1;
        self.acked = Some(value);
        self.acked_put = (self.gen, self.puts);
    }

    /// The put a view of this etcd sees.
    pub fn seen(&self) -> Option<PutId> {
        self.acked.map(|_| self.acked_put)
    }

    /// `mod_revision(P/acked) == R` for the R of a view that saw `seen`.
    pub fn compare(&self, seen: Option<PutId>) -> Compare {
        match (seen, self.seen()) {
            (None, None) => Compare::Equal,
            (None, Some(_)) | (Some(_), None) => Compare::Different,
            (Some(a), Some(b)) if a == b => Compare::Equal,
            (Some(a), Some(b)) if a.0 == b.0 => Compare::Different,
            (Some(a), Some(_)) => match self.origin {
                Some((g, n)) if a.0 == g && a.1 <= n => Compare::Different,
                _ => Compare::Either,
            },
        }
    }
}

/// What the clients saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    /// Bit `id` set: write `id` was answered 200.
    pub acked: u8,
    /// Bit `id` set: write `id` was returned by a read.
    pub read: u8,
}

/// Steps the run has taken, against [`crate::Bounds`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    pub writes: u8,
    pub reigns: u8,
    pub crashes: u8,
    pub wipes: u8,
    pub snapshots: u8,
    pub restores: u8,
}

/// Violations only a transition can show, recorded when it happens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Broken {
    /// A node's `meta.term` went down, or a leader was elected with a term
    /// not above every node's `meta.term`.
    pub terms: bool,
    /// A node with data installed an image with none, or an empty node
    /// was elected while a member it knew of held data.
    pub dataset: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub nodes: [Node; NODES],
    pub etcd: Etcd,
    pub snapshot: Option<Etcd>,
    pub history: History,
    pub budget: Budget,
    pub broken: Broken,
}

impl State {
    /// The leader of the newest reign, if it still leads.
    pub fn newest_leader(&self) -> Option<(usize, Reign)> {
        self.nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| match n.volatile.leading {
                Some(r) if r.nonce == self.budget.reigns => Some((i, r)),
                _ => None,
            })
    }
}

fn fmt_log(d: &Durable) -> String {
    let mut s = String::from(if d.base { "D" } else { "_" });
    for e in &d.log {
        s.push_str(&format!(" w{}@t{}", e.id, e.term));
    }
    s
}

impl fmt::Display for State {
    /// One line per node and one for etcd: what a reader of a
    /// counterexample needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let d = &n.durable;
            let v = &n.volatile;
            write!(
                f,
                "    n{i}: [{}] term={} acked=({},{}) members={:02b}",
                fmt_log(d),
                d.term,
                d.acked.term,
                d.acked.seq,
                d.members
            )?;
            if let Some(r) = v.leading {
                write!(f, " LEADING t{} (reign {})", r.term, r.nonce)?;
            }
            if let Some(p) = v.plan {
                write!(f, " plan(t{} saw acked put {:?})", p.term, p.seen)?;
            }
            if !v.waiting.is_empty() {
                write!(
                    f,
                    " waiting={:?}",
                    v.waiting.iter().map(|w| (w.seq, w.needed)).collect::<Vec<_>>()
                )?;
            }
            writeln!(f)?;
        }
        let e = &self.etcd;
        write!(f, "    etcd(gen{}): leader=", e.gen)?;
        match e.leader {
            Some(l) => write!(f, "n{} t{} nonce{}", l.node, l.reign.term, l.reign.nonce)?,
            None => write!(f, "-")?,
        }
        match e.acked {
            Some(a) => write!(
                f,
                " acked=(t{},s{},d{}) put{:?}",
                a.term, a.seq, a.digest, e.acked_put
            )?,
            None => write!(f, " acked=-")?,
        }
        for (i, r) in e.reports.iter().enumerate() {
            if let Some(r) = r {
                write!(
                    f,
                    " report{i}=(t{} last_t{} s{} acked_s{})",
                    r.term, r.last_term, r.seq, r.acked_seq
                )?;
            }
        }
        writeln!(f)?;
        let acked: Vec<u8> = (1..8).filter(|i| self.history.acked & (1 << i) != 0).collect();
        let read: Vec<u8> = (1..8).filter(|i| self.history.read & (1 << i) != 0).collect();
        write!(
            f,
            "    clients: 200={acked:?} read={read:?} reigns={}",
            self.budget.reigns
        )
    }
}
