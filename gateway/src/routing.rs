//! Which requests the gateway proxies, where they go, and the routing key.
//!
//! `/data/*` is proxied with the prefix stripped. Reads (snapshot, period)
//! go to the node that owns the key on the hash ring: the topic, else the
//! first subject. Writes and admin calls go to the master. The gateway's own
//! routes (`/health`, `/metrics`, stats, cache reset) are answered here.

/// The part of the path that is the gateway's to strip.
pub const DATA_PREFIX: &str = "/data";
pub const API: &str = "/kamaitachi/api/data/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Proxied read: hashed on its key.
    Read(ReadKind),
    /// Proxied write or admin call: the master.
    Master,
    /// Proxied, anything else under /data: any healthy node (it answers 404/405).
    Other,
    /// The gateway's own routes.
    Health,
    Metrics,
    Stats,
    CacheReset,
    /// Prometheus HTTP service discovery: every node and this gateway.
    PrometheusTargets,
    /// The status page and the JSON it reads.
    Status,
    StatusJson,
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    Snapshot,
    Period,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Read(ReadKind::Snapshot) => "snapshot",
            Route::Read(ReadKind::Period) => "period",
            Route::Master => "master",
            Route::Other => "other",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Stats => "stats",
            Route::CacheReset => "cache_reset",
            Route::PrometheusTargets => "prometheus_targets",
            Route::Status => "status",
            Route::StatusJson => "status_json",
            Route::NotFound => "not_found",
        }
    }

    pub const ALL: [Route; 12] = [
        Route::Read(ReadKind::Snapshot),
        Route::Read(ReadKind::Period),
        Route::Master,
        Route::Other,
        Route::Health,
        Route::Metrics,
        Route::Stats,
        Route::CacheReset,
        Route::PrometheusTargets,
        Route::Status,
        Route::StatusJson,
        Route::NotFound,
    ];

    /// Sent on to a node (as opposed to answered by the gateway).
    pub fn is_proxied(self) -> bool {
        matches!(self, Route::Read(_) | Route::Master | Route::Other)
    }

    pub fn index(self) -> usize {
        Route::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

fn trim_slash(p: &str) -> &str {
    match p.strip_suffix('/') {
        Some(s) if !s.is_empty() => s,
        _ => p,
    }
}

/// Classifies a request path (without query string).
pub fn classify(path: &str) -> Route {
    if let Some(rest) = path.strip_prefix(DATA_PREFIX) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Route::NotFound; // e.g. /database
        }
        return match trim_slash(rest).strip_prefix(API) {
            Some("/snapshot") => Route::Read(ReadKind::Snapshot),
            Some("/period") => Route::Read(ReadKind::Period),
            Some("/ingest") | Some("/delete") | Some("/cache/reset") => Route::Master,
            _ => Route::Other,
        };
    }
    match trim_slash(path) {
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/prometheus/targets" => Route::PrometheusTargets,
        "/status" => Route::Status,
        "/status.json" => Route::StatusJson,
        p if p == format!("{API}/stats") => Route::Stats,
        p if p == format!("{API}/cache/reset") => Route::CacheReset,
        _ => Route::NotFound,
    }
}

/// The upstream path: the request path and query with `/data` removed.
pub fn strip_prefix(path_and_query: &str) -> &str {
    match path_and_query.strip_prefix(DATA_PREFIX) {
        Some("") => "/",
        Some(rest) if rest.starts_with('?') => path_and_query, // "/data?x": not ours to rewrite
        Some(rest) => rest,
        None => path_and_query,
    }
}

/// The hashing key of a read body: its topic, else its first subject (a
/// node answers the topic when a body names both, as the original did; an
/// empty string is a Go client's unset field). Only these two fields are
/// looked at; anything unusable gives `None` (round robin), and the node
/// then answers the bad request itself.
pub fn routing_key(body: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct KeyFields<'a> {
        #[serde(borrow, default)]
        subjects: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        topic: Option<std::borrow::Cow<'a, str>>,
    }
    let fields: KeyFields<'_> = serde_json::from_slice(body).ok()?;
    if let Some(topic) = fields.topic.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return Some(topic.as_bytes().to_vec());
    }
    let subjects = fields.subjects?;
    subjects
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(|first| first.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(
            classify("/data/kamaitachi/api/data/v1/snapshot"),
            Route::Read(ReadKind::Snapshot)
        );
        assert_eq!(
            classify("/data/kamaitachi/api/data/v1/snapshot/"),
            Route::Read(ReadKind::Snapshot)
        );
        assert_eq!(
            classify("/data/kamaitachi/api/data/v1/period"),
            Route::Read(ReadKind::Period)
        );
        assert_eq!(classify("/data/kamaitachi/api/data/v1/ingest"), Route::Master);
        assert_eq!(
            classify("/data/kamaitachi/api/data/v1/cache/reset"),
            Route::Master
        );
        assert_eq!(classify("/data/health"), Route::Other);
        assert_eq!(classify("/database"), Route::NotFound);
        assert_eq!(classify("/kamaitachi/api/data/v1/snapshot"), Route::NotFound);
        assert_eq!(classify("/kamaitachi/api/data/v1/stats"), Route::Stats);
        assert_eq!(classify("/health"), Route::Health);
    }

    #[test]
    fn strips_only_the_prefix() {
        assert_eq!(
            strip_prefix("/data/kamaitachi/api/data/v1/stats?x=1&y=/data"),
            "/kamaitachi/api/data/v1/stats?x=1&y=/data"
        );
        assert_eq!(strip_prefix("/data"), "/");
    }

    #[test]
    fn key_is_topic_else_first_subject() {
        assert_eq!(
            routing_key(br#"{"ids":"a","subjects":" 33:000001 ,17:600000"}"#).as_deref(),
            Some(&b"33:000001"[..])
        );
        assert_eq!(
            routing_key(br#"{"topic":"stock_a_listing_pool","x":[1,{"y":2}]}"#).as_deref(),
            Some(&b"stock_a_listing_pool"[..])
        );
        assert_eq!(routing_key(br#"{"subjects":["33:000001"]}"#), None);
        assert_eq!(routing_key(b"not json"), None);
        assert_eq!(routing_key(br#"{"subjects":""}"#), None);
        // What the node answers decides: the topic when both are given, and
        // Go's empty strings are no key.
        assert_eq!(
            routing_key(br#"{"subjects":"33:000001","topic":"stock_a_listing_pool"}"#).as_deref(),
            Some(&b"stock_a_listing_pool"[..])
        );
        assert_eq!(
            routing_key(br#"{"subjects":"33:000001","topic":""}"#).as_deref(),
            Some(&b"33:000001"[..])
        );
        assert_eq!(
            routing_key(br#"{"subjects":"","topic":" stock_a_listing_pool "}"#).as_deref(),
            Some(&b"stock_a_listing_pool"[..])
        );
    }
}
