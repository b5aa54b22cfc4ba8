//! The switches of the protocol's safety rules and the bound of the search.
//!
//! [`Rules::default`] is the protocol as specified: every rule on. A test
//! turns one rule off and expects the checker to find the failure that
//! rule closes; [`Bounds::default`] is large enough to reach each of them.

/// Each field is one rule of docs/WRITE_PROTOCOL.md; `true` follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rules {
    /// Campaign: `mod_revision(P/acked) == R` in the transaction that
    /// creates the leader key, with the baseline put in that transaction.
    /// Off: only `create_revision(P/leader) == 0` is compared.
    pub campaign_cas: bool,
    /// The campaign as revised after this model's counterexample: it also
    /// compares `lease(P/nodes/{me})` with the lease of the session the
    /// view was read in, so a view read before a wipe (or a lapse of this
    /// node's lease) cannot win after it: revisions start again after a
    /// wipe, so `mod_revision(P/acked) == R` alone can match a newer
    /// `acked`, and an absent `acked` matches an empty etcd again.
    pub campaign_checks_session: bool,
    /// Terms are chosen above `acked.term`, `meta.term` and every report's
    /// term. Off: the term is the leader key's create revision, which
    /// starts again after an etcd wipe.
    pub durable_terms: bool,
    /// E2/E3: with `acked` missing or behind this node's durable knowledge,
    /// wait for every member's report and pick the best history. Off: the
    /// first-election rule (no `acked`: whoever no report beats runs;
    /// `acked` present: E1 without the "not behind" check).
    pub recovery_waits_for_members: bool,
    /// V1/V2: a node serves only changes at or below its acknowledged
    /// horizon. Off: a node serves every change it holds.
    pub visibility_at_horizon: bool,
    /// A1: a confirmation counts only if recorded under the leader's
    /// current term; progress is forgotten when the term changes. Off: a
    /// process keeps and counts progress across its reigns.
    pub progress_per_term: bool,
    /// A2: waiters are acknowledged as a prefix, each by its own `needed`.
    /// Off: the fence carries every waiter up to the highest confirmed one.
    pub prefix_group_ack: bool,
    /// E3 as revised after this model's first counterexample: a first
    /// election also waits for every member this node has seen, and an
    /// empty node never starts a cluster by itself (the operator gives one
    /// node a dataset). Off: E3 as first written (no `acked`, `meta.term`
    /// 0 and no report with a term: whoever no report beats runs).
    pub bootstrap_guard: bool,
    /// `meta.members` as revised after this model's first counterexample:
    /// it also grows with the leader a follower takes changes or an image
    /// from, and (on the leader) with the candidate followers that poll
    /// it. Off: only from the reports seen.
    pub members_from_following: bool,
    /// The etcd runbook as revised after this model's counterexample: a
    /// restore from a snapshot deletes the election prefix before any node
    /// reaches the restored etcd, so a restore is a wipe of the election
    /// (E2 rebuilds `acked` from the members). Off: the restored etcd
    /// brings back an old leader key (with its lease), `acked` and reports.
    pub restore_clears_election: bool,
    /// F3: an image with no data over a database with data, or below the
    /// follower's `meta.acked_seq`, is refused.
    pub image_guard: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            campaign_cas: true,
            campaign_checks_session: true,
            durable_terms: true,
            recovery_waits_for_members: true,
            visibility_at_horizon: true,
            progress_per_term: true,
            prefix_group_ack: true,
            bootstrap_guard: true,
            members_from_following: true,
            restore_clears_election: true,
            image_guard: true,
        }
    }
}

/// How far the search goes: every count is a most, over a whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// Client writes committed by leaders (each a distinct value).
    pub writes: u8,
    /// Successful campaigns (reigns); terms stay at or below this when
    /// they are chosen from durable knowledge.
    pub reigns: u8,
    /// Node crashes (a restart losing all volatile state).
    pub crashes: u8,
    /// etcd losing its whole data.
    pub wipes: u8,
    /// etcd snapshots taken (the backup a restore goes back to).
    pub snapshots: u8,
    /// etcd restores from the snapshot.
    pub restores: u8,
    /// Whether `sync_strict` is on: every write needs one confirmation
    /// (`sync_replicas = 1`). Off: a write may need none, as when no
    /// candidate follower is connected when it arrives.
    pub strict: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            writes: 2,
            reigns: 3,
            crashes: 1,
            wipes: 1,
            snapshots: 1,
            restores: 1,
            strict: false,
        }
    }
}
