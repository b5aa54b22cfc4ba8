//! Parsing and validating request bodies into typed queries.
//!
//! Nothing here touches data beyond the in-memory [`Catalog`]: every rule of
//! the contract (ids must exist, the sort field must be known, limits, from
//! <= to, subjects or topic) is checked before any work is done, and each
//! failure names its field. The sort field becomes an enum, so it can never
//! reach SQL text.
//!
//! Clients of the original Go implementation serialise zero values (`""`,
//! `0`) for every field they leave unset; [`given`] treats those as absent,
//! so such a body means what its author meant.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::error::EngineError;
use crate::model::catalog::{Catalog, SubjectInfo};

pub const MAX_LIMIT: i64 = 1000;
pub const MAX_SUBJECTS: usize = 1000;
pub const MAX_IDS: usize = 256;
pub const DEFAULT_LIMIT: i64 = 10;

/// What a snapshot is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// An indicator id (index into `Report::values`).
    Indicator(usize),
    ReportDate,
}

/// A requested indicator: its code as the client wrote it and its id.
#[derive(Debug, Clone)]
pub struct IdRef {
    pub code: Arc<str>,
    pub id: usize,
}

#[derive(Debug)]
pub struct SnapshotQuery {
    pub ids: Vec<IdRef>,
    pub subjects: Vec<Arc<SubjectInfo>>,
    pub unknown: Vec<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
    /// Unix seconds; 0 = latest.
    pub as_of: i64,
}

#[derive(Debug)]
pub struct PeriodQuery {
    pub ids: Vec<IdRef>,
    pub subjects: Vec<Arc<SubjectInfo>>,
    pub unknown: Vec<String>,
    pub from: i64,
    pub to: i64,
}

/// Deepest JSON nesting accepted. Request bodies are two levels deep; the
/// bound keeps serde_json's recursion far inside a coroutine's stack.
pub const MAX_DEPTH: usize = 32;

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, EngineError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EngineError::BadRequest(
            "empty body: expected a JSON object".into(),
        ));
    }
    if nesting_exceeds(body, MAX_DEPTH) {
        return Err(EngineError::BadRequest(format!(
            "body is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(EngineError::BadRequest("body must be a JSON object".into())),
        Err(e) => Err(EngineError::BadRequest(format!("body is not valid JSON: {e}"))),
    }
}

/// Whether `[`/`{` nest deeper than `limit` outside strings. A linear scan
/// with no recursion, run before the recursive parser.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl SnapshotQuery {
    pub fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, EngineError> {
        let obj = parse_object(body)?;
        let ids = parse_ids(&obj, catalog)?;
        if let Some(m) = given(&obj, "method") {
            if !m.is_string() {
                return Err(EngineError::field(
                    "method",
                    "expected a string such as \"market:code\"",
                ));
            }
        }
        // The original answers a topic when both are given.
        let (subjects, unknown) = match (given(&obj, "topic"), given(&obj, "subjects")) {
            (Some(Value::String(t)), _) => match catalog.topic(t.trim()) {
                Some(members) => (members.to_vec(), Vec::new()),
                None => {
                    return Err(EngineError::field(
                        "topic",
                        format!("unknown topic {:?}", t.trim()),
                    ))
                }
            },
            (Some(_), _) => return Err(EngineError::field("topic", "expected a string")),
            (None, Some(v)) => resolve_subjects(v, catalog)?,
            (None, None) => return Err(EngineError::field("subjects", "required (or topic)")),
        };
        let sort = match given(&obj, "field") {
            None => SortKey::Indicator(ids[0].id),
            Some(Value::String(f)) => parse_sort_field(f.trim(), catalog)?,
            Some(_) => return Err(EngineError::field("field", "expected a string")),
        };
        let descending = match given(&obj, "order") {
            None => true,
            Some(v) => parse_descending(v)?,
        };
        let offset = int_field(&obj, "offset", 0)?;
        if offset < 0 {
            return Err(EngineError::field("offset", "must be >= 0"));
        }
        let limit = int_field(&obj, "limit", DEFAULT_LIMIT)?;
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(EngineError::field(
                "limit",
                format!("must be between 1 and {MAX_LIMIT} (0 means the default, {DEFAULT_LIMIT})"),
            ));
        }
        let as_of = int_field(&obj, "timestamp", 0)?;
        if as_of < 0 {
            return Err(EngineError::field(
                "timestamp",
                "must be >= 0 (unix seconds; 0 = latest)",
            ));
        }
        Ok(SnapshotQuery {
            ids,
            subjects,
            unknown,
            sort,
            descending,
            offset: offset as usize,
            limit: limit as usize,
            as_of,
        })
    }
}

