//! Request bodies: the read scenarios (1–4 send the bodies of the original
//! load tool, KamaitachiGo's `tools/benchmark_scenarios.go`: the same keys,
//! values and draws, over this data's subjects; 5 is a period, 6 pages
//! through the listing pool), the subject codes of a `gen-data` database,
//! and deterministic body generation (the body of request `i` depends only
//! on the seed, the scenario and `i`). The `ingest` write workload's bodies
//! live in `ingest.rs`.

use std::fmt;
use std::str::FromStr;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Path of the snapshot route, relative to the target.
pub const SNAPSHOT_PATH: &str = "/kamaitachi/api/data/v1/snapshot";
/// Path of the period route, relative to the target.
pub const PERIOD_PATH: &str = "/kamaitachi/api/data/v1/period";
/// The topic scenario 3 pages through.
pub const TOPIC: &str = "stock_a_listing_pool";

/// Indicator ids of the sample data.
pub const INDICATORS: [&str; 8] = [
    "operating_income",
    "parent_holder_net_profit",
    "total_operating_cost",
    "net_profit",
    "operating_profit",
    "total_profit",
    "total_assets",
    "basic_eps",
];

/// First and last year of the report dates in the sample data.
const FIRST_YEAR: i32 = 2015;
const LAST_YEAR: i32 = 2024;
/// Page size of scenario 6.
const PAGE: u64 = 100;
/// Largest offset of scenario 6 (with 5,000 subjects: the last full page).
const MAX_OFFSET: u64 = 4900;
/// The original's as-of time in scenario 4 (2023-09-30).
const ORIGINAL_AS_OF: i64 = 1_696_032_000;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// 1: 2 subjects, 3 ids, sorted by report_date, limit 20.
    Multi,
    /// 2: 1 subject, 2 ids, sorted by operating_income (requested or not),
    /// limit 8.
    Single,
    /// 3: 50 subjects (drawn with repeats), 4 ids, sorted by
    /// operating_income, limit 20.
    Paging,
    /// 4: 3 subjects, 3 ids, as of 2023-09-30, sorted by operating_income.
    AsOf,
    /// 5: a period of 1-5 years for one subject.
    Period,
    /// 6: the listing pool topic, paged (offset 0..4900, limit 100) and
    /// sorted by an id.
    Topic,
}

impl Scenario {
    /// What `--scenario all` cycles through: the original's four and period.
    pub const ALL: [Scenario; 5] = [
        Scenario::Multi,
        Scenario::Single,
        Scenario::Paging,
        Scenario::AsOf,
        Scenario::Period,
    ];

    /// The scenario's number on the command line.
    pub fn number(self) -> u8 {
        match self {
            Scenario::Multi => 1,
            Scenario::Single => 2,
            Scenario::Paging => 3,
            Scenario::AsOf => 4,
            Scenario::Period => 5,
            Scenario::Topic => 6,
        }
    }

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Multi => "multi",
            Scenario::Single => "single",
            Scenario::Paging => "paging",
            Scenario::AsOf => "asof",
            Scenario::Period => "period",
            Scenario::Topic => "topic",
        }
    }

    /// The route the scenario's requests go to.
    pub fn path(self) -> &'static str {
        match self {
            Scenario::Period => PERIOD_PATH,
            _ => SNAPSHOT_PATH,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// What `--scenario` selects: one scenario, or all of them round robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    One(Scenario),
    All,
}

