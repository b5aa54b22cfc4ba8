//! The etcd service registry: key layout, registration with a lease kept
//! alive, and discovery by list + watch: the live set is published in an
//! `ArcSwap` (read without a lock) and each change ticks a `watch` channel
//! ([`Discovery::changes`]), so a reader is told instead of polling.
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
//!
//! Access: with `[etcd] username` and `password_file` the client
//! authenticates (and authenticates again when etcd rejects its token: a
//! token expires after etcd's `--auth-token-ttl` and dies with an etcd
//! restart); `ca_file`/`cert_file`/`key_file` add TLS. Without credentials a
//! process connects anonymously, for a development etcd with auth off, and
//! says so once at start.
//!
//! Discovery believes nothing it reads: a value over [`MAX_VALUE_BYTES`], one
//! that is not a service record, an `addr` that is not a sane `host:port` or
//! a role other than master/slave is ignored, and logged once per change of
//! that key (key truncated), never once per list or watch event.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::config::{ConfigError, IniFile};
use crate::role::Role;

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
    /// `[etcd] username` + `password_file`; `None`: anonymous.
    pub auth: Option<EtcdAuth>,
    /// `[etcd] ca_file`, `cert_file`, `key_file`; `None`: plain HTTP.
    pub tls: Option<EtcdTls>,
}

/// The credentials a process authenticates to etcd with.
#[derive(Clone, PartialEq)]
pub struct EtcdAuth {
    pub username: String,
    /// The file the password is read from; read again at every (re)connect,
    /// so a rotated password is picked up without a restart.
    pub password_file: PathBuf,
    /// The password read at start, used when the file cannot be read later.
    password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdAuth {
    /// The password now in the file (trimmed), else the one read at start.
    fn password(&self) -> String {
        match read_password(&self.password_file) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "etcd password file {}: {e}; using the password read at start",
                    self.password_file.display()
                );
                self.password.clone()
            }
        }
    }
}

fn read_password(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err("it is empty".into());
    }
    Ok(password)
}