/// `field`: any known indicator (requested or not, as the original sorts by
/// any column), or `report_date` (`end_date` sorts the same way).
fn parse_sort_field(f: &str, catalog: &Catalog) -> Result<SortKey, EngineError> {
    match f {
        "report_date" | "end_date" => Ok(SortKey::ReportDate),
        _ => match catalog.indicator(f) {
            Some(ind) => Ok(SortKey::Indicator(ind.id)),
            None => Err(EngineError::field(
                "field",
                format!("unknown sort field {f:?}: use report_date or an indicator id"),
            )),
        },
    }
}

/// `order`: the sign of an integer (-1 descending, 1 ascending, as the
/// original reads any integer), or "desc"/"asc". Zero values never get here.
fn parse_descending(v: &Value) -> Result<bool, EngineError> {
    const EXPECTED: &str = "expected -1, 1, \"desc\" or \"asc\"";
    let sign = match v {
        Value::Number(n) => n.as_i64().map(i64::signum),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "desc" => Some(-1),
            "asc" => Some(1),
            other => other.parse::<i64>().ok().map(i64::signum),
        },
        _ => None,
    };
    match sign {
        Some(-1) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(EngineError::field("order", EXPECTED)),
    }
}

impl PeriodQuery {
    pub fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, EngineError> {
        let obj = parse_object(body)?;
        let ids = parse_ids(&obj, catalog)?;
        let (subjects, unknown) = match given(&obj, "subjects") {
            Some(v) => resolve_subjects(v, catalog)?,
            None => return Err(EngineError::field("subjects", "required")),
        };
        let from = int_field(&obj, "from", 0)?;
        // A Go client that leaves `to` unset sends 0: the end of time.
        let to = int_field(&obj, "to", i64::MAX)?;
        if from > to {
            return Err(EngineError::field(
                "from",
                format!("from ({from}) must be <= to ({to})"),
            ));
        }
        Ok(PeriodQuery {
            ids,
            subjects,
            unknown,
            from,
            to,
        })
    }
}

/// The value of `key` unless absent or null.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// The value of `key` unless absent, null or a zero value. Clients of the
/// original (Go) serialise every field of their request struct, so `""` and
/// `0` mean "not given" there, and here too.
fn given<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    present(obj, key).filter(|v| match v {
        Value::String(s) => !s.trim().is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    })
}

/// A comma-separated string (or an array of strings) as trimmed, non-empty
/// items.
fn string_list<'a>(v: &'a Value, field: &'static str) -> Result<Vec<&'a str>, EngineError> {
    let items: Vec<&str> = match v {
        Value::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for item in a {
                match item {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim()),
                    _ => return Err(EngineError::field(field, "expected a comma-separated string")),
                }
            }
            out
        }
        _ => return Err(EngineError::field(field, "expected a comma-separated string")),
    };
    Ok(items)
}

fn parse_ids(obj: &Map<String, Value>, catalog: &Catalog) -> Result<Vec<IdRef>, EngineError> {
    let v = present(obj, "ids").ok_or_else(|| EngineError::field("ids", "required"))?;
    let codes = string_list(v, "ids")?;
    if codes.is_empty() {
        return Err(EngineError::field("ids", "must name at least one indicator"));
    }
    if codes.len() > MAX_IDS {
        return Err(EngineError::field(
            "ids",
            format!("at most {MAX_IDS} indicators per request"),
        ));
    }
    let mut ids: Vec<IdRef> = Vec::with_capacity(codes.len());
    for code in codes {
        let Some(ind) = catalog.indicator(code) else {
            return Err(EngineError::field("ids", format!("unknown indicator {code:?}")));
        };
        if !ids.iter().any(|i| i.id == ind.id) {
            ids.push(IdRef {
                code: ind.code.clone(),
                id: ind.id,
            });
        }
    }
    Ok(ids)
}

