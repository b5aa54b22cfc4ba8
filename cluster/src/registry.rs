//! The etcd service registry: key layout, registration with a lease kept
//! alive, and discovery by list + watch.
//!
//! Layout: `{prefix}/services/{service_name}/{service_addr}` → JSON
//! [`ServiceInfo`] (`{"addr":…,"role":…,"started_at":…}`), attached to a
//! lease of `ttl` seconds, so `etcdctl get --prefix /kamaitachi` lists every
//! live node and a node that dies leaves within `ttl`.
//!
//! Both halves run as tokio tasks and never give up: when etcd is down they
//! log the operators' wording (`Failed to connect to etcd: …`, `Failed to
//! register service: …`), back off and retry. A registration whose lease is
//! gone (etcd restarted, even with a wiped data dir) registers again with a
//! new lease; discovery lists again and watches from the listed revision, so
//! no event between the two is missed. A graceful stop revokes the lease, so
//! the node leaves the registry at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::config::{ConfigError, IniFile};

/// The small tokio runtime the registry tasks run on, apart from the
/// process's own I/O (may coroutines in the node, pingora's runtimes in the
/// gateway). Build it on a plain thread, before those start.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("registry")
        .enable_all()
        .build()
}

/// `[etcd]` of a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ttl: i64,
}

impl EtcdConfig {
    pub fn from_ini(ini: &IniFile) -> Result<Self, ConfigError> {
        let endpoints: Vec<String> = ini
            .get_str("etcd", "endpoints")
            .unwrap_or_else(|| "localhost:2379".into())
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(ini.invalid("etcd", "endpoints", "", "comma-separated host:port list"));
        }
        let prefix = ini
            .get_str("etcd", "prefix")
            .unwrap_or_else(|| "/kamaitachi".into());
        if !prefix.starts_with('/') {
            return Err(ini.invalid("etcd", "prefix", &prefix, "a key prefix starting with /"));
        }
        let ttl: i64 = ini.get_or("etcd", "ttl", 10, "lease seconds (2-3600)")?;
        if !(2..=3600).contains(&ttl) {
            return Err(ini.invalid("etcd", "ttl", &ttl.to_string(), "lease seconds (2-3600)"));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            ttl,
        })
    }

    /// `{prefix}/services/`: every registered service is under it.
    pub fn services_prefix(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    /// `{prefix}/services/{service_name}/{service_addr}`.
    pub fn service_key(&self, service_name: &str, service_addr: &str) -> String {
        format!("{}{service_name}/{service_addr}", self.services_prefix())
    }

    fn connect_options(&self) -> ConnectOptions {
        // etcd refuses client pings more often than its
        // `--grpc-keepalive-min-time` (default 5 s) with GOAWAY
        // `too_many_pings`, which broke the connection every ~8 s while etcd
        // was healthy. Ping every 10 s: a dead etcd is still noticed within
        // 15 s, and the lease keep-alive (every ttl/3) notices sooner.
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(KEEPALIVE_INTERVAL, Duration::from_secs(5))
    }
}

/// HTTP/2 keepalive ping interval towards etcd; at least etcd's default
/// `--grpc-keepalive-min-time` of 5 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// How many times a registry task of this process lost its etcd connection
/// (or failed to make one) and connected again: 0 on a healthy etcd. Shown
/// in `/metrics` as `kamaitachi_etcd_reconnects_total`.
pub fn reconnects() -> u64 {
    RECONNECTS.load(Ordering::Relaxed)
}

fn count_reconnect() {
    RECONNECTS.fetch_add(1, Ordering::Relaxed);
}

/// The registry value of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub addr: String,
    /// `master` or `slave`.
    pub role: String,
    /// Unix seconds when the process started.
    pub started_at: u64,
}

impl ServiceInfo {
    pub fn new(addr: &str, role: &str) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ServiceInfo {
            addr: addr.to_string(),
            role: role.to_string(),
            started_at,
        }
    }
}

/// One live entry of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub key: String,
    pub info: ServiceInfo,
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(200))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(200);
    }
}

/// A node's registration, kept alive by a task until [`Registration::shutdown`].
pub struct Registration {
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    registered: Arc<AtomicBool>,
    handle: Handle,
}

