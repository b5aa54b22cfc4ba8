//! `kamaitachi-bench`: the command line. Parses and checks the flags, makes
//! sure the target answers, reads the hit rate before and after, runs the
//! load and prints the report (a table, or one JSON object with `--json`).
//! With `--scenario ingest` it writes batches instead, watches the
//! `--follow` slaves' /health while doing so, and reports rows/s, batch
//! latency and the replication delay of each follower.

mod follow;
mod html;
mod ingest;
mod report;
mod runner;
mod scenario;
mod stats;
mod writer;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use follow::Stop;
use ingest::IngestGenerator;
use report::{HitRates, IngestSummary, RunInfo, Summary};
use runner::Plan;
use scenario::{Bodies, Choice, Generator, Workload};
use stats::StatsError;
use writer::WritePlan;

/// Requests sent when neither --requests nor --duration is given.
const DEFAULT_REQUESTS: u64 = 5000;
/// Batches sent by `ingest` when neither --requests nor --duration is given.
const DEFAULT_BATCHES: u64 = 100;
/// Concurrency of the read scenarios unless --concurrency is given.
const DEFAULT_CONCURRENCY: u64 = 50;
/// Rows per ingest batch unless --batch is given.
const DEFAULT_BATCH: u64 = 1000;

/// Load generator for Kamaitachi nodes and gateways.
///
/// Sends POST requests to {target}/kamaitachi/api/data/v1/snapshot and
/// /period from C workers, each on its own keep-alive connection, and reports
/// QPS, latency percentiles, errors by kind and the cache hit rate read from
/// {target}/kamaitachi/api/data/v1/stats before and after the run.
///
/// Scenarios 1-4 send the bodies of the original tool
/// (tools/benchmark_scenarios.go) over this data's subjects: 1 multi (2
/// subjects, 3 ids, by report_date, limit 20), 2 single (1 subject, 2 ids, by
/// operating_income, limit 8), 3 paging (50 subjects, 4 ids, by
/// operating_income, limit 20), 4 asof (3 subjects, 3 ids, as of 2023-09-30);
/// then 5 period (1 subject, 1-5 years), 6 topic (stock_a_listing_pool,
/// offset 0..4900 step 100, limit 100), all (1-5 round robin). The original's
/// flags work too: -requests, -concurrent, -scenario, -target, -repeat.
///
/// Scenario ingest writes instead: POST {target}/kamaitachi/api/data/v1/ingest
/// with the admin token (--token-file), batches of --batch upserts for random
/// existing subjects over the four quarters of 2025, and reports rows/s,
/// batch latency and errors. --target must reach the master: a master node
/// (http://localhost:8080) or the gateway (http://localhost:9000/data, which
/// sends writes to the master). With --follow it polls each slave's /health
/// every 5 ms (until it applied the last batch, at most 10 s after the last
/// write) and reports the replication delay per batch: the time its seq first
/// showed as applied_seq minus the time the master acknowledged it.
#[derive(Debug, Parser)]
#[command(name = "kamaitachi-bench", version)]
struct Args {
    /// Base URL of a node (http://localhost:8080) or of the gateway's data
    /// prefix (http://localhost:9000/data). For ingest: the master or the
    /// gateway.
    #[arg(long, default_value = "http://localhost:9000/data", value_name = "URL")]
    target: String,

    /// Scenario: 1..6, multi, single, paging, asof, period, topic, all, or
    /// ingest.
    #[arg(long, default_value = "1", value_name = "N")]
    scenario: Workload,

    /// Total requests (ingest: batches) to send [default: 5000, ingest 100,
    /// unless --duration is given].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// Run for this many seconds (with --requests: whichever ends first).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<f64>,

    /// Concurrent workers, each with its own keep-alive connection
    /// [default: 50; ingest: 1 writer].
    #[arg(long, alias = "concurrent", value_name = "C", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: Option<u64>,

