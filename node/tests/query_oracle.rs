//! Query results checked against an independent oracle: the same question
//! answered with plain SQL over the same database, written here separately
//! from the node's code, for many randomized requests. Run against a node
//! with the cache on (series + response cache) and one with it off (direct
//! SQLite path).

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

const IDS: &[&str] = &[
    "operating_income",
    "parent_holder_net_profit",
    "total_operating_cost",
    "net_profit",
    "operating_profit",
    "total_profit",
];

struct Oracle {
    conn: Connection,
}

impl Oracle {
    fn open() -> Self {
        Oracle {
            conn: Connection::open_with_flags(sample_db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap(),
        }
    }

    fn all_subjects(&self) -> Vec<String> {
        let mut st = self
            .conn
            .prepare("SELECT subject FROM subjects ORDER BY subject")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn topic(&self, topic: &str) -> Vec<String> {
        let mut st = self
            .conn
            .prepare("SELECT subject FROM topic_members WHERE topic = ?1")
            .unwrap();
        st.query_map([topic], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn subject_json(&self, s: &str) -> Value {
        self.conn
            .query_row(
                "SELECT subject, name, status, listing_date, category FROM subjects WHERE subject = ?1",
                [s],
                |r| {
                    Ok(json!({
                        "subject": r.get::<_, String>(0)?, "name": r.get::<_, String>(1)?,
                        "status": r.get::<_, String>(2)?, "listing_date": r.get::<_, String>(3)?,
                        "category": r.get::<_, String>(4)?,
                    }))
                },
            )
            .unwrap()
    }

    fn value(&self, s: &str, date: i64, id: &str) -> Value {
        let v: Option<f64> = self
            .conn
            .query_row(
                "SELECT v.value FROM report_values v JOIN indicators i ON i.id = v.indicator
                 WHERE v.subject = ?1 AND v.report_date = ?2 AND i.code = ?3",
                params![s, date, id],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        v.map(Value::from).unwrap_or(Value::Null)
    }

    /// Expected `data` of a snapshot request.
    #[allow(clippy::too_many_arguments)]
    fn snapshot(
        &self,
        subjects: &[String],
        ids: &[&str],
        field: &str,
        desc: bool,
        offset: usize,
        limit: usize,
        ts: i64,
    ) -> Value {
        let mut rows: Vec<(String, Option<f64>, Value)> = Vec::new();
        for s in subjects {
            let latest: Option<(i64, String)> = self
                .conn
                .query_row(
                    "SELECT report_date, end_date FROM reports WHERE subject = ?1 AND (?2 = 0 OR report_date <= ?2)
                     ORDER BY report_date DESC LIMIT 1",
                    params![s, ts],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .unwrap();
            let mut data = Map::new();
            let mut key = None;
            for id in ids {
                let v = match &latest {
                    Some((d, _)) => self.value(s, *d, id),
                    None => Value::Null,
                };
                data.insert(id.to_string(), v);
            }
            // The sort field may be any indicator, requested or not.
            if let (Some((d, _)), true) = (&latest, field != "report_date") {
                key = self.value(s, *d, field).as_f64();
            }
            match &latest {
                Some((d, e)) => {
                    data.insert("report_date".into(), json!(d));
                    data.insert("end_date".into(), json!(e));
                    if field == "report_date" {
                        key = Some(*d as f64);
                    }
                }
                None => {
                    data.insert("report_date".into(), Value::Null);
                    data.insert("end_date".into(), Value::Null);
                }
            }
            rows.push((
                s.clone(),
                key,
                json!({"subject": self.subject_json(s), "data": data}),
            ));
        }
        rows.sort_by(|a, b| {
            let k = match (a.1, b.1) {
                (Some(x), Some(y)) => {
                    if desc {
                        y.partial_cmp(&x).unwrap()
                    } else {
                        x.partial_cmp(&y).unwrap()
                    }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            k.then(a.0.cmp(&b.0))
        });
        // limit 0 is a Go client's unset field: the default, 10.
        let limit = if limit == 0 { 10 } else { limit };
        Value::Array(rows.into_iter().skip(offset).take(limit).map(|r| r.2).collect())
    }

    /// Expected `data` of a period request.
    fn period(&self, subjects: &[String], ids: &[&str], from: i64, to: i64) -> Value {
        let mut out = Vec::new();
        for s in subjects {
            let mut st = self
                .conn
                .prepare(
                    "SELECT report_date, end_date, period, declare_date, year FROM reports
                     WHERE subject = ?1 AND report_date >= ?2 AND report_date <= ?3 ORDER BY report_date DESC",
                )
                .unwrap();
            let reports: Vec<(i64, String, String, String, String)> = st
                .query_map(params![s, from, to], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let data: Vec<Value> = reports
                .into_iter()
                .map(|(d, end, period, declare, year)| {
                    let mut m = Map::new();
                    m.insert("end_date".into(), json!(end));
                    m.insert("period".into(), json!(period));
                    m.insert("declare_date".into(), json!(declare));
                    m.insert("combine".into(), json!(format!("{s}:{year}_{period}")));
                    m.insert("year".into(), json!(year));
                    m.insert("report_date".into(), json!(d));
                    for id in ids {
                        m.insert(id.to_string(), self.value(s, d, id));
                    }
                    Value::Object(m)
                })
                .collect();
            out.push(json!({"subject": self.subject_json(s), "data": data}));
        }
        Value::Array(out)
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], n: usize) -> Vec<&'a T> {
    (0..n).map(|_| &items[rng.random_range(0..items.len())]).collect()
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn run_randomized(node: &Node, seed: u64, rounds: usize) {
    let oracle = Oracle::open();
    let all = oracle.all_subjects();
    let pool = oracle.topic("stock_a_listing_pool");
    assert_eq!(pool.len(), SUBJECTS);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Timestamps around and inside the data range (2015..2024), and 0.
    let ts_choices = [
        0i64,
        1_400_000_000,
        1_420_070_400,
        1_500_000_000,
        1_593_475_200,
        1_700_000_000,
        2_000_000_000,
    ];
    for round in 0..rounds {
        let n_ids = rng.random_range(1..=4);
        let ids: Vec<&str> = dedup(
            pick(&mut rng, IDS, n_ids)
                .into_iter()
                .map(|s| s.to_string())
                .collect(),
        )
        .into_iter()
        .map(|s| *IDS.iter().find(|i| **i == s).unwrap())
        .collect();
        let field = match rng.random_range(0..8) {
            0 | 1 => "report_date".to_string(),
            // Outside the requested ids: the original sorts by any column.
            2 => IDS[rng.random_range(0..IDS.len())].to_string(),
            _ => ids[rng.random_range(0..ids.len())].to_string(),
        };
        let desc = rng.random_bool(0.5);
        let ts = ts_choices[rng.random_range(0..ts_choices.len())];
        let use_topic = rng.random_bool(0.2);
        let subjects: Vec<String> = if use_topic {
            let mut p = pool.clone();
            p.sort();
            p
        } else {
            let n = rng.random_range(1..=30);
            dedup(pick(&mut rng, &all, n).into_iter().cloned().collect())
        };
        let offset = if rng.random_bool(0.3) {
            rng.random_range(0..20)
        } else {
            0
        };
        let limit = rng.random_range(0..=60);
        let order = if desc { json!(-1) } else { json!("asc") };
        let mut body = json!({"ids": ids.join(","), "field": field, "order": order, "offset": offset, "limit": limit, "timestamp": ts});
        if use_topic {
            body["topic"] = json!("stock_a_listing_pool");
        } else {
            body["subjects"] = json!(subjects.join(","));
        }
        let body = body.to_string();
        let expected = oracle.snapshot(&subjects, &ids, &field, desc, offset, limit, ts);
        for attempt in 0..2 {
            let r = node.post(SNAPSHOT, &body);
            assert_eq!(r.status, 200, "round {round}: {body} -> {}", r.text());
            let got = r.json();
            assert_eq!(got["status_code"], 0);
            assert_eq!(
                got["data"], expected,
                "round {round} attempt {attempt}: snapshot {body}"
            );
        }

        // Period over a random range for a few subjects.
        let n = rng.random_range(1..=5);
        let subjects = dedup(pick(&mut rng, &all, n).into_iter().cloned().collect());
        let a = ts_choices[rng.random_range(1..ts_choices.len())];
        let b = ts_choices[rng.random_range(1..ts_choices.len())];
        let (from, to) = (a.min(b), a.max(b));
        let body =
            json!({"ids": ids.join(","), "subjects": subjects.join(","), "from": from, "to": to}).to_string();
        let expected = oracle.period(&subjects, &ids, from, to);
        for attempt in 0..2 {
            let r = node.post(PERIOD, &body);
            assert_eq!(r.status, 200, "round {round}: {body} -> {}", r.text());
            assert_eq!(
                r.json()["data"],
                expected,
                "round {round} attempt {attempt}: period {body}"
            );
        }
    }
}

#[test]
fn snapshot_and_period_match_sql_oracle_with_cache() {
    let node = start_node(&NodeOpts::new(sample_db()));
    run_randomized(&node, 1, 120);
    let stats = node.stats();
    assert!(stats["cache"]["hits"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["cache"]["misses"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn snapshot_and_period_match_sql_oracle_without_cache() {
    let mut opts = NodeOpts::new(sample_db());
    opts.max_bytes = 0;
    let node = start_node(&opts);
    run_randomized(&node, 2, 80);
    let stats = node.stats();
    assert_eq!(stats["cache"]["hits"], 0, "{stats}");
    assert_eq!(stats["cache"]["bytes"], 0, "{stats}");
}

#[test]
fn unknown_subjects_are_named_not_dropped_silently() {
    let node = start_node(&NodeOpts::new(sample_db()));
    let r = node.post(
        SNAPSHOT,
        r#"{"ids":"net_profit","subjects":"33:000001,33:999999,17:777777"}"#,
    );
    assert_eq!(r.status, 200);
    let msg = r.msg();
    assert!(msg.contains("33:999999") && msg.contains("17:777777"), "{msg}");
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
}

#[test]
fn default_sort_is_first_id_descending_and_limit_ten() {
    let node = start_node(&NodeOpts::new(sample_db()));
    let r = node.post(
        SNAPSHOT,
        r#"{"ids":"net_profit,operating_income","topic":"stock_a_listing_pool"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 10);
    let vals: Vec<f64> = rows
        .iter()
        .map(|r| r["data"]["net_profit"].as_f64().unwrap())
        .collect();
    assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
}
