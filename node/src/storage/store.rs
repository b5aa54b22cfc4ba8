//! SQLite: the durable copy of the data, its schema, and the threads that
//! read it.
//!
//! Layout (all `WITHOUT ROWID`, keyed the way questions are asked):
//! `reports(subject, report_date)` answers "latest report on or before T" and
//! "reports in [from, to]" as index range scans; `report_values(subject,
//! report_date, indicator)` holds one row per non-null value, so the indicator
//! set is data (`indicators`), not columns. `meta` carries the dataset id and
//! the data version a cache dump is checked against. `changelog` holds the
//! master's recent writes, by sequence, for the slaves (see `writer.rs`,
//! `replication.rs`); the data version is the sequence of the last write.
//! `subject_blob` holds each subject's whole series packed in one row, kept
//! equal to the normalized rows by the writer (`blob.rs`), so a cold load of
//! a series is one indexed read; the normalized rows remain the truth and
//! the fallback.
//!
//! SQLite calls block, and a blocking call inside a may coroutine stalls every
//! socket on its worker thread. So reads run on dedicated OS threads, each
//! with its own read-only connection (WAL lets them run in parallel), behind
//! [`ReadPool`]; a coroutine hands a job over and waits on a may channel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::model::batch::{Applied, Batch};
use crate::model::catalog::{Catalog, Indicator, SubjectInfo};
use crate::model::series::{Report, Series};
use crate::storage::apply;
use crate::storage::blob;
use crate::storage::error::StoreError;
use crate::storage::pool::WorkerPool;

pub const SCHEMA_VERSION: i64 = 1;