impl Registration {
    /// Registers `info` under `service_name` and keeps it registered.
    pub fn spawn(handle: &Handle, cfg: EtcdConfig, service_name: &str, info: ServiceInfo) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let registered = Arc::new(AtomicBool::new(false));
        let key = cfg.service_key(service_name, &info.addr);
        let task = RegisterTask {
            cfg,
            key,
            info,
            registered: registered.clone(),
        };
        handle.spawn(async move {
            task.run(stop_rx).await;
            let _ = done_tx.send(());
        });
        Registration {
            stop: Some(stop_tx),
            done: Some(done_rx),
            registered,
            handle: handle.clone(),
        }
    }

    /// Whether the key is in etcd under a live lease right now.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Revokes the lease (so the key goes at once) and stops, waiting at
    /// most `timeout`.
    pub async fn shutdown(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }

    /// [`Registration::shutdown`] from a thread outside the runtime.
    pub fn shutdown_blocking(self, timeout: Duration) {
        let handle = self.handle.clone();
        handle.block_on(self.shutdown(timeout));
    }
}

struct RegisterTask {
    cfg: EtcdConfig,
    key: String,
    info: ServiceInfo,
    registered: Arc<AtomicBool>,
}

enum Ended {
    Stopped,
    Failed,
}

impl RegisterTask {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new();
        loop {
            let client = tokio::select! {
                c = Client::connect(&self.cfg.endpoints, Some(self.cfg.connect_options())) => c,
                _ = &mut stop => return,
            };
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "Failed to connect to etcd: {e} (endpoints {:?}); retrying",
                        self.cfg.endpoints
                    );
                    count_reconnect();
                    tokio::select! { _ = backoff.wait() => continue, _ = &mut stop => return }
                }
            };
            match self.register_and_keep(&mut client, &mut stop, &mut backoff).await {
                Ended::Stopped => return,
                Ended::Failed => {
                    self.registered.store(false, Ordering::Release);
                    count_reconnect();
                    tokio::select! { _ = backoff.wait() => {}, _ = &mut stop => return }
                }
            }
        }
    }

    async fn register_and_keep(
        &self,
        client: &mut Client,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Backoff,
    ) -> Ended {
        let lease = match client.lease_grant(self.cfg.ttl, None).await {
            Ok(l) => l.id(),
            // The client connects lazily: the first call is where an
            // unreachable etcd shows.
            Err(e) if is_unreachable(&e) => {
                tracing::warn!(
                    "Failed to connect to etcd: {e} (endpoints {:?}); retrying",
                    self.cfg.endpoints
                );
                return Ended::Failed;
            }
            Err(e) => {
                tracing::warn!("Failed to register service: {e} (lease grant for {})", self.key);
                return Ended::Failed;
            }
        };
        let value = match serde_json::to_string(&self.info) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("Failed to register service: {e}");
                return Ended::Failed;
            }
        };
        if let Err(e) = client
            .put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
        {
            tracing::warn!("Failed to register service: {e} (put {})", self.key);
            return Ended::Failed;
        }
        let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("Failed to register service: {e} (keep-alive for {})", self.key);
                return Ended::Failed;
            }
        };
        self.registered.store(true, Ordering::Release);
        backoff.reset();
        tracing::info!(
            key = %self.key,
            lease,
            "registered {} in etcd (lease {lease:x}, ttl {}s)",
            self.key,
            self.cfg.ttl
        );
        let every = Duration::from_millis((self.cfg.ttl as u64 * 1000 / 3).max(500));
        loop {
            tokio::select! {
                _ = &mut *stop => {
                    self.registered.store(false, Ordering::Release);
                    match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                        Ok(Ok(_)) => tracing::info!("revoked lease of {}", self.key),
                        Ok(Err(e)) => tracing::warn!("could not revoke lease of {}: {e}", self.key),
                        Err(_) => tracing::warn!("could not revoke lease of {}: timed out", self.key),
                    }
                    return Ended::Stopped;
                }
                _ = tokio::time::sleep(every) => {}
            }
            let alive = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(Duration::from_secs(3), alive).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    tracing::warn!(
                        "Failed to register service: lease of {} expired; registering again",
                        self.key
                    );
                    return Ended::Failed;
                }
                Ok(Ok(None)) => {
                    tracing::warn!("Failed to register service: keep-alive stream closed; registering again");
                    return Ended::Failed;
                }
                Ok(Err(e)) => {
                    tracing::warn!("Failed to connect to etcd: {e}; registering again");
                    return Ended::Failed;
                }
                Err(_) => {
                    tracing::warn!("Failed to connect to etcd: keep-alive timed out; registering again");
                    return Ended::Failed;
                }
            }
        }
    }
}

/// The live set of services, kept current by a list + watch task. When etcd
/// is unreachable the last known set stays.
#[derive(Clone)]
pub struct Discovery {
    services: Arc<ArcSwap<Vec<ServiceEntry>>>,
    changes: watch::Receiver<u64>,
    synced: Arc<AtomicBool>,
}