/// TLS towards etcd: the CA that signed etcd's certificate, and optionally a
/// client certificate and key (etcd's `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
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
        let nonempty = |key: &str| ini.get_str("etcd", key).filter(|v| !v.trim().is_empty());
        let auth = match (nonempty("username"), nonempty("password_file")) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ini.invalid(
                    "etcd",
                    "password_file",
                    "",
                    "the file holding the etcd password of [etcd] username",
                ))
            }
            (None, Some(file)) => {
                return Err(ini.invalid(
                    "etcd",
                    "username",
                    "",
                    &format!("the etcd user whose password is in {file}"),
                ))
            }
            (Some(username), Some(file)) => {
                let password_file = PathBuf::from(file.trim());
                let password = read_password(&password_file).map_err(|e| {
                    ini.invalid(
                        "etcd",
                        "password_file",
                        &password_file.display().to_string(),
                        &format!("a readable file holding the etcd password ({e})"),
                    )
                })?;
                Some(EtcdAuth {
                    username: username.trim().to_string(),
                    password_file,
                    password,
                })
            }
        };
        let mut files = [None, None, None];
        for (slot, key) in files.iter_mut().zip(["ca_file", "cert_file", "key_file"]) {
            if let Some(file) = nonempty(key) {
                let path = PathBuf::from(file.trim());
                if let Err(e) = std::fs::metadata(&path) {
                    return Err(ini.invalid(
                        "etcd",
                        key,
                        &path.display().to_string(),
                        &format!("a readable PEM file ({e})"),
                    ));
                }
                *slot = Some(path);
            }
        }
        let [ca_file, cert_file, key_file] = files;
        if cert_file.is_some() != key_file.is_some() {
            let (key, other) = if cert_file.is_some() {
                ("key_file", "cert_file")
            } else {
                ("cert_file", "key_file")
            };
            return Err(ini.invalid(
                "etcd",
                key,
                "",
                &format!("set together with [etcd] {other} (a client certificate and its key)"),
            ));
        }
        let tls = (ca_file.is_some() || cert_file.is_some()).then_some(EtcdTls {
            ca_file,
            cert_file,
            key_file,
        });
        let endpoints = if tls.is_some() {
            endpoints
                .into_iter()
                .map(|e| match e.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => e,
                })
                .collect()
        } else {
            endpoints
        };
        Ok(EtcdConfig {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            ttl,
            auth,
            tls,
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

    fn connect_options(&self) -> Result<ConnectOptions, String> {
        // etcd refuses client pings more often than its
        // `--grpc-keepalive-min-time` (default 5 s) with GOAWAY
        // `too_many_pings`, which broke the connection every ~8 s while etcd
        // was healthy. Ping every 10 s: a dead etcd is still noticed within
        // 15 s, and the lease keep-alive (every ttl/3) notices sooner.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(KEEPALIVE_INTERVAL, Duration::from_secs(5))
            // A member cut off from its cluster's leader fails calls and
            // cancels watches instead of serving what it last knew.
            .with_require_leader(true);
        if let Some(auth) = &self.auth {
            // A unary call whose token etcd rejects (expired after
            // `--auth-token-ttl`, or from before an etcd restart)
            // authenticates again and is retried; a broken stream makes the
            // task connect (and so authenticate) again.
            options = options
                .with_user(auth.username.clone(), auth.password())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            options = tls_options(options, tls)?;
        }
        Ok(options)
    }

    /// A connected (and, with credentials, authenticated) client.
    pub(crate) async fn connect(&self) -> Result<Client, String> {
        let options = self.connect_options()?;
        match Client::connect(&self.endpoints, Some(options)).await {
            Ok(c) => Ok(c),
            // Credentials configured, but this etcd has auth off (a
            // development etcd): say so once and go on anonymously.
            Err(e) if self.auth.is_some() && e.to_string().contains("authentication is not enabled") => {
                static ONCE: Once = Once::new();
                ONCE.call_once(|| {
                    tracing::warn!(
                        "etcd at {:?} has authentication disabled; connecting without the configured \
                         credentials (anyone who can reach that etcd can change the registry)",
                        self.endpoints
                    )
                });
                let anonymous = EtcdConfig {
                    auth: None,
                    ..self.clone()
                };
                Client::connect(&self.endpoints, Some(anonymous.connect_options()?))
                    .await
                    .map_err(|e| self.describe(&e))
            }
            Err(e) => Err(self.describe(&e)),
        }
    }

    /// [`EtcdConfig::connect`]; when that fails and there are several
    /// endpoints, each endpoint on its own. A client over all endpoints
    /// fails as a whole when its first call (authentication) lands on a
    /// dead member; the election must reach a live one within its lease
    /// (issue 14).
    pub(crate) async fn connect_any(&self) -> Result<Client, String> {
        match self.connect().await {
            Ok(c) => Ok(c),
            Err(e) if self.endpoints.len() > 1 => {
                for endpoint in &self.endpoints {
                    let one = EtcdConfig {
                        endpoints: vec![endpoint.clone()],
                        ..self.clone()
                    };
                    if let Ok(c) = one.connect().await {
                        return Ok(c);
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// What went wrong, in the words an operator needs: which user, which
    /// file, what to do.
    pub(crate) fn describe(&self, e: &etcd_client::Error) -> String {
        let text = e.to_string();
        match &self.auth {
            Some(auth) if text.contains("authentication failed") => format!(
                "authentication failed for etcd user {:?} with the password in {} ({text}); endpoints {:?}",
                auth.username,
                auth.password_file.display(),
                self.endpoints
            ),
            None if text.contains("user name is empty") || text.contains("invalid auth token") => format!(
                "etcd requires authentication ({text}): set [etcd] username and password_file; endpoints {:?}",
                self.endpoints
            ),
            _ => format!("{text} (endpoints {:?})", self.endpoints),
        }
    }

    /// One line at start when this process talks to etcd anonymously.
    fn note_anonymous(&self) {
        static ONCE: Once = Once::new();
        if self.auth.is_none() {
            ONCE.call_once(|| {
                tracing::warn!(
                    "etcd: no [etcd] username/password_file configured; connecting to {:?} without \
                     authentication (fine for a development etcd with auth off; anyone who can reach \
                     that etcd can change the registry)",
                    self.endpoints
                )
            });
        }
    }
}

#[cfg(feature = "etcd-tls")]
fn tls_options(options: ConnectOptions, tls: &EtcdTls) -> Result<ConnectOptions, String> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |what: &str, p: &Path| {
        std::fs::read(p).map_err(|e| format!("[etcd] {what} {}: cannot read it: {e}", p.display()))
    };
    let mut t = TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        t = t.ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        t = t.identity(Identity::from_pem(
            read("cert_file", cert)?,
            read("key_file", key)?,
        ));
    }
    Ok(options.with_tls(t))
}

#[cfg(not(feature = "etcd-tls"))]
fn tls_options(_options: ConnectOptions, _tls: &EtcdTls) -> Result<ConnectOptions, String> {
    Err(
        "[etcd] ca_file/cert_file/key_file are set but this build has no TLS support \
         (build the cluster crate with feature etcd-tls)"
            .into(),
    )
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
    /// Serialized as `master` or `slave`.
    pub role: Role,
    /// Unix seconds when the process started.
    pub started_at: u64,
    /// The election term while this node leads for writes (issue 14);
    /// omitted when absent, so older readers see the same JSON as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
}

impl ServiceInfo {
    pub fn new(addr: &str, role: Role) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ServiceInfo {
            addr: addr.to_string(),
            role,
            started_at,
            term: None,
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
    /// The value to register; a change is put again under the same lease.
    info: watch::Sender<ServiceInfo>,
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
        cfg.note_anonymous();
        let key = cfg.service_key(service_name, &info.addr);
        let (info_tx, info_rx) = watch::channel(info);
        let task = RegisterTask {
            cfg,
            key,
            info: info_rx,
            registered: registered.clone(),
        };
        handle.spawn(async move {
            task.run(stop_rx).await;
            let _ = done_tx.send(());
        });
        Registration {
            info: info_tx,
            stop: Some(stop_tx),
            done: Some(done_rx),
            registered,
            handle: handle.clone(),
        }
    }

    /// Changes the registered value (a node's role and term after an
    /// election): put again under the same lease, same key. The address
    /// must stay the one the key names; a change of it is ignored.
    pub fn set_info(&self, info: ServiceInfo) {
        self.info.send_if_modified(|current| {
            if *current == info || current.addr != info.addr {
                return false;
            }
            *current = info;
            true
        });
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
    info: watch::Receiver<ServiceInfo>,
    registered: Arc<AtomicBool>,
}

enum Ended {
    Stopped,
    Failed,
}

impl RegisterTask {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new();
        loop {
            let client = tokio::select! {
                c = self.cfg.connect() => c,
                _ = &mut stop => return,
            };
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "Failed to connect to etcd: {e}; retrying in {:.1}s",
                        backoff.0.as_secs_f64()
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
        &mut self,
        client: &mut Client,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Backoff,
    ) -> Ended {
        let lease = match client.lease_grant(self.cfg.ttl, None).await {
            Ok(l) => l.id(),
            // The client connects lazily: the first call is where an
            // unreachable etcd shows.
            Err(e) if is_unreachable(&e) || is_auth_error(&e) => {
                tracing::warn!("Failed to connect to etcd: {}; retrying", self.cfg.describe(&e));
                return Ended::Failed;
            }
            Err(e) => {
                tracing::warn!("Failed to register service: {e} (lease grant for {})", self.key);
                return Ended::Failed;
            }
        };
        let info = self.info.borrow_and_update().clone();
        let value = match serde_json::to_string(&info) {
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
            if is_auth_error(&e) {
                tracing::warn!("Failed to connect to etcd: {}; retrying", self.cfg.describe(&e));
            } else {
                tracing::warn!("Failed to register service: {e} (put {})", self.key);
            }
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
                changed = self.info.changed() => {
                    if changed.is_ok() {
                        let info = self.info.borrow_and_update().clone();
                        let Ok(value) = serde_json::to_string(&info) else { continue };
                        let put = client.put(self.key.as_str(), value, Some(PutOptions::new().with_lease(lease)));
                        match tokio::time::timeout(Duration::from_secs(3), put).await {
                            Ok(Ok(_)) => tracing::info!(
                                key = %self.key,
                                "registry entry {} now says role {} term {:?}",
                                self.key,
                                info.role.as_str(),
                                info.term
                            ),
                            _ => {
                                tracing::warn!("Failed to register service: could not update {}; registering again", self.key);
                                // Marked changed again: the next registration puts it.
                                return Ended::Failed;
                            }
                        }
                    }
                    continue;
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
        cfg.note_anonymous();
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

    /// Ticks on every change of the set (after [`Discovery::services`]
    /// shows it): the push side of discovery, which the gateway's discovery
    /// feed waits on instead of polling.
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
        let mut bad = BadEntries::default();
        loop {
            if let Err(e) = self.list_and_watch(&mut backoff, &mut bad).await {
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

    async fn list_and_watch(&self, backoff: &mut Backoff, bad: &mut BadEntries) -> Result<(), String> {
        let prefix = self.cfg.services_prefix();
        let mut client = self.cfg.connect().await?;
        let describe = |e: etcd_client::Error| self.cfg.describe(&e);
        let listed = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(describe)?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut map = BTreeMap::new();
        bad.retain_listed(listed.kvs().iter().map(|kv| kv.key()));
        for kv in listed.kvs() {
            if let Some((k, v)) = bad.decode(kv.key(), kv.value(), kv.mod_revision()) {
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
            .await
            .map_err(describe)?;
        while let Some(resp) = stream.message().await.map_err(describe)? {
            if resp.canceled() {
                tracing::warn!("etcd watch canceled ({}); listing again", resp.cancel_reason());
                return Ok(());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Put => match bad.decode(kv.key(), kv.value(), kv.mod_revision()) {
                        Some((k, v)) => {
                            map.insert(k, v);
                        }
                        // A bad value replaces a good one: the old one is gone.
                        None => {
                            map.remove(&key);
                        }
                    },
                    EventType::Delete => {
                        map.remove(&key);
                        bad.forget(kv.key());
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

/// Whether etcd refused the credentials or the token (as opposed to being
/// unreachable or refusing one request).
fn is_auth_error(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("authentication failed")
        || text.contains("invalid auth token")
        || text.contains("user name is empty")
        || matches!(e, etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == 16)
}

/// The largest registry value believed (a service record is under 200 bytes).
pub const MAX_VALUE_BYTES: usize = 4096;

/// The longest `addr` believed: a 253-character host name, `:` and a port.
const MAX_ADDR_LEN: usize = 261;

/// How much of a bad key a log line shows.
const LOGGED_KEY_CHARS: usize = 96;

/// A registry value checked: a service record whose `addr` is a sane
/// `host:port` and whose role is master or slave.
pub fn validate_entry(value: &[u8]) -> Result<ServiceInfo, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value of {} bytes (at most {MAX_VALUE_BYTES})",
            value.len()
        ));
    }
    // The role is read as text first, so a bad one gets its own message
    // (after the address check, as before) rather than serde's.
    #[derive(Deserialize)]
    struct Raw {
        addr: String,
        role: String,
        started_at: u64,
        #[serde(default)]
        term: Option<i64>,
    }
    let raw: Raw = serde_json::from_slice(value).map_err(|e| format!("not a service record ({e})"))?;
    validate_addr(&raw.addr)?;
    let Some(role) = Role::parse(&raw.role) else {
        return Err(format!(
            "role {:?} is neither master nor slave",
            shorten(&raw.role)
        ));
    };
    Ok(ServiceInfo {
        addr: raw.addr,
        role,
        started_at: raw.started_at,
        term: raw.term.filter(|t| *t > 0),
    })
}

/// `host:port`: a host name (letters, digits, `-`, dots), an IPv4 address or
/// a bracketed IPv6 address that is neither unspecified, link-local,
/// multicast nor broadcast; a port 1-65535.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("addr {:?} {why}", shorten(addr)));
    if addr.len() > MAX_ADDR_LEN {
        return bad(&format!("is {} bytes long (at most {MAX_ADDR_LEN})", addr.len()));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("is not host:port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return bad("has no port 1-65535"),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<Ipv6Addr>() {
            Ok(ip) => match ip_problem(IpAddr::V6(ip)) {
                Some(why) => bad(why),
                None => Ok(()),
            },
            Err(_) => bad("has a bracketed host that is not an IPv6 address"),
        };
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return match ip_problem(IpAddr::V4(ip)) {
            Some(why) => bad(why),
            None => Ok(()),
        };
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad("has a host that is neither a host name nor an IP address");
    }
    // All-numeric dotted names that are not valid IPv4 (e.g. 999.1.1.1).
    if host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return bad("has a host that is neither a host name nor an IP address");
    }
    Ok(())
}

fn ip_problem(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("has the unspecified address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("has a link-local address (169.254.0.0/16)"),
        IpAddr::V4(v4) if v4.is_broadcast() || v4.is_multicast() => {
            Some("has a broadcast or multicast address")
        }
        IpAddr::V6(v6) if v6.is_unspecified() => Some("has the unspecified address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("has a link-local address (fe80::/10)")
        }
        IpAddr::V6(v6) if v6.is_multicast() => Some("has a multicast address"),
        _ => None,
    }
}

/// At most [`LOGGED_KEY_CHARS`] characters of `s`, escaped, with the full
/// length when cut.
fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(LOGGED_KEY_CHARS).collect();
    let cut = cut.escape_debug().to_string();
    if cut.len() < s.len() || s.chars().count() > LOGGED_KEY_CHARS {
        format!("{cut}… ({} bytes)", s.len())
    } else {
        cut
    }
}

/// Bad registry keys already logged, with the revision that was logged, so
/// each bad value is logged once per change of its key, not on every list
/// or watch event.
#[derive(Default)]
struct BadEntries(HashMap<Vec<u8>, i64>);

impl BadEntries {
    fn decode(&mut self, key: &[u8], value: &[u8], revision: i64) -> Option<(String, ServiceInfo)> {
        let text = String::from_utf8_lossy(key).into_owned();
        match validate_entry(value) {
            Ok(info) => {
                self.0.remove(key);
                Some((text, info))
            }
            Err(why) => {
                if self.0.get(key) != Some(&revision) {
                    self.0.insert(key.to_vec(), revision);
                    tracing::warn!("registry entry {} ignored: {why}", shorten(&text));
                }
                None
            }
        }
    }

    fn forget(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    /// Drops what is no longer in etcd.
    fn retain_listed<'a>(&mut self, keys: impl Iterator<Item = &'a [u8]>) {
        let listed: std::collections::HashSet<&[u8]> = keys.collect();
        self.0.retain(|k, _| listed.contains(k.as_slice()));
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
    fn addresses_and_roles_are_checked() {
        for good in [
            "localhost:8081",
            "127.0.0.1:1",
            "node-1.example.com:65535",
            "[::1]:8080",
            "10.0.0.5:8080",
        ] {
            assert!(validate_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "169.254.169.254:80",
            "0.0.0.0:8080",
            "[::]:8080",
            "[fe80::1]:8080",
            "localhost",
            "localhost:0",
            "localhost:65536",
            "localhost:+80",
            ":8080",
            "bad host:80",
            "-x:80",
            "999.1.1.1:80",
            "a..b:80",
            "[::ffff:169.254.1.1]:80",
            "http://x:80",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
        let long = format!("{}:80", "a".repeat(300));
        assert!(validate_addr(&long).unwrap_err().len() < 200);
        let ok = br#"{"addr":"localhost:8081","role":"slave","started_at":1}"#;
        assert!(validate_entry(ok).is_ok());
        let role = br#"{"addr":"localhost:8081","role":"gateway","started_at":1}"#;
        assert!(validate_entry(role).unwrap_err().contains("role"));
        let big = format!(
            r#"{{"addr":"localhost:8081","role":"slave","started_at":1,"x":"{}"}}"#,
            "y".repeat(5000)
        );
        assert!(validate_entry(big.as_bytes())
            .unwrap_err()
            .contains("at most 4096"));
    }

    #[test]
    fn credentials_and_tls_are_parsed_with_clear_errors() {
        let dir = std::env::temp_dir().join(format!("kmt-etcd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("etcd.password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let ini = IniFile::parse(
            "n.ini",
            &format!(
                "[etcd]\nusername = kamaitachi\npassword_file = {}\n",
                pw.display()
            ),
        )
        .unwrap();
        let cfg = EtcdConfig::from_ini(&ini).unwrap();
        let auth = cfg.auth.clone().unwrap();
        assert_eq!(auth.username, "kamaitachi");
        assert_eq!(auth.password(), "s3cret");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let missing =
            IniFile::parse("n.ini", "[etcd]\nusername = k\npassword_file = /nonexistent/pw\n").unwrap();
        let msg = EtcdConfig::from_ini(&missing).unwrap_err().to_string();
        assert!(
            msg.contains("n.ini") && msg.contains("[etcd] password_file") && msg.contains("/nonexistent/pw"),
            "{msg}"
        );
        let half = IniFile::parse("n.ini", "[etcd]\nusername = k\n").unwrap();
        assert!(EtcdConfig::from_ini(&half)
            .unwrap_err()
            .to_string()
            .contains("[etcd] password_file"));
        let cert_only = IniFile::parse("n.ini", &format!("[etcd]\ncert_file = {}\n", pw.display())).unwrap();
        assert!(EtcdConfig::from_ini(&cert_only)
            .unwrap_err()
            .to_string()
            .contains("[etcd] key_file"));
        let tls = IniFile::parse(
            "n.ini",
            &format!("[etcd]\nendpoints = h:2379\nca_file = {}\n", pw.display()),
        )
        .unwrap();
        let cfg = EtcdConfig::from_ini(&tls).unwrap();
        assert_eq!(cfg.endpoints, vec!["https://h:2379"]);
        assert!(cfg.tls.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn service_info_is_the_contract_json() {
        let info = ServiceInfo {
            addr: "localhost:8081".into(),
            role: Role::Slave,
            started_at: 5,
            term: None,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"addr":"localhost:8081","role":"slave","started_at":5}"#
        );
        // A leader's entry carries its term; an older reader's JSON (no
        // term) still decodes, as no term.
        let leader = ServiceInfo {
            role: Role::Master,
            term: Some(42),
            ..info.clone()
        };
        let json = serde_json::to_string(&leader).unwrap();
        assert_eq!(
            json,
            r#"{"addr":"localhost:8081","role":"master","started_at":5,"term":42}"#
        );
        assert_eq!(validate_entry(json.as_bytes()).unwrap().term, Some(42));
        let old = br#"{"addr":"localhost:8081","role":"master","started_at":5}"#;
        assert_eq!(validate_entry(old).unwrap().term, None);
        let plain: ServiceInfo = serde_json::from_slice(old).unwrap();
        assert_eq!(plain.term, None);
    }
}
