//! Bodies of the `ingest` write workload: batches of upserts for random
//! existing subjects (the `gen-data` subject codes of `scenario.rs`) over the
//! four quarters of 2025, with all eight sample indicators. Batch `i` depends
//! only on the seed, the subject count, the batch size and `i`, and never
//! holds the same (subject, report_date) twice.

use std::fmt::Write as _;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{subject, unix_day, INDICATORS};

/// Path of the ingest route, relative to the target.
pub const INGEST_PATH: &str = "/kamaitachi/api/data/v1/ingest";
/// Most records the node accepts in one batch.
pub const MAX_BATCH: u64 = 10_000;
/// The year whose quarters are written.
pub const YEAR: i32 = 2025;
/// Quarters per year: distinct report dates per subject.
pub const QUARTERS: u64 = 4;

/// Mixed into the seed so write bodies do not share a random stream with
/// the read scenarios of the same seed.
const STREAM_SALT: u64 = 0x1a6e_57ba_7c4e_5eed;

/// One quarter end of [`YEAR`], as the record fields want it.
#[derive(Debug, Clone)]
struct Quarter {
    /// Unix seconds of 00:00 UTC of the quarter end.
    report_date: i64,
    /// The quarter end as YYYY-MM-DD.
    end_date: String,
    period: &'static str,
}

/// Makes ingest bodies; `body(i)` is a pure function of the settings and `i`.
#[derive(Debug, Clone)]
pub struct IngestGenerator {
    seed: u64,
    subjects: u64,
    batch: u64,
    quarters: [Quarter; 4],
}

impl IngestGenerator {
    /// `subjects` is the subject count of the data; `batch` is clamped to
    /// 1..=min(10000, 4 × subjects), the most distinct keys there are.
    pub fn new(seed: u64, subjects: u64, batch: u64) -> Self {
        let subjects = subjects.max(1);
        let quarter = |m: u32, d: u32, period| Quarter {
            report_date: unix_day(YEAR, m, d),
            end_date: format!("{YEAR:04}-{m:02}-{d:02}"),
            period,
        };
        IngestGenerator {
            seed: seed ^ STREAM_SALT,
            subjects,
            batch: batch.clamp(1, MAX_BATCH.min(max_batch(subjects))),
            quarters: [
                quarter(3, 31, "Q1"),
                quarter(6, 30, "Q2"),
                quarter(9, 30, "Q3"),
                quarter(12, 31, "Q4"),
            ],
        }
    }

    /// Records per batch.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// The JSON body of batch `i`: `{"records":[...]}`.
    pub fn body(&self, i: u64) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(i);
        let keys = usize::try_from(self.subjects.saturating_mul(QUARTERS)).unwrap_or(usize::MAX);
        let count = usize::try_from(self.batch).unwrap_or(usize::MAX).min(keys);
        let mut out = String::with_capacity(count * 330 + 16);
        out.push_str(r#"{"records":["#);
        // Distinct key numbers: key k is subject k / 4 at quarter k % 4.
        for (n, key) in sample(&mut rng, keys, count).iter().enumerate() {
            let key = key as u64;
            let q = &self.quarters[(key % QUARTERS) as usize];
            let code = subject(key / QUARTERS, self.subjects);
            let declare = date(q.report_date / 86_400 + rng.random_range(15..=120));
            if n > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                r#"{{"subject":"{code}","report_date":{},"end_date":"{}","year":"{YEAR}","period":"{}","declare_date":"{declare}","values":{{"#,
                q.report_date, q.end_date, q.period
            );
            for (k, id) in INDICATORS.iter().enumerate() {
                let value = indicator_value(&mut rng, id);
                let _ = write!(out, r#"{}"{id}":{value}"#, if k > 0 { "," } else { "" });
            }
            out.push_str("}}");
        }
        out.push_str("]}");
        out
    }
}

/// The largest batch without a repeated (subject, quarter) for `subjects`.
pub fn max_batch(subjects: u64) -> u64 {
    subjects.saturating_mul(QUARTERS)
}

/// A plausible random value of indicator `id`, rounded to cents (EPS to
/// 1/10000).
fn indicator_value(rng: &mut ChaCha8Rng, id: &str) -> f64 {
    let (low, high, scale): (f64, f64, f64) = match id {
        "operating_income" | "total_operating_cost" => (1e6, 5e10, 100.0),
        "total_assets" => (1e7, 1e12, 100.0),
        "basic_eps" => (-2.0, 5.0, 10_000.0),
        _ => (-1e9, 5e9, 100.0),
    };
    (rng.random_range(low..high) * scale).round() / scale
}

