//! The set of data nodes the gateway can send to, and picking one.
//!
//! Nodes come from etcd (a [`Discovery`] task keeps the live set from a
//! watch; on each change the discovery feed, `discovery_feed.rs`, makes
//! pingora's load balancer call [`NodeDiscovery::discover`], which returns
//! that snapshot) plus an optional static list. An address that does not
//! resolve is left out and logged once per change of its entry, not on
//! every rebuild. pingora runs active health checks
//! (`GET /health`, 200 only); on top of that a node that fails a connect, times
//! out or answers 5xx is ejected for `eject_for` (passive check), so it
//! leaves the ring before the next active check notices.
//!
//! Reads are hashed on their key over the Ketama ring of healthy read nodes
//! (master and slaves); a retry walks on to the next node of the ring,
//! skipping the ones already tried. Writes go to the master: with an
//! election (issue 14) several entries may say `master` for a moment (a
//! deposed leader whose lease has not run out yet); the proven one with the
//! highest term wins. A role change reaches the gateway as a changed
//! registry value, through the same discovery push.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cluster::{Discovery, Role};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::Consistent;
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;

use crate::config::StaticUpstream;

/// What the gateway knows of one node, shared by every rebuild of the
/// backend set (it is kept in `Backend::ext`).
#[derive(Debug)]
pub struct NodeState {
    /// As registered, e.g. `localhost:8081`.
    pub addr: String,
    /// The registered role (`master` = 1, `slave` = 0): changed in place
    /// when the registry entry changes (issue 14: an election), because
    /// pingora keeps a backend whose address is unchanged — its `ext`,
    /// this state, is not part of the backend's identity. Read it with
    /// [`NodeState::role`].
    role: std::sync::atomic::AtomicU8,
    /// The election term its registry entry names (0: none, e.g. a static
    /// entry or a master without election). Updated in place.
    pub term: std::sync::atomic::AtomicI64,
    /// Milliseconds since the gateway started until which the node is
    /// ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Requests this node answered through this gateway, and how fast.
    pub traffic: Traffic,
    /// It answered the last health challenge with the right MAC (bound to
    /// its registered address and role). Until then it gets nothing.
    pub proven: std::sync::atomic::AtomicBool,
    /// When an unproven answer was last warned about.
    warned_at: Mutex<Option<Instant>>,
    /// Registered in etcd (its proof must name this very address), not
    /// from the operator's static list (its proof may name the node's own
    /// registered address, e.g. `localhost:8081` for `127.0.0.1:8081`).
    pub from_registry: bool,
    /// The address the node proved (what fan-out calls are signed for).
    pub identity: Mutex<String>,
}

impl NodeState {
    pub fn role(&self) -> Role {
        if self.role.load(Ordering::Acquire) == 1 {
            Role::Master
        } else {
            Role::Slave
        }
    }

    /// The registry entry now says `role`: the proof is bound to the role,
    /// so a changed one must be proven again (next health check).
    fn set_role(&self, role: Role) {
        let v = u8::from(role == Role::Master);
        if self.role.swap(v, Ordering::AcqRel) != v {
            self.proven.store(false, Ordering::Release);
        }
    }
}

/// At most one warning per unproven node in this time.
const UNPROVEN_WARN_EVERY: Duration = Duration::from_secs(600);

/// The active health check: `GET /health` with a fresh challenge; healthy
/// only on a 200 whose `X-Kamaitachi-Proof` is the MAC of the challenge,
/// the registered address and role under the cluster key.
pub struct ProofHealthCheck {
    pub key: cluster::auth::ClusterKey,
    pub client: reqwest::Client,
}

