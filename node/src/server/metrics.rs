//! Prometheus metrics for `GET /metrics`.
//!
//! Counters on the request path are resolved once at start (one per route
//! and status), so counting a request is a single atomic add; gauges that
//! mirror the cache and the data version are set when `/metrics` is scraped,
//! and so is `kamaitachi_store_loads_total`, a counter brought up to the
//! query engine's own count of series read from SQLite.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::engine::cache::CacheStats;

/// The routes metrics are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Snapshot,
    Period,
    Stats,
    CacheReset,
    Ingest,
    Delete,
    Changes,
    Image,
    Health,
    Metrics,
    Other,
}

const ROUTES: [RouteLabel; 11] = [
    RouteLabel::Snapshot,
    RouteLabel::Period,
    RouteLabel::Stats,
    RouteLabel::CacheReset,
    RouteLabel::Ingest,
    RouteLabel::Delete,
    RouteLabel::Changes,
    RouteLabel::Image,
    RouteLabel::Health,
    RouteLabel::Metrics,
    RouteLabel::Other,
];

impl RouteLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Snapshot => "snapshot",
            RouteLabel::Period => "period",
            RouteLabel::Stats => "stats",
            RouteLabel::CacheReset => "cache_reset",
            RouteLabel::Ingest => "ingest",
            RouteLabel::Delete => "delete",
            RouteLabel::Changes => "replication_changes",
            RouteLabel::Image => "replication_image",
            RouteLabel::Health => "health",
            RouteLabel::Metrics => "metrics",
            RouteLabel::Other => "other",
        }
    }
}

const STATUSES: [u16; 14] = [
    200, 400, 401, 403, 404, 405, 408, 410, 413, 429, 431, 500, 501, 503,
];

pub struct Metrics {
    registry: Registry,
    requests: Vec<Vec<IntCounter>>,
    latency: Vec<Histogram>,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    cache_max_bytes: IntGauge,
    cache_hits: IntGauge,
    cache_misses: IntGauge,
    cache_evictions: IntGauge,
    data_version: IntGauge,
    master_seq: IntGauge,
    lag: IntGauge,
    store_loads: IntCounter,
    etcd_reconnects: IntGauge,
    worker_panics: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let vec = IntCounterVec::new(
            Opts::new(
                "kamaitachi_node_requests_total",
                "Requests answered, by route and HTTP status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        let mut requests = Vec::new();
        for r in ROUTES {
            let row = STATUSES
                .iter()
                .map(|s| vec.with_label_values(&[r.as_str(), &s.to_string()]))
                .collect();
            requests.push(row);
        }
        let hist = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "kamaitachi_node_request_seconds",
                "Time to answer a request, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(hist.clone()))?;
        let latency = ROUTES
            .iter()
            .map(|r| hist.with_label_values(&[r.as_str()]))
            .collect();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Metrics {
            cache_entries: gauge("kamaitachi_cache_entries", "Entries in the cache")?,
            cache_bytes: gauge("kamaitachi_cache_bytes", "Accounted bytes in the cache")?,
            cache_max_bytes: gauge("kamaitachi_cache_max_bytes", "Configured cache bound in bytes")?,
            cache_hits: gauge(
                "kamaitachi_cache_hits",
                "Requests answered without SQLite since the last reset",
            )?,
            cache_misses: gauge(
                "kamaitachi_cache_misses",
                "Requests that read SQLite since the last reset",
            )?,
            cache_evictions: gauge(
                "kamaitachi_cache_evictions",
                "Entries evicted since the last reset",
            )?,
            data_version: gauge(
                "kamaitachi_data_version",
                "Data version (last applied change) of the node's database",
            )?,
            master_seq: gauge(
                "kamaitachi_replication_master_seq",
                "Latest change sequence the master reported",
            )?,
            lag: gauge(
                "kamaitachi_replication_lag",
                "Changes the node is behind its master",
            )?,
            store_loads: {
                let c = IntCounter::new(
                    "kamaitachi_store_loads_total",
                    "Subject series read from SQLite (cold loads; concurrent misses of one subject share one)",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            etcd_reconnects: gauge(
                "kamaitachi_etcd_reconnects_total",
                "Times a registry connection to etcd was lost or failed and made again",
            )?,
            worker_panics: {
                let c = IntCounter::new(
                    "kamaitachi_node_worker_panics_total",
                    "Jobs that panicked on a worker thread (the thread was replaced, the request got 500)",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            registry,
            requests,
            latency,
        })
    }

    pub fn observe(&self, route: RouteLabel, status: u16, seconds: f64) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            self.requests[r][i].inc();
        }
        self.latency[r].observe(seconds);
    }

    /// The text exposition, with gauges brought up to date.
    pub fn render(
        &self,
        cache: &CacheStats,
        data_version: u64,
        master_seq: u64,
        lag: u64,
        store_loads: u64,
    ) -> Vec<u8> {
        // The engine keeps the count; the counter catches up to it.
        self.store_loads
            .inc_by(store_loads.saturating_sub(self.store_loads.get()));
        self.cache_entries.set(cache.entries as i64);
        self.cache_bytes.set(cache.bytes as i64);
        self.cache_max_bytes.set(cache.max_bytes as i64);
        self.cache_hits.set(cache.hits as i64);
        self.cache_misses.set(cache.misses as i64);
        self.cache_evictions.set(cache.evictions as i64);
        self.data_version.set(data_version as i64);
        self.master_seq.set(master_seq as i64);
        self.lag.set(lag as i64);
        self.etcd_reconnects.set(cluster::registry::reconnects() as i64);
        self.worker_panics.reset();
        self.worker_panics.inc_by(crate::storage::pool::panics());
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // the registry already refused at registration.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
