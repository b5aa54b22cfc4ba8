//! Leader election for writes, decided by etcd; the rules are
//! docs/WRITE_PROTOCOL.md ("Election", "Leading and the fence").
//!
//! Nothing home-made decides who leads: etcd does, the way Patroni uses it
//! for PostgreSQL. This module owns the I/O around the pure rules of
//! [`rules`] and the values of [`records`]:
//!
//! - **Watcher** (every node): lists and watches `{prefix}/election/` (with
//!   require-leader: a member cut off from its cluster does not feed a
//!   stale view) into an [`ElectionView`]: the leader, the acknowledged
//!   position with its mod revision, the nodes' reports, the excused
//!   members.
//! - **Reporter** (every node): keeps this node's [`Report`] under
//!   `{prefix}/election/nodes/{addr}` on a lease of its own, refreshed
//!   quickly while no leader exists; a candidate also remembers the
//!   candidate members it sees (durably, in its database).
//! - **Campaign** (candidates): when [`rules::decide`] says it may, one
//!   transaction creates the leader key and writes the baseline
//!   acknowledged position, guarded by "no leader key" and "the `acked`
//!   this decision read is still there" (its mod revision): a stale view
//!   cannot win. The term is [`rules::next_term`]: above every term known,
//!   in etcd and in the nodes' data, so terms grow across etcd wipes. The
//!   winner records its term and baseline in its database before it leads.
//! - **Leading**: the lease's timing is the pure state machine of
//!   [`lease`] (renew at once, then every (ttl − [`STEP_DOWN_MARGIN`])/3;
//!   step down ttl − margin after the last successful renewal was sent,
//!   when etcd says the lease is gone, when the view shows the key gone or
//!   replaced, or when a peer shows a newer term
//!   ([`Election::yield_to_term`])); this module does the I/O it asks for,
//!   each renewal on a keep-alive stream of its own, and on stepping down
//!   resigns (deletes its key if still its own, revokes the lease).
//! - **The fence** ([`Election::record_acked`]): an acknowledgment is one
//!   transaction guarded by the leader key's exact value (it holds the term
//!   and a random nonce: one reign, even across an etcd wipe). An attempt
//!   that timed out may have been recorded: the outcome is read back, and
//!   if that does not settle it the answer is [`AckError::Unknown`].

pub mod lease;
pub mod records;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

pub use lease::STEP_DOWN_MARGIN;
pub use records::{Acked, Leader, Report};
pub use rules::{may_lead, Mode, Standing};

use crate::registry::{validate_addr, EtcdConfig};
use records::{decode_acked, decode_leader, decode_report, LeaderRecord};

/// Most reports and excused members the view keeps.
const MAX_REPORTS: usize = 256;

/// How long one etcd call of the election may take before it counts as
/// failed (etcd's own leader election inside a 3-member cluster takes ~1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One attempt to record an acknowledgment; retried until the caller's
/// bound.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What this process knows about the election right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionView {
    /// The current leader (may be this node), from the watch.
    pub leader: Option<Leader>,
    /// The last acknowledged position, from the watch.
    pub acked: Option<Acked>,
    /// This node's term while it leads and believes its lease alive.
    pub my_term: Option<i64>,
    /// The mod revision of `acked` (0: absent): the campaign's guard.
    pub acked_rev: i64,
    /// The nodes' reports, by address.
    pub reports: BTreeMap<String, Report>,
    /// The lease each report is attached to, by address.
    pub report_leases: BTreeMap<String, i64>,
    /// Members an operator declared gone for good.
    pub excused: BTreeSet<String>,
    /// Whether the watch has listed the election keys at least once.
    pub synced: bool,
    /// Since when the watch has listed and followed the keys without a
    /// break.
    pub synced_at: Option<Instant>,
    /// The etcd revision the watch has seen up to: what it says of the
    /// keys is true as of this revision (a leader's own key appears in it
    /// only once it reaches the leader's term).
    pub revision: i64,
    /// Why this candidate is not running right now (empty when it is, or
    /// when it is not a candidate).
    pub waiting: String,
    /// The largest term a peer has shown this node ([`Election::yield_to_term`]):
    /// a leader under a smaller term resigns (L3).
    pub yield_to: i64,
}

/// What the election needs to know about this node's data, and the
/// durable records it keeps there.
pub trait History: Send + Sync + 'static {
    /// The last change this node has durably applied.
    fn position(&self) -> u64;
    /// This node's history after change `seq` as 64 hex digits, if it has
    /// applied `seq` and can still name it (empty string for seq 0). At its
    /// own position a node must always name it (for data with no change
    /// log the node derives one from the data's identity).
    fn digest_at(&self, seq: u64) -> Option<String>;
    /// What the node durably knows of itself (blocking: reads its database).
    fn standing(&self) -> Result<Standing, String>;
    /// Raises the durable term to `term` (never lowers it).
    fn raise_term(&self, term: i64) -> Result<(), String>;
    /// Raises the durably known acknowledged position.
    fn raise_known_acked(&self, term: i64, seq: u64) -> Result<(), String>;
    /// Adds and removes remembered candidate members.
    fn remember_members(&self, add: Vec<String>, remove: Vec<String>) -> Result<(), String>;
}

