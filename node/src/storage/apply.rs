//! Applying a validated [`Batch`] to SQLite, in a transaction the caller
//! (the one writer, `storage/writer.rs`) opened.
//!
//! On the master the batch is applied in one transaction together with its
//! change-log entry and the new data version, then fsync'd (WAL,
//! `synchronous=FULL`) before the reply. A slave applies the same batch,
//! from the master's change log, with the same code, in one transaction
//! with its new applied sequence. In that same transaction the
//! `subject_blob` row of every touched subject is brought up to date
//! (`blob.rs`).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use crate::model::batch::{Applied, Batch};
use crate::model::catalog::LISTING_POOL;
use crate::storage::blob;
use crate::storage::error::StoreError;

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
