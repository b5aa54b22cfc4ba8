//! `kamaitachi-node import --from OLD.db --db NEW.db`: a KamaitachiGo
//! database (its one wide table `finance_data`, as written by the original's
//! `tools/generate_sample_db.go` and read by its `sqlite_repository.go`)
//! into this schema.
//!
//! The old table has one row per (subject, report) with one REAL column per
//! indicator. Every column that is not one of the descriptive columns below
//! and has numeric affinity becomes an indicator (the standard ones keep
//! their ids; others are added after them). Each row is checked the way an
//! ingest row is: a `market:code` subject, a `report_date` at 00:00 UTC, an
//! `end_date` that is that day (derived when NULL), a quarter (`Q1`–`Q4`,
//! else derived from a quarter-end `end_date`), finite numbers or NULL. A
//! row that fails is reported by its id and skipped, or, with `--strict`,
//! the import is refused. Of several rows for one (subject, report_date) the
//! last (highest id) wins, as a later upsert would.
//!
//! The new database is built in a temporary file next to `NEW.db` and renamed
//! into place only when complete, so an interrupted import leaves nothing
//! half-written at `NEW.db`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::engine::request::valid_subject;
use crate::model::catalog::{LISTING_POOL, STANDARD_INDICATORS};
use crate::model::dates;
use crate::storage::db_file;
use crate::storage::store::{Store, SCHEMA_VERSION};

/// The old table.
const TABLE: &str = "finance_data";

/// Columns of the old table that describe a row rather than hold a value.
const DESCRIPTIVE: &[&str] = &[
    "id",
    "stock_code",
    "market_code",
    "subject_key",
    "stock_name",
    "report_date",
    "end_date",
    "year",
    "period",
    "category",
    "topic",
];

/// What the original answered for every subject: it had no status or
/// listing date of its own.
const LEGACY_STATUS: &str = "213001";
const LEGACY_CATEGORY: &str = "stock";

/// Bad rows printed one by one before the rest are only counted.
const REPORTED_ROWS: usize = 100;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub from: PathBuf,
    pub db: PathBuf,
    /// Refuse the whole import on the first bad row.
    pub strict: bool,
    /// Replace `db` if it exists.
    pub force: bool,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub rows_read: u64,
    pub reports: u64,
    pub values: u64,
    pub subjects: u64,
    /// Rows replaced by a later row for the same (subject, report_date).
    pub superseded: u64,
    /// `(row id, reason)` of each skipped row.
    pub skipped: Vec<(i64, String)>,
    /// Indicator codes, in id order.
    pub indicators: Vec<String>,
    /// Columns that were neither descriptive nor numeric, left out.
    pub ignored_columns: Vec<String>,
}

