//! Writes: the typed batch, its validation, and applying it to SQLite.
//!
//! An ingest or delete request becomes one [`Batch`], validated whole
//! against the catalog before anything is written; every problem names the
//! row and field (`records[3].values.net_profit: …`). On the master the
//! batch is applied in one transaction together with its change-log entry
//! and the new data version, then fsync'd (WAL, `synchronous=FULL`) before
//! the reply. A slave applies the same batch, from the master's change log,
//! with the same code, in one transaction with its new applied sequence.
//! In that same transaction the `subject_blob` row of every touched subject
//! is brought up to date (`blob.rs`).
//!
//! Semantics (decided here, written in the README): a row is keyed by
//! (subject, report_date); its report fields are replaced, and its values
//! are merged — an indicator given a number is set, one given `null` is
//! cleared, one not mentioned is left alone. A subject not yet known is
//! created (and joins `stock_a_listing_pool`); a new indicator must be
//! declared in the batch's `indicators` list, and gets its id on the master.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::request::{parse_object, valid_subject};
use crate::model::catalog::{Catalog, LISTING_POOL};
use crate::model::dates;
use crate::server::error::ApiError;
use crate::storage::blob;
use crate::storage::store::StoreError;

pub const MAX_ROWS: usize = 10_000;
/// The pool every subject belongs to.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIndicator {
    /// Assigned by the master when the batch is applied there.
    #[serde(default)]
    pub id: i64,
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub subject: String,
    pub name: Option<String>,
    pub report_date: i64,
    pub end_date: String,
    pub year: String,
    pub period: String,
    pub declare_date: String,
    pub values: BTreeMap<String, Option<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub subject: String,
    pub report_date: i64,
}

/// One write, as validated, applied and replicated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub indicators: Vec<NewIndicator>,
    #[serde(default)]
    pub upserts: Vec<Row>,
    #[serde(default)]
    pub deletes: Vec<Key>,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Rows upserted or deleted.
    pub written: u64,
    /// Subjects whose series changed.
    pub touched: BTreeSet<String>,
    /// Subjects or indicators were created or renamed: reload the catalog.
    pub catalog_changed: bool,
    /// Change in the number of report rows.
    pub records_delta: i64,
}

