//! Write availability (issue 14): who may acknowledge a write, and when.
//!
//! etcd decides who leads (`cluster::election`); this module owns what the
//! node does with that decision:
//!
//! - **Leading**: [`Ha::leading_term`] is the term under which this node
//!   may write — the election's term while it leads, `0` for a `mode =
//!   master` node without etcd (no election, no fence: the single master of
//!   before), none otherwise. Writes and the change feed are refused on a
//!   node that does not lead.
//! - **Progress**: every follower's changes poll says which node it is, if
//!   it is a candidate, and `from` = the last change it has committed. The
//!   change feed records that here ([`Ha::record_progress`]) and wakes the
//!   acknowledger.
//! - **Synchronous replication**: a write committed on the leader as change
//!   S is handed to the acknowledger ([`Ha::acknowledge`]), one OS thread
//!   that waits (on a `Condvar`, woken by progress; no sleeping loop) until
//!   `needed` candidate followers report ≥ S or the waiter's deadline
//!   (`sync_timeout_ms`) passes. `needed` is fixed when the write arrives
//!   ([`admit`]): `sync_replicas`, or — with fewer candidates connected
//!   (polled within [`CONNECTED_WITHIN`]) — the ones connected when not
//!   strict ("degraded"), or a refusal at once when strict.
//! - **The fence**: every acknowledgment also needs
//!   `Election::record_acked(term, S, digest)` to succeed in etcd, one
//!   transaction for every waiter up to S (group commit). A deposed leader's
//!   transaction fails its guard, so it never acknowledges anything.
//!
//! The waiting HTTP coroutine blocks on a `may` channel (parks the
//! coroutine, not its worker); the acknowledger always answers every
//! waiter (by its deadline at the latest). No lock is held across the etcd
//! call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cluster::election::{AckError, Election, Leader};
use cluster::Role;

use crate::storage::state::DataState;

/// A follower that polled within this time counts as connected.
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(3);

/// `[replication] sync_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRules {
    pub replicas: usize,
    pub timeout: Duration,
    pub strict: bool,
}

/// What a follower last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last change it has committed.
    pub applied: u64,
    pub candidate: bool,
    pub seen: Instant,
}

/// Whether a write may go ahead, and how many confirmations it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Wait for this many candidate followers (0: the leader alone).
    Wait { needed: usize, degraded: bool },
    /// Refuse at once (503).
    Refuse(String),
}

/// The sync rule: `connected` candidate followers against the configured
/// `sync_replicas`.
pub fn admit(rules: &SyncRules, connected: usize) -> Admit {
    if connected >= rules.replicas {
        return Admit::Wait {
            needed: rules.replicas,
            degraded: false,
        };
    }
    if rules.strict {
        return Admit::Refuse(format!(
            "write refused: {connected} of {} sync replica(s) connected and [replication] sync_strict = true; nothing was written",
            rules.replicas
        ));
    }
    Admit::Wait {
        needed: connected,
        degraded: true,
    }
}

/// How many candidate followers have committed `seq`.
pub fn confirmations<'a>(followers: impl Iterator<Item = &'a Progress>, seq: u64) -> usize {
    followers.filter(|p| p.candidate && p.applied >= seq).count()
}

/// Why a write was not acknowledged (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckFailure {
    Unconfirmed { seq: u64, needed: usize, ms: u128 },
    NotLeader(i64),
    Unreachable(String),
}

impl std::fmt::Display for AckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckFailure::Unconfirmed { seq, needed, ms } => write!(
                f,
                "write committed on the leader as change {seq} but not confirmed by {needed} sync replica(s) within {ms} ms; \
                 it is NOT acknowledged (it may still reach the replicas, or be discarded if the leader fails)"
            ),
            AckFailure::NotLeader(term) => write!(
                f,
                "this node lost the lead (term {term} is over) before the write could be acknowledged; it is NOT acknowledged"
            ),
            AckFailure::Unreachable(e) => write!(
                f,
                "etcd unreachable: the write could not be acknowledged ({e}); it is NOT acknowledged"
            ),
        }
    }
}

struct Waiter {
    term: i64,
    seq: u64,
    digest: String,
    needed: usize,
    deadline: Instant,
    timeout_ms: u128,
    reply: may::sync::mpsc::Sender<Result<(), AckFailure>>,
}

#[derive(Default)]
struct Inner {
    followers: HashMap<String, Progress>,
    waiters: Vec<Waiter>,
}