#[async_trait]
impl pingora::lb::health_check::HealthCheck for ProofHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let fail =
            |why: String| pingora::Error::explain(pingora::ErrorType::Custom("health check failed"), why);
        let Some(state) = Upstreams::state(target) else {
            return Err(fail("unknown backend".into()));
        };
        let challenge = cluster::auth::challenge();
        let resp = self
            .client
            .get(format!("http://{}/health", target.addr))
            .header(cluster::auth::CHALLENGE_HEADER, &challenge)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (proof, claimed) = (
            header(cluster::auth::PROOF_HEADER),
            header(cluster::auth::NODE_HEADER),
        );
        // Bound to the registered address (etcd) and role: a copied entry
        // naming another address or role for a real node proves nothing.
        let identity = if state.from_registry || claimed.is_empty() {
            state.addr.clone()
        } else {
            claimed
        };
        let proven = self.key.verify(
            "health",
            &[
                challenge.as_bytes(),
                identity.as_bytes(),
                state.role().as_str().as_bytes(),
            ],
            &proof,
        );
        if proven {
            if let Ok(mut id) = state.identity.lock() {
                *id = identity.clone();
            }
        }
        state.proven.store(proven, Ordering::Relaxed);
        if !proven {
            // Write availability (issue 14): a node's role changes with the
            // election, and its proof names the role it plays now. Proven
            // for the other role = the registry entry has not caught up
            // yet: not used until it has, but no warning either.
            let other = match state.role() {
                Role::Master => Role::Slave,
                Role::Slave => Role::Master,
            };
            let changing = self.key.verify(
                "health",
                &[
                    challenge.as_bytes(),
                    identity.as_bytes(),
                    other.as_str().as_bytes(),
                ],
                &proof,
            );
            if changing {
                tracing::debug!(
                    addr = %state.addr,
                    "node {} proves role {other} while registered as {}: its role is changing",
                    state.addr,
                    state.role()
                );
                return Err(fail(format!("role changing to {other}")));
            }
            let warn = match state.warned_at.lock() {
                Ok(mut at) if at.is_none_or(|t| t.elapsed() >= UNPROVEN_WARN_EVERY) => {
                    *at = Some(Instant::now());
                    true
                }
                _ => false,
            };
            if warn {
                tracing::warn!(
                    addr = %state.addr,
                    role = %state.role(),
                    "node {} (registered as {}) ignored: it did not prove it holds the cluster secret",
                    state.addr,
                    state.role()
                );
            }
            return Err(fail("no valid proof of the cluster secret".into()));
        }
        if status != 200 {
            return Err(fail(format!("/health answered {status}")));
        }
        Ok(())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

/// Upper bounds (ms) of the latency buckets of [`Traffic`]; the last catches
/// the rest.
const LATENCY_BOUNDS_MS: [f64; 14] = [
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    1000.0,
    5000.0,
    f64::INFINITY,
];

/// Answers relayed from one node and a latency histogram of them, counted
/// with atomic adds on the request path (no lock, no label lookup) and read
/// by the status page.
#[derive(Debug, Default)]
pub struct Traffic {
    answered: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len()],
}

impl Traffic {
    pub fn record(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The 99th percentile since start, as the upper bound of its bucket
    /// (ms); `None` before the first answer or when it is past the last
    /// bound.
    pub fn p99_ms(&self) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (count, bound) in counts.iter().zip(LATENCY_BOUNDS_MS) {
            seen += count;
            if seen >= want {
                return bound.is_finite().then_some(bound);
            }
        }
        None
    }
}

#[derive(Clone, Debug)]
pub struct NodeRef(pub Arc<NodeState>);

/// The load balancer's view of discovery: etcd's live set plus the static list.
pub struct NodeDiscovery {
    discovery: Option<Discovery>,
    statics: Vec<StaticUpstream>,
    /// addr string -> resolved address and shared state.
    known: Mutex<HashMap<String, (std::net::SocketAddr, Arc<NodeState>)>>,
    /// The entries that did not resolve at the last rebuild.
    unresolved: Mutex<Unresolved>,
}

impl NodeDiscovery {
    pub fn new(discovery: Option<Discovery>, statics: Vec<StaticUpstream>) -> Self {
        NodeDiscovery {
            discovery,
            statics,
            known: Mutex::new(HashMap::new()),
            unresolved: Mutex::new(Unresolved::default()),
        }
    }

    /// `((addr, role, from the registry), term)`.
    fn entries(&self) -> Vec<(Entry, i64)> {
        let mut out: Vec<(Entry, i64)> = self
            .statics
            .iter()
            .map(|s| ((s.addr.clone(), s.role, false), 0))
            .collect();
        if let Some(d) = &self.discovery {
            for e in d.services().iter() {
                out.retain(|((a, _, _), _)| a != &e.info.addr);
                out.push(((e.info.addr.clone(), e.info.role, true), e.info.term.unwrap_or(0)));
            }
        }
        out
    }
}