impl Choice {
    /// The scenario of request `i`.
    pub fn scenario_of(self, i: u64) -> Scenario {
        match self {
            Choice::One(s) => s,
            Choice::All => Scenario::ALL[(i % Scenario::ALL.len() as u64) as usize],
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::One(s) => s.fmt(f),
            Choice::All => f.write_str("all (round robin 1-5)"),
        }
    }
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let one = match s.as_str() {
            "all" | "mix" => return Ok(Choice::All),
            "1" | "multi" => Scenario::Multi,
            "2" | "single" => Scenario::Single,
            "3" | "paging" => Scenario::Paging,
            "4" | "asof" | "as-of" => Scenario::AsOf,
            "5" | "period" => Scenario::Period,
            "6" | "topic" => Scenario::Topic,
            _ => {
                return Err(format!(
                    "unknown scenario {s:?}: use 1..6 (multi, single, paging, asof, period, topic) or all"
                ))
            }
        };
        Ok(Choice::One(one))
    }
}

/// What `--scenario` selects: reads (one scenario or all), or the `ingest`
/// write workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Read(Choice),
    Ingest,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Read(c) => c.fmt(f),
            Workload::Ingest => f.write_str("ingest"),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ingest" | "write" => Ok(Workload::Ingest),
            other => other.parse().map(Workload::Read).map_err(|_| {
                format!(
                    "unknown scenario {other:?}: use 1..6 (multi, single, paging, asof, period, topic), all, or ingest"
                )
            }),
        }
    }
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub scenario: Scenario,
    pub body: String,
}

/// The subject code with index `n` (0-based) of a database of `total`
/// subjects made by `kamaitachi-node gen-data`.
pub fn subject(n: u64, total: u64) -> String {
    let sz = total * 3 / 5;
    if n < sz {
        if n % 4 == 3 {
            format!("33:{:06}", 300_001 + n)
        } else {
            format!("33:{:06}", 1 + n)
        }
    } else {
        let k = n - sz;
        if k % 5 == 4 {
            format!("17:{:06}", 688_001 + k)
        } else {
            format!("17:{:06}", 600_000 + k)
        }
    }
}

/// Unix seconds of `year-month-day` 00:00 UTC.
pub fn unix_day(year: i32, month: u32, day: u32) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let y = i64::from(if month <= 2 { year - 1 } else { year });
    let m = i64::from(month);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400
}

/// Makes request bodies. `body(i)` is a pure function of the settings and
/// `i`, so the same seed gives the same requests whatever the interleaving
/// of the workers.
#[derive(Debug, Clone)]
pub struct Generator {
    choice: Choice,
    seed: u64,
    subjects: u64,
}

impl Generator {
    /// `subjects` is the subject count of the data (at least 1).
    pub fn new(choice: Choice, seed: u64, subjects: u64) -> Self {
        Generator {
            choice,
            seed,
            subjects: subjects.max(1),
        }
    }

    /// Request number `i`.
    pub fn request(&self, i: u64) -> Request {
        let scenario = self.choice.scenario_of(i);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(i);
        // 1-4: the original tool's bodies (ids and subjects drawn with
        // repeats, as it draws them).
        let body = match scenario {
            Scenario::Multi => json!({
                "ids": ids_with_repeats(&mut rng, 3),
                "subjects": self.subjects_with_repeats(&mut rng, 2),
                "field": "report_date", "order": -1, "limit": 20, "offset": 0,
            }),
            Scenario::Single => json!({
                "ids": ids_with_repeats(&mut rng, 2),
                "subjects": self.subjects_with_repeats(&mut rng, 1),
                "field": "operating_income", "order": -1, "limit": 8, "offset": 0,
            }),
            Scenario::Paging => {
                // It draws 100-299 subjects and keeps the first 50.
                let subjects = self.subjects_with_repeats(&mut rng, 50);
                json!({
                    "ids": ids_with_repeats(&mut rng, 4),
                    "subjects": subjects,
                    "field": "operating_income", "order": -1, "limit": 20, "offset": 0,
                })
            }
            Scenario::AsOf => {
                let ids = ids_with_repeats(&mut rng, 3);
                json!({
                    "ids": ids,
                    "subjects": self.subjects_with_repeats(&mut rng, 3),
                    "field": "operating_income", "order": -1, "limit": 10, "offset": 0,
                    "timestamp": ORIGINAL_AS_OF,
                })
            }
            Scenario::Topic => {
                let ids = ids(&mut rng, 2);
                let last_page = (self.subjects.saturating_sub(PAGE) / PAGE).min(MAX_OFFSET / PAGE);
                let offset = rng.random_range(0..=last_page) * PAGE;
                let order = if rng.random_bool(0.5) { -1 } else { 1 };
                json!({
                    "ids": ids.join(","),
                    "topic": TOPIC,
                    "field": ids[0],
                    "order": order,
                    "offset": offset,
                    "limit": PAGE,
                })
            }
            Scenario::Period => {
                let subjects = self.subjects(&mut rng, 1);
                let count = rng.random_range(1..=3);
                let years = rng.random_range(1..=5);
                let start = rng.random_range(FIRST_YEAR..=LAST_YEAR + 1 - years);
                json!({
                    "ids": ids(&mut rng, count).join(","),
                    "subjects": subjects,
                    "from": unix_day(start, 1, 1),
                    "to": unix_day(start + years - 1, 12, 31),
                })
            }
        };
        Request {
            scenario,
            body: body.to_string(),
        }
    }

