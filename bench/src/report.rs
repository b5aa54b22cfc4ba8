//! Results: the outcome of one request, per-worker tallies with a latency
//! histogram, their aggregation into a run summary (reads) or an ingest
//! summary (writes and replication delays), and their output as a table or
//! as one JSON object.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::follow::Replication;
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
    /// A successful ingest answer without `data.written` and `data.seq`.
    NoAck,
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
            ErrorKind::NoAck => f.write_str("answer without data.written/seq"),
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
    /// Answers (ok, errors) per [`TIMELINE_STEP`] since the run started.
    pub timeline: Vec<[u64; 2]>,
}

/// Width of one step of [`Tally::timeline`].
pub const TIMELINE_STEP: Duration = Duration::from_millis(100);
/// Most timeline steps kept (a day); later answers count in the last step.
const MAX_TIMELINE_STEPS: usize = 24 * 3600 * 10;

/// An empty histogram of microseconds: 3 significant digits from 1 us to
/// an hour.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constant and valid, so this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records `d` in microseconds, clamped into the histogram's bounds.
pub fn record_micros(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MICROS);
    h.saturating_record(micros);
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    /// Counts one request that ended `at` after the run started.
    pub fn record_at(&mut self, outcome: Outcome, at: Duration) {
        let step = usize::try_from(at.as_millis() / TIMELINE_STEP.as_millis())
            .unwrap_or(usize::MAX)
            .min(MAX_TIMELINE_STEPS - 1);
        if self.timeline.len() <= step {
            self.timeline.resize(step + 1, [0, 0]);
        }
        self.timeline[step][usize::from(outcome.is_err())] += 1;
        self.record(outcome);
    }

    /// Counts one request.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Ok(elapsed) => {
                record_micros(&mut self.latency, elapsed);
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
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), [0, 0]);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests sent: successes plus errors.
    pub fn total(&self) -> u64 {
        self.ok + self.error_count()
    }

    /// Errors by kind, as a JSON object.
    fn errors_json(&self) -> Value {
        Value::Object(
            self.errors
                .iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect(),
        )
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

/// The latency percentile curve, HdrHistogram style: `[percentile, ms]`
/// points from 0 to the maximum, denser towards the tail.
pub fn latency_curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    for q in [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999,
        0.9995, 0.9999, 1.0,
    ] {
        points.push([q * 100.0, h.value_at_quantile(q) as f64 / 1000.0]);
    }
    points
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

impl RunInfo {
    /// `summary` (a JSON object) with the run's settings added: the fields
    /// both summaries start with.
    fn with_fields(&self, mut summary: Value) -> Value {
        if let Value::Object(fields) = &mut summary {
            let settings = json!({
                "target": self.target,
                "scenario": self.scenario,
                "concurrency": self.concurrency,
                "requests_limit": self.requests_limit,
                "duration_limit_s": self.duration_limit,
                "repeat": self.repeat,
                "seed": self.seed,
                "subjects": self.subjects,
                "timeout_ms": self.timeout_ms,
            });
            if let Value::Object(settings) = settings {
                fields.extend(settings);
            }
        }
        summary
    }
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
        per_sec(self.tally.total(), self.elapsed)
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let t = &self.tally;
        let side = |r: &Result<HitRate, String>| match r {
            Ok(h) => json!({ "hit_rate": h.hit_rate, "hits": h.hits, "misses": h.misses }),
            Err(e) => json!({ "error": e }),
        };
        let delta = self
            .hit_rates
            .delta()
            .map(|(hits, misses, rate)| json!({ "hits": hits, "misses": misses, "hit_rate": rate }));
        self.info.with_fields(json!({
            "requests": t.total(),
            "ok": t.ok,
            "errors_total": t.error_count(),
            "errors": t.errors_json(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "qps": self.qps(),
            "latency_ms": latency_json(&t.latency),
            "latency_curve_ms": latency_curve(&t.latency),
            "timeline": {
                "step_ms": TIMELINE_STEP.as_millis() as u64,
                "ok": t.timeline.iter().map(|s| s[0]).collect::<Vec<_>>(),
                "errors": t.timeline.iter().map(|s| s[1]).collect::<Vec<_>>(),
            },
            "hit_rate": {
                "before": side(&self.hit_rates.before),
                "after": side(&self.hit_rates.after),
                "run": delta,
            },
        }))
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

/// A latency histogram as `{p50, p95, p99, max, mean}` in ms, or null.
/// `n` over `elapsed`, per second (0 for no time).
fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn latency_json(h: &Histogram<u64>) -> Value {
    Latency::of(h).map_or(
        Value::Null,
        |l| json!({ "p50": l.p50, "p95": l.p95, "p99": l.p99, "max": l.max, "mean": l.mean }),
    )
}

/// Table rows `{name} p50` .. `{name} max` of a histogram, or one "n/a" row.
fn latency_rows(rows: &mut Vec<(String, String)>, name: &str, h: &Histogram<u64>, none: &str) {
    match Latency::of(h) {
        Some(l) => {
            for (p, v) in [("p50", l.p50), ("p95", l.p95), ("p99", l.p99), ("max", l.max)] {
                rows.push((format!("{name} {p}"), format!("{v:.3} ms")));
            }
        }
        None => rows.push((name.to_string(), format!("n/a ({none})"))),
    }
}

/// Rows aligned on their names.
fn table(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

/// Everything an ingest run reports.
#[derive(Debug, Clone)]
pub struct IngestSummary {
    /// The common settings; `repeat` is unused.
    pub info: RunInfo,
    /// Records per batch.
    pub batch: u64,
    /// Target rows per second (None: as fast as possible).
    pub rate: Option<u64>,
    /// Batch latencies and errors by kind.
    pub tally: Tally,
    /// Sum of `data.written` of the acknowledged batches.
    pub rows_written: u64,
    /// The highest acknowledged seq.
    pub last_seq: Option<u64>,
    /// Wall time of the writes.
    pub elapsed: Duration,
    /// Time spent waiting for the followers after the writes.
    pub follow_wait: Duration,
    /// The first failed answer.
    pub first_error: Option<String>,
    pub followers: Vec<Replication>,
}

impl IngestSummary {
    fn per_sec(&self, n: u64) -> f64 {
        per_sec(n, self.elapsed)
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let t = &self.tally;
        let followers: Vec<Value> = self
            .followers
            .iter()
            .map(|r| {
                json!({
                    "url": r.watch.url,
                    "acknowledged": t.ok,
                    "replicated": r.replicated,
                    "not_replicated": r.not_replicated,
                    "delay_ms": latency_json(&r.delays),
                    "applied_seq": r.watch.applied(),
                    "polls": r.watch.polls,
                    "poll_errors": r.watch.errors,
                    "last_poll_error": r.watch.last_error,
                })
            })
            .collect();
        self.info.with_fields(json!({
            "batch": self.batch,
            "rate_rows_s": self.rate,
            "batches": t.total(),
            "ok": t.ok,
            "errors_total": t.error_count(),
            "errors": t.errors_json(),
            "first_error": self.first_error,
            "rows_written": self.rows_written,
            "last_seq": self.last_seq,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "batches_per_s": self.per_sec(t.total()),
            "rows_per_s": self.per_sec(self.rows_written),
            "latency_ms": latency_json(&t.latency),
            "follow_wait_s": self.follow_wait.as_secs_f64(),
            "followers": followers,
        }))
    }

    /// The summary as a human-readable table.
    pub fn to_table(&self) -> String {
        let t = &self.tally;
        let i = &self.info;
        let row = |k: &str, v: String| (k.to_string(), v);
        let mut rows = vec![
            row("target", i.target.clone()),
            row("scenario", i.scenario.clone()),
            row("concurrency", i.concurrency.to_string()),
            row("batch", format!("{} rows, seed {}", self.batch, i.seed)),
            row(
                "rate",
                match self.rate {
                    Some(r) => format!(
                        "target {r} rows/s ({:.1} batches/s)",
                        r as f64 / self.batch.max(1) as f64
                    ),
                    None => "as fast as possible".to_string(),
                },
            ),
            row(
                "batches",
                format!("{} (ok {}, errors {})", t.total(), t.ok, t.error_count()),
            ),
            row("rows written", self.rows_written.to_string()),
            row("elapsed", format!("{:.3} s", self.elapsed.as_secs_f64())),
            row("rows/s", format!("{:.1}", self.per_sec(self.rows_written))),
            row("batches/s", format!("{:.1}", self.per_sec(t.total()))),
        ];
        latency_rows(&mut rows, "latency", &t.latency, "no successful batch");
        if t.errors.is_empty() {
            rows.push(row("errors", "none".to_string()));
        }
        for (kind, n) in &t.errors {
            rows.push(row("error", format!("{kind}: {n}")));
        }
        if let Some(e) = &self.first_error {
            rows.push(row("first error", e.clone()));
        }
        rows.push(row(
            "last seq",
            self.last_seq.map_or("n/a".to_string(), |s| s.to_string()),
        ));
        if !self.followers.is_empty() {
            rows.push(row(
                "follow wait",
                format!("{:.3} s after the writes", self.follow_wait.as_secs_f64()),
            ));
        }
        for r in &self.followers {
            let w = &r.watch;
            rows.push(row("follower", w.url.clone()));
            rows.push(row(
                "  replicated",
                format!(
                    "{} of {} (not replicated {})",
                    r.replicated, t.ok, r.not_replicated
                ),
            ));
            latency_rows(&mut rows, "  delay", &r.delays, "no replicated batch");
            rows.push(row(
                "  applied seq",
                w.applied().map_or("n/a".to_string(), |s| s.to_string()),
            ));
            let mut polls = format!("{} (errors {})", w.polls, w.errors);
            if let Some(e) = &w.last_error {
                let _ = write!(polls, ", last: {e}");
            }
            rows.push(row("  polls", polls));
        }
        table(&rows)
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

    #[test]
    fn ingest_json_and_table() {
        use crate::follow::{replication, Watch};
        use crate::writer::Ack;
        use std::time::Instant;

        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acks = [
            Ack {
                seq: 1,
                at: at(0),
                written: 50,
            },
            Ack {
                seq: 2,
                at: at(10),
                written: 50,
            },
        ];
        let mut tally = Tally::new();
        tally.record(ms(4));
        tally.record(ms(6));
        tally.record(Err(ErrorKind::NoAck));
        let watch = Watch {
            url: "http://127.0.0.1:2".into(),
            seen: vec![(at(0), 0), (at(25), 1)],
            polls: 9,
            errors: 1,
            last_error: Some("connection refused".into()),
        };
        let mut s = summary(
            tally.clone(),
            HitRates {
                before: Err(String::new()),
                after: Err(String::new()),
            },
        );
        s.info.scenario = "ingest".into();
        let summary = IngestSummary {
            info: s.info,
            batch: 50,
            rate: Some(1000),
            tally,
            rows_written: 100,
            last_seq: Some(2),
            elapsed: Duration::from_secs(2),
            follow_wait: Duration::from_millis(10_000),
            first_error: Some("answer without data.written/seq".into()),
            followers: vec![replication(watch, &acks)],
        };
        let v = summary.to_json();
        assert_eq!(
            (v["batches"].clone(), v["ok"].clone(), v["rows_written"].clone()),
            (json!(3), json!(2), json!(100))
        );
        assert_eq!(v["rows_per_s"], 50.0);
        assert_eq!(v["rate_rows_s"], 1000);
        assert_eq!(v["errors"]["answer without data.written/seq"], 1);
        let f = &v["followers"][0];
        assert_eq!(
            (f["replicated"].clone(), f["not_replicated"].clone()),
            (json!(1), json!(1))
        );
        assert!(
            (f["delay_ms"]["p50"].as_f64().expect("p50") - 25.0).abs() < 0.1,
            "{f}"
        );
        assert_eq!(f["applied_seq"], 1);
        let table = summary.to_table();
        for want in [
            "target 1000 rows/s (20.0 batches/s)",
            "1 of 2 (not replicated 1)",
            "  delay p50",
            "9 (errors 1), last: connection refused",
        ] {
            assert!(table.contains(want), "{want:?} in\n{table}");
        }
    }
}