    /// The original tool's node count; accepted and ignored (--target says
    /// where requests go).
    #[arg(long, hide = true, value_name = "N")]
    nodes: Option<u64>,

    /// Cycle a hot set of N pre-generated bodies (cacheable) instead of
    /// making every body fresh.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    repeat: Option<u64>,

    /// Seed of the random bodies (same seed, same bodies).
    #[arg(long, default_value_t = 42, value_name = "S")]
    seed: u64,

    /// Subject count of the data (as given to `kamaitachi-node gen-data`).
    #[arg(long, default_value_t = 5000, value_name = "T", value_parser = clap::value_parser!(u64).range(1..))]
    subjects: u64,

    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// Timeout of each request, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// Ingest: rows per batch, at most 10000 and 4 × --subjects; about 390
    /// bytes a row, so past ~2600 rows a node's default [limits]
    /// max_body_bytes (1 MiB) answers 413 [default: 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=ingest::MAX_BATCH))]
    batch: Option<u64>,

    /// Ingest: target rows per second, batches sent on a fixed schedule
    /// (1000 with --batch 100: 10 batches/s); 0 = as fast as possible
    /// [default: 0].
    #[arg(long, value_name = "ROWS_PER_SEC")]
    rate: Option<u64>,

    /// Ingest (required): file holding the admin token, sent as
    /// Authorization: Bearer <token>.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Ingest: base URLs of slave nodes whose replication delay to measure
    /// (comma-separated or repeated), e.g. http://localhost:8081.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    follow: Vec<String>,

    /// Also write a self-contained HTML report of the run (throughput over
    /// time, latency percentile curve, errors, settings); with
    /// --compare-json, the comparison page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Send nothing: read these --json summaries of earlier runs
    /// (comma-separated; the file name is the label) and write their
    /// comparison to --html.
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',')]
    compare_json: Vec<PathBuf>,
}

/// The original tool's Go flags (`-requests 5000`, `-concurrent=50`, …)
/// as this tool's long options; anything else unchanged.
fn go_flag(arg: String) -> String {
    const GO_FLAGS: &[&str] = &["requests", "concurrent", "scenario", "target", "repeat", "nodes"];
    let Some(rest) = arg.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
        return arg;
    };
    let name = rest.split_once('=').map_or(rest, |(n, _)| n);
    if GO_FLAGS.contains(&name) {
        format!("-{arg}")
    } else {
        arg
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 30.0 * 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds > 0 (at most 30 days)")),
    }
}

/// A base URL without trailing slashes, checked to be http:// with a host.
fn base_url(flag: &str, url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/').to_string();
    match reqwest::Url::parse(&url) {
        Ok(u) if u.scheme() == "http" && u.host().is_some() => Ok(url),
        Ok(_) => Err(format!("{flag} {url:?} must be an http:// URL with a host")),
        Err(e) => Err(format!("{flag} {url:?} is not a URL: {e}")),
    }
}

/// The checked settings of an ingest run.
struct IngestArgs {
    batch: u64,
    authorization: reqwest::header::HeaderValue,
    followers: Vec<String>,
}

