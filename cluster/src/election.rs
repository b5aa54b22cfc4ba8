//! Leader election for writes, decided by etcd (issue 14).
//!
//! Nothing home-made decides who leads: etcd does, the way Patroni uses it
//! for PostgreSQL.
//!
//! - **Leader key** `{prefix}/election/leader` → `{"addr":…,"since":…}`,
//!   attached to the leader's lease. A candidate creates it in a transaction
//!   that succeeds only if the key does not exist (`create_revision == 0`).
//!   The key's create revision is the leader's **term**: etcd revisions only
//!   grow, so a later leader always has a larger term, and a term names one
//!   reign exactly.
//! - **Acknowledged position** `{prefix}/election/acked` →
//!   `{"term":…,"seq":…,"digest":…}`, with no lease (it must outlive every
//!   leader). The leader writes it before it acknowledges a write, in a
//!   transaction guarded by `create_revision(leader key) == term`. That one
//!   compare is the fence: once the leader's lease has expired (or another
//!   node leads), the guard fails, so a deposed leader can never acknowledge
//!   a write, not even one it committed locally a moment before. Two leaders
//!   never acknowledge the same write.
//! - **Who may run**: a candidate campaigns only when no leader key exists
//!   and it holds everything acknowledged: its applied sequence reaches
//!   `acked.seq` and its running history digest at `acked.seq` equals
//!   `acked.digest` (same history, not just the same length). With no
//!   acknowledged position yet (a cluster that has never elected anyone), a
//!   candidate with data runs at once and an empty one waits one lease ttl
//!   first, so the node that holds the data wins the first election.
//! - A new leader first records its whole history as acknowledged (the
//!   baseline): from then on no node without that history may lead. A node
//!   that cannot name its history (its [`History::digest_at`] is `None` at
//!   its own position) does not lead: an unnamed baseline would bar every
//!   node from leading after it.
//! - **Losing the lease**: the leader renews it every ttl/3, each renewal
//!   on a keep-alive stream of its own (a stream that fails on one member
//!   costs a retry through another, not the term). If a renewal has not
//!   succeeded for ttl − [`STEP_DOWN_MARGIN`] since it was sent, or etcd
//!   says the lease is gone, or the watch shows the key gone or someone
//!   else's, it steps down (and the acknowledgment fence makes that timing
//!   a matter of speed, not of safety), then deletes the key if it is
//!   still its own and revokes the lease, so a successor need not wait for
//!   the lease to run out. A graceful stop does the same.
//!
//! The election and the watch run as tokio tasks on the registry runtime;
//! the node learns what changed from [`Election::view`] and
//! [`Election::changes`], and asks for the fence with
//! [`Election::record_acked`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::registry::{validate_addr, EtcdConfig, MAX_VALUE_BYTES};

/// A leader steps down this long before its lease could have expired in
/// etcd (counted from when its last successful renewal was sent).
pub const STEP_DOWN_MARGIN: Duration = Duration::from_secs(1);

/// How long one etcd call of the election may take before it counts as
/// failed (etcd's own leader election inside a 3-member cluster takes ~1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One attempt to record an acknowledgment; retried until the caller's
/// bound.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);

/// After a failed renewal the next one is tried this soon, not a whole
/// renewal period later.
const RENEW_RETRY: Duration = Duration::from_millis(200);

/// The leader as etcd says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub addr: String,
    /// The leader key's create revision: grows with every election.
    pub term: i64,
    /// Unix seconds when it took the lead.
    pub since: u64,
}

/// The value of the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaderRecord {
    addr: String,
    since: u64,
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

/// What this process knows about the election right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionView {
    /// The current leader (may be this node), from the watch.
    pub leader: Option<Leader>,
    /// The last acknowledged position, from the watch.
    pub acked: Option<Acked>,
    /// This node's term while it leads and believes its lease alive.
    pub my_term: Option<i64>,
    /// Whether the watch has listed the election keys at least once.
    pub synced: bool,
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

/// What the election needs to know about this node's data.
pub trait History: Send + Sync + 'static {
    /// The last change this node has durably applied.
    fn position(&self) -> u64;
    /// This node's history after change `seq` as 64 hex digits, if it has
    /// applied `seq` and can still name it (empty string for seq 0). At its
    /// own position a node must always name it (for data with no change
    /// log the node derives one from the data's identity).
    fn digest_at(&self, seq: u64) -> Option<String>;
}