/// Why an acknowledgment could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The guard failed: this node does not lead under `term` any more.
    #[error("this node no longer leads (term {0} is over)")]
    NotLeader(i64),
    /// etcd could not be reached: nothing was recorded.
    #[error("etcd could not be reached to record the acknowledgment: {0}")]
    Unreachable(String),
    /// An attempt may have been recorded (it timed out after being sent)
    /// and reading the record back did not settle it.
    #[error("the acknowledgment may or may not have been recorded in etcd: {0}")]
    Unknown(String),
}

/// What the node and the election's tasks share beyond the view.
#[derive(Default)]
struct Shared {
    /// Candidates this node met outside the reports (the leader it
    /// follows, candidate followers that poll it), to remember.
    noted: std::sync::Mutex<BTreeSet<String>>,
    /// The lease of this node's report (0: none yet): the session a
    /// campaign's view belongs to.
    report_lease: std::sync::atomic::AtomicI64,
}

/// A running election (and watch) for one node.
pub struct Election {
    shared: Arc<Shared>,
    view: Arc<ArcSwap<ElectionView>>,
    publisher: Publisher,
    changes: watch::Receiver<u64>,
    client: Arc<ArcSwapOption<Client>>,
    fence: Arc<ArcSwapOption<Fence>>,
    keys: Keys,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handle: Handle,
}

#[derive(Clone)]
struct Keys {
    leader: String,
    acked: String,
    /// `{prefix}/election/nodes/`: one report per node.
    nodes: String,
    /// `{prefix}/election/excused/`: members an operator declared gone.
    excused: String,
    prefix: String,
}

impl Keys {
    fn new(cfg: &EtcdConfig) -> Self {
        let prefix = format!("{}/election/", cfg.prefix.trim_end_matches('/'));
        Keys {
            leader: format!("{prefix}leader"),
            acked: format!("{prefix}acked"),
            nodes: format!("{prefix}nodes/"),
            excused: format!("{prefix}excused/"),
            prefix,
        }
    }
}

/// This reign's leader-key value, as the fence compares it.
#[derive(Debug, Clone)]
struct Fence {
    term: i64,
    value: String,
}

