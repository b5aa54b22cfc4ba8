//! The compact per-subject form of the data: one `subject_blob` row per
//! subject holding its whole series packed in binary, so a cold load is one
//! indexed read and one decode instead of a row per report plus a row per
//! value.
//!
//! The normalized tables (`reports`, `report_values`) stay the truth; this
//! module owns the packed format and keeping the blobs equal to them:
//! - every write (`write::apply`, on the master and on a slave) brings the
//!   blob of each subject it touched up to date inside the same transaction
//!   — by applying the batch's changes to the decoded blob (`patch_subject`,
//!   the SQL's semantics in Rust; no re-read of the normalized rows), or,
//!   without a usable blob, by rebuilding it from the normalized rows — and
//!   stamps `meta.subject_blob_version` with the new data version;
//! - at open (`store::Store::open_rw`, and after a full-sync restore), a
//!   database whose stamp is not its data version — one written before this
//!   table existed, or by a node that did not keep it — has every blob
//!   rebuilt in one transaction (the upgrade path);
//! - a reader that finds no blob, a table it cannot read, or a format it does
//!   not know falls back to the normalized read (`Store::load_series`).
//!
//! Format (little-endian), version [`FORMAT`]:
//! ```text
//! u8 FORMAT, u32 report count, then per report (oldest first):
//!   i64 report_date, u8 flags,
//!   end_date      unless flags & END_DERIVED (it is the date of report_date)
//!   year          unless flags & YEAR_DERIVED (it is end_date[..4])
//!   period        unless flags & PERIOD_CODED (then Q1..Q4 = bits 2-3)
//!   declare_date  i32 days since 1970 if flags & DECLARE_DAYS, else a string
//!   u32 bitmap bytes B, B bytes: bit i set = indicator id i has a value,
//!   then one f64 per set bit, in id order
//! strings: u32 length + UTF-8 bytes
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::batch::Row;
use crate::model::dates;
use crate::model::series::{Report, Series};

/// Version byte of the packed format; bump it when the layout changes
/// (readers then fall back to the normalized rows until the upgrade path
/// rebuilds the blobs).
pub const FORMAT: u8 = 1;

/// `meta` key: the data version the blobs are known to match.
pub const SYNCED_KEY: &str = "subject_blob_version";

const END_DERIVED: u8 = 1;
const YEAR_DERIVED: u8 = 2;
const PERIOD_CODED: u8 = 16;
const DECLARE_DAYS: u8 = 32;

/// Packs a series (reports sorted by date). Values that are NaN are nulls
/// and take no space.
pub fn encode(series: &Series) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + series.reports.len() * 80);
    out.push(FORMAT);
    out.extend_from_slice(&(series.reports.len() as u32).to_le_bytes());
    for r in series.reports.iter() {
        out.extend_from_slice(&r.report_date.to_le_bytes());
        let mut flags = 0u8;
        let end_derived = r.report_date.rem_euclid(86_400) == 0
            && dates::format_days(r.report_date.div_euclid(86_400)) == *r.end_date;
        if end_derived {
            flags |= END_DERIVED;
        }
        if r.end_date.get(..4) == Some(&*r.year) {
            flags |= YEAR_DERIVED;
        }
        let quarter = match &*r.period {
            "Q1" => Some(0u8),
            "Q2" => Some(1),
            "Q3" => Some(2),
            "Q4" => Some(3),
            _ => None,
        };
        if let Some(q) = quarter {
            flags |= PERIOD_CODED | (q << 2);
        }
        let declare_days = dates::parse_date(&r.declare_date)
            .map(|s| s / 86_400)
            .filter(|d| i32::try_from(*d).is_ok() && dates::format_days(*d) == *r.declare_date);
        if declare_days.is_some() {
            flags |= DECLARE_DAYS;
        }
        out.push(flags);
        if !end_derived {
            push_str(&mut out, &r.end_date);
        }
        if flags & YEAR_DERIVED == 0 {
            push_str(&mut out, &r.year);
        }
        if quarter.is_none() {
            push_str(&mut out, &r.period);
        }
        match declare_days {
            Some(d) => out.extend_from_slice(&(d as i32).to_le_bytes()),
            None => push_str(&mut out, &r.declare_date),
        }
        let last = r.values.iter().rposition(|v| !v.is_nan());
        let bitmap_len = last.map_or(0, |i| i / 8 + 1);
        out.extend_from_slice(&(bitmap_len as u32).to_le_bytes());
        let start = out.len();
        out.resize(start + bitmap_len, 0);
        for (i, v) in r.values.iter().enumerate().take(bitmap_len * 8) {
            if !v.is_nan() {
                out[start + i / 8] |= 1 << (i % 8);
            }
        }
        for v in r.values.iter().filter(|v| !v.is_nan()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Why a blob could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown subject_blob format {0}")]
    Format(u8),
    #[error("subject_blob is truncated or malformed")]
    Malformed,
}

/// Shares the text of dates and labels among the reports one reader thread
/// decodes: most reports of most subjects have the same period ends, years
/// and periods, so a decoded report costs one allocation (its values)
/// rather than five, and a day is formatted once.
pub struct Interner {
    /// Day number → its `YYYY-MM-DD` and its year.
    days: HashMap<i64, (Arc<str>, Arc<str>), BuildHasherDefault<DayHasher>>,
    text: HashMap<Box<str>, Arc<str>>,
    quarters: [Arc<str>; 4],
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            days: HashMap::default(),
            text: HashMap::new(),
            quarters: ["Q1", "Q2", "Q3", "Q4"].map(Arc::from),
        }
    }
}

