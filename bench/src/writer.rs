//! The write loop of `--scenario ingest`: C writers, each on its own
//! keep-alive connection, take batch numbers from a shared counter and POST
//! them to `{target}/kamaitachi/api/data/v1/ingest` with the admin token,
//! either as fast as they can or on a fixed schedule (batch `i` is due at
//! `start + i × batch / rate`; a late batch goes out at once). Every
//! acknowledged batch is kept with its `seq` and the moment its answer
//! arrived, for the replication delays of `follow.rs`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;

use crate::ingest::{IngestGenerator, INGEST_PATH};
use crate::report::{ErrorKind, Tally};
use crate::runner::{check, claim, exchange, fan_out};

/// Longest excerpt of a failed answer kept for the report.
const ERROR_EXCERPT: usize = 300;

/// What to write. At least one of `requests` and `duration` is set.
#[derive(Debug, Clone)]
pub struct WritePlan {
    /// Base URL without a trailing slash.
    pub target: String,
    pub generator: Arc<IngestGenerator>,
    /// `Bearer <token>`, marked sensitive.
    pub authorization: HeaderValue,
    pub concurrency: usize,
    /// Batches to send.
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub timeout: Duration,
    /// Target rows per second; `None`: as fast as possible.
    pub rate: Option<u64>,
}

/// One acknowledged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The master's sequence number of the batch.
    pub seq: u64,
    /// When the master's answer had been read in full.
    pub at: Instant,
    /// Rows the master reported written.
    pub written: u64,
}

/// What the writers saw.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Batch latencies and errors by kind.
    pub tally: Tally,
    /// Acknowledged batches, in no particular order.
    pub acks: Vec<Ack>,
    /// The first failed answer, e.g. `HTTP 403: {...}`.
    pub first_error: Option<String>,
}

impl Written {
    /// Sum of `data.written` over the acknowledged batches.
    pub fn rows(&self) -> u64 {
        self.acks.iter().map(|a| a.written).sum()
    }

    /// The highest acknowledged seq.
    pub fn last_seq(&self) -> Option<u64> {
        self.acks.iter().map(|a| a.seq).max()
    }

