//! `kamaitachi-node`: one data node (master or slave).
//!
//! Start-up, in order: read the config; start the SQLite reader threads and
//! the signal thread (plain OS threads, created before any coroutine so may's
//! core pinning does not catch them); load the catalog; warm the cache from
//! its dump if the dump is intact and current; listen. A request then flows
//! `server/http.rs` (framing, limits) → `server/api.rs` (route) →
//! `engine/query.rs` (cache, then SQLite via `storage/store.rs`) →
//! `engine/render.rs` + `json.rs` (bytes).
//!
//! The modules form layers whose imports point one way, down (checked by
//! `tests/layers.rs`):
//!
//! ```text
//! app      main.rs, config.rs, replication.rs, backup.rs, import.rs, gendata.rs
//! server   server/   http framing, api routing, the one ApiError, metrics
//! engine   engine/   request parsing, query, render, cache, preload
//! storage  storage/  store, the one writer, apply, blob, pools, data state
//! model    model/    catalog, series, batch types, dates
//! json     json.rs   the leaf JSON writer
//! ```
//!
//! Stop (SIGINT/SIGTERM): the node reports unready, leaves the registry,
//! stops accepting, lets the requests in progress finish (bounded), writes
//! its cache dump and exits.

mod backup;
mod config;
mod engine;
mod gendata;
mod import;
mod json;
mod model;
mod replication;
mod server;
mod storage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use cluster::{Discovery, Mode, Registration, ServiceInfo};

use crate::config::NodeConfig;
use crate::engine::cache::DataCache;
use crate::engine::{preload, query};
use crate::model::catalog;
use crate::server::api::{Api, NodeIdentity};
use crate::server::ha::{Ha, SyncRules};
use crate::server::{http, metrics};
use crate::storage::pool::WorkerPool;
use crate::storage::state::DataState;
use crate::storage::store::{DataVersion, Store};
use crate::storage::writer::Writer;
use crate::storage::{dump, store};

/// Coroutine stack, in words (may's unit): 256 KiB, room for serde_json's
/// 128 levels of nesting with margin.
const COROUTINE_STACK_WORDS: usize = 0x8000;

#[derive(Parser)]
#[command(name = "kamaitachi-node", version, about = "Kamaitachi data node")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Config file (INI) [default: conf/master.ini]. `-config FILE` is
    /// accepted too.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The original server's flags (`-db`, `-port`, `-cache`, `-debug`),
    /// over the config: [database] path.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Over [server] port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Over [cache] max_bytes.
    #[arg(long, value_name = "BYTES")]
    cache: Option<u64>,
    /// [log] level = debug.
    #[arg(long)]
    debug: bool,
    /// Install the elected leader's image even when it would drop this
    /// node's data: another dataset, an empty image, or one behind what
    /// this node knows was acknowledged (docs/WRITE_PROTOCOL.md, F3 and
    /// its runbook). An operator's decision, for one start.
    #[arg(long)]
    accept_image_from_leader: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The config file a node runs without `--config`.
const DEFAULT_CONFIG: &str = "conf/master.ini";

/// What a node runs with when given only the original server's flags and
/// there is no conf/master.ini: a master, as the original's server was.
const FLAGS_ONLY_CONFIG: &str = "[server]\nport = 8080\nmode = master\n[cache]\nmax_bytes = 2147483648\n";