#[async_trait]
impl ServiceDiscovery for NodeDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let entries = self.entries();
        let mut set = BTreeSet::new();
        let Ok(mut known) = self.known.lock() else {
            return Ok((set, HashMap::new()));
        };
        let mut unresolved = HashSet::new();
        for ((addr, role, from_registry), term) in entries {
            let resolved = match known.get(&addr) {
                Some((sock, state)) if state.from_registry == from_registry => {
                    state.set_role(role);
                    Some((*sock, state.clone()))
                }
                _ => addr
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut it| {
                        it.find(|a| a.is_ipv4())
                            .or_else(|| addr.to_socket_addrs().ok()?.next())
                    })
                    .map(|sock| {
                        let state = Arc::new(NodeState {
                            addr: addr.clone(),
                            role: std::sync::atomic::AtomicU8::new(u8::from(role == Role::Master)),
                            term: Default::default(),
                            ejected_until: AtomicU64::new(0),
                            traffic: Traffic::default(),
                            proven: Default::default(),
                            warned_at: Mutex::new(None),
                            from_registry,
                            identity: Mutex::new(addr.clone()),
                        });
                        known.insert(addr.clone(), (sock, state.clone()));
                        (sock, state)
                    }),
            };
            let Some((sock, state)) = resolved else {
                unresolved.insert((addr, role, from_registry));
                continue;
            };
            state.term.store(term, Ordering::Relaxed);
            let mut backend = Backend {
                addr: SocketAddr::Inet(sock),
                weight: 1,
                ext: Default::default(),
            };
            backend.ext.insert(NodeRef(state));
            set.insert(backend);
        }
        drop(known);
        if let Ok(mut u) = self.unresolved.lock() {
            for (addr, _, _) in u.round(unresolved) {
                tracing::warn!("node {addr} ignored: address does not resolve");
            }
        }
        Ok((set, HashMap::new()))
    }
}

/// A node list entry: `(addr, role, from the registry)`.
type Entry = (String, Role, bool);

/// The entries that did not resolve at the last rebuild, so each is logged
/// once per change of it (again only after it resolved, left or changed),
/// not on every rebuild.
#[derive(Debug, Default)]
struct Unresolved(HashSet<Entry>);

impl Unresolved {
    /// Takes this rebuild's unresolved entries; returns the ones to log.
    fn round(&mut self, now: HashSet<Entry>) -> Vec<Entry> {
        let fresh = now.iter().filter(|e| !self.0.contains(*e)).cloned().collect();
        self.0 = now;
        fresh
    }
}

/// One node as `/health` and `/stats` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeView {
    pub addr: String,
    /// The resolved socket address the gateway connects to (the per-node
    /// metrics' label).
    pub socket: String,
    pub role: Role,
    pub healthy: bool,
    /// It proved it holds the cluster secret (last health check).
    pub proven: bool,
    /// The address it proved (fan-out calls are signed for it).
    #[serde(skip)]
    pub identity: String,
    pub ejected: bool,
    /// Answers relayed from it since the gateway started.
    pub answered: u64,
    /// Their 99th percentile latency (bucket bound, ms).
    pub p99_ms: Option<f64>,
}

pub struct Upstreams {
    pub lb: Arc<LoadBalancer<Consistent>>,
    epoch: Instant,
    eject_for: Duration,
    round_robin: AtomicUsize,
}

/// Ring steps a selection may walk (Ketama has 160 points per node).
const MAX_RING_STEPS: usize = 2048;