/// Checks the ingest flags: they only go with --scenario ingest, which
/// needs a readable, non-empty token file.
fn ingest_args(args: &Args) -> Result<Option<IngestArgs>, String> {
    if args.scenario != Workload::Ingest {
        let given = [
            ("--batch", args.batch.is_some()),
            ("--rate", args.rate.is_some()),
            ("--token-file", args.token_file.is_some()),
            ("--follow", !args.follow.is_empty()),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(format!("{flag} only applies to --scenario ingest")),
            None => Ok(None),
        };
    }
    if args.repeat.is_some() {
        return Err("--repeat does not apply to --scenario ingest (every batch is fresh)".into());
    }
    if args.html.is_some() {
        return Err("--html applies to the read scenarios (ingest prints its report)".into());
    }
    let batch = args.batch.unwrap_or(DEFAULT_BATCH);
    let most = ingest::max_batch(args.subjects);
    if batch > most {
        return Err(format!(
            "--batch {batch} is more than the {most} distinct (subject, quarter) keys of --subjects {} \
             (a batch may not repeat one)",
            args.subjects
        ));
    }
    let Some(path) = &args.token_file else {
        return Err("--scenario ingest needs --token-file PATH (a file holding the admin token)".into());
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    let authorization =
        writer::authorization(&token).map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let followers = args
        .follow
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| base_url("--follow", u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(IngestArgs {
        batch,
        authorization,
        followers,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse_from(std::env::args().map(go_flag));
    if !args.compare_json.is_empty() {
        return match compare(&args.compare_json, args.html.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(2, &format!("{e:#}")),
        };
    }
    let target = match base_url("--target", &args.target) {
        Ok(t) => t,
        Err(e) => return fail(2, &e),
    };
    let ingest = match ingest_args(&args) {
        Ok(i) => i,
        Err(e) => return fail(2, &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    let result = match (args.scenario, ingest) {
        (Workload::Read(choice), _) => runtime.block_on(bench(args, choice, target)),
        (Workload::Ingest, Some(ingest)) => runtime.block_on(bench_ingest(args, ingest, target)),
        (Workload::Ingest, None) => Ok(fail(2, "--scenario ingest needs --token-file PATH")),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(1, &format!("{e:#}")),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("kamaitachi-bench: {msg}");
    ExitCode::from(code)
}

async fn bench(args: Args, choice: Choice, target: String) -> Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let stats_client = runner::client(timeout)?;
    let before = match stats::fetch(&stats_client, &target, timeout).await {
        Err(StatsError::Unreachable(why)) => return Ok(fail(1, &format!("cannot reach {target}: {why}"))),
        Err(e) => {
            eprintln!("kamaitachi-bench: hit rate before the run unavailable: {e}");
            Err(e.to_string())
        }
        Ok(h) => Ok(h),
    };

    let requests = match (args.requests, args.duration) {
        (None, None) => Some(DEFAULT_REQUESTS),
        (r, _) => r,
    };
    let duration = args.duration.map(Duration::from_secs_f64);
    let concurrency = usize::try_from(args.concurrency.unwrap_or(DEFAULT_CONCURRENCY))
        .context("--concurrency too large")?;
    let generator = Generator::new(choice, args.seed, args.subjects);
    let bodies = Arc::new(Bodies::new(generator, args.repeat));
    let plan = Plan {
        target: target.clone(),
        bodies,
        concurrency,
        requests,
        duration,
        timeout,
    };
    let (tally, elapsed) = runner::run(plan, progress_bar(requests, duration, "requests")).await?;

    let after = stats::fetch(&stats_client, &target, timeout).await.map_err(|e| {
        eprintln!("kamaitachi-bench: hit rate after the run unavailable: {e}");
        e.to_string()
    });
    let summary = Summary {
        info: run_info(&args, target, concurrency, requests),
        tally,
        elapsed,
        hit_rates: HitRates { before, after },
    };
    let json = summary.to_json();
    if args.json {
        println!("{json}");
    } else {
        print!("{}", summary.to_table());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::run_page(&json)).with_context(|| format!("--html {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--compare-json a.json,b.json --html FILE`.
fn compare(files: &[PathBuf], out: Option<&std::path::Path>) -> Result<()> {
    let out = out.context("--compare-json needs --html FILE to write the comparison to")?;
    let mut runs = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("--compare-json {}", f.display()))?;
        let summary: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("--compare-json {}: not a --json summary", f.display()))?;
        let label = f
            .file_stem()
            .map_or_else(|| f.display().to_string(), |s| s.to_string_lossy().into_owned());
        runs.push((label, summary));
    }
    std::fs::write(out, html::compare_page(&runs)).with_context(|| format!("--html {}", out.display()))?;
    Ok(())
}

/// An ingest run: checks that the target and the followers answer, starts
/// one polling task per follower, writes, waits for the followers (bounded)
/// and prints the report.
async fn bench_ingest(args: Args, ingest: IngestArgs, target: String) -> Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let probe_client = runner::client(timeout)?;
    // Any answer of the stats route shows the target is up; its hit rate
    // means little for writes and is not reported.
    if let Err(StatsError::Unreachable(why)) = stats::fetch(&probe_client, &target, timeout).await {
        return Ok(fail(1, &format!("cannot reach {target}: {why}")));
    }
    for url in &ingest.followers {
        if let Err(why) = follow::probe(&probe_client, url, timeout).await {
            return Ok(fail(1, &format!("cannot follow {url}: {url}/health: {why}")));
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<Stop>);
    let mut watchers = tokio::task::JoinSet::new();
    for (n, url) in ingest.followers.iter().enumerate() {
        let (client, url, stop) = (runner::client(timeout)?, url.clone(), stop_rx.clone());
        watchers.spawn(async move { (n, follow::watch(client, url, timeout, stop).await) });
    }

    let requests = match (args.requests, args.duration) {
        (None, None) => Some(DEFAULT_BATCHES),
        (r, _) => r,
    };
    let duration = args.duration.map(Duration::from_secs_f64);
    let concurrency = usize::try_from(args.concurrency.unwrap_or(1)).context("--concurrency too large")?;
    let rate = args.rate.filter(|r| *r > 0);
    let generator = Arc::new(IngestGenerator::new(args.seed, args.subjects, ingest.batch));
    let plan = WritePlan {
        target: target.clone(),
        generator,
        authorization: ingest.authorization,
        concurrency,
        requests,
        duration,
        timeout,
        rate,
    };
    let (written, elapsed) = writer::run(plan, progress_bar(requests, duration, "batches")).await?;

    let writes_done = std::time::Instant::now();
    let _ = stop_tx.send(Some(Stop {
        seq: written.last_seq().unwrap_or(0),
        until: writes_done + follow::GRACE,
    }));
    let mut watches = Vec::with_capacity(ingest.followers.len());
    while let Some(done) = watchers.join_next().await {
        watches.push(done.context("a follower watch failed")?);
    }
    let follow_wait = if watches.is_empty() {
        Duration::ZERO
    } else {
        writes_done.elapsed()
    };
    watches.sort_by_key(|(n, _)| *n);
    let followers = watches
        .into_iter()
        .map(|(_, w)| follow::replication(w, &written.acks))
        .collect();

    if let Some(e) = &written.first_error {
        eprintln!("kamaitachi-bench: first failed batch: {e}");
    }
    let summary = IngestSummary {
        info: RunInfo {
            repeat: None,
            ..run_info(&args, target, concurrency, requests)
        },
        batch: ingest.batch,
        rate,
        rows_written: written.rows(),
        last_seq: written.last_seq(),
        tally: written.tally,
        elapsed,
        follow_wait,
        first_error: written.first_error,
        followers,
    };
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (CI,
/// pipes), so nothing but the report is printed there. `unit` names what is
/// counted (requests, batches).
/// What a run was asked to do, as its summary reports it.
fn run_info(args: &Args, target: String, concurrency: usize, requests: Option<u64>) -> RunInfo {
    RunInfo {
        target,
        scenario: args.scenario.to_string(),
        concurrency,
        requests_limit: requests,
        duration_limit: args.duration,
        repeat: args.repeat,
        seed: args.seed,
        subjects: args.subjects,
        timeout_ms: args.timeout_ms,
    }
}

fn progress_bar(requests: Option<u64>, duration: Option<Duration>, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match requests {
        Some(n) => {
            let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} (eta {{eta}})"
            )) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let secs = duration.map_or(0.0, |d| d.as_secs_f64());
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{{spinner}} {{elapsed_precise}} of {secs}s: {{pos}} {unit}"
            )) {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