impl Cli {
    /// The node's config: the file, with the original server's flags over
    /// it. Without `--config` and without conf/master.ini, the flags alone
    /// (if any) describe a master.
    fn node_ini(&self) -> Result<cluster::IniFile, cluster::ConfigError> {
        let overrides = self.db.is_some() || self.port.is_some() || self.cache.is_some() || self.debug;
        let mut ini = match &self.config {
            Some(path) => cluster::IniFile::load(path)?,
            None if overrides && !Path::new(DEFAULT_CONFIG).exists() => {
                cluster::IniFile::parse("(command line)", FLAGS_ONLY_CONFIG)?
            }
            None => cluster::IniFile::load(DEFAULT_CONFIG)?,
        };
        if let Some(db) = &self.db {
            ini.set("database", "path", &db.display().to_string());
        }
        if let Some(port) = self.port {
            ini.set("server", "port", &port.to_string());
        }
        if let Some(bytes) = self.cache {
            ini.set("cache", "max_bytes", &bytes.to_string());
        }
        if self.debug {
            ini.set("log", "level", "debug");
        }
        Ok(ini)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic sample database.
    GenData {
        /// Database file to create.
        #[arg(long)]
        db: PathBuf,
        /// Number of subjects.
        #[arg(long, default_value_t = 5000)]
        subjects: usize,
        /// Year range, inclusive: A..B.
        #[arg(long, default_value = "2015..2024")]
        years: String,
        /// Random seed; the same seed gives the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Import a KamaitachiGo database (its finance_data table) into a new
    /// database of this schema.
    Import {
        /// The original's SQLite file.
        #[arg(long, value_name = "OLD.db")]
        from: PathBuf,
        /// Database file to create.
        #[arg(long, value_name = "NEW.db")]
        db: PathBuf,
        /// Refuse the whole import at the first bad row (default: report and skip it).
        #[arg(long)]
        strict: bool,
        /// Replace --db if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Take a consistent online backup of a running node (its database and
    /// data version), streamed to FILE with a manifest FILE.json.
    Backup {
        /// Base URL of the node, e.g. http://localhost:8080.
        #[arg(long, value_name = "URL")]
        from: String,
        /// Backup file to write.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// File holding the node's admin token.
        #[arg(long, value_name = "PATH")]
        token_file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a backup (CRC-32, SQLite's quick check, data version) and
    /// install it as a node's database (stop the node first).
    Restore {
        /// Backup file (with its FILE.json manifest).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Database file to write.
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    // The guide and the original server spell flags with one dash
    // (`-config FILE`, `-db PATH -port 9000 -debug`).
    let args = std::env::args().map(|a| match a.as_str() {
        "-config" | "-db" | "-port" | "-cache" | "-debug" => format!("-{a}"),
        _ => a,
    });
    let cli = Cli::parse_from(args);
    // The node's config, [log] first; the tools (gen-data, import, …) log
    // as text.
    let ini = match cli.command {
        None => match cli.node_ini().and_then(|ini| {
            let log = cluster::logging::LogConfig::from_ini(&ini)?;
            Ok((ini, log))
        }) {
            Ok((ini, log)) => {
                log.install("may=warn");
                Some(ini)
            }
            Err(e) => {
                eprintln!("kamaitachi-node: {e}");
                return ExitCode::from(2);
            }
        },
        Some(_) => {
            cluster::logging::LogConfig::default().install("may=warn");
            None
        }
    };
    let result = match cli.command {
        Some(Command::GenData {
            db,
            subjects,
            years,
            seed,
            force,
        }) => gen_data(db, subjects, &years, seed, force),
        Some(Command::Import {
            from,
            db,
            strict,
            force,
        }) => import_db(import::ImportOptions {
            from,
            db,
            strict,
            force,
        }),
        Some(Command::Backup {
            from,
            to,
            token_file,
            force,
        }) => backup::backup(&from, &token_file, &to, force).map(|m| {
            eprintln!(
                "backup: {} -> {} ({} bytes, data version {} of dataset {}, CRC-32 {:08x}); manifest {}",
                from,
                to.display(),
                m.bytes,
                m.data_version,
                m.dataset_id,
                m.crc32,
                backup::manifest_path(&to).display()
            )
        }),
        Some(Command::Restore { from, db, force }) => backup::restore(&from, &db, force).map(|m| {
            eprintln!(
                "restore: {} -> {} (data version {} of dataset {}, checked)",
                from.display(),
                db.display(),
                m.data_version,
                m.dataset_id
            )
        }),
        None => match &ini {
            Some(ini) => run(ini, cli.accept_image_from_leader),
            None => Err(anyhow!("no config")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kamaitachi-node: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn gen_data(db: PathBuf, subjects: usize, years: &str, seed: u64, force: bool) -> anyhow::Result<()> {
    let (a, b) = years
        .split_once("..")
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or_else(|| anyhow!("--years must look like 2015..2024 (got {years:?})"))?;
    let started = Instant::now();
    gendata::generate(&gendata::GenOptions {
        db: db.clone(),
        subjects,
        first_year: a,
        last_year: b,
        seed,
        force,
    })?;
    eprintln!(
        "gen-data: wrote {} ({subjects} subjects, {a}..{b}, seed {seed}) in {:.1}s",
        db.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn import_db(opts: import::ImportOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let summary = import::import(&opts)?;
    import::print_summary(&summary, &opts);
    eprintln!("import: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run(ini: &cluster::IniFile, accept_image_from_leader: bool) -> anyhow::Result<()> {
    let cfg = NodeConfig::from_ini(ini)?;
    // Default: half the cores; the other half is for the SQLite and compute
    // threads (and, on a shared box, the neighbours).
    let workers = match cfg.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    may::config()
        .set_workers(workers)
        .set_stack_size(COROUTINE_STACK_WORDS);
    may::config().set_worker_pin(false);

    let (admin_token, cluster_key) = cluster::auth::load_credentials(
        &cfg.file,
        &cluster::auth::CredentialFiles {
            admin_token: cfg.admin_token_file.as_deref(),
            admin_token_default: &config::default_admin_token_file(&cfg.db_path),
            cluster_secret: cfg.cluster_secret_file.as_deref(),
            cluster_secret_default: &config::default_cluster_secret_file(&cfg.db_path),
        },
    )
    .map_err(|e| anyhow!(e))?;
    let admin_token = Some(admin_token);

    // The writer comes first: it creates the database (and any table an
    // older file lacks); a slave starts from an empty one and copies the
    // master's.
    for key in &cfg.ignored_keys {
        tracing::info!(
            "config file {}: {key} ignored (the original's MySQL setting; data lives in SQLite at [database] path)",
            cfg.file.display()
        );
    }
    if store::is_kamaitachigo_database(&cfg.db_path) {
        return Err(anyhow!(
            "config file {}: [database] path {} is a KamaitachiGo database (table finance_data); \
             import it first: kamaitachi-node import --from {} --db NEW.db, then use NEW.db",
            cfg.file.display(),
            cfg.db_path.display(),
            cfg.db_path.display()
        ));
    }
    if cfg.db_path_defaulted {
        tracing::info!(
            "config file {}: no [database] path; using {} (from service_name and port)",
            cfg.file.display(),
            cfg.db_path.display()
        );
        if let Some(dir) = cfg.db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    } else if cfg.mode == Mode::Master && !cfg.db_path.exists() {
        // A path that was written down and is not there is more likely a
        // typo than a wish for an empty master.
        return Err(anyhow!(
            "config file {}: [database] path {}: no such file (run `kamaitachi-node gen-data --db {}`)",
            cfg.file.display(),
            cfg.db_path.display(),
            cfg.db_path.display()
        ));
    }
    if cfg.mode == Mode::Master {
        let mut store = Store::open_rw(&cfg.db_path)
            .with_context(|| format!("config file {}: [database] path", cfg.file.display()))?;
        if store.init_dataset(catalog::STANDARD_INDICATORS)? {
            tracing::info!(
                "{}: new empty database (standard indicators, no subjects yet); ingest fills it",
                cfg.db_path.display()
            );
        }
    }
    let writer = store::start_writer(&cfg.db_path)
        .with_context(|| format!("config file {}: [database] path", cfg.file.display()))?;
    let meta = Store::open_ro(&cfg.db_path)
        .with_context(|| format!("config file {}: [database] path", cfg.file.display()))?;
    let catalog = meta.load_catalog()?;
    let version = meta.data_version()?;
    let total_records = meta.report_count()?;
    let memory = meta.election_memory()?;
    let readers = store::start_readers(&cfg.db_path, cfg.readers)?;
    let compute =
        WorkerPool::start("compute", cfg.readers, || Ok(())).context("cannot start compute threads")?;

    let cache = Arc::new(DataCache::new(cfg.max_bytes));
    if let Some(path) = &cfg.snapshot_path {
        warm_from_dump(&cache, path, version);
    }

    let state = Arc::new(DataState::default());
    state.applied_seq.store(version.version, Ordering::Release);
    state.master_seq.store(version.version, Ordering::Release);
    state.dataset_id.store(version.dataset_id, Ordering::Release);
    state.total_records.store(total_records as i64, Ordering::Release);
    // The acknowledged horizon (docs/WRITE_PROTOCOL.md, V1–V2): without an
    // election it follows the data; with one it starts at what this node
    // durably knows was acknowledged, and the changes above it stay
    // unseen until the leader's acknowledgment (or, leading, its own)
    // covers them.
    state.set_follows_applied(cfg.mode == Mode::Master && cfg.etcd.is_none());
    state.set_acked(memory.acked_seq);
    storage::writer::relist_pending(&meta, &state)?;
    drop(meta);
    let engine = Arc::new(query::QueryEngine::new(
        catalog,
        cache.clone(),
        readers,
        compute,
        state.clone(),
    ));
    let writer = Writer::new(writer, state.clone(), engine.clone());
    let preloader = cfg.preload.then(|| preload::Preloader::new(engine.clone()));

    // The registry and the election run on a small tokio runtime of their
    // own, made here on a plain thread before the first coroutine.
    // It lives as long as `run`, that is, as long as the process.
    let registry_rt = cluster::registry::runtime().context("cannot start the registry runtime")?;
    // Write availability (issue 14): with etcd, etcd elects the leader
    // among the candidates; without it a `mode = master` node leads alone.
    let election = cfg.etcd.clone().map(|etcd| {
        Arc::new(cluster::election::Election::spawn(
            registry_rt.handle(),
            etcd,
            &cfg.service_addr,
            cfg.candidate,
            Arc::new(NodeHistory {
                state: state.clone(),
                writer: writer.clone(),
                may_bootstrap: cfg.mode == Mode::Master,
            }),
        ))
    });
    let ha = Ha::new(
        election.clone(),
        cfg.mode == Mode::Master && cfg.etcd.is_none(),
        cfg.candidate && cfg.etcd.is_some(),
        SyncRules {
            replicas: cfg.sync_replicas,
            timeout: cfg.sync_timeout,
            strict: cfg.sync_strict,
        },
        &cfg.service_addr,
        Duration::from_secs(cfg.etcd.as_ref().map_or(10, |e| e.ttl as u64)),
        state.clone(),
    );
    ha.spawn_acknowledger()
        .context("cannot start the acknowledger thread")?;
    let api = Arc::new(Api {
        engine: engine.clone(),
        identity: NodeIdentity {
            mode: cfg.mode,
            addr: cfg.service_addr.clone(),
        },
        metrics: metrics::Metrics::new().map_err(|e| anyhow!("metrics: {e}"))?,
        admin_token,
        cluster_key: cluster_key.clone(),
        state: state.clone(),
        writer: writer.clone(),
        log_retain: cfg.log_retain,
        db_path: cfg.db_path.clone(),
        slow: Duration::from_millis(cfg.log.slow_ms),
        preloader: preloader.clone(),
        ha: ha.clone(),
    });

    let addr = format!("{}:{}", cfg.bind, cfg.port);
    let listener = http::bind(&addr)
        .map_err(|e| anyhow!(cluster::config::listen_error(&addr, cfg.port, &cfg.file, &e)))?;

    // Every node follows the leader while it does not lead (with etcd, a
    // master too: it may have lost an election); a master without etcd
    // leads alone.
    if cfg.mode == Mode::Slave || cfg.etcd.is_some() {
        let locator = replication::MasterLocator {
            registry: cfg
                .etcd
                .clone()
                .map(|e| Discovery::spawn(registry_rt.handle(), e)),
            fallback: cfg.master.clone(),
            election: election.clone(),
            own_addr: cfg.service_addr.clone(),
        };
        replication::Follower {
            state: state.clone(),
            writer,
            locator,
            key: cluster_key,
            db_path: cfg.db_path.clone(),
            preloader: preloader.clone(),
            ha: ha.clone(),
            log_retain: cfg.log_retain,
            accept_any_image: accept_image_from_leader,
        }
        .spawn()
        .context("cannot start the replication thread")?;
    }
    // The node joins the registry — and so the gateway's ring — once it is
    // ready: at once for a master, after its first sync for a slave.
    let registration: Arc<Mutex<Option<Registration>>> = Arc::default();
    match &cfg.etcd {
        None => tracing::info!("no [etcd] section in {}: not registering", cfg.file.display()),
        Some(etcd) => {
            let (slot, reg_state, handle) =
                (registration.clone(), state.clone(), registry_rt.handle().clone());
            let (etcd, name) = (etcd.clone(), cfg.service_name.clone());
            let base = ServiceInfo::new(&cfg.service_addr, cluster::Role::Slave);
            let (ha_reg, reg_base) = (ha.clone(), base.clone());
            std::thread::Builder::new()
                .name("register".into())
                .spawn(move || {
                    // Woken by `set_ready` (a slave: after its first sync).
                    reg_state.wait_ready();
                    // A candidate registers with the role the election gave
                    // it: wait (briefly) until the election keys are known.
                    if ha_reg.candidate {
                        let until = Instant::now() + Duration::from_secs(3);
                        // Until it leads, or another node does.
                        let undecided = |e: &cluster::election::Election| {
                            let v = e.view();
                            !v.synced || v.leader.as_ref().is_none_or(|l| l.addr == reg_base.addr)
                        };
                        while Instant::now() < until
                            && ha_reg.leading_term().is_none()
                            && ha_reg.election().is_some_and(|e| undecided(e))
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    let info = role_info(&reg_base, &ha_reg);
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(Registration::spawn(&handle, etcd, &name, info));
                    }
                })
                .context("cannot start the registration thread")?;
            spawn_role_thread(ha.clone(), state.clone(), registration.clone(), base)?;
        }
    }

    let dumper = cfg.snapshot_path.clone().map(|path| Dumper {
        path,
        cache: cache.clone(),
        state: state.clone(),
    });
    let drain = Arc::new(http::Drain::default());
    let stopper = listener
        .inner()
        .try_clone()
        .context("cannot duplicate the listening socket")?;
    let stopping = drain.clone();
    let signals = spawn_signal_thread(
        election.clone(),
        api.clone(),
        dumper.clone(),
        registration,
        Stop {
            drain: drain.clone(),
            listener: stopper,
            timeout: cfg.drain_timeout,
        },
    )?;
    if let (Some(d), false) = (&dumper, cfg.snapshot_interval.is_zero()) {
        spawn_dump_timer(d.clone(), cfg.snapshot_interval)?;
    }

    let limits = http::Limits {
        max_body_bytes: cfg.max_body_bytes,
        idle_timeout: cfg.idle_timeout,
        request_timeout: cfg.request_timeout,
        max_connections: cfg.max_connections,
        ..http::Limits::default()
    };
    // A master serves at once; a slave once it has caught up (replication.rs).
    if cfg.mode == Mode::Master {
        state.set_ready(true);
    }
    tracing::info!(
        "kamaitachi-node {} listening on {addr} (db {}, data version {}, cache max {} bytes)",
        cfg.mode,
        cfg.db_path.display(),
        state.applied(),
        cfg.max_bytes
    );
    if let Some(p) = &preloader {
        p.start("at start");
    }
    let server = may::go!(move || http::serve(listener, api, limits, drain));
    server
        .join()
        .map_err(|_| anyhow!("the accept loop stopped unexpectedly"))?;
    if stopping.stopping() {
        // The signal thread drains, dumps and exits the process.
        let _ = signals.join();
        return Ok(());
    }
    Err(anyhow!("the accept loop stopped unexpectedly"))
}

/// What the election needs to know of this node's data.
struct NodeHistory {
    state: Arc<DataState>,
    writer: Writer,
    /// `mode = master`: may start a cluster with no data.
    may_bootstrap: bool,
}

impl cluster::election::History for NodeHistory {
    fn position(&self) -> u64 {
        self.state.applied()
    }

    fn digest_at(&self, seq: u64) -> Option<String> {
        if seq == 0 {
            return Some(String::new());
        }
        self.writer.history_digest_at(seq).ok().flatten()
    }

    fn standing(&self) -> Result<cluster::election::Standing, String> {
        let memory = self.writer.election_memory().map_err(|e| e.to_string())?;
        let last_term = self.writer.last_term().map_err(|e| e.to_string())?;
        let seq = self.state.applied();
        Ok(cluster::election::Standing {
            term: memory.term,
            last_term,
            seq,
            acked: (memory.acked_term, memory.acked_seq),
            has_data: seq > 0 || self.state.total_records.load(Ordering::Acquire) > 0,
            dataset: self.state.dataset_id.load(Ordering::Acquire),
            members: memory.members,
            may_bootstrap: self.may_bootstrap,
        })
    }

    fn raise_term(&self, term: i64) -> Result<(), String> {
        self.writer.raise_term(term).map_err(|e| e.to_string())
    }

    fn raise_known_acked(&self, term: i64, seq: u64) -> Result<(), String> {
        self.writer
            .raise_known_acked(term, seq)
            .map_err(|e| e.to_string())
    }

    fn remember_members(&self, add: Vec<String>, remove: Vec<String>) -> Result<(), String> {
        self.writer
            .remember_members(add, remove)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The registry value for the role this node plays now.
fn role_info(base: &ServiceInfo, ha: &Ha) -> ServiceInfo {
    let term = ha.leading_term();
    ServiceInfo {
        role: ha.role(),
        term: term.filter(|t| *t > 0),
        ..base.clone()
    }
}

/// Follows the election: on taking the lead the node becomes ready (a
/// candidate follower that never synced may lead) and its registry entry
/// says `master` with the term; on losing it, `slave`.
fn spawn_role_thread(
    ha: Arc<Ha>,
    state: Arc<DataState>,
    registration: Arc<Mutex<Option<Registration>>>,
    base: ServiceInfo,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("role".into())
        .spawn(move || {
            let mut was: Option<i64> = None;
            loop {
                let now = ha.leading_term();
                if now != was {
                    match now {
                        Some(term) => {
                            ha.elections_won.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(term, "this node leads for writes from term {term}");
                            if let Ok(mut m) = state.master_addr.lock() {
                                *m = None;
                            }
                            state.set_ready(true);
                        }
                        None => tracing::warn!(
                            "this node no longer leads (was term {}); following the new leader",
                            was.unwrap_or(0)
                        ),
                    }
                    was = now;
                }
                // Leading: the horizon is what etcd holds acknowledged under
                // this term (the baseline at first, then each fence).
                if let Some(acked) = ha.election().and_then(|e| e.view().acked.clone()) {
                    if Some(acked.term) == now {
                        state.set_acked(acked.seq);
                    }
                }
                if let Some(reg) = registration.lock().ok().as_ref().and_then(|r| r.as_ref()) {
                    reg.set_info(role_info(&base, &ha));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .context("cannot start the role thread")?;
    Ok(())
}

fn warm_from_dump(cache: &DataCache, path: &Path, version: DataVersion) {
    if !cache.enabled() {
        return;
    }
    match dump::read(path, version) {
        Ok(entries) => {
            let n = entries.len();
            for (subject, series) in entries {
                cache.insert_series(Arc::from(subject), Arc::new(series));
            }
            tracing::info!("cache dump {}: loaded {n} series", path.display());
        }
        Err(dump::DumpError::Missing(_)) => {
            tracing::info!("cache dump {}: none yet, starting cold", path.display())
        }
        Err(e) => tracing::warn!("cache dump {} ignored: {e}", path.display()),
    }
}

/// Writes the cache dump; shared by the timer and the stop path.
#[derive(Clone)]
struct Dumper {
    path: PathBuf,
    cache: Arc<DataCache>,
    state: Arc<DataState>,
}

impl Dumper {
    fn dump(&self) {
        if !self.cache.enabled() {
            return;
        }
        let started = Instant::now();
        // The version is read before the entries: every write up to it has
        // already dropped what it touched, so no entry is older than it.
        let version = DataVersion {
            dataset_id: self.state.dataset_id.load(Ordering::Acquire),
            version: self.state.applied(),
        };
        let entries = self.cache.all_series();
        match dump::write(&self.path, version, &entries) {
            Ok(bytes) => tracing::info!(
                "cache dump {}: {} series, {bytes} bytes in {:.0} ms",
                self.path.display(),
                entries.len(),
                started.elapsed().as_secs_f64() * 1000.0
            ),
            Err(e) => tracing::error!("cache dump {} failed: {e}", self.path.display()),
        }
    }
}

fn spawn_dump_timer(dumper: Dumper, every: Duration) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("cache-dump".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            dumper.dump();
        })
        .context("cannot start the cache dump thread")?;
    Ok(())
}

/// What a graceful stop needs to stop the HTTP side.
struct Stop {
    drain: Arc<http::Drain>,
    /// A duplicate of the listening socket, to shut it down.
    listener: std::net::TcpListener,
    timeout: Duration,
}

/// SIGTERM/SIGINT: a graceful stop, in the order PostgreSQL's "smart"
/// shutdown and nginx's `quit` use: report unready and leave the registry
/// (the gateway stops sending), stop accepting (new connections are
/// refused), let the requests in progress finish (at most
/// `[limits] drain_timeout_secs`), write the cache dump, exit.
fn spawn_signal_thread(
    election: Option<Arc<cluster::election::Election>>,
    api: Arc<Api>,
    dumper: Option<Dumper>,
    registration: Arc<Mutex<Option<Registration>>>,
    stop: Stop,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let handle = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("signal {sig}: stopping");
                api.state.set_ready(false);
                if let Some(e) = &election {
                    // A leader resigns: a successor is elected at once.
                    e.shutdown_blocking(Duration::from_secs(2));
                }
                if let Some(reg) = registration.lock().ok().and_then(|mut r| r.take()) {
                    // Leave the registry at once rather than after the lease.
                    reg.shutdown_blocking(Duration::from_secs(2));
                    tracing::info!("left the registry");
                }
                stop.drain.stop_accepting(&stop.listener);
                let started = Instant::now();
                match stop.drain.wait_idle(stop.timeout) {
                    0 => tracing::info!(
                        "requests in progress finished in {:.0} ms",
                        started.elapsed().as_secs_f64() * 1000.0
                    ),
                    n => tracing::warn!(
                        "{n} connections still busy after the drain timeout of {:?}; stopping anyway",
                        stop.timeout
                    ),
                }
                if let Some(d) = &dumper {
                    d.dump();
                }
                tracing::info!("stopped");
                std::process::exit(0);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}