impl Upstreams {
    pub fn new(lb: Arc<LoadBalancer<Consistent>>, eject_for: Duration) -> Self {
        Upstreams {
            lb,
            epoch: Instant::now(),
            eject_for,
            round_robin: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn state(b: &Backend) -> Option<&Arc<NodeState>> {
        b.ext.get::<NodeRef>().map(|r| &r.0)
    }

    fn usable(&self, b: &Backend, healthy: bool, tried: &[SocketAddr]) -> bool {
        healthy
            && !tried.contains(&b.addr)
            && Self::state(b).is_some_and(|s| {
                s.proven.load(Ordering::Relaxed) && s.ejected_until.load(Ordering::Relaxed) <= self.now_ms()
            })
    }

    /// A read: the owner of `key` on the ring, or the next usable node.
    /// Without a key, round robin over the usable nodes.
    pub fn pick_read(&self, key: Option<&[u8]>, tried: &[SocketAddr]) -> Option<Backend> {
        match key {
            Some(k) => self
                .lb
                .select_with(k, MAX_RING_STEPS, |b, healthy| self.usable(b, healthy, tried)),
            None => {
                let all = self.lb.backends().get_backend();
                let usable: Vec<&Backend> = all
                    .iter()
                    .filter(|b| self.usable(b, self.lb.backends().ready(b), tried))
                    .collect();
                if usable.is_empty() {
                    return None;
                }
                let n = self.round_robin.fetch_add(1, Ordering::Relaxed);
                Some(usable[n % usable.len()].clone())
            }
        }
    }

    /// The master, if it is usable: of several usable entries saying
    /// `master`, the one with the highest term (the latest elected).
    pub fn pick_master(&self, tried: &[SocketAddr]) -> Option<Backend> {
        let all = self.lb.backends().get_backend();
        all.iter()
            .filter(|b| {
                Self::state(b).is_some_and(|s| s.role() == Role::Master)
                    && self.usable(b, self.lb.backends().ready(b), tried)
            })
            .max_by_key(|b| Self::state(b).map_or(0, |s| s.term.load(Ordering::Relaxed)))
            .cloned()
    }

    /// Counts an answer relayed from `backend`.
    pub fn record_answer(&self, backend: &Backend, elapsed: Duration) {
        if let Some(state) = Self::state(backend) {
            state.traffic.record(elapsed);
        }
    }

    /// Counts an answer relayed from the node at `addr`.
    pub fn record_answer_from(&self, addr: &SocketAddr, elapsed: Duration) {
        let all = self.lb.backends().get_backend();
        if let Some(b) = all.iter().find(|b| &b.addr == addr) {
            self.record_answer(b, elapsed);
        }
    }

    /// Passive check: keep `addr` out of selection for a while.
    pub fn eject(&self, addr: &SocketAddr) {
        let all = self.lb.backends().get_backend();
        if let Some(state) = all.iter().find(|b| &b.addr == addr).and_then(Self::state) {
            let until = self.now_ms() + self.eject_for.as_millis() as u64;
            state.ejected_until.store(until, Ordering::Relaxed);
        }
    }

    /// Every node known. Each backend carries its [`NodeState`]
    /// ([`NodeDiscovery`] puts it there); one without would be no node of
    /// ours and is not shown.
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = self.now_ms();
        let all = self.lb.backends().get_backend();
        all.iter()
            .filter_map(|b| {
                let state = Self::state(b)?;
                let proven = state.proven.load(Ordering::Relaxed);
                Some(NodeView {
                    addr: state.addr.clone(),
                    socket: b.addr.to_string(),
                    role: state.role(),
                    healthy: self.lb.backends().ready(b) && proven,
                    proven,
                    identity: state.identity.lock().map(|i| i.clone()).unwrap_or_default(),
                    ejected: state.ejected_until.load(Ordering::Relaxed) > now,
                    answered: state.traffic.answered(),
                    p99_ms: state.traffic.p99_ms(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unresolvable_entry_is_logged_once_per_change() {
        let entry = |role| ("nowhere.invalid:80".to_string(), role, true);
        let set = |e: &[Entry]| e.iter().cloned().collect::<HashSet<Entry>>();
        let mut u = Unresolved::default();
        assert_eq!(u.round(set(&[entry(Role::Slave)])), vec![entry(Role::Slave)]);
        assert!(u.round(set(&[entry(Role::Slave)])).is_empty(), "logged again");
        // Its role changed: a new entry, logged.
        assert_eq!(u.round(set(&[entry(Role::Master)])), vec![entry(Role::Master)]);
        // Gone (or resolved), then back: logged again.
        assert!(u.round(HashSet::new()).is_empty());
        assert_eq!(u.round(set(&[entry(Role::Master)])), vec![entry(Role::Master)]);
    }

    #[test]
    fn a_role_change_is_made_in_place_and_must_be_proven_again() {
        let state = NodeState {
            addr: "localhost:8081".into(),
            role: std::sync::atomic::AtomicU8::new(0),
            term: Default::default(),
            ejected_until: AtomicU64::new(0),
            traffic: Traffic::default(),
            proven: true.into(),
            warned_at: Mutex::new(None),
            from_registry: true,
            identity: Mutex::new("localhost:8081".into()),
        };
        state.set_role(Role::Slave);
        assert!(state.proven.load(Ordering::Relaxed), "same role: still proven");
        state.set_role(Role::Master);
        assert_eq!(state.role(), Role::Master);
        assert!(
            !state.proven.load(Ordering::Relaxed),
            "the proof named the old role: prove again"
        );
    }

    #[test]
    fn p99_is_the_bucket_of_the_99th_percentile() {
        let t = Traffic::default();
        assert_eq!(t.p99_ms(), None);
        for _ in 0..99 {
            t.record(Duration::from_micros(200));
        }
        t.record(Duration::from_millis(40));
        assert_eq!(t.answered(), 100);
        assert_eq!(t.p99_ms(), Some(0.25));
        t.record(Duration::from_millis(40));
        t.record(Duration::from_millis(40));
        assert_eq!(t.p99_ms(), Some(50.0));
    }
}
