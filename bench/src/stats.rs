//! Cache hit rate of the target, read from its stats route: a node answers
//! `data.cache.{hits,misses,hit_rate}`, a gateway `data.totals.{...}`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// Path of the stats route, relative to the target.
pub const STATS_PATH: &str = "/kamaitachi/api/data/v1/stats";

/// Cache counters of the target at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitRate {
    pub hit_rate: Option<f64>,
    pub hits: Option<u64>,
    pub misses: Option<u64>,
}

impl fmt::Display for HitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hit_rate {
            Some(r) => write!(f, "{r:.4}")?,
            None => f.write_str("n/a")?,
        }
        if let (Some(h), Some(m)) = (self.hits, self.misses) {
            write!(f, " ({h} hits, {m} misses)")?;
        }
        Ok(())
    }
}

/// Why the stats could not be read.
#[derive(Debug, Error)]
pub enum StatsError {
    /// Nothing answered: the target is down or the address is wrong.
    #[error("{0}")]
    Unreachable(String),
    #[error("stats route answered HTTP {0}")]
    Http(u16),
    #[error("stats body is not JSON")]
    NotJson,
    #[error("stats envelope status_code {0}")]
    Envelope(i64),
    #[error("stats have neither data.cache nor data.totals with hits, misses or hit_rate")]
    Missing,
    #[error("reading stats failed: {0}")]
    Transport(String),
}

/// Reads the hit rate from `{target}/kamaitachi/api/data/v1/stats`.
pub async fn fetch(client: &reqwest::Client, target: &str, timeout: Duration) -> Result<HitRate, StatsError> {
    // Through the gateway (`…/data`), the cluster's figures are the gateway's
    // own stats route, outside /data (under /data one node would answer).
    let base = target.strip_suffix("/data").unwrap_or(target);
    let url = format!("{base}{STATS_PATH}");
    let unreachable = |e: &reqwest::Error| {
        if e.is_timeout() {
            StatsError::Unreachable(format!("no answer within {} ms", timeout.as_millis()))
        } else {
            StatsError::Unreachable(error_chain(e))
        }
    };
    let resp = client
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| StatsError::Transport(error_chain(&e)))?;
    if !status.is_success() {
        return Err(StatsError::Http(status.as_u16()));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|_| StatsError::NotJson)?;
    parse(&v)
}

/// The hit rate in a stats envelope.
pub fn parse(v: &Value) -> Result<HitRate, StatsError> {
    match v.get("status_code").and_then(Value::as_i64) {
        Some(0) | None => {}
        Some(code) => return Err(StatsError::Envelope(code)),
    }
    let data = v.get("data").ok_or(StatsError::Missing)?;
    let counters = ["cache", "totals"]
        .iter()
        .filter_map(|k| data.get(*k))
        .find(|c| c.is_object());
    let c = counters.ok_or(StatsError::Missing)?;
    let rate = HitRate {
        hit_rate: c.get("hit_rate").and_then(Value::as_f64),
        hits: c.get("hits").and_then(Value::as_u64),
        misses: c.get("misses").and_then(Value::as_u64),
    };
    let rate = match (rate.hit_rate, rate.hits, rate.misses) {
        (None, Some(h), Some(m)) if h + m > 0 => HitRate {
            hit_rate: Some(h as f64 / (h + m) as f64),
            ..rate
        },
        (None, None, _) | (None, _, None) => return Err(StatsError::Missing),
        _ => rate,
    };
    Ok(rate)
}

/// An error with its sources, e.g. "error sending request: connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_stats() {
        let v = json!({"status_code":0,"status_msg":"success","data":{"total_records":1,
            "cache":{"entries":1,"bytes":2,"max_bytes":3,"hits":10,"misses":5,"hit_rate":0.66,"evictions":0}}});
        let r = parse(&v).expect("parses");
        assert_eq!(
            r,
            HitRate {
                hit_rate: Some(0.66),
                hits: Some(10),
                misses: Some(5)
            }
        );
    }

    #[test]
    fn gateway_stats() {
        let v = json!({"status_code":0,"data":{"nodes":[],"totals":{"hits":3,"misses":1}}});
        let r = parse(&v).expect("parses");
        assert_eq!(
            r,
            HitRate {
                hit_rate: Some(0.75),
                hits: Some(3),
                misses: Some(1)
            }
        );
        let v = json!({"status_code":0,"data":{"nodes":[],"totals":{"hit_rate":0.5}}});
        assert_eq!(parse(&v).expect("parses").hit_rate, Some(0.5));
    }

    #[test]
    fn bad_stats() {
        assert!(matches!(
            parse(&json!({"status_code":2,"data":{}})),
            Err(StatsError::Envelope(2))
        ));
        assert!(matches!(
            parse(&json!({"status_code":0,"data":{"x":1}})),
            Err(StatsError::Missing)
        ));
        assert!(matches!(
            parse(&json!({"status_code":0,"data":{"cache":{}}})),
            Err(StatsError::Missing)
        ));
    }
}
