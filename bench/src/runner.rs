//! The load loop: C workers, each with its own keep-alive HTTP/1.1
//! connection, take request numbers from a shared counter until the request
//! count or the deadline is reached, and tally what they saw. Also the
//! send-and-check helpers the write workload (`writer.rs`) shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::report::{ErrorKind, Outcome, Tally};
use crate::scenario::{Bodies, Scenario};

/// What to run. At least one of `requests` and `duration` is set, so every
/// run ends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base URL without a trailing slash.
    pub target: String,
    pub bodies: Arc<Bodies>,
    pub concurrency: usize,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub timeout: Duration,
}

/// A client that keeps one connection open to the target. Proxies from the
/// environment are ignored: the target is always addressed directly.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// The two data routes of the target, parsed once.
struct Urls {
    snapshot: Url,
    period: Url,
}

impl Urls {
    fn new(target: &str) -> Result<Self> {
        let parse = |s: Scenario| {
            let url = format!("{target}{}", s.path());
            Url::parse(&url).with_context(|| format!("bad target URL {url:?}"))
        };
        Ok(Urls {
            snapshot: parse(Scenario::Single)?,
            period: parse(Scenario::Period)?,
        })
    }

    fn of(&self, s: Scenario) -> &Url {
        match s {
            Scenario::Period => &self.period,
            _ => &self.snapshot,
        }
    }
}

/// The next request number for a load task, while the run has requests
/// (`limit`) and time (`deadline`) left.
pub fn claim(next: &AtomicU64, limit: Option<u64>, deadline: Option<Instant>) -> Option<u64> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let i = next.fetch_add(1, Ordering::Relaxed);
    (limit.is_none_or(|n| i < n)).then_some(i)
}

/// Starts `n` copies of a load task, each with its own HTTP client, and
/// returns their results once all have finished.
pub async fn fan_out<T, F, Fut>(n: usize, timeout: Duration, mut task: F) -> Result<Vec<T>>
where
    F: FnMut(reqwest::Client) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(task(client(timeout)?));
    }
    let mut results = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        results.push(done.context("a load task failed")?);
    }
    Ok(results)
}

/// Runs the plan; returns the merged tally and the wall time of the run.
pub async fn run(plan: Plan, progress: ProgressBar) -> Result<(Tally, Duration)> {
    anyhow::ensure!(
        plan.requests.is_some() || plan.duration.is_some(),
        "a run needs a request count or a duration"
    );
    let urls = Arc::new(Urls::new(&plan.target)?);
    let next = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let tallies = fan_out(plan.concurrency, plan.timeout, |client| {
        let (plan, urls, next, progress) = (plan.clone(), urls.clone(), next.clone(), progress.clone());
        async move { worker(client, &plan, &urls, &next, start, deadline, &progress).await }
    })
    .await?;
    let mut tally = Tally::new();
    for t in &tallies {
        tally.merge(t);
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    Ok((tally, elapsed))
}

/// One worker: sends requests one after the other on its own connection.
async fn worker(
    client: reqwest::Client,
    plan: &Plan,
    urls: &Urls,
    next: &AtomicU64,
    start: Instant,
    deadline: Option<Instant>,
    progress: &ProgressBar,
) -> Tally {
    let mut tally = Tally::new();
    while let Some(i) = claim(next, plan.requests, deadline) {
        let req = plan.bodies.get(i);
        let outcome = send(&client, urls.of(req.scenario), req.body, plan.timeout).await;
        tally.record_at(outcome, start.elapsed());
        progress.inc(1);
    }
    tally
}

/// The part of the envelope that is checked.
#[derive(Deserialize)]
struct Envelope {
    status_code: Option<i64>,
}

/// Sends one request and reads its whole answer within `timeout`.
async fn send(client: &reqwest::Client, url: &Url, body: String, timeout: Duration) -> Outcome {
    let request = client
        .post(url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    let (status, bytes, elapsed) = exchange(request, timeout).await?;
    check(status, bytes.as_ref())?;
    Ok(elapsed)
}

/// Sends `request` and reads its whole answer within `timeout`; returns the
/// status, the body and the time from sending to the end of the body.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(StatusCode, impl AsRef<[u8]>, Duration), ErrorKind> {
    let start = Instant::now();
    let answer = async {
        let resp = request.send().await?;
        let status = resp.status();
        // Read the body even on errors so the connection can be reused.
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    };
    match tokio::time::timeout(timeout, answer).await {
        Err(_) => Err(ErrorKind::Timeout),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok((status, bytes))) => Ok((status, bytes, start.elapsed())),
    }
}

/// Checks an answer: a 2xx status and a JSON envelope with status_code 0.
pub fn check(status: StatusCode, bytes: &[u8]) -> Result<(), ErrorKind> {
    if !status.is_success() {
        return Err(ErrorKind::Http(status.as_u16()));
    }
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(Envelope { status_code: Some(0) }) => Ok(()),
        Ok(Envelope { status_code }) => Err(ErrorKind::Envelope(status_code)),
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            Err(ErrorKind::Envelope(None))
        }
        Err(_) => Err(ErrorKind::NotJson),
    }
}

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Transport
    }
}