impl Discovery {
    pub fn spawn(handle: &Handle, cfg: EtcdConfig) -> Self {
        let services = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let (tx, rx) = watch::channel(0u64);
        let synced = Arc::new(AtomicBool::new(false));
        let task = DiscoverTask {
            cfg,
            services: services.clone(),
            changes: tx,
            synced: synced.clone(),
        };
        handle.spawn(task.run());
        Discovery {
            services,
            changes: rx,
            synced,
        }
    }

    /// The current set, sorted by key.
    pub fn services(&self) -> Arc<Vec<ServiceEntry>> {
        self.services.load_full()
    }

    /// Ticks on every change of the set.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether the set has been listed from etcd at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

struct DiscoverTask {
    cfg: EtcdConfig,
    services: Arc<ArcSwap<Vec<ServiceEntry>>>,
    changes: watch::Sender<u64>,
    synced: Arc<AtomicBool>,
}

impl DiscoverTask {
    async fn run(self) {
        let mut backoff = Backoff::new();
        loop {
            if let Err(e) = self.list_and_watch(&mut backoff).await {
                tracing::warn!(
                    "Failed to connect to etcd: {e}; keeping the last known {} services",
                    self.services.load().len()
                );
            }
            count_reconnect();
            backoff.wait().await;
        }
    }

    fn publish(&self, map: &BTreeMap<String, ServiceInfo>) {
        let list: Vec<ServiceEntry> = map
            .iter()
            .map(|(k, v)| ServiceEntry {
                key: k.clone(),
                info: v.clone(),
            })
            .collect();
        if **self.services.load() != list {
            self.services.store(Arc::new(list));
            self.changes.send_modify(|n| *n += 1);
        }
    }

    async fn list_and_watch(&self, backoff: &mut Backoff) -> Result<(), etcd_client::Error> {
        let prefix = self.cfg.services_prefix();
        let mut client = Client::connect(&self.cfg.endpoints, Some(self.cfg.connect_options())).await?;
        let listed = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut map = BTreeMap::new();
        for kv in listed.kvs() {
            if let Some((k, v)) = decode(kv.key(), kv.value()) {
                map.insert(k, v);
            }
        }
        self.publish(&map);
        self.synced.store(true, Ordering::Release);
        backoff.reset();
        let mut stream = client
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                tracing::warn!("etcd watch canceled ({}); listing again", resp.cancel_reason());
                return Ok(());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Put => {
                        if let Some((k, v)) = decode(kv.key(), kv.value()) {
                            map.insert(k, v);
                        }
                    }
                    EventType::Delete => {
                        map.remove(&key);
                    }
                }
            }
            self.publish(&map);
        }
        Ok(())
    }
}

/// Whether `e` means etcd could not be reached at all (as opposed to
/// refusing a request).
fn is_unreachable(e: &etcd_client::Error) -> bool {
    const UNAVAILABLE: i32 = 14; // gRPC status code
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => i32::from(s.code()) == UNAVAILABLE,
        _ => false,
    }
}

fn decode(key: &[u8], value: &[u8]) -> Option<(String, ServiceInfo)> {
    let key = String::from_utf8_lossy(key).into_owned();
    match serde_json::from_slice::<ServiceInfo>(value) {
        Ok(info) => Some((key, info)),
        Err(e) => {
            tracing::warn!("registry entry {key} ignored: not a service record ({e})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_and_defaults() {
        let ini = IniFile::parse("g.ini", "[etcd]\nendpoints = localhost:2379, 127.0.0.1:2381\n").unwrap();
        let cfg = EtcdConfig::from_ini(&ini).unwrap();
        assert_eq!(
            cfg.endpoints,
            vec!["http://localhost:2379", "http://127.0.0.1:2381"]
        );
        assert_eq!(cfg.ttl, 10);
        assert_eq!(
            cfg.service_key("kamaitachi-slave", "localhost:8081"),
            "/kamaitachi/services/kamaitachi-slave/localhost:8081"
        );
        let bad = IniFile::parse("g.ini", "[etcd]\nttl = 0\n").unwrap();
        assert!(EtcdConfig::from_ini(&bad)
            .unwrap_err()
            .to_string()
            .contains("[etcd] ttl"));
    }

    #[test]
    fn service_info_is_the_contract_json() {
        let info = ServiceInfo {
            addr: "localhost:8081".into(),
            role: "slave".into(),
            started_at: 5,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"addr":"localhost:8081","role":"slave","started_at":5}"#
        );
    }
}