/// A multiplicative hash for day numbers (the keys are small integers the
/// data chooses, not an attacker: SipHash's cost buys nothing here).
#[derive(Default)]
struct DayHasher(u64);

impl Hasher for DayHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, n: i64) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Entries past which an interner starts over (bounds its memory whatever
/// the data holds).
const INTERNER_MAX: usize = 100_000;

impl Interner {
    /// The text of day `days` and its year.
    fn day(&mut self, days: i64) -> &(Arc<str>, Arc<str>) {
        if self.days.len() >= INTERNER_MAX && !self.days.contains_key(&days) {
            self.days.clear();
        }
        self.days.entry(days).or_insert_with(|| {
            let text = dates::format_days(days);
            let year = Arc::from(text.get(..4).unwrap_or(""));
            (Arc::from(text), year)
        })
    }

    fn text(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.text.get(s) {
            return a.clone();
        }
        if self.text.len() >= INTERNER_MAX {
            self.text.clear();
        }
        let a: Arc<str> = s.into();
        self.text.insert(s.into(), a.clone());
        a
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Malformed)
    }
    fn str(&mut self, interner: &mut Interner) -> Result<Arc<str>, DecodeError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(n)?)
            .map(|s| interner.text(s))
            .map_err(|_| DecodeError::Malformed)
    }
}

/// Unpacks a blob into a series whose value rows are `width` wide
/// (indicator ids at or past `width` are ignored, as in the normalized
/// read).
pub fn decode(blob: &[u8], width: usize, interner: &mut Interner) -> Result<Series, DecodeError> {
    let mut rd = Reader { b: blob };
    let [format] = rd.array()?;
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    let n = u32::from_le_bytes(rd.array()?) as usize;
    // Each report takes at least 15 bytes: refuse counts the blob cannot hold.
    if n > blob.len() / 15 {
        return Err(DecodeError::Malformed);
    }
    let mut reports = Vec::with_capacity(n);
    for _ in 0..n {
        let report_date = i64::from_le_bytes(rd.array()?);
        let [flags] = rd.array()?;
        let (end_date, year) = if flags & END_DERIVED != 0 {
            let (end, year) = interner.day(report_date.div_euclid(86_400));
            let (end, year) = (end.clone(), year.clone());
            if flags & YEAR_DERIVED != 0 {
                (end, year)
            } else {
                (end, rd.str(interner)?)
            }
        } else {
            let end = rd.str(interner)?;
            let year = if flags & YEAR_DERIVED != 0 {
                interner.text(end.get(..4).ok_or(DecodeError::Malformed)?)
            } else {
                rd.str(interner)?
            };
            (end, year)
        };
        let period = if flags & PERIOD_CODED != 0 {
            interner.quarters[usize::from((flags >> 2) & 3)].clone()
        } else {
            rd.str(interner)?
        };
        let declare_date = if flags & DECLARE_DAYS != 0 {
            interner.day(i64::from(i32::from_le_bytes(rd.array()?))).0.clone()
        } else {
            rd.str(interner)?
        };
        let bitmap_len = u32::from_le_bytes(rd.array()?) as usize;
        let bitmap = rd.take(bitmap_len)?;
        let mut values = vec![f64::NAN; width].into_boxed_slice();
        for (byte_i, byte) in bitmap.iter().enumerate() {
            let mut bits = *byte;
            while bits != 0 {
                let id = byte_i * 8 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let v = f64::from_le_bytes(rd.array()?);
                if let Some(slot) = values.get_mut(id) {
                    *slot = v;
                }
            }
        }
        reports.push(Report {
            report_date,
            end_date,
            year,
            period,
            declare_date,
            values,
        });
    }
    if !rd.b.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(Series {
        reports: reports.into_boxed_slice(),
    })
}