    fn merge(&mut self, other: Written) {
        self.tally.merge(&other.tally);
        self.acks.extend(other.acks);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// `Authorization: Bearer <token>` for a token read from a file (trimmed).
pub fn authorization(token: &str) -> Result<HeaderValue> {
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "the token is empty");
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the token holds characters not allowed in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Runs the plan; returns what the writers saw and the wall time of the
/// writing (from the start to the last answer).
pub async fn run(plan: WritePlan, progress: ProgressBar) -> Result<(Written, Duration)> {
    anyhow::ensure!(
        plan.requests.is_some() || plan.duration.is_some(),
        "a run needs a batch count or a duration"
    );
    let url = format!("{}{INGEST_PATH}", plan.target);
    let url = Arc::new(Url::parse(&url).with_context(|| format!("bad target URL {url:?}"))?);
    let next = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);
    let start = Instant::now();
    let results = fan_out(plan.concurrency, plan.timeout, |client| {
        let (plan, url, next, progress) = (plan.clone(), url.clone(), next.clone(), progress.clone());
        async move { writer(client, &plan, &url, &next, start, &progress).await }
    })
    .await?;
    let mut written = Written::default();
    for w in results {
        written.merge(w);
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    Ok((written, elapsed))
}

/// When batch `i` is due: `start + i × batch / rate`, or now without a rate.
fn due(plan: &WritePlan, start: Instant, i: u64) -> Option<Instant> {
    let rate = plan.rate.filter(|r| *r > 0)?;
    let secs = i as f64 * plan.generator.batch() as f64 / rate as f64;
    // Past any sane run length (Duration would overflow): never due.
    let offset = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
    Some(
        start
            .checked_add(offset)
            .unwrap_or(start + Duration::from_secs(86_400 * 365)),
    )
}

/// One writer: sends batches one after the other on its own connection.
async fn writer(
    client: reqwest::Client,
    plan: &WritePlan,
    url: &Url,
    next: &AtomicU64,
    start: Instant,
    progress: &ProgressBar,
) -> Written {
    let deadline = plan.duration.map(|d| start + d);
    let mut out = Written::default();
    while let Some(i) = claim(next, plan.requests, deadline) {
        if let Some(at) = due(plan, start, i) {
            if deadline.is_some_and(|d| at >= d) {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let body = plan.generator.body(i);
        let request = client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, plan.authorization.clone())
            .body(body);
        let sent = Instant::now();
        let outcome = match exchange(request, plan.timeout).await {
            Err(kind) => Err(kind),
            Ok((status, bytes, elapsed)) => {
                match check(status, bytes.as_ref()).and_then(|()| ack(bytes.as_ref())) {
                    Ok((written, seq)) => {
                        out.acks.push(Ack {
                            seq,
                            at: sent + elapsed,
                            written,
                        });
                        Ok(elapsed)
                    }
                    Err(kind) => {
                        if out.first_error.is_none() {
                            out.first_error = Some(excerpt(kind, bytes.as_ref()));
                        }
                        Err(kind)
                    }
                }
            }
        };
        if let (Err(kind), None) = (outcome, &out.first_error) {
            out.first_error = Some(kind.to_string());
        }
        out.tally.record(outcome);
        progress.inc(1);
    }
    out
}

/// The `data` of an ingest answer.
#[derive(Deserialize)]
struct AckEnvelope {
    data: Option<AckData>,
}

#[derive(Deserialize)]
struct AckData {
    written: u64,
    seq: u64,
}

/// `(written, seq)` of a successful ingest answer.
fn ack(bytes: &[u8]) -> Result<(u64, u64), ErrorKind> {
    match serde_json::from_slice::<AckEnvelope>(bytes) {
        Ok(AckEnvelope {
            data: Some(AckData { written, seq }),
        }) => Ok((written, seq)),
        _ => Err(ErrorKind::NoAck),
    }
}

/// `kind: body` with the body cut to a readable length.
fn excerpt(kind: ErrorKind, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return kind.to_string();
    }
    let cut: String = text.chars().take(ERROR_EXCERPT).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("{kind}: {cut}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_parsed() {
        let ok = br#"{"status_code":0,"status_msg":"success","data":{"written":50,"seq":7}}"#;
        assert_eq!(ack(ok), Ok((50, 7)));
        assert_eq!(ack(br#"{"status_code":0,"data":[]}"#), Err(ErrorKind::NoAck));
        assert_eq!(ack(br#"{"status_code":0}"#), Err(ErrorKind::NoAck));
    }

    #[test]
    fn token_header() {
        let h = authorization(" s3cret\n").expect("valid");
        assert_eq!(h.to_str().expect("ascii"), "Bearer s3cret");
        assert!(h.is_sensitive());
        assert!(authorization(" \n").is_err());
        assert!(authorization("a\nb").is_err());
    }

    #[test]
    fn schedule() {
        let plan = |rate| WritePlan {
            target: "http://127.0.0.1:1".into(),
            generator: Arc::new(IngestGenerator::new(1, 5000, 100)),
            authorization: HeaderValue::from_static("Bearer x"),
            concurrency: 1,
            requests: Some(10),
            duration: None,
            timeout: Duration::from_secs(1),
            rate,
        };
        let start = Instant::now();
        assert_eq!(due(&plan(None), start, 5), None);
        assert_eq!(due(&plan(Some(0)), start, 5), None);
        // 1000 rows/s in batches of 100: 10 batches a second.
        let p = plan(Some(1000));
        assert_eq!(due(&p, start, 0), Some(start));
        assert_eq!(due(&p, start, 25), Some(start + Duration::from_millis(2500)));
        assert!(due(&plan(Some(1)), start, u64::MAX).is_some(), "no overflow");
    }

    #[test]
    fn error_excerpts() {
        let long = "x".repeat(1000);
        let e = excerpt(ErrorKind::Http(400), long.as_bytes());
        assert!(
            e.starts_with("HTTP 400: xxx") && e.ends_with('…') && e.len() < 320,
            "{e}"
        );
        assert_eq!(excerpt(ErrorKind::Http(502), b""), "HTTP 502");
    }
}