/// Bytes of the database file a reader maps (`PRAGMA mmap_size`).
const MMAP_BYTES: i64 = 4 << 30;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indicators (
    id   INTEGER PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    subject      TEXT PRIMARY KEY,
    market       INTEGER NOT NULL,
    code         TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    listing_date TEXT NOT NULL,
    category     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_members (
    topic   TEXT NOT NULL,
    subject TEXT NOT NULL,
    PRIMARY KEY (topic, subject)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    subject      TEXT NOT NULL,
    report_date  INTEGER NOT NULL,
    end_date     TEXT NOT NULL,
    year         TEXT NOT NULL,
    period       TEXT NOT NULL,
    declare_date TEXT NOT NULL,
    PRIMARY KEY (subject, report_date)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changelog (
    seq        INTEGER PRIMARY KEY,
    batch      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    term       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS changelog_digest (
    seq    INTEGER PRIMARY KEY,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS report_values (
    subject     TEXT NOT NULL,
    report_date INTEGER NOT NULL,
    indicator   INTEGER NOT NULL REFERENCES indicators(id),
    value       REAL NOT NULL,
    PRIMARY KEY (subject, report_date, indicator)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_blob (
    subject TEXT PRIMARY KEY,
    data    BLOB NOT NULL
);
";

/// Whether `path` is a KamaitachiGo database (its `finance_data` table, none
/// of ours): opening it for writing would add this schema to the
/// original's file, so the node refuses it and points at `import`.
pub fn is_kamaitachigo_database(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else {
        return false;
    };
    let has = |table: &str| -> bool {
        conn.query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .ok()
        .flatten()
        .is_some()
    };
    has("finance_data") && !has("report_values")
}

/// Identity and version of the data a database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataVersion {
    /// Random id chosen when the dataset was created; tells two databases apart.
    pub dataset_id: u64,
    /// Bumped by every change to the data.
    pub version: u64,
}

/// One SQLite connection and the queries the node asks of it.
pub struct Store {
    conn: Connection,
    /// Text shared among the series this connection decodes.
    interner: blob::Interner,
}

impl Store {
    /// Opens (creating if needed) a database for writing, in WAL mode.
    pub fn open_rw(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        migrate_term(&conn)?;
        let mut store = Store {
            conn,
            interner: blob::Interner::default(),
        };
        store.sync_blobs()?;
        Ok(store)
    }

    /// The upgrade path of `subject_blob`: rebuilds every blob when they are
    /// not known to match the data version (see `blob.rs`).
    fn sync_blobs(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let n = blob::ensure_synced(&mut self.conn)?;
        if n > 0 {
            tracing::info!(
                "subject_blob: built the compact form of {n} subjects in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Opens an existing database for reading.
    pub fn open_ro(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: "no such file (run `kamaitachi-node gen-data --db PATH` to create sample data)"
                    .into(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", -16384)?;
        // Reads through a memory map: a cold series is one blob, and with the
        // map its pages are used where they lie instead of copied in by a
        // read(2) each (address space only; the OS page cache backs it).
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        let store = Store {
            conn,
            interner: blob::Interner::default(),
        };
        let has_schema: Option<i64> = store
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='report_values'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("not a readable SQLite database: {e}"),
            })?;
        if has_schema.is_none() {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: "not a Kamaitachi database (no report_values table)".into(),
            });
        }
        Ok(store)
    }

    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn data_version(&self) -> Result<DataVersion, StoreError> {
        let parse = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Ok(DataVersion {
            dataset_id: parse(self.meta("dataset_id")?),
            version: parse(self.meta("data_version")?),
        })
    }

    /// Number of report rows.
    pub fn report_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn load_catalog(&self) -> Result<Catalog, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, code FROM indicators ORDER BY id")?;
        let indicators = stmt
            .query_map([], |r| {
                Ok(Indicator {
                    id: r.get::<_, i64>(0)? as usize,
                    code: r.get::<_, String>(1)?.into(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self
            .conn
            .prepare("SELECT subject, name, status, listing_date, category FROM subjects")?;
        let subjects = stmt
            .query_map([], |r| {
                Ok(SubjectInfo::new(
                    &r.get::<_, String>(0)?,
                    &r.get::<_, String>(1)?,
                    &r.get::<_, String>(2)?,
                    &r.get::<_, String>(3)?,
                    &r.get::<_, String>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare("SELECT topic, subject FROM topic_members")?;
        let members = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Catalog::new(indicators, subjects, members))
    }

    /// The whole series of `subject`; `width` is one more than the largest
    /// indicator id. One indexed read of its `subject_blob`; the normalized
    /// rows when there is no usable blob (an older database being upgraded,
    /// a format this build does not know).
    pub fn load_series(&mut self, subject: &str, width: usize) -> Result<Series, StoreError> {
        injected_panic(subject);
        match self.load_blob(subject, width) {
            Ok(Some(series)) => return Ok(series),
            Ok(None) => {}
            Err(e) => tracing::debug!("subject_blob of {subject} not used: {e}"),
        }
        self.load_range(subject, i64::MIN, i64::MAX, width)
    }

    /// The series of `subject` decoded from its blob, if it has one.
    pub fn load_blob(&mut self, subject: &str, width: usize) -> Result<Option<Series>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM subject_blob WHERE subject = ?1")?;
        let mut rows = stmt.query([subject])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let data = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        blob::decode(data, width, &mut self.interner)
            .map(Some)
            .map_err(|e| StoreError::BadImage(format!("{subject}: {e}")))
    }

    /// Only the latest report on or before `as_of` (0 = latest), as a series
    /// of at most one report. Used when the cache is disabled.
    pub fn load_latest(&self, subject: &str, as_of: i64, width: usize) -> Result<Series, StoreError> {
        injected_panic(subject);
        let as_of = if as_of == 0 { i64::MAX } else { as_of };
        // One statement: the report row, joined with its values (if any).
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.report_date, r.end_date, r.year, r.period, r.declare_date, v.indicator, v.value
             FROM reports r LEFT JOIN report_values v
               ON v.subject = r.subject AND v.report_date = r.report_date
             WHERE r.subject = ?1 AND r.report_date =
               (SELECT max(report_date) FROM reports WHERE subject = ?1 AND report_date <= ?2)",
        )?;
        let mut rows = stmt.query(params![subject, as_of])?;
        let mut report: Option<Report> = None;
        while let Some(r) = rows.next()? {
            let report = match &mut report {
                Some(rep) => rep,
                None => report.insert(blob::report_from_row(r, width)?),
            };
            if let Some(id) = r.get::<_, Option<i64>>(5)? {
                if let Some(slot) = report.values.get_mut(id as usize) {
                    *slot = r.get(6)?;
                }
            }
        }
        Ok(Series {
            reports: report.into_iter().collect(),
        })
    }

    /// Reports with `from <= report_date <= to`. Used when the cache is
    /// disabled.
    pub fn load_range(&self, subject: &str, from: i64, to: i64, width: usize) -> Result<Series, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT report_date, end_date, year, period, declare_date FROM reports
             WHERE subject = ?1 AND report_date BETWEEN ?2 AND ?3 ORDER BY report_date",
        )?;
        let mut reports = Vec::new();
        let mut rows = stmt.query(params![subject, from, to])?;
        while let Some(r) = rows.next()? {
            reports.push(blob::report_from_row(r, width)?);
        }
        if reports.is_empty() {
            return Ok(Series::default());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT report_date, indicator, value FROM report_values
             WHERE subject = ?1 AND report_date BETWEEN ?2 AND ?3 ORDER BY report_date, indicator",
        )?;
        let mut rows = stmt.query(params![subject, from, to])?;
        let mut i = 0;
        while let Some(r) = rows.next()? {
            let date: i64 = r.get(0)?;
            let id = r.get::<_, i64>(1)? as usize;
            while i < reports.len() && reports[i].report_date < date {
                i += 1;
            }
            if i == reports.len() {
                break;
            }
            if reports[i].report_date == date && id < width {
                reports[i].values[id] = r.get(2)?;
            }
        }
        Ok(Series {
            reports: reports.into_boxed_slice(),
        })
    }
}

/// The master's write path and the slaves' apply path.
impl Store {
    /// Master: applies `batch` as the next change, records it in the change
    /// log in the same transaction, keeps the log to `retain` entries, and
    /// commits (fsync'd). Returns what changed and the new sequence.
    /// `term`: the leader's election term (0 without an election), kept
    /// with the change. Returns the running digest after it too.
    pub fn write_batch(
        &mut self,
        batch: &mut Batch,
        retain: u64,
        term: i64,
    ) -> Result<(Applied, u64, String), StoreError> {
        let current = self.data_version()?.version;
        let seq = current + 1;
        let tx = self.write_transaction()?;
        let applied = apply::apply(&tx, batch, true)?;
        for row in &batch.upserts {
            // Inside the open transaction: a panic here must roll it back.
            injected_panic(&row.subject);
        }
        let json = serde_json::to_string(&*batch).map_err(|e| StoreError::BadImage(e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The running digest of the history (issue 11): a slave whose
        // history differs at the same sequence is told to copy the image.
        let previous = meta_in(&tx, "log_digest")?.unwrap_or_default();
        let digest = cluster::auth::chain_digest(&previous, seq, json.as_bytes());
        log_change(&tx, seq, &json, now, term, &digest, retain)?;
        set_meta(&tx, "log_digest", &digest)?;
        raise_term_in(&tx, term)?;
        set_version(&tx, seq)?;
        blob::advance(&tx, current, seq)?;
        tx.commit()?;
        Ok((applied, seq, digest))
    }

    /// Slave: applies change `seq` from the master; it must be the next one.
    /// `digest`: the master's running digest after this change, kept so the
    /// master can tell whether this node's history is its own.
    ///
    /// The change is kept in this node's change log and digest log too
    /// (same `retain` rule as the leader's), with the leader's `term`, so a
    /// follower promoted to leader serves the others without making them
    /// copy the whole database (issue 14).
    ///
    /// `known_acked`: the acknowledged position `(term, seq)` the leader's
    /// answer carried, recorded in the same transaction (V1: the horizon is
    /// persisted with the changes).
    pub fn apply_replicated(
        &mut self,
        batch: &mut Batch,
        seq: u64,
        digest: Option<&str>,
        term: i64,
        retain: u64,
        known_acked: Option<(i64, u64)>,
    ) -> Result<Applied, StoreError> {
        let tx = self.write_transaction()?;
        let have: u64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'data_version'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if seq != have + 1 {
            return Err(StoreError::OutOfOrder { have, got: seq });
        }
        let applied = apply::apply(&tx, batch, false)?;
        match digest {
            Some(d) => {
                set_meta(&tx, "log_digest", d)?;
                let json = serde_json::to_string(&*batch).map_err(|e| StoreError::BadImage(e.to_string()))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                log_change(&tx, seq, &json, now, term, d, retain)?;
            }
            None => {
                tx.execute("DELETE FROM meta WHERE key = 'log_digest'", [])?;
                // Without the leader's digest this node cannot serve its
                // history to others: its logs end before this change.
                tx.execute("DELETE FROM changelog", [])?;
                tx.execute("DELETE FROM changelog_digest", [])?;
            }
        }
        raise_term_in(&tx, term)?;
        if let Some((acked_term, acked_seq)) = known_acked {
            raise_known_acked_in(&tx, acked_term, acked_seq)?;
        }
        set_version(&tx, seq)?;
        blob::advance(&tx, have, seq)?;
        tx.commit()?;
        Ok(applied)
    }

    /// The running digest of the history after change `seq`, when known:
    /// from the digest log, or this node's current one at its version.
    pub fn digest_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let logged: Option<String> = self
            .conn
            .query_row(
                "SELECT digest FROM changelog_digest WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        if logged.is_some() {
            return Ok(logged);
        }
        if self.data_version()?.version == seq {
            return self.meta("log_digest");
        }
        Ok(None)
    }

    /// This node's history at `seq` as the election compares it (issue 14):
    /// the running digest when known ([`Store::digest_at`]); for data with
    /// no change log at its version (generated, imported, a KamaitachiGo
    /// database, or followed from a master that sends no digests) one
    /// derived from the dataset id and the sequence, which every copy of
    /// that image shares and no other dataset does. Without it a leader of
    /// such data recorded an empty digest as its baseline, and after losing
    /// that first term no node (itself included) could ever lead again.
    pub fn history_digest_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        if let Some(d) = self.digest_at(seq)? {
            return Ok(Some(d));
        }
        let version = self.data_version()?;
        if version.version != seq {
            return Ok(None);
        }
        let base = format!("kamaitachi base dataset {}", version.dataset_id);
        Ok(Some(cluster::auth::chain_digest("", seq, base.as_bytes())))
    }

    /// Changes after `from` with the digest after each (when known) and
    /// the term of the leader that made it.
    pub fn changes_with_digests(&self, from: u64, limit: usize) -> Result<Vec<LoggedChange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.seq, c.batch, d.digest, c.term FROM changelog c LEFT JOIN changelog_digest d ON d.seq = c.seq
             WHERE c.seq > ?1 ORDER BY c.seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from as i64, limit as i64], |r| {
            Ok(LoggedChange {
                seq: r.get::<_, i64>(0)? as u64,
                batch: r.get::<_, String>(1)?,
                digest: r.get::<_, Option<String>>(2)?,
                term: r.get::<_, i64>(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The highest election term this node has seen (meta `term`, 0 when
    /// none).
    pub fn term(&self) -> Result<i64, StoreError> {
        Ok(self.meta("term")?.and_then(|t| t.parse().ok()).unwrap_or(0))
    }

    /// Raises the persisted highest term to `term` (never lowers it).
    pub fn raise_term(&mut self, term: i64) -> Result<(), StoreError> {
        let tx = self.write_transaction()?;
        raise_term_in(&tx, term)?;
        tx.commit()?;
        Ok(())
    }

    /// What this node durably knows of the election (docs/WRITE_PROTOCOL.md,
    /// "State"): the highest term seen, the highest acknowledged position
    /// known, and the candidate members seen.
    pub fn election_memory(&self) -> Result<ElectionMemory, StoreError> {
        let num = |k: &str| -> Result<i64, StoreError> {
            Ok(self.meta(k)?.and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        let members = self
            .meta("members")?
            .and_then(|m| serde_json::from_str::<Vec<String>>(&m).ok())
            .unwrap_or_default();
        Ok(ElectionMemory {
            term: num("term")?,
            acked_term: num("acked_term")?,
            acked_seq: num("acked_seq")?.max(0) as u64,
            members,
        })
    }

    /// Raises the durably known acknowledged position to `(term, seq)` when
    /// it is larger (by term, then sequence); never lowers it.
    pub fn raise_known_acked(&mut self, term: i64, seq: u64) -> Result<(), StoreError> {
        let tx = self.write_transaction()?;
        raise_known_acked_in(&tx, term, seq)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds `add` to and removes `remove` from the remembered candidate
    /// members; returns the list as stored (sorted, at most
    /// [`MAX_MEMBERS`]).
    pub fn remember_members(&mut self, add: &[String], remove: &[String]) -> Result<Vec<String>, StoreError> {
        let tx = self.write_transaction()?;
        let mut members: Vec<String> = meta_in(&tx, "members")?
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default();
        let before = members.clone();
        members.retain(|m| !remove.contains(m));
        for a in add {
            if !members.contains(a) && members.len() < MAX_MEMBERS {
                members.push(a.clone());
            }
        }
        members.sort();
        if members != before {
            let json = serde_json::to_string(&members).map_err(|e| StoreError::BadImage(e.to_string()))?;
            set_meta(&tx, "members", &json)?;
            tx.commit()?;
        }
        Ok(members)
    }

    /// The term of the last applied change (0 when it is not in the change
    /// log: generated or imported data, or no change at all).
    pub fn last_term(&self) -> Result<i64, StoreError> {
        let version = self.data_version()?.version;
        Ok(self
            .conn
            .query_row(
                "SELECT term FROM changelog WHERE seq = ?1",
                [version as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// What each change above `above` touches, from the change log (V2:
    /// the pending set of a node that starts, or installed an image), in
    /// order. `None` when the log does not hold every change from `above`
    /// to the data version, or when there are more than `limit` of them:
    /// the caller then holds everything above `above` back. Data that no
    /// change ever touched (generated or imported: an empty change log and
    /// no running digest) holds nothing to acknowledge: an empty list.
    pub fn touches_above(&self, above: u64, limit: usize) -> Result<Option<Vec<LoggedTouches>>, StoreError> {
        let version = self.data_version()?.version;
        if version <= above {
            return Ok(Some(Vec::new()));
        }
        let logged: bool = self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM changelog)", [], |r| r.get(0))?;
        if !logged && self.meta("log_digest")?.is_none() {
            return Ok(Some(Vec::new()));
        }
        if version - above > limit as u64 {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, batch FROM changelog WHERE seq > ?1 AND seq <= ?2 ORDER BY seq")?;
        let rows = stmt.query_map(params![above as i64, version as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for (n, row) in rows.enumerate() {
            let (seq, json) = row?;
            if seq != above + 1 + n as u64 {
                return Ok(None);
            }
            let Ok(batch) = serde_json::from_str::<Batch>(&json) else {
                return Ok(None);
            };
            let mut subjects: Vec<String> = batch
                .upserts
                .iter()
                .map(|r| r.subject.clone())
                .chain(batch.deletes.iter().map(|k| k.subject.clone()))
                .collect();
            subjects.sort();
            subjects.dedup();
            let indicators = batch
                .indicators
                .iter()
                .filter(|i| i.id > 0)
                .map(|i| (i.id as usize, i.code.clone()))
                .collect();
            out.push(LoggedTouches {
                seq,
                subjects,
                indicators,
            });
        }
        if out.len() as u64 != version - above {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Whether the database holds any report row.
    pub fn has_reports(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM reports)", [], |r| r.get(0))?)
    }

    /// The oldest sequence still in the change log (one past the data
    /// version when the log is empty).
    pub fn log_floor(&self) -> Result<u64, StoreError> {
        let min: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM changelog", [], |r| r.get(0))?;
        match min {
            Some(m) => Ok(m as u64),
            None => Ok(self.data_version()?.version + 1),
        }
    }

    /// Writes a consistent image of the database to `path` (SQLite backup
    /// API, one step, so it is a single snapshot).
    pub fn image_to(&self, path: &Path) -> Result<(), StoreError> {
        // Its own connection, unmapped and with a small page cache: a reader's
        // mapped pages would make the copy cost the process as much memory as
        // the database is large.
        let source = match self.conn.path() {
            Some(p) if !p.is_empty() => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let c = Connection::open_with_flags(p, flags)?;
                c.busy_timeout(Duration::from_secs(5))?;
                c.pragma_update(None, "mmap_size", 0)?;
                c.pragma_update(None, "cache_size", -8192)?;
                Some(c)
            }
            _ => None,
        };
        let mut dst = Connection::open(path)?;
        let backup = rusqlite::backup::Backup::new(source.as_ref().unwrap_or(&self.conn), &mut dst)?;
        backup.step(-1)?;
        drop(backup);
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        Ok(())
    }

    /// A write transaction that holds the write lock from its start
    /// (`BEGIN IMMEDIATE`, waiting for it up to the busy timeout). A deferred
    /// one reads first and asks for the lock at its first write; if a WAL
    /// checkpoint reset the log in between, SQLite refuses the upgrade at
    /// once ("database is locked", no waiting), and the write would fail.
    fn write_transaction(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    /// Gives a database that has never held a dataset (a new file) its
    /// identity: a random dataset id, data version 0, and `indicators` (ids
    /// from 1) when it has none. Returns whether it did; an existing dataset
    /// is left alone. A master starts this way from nothing; its slaves then
    /// copy it like any other.
    pub fn init_dataset(&mut self, indicators: &[(&str, &str)]) -> Result<bool, StoreError> {
        let tx = self.write_transaction()?;
        let has_dataset: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'dataset_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if has_dataset.is_some() {
            return Ok(false);
        }
        let count: i64 = tx.query_row("SELECT count(*) FROM indicators", [], |r| r.get(0))?;
        if count == 0 {
            let mut ind = tx.prepare("INSERT INTO indicators (id, code, name) VALUES (?1, ?2, ?3)")?;
            for (i, (code, name)) in indicators.iter().enumerate() {
                ind.execute(params![i as i64 + 1, code, name])?;
            }
        }
        // Halved so it survives SQLite's signed INTEGER text round trip.
        let dataset_id = rand::random::<u64>() >> 1;
        let mut meta = tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        meta.execute(params!["dataset_id", dataset_id.to_string()])?;
        meta.execute(params!["data_version", "0"])?;
        meta.execute(params!["schema_version", SCHEMA_VERSION.to_string()])?;
        drop(meta);
        tx.commit()?;
        Ok(true)
    }

    /// Replaces this database's contents with the image at `path`, in one
    /// step; readers on other connections see the old or the new data,
    /// never a mix. The image carries its `subject_blob` rows (it is a copy
    /// of the master's database); an image from a master that did not keep
    /// them gets them built here, readers using the normalized rows
    /// meanwhile.
    pub fn restore_from(&mut self, path: &Path) -> Result<(), StoreError> {
        let src = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        // A small page cache for the copy: its memory must not grow with
        // the database. The caller puts the writer's usual cache back with
        // [`Store::writer_cache`] once it has read what it needs.
        self.conn.pragma_update(None, "cache_size", -8192)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)?;
        backup.step(-1)?;
        drop(backup);
        self.conn.execute_batch(SCHEMA)?;
        migrate_term(&self.conn)?;
        self.sync_blobs()
    }

    /// The writer's page cache: 64 MiB (index pages of large batches).
    pub fn writer_cache(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "cache_size", -65536)?;
        Ok(())
    }
}

fn meta_in(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn set_meta(tx: &rusqlite::Transaction<'_>, key: &str, value: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// One change-log entry as the change feed sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedChange {
    pub seq: u64,
    /// The batch as JSON (what the digest covers).
    pub batch: String,
    pub digest: Option<String>,
    /// The term of the leader that made the change (0: no election).
    pub term: i64,
}

/// What one logged change touches (see [`Store::touches_above`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedTouches {
    pub seq: u64,
    /// Subjects it upserts or deletes rows of, sorted.
    pub subjects: Vec<String>,
    /// Indicators it declares: (id, code).
    pub indicators: Vec<(usize, String)>,
}

/// Adds `term` to an older database's change log (issue 14).
fn migrate_term(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('changelog') WHERE name = 'term'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE changelog ADD COLUMN term INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Records change `seq` in the change log and the digest log, both kept
/// to `retain` entries.
fn log_change(
    tx: &rusqlite::Transaction<'_>,
    seq: u64,
    json: &str,
    now: i64,
    term: i64,
    digest: &str,
    retain: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO changelog (seq, batch, created_at, term) VALUES (?1, ?2, ?3, ?4)",
        params![seq as i64, json, now, term],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO changelog_digest (seq, digest) VALUES (?1, ?2)",
        params![seq as i64, digest],
    )?;
    let floor = seq.saturating_sub(retain.max(1)) as i64;
    tx.execute("DELETE FROM changelog WHERE seq <= ?1", params![floor])?;
    tx.execute("DELETE FROM changelog_digest WHERE seq <= ?1", params![floor])?;
    Ok(())
}

/// Most candidate members a node remembers.
pub const MAX_MEMBERS: usize = 64;

/// See [`Store::election_memory`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionMemory {
    pub term: i64,
    pub acked_term: i64,
    pub acked_seq: u64,
    pub members: Vec<String>,
}

/// [`Store::raise_known_acked`] inside an open transaction (a follower
/// records what it learned with the change it applies).
pub fn raise_known_acked_in(tx: &rusqlite::Transaction<'_>, term: i64, seq: u64) -> Result<(), StoreError> {
    let have_term: i64 = meta_in(tx, "acked_term")?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let have_seq: u64 = meta_in(tx, "acked_seq")?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if (term, seq) > (have_term, have_seq) {
        set_meta(tx, "acked_term", &term.to_string())?;
        set_meta(tx, "acked_seq", &seq.to_string())?;
    }
    Ok(())
}

fn raise_term_in(tx: &rusqlite::Transaction<'_>, term: i64) -> Result<(), StoreError> {
    let have: i64 = meta_in(tx, "term")?.and_then(|t| t.parse().ok()).unwrap_or(0);
    if term > have {
        set_meta(tx, "term", &term.to_string())?;
    }
    Ok(())
}

fn set_version(tx: &rusqlite::Transaction<'_>, seq: u64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('data_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![seq.to_string()],
    )?;
    Ok(())
}

/// Bytes of an image file read or written at a time.
pub const IMAGE_CHUNK: usize = 1 << 20;

/// Length and CRC-32 of a file, read in [`IMAGE_CHUNK`]s.
pub fn file_crc(path: &Path, mut also: impl FnMut(&[u8])) -> Result<(u64, u32), StoreError> {
    use std::io::Read;
    let io = |e: std::io::Error| StoreError::BadImage(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IMAGE_CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        also(&buf[..n]);
        len += n as u64;
    }
}

/// Checks a downloaded image before it is trusted: SQLite's quick check, the
/// schema, and its data version. Returns that version.
pub fn check_image(path: &Path) -> Result<DataVersion, StoreError> {
    let store = Store::open_ro(path)?;
    // A pass over every page: unmapped and with a small cache, so it costs
    // no memory in proportion to the image.
    store.conn.pragma_update(None, "mmap_size", 0)?;
    store.conn.pragma_update(None, "cache_size", -2048)?;
    let check: String = store.conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::BadImage(format!(
            "image fails SQLite's quick check: {check}"
        )));
    }
    store.data_version()
}

/// Test hook, debug builds only: a job that touches the subject named by
/// `KAMAITACHI_DEBUG_PANIC_SUBJECT` panics on its worker thread, so the
/// end-to-end tests can check that a crashed worker is replaced. Release
/// builds compile it to nothing.
#[cfg(debug_assertions)]
fn injected_panic(subject: &str) {
    static SUBJECT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let target = SUBJECT.get_or_init(|| std::env::var("KAMAITACHI_DEBUG_PANIC_SUBJECT").ok());
    if target.as_deref() == Some(subject) {
        panic!("injected panic for subject {subject} (KAMAITACHI_DEBUG_PANIC_SUBJECT)");
    }
}

#[cfg(not(debug_assertions))]
fn injected_panic(_subject: &str) {}

/// A writer: one thread, one read-write connection.
pub type WritePool = WorkerPool<Store>;

pub fn start_writer(path: &Path) -> Result<WritePool, StoreError> {
    fn open(path: &Path) -> Result<Store, StoreError> {
        let store = Store::open_rw(path)?;
        // A batch of 1,000 rows touches thousands of index pages: keep them
        // in memory (64 MiB) rather than re-reading them. Checkpoints run on
        // their own thread, off the write path.
        store.writer_cache()?;
        store.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(store)
    }
    // The first open reports its own error (creating the schema included).
    let first = std::sync::Mutex::new(Some(open(path)?));
    start_checkpointer(path)?;
    let p = path.to_path_buf();
    let make = move || match first.lock().ok().and_then(|mut f| f.take()) {
        Some(store) => Ok(store),
        None => open(&p).map_err(|e| e.to_string()),
    };
    WorkerPool::start("sqlite-writer", 1, make).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: format!("cannot start the writer thread: {e}"),
    })
}

/// WAL size past which the checkpointer truncates it, pausing the writer
/// for that one checkpoint.
const WAL_TRUNCATE_BYTES: u64 = 128 << 20;

/// Copies the WAL back into the database every 500 ms, so commits do not
/// pay for it. PASSIVE checkpoints never wait for, nor block, the writer or
/// the readers; when the WAL has grown past [`WAL_TRUNCATE_BYTES`] anyway
/// (writes faster than a passive checkpoint can finish), a TRUNCATE
/// checkpoint resets it, so the file stays bounded.
fn start_checkpointer(path: &Path) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES);
            let sql = if big {
                "PRAGMA wal_checkpoint(TRUNCATE)"
            } else {
                "PRAGMA wal_checkpoint(PASSIVE)"
            };
            if let Err(e) = conn.query_row(sql, [], |_| Ok(())) {
                tracing::warn!("WAL checkpoint failed: {e}");
            }
        })
        .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: format!("cannot start the checkpoint thread: {e}"),
        })?;
    Ok(())
}

/// SQLite reader threads, each with its own read-only connection.
pub type ReadPool = WorkerPool<Store>;

/// Starts `threads` readers on `path`.
pub fn start_readers(path: &Path, threads: usize) -> Result<ReadPool, StoreError> {
    // The first open reports its own error.
    drop(Store::open_ro(path)?);
    let p = path.to_path_buf();
    let make = move || Store::open_ro(&p).map_err(|e| e.to_string());
    WorkerPool::start("sqlite-reader", threads, make).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: format!("cannot start reader threads: {e}"),
    })
}

/// Runs a read job on the pool, flattening the two error layers.
pub fn read<R, F>(pool: &ReadPool, f: F) -> Result<R, StoreError>
where
    R: Send + 'static,
    F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
{
    pool.call(f)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::{Batch, NewIndicator};

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kmt-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    }

    fn is_hex64(d: &str) -> bool {
        d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn data_without_a_change_log_still_names_its_history() {
        let path = temp_db("named");
        let mut store = Store::open_rw(&path).unwrap();
        assert!(store.init_dataset(&[("net_profit", "net profit")]).unwrap());
        // No change log: no running digest, but a name for the election.
        assert_eq!(store.digest_at(0).unwrap(), None);
        let base = store.history_digest_at(0).unwrap().expect("named at its version");
        assert!(is_hex64(&base), "{base}");
        assert_eq!(
            store.history_digest_at(1).unwrap(),
            None,
            "a version it does not hold"
        );

        // A copy of the image names it alike; another dataset does not.
        let copy = temp_db("named-copy");
        store.image_to(&copy).unwrap();
        let copied = Store::open_rw(&copy).unwrap();
        assert_eq!(copied.history_digest_at(0).unwrap(), Some(base.clone()));
        let mut other = Store::open_rw(&temp_db("named-other")).unwrap();
        other.init_dataset(&[("net_profit", "net profit")]).unwrap();
        assert_ne!(other.history_digest_at(0).unwrap(), Some(base.clone()));

        // Once a change is logged, the running digest is the name.
        let mut batch = Batch::default();
        batch.indicators.push(NewIndicator {
            id: 0,
            code: "operating_income".into(),
            name: "operating income".into(),
        });
        let (_, seq, digest) = store.write_batch(&mut batch, 100, 1).unwrap();
        assert_eq!(store.history_digest_at(seq).unwrap(), Some(digest.clone()));
        assert_eq!(store.digest_at(seq).unwrap(), Some(digest));
    }

    fn row(subject: &str) -> crate::model::batch::Row {
        crate::model::batch::Row {
            subject: subject.into(),
            name: None,
            report_date: 1_751_241_600,
            end_date: "2025-06-30".into(),
            year: "2025".into(),
            period: "Q2".into(),
            declare_date: "2025-08-01".into(),
            values: [("net_profit".to_string(), Some(1.0))].into(),
        }
    }

    #[test]
    fn the_change_log_names_what_each_change_above_a_position_touches() {
        let path = temp_db("touches");
        let mut store = Store::open_rw(&path).unwrap();
        store.init_dataset(&[("net_profit", "net profit")]).unwrap();
        // Generated data at version 1 with no change ever made: nothing to
        // hold back.
        store
            .conn
            .execute("UPDATE meta SET value = '1' WHERE key = 'data_version'", [])
            .unwrap();
        assert_eq!(store.touches_above(0, 100).unwrap(), Some(vec![]));
        let mut b1 = Batch::default();
        b1.upserts.push(row("33:000002"));
        b1.upserts.push(row("33:000001"));
        let mut b2 = Batch::default();
        b2.indicators.push(NewIndicator {
            id: 0,
            code: "new_ratio".into(),
            name: "new ratio".into(),
        });
        b2.upserts.push(row("33:000003"));
        let mut b3 = Batch::default();
        b3.deletes.push(crate::model::batch::Key {
            subject: "33:000001".into(),
            report_date: 1_751_241_600,
        });
        for b in [&mut b1, &mut b2, &mut b3] {
            store.write_batch(b, 2, 1).unwrap();
        }
        let t = store
            .touches_above(2, 100)
            .unwrap()
            .expect("changes 3 and 4 are logged");
        assert_eq!(
            t,
            vec![
                LoggedTouches {
                    seq: 3,
                    subjects: vec!["33:000003".into()],
                    indicators: vec![(2, "new_ratio".into())],
                },
                LoggedTouches {
                    seq: 4,
                    subjects: vec!["33:000001".into()],
                    indicators: vec![],
                },
            ]
        );
        assert_eq!(store.touches_above(4, 100).unwrap(), Some(vec![]));
        // The log keeps two changes: change 2 is gone, so from 1 it is
        // unknown (and no longer base data).
        assert_eq!(store.touches_above(1, 100).unwrap(), None);
        assert_eq!(store.touches_above(2, 1).unwrap(), None, "over the limit");
        assert!(store.has_reports().unwrap());
    }
}
