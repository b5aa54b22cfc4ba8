//! `kamaitachi-bench`: the command line. Parses and checks the flags, makes
//! sure the target answers, reads the hit rate before and after, runs the
//! load and prints the report (a table, or one JSON object with `--json`).

mod report;
mod runner;
mod scenario;
mod stats;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use report::{HitRates, RunInfo, Summary};
use runner::Plan;
use scenario::{Bodies, Choice, Generator};
use stats::StatsError;

/// Requests sent when neither --requests nor --duration is given.
const DEFAULT_REQUESTS: u64 = 5000;

/// Load generator for Kamaitachi nodes and gateways.
///
/// Sends POST requests to {target}/kamaitachi/api/data/v1/snapshot and
/// /period from C workers, each on its own keep-alive connection, and reports
/// QPS, latency percentiles, errors by kind and the cache hit rate read from
/// {target}/kamaitachi/api/data/v1/stats before and after the run.
///
/// Scenarios: 1 multi (10 subjects, 4 ids), 2 single (1 subject, 2 ids),
/// 3 paging (topic stock_a_listing_pool, offset 0..4900 step 100, limit 100),
/// 4 asof (1-3 subjects as of a 2016-2024 quarter end), 5 period (1 subject,
/// 1-5 years), all (1-5 round robin).
#[derive(Debug, Parser)]
#[command(name = "kamaitachi-bench", version)]
struct Args {
    /// Base URL of a node (http://localhost:8080) or of the gateway's data
    /// prefix (http://localhost:9000/data).
    #[arg(long, default_value = "http://localhost:9000/data", value_name = "URL")]
    target: String,

    /// Scenario: 1..5, multi, single, paging, asof, period, or all.
    #[arg(long, default_value = "1", value_name = "N")]
    scenario: Choice,

    /// Total requests to send [default: 5000 unless --duration is given].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// Run for this many seconds (with --requests: whichever ends first).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<f64>,

    /// Concurrent workers, each with its own keep-alive connection.
    #[arg(long, default_value_t = 50, value_name = "C",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,

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
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 30.0 * 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds > 0 (at most 30 days)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = args.target.trim().trim_end_matches('/').to_string();
    match reqwest::Url::parse(&target) {
        Ok(u) if u.scheme() == "http" && u.host().is_some() => {}
        Ok(_) => {
            return fail(
                2,
                &format!("--target {target:?} must be an http:// URL with a host"),
            )
        }
        Err(e) => return fail(2, &format!("--target {target:?} is not a URL: {e}")),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(bench(args, target)) {
        Ok(code) => code,
        Err(e) => fail(1, &format!("{e:#}")),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("kamaitachi-bench: {msg}");
    ExitCode::from(code)
}

async fn bench(args: Args, target: String) -> Result<ExitCode> {
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
    let concurrency = usize::try_from(args.concurrency).context("--concurrency too large")?;
    let generator = Generator::new(args.scenario, args.seed, args.subjects);
    let bodies = Arc::new(Bodies::new(generator, args.repeat));
    let plan = Plan {
        target: target.clone(),
        bodies,
        concurrency,
        requests,
        duration,
        timeout,
    };
    let (tally, elapsed) = runner::run(plan, progress_bar(requests, duration)).await?;

    let after = stats::fetch(&stats_client, &target, timeout).await.map_err(|e| {
        eprintln!("kamaitachi-bench: hit rate after the run unavailable: {e}");
        e.to_string()
    });
    let summary = Summary {
        info: RunInfo {
            target,
            scenario: args.scenario.to_string(),
            concurrency,
            requests_limit: requests,
            duration_limit: args.duration,
            repeat: args.repeat,
            seed: args.seed,
            subjects: args.subjects,
            timeout_ms: args.timeout_ms,
        },
        tally,
        elapsed,
        hit_rates: HitRates { before, after },
    };
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (CI,
/// pipes), so nothing but the report is printed there.
fn progress_bar(requests: Option<u64>, duration: Option<Duration>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match requests {
        Some(n) => {
            let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} requests (eta {eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let secs = duration.map_or(0.0, |d| d.as_secs_f64());
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{{spinner}} {{elapsed_precise}} of {secs}s: {{pos}} requests"
            )) {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
