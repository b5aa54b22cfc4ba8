//! `kamaitachi-node gen-data`: a deterministic sample database.
//!
//! The same seed and options give the same data, row for row. Subjects are
//! split between Shenzhen (`33`) and Shanghai (`17`), all members of the
//! `stock_a_listing_pool` topic (Shenzhen ones also of `stock_sz_pool`);
//! each has quarterly reports from its listing onwards within the year range,
//! with a few null values. The database is built in a temporary file and
//! renamed into place, so a crash never leaves a half-written `PATH`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::params;

use crate::model::catalog::LISTING_POOL;
use crate::model::dates;
use crate::storage::db_file;
use crate::storage::store::{Store, SCHEMA_VERSION};

pub use crate::model::catalog::STANDARD_INDICATORS as INDICATORS;

pub const SZ_POOL: &str = "stock_sz_pool";

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub db: PathBuf,
    pub subjects: usize,
    pub first_year: i64,
    pub last_year: i64,
    pub seed: u64,
    pub force: bool,
}

const NAME_HEADS: &[&str] = &[
    "Ping An",
    "Wanke",
    "Zhongxing",
    "Haitian",
    "Huaxia",
    "Jinlong",
    "Changjiang",
    "Dongfang",
    "Xinhua",
    "Tianrun",
    "Guotai",
    "Hengrui",
    "Baosteel",
    "Yili",
    "Midea",
    "Gree",
    "Sanan",
    "Longji",
    "Fuyao",
    "Shengyi",
];
const NAME_TAILS: &[&str] = &[
    "Bank",
    "Technology",
    "Holdings",
    "Pharmaceutical",
    "Energy",
    "Motors",
    "Foods",
    "Materials",
    "Electric",
    "Securities",
    "Logistics",
    "Media",
];

/// Writes the sample database to `opts.db`.
pub fn generate(opts: &GenOptions) -> anyhow::Result<()> {
    if opts.subjects == 0 || opts.subjects > 900_000 {
        bail!("--subjects must be between 1 and 900000 (got {})", opts.subjects);
    }
    if opts.first_year > opts.last_year || opts.first_year < 1971 || opts.last_year > 2100 {
        bail!(
            "--years must be A..B with 1971 <= A <= B <= 2100 (got {}..{})",
            opts.first_year,
            opts.last_year
        );
    }
    db_file::write_whole(&opts.db, ".gen-tmp", opts.force, |tmp| build(opts, tmp))
}

fn build(opts: &GenOptions, path: &Path) -> anyhow::Result<()> {
    let mut store = Store::open_rw(path)?;
    let conn = store.conn();
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let dataset_id: u64 = rng.random::<u64>() >> 1; // fits in SQLite's INTEGER text round trip

    let bar = ProgressBar::new(opts.subjects as u64);
    bar.set_style(
        ProgressStyle::with_template("gen-data {bar:40} {pos}/{len} subjects ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let tx = conn.transaction()?;
    {
        let mut ind = tx.prepare("INSERT INTO indicators (id, code, name) VALUES (?1, ?2, ?3)")?;
        for (i, (code, name)) in INDICATORS.iter().enumerate() {
            ind.execute(params![i as i64 + 1, code, name])?;
        }
        let mut subj = tx.prepare(
            "INSERT INTO subjects (subject, market, code, name, status, listing_date, category)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut topic = tx.prepare("INSERT INTO topic_members (topic, subject) VALUES (?1, ?2)")?;
        let mut rep = tx.prepare(
            "INSERT INTO reports (subject, report_date, end_date, year, period, declare_date)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut val = tx.prepare(
            "INSERT INTO report_values (subject, report_date, indicator, value) VALUES (?1, ?2, ?3, ?4)",
        )?;

        let sz_count = opts.subjects * 3 / 5;
        for n in 0..opts.subjects {
            let (market, code, category) = if n < sz_count {
                if n % 4 == 3 {
                    (33, format!("{:06}", 300_001 + n), "gem")
                } else {
                    (
                        33,
                        format!("{:06}", 1 + n),
                        if n % 4 == 2 { "sme" } else { "main_board" },
                    )
                }
            } else {
                let k = n - sz_count;
                if k % 5 == 4 {
                    (17, format!("{:06}", 688_001 + k), "star")
                } else {
                    (17, format!("{:06}", 600_000 + k), "main_board")
                }
            };
            let subject = format!("{market}:{code}");
            let name = format!(
                "{} {} {}",
                NAME_HEADS[rng.random_range(0..NAME_HEADS.len())],
                NAME_TAILS[rng.random_range(0..NAME_TAILS.len())],
                code
            );
            let status = match rng.random_range(0..100) {
                0..=1 => "delisted",
                2..=4 => "suspended",
                _ => "listed",
            };
            // Most companies listed before the range starts; some during it.
            let listing_year = if rng.random_bool(0.8) {
                rng.random_range(1991..opts.first_year.max(1992))
            } else {
                rng.random_range(opts.first_year..=opts.last_year)
            };
            let listing_days =
                dates::days_from_civil(listing_year, rng.random_range(1..=12), rng.random_range(1..=28));
            let listing_date = dates::format_days(listing_days);
            subj.execute(params![
                subject,
                market,
                code,
                name,
                status,
                listing_date,
                category
            ])?;
            topic.execute(params![LISTING_POOL, subject])?;
            if market == 33 {
                topic.execute(params![SZ_POOL, subject])?;
            }

            let mut income: f64 = 10f64.powf(rng.random_range(7.0..11.0));
            let margin: f64 = rng.random_range(-0.05..0.3);
            let shares: f64 = 10f64.powf(rng.random_range(8.0..10.0));
            for year in opts.first_year..=opts.last_year {
                for (q, (month, day)) in [(3, 31), (6, 30), (9, 30), (12, 31)].into_iter().enumerate() {
                    let end_days = dates::days_from_civil(year, month, day);
                    if end_days < listing_days {
                        continue;
                    }
                    let report_date = end_days * 86_400;
                    let declare = dates::format_days(end_days + rng.random_range(20..110));
                    rep.execute(params![
                        subject,
                        report_date,
                        dates::format_days(end_days),
                        year.to_string(),
                        format!("Q{}", q + 1),
                        declare
                    ])?;
                    income *= rng.random_range(0.92..1.12);
                    let m = margin + rng.random_range(-0.05..0.05);
                    let operating_profit = income * m;
                    let total_profit = operating_profit * rng.random_range(0.95..1.05);
                    let net_profit = total_profit * 0.75;
                    let values = [
                        income,
                        net_profit * rng.random_range(0.85..1.0),
                        income - operating_profit,
                        net_profit,
                        operating_profit,
                        total_profit,
                        income * rng.random_range(1.5..6.0),
                        net_profit / shares,
                    ];
                    for (i, v) in values.into_iter().enumerate() {
                        if rng.random_bool(0.03) {
                            continue; // a null: not reported
                        }
                        let v = (v * 100.0).round() / 100.0;
                        val.execute(params![subject, report_date, i as i64 + 1, v])?;
                    }
                }
            }
            bar.inc(1);
        }
        let mut meta = tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        meta.execute(params!["dataset_id", dataset_id.to_string()])?;
        meta.execute(params!["data_version", "1"])?;
        meta.execute(params!["schema_version", SCHEMA_VERSION.to_string()])?;
        meta.execute(params!["generated_seed", opts.seed.to_string()])?;
    }
    tx.commit()?;
    bar.finish_and_clear();
    crate::storage::blob::ensure_synced(conn)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    Ok(())
}