/// Whether a node with this history may lead, given the acknowledged
/// position. `Err` says why not.
pub fn may_lead(acked: Option<&Acked>, position: u64, digest_at_acked: Option<&str>) -> Result<(), String> {
    let Some(a) = acked else { return Ok(()) };
    if position < a.seq {
        return Err(format!(
            "behind the acknowledged position: applied {position}, acknowledged {} (term {})",
            a.seq, a.term
        ));
    }
    // An empty digest past change 0 names no history (an earlier version
    // recorded one for data without a change log): only the length counts.
    if a.seq > 0 && !a.digest.is_empty() && digest_at_acked != Some(a.digest.as_str()) {
        return Err(format!(
            "history differs from the acknowledged one at change {} (term {})",
            a.seq, a.term
        ));
    }
    Ok(())
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

/// A running election (and watch) for one node.
pub struct Election {
    view: Arc<ArcSwap<ElectionView>>,
    publisher: Publisher,
    changes: watch::Receiver<u64>,
    client: Arc<ArcSwapOption<Client>>,
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
    prefix: String,
}

impl Keys {
    fn new(cfg: &EtcdConfig) -> Self {
        let prefix = format!("{}/election/", cfg.prefix.trim_end_matches('/'));
        Keys {
            leader: format!("{prefix}leader"),
            acked: format!("{prefix}acked"),
            prefix,
        }
    }
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
        let mut tasks = vec![handle.spawn(
            Watcher {
                cfg: cfg.clone(),
                keys: keys.clone(),
                publisher: publisher.clone(),
            }
            .run(),
        )];
        if candidate {
            let campaign = Campaign {
                cfg,
                keys: keys.clone(),
                addr: addr.to_string(),
                publisher,
                client: client.clone(),
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
            view,
            publisher: publisher_for_node,
            changes: rx,
            client,
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
        record_acked(&self.client, &self.keys, term, seq, digest, within).await
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
    term: i64,
    seq: u64,
    digest: &str,
    within: Duration,
) -> Result<(), AckError> {
    let deadline = Instant::now() + within;
    let value = serde_json::to_string(&Acked {
        term,
        seq,
        digest: digest.to_string(),
    })
    .map_err(|e| AckError::Unreachable(e.to_string()))?;
    let mut last = String::from("no connection to etcd yet");
    loop {
        if let Some(c) = client.load_full() {
            let mut c = (*c).clone();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    keys.leader.as_str(),
                    CompareOp::Equal,
                    term,
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
                Ok(Ok(_)) => return Err(AckError::NotLeader(term)),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        if Instant::now() >= deadline {
            return Err(AckError::Unreachable(last));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `view` shows the leader key of `term` gone or someone else's.
/// Only a view as new as the term can say so: the watch delivers the key's
/// creation after the campaign's answer, and a view from before it (a busy
/// host) once deposed every new leader the moment it took the lead.
fn key_lost(view: &ElectionView, term: i64) -> bool {
    view.synced && view.revision >= term && view.leader.as_ref().is_none_or(|l| l.term != term)
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

/// Keeps [`ElectionView::leader`] and [`ElectionView::acked`] current.
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
            self.publisher.update(|v| v.synced = false);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    fn apply(&self, key: &[u8], value: Option<(&[u8], i64)>) {
        if key == self.keys.leader.as_bytes() {
            let leader = value.and_then(|(v, rev)| decode_leader(v, rev));
            self.publisher.update(|view| view.leader = leader.clone());
        } else if key == self.keys.acked.as_bytes() {
            let acked = value.and_then(|(v, _)| decode_acked(v));
            self.publisher.update(|view| view.acked = acked.clone());
        }
    }

    async fn list_and_watch(&self, wait: &mut Duration) -> Result<(), String> {
        let mut client = self.cfg.connect_any().await?;
        let listed = client
            .get(self.keys.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.cfg.describe(&e))?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut leader = None;
        let mut acked = None;
        for kv in listed.kvs() {
            if kv.key() == self.keys.leader.as_bytes() {
                leader = decode_leader(kv.value(), kv.create_revision());
            } else if kv.key() == self.keys.acked.as_bytes() {
                acked = decode_acked(kv.value());
            }
        }
        self.publisher.update(|v| {
            v.leader = leader.clone();
            v.acked = acked.clone();
            v.synced = true;
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
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => self.apply(kv.key(), Some((kv.value(), kv.create_revision()))),
                    EventType::Delete => self.apply(kv.key(), None),
                }
            }
            if let Some(r) = resp.header().map(|h| h.revision()) {
                self.publisher.update(|v| v.revision = v.revision.max(r));
            }
        }
        Ok(())
    }
}

/// A leader key's value, believed only if it is small and names a sane
/// address.
fn decode_leader(value: &[u8], create_revision: i64) -> Option<Leader> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let r: LeaderRecord = serde_json::from_slice(value).ok()?;
    validate_addr(&r.addr).ok()?;
    Some(Leader {
        addr: r.addr,
        term: create_revision,
        since: r.since,
    })
}

fn decode_acked(value: &[u8]) -> Option<Acked> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let a: Acked = serde_json::from_slice(value).ok()?;
    let digest_ok =
        a.digest.is_empty() || (a.digest.len() == 64 && a.digest.bytes().all(|b| b.is_ascii_hexdigit()));
    (digest_ok && a.term > 0).then_some(a)
}

/// The candidate's side: runs when it may, leads while its lease lives.
struct Campaign {
    cfg: EtcdConfig,
    keys: Keys,
    addr: String,
    publisher: Publisher,
    client: Arc<ArcSwapOption<Client>>,
    history: Arc<dyn History>,
    changes: watch::Receiver<u64>,
}

/// How a reign (or an attempt at one) ended.
enum Ended {
    Stopped,
    Lost,
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut wait = Duration::from_millis(200);
        // Since when no leader has been seen while this node is empty (the
        // bootstrap grace, see the module comment).
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

    /// Whether this node may run now; `Err` says why not.
    async fn eligible(&self, leaderless_since: &mut Option<Instant>) -> Result<(), String> {
        let view = self.publisher.view.load_full();
        if !view.synced {
            return Err("waiting for the election keys to be listed".into());
        }
        if view.leader.is_some() {
            *leaderless_since = None;
            return Err(String::new());
        }
        let history = self.history.clone();
        let acked_seq = view.acked.as_ref().map(|a| a.seq);
        let (position, digest) = tokio::task::spawn_blocking(move || {
            let position = history.position();
            (position, acked_seq.and_then(|s| history.digest_at(s)))
        })
        .await
        .map_err(|e| e.to_string())?;
        may_lead(view.acked.as_ref(), position, digest.as_deref())?;
        if view.acked.is_none() && position == 0 {
            let since = *leaderless_since.get_or_insert_with(Instant::now);
            let grace = Duration::from_secs(self.cfg.ttl as u64);
            if since.elapsed() < grace {
                return Err(format!(
                    "empty and no leader ever elected: giving a node with data {}s to run first",
                    grace.as_secs()
                ));
            }
        }
        Ok(())
    }

    async fn campaign(
        &mut self,
        mut client: Client,
        stop: &mut oneshot::Receiver<()>,
        leaderless_since: &mut Option<Instant>,
    ) -> Ended {
        loop {
            match self.eligible(leaderless_since).await {
                Ok(()) => {}
                Err(why) => {
                    self.publisher.update(|v| v.waiting = why.clone());
                    tokio::select! {
                        _ = self.changes.changed() => {},
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                        _ = &mut *stop => return Ended::Stopped,
                    }
                    continue;
                }
            }
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
            };
            let Ok(value) = serde_json::to_string(&record) else {
                return Ended::Lost;
            };
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.keys.leader.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.keys.leader.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
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
            let Some(term) = won else {
                // Someone else was quicker: wait for the watch to show
                // it (or half a second) rather than grant lease after lease.
                let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
                tokio::select! {
                    _ = self.changes.changed() => {},
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    _ = &mut *stop => return Ended::Stopped,
                }
                continue;
            };
            return self.lead(client, lease, term, granted_at, stop).await;
        }
    }

    /// Leads under `term` until the lease is lost or the node stops.
    async fn lead(
        &mut self,
        mut client: Client,
        lease: i64,
        term: i64,
        granted_at: Instant,
        stop: &mut oneshot::Receiver<()>,
    ) -> Ended {
        let ttl = Duration::from_secs(self.cfg.ttl as u64);
        let mut alive_until = granted_at + ttl.saturating_sub(STEP_DOWN_MARGIN);
        // The baseline: everything this node holds counts as acknowledged
        // from now on, so nobody without it may lead after this node. A
        // history this node cannot name is no baseline: recorded as empty
        // it would bar every node, this one included, from leading again.
        let history = self.history.clone();
        let baseline = tokio::task::spawn_blocking(move || {
            let p = history.position();
            (p, history.digest_at(p))
        })
        .await;
        let (seq, digest) = match baseline {
            Ok((seq, Some(digest))) => (seq, digest),
            Ok((seq, None)) => {
                tracing::warn!(
                    "election: won term {term} but cannot name its history at change {seq}; resigning"
                );
                self.resign(&mut client, lease, term).await;
                return Ended::Lost;
            }
            Err(e) => {
                tracing::warn!("election: won term {term} but could not read its history ({e}); resigning");
                self.resign(&mut client, lease, term).await;
                return Ended::Lost;
            }
        };
        if let Err(e) = record_acked(&self.client, &self.keys, term, seq, &digest, ttl / 2).await {
            tracing::warn!("election: won term {term} but could not record the baseline ({e}); resigning");
            self.resign(&mut client, lease, term).await;
            return Ended::Lost;
        }
        tracing::info!(
            term,
            seq,
            "election: this node ({}) leads from term {term}, with history up to change {seq}",
            self.addr
        );
        self.publisher.update(|v| v.my_term = Some(term));
        // Three renewals fit in the time the leader believes its lease
        // (ttl − margin), so one slow answer from etcd (a busy host, a
        // member election) does not depose it: with ttl 2 a renewal every
        // 333 ms may take up to ~660 ms.
        let every =
            Duration::from_millis((ttl.saturating_sub(STEP_DOWN_MARGIN).as_millis() as u64 / 3).max(200));
        // The next renewal is a deadline, not a sleep started afresh on each
        // turn: the view changes with every acknowledged write (the acked
        // key), and a sleep restarted on each change would never renew.
        let mut renew_at = Instant::now();
        loop {
            let wake = renew_at.min(alive_until);
            tokio::select! {
                _ = &mut *stop => {
                    self.step_down(term);
                    self.resign(&mut client, lease, term).await;
                    return Ended::Stopped;
                }
                _ = self.changes.changed() => {
                    let view = self.publisher.view.load_full();
                    if view.yield_to > term {
                        tracing::warn!(
                            "election: a peer knows term {}, newer than this leader's {term}; stepping down",
                            view.yield_to
                        );
                        self.step_down(term);
                        self.resign(&mut client, lease, term).await;
                        return Ended::Lost;
                    }
                    if key_lost(&view, term) {
                        tracing::warn!("election: the leader key of term {term} is gone or replaced; stepping down");
                        self.step_down(term);
                        self.resign(&mut client, lease, term).await;
                        return Ended::Lost;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= alive_until {
                tracing::warn!(
                    "election: lease of term {term} not renewed in time (etcd unreachable?); stepping down"
                );
                self.step_down(term);
                self.resign(&mut client, lease, term).await;
                return Ended::Lost;
            }
            let sent = Instant::now();
            renew_at = sent + every;
            match renew(&mut client, lease, alive_until - sent).await {
                Ok(true) => alive_until = sent + ttl.saturating_sub(STEP_DOWN_MARGIN),
                Ok(false) => {
                    tracing::warn!("election: lease of term {term} expired in etcd; stepping down");
                    self.step_down(term);
                    self.resign(&mut client, lease, term).await;
                    return Ended::Lost;
                }
                Err(e) => {
                    tracing::debug!("election: renewing the lease of term {term} failed: {e}; retrying");
                    renew_at = Instant::now() + RENEW_RETRY;
                    // This member or the connection failed: renew the same
                    // lease through a fresh connection (another member
                    // answers).
                    if let Ok(Ok(c)) = tokio::time::timeout(CALL_TIMEOUT, self.cfg.connect_any()).await {
                        client = c;
                        self.client.store(Some(Arc::new(client.clone())));
                    }
                }
            }
        }
    }

    fn step_down(&self, term: i64) {
        self.publisher.update(|v| {
            if v.my_term == Some(term) {
                v.my_term = None;
            }
        });
    }

    /// Deletes the leader key if it is still this term's, and revokes the
    /// lease: a successor can run at once.
    async fn resign(&self, client: &mut Client, lease: i64, term: i64) {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.leader.as_str(),
                CompareOp::Equal,
                term,
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

    fn acked(seq: u64, digest: &str) -> Acked {
        Acked {
            term: 7,
            seq,
            digest: digest.into(),
        }
    }

    #[test]
    fn anyone_may_lead_before_any_acknowledgment() {
        assert!(may_lead(None, 0, None).is_ok());
        assert!(may_lead(None, 5, None).is_ok());
    }

    #[test]
    fn a_node_behind_the_acknowledged_position_may_not_lead() {
        let d = "a".repeat(64);
        let e = may_lead(Some(&acked(10, &d)), 9, None).unwrap_err();
        assert!(e.contains("applied 9, acknowledged 10"), "{e}");
        assert!(may_lead(Some(&acked(10, &d)), 10, Some(&d)).is_ok());
        assert!(may_lead(Some(&acked(10, &d)), 12, Some(&d)).is_ok());
    }

    #[test]
    fn a_node_with_another_history_may_not_lead() {
        let (d, other) = ("a".repeat(64), "b".repeat(64));
        let e = may_lead(Some(&acked(10, &d)), 11, Some(&other)).unwrap_err();
        assert!(e.contains("history differs"), "{e}");
        // A digest it no longer knows is no proof either.
        assert!(may_lead(Some(&acked(10, &d)), 11, None).is_err());
        // Nothing acknowledged yet beyond an empty history.
        assert!(may_lead(Some(&acked(0, "")), 0, None).is_ok());
    }

    #[test]
    fn an_acknowledgment_naming_no_history_checks_the_length_only() {
        // As an earlier version recorded for data without a change log: a
        // node holding that much may lead (else nobody ever could again).
        assert!(may_lead(Some(&acked(3, "")), 3, None).is_ok());
        assert!(may_lead(Some(&acked(3, "")), 4, Some(&"c".repeat(64))).is_ok());
        assert!(may_lead(Some(&acked(3, "")), 2, None).is_err());
    }

    #[test]
    fn a_leader_steps_down_only_on_a_view_that_has_seen_its_term() {
        let leader = |term| Leader {
            addr: "10.0.0.1:8080".into(),
            term,
            since: 1,
        };
        let view = |revision, l: Option<Leader>| ElectionView {
            synced: true,
            revision,
            leader: l,
            ..ElectionView::default()
        };
        // Just elected at revision 9; the watch has not delivered it yet.
        assert!(!key_lost(&view(8, None), 9));
        assert!(!key_lost(&view(8, Some(leader(4))), 9));
        assert!(!key_lost(&ElectionView::default(), 9));
        // Seen, and still its own.
        assert!(!key_lost(&view(9, Some(leader(9))), 9));
        assert!(!key_lost(&view(15, Some(leader(9))), 9));
        // Gone, or replaced, after the term began.
        assert!(key_lost(&view(12, None), 9));
        assert!(key_lost(&view(14, Some(leader(14))), 9));
    }

    #[test]
    fn election_values_are_believed_only_when_sane() {
        let good = br#"{"addr":"10.0.0.1:8080","since":1}"#;
        assert_eq!(decode_leader(good, 42).map(|l| l.term), Some(42));
        assert!(decode_leader(br#"{"addr":"0.0.0.0:8080","since":1}"#, 42).is_none());
        assert!(decode_leader(b"nonsense", 42).is_none());
        assert!(decode_acked(br#"{"term":3,"seq":9,"digest":"zz"}"#).is_none());
        assert!(decode_acked(br#"{"term":0,"seq":9,"digest":""}"#).is_none());
        assert!(decode_acked(br#"{"term":3,"seq":9,"digest":""}"#).is_some());
    }
}
