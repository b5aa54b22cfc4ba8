//! `kamaitachi-gateway`: the pingora proxy in front of the data nodes.
//!
//! Start-up: read the config; start the registry discovery on a small tokio
//! runtime of its own; build pingora's load balancer over the discovered
//! nodes with active health checks on `/health`; serve. Every connection
//! enters at `read_path/`, which proxies reads itself and hands every
//! other request to pingora's proxy (`proxy.rs`); where a request goes is
//! decided in `routing.rs` and `upstreams.rs`, and what happens when a node
//! fails in `failover.rs`, for both paths. Numbers that must stay in step
//! with the nodes' or etcd's settings are named in `coupling.rs`. SIGTERM
//! stops the gateway within the configured grace period and shutdown
//! timeout (seconds, not pingora's default minutes).

mod config;
mod coupling;
mod discovery_feed;
mod error;
mod failover;
mod limits;
mod local;
mod metrics;
mod own_routes;
mod proxy;
mod read_path;
mod routing;
mod status_page;
mod upstream_pool;
mod upstreams;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use cluster::Discovery;
use pingora::lb::selection::Consistent;
use pingora::lb::{Backends, LoadBalancer};
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::GatewayConfig;

// glibc malloc showed ~12% of the proxy's CPU under load; mimalloc halves it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kamaitachi-gateway", version, about = "Kamaitachi gateway (pingora)")]
struct Cli {
    /// Config file (INI). `-config FILE` is accepted too.
    #[arg(long, default_value = "conf/gateway.ini")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = std::env::args().map(|a| if a == "-config" { "--config".to_string() } else { a });
    let cli = Cli::parse_from(args);
    match cluster::logging::LogConfig::peek(&cli.config) {
        Ok(log) => log.install(""),
        Err(e) => {
            eprintln!("kamaitachi-gateway: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kamaitachi-gateway: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    let cfg = GatewayConfig::load(config)?;
    let listen = format!("{}:{}", cfg.bind, cfg.port);
    // A clear message for the most common start-up failure.
    std::net::TcpListener::bind(&listen)
        .map_err(|e| anyhow!(cluster::config::listen_error(&listen, cfg.port, &cfg.file, &e)))?;
    let (admin_token, cluster_key) = cluster::auth::load_credentials(
        &cfg.file,
        &cluster::auth::CredentialFiles {
            admin_token: cfg.admin_token_file.as_deref(),
            admin_token_default: Path::new(cluster::config::DEFAULT_ADMIN_TOKEN_FILE),
            cluster_secret: cfg.cluster_secret_file.as_deref(),
            cluster_secret_default: Path::new(cluster::auth::DEFAULT_CLUSTER_SECRET_FILE),
        },
    )
    .map_err(|e| anyhow!(e))?;
    let admin_token = Some(admin_token);

    // Discovery runs on its own runtime, independent of pingora's.
    let registry_rt = cluster::registry::runtime().context("cannot start the registry runtime")?;
    let discovery = cfg
        .etcd
        .clone()
        .map(|e| Discovery::spawn(registry_rt.handle(), e));

    let conf = ServerConf {
        threads: cfg.threads,
        // One runtime per thread: measured faster here than work stealing
        // (fewer cross-thread wake-ups per proxied request).
        work_stealing: false,
        grace_period_seconds: Some(cfg.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(cfg.shutdown_timeout_secs),
        upstream_keepalive_pool_size: cfg.keepalive_pool,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let changes = discovery.as_ref().map(Discovery::changes);
    let node_discovery = upstreams::NodeDiscovery::new(discovery.clone(), cfg.static_upstreams.clone());
    let mut backends = Backends::new(Box::new(node_discovery));
    let check = upstreams::ProofHealthCheck {
        key: cluster_key.clone(),
        client: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(cfg.connect_timeout)
            .timeout(coupling::HEALTH_CHECK_TIMEOUT)
            .build()
            .context("cannot build the health-check client")?,
    };
    backends.set_health_check(Box::new(check));
    let mut lb = LoadBalancer::<Consistent>::from_backends(backends);
    lb.health_check_frequency = Some(cfg.health_interval);
    // Once at start; then the discovery feed rebuilds on every registry
    // change (and on its slow safety net).
    lb.update_frequency = None;
    lb.parallel_health_check = true;
    let lb_service = background_service("upstreams", lb);
    let lb = lb_service.task();
    let feed = discovery_feed::DiscoveryFeed {
        lb: lb.clone(),
        changes,
    };

    let upstreams = Arc::new(upstreams::Upstreams::new(lb, cfg.eject_for));
    let limits = Arc::new(limits::Limits::new(cfg.max_body_bytes, cfg.qps, cfg.burst));
    let metrics = Arc::new(metrics::Metrics::new().map_err(|e| anyhow!("metrics: {e}"))?);
    let gateway = proxy::Gateway {
        upstreams: upstreams.clone(),
        limits: limits.clone(),
        metrics: metrics.clone(),
        admin_token,
        cluster_key,
        service_addr: cfg.service_addr.clone(),
        registry: discovery,
        slow: Duration::from_millis(cfg.log.slow_ms),
        max_tries: cfg.max_tries,
        connect_timeout: cfg.connect_timeout,
        read_timeout: cfg.read_timeout,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?,
    };
    let general = http_proxy(&server.configuration, gateway);
    // The read path owns every connection, fast path on or off: it reads
    // each request head under the whole-head deadline and keeps the
    // connection cap; with the fast path off it hands every request over.
    {
        let front = read_path::ReadPath {
            fast_reads: cfg.read_fast_path,
            open: Arc::default(),
            max_connections: cfg.max_connections,
            general: Arc::new(general),
            upstreams,
            limits,
            metrics,
            pool: upstream_pool::UpstreamPool {
                per_node: (cfg.keepalive_pool / cfg.threads).max(1),
                max_idle: coupling::UPSTREAM_IDLE,
            },
            max_tries: cfg.max_tries,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            client_idle: cfg.idle_timeout,
            request_time: cfg.request_timeout,
            slow: Duration::from_millis(cfg.log.slow_ms),
        };
        let mut service = Service::new("kamaitachi gateway".to_string(), front);
        service.add_tcp(&listen);
        server.add_service(service);
    }
    let lb_handle = server.add_service(lb_service);
    server
        .add_service(background_service("discovery feed", feed))
        .add_dependency(&lb_handle);
    tracing::info!(
        "kamaitachi-gateway listening on {listen} ({} threads, read fast path {}; upstreams from {}{})",
        cfg.threads,
        if cfg.read_fast_path { "on" } else { "off" },
        if cfg.etcd.is_some() {
            "etcd"
        } else {
            "the static list"
        },
        if cfg.static_upstreams.is_empty() {
            ""
        } else {
            " + static list"
        }
    );
    // Keep the registry runtime alive while pingora runs (run_forever exits
    // the process).
    let _registry_rt = registry_rt;
    server.run_forever();
}
