//! Results: the outcome of one request, per-worker tallies with a latency
//! histogram, their aggregation into a run summary, and the summary's
//! output as a table or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stats::HitRate;

/// Highest latency the histogram tracks exactly, in microseconds (larger
/// values are clamped to it): one hour.
const MAX_MICROS: u64 = 3_600_000_000;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// No connection could be made (refused, reset before the answer, DNS).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// An HTTP status other than 2xx.
    Http(u16),
    /// A JSON envelope whose status_code is not 0 (or missing: `None`).
    Envelope(Option<i64>),
    /// A 2xx answer whose body is not JSON.
    NotJson,
    /// Any other transport failure (connection closed mid-answer, ...).
    Transport,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect error"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Http(code) => write!(f, "HTTP {code}"),
            ErrorKind::Envelope(Some(code)) => write!(f, "envelope status_code {code}"),
            ErrorKind::Envelope(None) => f.write_str("envelope without status_code"),
            ErrorKind::NotJson => f.write_str("body not JSON"),
            ErrorKind::Transport => f.write_str("transport error"),
        }
    }
}

/// The outcome of one request.
pub type Outcome = Result<Duration, ErrorKind>;

/// What one worker (or the whole run) saw.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of the successful requests, in microseconds.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Tally {
    pub fn new() -> Self {
        // 3 significant digits from 1 us to an hour; the bounds are constant
        // and valid, so this cannot fail at run time.
        let latency = Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds");
        Tally {
            latency,
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Counts one request.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Ok(elapsed) => {
                let micros = u64::try_from(elapsed.as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_MICROS);
                self.latency.saturating_record(micros);
                self.ok += 1;
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Adds another tally into this one.
    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, and values are clamped into them.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests sent: successes plus errors.
    pub fn total(&self) -> u64 {
        self.ok + self.error_count()
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// Latency percentiles in milliseconds (None without successes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// Settings echoed in the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub target: String,
    pub scenario: String,
    pub concurrency: usize,
    pub requests_limit: Option<u64>,
    pub duration_limit: Option<f64>,
    pub repeat: Option<u64>,
    pub seed: u64,
    pub subjects: u64,
    pub timeout_ms: u64,
}

/// Hit rate around the run.
#[derive(Debug, Clone)]
pub struct HitRates {
    pub before: Result<HitRate, String>,
    pub after: Result<HitRate, String>,
}

impl HitRates {
    /// Hit rate of the lookups made between before and after, when both
    /// sides gave hits and misses and there were lookups.
    pub fn delta(&self) -> Option<(u64, u64, f64)> {
        let (b, a) = (self.before.as_ref().ok()?, self.after.as_ref().ok()?);
        let hits = a.hits?.checked_sub(b.hits?)?;
        let misses = a.misses?.checked_sub(b.misses?)?;
        let lookups = hits + misses;
        (lookups > 0).then(|| (hits, misses, hits as f64 / lookups as f64))
    }
}

/// Everything a run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub info: RunInfo,
    pub tally: Tally,
    pub elapsed: Duration,
    pub hit_rates: HitRates,
}

impl Summary {
    pub fn qps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.tally.total() as f64 / secs
        } else {
            0.0
        }
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let t = &self.tally;
        let errors: serde_json::Map<String, Value> =
            t.errors.iter().map(|(k, n)| (k.to_string(), json!(n))).collect();
        let latency = Latency::of(&t.latency)
            .map(|l| json!({ "p50": l.p50, "p95": l.p95, "p99": l.p99, "max": l.max, "mean": l.mean }));
        let side = |r: &Result<HitRate, String>| match r {
            Ok(h) => json!({ "hit_rate": h.hit_rate, "hits": h.hits, "misses": h.misses }),
            Err(e) => json!({ "error": e }),
        };
        let delta = self
            .hit_rates
            .delta()
            .map(|(hits, misses, rate)| json!({ "hits": hits, "misses": misses, "hit_rate": rate }));
        let i = &self.info;
        json!({
            "target": i.target,
            "scenario": i.scenario,
            "concurrency": i.concurrency,
            "requests_limit": i.requests_limit,
            "duration_limit_s": i.duration_limit,
            "repeat": i.repeat,
            "seed": i.seed,
            "subjects": i.subjects,
            "timeout_ms": i.timeout_ms,
            "requests": t.total(),
            "ok": t.ok,
            "errors_total": t.error_count(),
            "errors": errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "qps": self.qps(),
            "latency_ms": latency,
            "hit_rate": {
                "before": side(&self.hit_rates.before),
                "after": side(&self.hit_rates.after),
                "run": delta,
            },
        })
    }

    /// The summary as a human-readable table.
    pub fn to_table(&self) -> String {
        let t = &self.tally;
        let i = &self.info;
        let mut rows: Vec<(&str, String)> = vec![
            ("target", i.target.clone()),
            ("scenario", i.scenario.clone()),
            ("concurrency", i.concurrency.to_string()),
            (
                "bodies",
                match i.repeat {
                    Some(n) => format!("hot set of {n}, seed {}", i.seed),
                    None => format!("fresh random, seed {}", i.seed),
                },
            ),
            (
                "requests",
                format!("{} (ok {}, errors {})", t.total(), t.ok, t.error_count()),
            ),
            ("elapsed", format!("{:.3} s", self.elapsed.as_secs_f64())),
            ("qps", format!("{:.1}", self.qps())),
        ];
        match Latency::of(&t.latency) {
            Some(l) => {
                rows.push(("latency p50", format!("{:.3} ms", l.p50)));
                rows.push(("latency p95", format!("{:.3} ms", l.p95)));
                rows.push(("latency p99", format!("{:.3} ms", l.p99)));
                rows.push(("latency max", format!("{:.3} ms", l.max)));
            }
            None => rows.push(("latency", "n/a (no successful request)".to_string())),
        }
        if t.errors.is_empty() {
            rows.push(("errors", "none".to_string()));
        }
        for (kind, n) in &t.errors {
            rows.push(("error", format!("{kind}: {n}")));
        }
        let side = |r: &Result<HitRate, String>| match r {
            Ok(h) => h.to_string(),
            Err(e) => format!("unavailable ({e})"),
        };
        rows.push(("hit rate before", side(&self.hit_rates.before)));
        rows.push(("hit rate after", side(&self.hit_rates.after)));
        rows.push((
            "hit rate of run",
            match self.hit_rates.delta() {
                Some((hits, misses, rate)) => format!("{rate:.4} ({hits} hits, {misses} misses)"),
                None => "n/a (needs hits and misses before and after, and lookups in between)".to_string(),
            },
        ));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Outcome {
        Ok(Duration::from_millis(n))
    }

    #[test]
    fn counts_add_up_across_workers() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for n in 0..70 {
            a.record(if n % 7 == 6 {
                Err(ErrorKind::Http(500))
            } else {
                ms(1)
            });
        }
        b.record(Err(ErrorKind::Timeout));
        b.record(Err(ErrorKind::Http(500)));
        b.record(Err(ErrorKind::Envelope(Some(3))));
        b.record(Err(ErrorKind::NotJson));
        b.record(Err(ErrorKind::Connect));
        b.record(ms(2));
        let mut all = Tally::new();
        all.merge(&a);
        all.merge(&b);
        assert_eq!(all.total(), 76);
        assert_eq!(all.ok, 61);
        assert_eq!(all.error_count(), 15);
        assert_eq!(all.errors[&ErrorKind::Http(500)], 11);
        assert_eq!(all.errors[&ErrorKind::Timeout], 1);
        assert_eq!(all.latency.len(), all.ok);
        let names: Vec<String> = all.errors.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "connect error",
                "timeout",
                "HTTP 500",
                "envelope status_code 3",
                "body not JSON"
            ]
        );
    }

    #[test]
    fn percentiles_of_known_histogram() {
        let mut t = Tally::new();
        for n in 1..=100 {
            t.record(ms(n));
        }
        let l = Latency::of(&t.latency).expect("not empty");
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(l.p50, 50.0), "{l:?}");
        assert!(close(l.p95, 95.0), "{l:?}");
        assert!(close(l.p99, 99.0), "{l:?}");
        assert!(close(l.max, 100.0), "{l:?}");
        assert!(close(l.mean, 50.5), "{l:?}");
        assert_eq!(Latency::of(&Tally::new().latency), None);
    }

    fn summary(tally: Tally, hit_rates: HitRates) -> Summary {
        Summary {
            info: RunInfo {
                target: "http://127.0.0.1:1".into(),
                scenario: "1 (multi)".into(),
                concurrency: 2,
                requests_limit: Some(4),
                duration_limit: None,
                repeat: None,
                seed: 42,
                subjects: 5000,
                timeout_ms: 5000,
            },
            tally,
            elapsed: Duration::from_secs(2),
            hit_rates,
        }
    }

    #[test]
    fn json_and_table() {
        let mut t = Tally::new();
        t.record(ms(3));
        t.record(ms(5));
        t.record(ms(7));
        t.record(Err(ErrorKind::Http(500)));
        let before = HitRate {
            hit_rate: Some(0.5),
            hits: Some(10),
            misses: Some(10),
        };
        let after = HitRate {
            hit_rate: Some(0.6),
            hits: Some(13),
            misses: Some(11),
        };
        let s = summary(
            t,
            HitRates {
                before: Ok(before),
                after: Ok(after),
            },
        );
        let v = s.to_json();
        assert_eq!(v["requests"], 4);
        assert_eq!(v["ok"], 3);
        assert_eq!(v["errors"]["HTTP 500"], 1);
        assert_eq!(v["qps"], 2.0);
        assert_eq!(v["hit_rate"]["run"]["hits"], 3);
        assert_eq!(v["hit_rate"]["run"]["hit_rate"], 0.75);
        let table = s.to_table();
        assert!(table.contains("HTTP 500: 1"), "{table}");
        assert!(table.contains("0.7500 (3 hits, 1 misses)"), "{table}");

        let s = summary(
            Tally::new(),
            HitRates {
                before: Err("HTTP 404".into()),
                after: Err("x".into()),
            },
        );
        let v = s.to_json();
        assert_eq!(v["requests"], 0);
        assert_eq!(v["latency_ms"], Value::Null);
        assert_eq!(v["hit_rate"]["before"]["error"], "HTTP 404");
        assert!(s.to_table().contains("unavailable (HTTP 404)"));
    }
}