fn field_err(field: String, reason: impl Into<String>) -> ApiError {
    ApiError::BadRecord {
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
    pub fn from_ingest(body: &[u8], catalog: &Catalog) -> Result<Batch, ApiError> {
        let obj = parse_object(body)?;
        let mut batch = Batch::default();
        let mut declared: HashMap<String, ()> = HashMap::new();
        if let Some(list) = obj.get("indicators").filter(|v| !v.is_null()) {
            let Value::Array(list) = list else {
                return Err(ApiError::field(
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
            Some(_) => return Err(ApiError::field("records", "expected an array")),
            None => return Err(ApiError::field("records", "required")),
        };
        if records.is_empty() {
            return Err(ApiError::field("records", "must hold at least one record"));
        }
        if records.len() > MAX_ROWS {
            return Err(ApiError::field(
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
    pub fn from_delete(body: &[u8]) -> Result<Batch, ApiError> {
        let obj = parse_object(body)?;
        let keys = match obj.get("keys") {
            Some(Value::Array(k)) if !k.is_empty() => k,
            Some(Value::Array(_)) => return Err(ApiError::field("keys", "must hold at least one key")),
            Some(_) => return Err(ApiError::field("keys", "expected an array")),
            None => return Err(ApiError::field("keys", "required")),
        };
        if keys.len() > MAX_ROWS {
            return Err(ApiError::field(
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
) -> Result<Row, ApiError> {
    let at = |f: &str| format!("records[{i}].{f}");
    if !rec.is_object() {
        return Err(field_err(format!("records[{i}]"), "expected an object"));
    }
    let text = |f: &str| -> Result<String, ApiError> {
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

/// Applies `batch` in the open transaction. On the master, call with
/// `assign_ids` so new indicators get their ids (recorded in the batch for
/// the change log); a slave applies the ids it is given.
pub fn apply(tx: &Transaction<'_>, batch: &mut Batch, assign_ids: bool) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    for ind in &mut batch.indicators {
        let existing: Option<i64> = tx
            .query_row("SELECT id FROM indicators WHERE code = ?1", [&ind.code], |r| {
                r.get(0)
            })
            .optional()?;
        match existing {
            Some(id) => ind.id = id,
            None => {
                if assign_ids || ind.id == 0 {
                    ind.id = tx.query_row("SELECT coalesce(max(id), 0) + 1 FROM indicators", [], |r| {
                        r.get(0)
                    })?;
                }
                tx.execute(
                    "INSERT INTO indicators (id, code, name) VALUES (?1, ?2, ?3)",
                    params![ind.id, ind.code, ind.name],
                )?;
                applied.catalog_changed = true;
            }
        }
    }
    let mut ids: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = tx.prepare_cached("SELECT id, code FROM indicators")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            ids.insert(r.get(1)?, r.get(0)?);
        }
    }
    let mut subj = tx.prepare_cached("SELECT name FROM subjects WHERE subject = ?1")?;
    let mut new_subj = tx.prepare_cached(
        "INSERT INTO subjects (subject, market, code, name, status, listing_date, category)
         VALUES (?1, ?2, ?3, ?4, 'listed', '', '')",
    )?;
    let mut rename = tx.prepare_cached("UPDATE subjects SET name = ?2 WHERE subject = ?1")?;
    let mut pool =
        tx.prepare_cached("INSERT OR IGNORE INTO topic_members (topic, subject) VALUES (?1, ?2)")?;
    let mut exists = tx.prepare_cached("SELECT 1 FROM reports WHERE subject = ?1 AND report_date = ?2")?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO reports (subject, report_date, end_date, year, period, declare_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (subject, report_date) DO UPDATE SET
           end_date = excluded.end_date, year = excluded.year,
           period = excluded.period, declare_date = excluded.declare_date",
    )?;
    let mut set_val = tx.prepare_cached(
        "INSERT INTO report_values (subject, report_date, indicator, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subject, report_date, indicator) DO UPDATE SET value = excluded.value",
    )?;
    let mut clear_val = tx.prepare_cached(
        "DELETE FROM report_values WHERE subject = ?1 AND report_date = ?2 AND indicator = ?3",
    )?;
    for row in &batch.upserts {
        let current: Option<String> = subj.query_row([&row.subject], |r| r.get(0)).optional()?;
        match (current, &row.name) {
            (None, name) => {
                let (market, code) = row.subject.split_once(':').unwrap_or(("0", &row.subject));
                let market: i64 = market.parse().unwrap_or(0);
                let name = name.as_deref().unwrap_or(&row.subject);
                new_subj.execute(params![row.subject, market, code, name])?;
                pool.execute(params![LISTING_POOL, row.subject])?;
                applied.catalog_changed = true;
            }
            (Some(old), Some(new)) if &old != new => {
                rename.execute(params![row.subject, new])?;
                applied.catalog_changed = true;
            }
            _ => {}
        }
        if !exists.exists(params![row.subject, row.report_date])? {
            applied.records_delta += 1;
        }
        upsert.execute(params![
            row.subject,
            row.report_date,
            row.end_date,
            row.year,
            row.period,
            row.declare_date
        ])?;
        for (code, v) in &row.values {
            let Some(id) = ids.get(code) else { continue };
            match v {
                Some(x) => set_val.execute(params![row.subject, row.report_date, id, x])?,
                None => clear_val.execute(params![row.subject, row.report_date, id])?,
            };
        }
        applied.written += 1;
        applied.touched.insert(row.subject.clone());
    }
    let mut del_vals =
        tx.prepare_cached("DELETE FROM report_values WHERE subject = ?1 AND report_date = ?2")?;
    let mut del_rep = tx.prepare_cached("DELETE FROM reports WHERE subject = ?1 AND report_date = ?2")?;
    for key in &batch.deletes {
        del_vals.execute(params![key.subject, key.report_date])?;
        let n = del_rep.execute(params![key.subject, key.report_date])?;
        if n > 0 {
            applied.written += 1;
            applied.records_delta -= 1;
            applied.touched.insert(key.subject.clone());
        }
    }
    // The compact form follows the normalized rows, in this transaction.
    let mut changes: HashMap<&str, Vec<blob::Change<'_>>> = HashMap::new();
    for row in &batch.upserts {
        changes
            .entry(row.subject.as_str())
            .or_default()
            .push(blob::Change::Upsert(row));
    }
    for key in &batch.deletes {
        changes
            .entry(key.subject.as_str())
            .or_default()
            .push(blob::Change::Delete(key.report_date));
    }
    for subject in &applied.touched {
        let changes = changes.get(subject.as_str()).map_or(&[][..], Vec::as_slice);
        blob::patch_subject(tx, subject, changes, &ids)?;
    }
    Ok(applied)
}
