//! Parsing and validating request bodies into typed queries.
//!
//! Nothing here touches data beyond the in-memory [`Catalog`]: every rule of
//! the contract (ids must exist, sort field must be requested, limits, from
//! <= to, one of subjects/topic) is checked before any work is done, and each
//! failure names its field. The sort field becomes an enum, so it can never
//! reach SQL text.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::catalog::{Catalog, SubjectInfo};
use crate::error::ApiError;

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
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("empty body: expected a JSON object".into()));
    }
    if nesting_exceeds(body, MAX_DEPTH) {
        return Err(ApiError::BadRequest(format!(
            "body is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest("body must be a JSON object".into())),
        Err(e) => Err(ApiError::BadRequest(format!("body is not valid JSON: {e}"))),
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
    pub fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, ApiError> {
        let obj = parse_object(body)?;
        let ids = parse_ids(&obj, catalog)?;
        if let Some(m) = obj.get("method") {
            if !m.is_string() && !m.is_null() {
                return Err(ApiError::field(
                    "method",
                    "expected a string such as \"market:code\"",
                ));
            }
        }
        let (subjects, unknown) = match (present(&obj, "subjects"), present(&obj, "topic")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::field(
                    "subjects",
                    "give either subjects or topic, not both",
                ))
            }
            (None, None) => return Err(ApiError::field("subjects", "required (or topic)")),
            (Some(v), None) => resolve_subjects(v, catalog)?,
            (None, Some(Value::String(t))) => match catalog.topic(t.trim()) {
                Some(members) => (members.to_vec(), Vec::new()),
                None => return Err(ApiError::field("topic", format!("unknown topic {:?}", t.trim()))),
            },
            (None, Some(_)) => return Err(ApiError::field("topic", "expected a string")),
        };
        let sort = match present(&obj, "field") {
            None => SortKey::Indicator(ids[0].id),
            Some(Value::String(f)) => {
                let f = f.trim();
                if f == "report_date" {
                    SortKey::ReportDate
                } else if let Some(i) = ids.iter().find(|i| &*i.code == f) {
                    SortKey::Indicator(i.id)
                } else {
                    return Err(ApiError::field(
                        "field",
                        format!("{f:?} is not sortable: use report_date or one of the requested ids"),
                    ));
                }
            }
            Some(_) => return Err(ApiError::field("field", "expected a string")),
        };
        let descending = match present(&obj, "order") {
            None => true,
            Some(v) => match v {
                Value::Number(n) if n.as_i64() == Some(-1) => true,
                Value::Number(n) if n.as_i64() == Some(1) => false,
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "-1" | "desc" => true,
                    "1" | "asc" => false,
                    _ => return Err(ApiError::field("order", "expected -1, 1, \"desc\" or \"asc\"")),
                },
                _ => return Err(ApiError::field("order", "expected -1, 1, \"desc\" or \"asc\"")),
            },
        };
        let offset = int_field(&obj, "offset", 0)?;
        if offset < 0 {
            return Err(ApiError::field("offset", "must be >= 0"));
        }
        let limit = int_field(&obj, "limit", DEFAULT_LIMIT)?;
        if !(0..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::field(
                "limit",
                format!("must be between 0 and {MAX_LIMIT}"),
            ));
        }
        let as_of = int_field(&obj, "timestamp", 0)?;
        if as_of < 0 {
            return Err(ApiError::field(
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

impl PeriodQuery {
    pub fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, ApiError> {
        let obj = parse_object(body)?;
        let ids = parse_ids(&obj, catalog)?;
        let (subjects, unknown) = match present(&obj, "subjects") {
            Some(v) => resolve_subjects(v, catalog)?,
            None => return Err(ApiError::field("subjects", "required")),
        };
        let from = int_field(&obj, "from", 0)?;
        let to = int_field(&obj, "to", i64::MAX)?;
        if from > to {
            return Err(ApiError::field(
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

/// A comma-separated string (or an array of strings) as trimmed, non-empty
/// items.
fn string_list<'a>(v: &'a Value, field: &'static str) -> Result<Vec<&'a str>, ApiError> {
    let items: Vec<&str> = match v {
        Value::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for item in a {
                match item {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim()),
                    _ => return Err(ApiError::field(field, "expected a comma-separated string")),
                }
            }
            out
        }
        _ => return Err(ApiError::field(field, "expected a comma-separated string")),
    };
    Ok(items)
}

fn parse_ids(obj: &Map<String, Value>, catalog: &Catalog) -> Result<Vec<IdRef>, ApiError> {
    let v = present(obj, "ids").ok_or_else(|| ApiError::field("ids", "required"))?;
    let codes = string_list(v, "ids")?;
    if codes.is_empty() {
        return Err(ApiError::field("ids", "must name at least one indicator"));
    }
    if codes.len() > MAX_IDS {
        return Err(ApiError::field(
            "ids",
            format!("at most {MAX_IDS} indicators per request"),
        ));
    }
    let mut ids: Vec<IdRef> = Vec::with_capacity(codes.len());
    for code in codes {
        let Some(ind) = catalog.indicator(code) else {
            return Err(ApiError::field("ids", format!("unknown indicator {code:?}")));
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

fn resolve_subjects(v: &Value, catalog: &Catalog) -> Result<Resolved, ApiError> {
    let names = string_list(v, "subjects")?;
    if names.is_empty() {
        return Err(ApiError::field("subjects", "must name at least one market:code"));
    }
    if names.len() > MAX_SUBJECTS {
        return Err(ApiError::field(
            "subjects",
            format!("{} subjects; at most {MAX_SUBJECTS} per request", names.len()),
        ));
    }
    let mut known: Vec<Arc<SubjectInfo>> = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        if !valid_subject(name) {
            return Err(ApiError::field(
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

/// An integer field: a JSON integer or a string of digits.
fn int_field(obj: &Map<String, Value>, key: &'static str, default: i64) -> Result<i64, ApiError> {
    match present(obj, key) {
        None => Ok(default),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::field(key, "expected an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::field(key, "expected an integer")),
        Some(_) => Err(ApiError::field(key, "expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_bounded_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[\"[[[["}"#, 2));
        let deep = "[".repeat(100_000);
        assert!(
            matches!(parse_object(deep.as_bytes()), Err(ApiError::BadRequest(m)) if m.contains("nested"))
        );
    }
}