    /// `count` random subjects, repeats allowed, comma-separated.
    fn subjects_with_repeats(&self, rng: &mut ChaCha8Rng, count: usize) -> String {
        (0..count)
            .map(|_| subject(rng.random_range(0..self.subjects), self.subjects))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `count` distinct random subjects (fewer if the data has fewer),
    /// comma-separated.
    fn subjects(&self, rng: &mut ChaCha8Rng, count: usize) -> String {
        let total = usize::try_from(self.subjects).unwrap_or(usize::MAX);
        let count = count.min(total);
        sample(rng, total, count)
            .iter()
            .map(|n| subject(n as u64, self.subjects))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `count` distinct random indicator ids.
fn ids(rng: &mut ChaCha8Rng, count: usize) -> Vec<&'static str> {
    sample(rng, INDICATORS.len(), count.min(INDICATORS.len()))
        .iter()
        .map(|i| INDICATORS[i])
        .collect()
}

/// `count` random indicator ids of the original's six, repeats allowed,
/// comma-separated.
fn ids_with_repeats(rng: &mut ChaCha8Rng, count: usize) -> String {
    (0..count)
        .map(|_| INDICATORS[rng.random_range(0..6)])
        .collect::<Vec<_>>()
        .join(",")
}

/// The bodies requests are drawn from.
#[derive(Debug, Clone)]
pub enum Bodies {
    /// Every request fresh: request `i` is `Generator::request(i)`.
    Fresh(Generator),
    /// A hot set of pre-generated requests, cycled.
    Hot(Vec<Request>),
}

impl Bodies {
    /// Fresh bodies, or a hot set of `repeat` bodies when given (at least 1).
    pub fn new(generator: Generator, repeat: Option<u64>) -> Self {
        match repeat {
            None => Bodies::Fresh(generator),
            Some(n) => Bodies::Hot((0..n.max(1)).map(|i| generator.request(i)).collect()),
        }
    }

    /// Request number `i`.
    pub fn get(&self, i: u64) -> Request {
        match self {
            Bodies::Fresh(g) => g.request(i),
            Bodies::Hot(set) => set[(i % set.len() as u64) as usize].clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn valid_subject(s: &str, total: u64) -> bool {
        (0..total).any(|n| subject(n, total) == s)
    }

    fn body(r: &Request) -> serde_json::Value {
        serde_json::from_str(&r.body).expect("bodies are JSON")
    }

    #[test]
    fn subject_codes_follow_gen_data() {
        assert_eq!(subject(0, 5000), "33:000001");
        assert_eq!(subject(3, 5000), "33:300004");
        assert_eq!(subject(2999, 5000), "33:303000");
        assert_eq!(subject(3000, 5000), "17:600000");
        assert_eq!(subject(3004, 5000), "17:688005");
        let all: HashSet<_> = (0..5000).map(|n| subject(n, 5000)).collect();
        assert_eq!(all.len(), 5000, "subject codes are distinct");
        for s in &all {
            assert_eq!(s.len(), 9);
            assert!(s.starts_with("33:") || s.starts_with("17:"), "{s}");
            assert!(s[3..].bytes().all(|b| b.is_ascii_digit()), "{s}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(unix_day(1970, 1, 1), 0);
        assert_eq!(unix_day(2022, 1, 1), 1_640_995_200);
        assert_eq!(unix_day(2024, 12, 31), 1_735_603_200);
        assert_eq!(unix_day(2023, 9, 30), ORIGINAL_AS_OF);
    }

    #[test]
    fn same_seed_same_bodies() {
        for choice in ["1", "2", "3", "4", "5", "6", "all"] {
            let choice: Choice = choice.parse().expect("valid");
            let a = Generator::new(choice, 42, 5000);
            let b = Generator::new(choice, 42, 5000);
            let c = Generator::new(choice, 43, 5000);
            let xs: Vec<_> = (0..200).map(|i| a.request(i)).collect();
            let ys: Vec<_> = (0..200).rev().map(|i| b.request(i)).rev().collect();
            assert_eq!(xs, ys, "order of generation does not matter");
            let zs: Vec<_> = (0..200).map(|i| c.request(i)).collect();
            assert_ne!(xs, zs, "another seed gives other bodies");
            let distinct: HashSet<_> = xs.iter().map(|r| &r.body).collect();
            assert!(distinct.len() > 100, "{choice}: bodies vary ({})", distinct.len());
        }
    }

    #[test]
    fn bodies_are_valid() {
        let total = 5000;
        let g = Generator::new(Choice::All, 7, total);
        for i in 0..500 {
            let r = g.request(i);
            assert_eq!(r.scenario, Scenario::ALL[(i % 5) as usize]);
            let v = body(&r);
            let ids: Vec<&str> = v["ids"].as_str().expect("ids").split(',').collect();
            assert!(ids.iter().all(|id| INDICATORS.contains(id)), "{}", r.body);
            let subjects: Vec<&str> = v["subjects"]
                .as_str()
                .map(|s| s.split(',').collect())
                .unwrap_or_default();
            assert!(subjects.iter().all(|s| valid_subject(s, total)), "{}", r.body);
            // 1-4: the original tool's keys and values.
            let original = |field: &str, limit: u64| {
                assert_eq!(v["field"], field, "{}", r.body);
                assert_eq!(
                    (v["order"].as_i64(), v["limit"].as_u64(), v["offset"].as_u64()),
                    (Some(-1), Some(limit), Some(0))
                );
                assert!(ids.iter().all(|id| INDICATORS[..6].contains(id)), "{}", r.body);
            };
            match r.scenario {
                Scenario::Multi => {
                    assert_eq!((ids.len(), subjects.len()), (3, 2));
                    original("report_date", 20);
                }
                Scenario::Single => {
                    assert_eq!((ids.len(), subjects.len()), (2, 1));
                    original("operating_income", 8);
                }
                Scenario::Paging => {
                    assert_eq!((ids.len(), subjects.len()), (4, 50));
                    original("operating_income", 20);
                }
                Scenario::AsOf => {
                    assert_eq!((ids.len(), subjects.len()), (3, 3));
                    original("operating_income", 10);
                    assert_eq!(v["timestamp"], ORIGINAL_AS_OF);
                }
                Scenario::Period => {
                    assert_eq!(subjects.len(), 1);
                    let from = v["from"].as_i64().expect("from");
                    let to = v["to"].as_i64().expect("to");
                    assert!(from >= unix_day(2015, 1, 1) && to <= unix_day(2024, 12, 31));
                    let days = (to - from) / 86_400 + 1;
                    assert!((365..=5 * 366).contains(&days), "{days}");
                }
                Scenario::Topic => unreachable!("not in all"),
            }
            assert_eq!(
                r.scenario.path(),
                if r.scenario == Scenario::Period {
                    PERIOD_PATH
                } else {
                    SNAPSHOT_PATH
                }
            );
        }
        // The field is outside the ids in some of the original's bodies.
        let g = Generator::new(Choice::One(Scenario::Single), 7, total);
        assert!((0..100).any(|i| !body(&g.request(i))["ids"]
            .as_str()
            .unwrap_or("")
            .contains("operating_income")));
    }

    #[test]
    fn topic_pages_through_the_pool() {
        let g = Generator::new(Choice::One(Scenario::Topic), 7, 5000);
        for i in 0..200 {
            let v = body(&g.request(i));
            assert_eq!(v["topic"], TOPIC);
            let ids: Vec<&str> = v["ids"].as_str().expect("ids").split(',').collect();
            assert!(ids.contains(&v["field"].as_str().expect("field")));
            let offset = v["offset"].as_u64().expect("offset");
            assert!(offset <= 4900 && offset.is_multiple_of(100), "{offset}");
            assert_eq!(v["limit"], 100);
            assert!(v["order"] == 1 || v["order"] == -1);
        }
    }

    #[test]
    fn small_data_is_respected() {
        let g = Generator::new(Choice::One(Scenario::Period), 1, 3);
        assert!((0..50).all(|i| valid_subject(body(&g.request(i))["subjects"].as_str().unwrap_or(""), 3)));
        let g = Generator::new(Choice::One(Scenario::Topic), 1, 150);
        assert!((0..50).all(|i| body(&g.request(i))["offset"] == 0));
    }

    #[test]
    fn repeat_set_size() {
        let g = Generator::new(Choice::One(Scenario::Single), 42, 5000);
        let bodies = Bodies::new(g.clone(), Some(16));
        match &bodies {
            Bodies::Hot(set) => assert_eq!(set.len(), 16),
            Bodies::Fresh(_) => panic!("expected a hot set"),
        }
        let sent: HashSet<_> = (0..1000).map(|i| bodies.get(i).body).collect();
        assert_eq!(sent.len(), 16, "the hot set is cycled");
        assert_eq!(bodies.get(3), bodies.get(3 + 16));
        assert_eq!(bodies.get(5), g.request(5), "the hot set is the first N bodies");
        let fresh = Bodies::new(g, None);
        let sent: HashSet<_> = (0..1000).map(|i| fresh.get(i).body).collect();
        assert!(sent.len() > 900);
    }

    #[test]
    fn parse_choice() {
        assert_eq!("1".parse::<Choice>(), Ok(Choice::One(Scenario::Multi)));
        assert_eq!("Period".parse::<Choice>(), Ok(Choice::One(Scenario::Period)));
        assert_eq!("5".parse::<Choice>(), Ok(Choice::One(Scenario::Period)));
        assert_eq!("6".parse::<Choice>(), Ok(Choice::One(Scenario::Topic)));
        assert_eq!("topic".parse::<Choice>(), Ok(Choice::One(Scenario::Topic)));
        assert_eq!("all".parse::<Choice>(), Ok(Choice::All));
        assert!("7".parse::<Choice>().is_err());
        assert!("0".parse::<Choice>().is_err());
        assert_eq!("ingest".parse::<Workload>(), Ok(Workload::Ingest));
        assert_eq!(" Ingest ".parse::<Workload>(), Ok(Workload::Ingest));
        assert_eq!(
            "3".parse::<Workload>(),
            Ok(Workload::Read(Choice::One(Scenario::Paging)))
        );
        assert_eq!("all".parse::<Workload>(), Ok(Workload::Read(Choice::All)));
        let err = "9".parse::<Workload>().expect_err("unknown");
        assert!(err.contains("ingest"), "{err}");
    }
}
