//! An ingest or delete request body becomes one [`Batch`], validated whole
//! against the catalog before anything is written; every problem names the
//! row and field (`records[3].values.net_profit: …`).
//!
//! Semantics (decided here, written in the README): a row is keyed by
//! (subject, report_date); its report fields are replaced, and its values
//! are merged — an indicator given a number is set, one given `null` is
//! cleared, one not mentioned is left alone. A subject not yet known is
//! created (and joins `stock_a_listing_pool`); a new indicator must be
//! declared in the batch's `indicators` list, and gets its id on the master.
//!
//! The batch type itself is model (`model/batch.rs`); this is input
//! validation, so it returns the engine's [`EngineError`]. The parsers are
//! an `impl Batch` block here — an inherent impl may live in any module of
//! the crate — so callers still write `Batch::from_ingest`, and the model
//! stays free of serde_json `Value` walking and of the engine's error.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::engine::error::EngineError;
use crate::engine::request::{parse_object, valid_subject};
use crate::model::batch::{Batch, Key, NewIndicator, Row, MAX_ROWS};
use crate::model::catalog::Catalog;
use crate::model::dates;

fn field_err(field: String, reason: impl Into<String>) -> EngineError {
    EngineError::BadRecord {
        field,
        reason: reason.into(),
    }
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Batch {
    /// `POST …/ingest`: `{"indicators": [...]?, "records": [...]}`.
    pub fn from_ingest(body: &[u8], catalog: &Catalog) -> Result<Batch, EngineError> {
        let obj = parse_object(body)?;
        let mut batch = Batch::default();
        let mut declared: HashMap<String, ()> = HashMap::new();
        if let Some(list) = obj.get("indicators").filter(|v| !v.is_null()) {
            let Value::Array(list) = list else {
                return Err(EngineError::field(
                    "indicators",
                    "expected an array of {\"id\",\"name\"}",
                ));
            };
            for (i, item) in list.iter().enumerate() {
                let code = item["id"].as_str().unwrap_or("");
                if !valid_code(code) {
                    return Err(field_err(
                        format!("indicators[{i}].id"),
                        "expected lowercase letters, digits and _ (1-64)",
                    ));
                }
                let name = item["name"].as_str().unwrap_or(code).to_string();
                if catalog.indicator(code).is_none() && declared.insert(code.to_string(), ()).is_none() {
                    batch.indicators.push(NewIndicator {
                        id: 0,
                        code: code.to_string(),
                        name,
                    });
                }
            }
        }
        let records = match obj.get("records") {
            Some(Value::Array(r)) => r,
            Some(_) => return Err(EngineError::field("records", "expected an array")),
            None => return Err(EngineError::field("records", "required")),
        };
        if records.is_empty() {
            return Err(EngineError::field("records", "must hold at least one record"));
        }
        if records.len() > MAX_ROWS {
            return Err(EngineError::field(
                "records",
                format!("{} records; at most {MAX_ROWS} per batch", records.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, rec) in records.iter().enumerate() {
            let row = parse_row(i, rec, catalog, &declared)?;
            if !seen.insert((row.subject.clone(), row.report_date)) {
                return Err(field_err(
                    format!("records[{i}]"),
                    format!(
                        "duplicate of an earlier record for {} at {}",
                        row.subject, row.report_date
                    ),
                ));
            }
            batch.upserts.push(row);
        }
        Ok(batch)
    }

    /// `POST …/delete`: `{"keys": [{"subject", "report_date"}]}`.
    pub fn from_delete(body: &[u8]) -> Result<Batch, EngineError> {
        let obj = parse_object(body)?;
        let keys = match obj.get("keys") {
            Some(Value::Array(k)) if !k.is_empty() => k,
            Some(Value::Array(_)) => return Err(EngineError::field("keys", "must hold at least one key")),
            Some(_) => return Err(EngineError::field("keys", "expected an array")),
            None => return Err(EngineError::field("keys", "required")),
        };
        if keys.len() > MAX_ROWS {
            return Err(EngineError::field(
                "keys",
                format!("at most {MAX_ROWS} keys per batch"),
            ));
        }
        let mut batch = Batch::default();
        for (i, k) in keys.iter().enumerate() {
            let subject = k["subject"].as_str().unwrap_or("");
            if !valid_subject(subject) {
                return Err(field_err(
                    format!("keys[{i}].subject"),
                    "expected market:code (e.g. 33:000001)",
                ));
            }
            let Some(report_date) = k["report_date"].as_i64().filter(|d| *d >= 0) else {
                return Err(field_err(
                    format!("keys[{i}].report_date"),
                    "expected unix seconds (integer >= 0)",
                ));
            };
            batch.deletes.push(Key {
                subject: subject.to_string(),
                report_date,
            });
        }
        Ok(batch)
    }
}

fn parse_row(
    i: usize,
    rec: &Value,
    catalog: &Catalog,
    declared: &HashMap<String, ()>,
) -> Result<Row, EngineError> {
    let at = |f: &str| format!("records[{i}].{f}");
    if !rec.is_object() {
        return Err(field_err(format!("records[{i}]"), "expected an object"));
    }
    let text = |f: &str| -> Result<String, EngineError> {
        match &rec[f] {
            Value::String(s) => Ok(s.trim().to_string()),
            _ => Err(field_err(at(f), "expected a string")),
        }
    };
    let subject = text("subject")?;
    if !valid_subject(&subject) {
        return Err(field_err(
            at("subject"),
            format!("{subject:?} is not market:code (e.g. 33:000001)"),
        ));
    }
    let name = match &rec["name"] {
        Value::Null => None,
        Value::String(s) if !s.trim().is_empty() && s.len() <= 200 => Some(s.trim().to_string()),
        _ => {
            return Err(field_err(
                at("name"),
                "expected a non-empty string of at most 200 bytes",
            ))
        }
    };
    if name.is_none() && catalog.subject(&subject).is_none() {
        return Err(field_err(
            at("name"),
            format!("required for the new subject {subject}"),
        ));
    }
    let end_date = text("end_date")?;
    let Some(end_secs) = dates::parse_date(&end_date) else {
        return Err(field_err(
            at("end_date"),
            format!("{end_date:?} is not a date (YYYY-MM-DD)"),
        ));
    };
    let report_date = match rec["report_date"].as_i64() {
        Some(d) if d == end_secs => d,
        Some(d) => {
            return Err(field_err(
                at("report_date"),
                format!("{d} is not 00:00 UTC of end_date {end_date} ({end_secs})"),
            ))
        }
        None => return Err(field_err(at("report_date"), "expected unix seconds (integer)")),
    };
    let year = text("year")?;
    if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) || !end_date.starts_with(&year) {
        return Err(field_err(
            at("year"),
            format!("{year:?} is not the year of end_date {end_date}"),
        ));
    }
    let period = text("period")?;
    if !matches!(period.as_str(), "Q1" | "Q2" | "Q3" | "Q4") {
        return Err(field_err(at("period"), "expected Q1, Q2, Q3 or Q4"));
    }
    let declare_date = text("declare_date")?;
    if dates::parse_date(&declare_date).is_none() {
        return Err(field_err(
            at("declare_date"),
            format!("{declare_date:?} is not a date (YYYY-MM-DD)"),
        ));
    }
    let Value::Object(vals) = &rec["values"] else {
        return Err(field_err(
            at("values"),
            "expected an object of indicator: number|null",
        ));
    };
    let mut values = BTreeMap::new();
    for (code, v) in vals {
        let f = format!("values.{code}");
        if catalog.indicator(code).is_none() && !declared.contains_key(code) {
            return Err(field_err(
                at(&f),
                format!("unknown indicator {code:?} (declare it in \"indicators\")"),
            ));
        }
        let v = match v {
            Value::Null => None,
            Value::Number(n) => match n.as_f64().filter(|x| x.is_finite()) {
                Some(x) => Some(x),
                None => return Err(field_err(at(&f), "expected a finite number or null")),
            },
            _ => return Err(field_err(at(&f), "expected a finite number or null")),
        };
        values.insert(code.clone(), v);
    }
    Ok(Row {
        subject,
        name,
        report_date,
        end_date,
        year,
        period,
        declare_date,
        values,
    })
}