/// Sends every view change to the watchers.
#[derive(Clone)]
struct Publisher {
    view: Arc<ArcSwap<ElectionView>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Publisher {
    fn update(&self, f: impl Fn(&mut ElectionView)) {
        let mut next = (**self.view.load()).clone();
        f(&mut next);
        if **self.view.load() != next {
            self.view.store(Arc::new(next));
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

impl Election {
    /// Watches the election keys; when `candidate`, also campaigns as
    /// `addr` (this node's registered address) whenever it may lead.
    pub fn spawn(
        handle: &Handle,
        cfg: EtcdConfig,
        addr: &str,
        candidate: bool,
        history: Arc<dyn History>,
    ) -> Self {
        let view = Arc::new(ArcSwap::from_pointee(ElectionView::default()));
        let (tx, rx) = watch::channel(0u64);
        let publisher = Publisher {
            view: view.clone(),
            changes: Arc::new(tx),
        };
        let publisher_for_node = publisher.clone();
        let client = Arc::new(ArcSwapOption::empty());
        let keys = Keys::new(&cfg);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let fence = Arc::new(ArcSwapOption::empty());
        let shared = Arc::new(Shared::default());
        let mut tasks = vec![
            handle.spawn(
                Watcher {
                    cfg: cfg.clone(),
                    keys: keys.clone(),
                    publisher: publisher.clone(),
                }
                .run(),
            ),
            handle.spawn(
                Reporter {
                    cfg: cfg.clone(),
                    keys: keys.clone(),
                    addr: addr.to_string(),
                    candidate,
                    shared: shared.clone(),
                    view: view.clone(),
                    history: history.clone(),
                    changes: rx.clone(),
                }
                .run(),
            ),
        ];
        if candidate {
            let campaign = Campaign {
                cfg,
                keys: keys.clone(),
                addr: addr.to_string(),
                publisher,
                client: client.clone(),
                fence: fence.clone(),
                shared: shared.clone(),
                history,
                changes: rx.clone(),
            };
            tasks.push(handle.spawn(async move {
                campaign.run(stop_rx).await;
                let _ = done_tx.send(());
            }));
        } else {
            drop(stop_rx);
            let _ = done_tx.send(());
        }
        Election {
            shared,
            view,
            publisher: publisher_for_node,
            changes: rx,
            client,
            fence,
            keys,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            done: std::sync::Mutex::new(Some(done_rx)),
            tasks,
            handle: handle.clone(),
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<ElectionView> {
        self.view.load_full()
    }

    /// Ticks on every change of the view.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// This node's term while it leads.
    pub fn leading(&self) -> Option<i64> {
        self.view.load().my_term
    }

    /// This node met candidate `addr` outside the reports (the leader it
    /// follows, a candidate follower that polls it): it is remembered as a
    /// member, so that after etcd lost its data the election waits for it.
    pub fn note_member(&self, addr: &str) {
        let Ok(mut noted) = self.shared.noted.lock() else {
            return;
        };
        if noted.len() < MAX_REPORTS && !noted.contains(addr) && validate_addr(addr).is_ok() {
            noted.insert(addr.to_string());
        }
    }

    /// A peer showed `term` (a follower's poll, L3): a leader under a
    /// smaller term steps down and resigns, so that the next campaign runs
    /// with a larger term. The caller records `term` durably first.
    pub fn yield_to_term(&self, term: i64) {
        self.publisher.update(|v| v.yield_to = v.yield_to.max(term));
    }

    /// Records `seq` (history digest `digest`) as acknowledged under `term`,
    /// only if this node still leads under `term` in etcd. Retries a failed
    /// call (another etcd member answers) until `within` has passed.
    pub async fn record_acked(
        &self,
        term: i64,
        seq: u64,
        digest: &str,
        within: Duration,
    ) -> Result<(), AckError> {
        let Some(fence) = self.fence.load_full().filter(|f| f.term == term) else {
            return Err(AckError::NotLeader(term));
        };
        record_acked(&self.client, &self.keys, &fence, seq, digest, within).await
    }

    /// [`Election::record_acked`] from a thread outside the runtime.
    pub fn record_acked_blocking(
        &self,
        term: i64,
        seq: u64,
        digest: &str,
        within: Duration,
    ) -> Result<(), AckError> {
        self.handle.block_on(self.record_acked(term, seq, digest, within))
    }

    /// Gives up the lead (deletes the key if it is this node's, revokes
    /// the lease) and stops, waiting at most `timeout`. Takes `&self` so a
    /// shared election (the node keeps it in an `Arc`) can be stopped.
    pub fn shutdown_blocking(&self, timeout: Duration) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            let _ = self
                .handle
                .block_on(async { tokio::time::timeout(timeout, done).await });
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops without giving anything up, as a crash would: the lease runs
    /// out in etcd after its ttl. For tests of takeover.
    pub fn abandon(self) {
        if let Ok(mut s) = self.stop.lock() {
            s.take();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn record_acked(
    client: &ArcSwapOption<Client>,
    keys: &Keys,
    fence: &Fence,
    seq: u64,
    digest: &str,
    within: Duration,
) -> Result<(), AckError> {
    let term = fence.term;
    let deadline = Instant::now() + within;
    let value = serde_json::to_string(&Acked {
        term,
        seq,
        digest: digest.to_string(),
    })
    .map_err(|e| AckError::Unreachable(e.to_string()))?;
    let mut last = String::from("no connection to etcd yet");
    // Whether an attempt may have been recorded although no answer said
    // so (sent, then timed out or broke).
    let mut in_doubt = false;
    let settled = loop {
        if let Some(c) = client.load_full() {
            let mut c = (*c).clone();
            let txn = Txn::new()
                .when([Compare::value(
                    keys.leader.as_str(),
                    CompareOp::Equal,
                    fence.value.as_str(),
                )])
                .and_then([TxnOp::put(keys.acked.as_str(), value.as_str(), None)]);
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            // Short attempts: while etcd elects a new leader of its own (a
            // member died) a call hangs rather than fails; the next attempt
            // goes through once it has one.
            match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), c.txn(txn)).await {
                Ok(Ok(r)) if r.succeeded() => return Ok(()),
                Ok(Ok(_)) => break Err(AckError::NotLeader(term)),
                Ok(Err(e)) => {
                    in_doubt = true;
                    last = e.to_string();
                }
                Err(_) => {
                    in_doubt = true;
                    last = "timed out".into();
                }
            }
        }
        if Instant::now() >= deadline {
            break Err(AckError::Unreachable(last.clone()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !in_doubt {
        return settled;
    }
    // An earlier attempt may have been recorded: read the record back.
    // Within one term `acked` only grows, so term T at `seq` or later says
    // it was; term T below `seq` says it was not.
    match read_back(client, keys).await {
        Some(a) if a.term == term && a.seq >= seq => Ok(()),
        Some(a) if a.term == term => Err(settled.err().unwrap_or(AckError::NotLeader(term))),
        Some(a) => Err(AckError::Unknown(format!(
            "an attempt timed out ({last}); etcd now holds term {}'s position {}",
            a.term, a.seq
        ))),
        None => Err(AckError::Unknown(format!(
            "an attempt timed out ({last}) and the record could not be read back"
        ))),
    }
}

/// The campaign: no leader, the `acked` the decision read (mod revision
/// `acked_rev`, 0 when absent) is still the one in etcd, and the
/// candidate's own report is still on the lease of the session the
/// decision was made in (`report`: its key and lease; a revision can
/// repeat after etcd lost its data, a lease of the old etcd cannot be
/// there); then the leader key (on `lease`) and the baseline, together.
fn campaign_txn(
    keys: &Keys,
    acked_rev: i64,
    report: (&str, i64),
    leader_value: &str,
    lease: i64,
    baseline: &str,
) -> Txn {
    Txn::new()
        .when([
            Compare::create_revision(keys.leader.as_str(), CompareOp::Equal, 0),
            Compare::mod_revision(keys.acked.as_str(), CompareOp::Equal, acked_rev),
            Compare::lease(report.0, CompareOp::Equal, report.1),
        ])
        .and_then([
            TxnOp::put(
                keys.leader.as_str(),
                leader_value,
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(keys.acked.as_str(), baseline, None),
        ])
}

/// The acknowledged position as etcd holds it now, if it answers.
async fn read_back(client: &ArcSwapOption<Client>, keys: &Keys) -> Option<Acked> {
    let mut c = (*client.load_full()?).clone();
    let got = tokio::time::timeout(CALL_TIMEOUT, c.get(keys.acked.as_str(), None))
        .await
        .ok()?
        .ok()?;
    got.kvs().first().and_then(|kv| decode_acked(kv.value()))
}

/// Renews `lease` once, within `within` (at most [`CALL_TIMEOUT`]):
/// `Ok(true)` renewed, `Ok(false)` etcd says the lease is gone, `Err` no
/// answer. Each renewal opens its own keep-alive stream (whose first
/// answer is the renewal), so a stream broken on one member, or never
/// opened because a member refused it, costs one retry, not the term.
async fn renew(client: &mut Client, lease: i64, within: Duration) -> Result<bool, String> {
    match tokio::time::timeout(CALL_TIMEOUT.min(within), client.lease_keep_alive(lease)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("lease not found") => Ok(false),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps the [`ElectionView`] current from etcd.
struct Watcher {
    cfg: EtcdConfig,
    keys: Keys,
    publisher: Publisher,
}

impl Watcher {
    async fn run(self) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.list_and_watch(&mut wait).await {
                Ok(()) => {}
                Err(e) => tracing::warn!("Failed to connect to etcd: {e} (election watch); retrying"),
            }
            self.publisher.update(|v| {
                v.synced = false;
                v.synced_at = None;
            });
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One key's new value (`None`: deleted) into `view`.
    fn apply(&self, view: &mut ElectionView, key: &[u8], value: Option<(&[u8], i64, i64, i64)>) {
        let Ok(key) = std::str::from_utf8(key) else { return };
        if key == self.keys.leader {
            view.leader = value.and_then(|(v, created, _, _)| decode_leader(v, created));
        } else if key == self.keys.acked {
            view.acked = value.and_then(|(v, _, _, _)| decode_acked(v));
            view.acked_rev = value.map_or(0, |(_, _, modified, _)| modified);
        } else if let Some(addr) = key.strip_prefix(self.keys.nodes.as_str()) {
            let lease = value.map_or(0, |(_, _, _, lease)| lease);
            match value.and_then(|(v, _, _, _)| decode_report(v, addr)) {
                Some(r) if view.reports.len() < MAX_REPORTS || view.reports.contains_key(addr) => {
                    view.reports.insert(addr.to_string(), r);
                    view.report_leases.insert(addr.to_string(), lease);
                }
                _ => {
                    view.reports.remove(addr);
                    view.report_leases.remove(addr);
                }
            }
        } else if let Some(addr) = key.strip_prefix(self.keys.excused.as_str()) {
            if value.is_some() && validate_addr(addr).is_ok() && view.excused.len() < MAX_REPORTS {
                view.excused.insert(addr.to_string());
            } else {
                view.excused.remove(addr);
            }
        }
    }

    async fn list_and_watch(&self, wait: &mut Duration) -> Result<(), String> {
        let mut client = self.cfg.connect_any().await?;
        let listed = client
            .get(self.keys.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.cfg.describe(&e))?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut fresh = ElectionView::default();
        for kv in listed.kvs() {
            self.apply(
                &mut fresh,
                kv.key(),
                Some((kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease())),
            );
        }
        self.publisher.update(|v| {
            v.leader = fresh.leader.clone();
            v.acked = fresh.acked.clone();
            v.acked_rev = fresh.acked_rev;
            v.reports = fresh.reports.clone();
            v.report_leases = fresh.report_leases.clone();
            v.excused = fresh.excused.clone();
            v.synced = true;
            v.synced_at = Some(Instant::now());
            v.revision = revision;
        });
        *wait = Duration::from_millis(200);
        let mut stream = client
            .watch(
                self.keys.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| self.cfg.describe(&e))?;
        while let Some(resp) = stream.message().await.map_err(|e| self.cfg.describe(&e))? {
            if resp.canceled() {
                return Ok(());
            }
            let revision = resp.header().map(|h| h.revision());
            self.publisher.update(|view| {
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => self.apply(
                            view,
                            kv.key(),
                            Some((kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease())),
                        ),
                        EventType::Delete => self.apply(view, kv.key(), None),
                    }
                }
                if let Some(r) = revision {
                    view.revision = view.revision.max(r);
                }
            });
        }
        Ok(())
    }
}

/// Keeps this node's [`Report`] in etcd, and (a candidate) remembers the
/// candidate members it sees.
struct Reporter {
    cfg: EtcdConfig,
    keys: Keys,
    addr: String,
    candidate: bool,
    shared: Arc<Shared>,
    view: Arc<ArcSwap<ElectionView>>,
    history: Arc<dyn History>,
    changes: watch::Receiver<u64>,
}

/// How often a report is refreshed while no leader exists, and while one
/// does.
const REPORT_LEADERLESS: Duration = Duration::from_millis(300);
const REPORT_LED: Duration = Duration::from_secs(5);

impl Reporter {
    async fn run(mut self) {
        let mut wait = Duration::from_millis(200);
        loop {
            if let Err(e) = self.report(&mut wait).await {
                tracing::debug!("election report: {e}; retrying");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// What this node reports now, from its durable standing.
    async fn standing(&self) -> Result<Standing, String> {
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || history.standing())
            .await
            .map_err(|e| e.to_string())?
    }

    /// Remembers every candidate that reports and every one this node met
    /// (a candidate: itself too), and forgets the excused ones (durably:
    /// the members an election after an etcd data loss waits for).
    async fn remember(&self, standing: &Standing, view: &ElectionView) {
        let noted: Vec<String> = self
            .shared
            .noted
            .lock()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        let mut add: Vec<String> = view
            .reports
            .values()
            .filter(|r| r.candidate)
            .map(|r| r.addr.clone())
            .chain(noted)
            .chain(self.candidate.then(|| self.addr.clone()))
            .filter(|a| !view.excused.contains(a) && !standing.members.contains(a))
            .collect();
        add.sort();
        add.dedup();
        let remove: Vec<String> = standing
            .members
            .iter()
            .filter(|m| view.excused.contains(*m))
            .cloned()
            .collect();
        if add.is_empty() && remove.is_empty() {
            return;
        }
        let history = self.history.clone();
        let r = tokio::task::spawn_blocking(move || history.remember_members(add, remove)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!("election: could not remember the candidate members: {e}");
        }
    }

    async fn report(&mut self, wait: &mut Duration) -> Result<(), String> {
        let mut client = self.cfg.connect_any().await?;
        let ttl = self.cfg.ttl;
        let lease = tokio::time::timeout(CALL_TIMEOUT, client.lease_grant(ttl, None))
            .await
            .map_err(|_| "lease grant timed out".to_string())?
            .map_err(|e| self.cfg.describe(&e))?
            .id();
        *wait = Duration::from_millis(200);
        let key = format!("{}{}", self.keys.nodes, self.addr);
        let session = SessionLease(&self.shared);
        let every = Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).max(200));
        let mut last_put: Option<Report> = None;
        let mut last_put_at = Instant::now();
        let mut renew_at = Instant::now() + every;
        loop {
            let view = self.view.load_full();
            let leaderless = view.leader.is_none();
            if last_put.is_none() || leaderless || last_put_at.elapsed() >= REPORT_LED {
                let standing = self.standing().await?;
                self.remember(&standing, &view).await;
                let report = Report {
                    addr: self.addr.clone(),
                    candidate: self.candidate,
                    term: standing.term,
                    last_term: standing.last_term,
                    seq: standing.seq,
                    acked_term: standing.acked.0,
                    acked_seq: standing.acked.1,
                    has_data: standing.has_data,
                    dataset: standing.dataset,
                    members: standing.members.clone(),
                    recovering: view.synced && rules::etcd_regressed(view.acked.as_ref(), &standing),
                };
                // Put again when it changed, or when etcd holds another
                // (a snapshot restored an older one): the view is etcd's.
                if last_put.as_ref() != Some(&report) || view.reports.get(&self.addr) != Some(&report) {
                    let value = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                    tokio::time::timeout(
                        CALL_TIMEOUT,
                        client.put(key.as_str(), value, Some(PutOptions::new().with_lease(lease))),
                    )
                    .await
                    .map_err(|_| "report put timed out".to_string())?
                    .map_err(|e| self.cfg.describe(&e))?;
                    last_put = Some(report);
                    session.set(lease);
                }
                last_put_at = Instant::now();
            }
            if Instant::now() >= renew_at {
                match renew(&mut client, lease, every).await {
                    Ok(true) => renew_at = Instant::now() + every,
                    Ok(false) => return Err("report lease expired".into()),
                    Err(e) => return Err(format!("report lease renewal failed: {e}")),
                }
            }
            let tick = if leaderless { REPORT_LEADERLESS } else { every };
            let _ = tokio::time::timeout(
                tick.min(renew_at.saturating_duration_since(Instant::now())),
                self.changes.changed(),
            )
            .await;
        }
    }
}

/// The report's lease as the campaign compares it; cleared when the
/// reporter's session ends (a lease lost, etcd gone or wiped).
struct SessionLease<'a>(&'a Shared);

impl SessionLease<'_> {
    fn set(&self, lease: i64) {
        self.0
            .report_lease
            .store(lease, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for SessionLease<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// The candidate's side: runs when it may, leads while its lease lives.
struct Campaign {
    cfg: EtcdConfig,
    keys: Keys,
    addr: String,
    publisher: Publisher,
    client: Arc<ArcSwapOption<Client>>,
    fence: Arc<ArcSwapOption<Fence>>,
    shared: Arc<Shared>,
    history: Arc<dyn History>,
    changes: watch::Receiver<u64>,
}

/// How a reign (or an attempt at one) ended.
enum Ended {
    Stopped,
    Lost,
}

/// What a candidate that may run campaigns with.
struct Run {
    term: i64,
    /// The mod revision of the `acked` its decision read.
    acked_rev: i64,
    /// The lease of this node's report in the view the decision read: the
    /// etcd session the decision belongs to.
    report_lease: i64,
    /// Its baseline: its own position and digest.
    seq: u64,
    digest: String,
    mode: Mode,
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut wait = Duration::from_millis(200);
        // Since when no leader has been seen (the waits of the rules).
        let mut leaderless_since: Option<Instant> = None;
        loop {
            let client = tokio::select! {
                c = self.cfg.connect_any() => c,
                _ = &mut stop => return,
            };
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("Failed to connect to etcd: {e} (election); retrying");
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = &mut stop => return }
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            self.client.store(Some(Arc::new(client.clone())));
            wait = Duration::from_millis(200);
            match self.campaign(client, &mut stop, &mut leaderless_since).await {
                Ended::Stopped => return,
                Ended::Lost => {
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = &mut stop => return }
                }
            }
        }
    }

    /// Whether this node may run now ([`rules::decide`]); `Err` says why
    /// not.
    async fn eligible(&self, leaderless_since: &mut Option<Instant>) -> Result<Run, String> {
        let view = self.publisher.view.load_full();
        let Some(synced_at) = view.synced_at.filter(|_| view.synced) else {
            return Err("waiting for the election keys to be listed".into());
        };
        if view.leader.is_some() {
            *leaderless_since = None;
            return Err(String::new());
        }
        // The decision belongs to this node's current session with etcd:
        // its own report, on the lease it holds now, is in the view.
        let report_lease = self
            .shared
            .report_lease
            .load(std::sync::atomic::Ordering::Acquire);
        if report_lease == 0 || view.report_leases.get(&self.addr) != Some(&report_lease) {
            return Err("waiting for this node's own report to show in the view".into());
        }
        let leaderless_for = leaderless_since.get_or_insert_with(Instant::now).elapsed();
        let history = self.history.clone();
        let acked_seq = view.acked.as_ref().map(|a| a.seq);
        let (standing, at_acked, at_position) = tokio::task::spawn_blocking(move || {
            let standing = history.standing()?;
            let at_acked = acked_seq.and_then(|s| history.digest_at(s));
            let at_position = history.digest_at(standing.seq);
            Ok::<_, String>((standing, at_acked, at_position))
        })
        .await
        .map_err(|e| e.to_string())??;
        let mode = rules::decide(&rules::Inputs {
            me: &self.addr,
            standing: &standing,
            digest_at_acked: at_acked.as_deref(),
            acked: view.acked.as_ref(),
            reports: &view.reports,
            excused: &view.excused,
            synced_for: synced_at.elapsed(),
            leaderless_for,
            ttl: Duration::from_secs(self.cfg.ttl.max(1) as u64),
        })?;
        // A history this node cannot name is no baseline: recorded as
        // empty it would bar every node, this one included, from leading.
        let digest = at_position.ok_or_else(|| {
            format!(
                "cannot name its own history at change {}: not running",
                standing.seq
            )
        })?;
        Ok(Run {
            term: rules::next_term(view.acked.as_ref(), &standing, &view.reports),
            acked_rev: view.acked_rev,
            report_lease,
            seq: standing.seq,
            digest,
            mode,
        })
    }

    async fn campaign(
        &mut self,
        mut client: Client,
        stop: &mut oneshot::Receiver<()>,
        leaderless_since: &mut Option<Instant>,
    ) -> Ended {
        loop {
            let run = match self.eligible(leaderless_since).await {
                Ok(run) => run,
                Err(why) => {
                    self.publisher.update(|v| v.waiting = why.clone());
                    tokio::select! {
                        _ = self.changes.changed() => {},
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {},
                        _ = &mut *stop => return Ended::Stopped,
                    }
                    continue;
                }
            };
            self.publisher.update(|v| v.waiting.clear());
            let lease = match tokio::time::timeout(CALL_TIMEOUT, client.lease_grant(self.cfg.ttl, None)).await
            {
                Ok(Ok(l)) => l.id(),
                Ok(Err(e)) => {
                    tracing::warn!(
                        "Failed to connect to etcd: {} (election lease)",
                        self.cfg.describe(&e)
                    );
                    return Ended::Lost;
                }
                Err(_) => {
                    tracing::warn!(
                        "election: etcd did not grant a lease within {}s; retrying",
                        CALL_TIMEOUT.as_secs()
                    );
                    return Ended::Lost;
                }
            };
            let granted_at = Instant::now();
            let record = LeaderRecord {
                addr: self.addr.clone(),
                since: now_secs(),
                term: Some(run.term),
                nonce: Some(format!("{:032x}", rand::random::<u128>())),
            };
            let baseline = Acked {
                term: run.term,
                seq: run.seq,
                digest: run.digest.clone(),
            };
            let (Ok(value), Ok(baseline)) =
                (serde_json::to_string(&record), serde_json::to_string(&baseline))
            else {
                return Ended::Lost;
            };
            let report_key = format!("{}{}", self.keys.nodes, self.addr);
            let txn = campaign_txn(
                &self.keys,
                run.acked_rev,
                (&report_key, run.report_lease),
                &value,
                lease,
                &baseline,
            );
            let won = match tokio::time::timeout(CALL_TIMEOUT, client.txn(txn)).await {
                Ok(Ok(r)) if r.succeeded() => r.header().map(|h| h.revision()),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    tracing::warn!("Failed to connect to etcd: {} (election)", self.cfg.describe(&e));
                    let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
                    return Ended::Lost;
                }
                Err(_) => {
                    tracing::warn!(
                        "election: etcd did not answer the campaign within {}s; retrying",
                        CALL_TIMEOUT.as_secs()
                    );
                    let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
                    return Ended::Lost;
                }
            };
            let Some(rev) = won else {
                // Someone else was quicker, or `acked` moved: wait for the
                // watch to show it rather than grant lease after lease.
                let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
                tokio::select! {
                    _ = self.changes.changed() => {},
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    _ = &mut *stop => return Ended::Stopped,
                }
                continue;
            };
            let fence = Fence {
                term: run.term,
                value,
            };
            return self.lead(client, lease, fence, rev, granted_at, &run, stop).await;
        }
    }

    /// Leads under `fence.term` until the lease is lost or the node stops.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &mut self,
        mut client: Client,
        lease: i64,
        fence: Fence,
        rev: i64,
        granted_at: Instant,
        run: &Run,
        stop: &mut oneshot::Receiver<()>,
    ) -> Ended {
        let term = fence.term;
        let ttl = Duration::from_secs(self.cfg.ttl as u64);
        let mut clock = lease::LeaseClock::new(ttl, granted_at);
        // The term and the baseline go into this node's data before it
        // leads: a term lives on in the data after etcd forgets it.
        let history = self.history.clone();
        let seq = run.seq;
        let recorded = tokio::task::spawn_blocking(move || {
            history.raise_term(term)?;
            history.raise_known_acked(term, seq)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = recorded {
            tracing::warn!("election: won term {term} but could not record it in the data ({e}); resigning");
            self.resign(&mut client, lease, rev, term).await;
            return Ended::Lost;
        }
        self.fence.store(Some(Arc::new(fence)));
        tracing::info!(
            term,
            seq,
            "election: this node ({}) leads from term {term}, with history up to change {seq} ({:?})",
            self.addr,
            run.mode
        );
        self.publisher.update(|v| v.my_term = Some(term));
        // The timing is the clock's (`lease.rs`); this loop only does the
        // I/O it asks for.
        let why = loop {
            match clock.next(Instant::now()) {
                lease::Action::StepDown(why) => break why,
                lease::Action::WaitUntil(until) => {
                    tokio::select! {
                        _ = &mut *stop => {
                            self.step_down(term);
                            self.resign(&mut client, lease, rev, term).await;
                            return Ended::Stopped;
                        }
                        _ = self.changes.changed() => {
                            if let Some(why) = lease::on_view(&self.publisher.view.load_full(), rev, term) {
                                break why;
                            }
                        }
                        _ = tokio::time::sleep_until(until.into()) => {}
                    }
                }
                lease::Action::Renew { within } => {
                    let sent = Instant::now();
                    clock.sent(sent);
                    match renew(&mut client, lease, within).await {
                        Ok(true) => clock.renewed(sent),
                        Ok(false) => break lease::StepDown::Expired,
                        Err(e) => {
                            tracing::debug!(
                                "election: renewing the lease of term {term} failed: {e}; retrying"
                            );
                            clock.failed(Instant::now());
                            // This member or the connection failed: renew
                            // the same lease through a fresh connection
                            // (another member answers).
                            if let Ok(Ok(c)) =
                                tokio::time::timeout(CALL_TIMEOUT, self.cfg.connect_any()).await
                            {
                                client = c;
                                self.client.store(Some(Arc::new(client.clone())));
                            }
                        }
                    }
                }
            }
        };
        match why {
            lease::StepDown::NotRenewed => tracing::warn!(
                "election: lease of term {term} not renewed in time (etcd unreachable?); stepping down"
            ),
            lease::StepDown::Expired => {
                tracing::warn!("election: lease of term {term} expired in etcd; stepping down")
            }
            lease::StepDown::KeyLost => {
                tracing::warn!("election: the leader key of term {term} is gone or replaced; stepping down")
            }
            lease::StepDown::NewerTerm(t) => tracing::warn!(
                "election: a peer knows term {t}, newer than this leader's {term}; stepping down"
            ),
        }
        self.step_down(term);
        self.resign(&mut client, lease, rev, term).await;
        Ended::Lost
    }

    fn step_down(&self, term: i64) {
        self.fence.store(None);
        self.publisher.update(|v| {
            if v.my_term == Some(term) {
                v.my_term = None;
            }
        });
    }

    /// Deletes the leader key if it is still this reign's (created at
    /// `rev`), and revokes the lease: a successor can run at once.
    async fn resign(&self, client: &mut Client, lease: i64, rev: i64, term: i64) {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.leader.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then([TxnOp::delete(self.keys.leader.as_str(), None)]);
        let _ = tokio::time::timeout(CALL_TIMEOUT, client.txn(txn)).await;
        let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
        tracing::info!("election: resigned term {term}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate whose view of `acked` is stale (it read it before a
    /// leader acknowledged more) loses its campaign, against a real etcd.
    #[test]
    fn a_campaign_on_a_stale_view_of_acked_fails() {
        let dir = kamaitachi_testkit::temp_dir("election-stale-view");
        let etcd = kamaitachi_testkit::Etcd::start(&dir);
        let rt = crate::registry::runtime().unwrap();
        rt.block_on(async {
            let mut c = Client::connect([etcd.endpoint()], None).await.unwrap();
            let keys = Keys {
                leader: "/stale/election/leader".into(),
                acked: "/stale/election/acked".into(),
                nodes: "/stale/election/nodes/".into(),
                excused: "/stale/election/excused/".into(),
                prefix: "/stale/election/".into(),
            };
            let seen = c
                .put(keys.acked.as_str(), r#"{"term":1,"seq":39,"digest":""}"#, None)
                .await
                .unwrap();
            let stale_rev = seen.header().unwrap().revision();
            // The leader acknowledges change 40 after the candidate read 39.
            c.put(keys.acked.as_str(), r#"{"term":1,"seq":40,"digest":""}"#, None)
                .await
                .unwrap();
            let lease = c.lease_grant(5, None).await.unwrap().id();
            let report_key = "/stale/election/nodes/10.0.0.3:8080";
            c.put(report_key, "{}", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap();
            let report = (report_key, lease);
            let leader = r#"{"addr":"10.0.0.3:8080","since":1,"term":2}"#;
            let stale = campaign_txn(
                &keys,
                stale_rev,
                report,
                leader,
                lease,
                r#"{"term":2,"seq":39,"digest":""}"#,
            );
            assert!(!c.txn(stale).await.unwrap().succeeded(), "a stale view won");
            let got = c.get(keys.acked.as_str(), None).await.unwrap();
            assert!(String::from_utf8_lossy(got.kvs()[0].value()).contains("\"seq\":40"));
            assert!(c.get(keys.leader.as_str(), None).await.unwrap().kvs().is_empty());
            // Absent in the view, present in etcd: also stale.
            let absent = campaign_txn(
                &keys,
                0,
                report,
                leader,
                lease,
                r#"{"term":2,"seq":39,"digest":""}"#,
            );
            assert!(!c.txn(absent).await.unwrap().succeeded());
            // A view of another session (etcd lost its data since: the
            // report is on another lease, while a revision may match again).
            let now_rev = got.kvs()[0].mod_revision();
            let baseline = r#"{"term":2,"seq":40,"digest":""}"#;
            let other_session =
                campaign_txn(&keys, now_rev, (report_key, lease + 1), leader, lease, baseline);
            assert!(!c.txn(other_session).await.unwrap().succeeded());
            // The current view of the current session wins.
            let fresh = campaign_txn(&keys, now_rev, report, leader, lease, baseline);
            assert!(c.txn(fresh).await.unwrap().succeeded());
        });
    }
}