/// A report from columns 0–4 (report_date, end_date, year, period,
/// declare_date), with every value null until set.
pub(crate) fn report_from_row(r: &rusqlite::Row<'_>, width: usize) -> rusqlite::Result<Report> {
    Ok(Report {
        report_date: r.get(0)?,
        end_date: r.get::<_, String>(1)?.into(),
        year: r.get::<_, String>(2)?.into(),
        period: r.get::<_, String>(3)?.into(),
        declare_date: r.get::<_, String>(4)?.into(),
        values: vec![f64::NAN; width].into_boxed_slice(),
    })
}

/// The whole series of `subject` from the normalized rows, every indicator
/// id kept (the width is the largest id in the table, plus one).
fn normalized(conn: &Connection, subject: &str) -> rusqlite::Result<Series> {
    let width: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM indicators")?
        .query_row([], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT report_date, end_date, year, period, declare_date FROM reports
         WHERE subject = ?1 ORDER BY report_date",
    )?;
    let width = width.max(0) as usize;
    let mut reports: Vec<Report> = stmt
        .query_map([subject], |r| report_from_row(r, width))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT report_date, indicator, value FROM report_values
         WHERE subject = ?1 ORDER BY report_date, indicator",
    )?;
    let mut rows = stmt.query([subject])?;
    let mut i = 0;
    while let Some(r) = rows.next()? {
        let date: i64 = r.get(0)?;
        let id = r.get::<_, i64>(1)?;
        while i < reports.len() && reports[i].report_date < date {
            i += 1;
        }
        if let Some(rep) = reports.get_mut(i).filter(|rep| rep.report_date == date) {
            if let Some(slot) = usize::try_from(id).ok().and_then(|id| rep.values.get_mut(id)) {
                *slot = r.get(2)?;
            }
        }
    }
    Ok(Series {
        reports: reports.into_boxed_slice(),
    })
}

/// Rewrites the blob of `subject` from its normalized rows (inside the
/// writer's open transaction). A subject with no reports keeps an empty
/// blob, so its cold load is one read too.
pub fn rebuild_subject(conn: &Connection, subject: &str) -> rusqlite::Result<()> {
    let series = normalized(conn, subject)?;
    conn.prepare_cached(
        "INSERT INTO subject_blob (subject, data) VALUES (?1, ?2)
         ON CONFLICT (subject) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![subject, encode(&series)])?;
    Ok(())
}

/// What a write did to one subject, in the order `write::apply` did it.
pub enum Change<'a> {
    Upsert(&'a Row),
    Delete(i64),
}

