//! An exhaustive model check of Kamaitachi's write protocol
//! (docs/WRITE_PROTOCOL.md, section "The model").
//!
//! The checker is [stateright](https://docs.rs/stateright)'s breadth-first
//! search over the hashed state space: every interleaving of the steps in
//! [`Action`] from the initial cluster, within [`Bounds`], is explored, and
//! the promises are checked in every state reached:
//!
//! - **P1** every write answered 200 is held by the leader of the newest
//!   reign (so by every node that leads after it was answered);
//! - **P2** every value any node could serve (each state's reads are taken
//!   as made: the strongest reader) is held by the leader of the newest
//!   reign (with P1: a read sees only acknowledged writes);
//! - **P3** no node's `meta.term` goes down, and every leader's term is
//!   above every node's `meta.term` when it is elected;
//! - **P4** no node with data installs an image with none, and no empty
//!   node is elected while a member it knows of holds data.
//!
//! What is modelled: three nodes (two candidates, one plain follower), each
//! with a durable part (dataset flag, change log with the term of each
//! change, `meta.term`, `meta.acked_*` which is also the horizon, members)
//! and a volatile part (reign led, decided campaign, progress map, waiting
//! writes); etcd as one linearizable store (leader key with reign and
//! nonce, `acked`, candidates' reports) that can lose its data or go back
//! to a snapshot; clients' 200 answers and reads.
//!
//! What is abstracted, and why it is sound:
//! - time: leases, ttl waits and pauses are not counted; a lease may run
//!   out and a report may lapse at any moment, and a leader notices only
//!   when it takes its StepDown step, so a paused or cut-off leader keeps
//!   acting on its stale belief for as long as the schedule likes (more
//!   behaviours than real timers allow).
//! - views: a candidate decides on a view and campaigns in a later step,
//!   with any other steps in between; followers may talk to any node that
//!   believes it leads (a stale follower view of who leads).
//! - revisions: `acked`'s mod_revision is its modification count within an
//!   etcd generation (a wipe or restore starts a new one); across
//!   generations a campaign's compare may succeed or fail whenever both
//!   sides name a present `acked` (a revision can repeat).
//! - a history digest is the id of the last change (ids are unique, so an
//!   id names its whole prefix, as the running digest does), or the
//!   dataset's at sequence 0.
//! - a write touches one subject; a read returns the newest change it may
//!   serve (a read of an older subject sees a prefix of that history, so
//!   the newest is the strongest test).
//! - a confirmation (the follower's poll reaching the leader) and the
//!   change in its answer are separate steps; a fence that timed out and
//!   whose read-back showed it is the same as a success; a 503 records
//!   nothing. A campaign's transaction and the winner raising `meta.term`
//!   are one step (a crash between them leaves the term in `acked`).
//!
//! Each safety rule can be switched off ([`Rules`]); the tests show the
//! counterexample each removal produces. Four of the switches
//! (`bootstrap_guard`, `members_from_following`, `campaign_checks_session`,
//! `restore_clears_election`) are changes to the specification that this
//! checker showed necessary: without them it finds counterexamples with
//! every rule as first written (docs/WRITE_PROTOCOL.md, "What the model
//! found in this specification").
//!
//! The checker is stateright rather than a hand-written search because it
//! builds here, hashes states into a concurrent set, and rebuilds the
//! shortest path to a discovery (one thread: strict breadth-first order).

pub mod model;
pub mod protocol;
pub mod rules;
pub mod state;

use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

pub use model::{Action, WriteProtocol};
pub use rules::{Bounds, Rules};
pub use state::State;

/// What one run of the checker found.
pub struct Outcome {
    /// Distinct states explored.
    pub states: usize,
    /// Deepest path explored.
    pub depth: usize,
    /// Whether every reachable state within the bound was explored.
    pub complete: bool,
    pub elapsed: Duration,
    /// Property name and the path that reaches its discovery.
    pub discoveries: Vec<(&'static str, Path<State, Action>)>,
}

impl Outcome {
    pub fn found(&self, name: &str) -> Option<&Path<State, Action>> {
        self.discoveries.iter().find(|(n, _)| *n == name).map(|(_, p)| p)
    }
}

/// Explores the protocol under `rules` within `bounds`, for at most
/// `timeout`. With `stop_at`, the search ends at the first discovery of
/// that property.
/// One thread searches in strict breadth-first order, so a counterexample
/// is a shortest one; two threads explore a whole space faster.
pub fn check(rules: Rules, bounds: Bounds, timeout: Duration, stop_at: Option<&'static str>) -> Outcome {
    let start = Instant::now();
    let threads = if stop_at.is_some() { 1 } else { 2 };
    let mut builder = WriteProtocol::new(rules, bounds)
        .checker()
        .threads(threads)
        .timeout(timeout);
    builder = match stop_at {
        Some(name) => builder.finish_when(HasDiscoveries::AnyOf([name].into_iter().collect())),
        None => builder.finish_when(HasDiscoveries::AllFailures),
    };
    let checker = builder.spawn_bfs().join();
    let elapsed = start.elapsed();
    let mut discoveries: Vec<_> = checker.discoveries().into_iter().collect();
    discoveries.sort_by_key(|(n, _)| *n);
    Outcome {
        states: checker.unique_state_count(),
        depth: checker.max_depth(),
        complete: checker.is_done() && elapsed < timeout,
        elapsed,
        discoveries,
    }
}

/// A path as the steps taken and the state after each, for a person.
pub fn describe(path: &Path<State, Action>) -> String {
    let steps = path.clone().into_vec();
    let mut out = format!("  initial state\n{}\n", steps[0].0);
    for w in steps.windows(2) {
        if let Some(action) = w[0].1 {
            out.push_str(&format!("  -> {action:?}\n{}\n", w[1].0));
        }
    }
    out
}