/// `market:code` with a numeric market and an alphanumeric code.
pub fn valid_subject(s: &str) -> bool {
    match s.split_once(':') {
        Some((m, c)) => {
            !m.is_empty()
                && m.len() <= 4
                && m.bytes().all(|b| b.is_ascii_digit())
                && !c.is_empty()
                && c.len() <= 16
                && c.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

type Resolved = (Vec<Arc<SubjectInfo>>, Vec<String>);

fn resolve_subjects(v: &Value, catalog: &Catalog) -> Result<Resolved, EngineError> {
    let names = string_list(v, "subjects")?;
    if names.is_empty() {
        return Err(EngineError::field(
            "subjects",
            "must name at least one market:code",
        ));
    }
    if names.len() > MAX_SUBJECTS {
        return Err(EngineError::field(
            "subjects",
            format!("{} subjects; at most {MAX_SUBJECTS} per request", names.len()),
        ));
    }
    let mut known: Vec<Arc<SubjectInfo>> = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        if !valid_subject(name) {
            return Err(EngineError::field(
                "subjects",
                format!("{name:?} is not market:code (e.g. 33:000001)"),
            ));
        }
        match catalog.subject(name) {
            Some(info) => {
                if !known.iter().any(|k| k.subject == info.subject) {
                    known.push(info.clone());
                }
            }
            None => {
                if !unknown.iter().any(|u| u == name) {
                    unknown.push(name.to_string());
                }
            }
        }
    }
    Ok((known, unknown))
}

/// An integer field: a JSON integer or a string of digits; a zero value
/// (`0`, `""`) is the default.
fn int_field(obj: &Map<String, Value>, key: &'static str, default: i64) -> Result<i64, EngineError> {
    let value = match given(obj, key) {
        None => return Ok(default),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(0) => Ok(default),
        Some(v) => Ok(v),
        None => Err(EngineError::field(key, "expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::Indicator;

    fn catalog() -> Catalog {
        let indicators = ["operating_income", "net_profit", "total_profit"]
            .iter()
            .enumerate()
            .map(|(i, c)| Indicator {
                id: i + 1,
                code: Arc::from(*c),
            })
            .collect();
        let subjects = ["33:000001", "33:000002", "17:600000"]
            .iter()
            .map(|s| SubjectInfo::new(s, "n", "listed", "2000-01-01", "stock"))
            .collect();
        let members = vec![
            ("stock_a_listing_pool".to_string(), "33:000001".to_string()),
            ("stock_a_listing_pool".to_string(), "17:600000".to_string()),
        ];
        Catalog::new(indicators, subjects, members)
    }

    fn snapshot(body: &str) -> Result<SnapshotQuery, String> {
        SnapshotQuery::parse(body.as_bytes(), &catalog()).map_err(|e| e.to_string())
    }

    #[test]
    fn go_zero_values_mean_not_given() {
        // Every field of the original's SnapshotRequest, as Go serialises an
        // unset struct, next to subjects.
        let q = snapshot(
            r#"{"ids":"net_profit","subjects":"33:000001","topic":"","method":"","field":"",
                "order":0,"offset":0,"limit":0,"timestamp":0}"#,
        )
        .expect("accepted");
        assert_eq!(q.subjects.len(), 1);
        assert_eq!(q.sort, SortKey::Indicator(2), "field \"\" -> first id");
        assert!(q.descending, "order 0 -> -1");
        assert_eq!((q.offset, q.limit, q.as_of), (0, 10, 0), "limit 0 -> 10");
        // Next to a topic, and with order "".
        let q = snapshot(r#"{"ids":"net_profit","subjects":"","topic":"stock_a_listing_pool","order":""}"#)
            .expect("accepted");
        assert_eq!(q.subjects.len(), 2);
        assert!(q.descending);
        // Period: to 0 is the end of time.
        let p = PeriodQuery::parse(
            br#"{"ids":"net_profit","subjects":"33:000001","method":"","from":0,"to":0}"#,
            &catalog(),
        )
        .expect("accepted");
        assert_eq!((p.from, p.to), (0, i64::MAX));
    }

    #[test]
    fn field_may_be_any_known_indicator() {
        let q = snapshot(r#"{"ids":"net_profit","subjects":"33:000001","field":"operating_income"}"#)
            .expect("field outside ids");
        assert_eq!(q.sort, SortKey::Indicator(1));
        assert_eq!(q.ids.len(), 1, "the answer still carries only the requested ids");
        for f in ["report_date", "end_date"] {
            let q = snapshot(&format!(
                r#"{{"ids":"net_profit","subjects":"33:000001","field":"{f}"}}"#
            ))
            .expect("date field");
            assert_eq!(q.sort, SortKey::ReportDate);
        }
        let e =
            snapshot(r#"{"ids":"net_profit","subjects":"33:000001","field":"bogus"}"#).expect_err("unknown");
        assert!(e.contains("field") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn order_is_the_sign_of_an_integer() {
        for (order, desc) in [
            ("-1", true),
            ("1", false),
            ("2", false),
            ("-5", true),
            (r#""-1""#, true),
            (r#""3""#, false),
            (r#""DESC""#, true),
            (r#""asc""#, false),
        ] {
            let q = snapshot(&format!(
                r#"{{"ids":"net_profit","subjects":"33:000001","order":{order}}}"#
            ))
            .unwrap_or_else(|e| panic!("order {order}: {e}"));
            assert_eq!(q.descending, desc, "order {order}");
        }
        for bad in [r#""up""#, "1.5", "true", "[1]"] {
            let e = snapshot(&format!(
                r#"{{"ids":"net_profit","subjects":"33:000001","order":{bad}}}"#
            ))
            .expect_err(bad);
            assert!(e.contains("order"), "{e}");
        }
    }

    #[test]
    fn topic_wins_over_subjects_as_in_the_original() {
        let q = snapshot(r#"{"ids":"net_profit","subjects":"33:000002","topic":"stock_a_listing_pool"}"#)
            .expect("both given");
        let got: Vec<&str> = q.subjects.iter().map(|s| &*s.subject).collect();
        assert_eq!(got, ["17:600000", "33:000001"]);
    }

    #[test]
    fn really_wrong_input_is_still_refused() {
        for (body, field) in [
            (
                r#"{"ids":"net_profit","subjects":"33:000001","limit":-1}"#,
                "limit",
            ),
            (
                r#"{"ids":"net_profit","subjects":"33:000001","limit":1001}"#,
                "limit",
            ),
            (
                r#"{"ids":"net_profit","subjects":"33:000001","offset":-1}"#,
                "offset",
            ),
            (
                r#"{"ids":"net_profit","subjects":"33:000001","timestamp":-1}"#,
                "timestamp",
            ),
            (
                r#"{"ids":"net_profit","subjects":"33:000001","method":5}"#,
                "method",
            ),
            (r#"{"ids":"","subjects":"33:000001"}"#, "ids"),
            (r#"{"ids":"net_profit","subjects":"","topic":""}"#, "subjects"),
            (r#"{"ids":"net_profit","topic":"nope"}"#, "topic"),
        ] {
            let e = snapshot(body).expect_err(body);
            assert!(
                e.starts_with(field) || e.contains(&format!("{field}:")),
                "{body}: {e}"
            );
        }
    }

    #[test]
    fn nesting_is_bounded_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[\"[[[["}"#, 2));
        let deep = "[".repeat(100_000);
        assert!(
            matches!(parse_object(deep.as_bytes()), Err(EngineError::BadRequest(m)) if m.contains("nested"))
        );
    }
}