/// The node's side of the election (see the module comment).
pub struct Ha {
    election: Option<Arc<Election>>,
    /// `mode = master` without etcd: the leader, term 0.
    static_leader: bool,
    pub candidate: bool,
    pub rules: SyncRules,
    /// This node's registered address (never counted as its own follower).
    addr: String,
    inner: Mutex<Inner>,
    wake: Condvar,
    pub writes_unconfirmed: AtomicU64,
    pub elections_won: AtomicU64,
    /// The last sync state logged ("ok", "degraded"), to log once per change.
    logged_state: Mutex<&'static str>,
    /// Longest an acknowledgment's etcd transaction is retried:
    /// `ttl − 1 s` (see the acknowledger).
    fence_within: Duration,
    /// The acknowledged horizon: a successful fence moves it (V1).
    state: Arc<DataState>,
}

impl Ha {
    pub fn new(
        election: Option<Arc<Election>>,
        static_leader: bool,
        candidate: bool,
        rules: SyncRules,
        addr: &str,
        ttl: Duration,
        state: Arc<DataState>,
    ) -> Arc<Self> {
        Arc::new(Ha {
            election,
            static_leader,
            candidate,
            rules,
            addr: addr.to_string(),
            inner: Mutex::default(),
            wake: Condvar::new(),
            writes_unconfirmed: AtomicU64::new(0),
            elections_won: AtomicU64::new(0),
            logged_state: Mutex::new(""),
            fence_within: ttl.saturating_sub(cluster::election::STEP_DOWN_MARGIN),
            state,
        })
    }

    /// Whether an election decides who leads (an `[etcd]` section).
    pub fn enabled(&self) -> bool {
        self.election.is_some()
    }

    pub fn election(&self) -> Option<&Arc<Election>> {
        self.election.as_ref()
    }

    /// The term under which this node may write now.
    pub fn leading_term(&self) -> Option<i64> {
        match &self.election {
            Some(e) => e.leading(),
            None => self.static_leader.then_some(0),
        }
    }

    /// The role this node plays now: master while it leads.
    pub fn role(&self) -> Role {
        if self.leading_term().is_some() {
            Role::Master
        } else {
            Role::Slave
        }
    }

    /// The leader as etcd says it is.
    pub fn leader(&self) -> Option<Leader> {
        self.election.as_ref().and_then(|e| e.view().leader.clone())
    }

    /// Why this node refuses a write or a changes poll.
    pub fn not_leader(&self) -> String {
        match self.leader() {
            Some(l) => format!(
                "this node is not the leader; the leader is {} (term {})",
                l.addr, l.term
            ),
            None => "this node is not the leader; no leader is elected right now".to_string(),
        }
    }

    /// A follower's poll: it has committed `applied`.
    pub fn record_progress(&self, node: &str, applied: u64, candidate: bool) {
        if node == self.addr {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.followers.len() >= 256 && !inner.followers.contains_key(node) {
            // Bounded: forget the stalest peer first.
            let stalest = inner
                .followers
                .iter()
                .min_by_key(|(_, p)| p.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                inner.followers.remove(&k);
            }
        }
        inner.followers.insert(
            node.to_string(),
            Progress {
                applied,
                candidate,
                seen: Instant::now(),
            },
        );
        drop(inner);
        self.wake.notify_all();
    }

    /// Candidate followers that polled within [`CONNECTED_WITHIN`].
    pub fn connected_candidates(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .followers
            .values()
            .filter(|p| p.candidate && p.seen.elapsed() < CONNECTED_WITHIN)
            .count()
    }

    /// `sync` for `/health` and `/stats`: replicas, connected, state.
    pub fn sync_json(&self) -> serde_json::Value {
        let connected = self.connected_candidates();
        serde_json::json!({
            "replicas": self.rules.replicas,
            "connected": connected,
            "state": self.sync_state(connected),
            "strict": self.rules.strict,
        })
    }

    /// `off` (no election, or not leading, or 0 replicas asked), `ok`,
    /// `degraded` (fewer candidates connected than asked for).
    pub fn sync_state(&self, connected: usize) -> &'static str {
        if !self.enabled() || self.rules.replicas == 0 || self.leading_term().is_none() {
            "off"
        } else if connected >= self.rules.replicas {
            "ok"
        } else {
            "degraded"
        }
    }

    fn log_sync_state(&self, connected: usize) {
        let state = self.sync_state(connected);
        let mut logged = self.logged_state.lock().unwrap_or_else(PoisonError::into_inner);
        if *logged != state {
            *logged = state;
            drop(logged);
            match state {
                "degraded" if self.rules.strict => tracing::warn!(
                    "sync replication: {connected} of {} candidate follower(s) connected; sync_strict: writes are refused",
                    self.rules.replicas
                ),
                "degraded" => tracing::warn!(
                    "sync replication degraded: {connected} of {} candidate follower(s) connected; writes are acknowledged with {connected}",
                    self.rules.replicas
                ),
                "ok" => tracing::info!(
                    "sync replication ok: {connected} candidate follower(s) connected (sync_replicas {})",
                    self.rules.replicas
                ),
                _ => {}
            }
        }
    }

