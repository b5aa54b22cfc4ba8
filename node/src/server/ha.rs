//! Write acknowledgment on the leader: who may acknowledge a write, and
//! when (rules L3 and A1–A3 of `docs/WRITE_PROTOCOL.md`).
//!
//! etcd decides who leads (`cluster::election`); this module owns what the
//! node does with that decision:
//!
//! - **Leading**: [`Ha::leading_term`] is the term under which this node
//!   may write — the election's term while it leads, `0` for a `mode =
//!   master` node without etcd (no election, no fence), none otherwise.
//!   Writes and the change feed are refused on a node that does not lead.
//! - **Progress** (A1): every follower's changes poll says which node it
//!   is, if it is a candidate, and `from` = the last change it has
//!   committed. The change feed records it here ([`Ha::record_progress`])
//!   under the term the poll was admitted in, and whether the follower's
//!   history digest at `from` matched the leader's ([`Progress::proven`]).
//!   Only proven progress of the current term confirms a write; when the
//!   leading term changes every follower's progress is forgotten.
//! - **A newer term** (L3): a poll reporting a term above the leader's
//!   ([`poll_term`]) makes the leader record it and resign.
//! - **Synchronous replication**: a write committed on the leader as change
//!   S is handed to the acknowledger ([`Ha::acknowledge`]), one OS thread
//!   that waits (on a `Condvar`, woken by progress; no sleeping loop) until
//!   `needed` candidate followers confirm S or the waiter's deadline
//!   (`sync_timeout_ms`) passes. `needed` is fixed when the write arrives
//!   ([`admit`]): `sync_replicas`, or — with fewer candidates connected
//!   (polled within [`CONNECTED_WITHIN`]) — the ones connected when not
//!   strict ("degraded"), or a refusal at once when strict.
//! - **Groups** (A2): waiters are acknowledged as a prefix ([`settle`]):
//!   up to the highest S such that every waiter up to S is confirmed by its
//!   own `needed`, so a degraded write never carries an earlier one that
//!   waits for a follower.
//! - **The fence** (A3): every acknowledgment also needs
//!   `Election::record_acked(term, S, digest)` to succeed in etcd, one
//!   transaction for the group's top. A deposed leader's transaction fails
//!   its guard, so it never acknowledges anything. Every failure says
//!   whether the write is known not to be acknowledged or may have been
//!   ([`AckFailure::outcome`]).
//!
//! The waiting HTTP coroutine blocks on a `may` channel (parks the
//! coroutine, not its worker); the acknowledger always answers every
//! waiter (by its deadline at the latest, or when its fence call returns).
//! No lock is held across the etcd call.

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

/// What a follower last reported, and under which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The leader's term when the poll was admitted.
    pub term: i64,
    /// The last change it has committed (the poll's `from`).
    pub applied: u64,
    /// The follower's history digest at `applied` was sent and matched the
    /// leader's: only then does `applied` confirm a write.
    pub proven: bool,
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

/// How many candidate followers confirm change `seq` of `term`: reported
/// under `term`, with a proven history, at `seq` or past it.
pub fn confirmations<'a>(followers: impl Iterator<Item = &'a Progress>, term: i64, seq: u64) -> usize {
    followers
        .filter(|p| p.term == term && p.proven && p.candidate && p.applied >= seq)
        .count()
}

/// What a follower's standing, sent with its poll, means to the leader (L3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollTerm {
    /// Nothing newer than the leader knows: serve the poll.
    Serve,
    /// The follower knows a newer term, or an acknowledged position this
    /// leader's history does not reach: record what it knows (`term`,
    /// `known_acked`) and resign, deposing this reign (`depose`: a term
    /// above the leader's).
    Yield {
        term: i64,
        known_acked: Option<(i64, u64)>,
        depose: i64,
    },
}

/// The leader leading under `leading` with history up to `applied` is
/// polled by a follower whose durable term is `reported` and which knows
/// the acknowledged position `known` (term, sequence).
pub fn poll_term(leading: i64, applied: u64, reported: Option<i64>, known: Option<(i64, u64)>) -> PollTerm {
    let newer_term = reported.filter(|t| *t > leading);
    // A legitimate leader holds every acknowledged change: one it lacks
    // was acknowledged by a reign it never knew (the same term taken twice
    // after etcd lost its data).
    let lacks = known.filter(|(_, seq)| *seq > applied);
    if newer_term.is_none() && lacks.is_none() {
        return PollTerm::Serve;
    }
    let term = reported.unwrap_or(0).max(lacks.map_or(0, |(t, _)| t));
    PollTerm::Yield {
        term,
        known_acked: lacks,
        depose: term.max(leading + 1),
    }
}