/// Brings the blob of `subject` up to date after `changes` (inside the
/// writer's transaction), by applying them to the decoded blob with the
/// same semantics as the SQL in `write::apply` — fields replaced, values
/// merged (a number sets, `null` clears), deletes remove — instead of
/// reading the subject's normalized rows back. `ids` maps indicator codes to
/// ids (as `apply` resolved them). No blob, or one this build cannot decode:
/// rebuilt from the normalized rows. The oracle test holds the two ways to
/// the same bytes.
pub fn patch_subject(
    conn: &Connection,
    subject: &str,
    changes: &[Change<'_>],
    ids: &HashMap<String, i64>,
) -> rusqlite::Result<()> {
    let width = ids
        .values()
        .copied()
        .max()
        .and_then(|m| usize::try_from(m).ok())
        .map_or(0, |m| m + 1);
    let current: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM subject_blob WHERE subject = ?1")?
        .query_row([subject], |r| r.get(0))
        .optional()?;
    let Some(series) = current.and_then(|b| decode(&b, width, &mut Interner::default()).ok()) else {
        return rebuild_subject(conn, subject);
    };
    let mut reports = series.reports.into_vec();
    for change in changes {
        match change {
            Change::Upsert(row) => {
                let i = match reports.binary_search_by_key(&row.report_date, |r| r.report_date) {
                    Ok(i) => i,
                    Err(i) => {
                        reports.insert(
                            i,
                            Report {
                                report_date: row.report_date,
                                end_date: Arc::from(""),
                                year: Arc::from(""),
                                period: Arc::from(""),
                                declare_date: Arc::from(""),
                                values: vec![f64::NAN; width].into_boxed_slice(),
                            },
                        );
                        i
                    }
                };
                let r = &mut reports[i];
                r.end_date = row.end_date.as_str().into();
                r.year = row.year.as_str().into();
                r.period = row.period.as_str().into();
                r.declare_date = row.declare_date.as_str().into();
                for (code, v) in &row.values {
                    let slot = ids
                        .get(code)
                        .and_then(|id| usize::try_from(*id).ok())
                        .and_then(|id| r.values.get_mut(id));
                    if let Some(slot) = slot {
                        *slot = match v {
                            // SQLite keeps a REAL that is a whole number as
                            // an integer, so -0.0 reads back as 0.0.
                            Some(x) if *x == 0.0 => 0.0,
                            Some(x) => *x,
                            None => f64::NAN,
                        };
                    }
                }
            }
            Change::Delete(date) => {
                if let Ok(i) = reports.binary_search_by_key(date, |r| r.report_date) {
                    reports.remove(i);
                }
            }
        }
    }
    let series = Series {
        reports: reports.into_boxed_slice(),
    };
    conn.prepare_cached(
        "INSERT INTO subject_blob (subject, data) VALUES (?1, ?2)
         ON CONFLICT (subject) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![subject, encode(&series)])?;
    Ok(())
}

/// After a write that moved the data version from `from` to `to` and
/// rebuilt the blobs of what it touched: if the blobs matched `from`, they
/// now match `to` (same transaction). If they did not, the stamp stays
/// behind and the next open rebuilds them all.
pub fn advance(conn: &Connection, from: u64, to: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?3 AND value = ?1")?
        .execute(params![from.to_string(), to.to_string(), SYNCED_KEY])?;
    Ok(())
}

/// The upgrade path: when the blobs are not known to match this database's
/// data version, rebuilds every one of them in one transaction. Returns the
/// number of subjects rebuilt (0 when they were already in sync).
pub fn ensure_synced(conn: &mut Connection) -> rusqlite::Result<usize> {
    let get = |conn: &Connection, key: &str| -> rusqlite::Result<Option<String>> {
        let mut st = conn.prepare("SELECT value FROM meta WHERE key = ?1")?;
        let mut rows = st.query([key])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    };
    let version = get(conn, "data_version")?.unwrap_or_else(|| "0".into());
    if get(conn, SYNCED_KEY)?.as_deref() == Some(version.as_str()) {
        return Ok(0);
    }
    // Holds the write lock from its start (see `Store::write_transaction`).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM subject_blob", [])?;
    let subjects: Vec<String> = tx
        .prepare("SELECT subject FROM subjects UNION SELECT DISTINCT subject FROM reports")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for s in &subjects {
        rebuild_subject(&tx, s)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![SYNCED_KEY, version],
    )?;
    tx.commit()?;
    Ok(subjects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(date: i64, end: &str, year: &str, period: &str, declare: &str, values: &[f64]) -> Report {
        Report {
            report_date: date,
            end_date: end.into(),
            year: year.into(),
            period: period.into(),
            declare_date: declare.into(),
            values: values.to_vec().into_boxed_slice(),
        }
    }

    fn same(a: &Series, b: &Series) -> bool {
        a.reports.len() == b.reports.len()
            && a.reports.iter().zip(b.reports.iter()).all(|(x, y)| {
                x.report_date == y.report_date
                    && x.end_date == y.end_date
                    && x.year == y.year
                    && x.period == y.period
                    && x.declare_date == y.declare_date
                    && x.values.len() == y.values.len()
                    && x.values
                        .iter()
                        .zip(y.values.iter())
                        .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()))
            })
    }

    #[test]
    fn round_trips_regular_and_irregular_reports() {
        let nan = f64::NAN;
        let s = Series {
            reports: vec![
                report(
                    1_735_603_200,
                    "2024-12-31",
                    "2024",
                    "Q4",
                    "2025-03-20",
                    &[nan, 1.5, -0.0, nan, 7e300],
                ),
                // Nothing derivable: every field stored as text.
                report(
                    1_735_603_201,
                    "odd",
                    "19x",
                    "H1",
                    "not a date",
                    &[nan, nan, nan, nan, nan],
                ),
                report(-86_400, "1969-12-31", "1969", "Q4", "1969-02-30", &[]),
            ]
            .into_boxed_slice(),
        };
        let blob = encode(&s);
        let mut back = decode(&blob, 5, &mut Interner::default()).unwrap();
        // The empty value row comes back as wide as asked, all null.
        assert!(back.reports[2].values.iter().all(|v| v.is_nan()));
        back.reports[2].values = Box::new([]);
        assert!(same(&back, &s), "{back:?}");
        // Narrower: ids past the width are dropped, like the normalized read.
        let narrow = decode(&blob, 2, &mut Interner::default()).unwrap();
        assert_eq!(narrow.reports[0].values.len(), 2);
        assert_eq!(narrow.reports[0].value(1), Some(1.5));
    }

    #[test]
    fn refuses_other_formats_and_damaged_blobs() {
        let s = Series {
            reports: vec![report(
                86_400,
                "1970-01-02",
                "1970",
                "Q1",
                "1970-01-03",
                &[1.0, 2.0],
            )]
            .into_boxed_slice(),
        };
        let mut blob = encode(&s);
        assert!(decode(&blob[..blob.len() - 1], 2, &mut Interner::default()).is_err());
        let mut longer = blob.clone();
        longer.push(0);
        assert!(decode(&longer, 2, &mut Interner::default()).is_err());
        blob[0] = FORMAT + 1;
        assert!(matches!(
            decode(&blob, 2, &mut Interner::default()),
            Err(DecodeError::Format(_))
        ));
        assert!(decode(&[], 2, &mut Interner::default()).is_err());
        assert!(decode(&[FORMAT, 255, 255, 255, 255], 2, &mut Interner::default()).is_err());
    }

    /// Oracle: after random ingests and deletes — new indicators declared
    /// along the way, values set and cleared, reports replaced and removed —
    /// every subject's blob decodes to exactly what plain SQL over the
    /// normalized rows says, on the master and on a slave applying the same
    /// changes; and an older database (no blobs, or blobs left behind by a
    /// writer that did not keep them) gets them rebuilt at open.
    mod oracle {
        use std::collections::BTreeMap;
        use std::path::PathBuf;

        use rand::{Rng, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        use rusqlite::Connection;

        use super::super::*;
        use crate::model::batch::{Batch, Key, NewIndicator, Row};
        use crate::storage::store::Store;

        fn temp_db(name: &str) -> PathBuf {
            let dir = std::env::temp_dir().join(format!("kmt-blob-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir.join("t.db")
        }

        /// What plain SQL says a subject holds: per report date, its fields
        /// and its (indicator id → value bits).
        type Truth = BTreeMap<i64, (String, String, String, String, BTreeMap<i64, u64>)>;

        fn truth(conn: &Connection, subject: &str) -> Truth {
            let mut out = Truth::new();
            let mut st = conn
                .prepare("SELECT report_date, end_date, year, period, declare_date FROM reports WHERE subject = ?1")
                .unwrap();
            let rows = st
                .query_map([subject], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap();
            for row in rows {
                let (d, e, y, p, dd) = row.unwrap();
                out.insert(d, (e, y, p, dd, BTreeMap::new()));
            }
            let mut st = conn
                .prepare("SELECT report_date, indicator, value FROM report_values WHERE subject = ?1")
                .unwrap();
            let rows = st
                .query_map([subject], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?))
                })
                .unwrap();
            for row in rows {
                let (d, id, v) = row.unwrap();
                out.get_mut(&d)
                    .expect("value without report")
                    .4
                    .insert(id, v.to_bits());
            }
            out
        }

        fn decoded(conn: &Connection, subject: &str) -> Option<Truth> {
            let width: i64 = conn
                .query_row("SELECT coalesce(max(id), 0) + 1 FROM indicators", [], |r| {
                    r.get(0)
                })
                .unwrap();
            let data: Vec<u8> = conn
                .query_row(
                    "SELECT data FROM subject_blob WHERE subject = ?1",
                    [subject],
                    |r| r.get(0),
                )
                .ok()?;
            let series = decode(&data, width as usize, &mut Interner::default()).unwrap();
            let mut out = Truth::new();
            for r in series.reports.iter() {
                let values = r
                    .values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_nan())
                    .map(|(i, v)| (i as i64, v.to_bits()))
                    .collect();
                let fields = (r.end_date.to_string(), r.year.to_string(), r.period.to_string());
                let prev = out.insert(
                    r.report_date,
                    (fields.0, fields.1, fields.2, r.declare_date.to_string(), values),
                );
                assert!(prev.is_none(), "duplicate report in blob");
            }
            Some(out)
        }

        fn subjects(conn: &Connection) -> Vec<String> {
            let mut st = conn
                .prepare("SELECT subject FROM subjects UNION SELECT subject FROM reports")
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }

        fn meta(conn: &Connection, key: &str) -> Option<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .ok()
        }

        fn check_all(store: &mut Store, what: &str) {
            let conn = store.conn();
            let subjects = subjects(conn);
            assert!(!subjects.is_empty());
            for s in &subjects {
                assert_eq!(decoded(conn, s).as_ref(), Some(&truth(conn, s)), "{what}: {s}");
            }
            assert_eq!(meta(conn, SYNCED_KEY), meta(conn, "data_version"), "{what}");
        }

        fn random_batch(rng: &mut ChaCha8Rng, round: usize, codes: &mut Vec<String>) -> Batch {
            let mut batch = Batch::default();
            if round % 7 == 3 {
                let code = format!("added_{round}");
                batch.indicators.push(NewIndicator {
                    id: 0,
                    code: code.clone(),
                    name: code.clone(),
                });
                codes.push(code);
            }
            let mut used = std::collections::BTreeSet::new();
            for _ in 0..rng.random_range(1..12) {
                let subject = format!("33:{:06}", rng.random_range(0..8));
                let q = rng.random_range(0..12i64);
                let (year, quarter) = (2015 + q / 4, q % 4);
                let end = ["03-31", "06-30", "09-30", "12-31"][quarter as usize];
                let end_date = format!("{year}-{end}");
                let report_date = dates::parse_date(&end_date).unwrap();
                if !used.insert((subject.clone(), report_date)) {
                    continue;
                }
                if rng.random_bool(0.25) {
                    batch.deletes.push(Key { subject, report_date });
                    continue;
                }
                let mut values = BTreeMap::new();
                for code in codes.iter() {
                    match rng.random_range(0..4) {
                        0 => {}
                        1 => {
                            values.insert(code.clone(), None);
                        }
                        _ => {
                            let v: f64 = rng.random_range(-1e12..1e12);
                            values.insert(code.clone(), Some(if rng.random_bool(0.1) { -0.0 } else { v }));
                        }
                    }
                }
                // Now and then fields nothing can be derived from.
                let odd = rng.random_bool(0.1);
                batch.upserts.push(Row {
                    subject,
                    name: Some(format!("name {}", rng.random_range(0..3))),
                    report_date,
                    end_date: if odd { "odd".into() } else { end_date },
                    year: year.to_string(),
                    period: if odd {
                        "H1".into()
                    } else {
                        format!("Q{}", quarter + 1)
                    },
                    declare_date: if odd {
                        "soon".into()
                    } else {
                        format!("{}-04-30", year + 1)
                    },
                    values,
                });
            }
            batch
        }

        #[test]
        fn blobs_match_the_normalized_rows_after_random_writes() {
            let master_path = temp_db("master");
            let slave_path = temp_db("slave");
            let mut master = Store::open_rw(&master_path).unwrap();
            let mut slave = Store::open_rw(&slave_path).unwrap();
            let mut codes: Vec<String> = ["operating_income", "net_profit"].map(String::from).to_vec();
            let mut seed = Batch::default();
            for code in &codes {
                seed.indicators.push(NewIndicator {
                    id: 0,
                    code: code.clone(),
                    name: code.clone(),
                });
            }
            seed.upserts.push(Row {
                subject: "17:600000".into(),
                name: Some("first".into()),
                report_date: dates::parse_date("2015-03-31").unwrap(),
                end_date: "2015-03-31".into(),
                year: "2015".into(),
                period: "Q1".into(),
                declare_date: "2015-04-30".into(),
                values: BTreeMap::from([("net_profit".to_string(), Some(1.0))]),
            });
            let mut rng = ChaCha8Rng::seed_from_u64(13);
            let mut batch = seed;
            for round in 0..60 {
                let (_, seq, _) = master.write_batch(&mut batch, 1000, 0).unwrap();
                slave
                    .apply_replicated(&mut batch.clone(), seq, None, 0, 1000, None)
                    .unwrap();
                check_all(&mut master, &format!("master after round {round}"));
                check_all(&mut slave, &format!("slave after round {round}"));
                batch = random_batch(&mut rng, round, &mut codes);
            }
            // The slave's blobs are byte for byte the master's.
            let blobs = |store: &mut Store| -> Vec<(String, Vec<u8>)> {
                let mut st = store
                    .conn()
                    .prepare("SELECT subject, data FROM subject_blob ORDER BY subject")
                    .unwrap();
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            };
            assert_eq!(blobs(&mut master), blobs(&mut slave));

            // A full sync from an image made by an older master (no blob
            // table): the restoring writer builds the blobs.
            let old_image = temp_db("old-image");
            master.image_to(&old_image).unwrap();
            {
                let old = Connection::open(&old_image).unwrap();
                old.execute_batch(
                    "DROP TABLE subject_blob; DELETE FROM meta WHERE key = 'subject_blob_version';",
                )
                .unwrap();
            }
            let mut restored = Store::open_rw(&temp_db("restored")).unwrap();
            restored.restore_from(&old_image).unwrap();
            check_all(&mut restored, "after restoring an older image");
            assert_eq!(blobs(&mut restored), blobs(&mut master));

            // Reopening an in-sync database rebuilds nothing.
            drop(master);
            let mut conn = Connection::open(&master_path).unwrap();
            assert_eq!(ensure_synced(&mut conn).unwrap(), 0);

            // A writer that did not keep the blobs (an older build): a value
            // changes, the data version moves, the blobs and stamp do not.
            conn.execute_batch(
                "UPDATE report_values SET value = value + 1;
                 UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'data_version';",
            )
            .unwrap();
            drop(conn);
            let mut reopened = Store::open_rw(&master_path).unwrap();
            check_all(&mut reopened, "after an older writer");

            // A database from before the table existed.
            reopened
                .conn()
                .execute_batch(
                    "DROP TABLE subject_blob; DELETE FROM meta WHERE key = 'subject_blob_version';",
                )
                .unwrap();
            drop(reopened);
            let mut upgraded = Store::open_rw(&master_path).unwrap();
            check_all(&mut upgraded, "after the upgrade");
            // And the reader path uses the blob: same series as the
            // normalized read.
            let width = 64;
            for s in subjects(upgraded.conn()) {
                let from_blob = upgraded.load_blob(&s, width).unwrap().unwrap();
                let normalized = upgraded.load_range(&s, i64::MIN, i64::MAX, width).unwrap();
                assert_eq!(format!("{from_blob:?}"), format!("{normalized:?}"), "{s}");
            }
        }
    }
}