    /// Before a write: may it go ahead, waiting for how many followers.
    pub fn admit(&self) -> Admit {
        if !self.enabled() {
            return Admit::Wait {
                needed: 0,
                degraded: false,
            };
        }
        let connected = self.connected_candidates();
        self.log_sync_state(connected);
        admit(&self.rules, connected)
    }

    /// After a write committed on this leader as change `seq` of `term`:
    /// waits (parking the coroutine) until it is acknowledged or refused.
    /// Without an election it is acknowledged at once.
    pub fn acknowledge(&self, term: i64, seq: u64, digest: String, needed: usize) -> Result<(), AckFailure> {
        if !self.enabled() {
            return Ok(());
        }
        let (tx, rx) = may::sync::mpsc::channel();
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.waiters.push(Waiter {
                term,
                seq,
                digest,
                needed,
                deadline: Instant::now() + self.rules.timeout,
                timeout_ms: self.rules.timeout.as_millis(),
                reply: tx,
            });
        }
        self.wake.notify_all();
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(AckFailure::Unreachable("the acknowledger stopped".into())));
        if result.is_err() {
            self.writes_unconfirmed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Starts the acknowledger thread (see the module comment).
    pub fn spawn_acknowledger(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(election) = self.election.clone() else {
            return Ok(());
        };
        let ha = self.clone();
        std::thread::Builder::new()
            .name("acknowledger".into())
            .spawn(move || ha.acknowledger(&election))?;
        Ok(())
    }

    fn acknowledger(&self, election: &Election) {
        // The fence's etcd call may take this long: through an etcd leader
        // election (a member died: ~1-3 s) when the lease allows it, and
        // never longer than the lease a leader believes in (ttl - 1 s).
        let within = self
            .rules
            .timeout
            .min(self.fence_within)
            .max(Duration::from_millis(500));
        loop {
            let (batch, failed) = {
                let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let leading = election.leading();
                    let (batch, failed) = settle(&mut inner, leading, Instant::now());
                    if batch.is_some() || !failed.is_empty() {
                        break (batch, failed);
                    }
                    let wait = inner
                        .waiters
                        .iter()
                        .map(|w| w.deadline.saturating_duration_since(Instant::now()))
                        .min()
                        .unwrap_or(Duration::from_secs(1))
                        // A lost lead shows in the view, not as a wake-up.
                        .min(Duration::from_millis(200))
                        .max(Duration::from_millis(1));
                    inner = self
                        .wake
                        .wait_timeout(inner, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            };
            for (w, why) in failed {
                let _ = w.reply.send(Err(why));
            }
            let Some(batch) = batch else { continue };
            // The fence: outside any lock.
            let top = batch
                .iter()
                .max_by_key(|w| w.seq)
                .map(|w| (w.term, w.seq, w.digest.clone()));
            let Some((term, seq, digest)) = top else { continue };
            let result = election
                .record_acked_blocking(term, seq, &digest, within)
                .map_err(|e| match e {
                    AckError::NotLeader(t) => AckFailure::NotLeader(t),
                    AckError::Unreachable(e) => AckFailure::Unreachable(e),
                    AckError::Unknown(e) => AckFailure::Unreachable(e),
                });
            match &result {
                Ok(()) => self.state.set_acked(seq),
                Err(e) => tracing::warn!("acknowledgment of changes up to {seq} (term {term}) failed: {e}"),
            }
            for w in batch {
                let _ = w.reply.send(result.clone());
            }
        }
    }
}

/// One decision of the acknowledger over the waiters (taken out of
/// `inner`): the group to acknowledge now (every waiter of the leading term
/// up to the highest confirmed change), and the ones that failed (deadline
/// passed unconfirmed, or written under a term this node no longer leads).
fn settle(
    inner: &mut Inner,
    leading: Option<i64>,
    now: Instant,
) -> (Option<Vec<Waiter>>, Vec<(Waiter, AckFailure)>) {
    let confirmed_top = inner
        .waiters
        .iter()
        .filter(|w| Some(w.term) == leading)
        .filter(|w| confirmations(inner.followers.values(), w.seq) >= w.needed)
        .map(|w| w.seq)
        .max();
    let mut failed = Vec::new();
    let mut batch = Vec::new();
    let mut keep = Vec::new();
    for w in std::mem::take(&mut inner.waiters) {
        if Some(w.term) != leading {
            let term = w.term;
            failed.push((w, AckFailure::NotLeader(term)));
        } else if confirmed_top.is_some_and(|top| w.seq <= top) {
            batch.push(w);
        } else if now >= w.deadline {
            let f = AckFailure::Unconfirmed {
                seq: w.seq,
                needed: w.needed,
                ms: w.timeout_ms,
            };
            failed.push((w, f));
        } else {
            keep.push(w);
        }
    }
    inner.waiters = keep;
    ((!batch.is_empty()).then_some(batch), failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(replicas: usize, strict: bool) -> SyncRules {
        SyncRules {
            replicas,
            timeout: Duration::from_millis(100),
            strict,
        }
    }

    #[test]
    fn enough_connected_candidates_wait_for_sync_replicas() {
        assert_eq!(
            admit(&rules(1, false), 2),
            Admit::Wait {
                needed: 1,
                degraded: false
            }
        );
        assert_eq!(
            admit(&rules(1, true), 1),
            Admit::Wait {
                needed: 1,
                degraded: false
            }
        );
    }

    #[test]
    fn too_few_connected_degrades_unless_strict() {
        assert_eq!(
            admit(&rules(2, false), 1),
            Admit::Wait {
                needed: 1,
                degraded: true
            }
        );
        assert_eq!(
            admit(&rules(1, false), 0),
            Admit::Wait {
                needed: 0,
                degraded: true
            }
        );
        let Admit::Refuse(why) = admit(&rules(1, true), 0) else {
            panic!("strict must refuse")
        };
        assert!(why.contains("0 of 1 sync replica(s) connected"), "{why}");
    }

    fn waiter(
        term: i64,
        seq: u64,
        needed: usize,
        deadline: Instant,
    ) -> (Waiter, may::sync::mpsc::Receiver<Result<(), AckFailure>>) {
        let (tx, rx) = may::sync::mpsc::channel();
        (
            Waiter {
                term,
                seq,
                digest: format!("d{seq}"),
                needed,
                deadline,
                timeout_ms: 50,
                reply: tx,
            },
            rx,
        )
    }

    fn follower(applied: u64, candidate: bool) -> Progress {
        Progress {
            applied,
            candidate,
            seen: Instant::now(),
        }
    }

    #[test]
    fn only_candidates_that_committed_the_change_confirm_it() {
        let f = [follower(5, true), follower(9, false), follower(3, true)];
        assert_eq!(confirmations(f.iter(), 4), 1);
        assert_eq!(confirmations(f.iter(), 3), 2);
        assert_eq!(confirmations(f.iter(), 9), 0, "a plain follower does not count");
    }

    #[test]
    fn the_group_up_to_the_highest_confirmed_change_is_acknowledged_together() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut inner = Inner::default();
        inner.followers.insert("b".into(), follower(7, true));
        let (w5, _r5) = waiter(3, 5, 1, later);
        let (w7, _r7) = waiter(3, 7, 1, later);
        let (w8, _r8) = waiter(3, 8, 1, later);
        inner.waiters = vec![w5, w7, w8];
        let (batch, failed) = settle(&mut inner, Some(3), now);
        let seqs: Vec<u64> = batch.expect("a group").iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [5, 7]);
        assert!(failed.is_empty());
        assert_eq!(inner.waiters.len(), 1, "change 8 still waits");
    }

    #[test]
    fn an_unconfirmed_write_fails_at_its_deadline_not_before() {
        let now = Instant::now();
        let mut inner = Inner::default();
        inner.followers.insert("b".into(), follower(4, true));
        let (w, _r) = waiter(3, 5, 1, now + Duration::from_millis(50));
        inner.waiters = vec![w];
        let (batch, failed) = settle(&mut inner, Some(3), now);
        assert!(batch.is_none() && failed.is_empty());
        let (batch, failed) = settle(&mut inner, Some(3), now + Duration::from_millis(60));
        assert!(batch.is_none());
        assert_eq!(failed.len(), 1);
        let msg = failed[0].1.to_string();
        assert!(
            msg.contains("committed on the leader as change 5 but not confirmed by 1 sync replica(s)")
                && msg.contains("NOT acknowledged"),
            "{msg}"
        );
    }

    #[test]
    fn a_degraded_write_needs_no_follower_and_a_lost_term_fails_at_once() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut inner = Inner::default();
        let (w, _r) = waiter(3, 5, 0, later);
        inner.waiters = vec![w];
        let (batch, _) = settle(&mut inner, Some(3), now);
        assert_eq!(batch.map(|b| b.len()), Some(1));
        let (w, _r) = waiter(3, 6, 0, later);
        inner.waiters = vec![w];
        let (batch, failed) = settle(&mut inner, Some(9), now);
        assert!(batch.is_none());
        assert_eq!(failed[0].1, AckFailure::NotLeader(3));
        let (w, _r) = waiter(3, 7, 0, later);
        inner.waiters = vec![w];
        let (_, failed) = settle(&mut inner, None, now);
        assert_eq!(failed[0].1, AckFailure::NotLeader(3));
    }
}