/// Whether an unacknowledged write may have been acknowledged after all:
/// the `outcome` field of the 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Known not to be acknowledged (it may still reach the replicas and
    /// be carried by a later acknowledgment, or be discarded).
    NotAcknowledged,
    /// The acknowledgment may have been recorded: the client cannot tell.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotAcknowledged => "not_acknowledged",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Why a write was not acknowledged (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckFailure {
    Unconfirmed {
        seq: u64,
        needed: usize,
        ms: u128,
    },
    NotLeader(i64),
    /// etcd could not be reached: nothing was recorded.
    Unreachable(String),
    /// The fence's transaction timed out and reading back did not settle
    /// whether it was recorded.
    Unknown(String),
}

impl AckFailure {
    pub fn outcome(&self) -> Outcome {
        match self {
            AckFailure::Unknown(_) => Outcome::Unknown,
            AckFailure::Unconfirmed { .. } | AckFailure::NotLeader(_) | AckFailure::Unreachable(_) => {
                Outcome::NotAcknowledged
            }
        }
    }
}

impl From<AckError> for AckFailure {
    fn from(e: AckError) -> Self {
        match e {
            AckError::NotLeader(t) => AckFailure::NotLeader(t),
            AckError::Unreachable(e) => AckFailure::Unreachable(e),
            AckError::Unknown(e) => AckFailure::Unknown(e),
        }
    }
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
            AckFailure::Unknown(e) => write!(
                f,
                "the write's acknowledgment timed out in etcd and could not be read back ({e}): \
                 it may or may not be acknowledged; read it back before writing it again"
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

/// Most followers whose progress is kept (the stalest is forgotten first).
const MAX_FOLLOWERS: usize = 256;

#[derive(Default)]
struct Inner {
    /// The leading term `followers` belongs to.
    term: Option<i64>,
    followers: HashMap<String, Progress>,
    waiters: Vec<Waiter>,
}

impl Inner {
    /// Follows the leading term: progress of another reign is forgotten.
    fn follow_term(&mut self, leading: Option<i64>) {
        if self.term != leading {
            self.followers.clear();
            self.term = leading;
        }
    }

    /// Records a follower's poll if it was admitted under the term
    /// followed now; returns whether it was recorded.
    fn record(&mut self, node: &str, progress: Progress) -> bool {
        if self.term != Some(progress.term) {
            return false;
        }
        if self.followers.len() >= MAX_FOLLOWERS && !self.followers.contains_key(node) {
            let stalest = self
                .followers
                .iter()
                .min_by_key(|(_, p)| p.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                self.followers.remove(&k);
            }
        }
        self.followers.insert(node.to_string(), progress);
        true
    }
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
    /// Writes answered 503 `not_acknowledged` after they were committed.
    pub writes_unconfirmed: AtomicU64,
    /// Writes answered 503 `unknown`.
    pub writes_outcome_unknown: AtomicU64,
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
            writes_outcome_unknown: AtomicU64::new(0),
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

    /// A follower's poll, admitted while this node led under `term`: it
    /// has committed `applied`; `proven` when its history digest at
    /// `applied` matched this node's.
    pub fn record_progress(&self, node: &str, term: i64, applied: u64, proven: bool, candidate: bool) {
        if node == self.addr {
            return;
        }
        let progress = Progress {
            term,
            applied,
            proven,
            candidate,
            seen: Instant::now(),
        };
        let recorded = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.follow_term(self.leading_term());
            inner.record(node, progress)
        };
        if recorded {
            self.wake.notify_all();
        }
    }

    /// Candidate followers that polled this term within
    /// [`CONNECTED_WITHIN`].
    pub fn connected_candidates(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.follow_term(self.leading_term());
        inner
            .followers
            .values()
            .filter(|p| p.candidate && p.seen.elapsed() < CONNECTED_WITHIN)
            .count()
    }

    /// A follower has seen `term`, newer than this leader's (L3): the
    /// election makes this node step down and resign. The caller records
    /// `term` durably first.
    pub fn yield_to_term(&self, term: i64) {
        if let Some(e) = &self.election {
            tracing::warn!("a follower has seen term {term}, newer than this leader's: stepping down");
            e.yield_to_term(term);
        }
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
        if let Err(e) = &result {
            let counter = match e.outcome() {
                Outcome::NotAcknowledged => &self.writes_unconfirmed,
                Outcome::Unknown => &self.writes_outcome_unknown,
            };
            counter.fetch_add(1, Ordering::Relaxed);
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
                    // A waiter past its deadline but held back by an earlier
                    // one waits for that one's deadline, not in a spin.
                    let now = Instant::now();
                    let wait = inner
                        .waiters
                        .iter()
                        .filter(|w| w.deadline > now)
                        .map(|w| w.deadline - now)
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
                .map_err(AckFailure::from);
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
/// `inner`), after forgetting progress of any other term than `leading`:
///
/// - the group to acknowledge now (A2): waiters of the leading term in
///   order of their change, up to the highest one such that every one up
///   to it is confirmed by its own `needed`;
/// - the ones that failed: written under a term this node no longer leads,
///   or unconfirmed at their deadline.
///
/// A confirmed waiter behind an unconfirmed one stays (past its own
/// deadline too) until that one is confirmed or fails at its deadline.
fn settle(
    inner: &mut Inner,
    leading: Option<i64>,
    now: Instant,
) -> (Option<Vec<Waiter>>, Vec<(Waiter, AckFailure)>) {
    inner.follow_term(leading);
    let mut waiters = std::mem::take(&mut inner.waiters);
    waiters.sort_by_key(|w| w.seq);
    let mut failed = Vec::new();
    let mut batch = Vec::new();
    let mut keep = Vec::new();
    let mut prefix_open = true;
    for w in waiters {
        if Some(w.term) != leading {
            let term = w.term;
            failed.push((w, AckFailure::NotLeader(term)));
            continue;
        }
        let confirmed = confirmations(inner.followers.values(), w.term, w.seq) >= w.needed;
        if confirmed && prefix_open {
            batch.push(w);
        } else if !confirmed && now >= w.deadline {
            let f = AckFailure::Unconfirmed {
                seq: w.seq,
                needed: w.needed,
                ms: w.timeout_ms,
            };
            failed.push((w, f));
        } else {
            prefix_open &= confirmed;
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

    /// A proven report of term 3.
    fn follower(applied: u64, candidate: bool) -> Progress {
        Progress {
            term: 3,
            applied,
            proven: true,
            candidate,
            seen: Instant::now(),
        }
    }

    /// `inner` following term `term`, with these followers' reports.
    fn leading(term: i64, followers: &[(&str, Progress)]) -> Inner {
        let mut inner = Inner::default();
        inner.follow_term(Some(term));
        for (node, p) in followers {
            inner.record(node, *p);
        }
        inner
    }

    #[test]
    fn only_candidates_that_committed_the_change_confirm_it() {
        let f = [follower(5, true), follower(9, false), follower(3, true)];
        assert_eq!(confirmations(f.iter(), 3, 4), 1);
        assert_eq!(confirmations(f.iter(), 3, 3), 2);
        assert_eq!(
            confirmations(f.iter(), 3, 9),
            0,
            "a plain follower does not count"
        );
    }

    #[test]
    fn an_earlier_reigns_report_does_not_confirm_a_write_of_the_new_term() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        // Progress recorded while this node led under term 3.
        let mut inner = leading(3, &[("b", follower(9, true))]);
        assert_eq!(inner.followers.len(), 1);
        // It leads again, under term 4: a write of term 4 at change 7.
        let (w, _r) = waiter(4, 7, 1, later);
        inner.waiters = vec![w];
        let (batch, failed) = settle(&mut inner, Some(4), now);
        assert!(
            batch.is_none() && failed.is_empty(),
            "confirmed by a report of term 3"
        );
        assert!(inner.followers.is_empty(), "term 3's progress is forgotten");
        // A poll admitted under term 3 but recorded now is not taken.
        assert!(!inner.record("b", follower(9, true)));
        assert_eq!(
            confirmations([follower(9, true)].iter(), 4, 7),
            0,
            "a term-3 report never counts for term 4"
        );
        // A report of term 4 confirms it.
        assert!(inner.record(
            "b",
            Progress {
                term: 4,
                ..follower(7, true)
            }
        ));
        let (batch, _) = settle(&mut inner, Some(4), now);
        assert_eq!(batch.map(|b| b.len()), Some(1));
    }

    #[test]
    fn a_report_without_a_matching_digest_does_not_confirm() {
        let now = Instant::now();
        let unproven = Progress {
            proven: false,
            ..follower(9, true)
        };
        let mut inner = leading(3, &[("b", unproven)]);
        let (w, _r) = waiter(3, 5, 1, now + Duration::from_millis(50));
        inner.waiters = vec![w];
        let (batch, failed) = settle(&mut inner, Some(3), now);
        assert!(batch.is_none() && failed.is_empty());
        let (batch, failed) = settle(&mut inner, Some(3), now + Duration::from_millis(60));
        assert!(batch.is_none());
        assert!(matches!(failed[0].1, AckFailure::Unconfirmed { seq: 5, .. }));
    }

    #[test]
    fn a_degraded_write_never_carries_an_earlier_write_that_waits_for_a_follower() {
        let now = Instant::now();
        let (d5, d6) = (now + Duration::from_millis(50), now + Duration::from_millis(80));
        // The follower has change 4 only.
        let mut inner = leading(3, &[("b", follower(4, true))]);
        let (w5, _r5) = waiter(3, 5, 1, d5);
        let (w6, _r6) = waiter(3, 6, 0, d6);
        // Arrival order is not change order.
        inner.waiters = vec![w6, w5];
        let (batch, failed) = settle(&mut inner, Some(3), now);
        assert!(batch.is_none(), "change 6 (needed 0) carried change 5 (needed 1)");
        assert!(failed.is_empty());
        // Change 6 passes its own deadline, still held back by change 5.
        let (batch, failed) = settle(&mut inner, Some(3), d6 - Duration::from_millis(40));
        assert!(batch.is_none() && failed.is_empty());
        // Change 5 fails at its deadline; change 6 goes alone.
        let (batch, failed) = settle(&mut inner, Some(3), d5);
        assert_eq!(failed.len(), 1);
        assert!(matches!(failed[0].1, AckFailure::Unconfirmed { seq: 5, .. }));
        let seqs: Vec<u64> = batch.expect("change 6").iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [6]);
        // Once the follower confirms, both go together.
        let (w5, _r5) = waiter(3, 5, 1, d5);
        let (w6, _r6) = waiter(3, 6, 0, d6);
        inner.waiters = vec![w6, w5];
        inner.record("b", follower(5, true));
        let (batch, _) = settle(&mut inner, Some(3), now);
        let seqs: Vec<u64> = batch.expect("a group").iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [5, 6]);
    }

    #[test]
    fn a_follower_with_a_newer_term_makes_the_leader_yield() {
        assert_eq!(
            poll_term(5, 9, Some(6), None),
            PollTerm::Yield {
                term: 6,
                known_acked: None,
                depose: 6
            }
        );
        assert_eq!(poll_term(5, 9, Some(5), None), PollTerm::Serve);
        assert_eq!(
            poll_term(5, 9, Some(2), Some((2, 8))),
            PollTerm::Serve,
            "an older follower catches up"
        );
        assert_eq!(
            poll_term(5, 9, None, None),
            PollTerm::Serve,
            "a follower that sends no term"
        );
    }

    #[test]
    fn a_follower_that_knows_an_acknowledgment_the_leader_lacks_deposes_it() {
        // Both reigns took term 1 (etcd lost its data in between): the
        // follower was told change 31 was acknowledged; this leader is empty.
        assert_eq!(
            poll_term(1, 0, Some(1), Some((1, 31))),
            PollTerm::Yield {
                term: 1,
                known_acked: Some((1, 31)),
                depose: 2
            }
        );
        assert_eq!(poll_term(1, 31, Some(1), Some((1, 31))), PollTerm::Serve);
    }

    #[test]
    fn only_a_fence_in_doubt_is_an_unknown_outcome() {
        let cases = [
            (AckError::NotLeader(3), Outcome::NotAcknowledged),
            (AckError::Unreachable("down".into()), Outcome::NotAcknowledged),
            (AckError::Unknown("timed out".into()), Outcome::Unknown),
        ];
        for (e, want) in cases {
            let f = AckFailure::from(e.clone());
            assert_eq!(f.outcome(), want, "{e:?}");
            let msg = f.to_string();
            match want {
                Outcome::NotAcknowledged => assert!(msg.contains("NOT acknowledged"), "{msg}"),
                Outcome::Unknown => assert!(msg.contains("may or may not be acknowledged"), "{msg}"),
            }
        }
        let unconfirmed = AckFailure::Unconfirmed {
            seq: 1,
            needed: 1,
            ms: 5,
        };
        assert_eq!(unconfirmed.outcome(), Outcome::NotAcknowledged);
        assert_eq!(Outcome::NotAcknowledged.as_str(), "not_acknowledged");
        assert_eq!(Outcome::Unknown.as_str(), "unknown");
    }

    #[test]
    fn the_group_up_to_the_highest_confirmed_change_is_acknowledged_together() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut inner = leading(3, &[("b", follower(7, true))]);
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
        let mut inner = leading(3, &[("b", follower(4, true))]);
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