/// Imports `opts.from` into `opts.db`.
pub fn import(opts: &ImportOptions) -> anyhow::Result<ImportSummary> {
    if same_file(&opts.from, &opts.db) {
        bail!("--from and --db name the same file");
    }
    let old = open_old(&opts.from)?;
    let layout = Layout::read(&old, &opts.from)?;
    db_file::write_whole(&opts.db, ".import-tmp", opts.force, |tmp| {
        build(&old, &layout, opts, tmp)
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn open_old(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!("--from {}: no such file", path.display());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).with_context(|| format!("--from {}", path.display()))
}

/// Which columns of the old table hold what.
struct Layout {
    columns: BTreeSet<String>,
    /// Indicator columns: (column, indicator id), in id order.
    indicators: Vec<(String, usize)>,
    ignored: Vec<String>,
}

impl Layout {
    fn read(old: &Connection, path: &Path) -> anyhow::Result<Layout> {
        let exists: Option<i64> = old
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [TABLE],
                |r| r.get(0),
            )
            .optional()
            .with_context(|| format!("--from {}: not a readable SQLite database", path.display()))?;
        if exists.is_none() {
            bail!(
                "--from {}: no {TABLE} table (is it a KamaitachiGo database?)",
                path.display()
            );
        }
        let mut stmt = old.prepare(&format!("PRAGMA table_info({TABLE})"))?;
        let cols: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
            .collect::<Result<_, _>>()?;
        let columns: BTreeSet<String> = cols.iter().map(|(n, _)| n.clone()).collect();
        for needed in ["subject_key", "report_date"] {
            if !columns.contains(needed) {
                bail!("--from {}: {TABLE} has no {needed} column", path.display());
            }
        }
        let mut indicators = Vec::new();
        let mut ignored = Vec::new();
        let mut next_id = STANDARD_INDICATORS.len() + 1;
        for (name, decl) in cols {
            if DESCRIPTIVE.contains(&name.as_str()) {
                continue;
            }
            if !numeric_affinity(&decl) || !valid_indicator_code(&name) {
                ignored.push(name);
                continue;
            }
            let id = match STANDARD_INDICATORS.iter().position(|(c, _)| *c == name) {
                Some(i) => i + 1,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            indicators.push((name, id));
        }
        indicators.sort_by_key(|(_, id)| *id);
        Ok(Layout {
            columns,
            indicators,
            ignored,
        })
    }

    fn has(&self, column: &str) -> bool {
        self.columns.contains(column)
    }

    /// The SELECT that reads every row in (subject, report_date, id) order.
    /// Columns the table lacks are read as NULL. Column names come from the
    /// table itself and are quoted.
    fn select(&self) -> String {
        let col = |c: &str| {
            if self.has(c) {
                format!("\"{c}\"")
            } else {
                "NULL".to_string()
            }
        };
        let id = if self.has("id") { "\"id\"" } else { "rowid" };
        let mut sql = format!(
            "SELECT {id}, subject_key, report_date, {}, {}, {}, {}, {}",
            col("end_date"),
            col("period"),
            col("stock_name"),
            col("category"),
            col("topic"),
        );
        for (c, _) in &self.indicators {
            sql.push_str(&format!(", \"{c}\""));
        }
        sql.push_str(&format!(" FROM {TABLE} ORDER BY subject_key, report_date, {id}"));
        sql
    }
}

/// SQLite's rules for a declared type with INTEGER, REAL or NUMERIC affinity
/// (or none declared).
fn numeric_affinity(decl: &str) -> bool {
    let d = decl.to_ascii_uppercase();
    if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") || d.contains("BLOB") {
        return false;
    }
    true
}

fn valid_indicator_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// One old row, checked.
struct Row {
    id: i64,
    subject: String,
    report_date: i64,
    end_date: String,
    year: String,
    period: String,
    name: Option<String>,
    category: Option<String>,
    topic: Option<String>,
    /// One per indicator column, in `Layout::indicators` order.
    values: Vec<Option<f64>>,
}

fn text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).trim().to_string()).filter(|s| !s.is_empty()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Reads and checks the row under `r`; `Err((id, reason))` when it is bad.
fn check_row(r: &rusqlite::Row<'_>, layout: &Layout) -> Result<Row, (i64, String)> {
    let id: i64 = r.get(0).unwrap_or(-1);
    let bad = |reason: String| (id, reason);
    let get = |i: usize| r.get_ref(i).map_err(|e| (id, format!("unreadable: {e}")));
    let subject = text(get(1)?).unwrap_or_default();
    if !valid_subject(&subject) {
        return Err(bad(format!("subject_key {subject:?} is not market:code")));
    }
    let report_date = match get(2)? {
        ValueRef::Integer(i) => i,
        ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 1e15 => f as i64,
        other => return Err(bad(format!("report_date {:?} is not unix seconds", text(other)))),
    };
    if report_date.rem_euclid(86_400) != 0 {
        return Err(bad(format!(
            "report_date {report_date} is not 00:00 UTC of a day"
        )));
    }
    let days = report_date / 86_400;
    let (y, m, d) = dates::civil_from_days(days);
    if !(1900..=2200).contains(&y) {
        return Err(bad(format!("report_date {report_date} is outside 1900..2200")));
    }
    let end_date = match text(get(3)?) {
        None => dates::format_days(days),
        Some(e) => match dates::parse_date(&e) {
            None => return Err(bad(format!("end_date {e:?} is not a date (YYYY-MM-DD)"))),
            Some(secs) if secs != report_date => {
                return Err(bad(format!(
                    "end_date {e:?} is not the day of report_date {report_date} ({})",
                    dates::format_days(days)
                )))
            }
            Some(_) => e,
        },
    };
    let period = match text(get(4)?).map(|p| p.to_ascii_uppercase()) {
        Some(p) if matches!(p.as_str(), "Q1" | "Q2" | "Q3" | "Q4") => p,
        other => match (m, d) {
            (3, 31) => "Q1".into(),
            (6, 30) => "Q2".into(),
            (9, 30) => "Q3".into(),
            (12, 31) => "Q4".into(),
            _ => {
                return Err(bad(format!(
                    "period {:?} is not Q1-Q4 and end_date {end_date} is not a quarter end",
                    other.unwrap_or_default()
                )))
            }
        },
    };
    let mut values = Vec::with_capacity(layout.indicators.len());
    for (i, (column, _)) in layout.indicators.iter().enumerate() {
        let v = match get(8 + i)? {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(n as f64),
            ValueRef::Real(f) => Some(f),
            ValueRef::Text(t) => {
                let s = String::from_utf8_lossy(t);
                match s.trim().parse::<f64>() {
                    Ok(f) => Some(f),
                    Err(_) => return Err(bad(format!("{column} {s:?} is not a number"))),
                }
            }
            ValueRef::Blob(_) => return Err(bad(format!("{column} is a blob, not a number"))),
        };
        if let Some(f) = v {
            if !f.is_finite() {
                return Err(bad(format!("{column} {f} is not a finite number")));
            }
        }
        values.push(v);
    }
    Ok(Row {
        id,
        subject,
        report_date,
        end_date,
        year: y.to_string(),
        period,
        name: text(get(5)?),
        category: text(get(6)?),
        topic: text(get(7)?),
        values,
    })
}

/// A subject as its rows describe it (the last row's name and category).
#[derive(Default)]
struct SubjectRow {
    name: Option<String>,
    category: Option<String>,
    topics: BTreeSet<String>,
}

fn build(
    old: &Connection,
    layout: &Layout,
    opts: &ImportOptions,
    tmp: &Path,
) -> anyhow::Result<ImportSummary> {
    let total: i64 = old.query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| r.get(0))?;
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("import {bar:40} {pos}/{len} rows ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = ImportSummary {
        ignored_columns: layout.ignored.clone(),
        ..ImportSummary::default()
    };

    let mut store = Store::open_rw(tmp)?;
    let conn = store.conn();
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut ind = tx.prepare("INSERT INTO indicators (id, code, name) VALUES (?1, ?2, ?3)")?;
        let mut codes: BTreeMap<usize, (String, String)> = STANDARD_INDICATORS
            .iter()
            .enumerate()
            .map(|(i, (c, n))| (i + 1, (c.to_string(), n.to_string())))
            .collect();
        for (c, id) in &layout.indicators {
            codes.entry(*id).or_insert_with(|| (c.clone(), c.clone()));
        }
        for (id, (code, name)) in &codes {
            ind.execute(params![*id as i64, code, name])?;
        }
        summary.indicators = codes.into_values().map(|(c, _)| c).collect();

        let mut rep = tx.prepare(
            "INSERT INTO reports (subject, report_date, end_date, year, period, declare_date)
             VALUES (?1, ?2, ?3, ?4, ?5, '')",
        )?;
        let mut val = tx.prepare(
            "INSERT INTO report_values (subject, report_date, indicator, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut subjects: BTreeMap<String, SubjectRow> = BTreeMap::new();
        let mut write = |row: Row, summary: &mut ImportSummary| -> rusqlite::Result<()> {
            rep.execute(params![
                row.subject,
                row.report_date,
                row.end_date,
                row.year,
                row.period
            ])?;
            summary.reports += 1;
            for (v, (_, id)) in row.values.iter().zip(&layout.indicators) {
                if let Some(v) = v {
                    val.execute(params![row.subject, row.report_date, *id as i64, v])?;
                    summary.values += 1;
                }
            }
            let s = subjects.entry(row.subject).or_default();
            if row.name.is_some() {
                s.name = row.name;
            }
            if row.category.is_some() {
                s.category = row.category;
            }
            s.topics
                .insert(row.topic.unwrap_or_else(|| LISTING_POOL.to_string()));
            Ok(())
        };

        let mut stmt = old.prepare(&layout.select())?;
        let mut rows = stmt.query([])?;
        // Rows come in (subject, report_date, id) order: the last of each
        // key is written when the key changes.
        let mut pending: Option<Row> = None;
        while let Some(r) = rows.next()? {
            summary.rows_read += 1;
            bar.inc(1);
            let row = match check_row(r, layout) {
                Ok(row) => row,
                Err((id, reason)) => {
                    if opts.strict {
                        bar.finish_and_clear();
                        bail!("row id {id}: {reason}; nothing imported (--strict)");
                    }
                    summary.skipped.push((id, reason));
                    continue;
                }
            };
            match pending.take() {
                Some(p) if p.subject == row.subject && p.report_date == row.report_date => {
                    summary.superseded += 1;
                    tracing::debug!("row id {} superseded by row id {}", p.id, row.id);
                }
                Some(p) => write(p, &mut summary)?,
                None => {}
            }
            pending = Some(row);
        }
        if let Some(p) = pending {
            write(p, &mut summary)?;
        }

        let mut subj = tx.prepare(
            "INSERT INTO subjects (subject, market, code, name, status, listing_date, category)
             VALUES (?1, ?2, ?3, ?4, ?5, '', ?6)",
        )?;
        let mut topic = tx.prepare("INSERT OR IGNORE INTO topic_members (topic, subject) VALUES (?1, ?2)")?;
        for (subject, s) in &subjects {
            let (market, code) = subject.split_once(':').unwrap_or(("0", subject.as_str()));
            let market: i64 = market.parse().unwrap_or(0);
            let name = s.name.as_deref().unwrap_or(subject);
            let category = s.category.as_deref().unwrap_or(LEGACY_CATEGORY);
            subj.execute(params![subject, market, code, name, LEGACY_STATUS, category])?;
            topic.execute(params![LISTING_POOL, subject])?;
            for t in &s.topics {
                topic.execute(params![t, subject])?;
            }
        }
        summary.subjects = subjects.len() as u64;
        summary.skipped.sort_by_key(|(id, _)| *id);

        let dataset_id = rand::random::<u64>() >> 1;
        let mut meta = tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        meta.execute(params!["dataset_id", dataset_id.to_string()])?;
        meta.execute(params!["data_version", "1"])?;
        meta.execute(params!["schema_version", SCHEMA_VERSION.to_string()])?;
        meta.execute(params!["imported_from", opts.from.display().to_string()])?;
    }
    tx.commit()?;
    bar.finish_and_clear();
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    drop(store);
    Ok(summary)
}

/// Prints what an import did (and each skipped row, up to a bound) to
/// stderr.
pub fn print_summary(s: &ImportSummary, opts: &ImportOptions) {
    for (id, reason) in s.skipped.iter().take(REPORTED_ROWS) {
        eprintln!("import: row id {id}: {reason}; skipped");
    }
    if s.skipped.len() > REPORTED_ROWS {
        eprintln!(
            "import: … and {} more rows skipped",
            s.skipped.len() - REPORTED_ROWS
        );
    }
    if !s.ignored_columns.is_empty() {
        eprintln!(
            "import: columns left out (not numeric): {}",
            s.ignored_columns.join(", ")
        );
    }
    eprintln!(
        "import: {} -> {}: {} rows read, {} reports of {} subjects, {} values, {} rows skipped, {} superseded by a later row; indicators: {}",
        opts.from.display(),
        opts.db.display(),
        s.rows_read,
        s.reports,
        s.subjects,
        s.values,
        s.skipped.len(),
        s.superseded,
        s.indicators.join(",")
    );
}