/// YYYY-MM-DD of `days` since 1970-01-01 (Howard Hinnant's civil_from_days).
pub fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashSet;

    fn records(g: &IngestGenerator, i: u64) -> Vec<Value> {
        let v: Value = serde_json::from_str(&g.body(i)).expect("bodies are JSON");
        v["records"].as_array().expect("records array").clone()
    }

    /// Unix seconds of a YYYY-MM-DD date, checking that it is a real date.
    fn parse_date(s: &str) -> Option<i64> {
        let (y, rest) = s.split_once('-')?;
        let (m, d) = rest.split_once('-')?;
        let (y, m, d): (i32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
        let secs = unix_day(y, m, d);
        (s.len() == 10 && (1..=12).contains(&m) && d >= 1 && date(secs / 86_400) == s).then_some(secs)
    }

    #[test]
    fn civil_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(unix_day(2025, 3, 31) / 86_400), "2025-03-31");
        assert_eq!(date(unix_day(2024, 2, 29) / 86_400), "2024-02-29");
        assert_eq!(date(unix_day(2026, 1, 1) / 86_400 - 1), "2025-12-31");
        for days in (0..150_000).step_by(97) {
            let s = date(days);
            assert_eq!(parse_date(&s), Some(days * 86_400), "{s}");
        }
        assert_eq!(parse_date("2025-02-29"), None);
        assert_eq!(parse_date("2025-13-01"), None);
    }

    #[test]
    fn quarter_ends_of_2025() {
        let g = IngestGenerator::new(1, 5000, 10);
        let got: Vec<(i64, &str, &str)> = g
            .quarters
            .iter()
            .map(|q| (q.report_date, q.end_date.as_str(), q.period))
            .collect();
        assert_eq!(
            got,
            [
                (1_743_379_200, "2025-03-31", "Q1"),
                (1_751_241_600, "2025-06-30", "Q2"),
                (1_759_190_400, "2025-09-30", "Q3"),
                (1_767_139_200, "2025-12-31", "Q4"),
            ]
        );
    }

    #[test]
    fn records_are_valid() {
        let total = 5000;
        let codes: HashSet<String> = (0..total).map(|n| subject(n, total)).collect();
        let g = IngestGenerator::new(42, total, 1000);
        for i in 0..5 {
            let recs = records(&g, i);
            assert_eq!(recs.len(), 1000);
            let mut keys = HashSet::new();
            for r in &recs {
                let code = r["subject"].as_str().expect("subject");
                assert!(codes.contains(code), "{code} is an existing subject");
                let end_date = r["end_date"].as_str().expect("end_date");
                let report_date = r["report_date"].as_i64().expect("report_date");
                assert_eq!(parse_date(end_date), Some(report_date), "{r}");
                assert_eq!(r["year"], "2025");
                assert!(end_date.starts_with("2025-"));
                let month: u32 = end_date[5..7].parse().expect("month");
                assert!(matches!(month, 3 | 6 | 9 | 12), "{end_date} is a quarter end");
                assert_eq!(r["period"], format!("Q{}", month / 3), "{r}");
                let declared = parse_date(r["declare_date"].as_str().expect("declare_date"));
                let declared = declared.expect("declare_date is a valid date");
                assert!((15..=120).contains(&((declared - report_date) / 86_400)), "{r}");
                let values = r["values"].as_object().expect("values");
                assert_eq!(values.len(), INDICATORS.len());
                for (id, v) in values {
                    assert!(INDICATORS.contains(&id.as_str()), "{id}");
                    assert!(v.as_f64().is_some_and(f64::is_finite), "{id}: {v}");
                }
                assert!(r.get("name").is_none(), "no new subjects");
                assert!(keys.insert((code.to_string(), report_date)), "duplicate key {r}");
            }
        }
    }

    #[test]
    fn no_duplicate_keys_even_in_full_batches() {
        // 30 subjects × 4 quarters = 120 keys: a batch of 120 uses each once.
        let g = IngestGenerator::new(7, 30, 500);
        assert_eq!(g.batch(), 120, "clamped to the distinct keys there are");
        let recs = records(&g, 3);
        let keys: HashSet<(String, i64)> = recs
            .iter()
            .map(|r| {
                (
                    r["subject"].as_str().expect("subject").to_string(),
                    r["report_date"].as_i64().expect("rd"),
                )
            })
            .collect();
        assert_eq!((recs.len(), keys.len()), (120, 120));
        assert_eq!(IngestGenerator::new(7, 5000, 50_000).batch(), MAX_BATCH);
        assert_eq!(IngestGenerator::new(7, 5000, 0).batch(), 1);
    }

    #[test]
    fn deterministic_by_seed() {
        let a = IngestGenerator::new(42, 5000, 100);
        let b = IngestGenerator::new(42, 5000, 100);
        let c = IngestGenerator::new(43, 5000, 100);
        let xs: Vec<String> = (0..20).map(|i| a.body(i)).collect();
        let ys: Vec<String> = (0..20).rev().map(|i| b.body(i)).rev().collect();
        assert_eq!(xs, ys, "order of generation does not matter");
        assert_ne!(
            xs,
            (0..20).map(|i| c.body(i)).collect::<Vec<_>>(),
            "another seed, other bodies"
        );
        assert_eq!(xs.iter().collect::<HashSet<_>>().len(), 20, "batches differ");
    }
}
