//! Prometheus metrics for the gateway's `GET /metrics`: requests by route
//! and status, upstream latency by route, node health. Counters are resolved
//! once per (route, status class) so counting is an atomic add.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::routing::Route;
use crate::upstreams::NodeView;

const STATUSES: [u16; 16] = [
    200, 400, 401, 403, 404, 405, 408, 411, 413, 429, 431, 500, 501, 502, 503, 504,
];

pub struct Metrics {
    registry: Registry,
    requests: Vec<Vec<IntCounter>>,
    other_status: IntCounterVec,
    latency: Vec<Histogram>,
    retries: IntCounter,
    node_healthy: IntGaugeVec,
    etcd_reconnects: prometheus::IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let vec = IntCounterVec::new(
            Opts::new(
                "kamaitachi_gateway_requests_total",
                "Requests answered, by route and HTTP status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        let requests = Route::ALL
            .iter()
            .map(|r| {
                STATUSES
                    .iter()
                    .map(|s| vec.with_label_values(&[r.label(), &s.to_string()]))
                    .collect()
            })
            .collect();
        let hist = HistogramVec::new(
            HistogramOpts::new("kamaitachi_gateway_request_seconds", "Time to answer, by route").buckets(
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ],
            ),
            &["route"],
        )?;
        registry.register(Box::new(hist.clone()))?;
        let latency = Route::ALL
            .iter()
            .map(|r| hist.with_label_values(&[r.label()]))
            .collect();
        let retries = IntCounter::new(
            "kamaitachi_gateway_retries_total",
            "Requests retried on another node",
        )?;
        registry.register(Box::new(retries.clone()))?;
        let node_healthy = IntGaugeVec::new(
            Opts::new(
                "kamaitachi_gateway_node_healthy",
                "1 when the node is healthy and not ejected",
            ),
            &["addr", "role"],
        )?;
        registry.register(Box::new(node_healthy.clone()))?;
        let etcd_reconnects = prometheus::IntGauge::new(
            "kamaitachi_etcd_reconnects_total",
            "Times a registry connection to etcd was lost or failed and made again",
        )?;
        registry.register(Box::new(etcd_reconnects.clone()))?;
        Ok(Metrics {
            etcd_reconnects,
            registry,
            requests,
            other_status: vec,
            latency,
            retries,
            node_healthy,
        })
    }

    pub fn observe(&self, route: Route, status: u16, seconds: f64) {
        let r = route.index();
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.requests[r][i].inc(),
            None => self
                .other_status
                .with_label_values(&[route.label(), &status.to_string()])
                .inc(),
        }
        self.latency[r].observe(seconds);
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn render(&self, nodes: &[NodeView]) -> Vec<u8> {
        self.node_healthy.reset();
        for n in nodes {
            self.node_healthy
                .with_label_values(&[n.addr.as_str(), n.role.as_str()])
                .set(i64::from(n.healthy && !n.ejected));
        }
        self.etcd_reconnects.set(cluster::registry::reconnects() as i64);
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
