//! The in-memory shape of the data: one subject's reports, oldest first.
//!
//! A [`Series`] is what the cache keeps per subject. It answers every
//! question the API asks about that subject — the latest report on or before
//! a time, the reports in a range — without SQLite. Values are indexed by
//! indicator id (see `catalog.rs`); NaN stands for null, which is safe because
//! stored values are always finite.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One reporting period of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Unix seconds of the period end; the key within a subject.
    pub report_date: i64,
    /// Text fields are shared (`Arc`): a series decoded from its blob
    /// shares one copy of each date and label among its reports (see
    /// `blob::Interner`). The cache's byte count still counts each in full.
    pub end_date: Arc<str>,
    pub year: Arc<str>,
    pub period: Arc<str>,
    pub declare_date: Arc<str>,
    /// Indexed by indicator id; NaN or out of range means null.
    pub values: Box<[f64]>,
}

impl Report {
    /// The value of indicator `id`, if present.
    pub fn value(&self, id: usize) -> Option<f64> {
        self.values.get(id).copied().filter(|v| !v.is_nan())
    }

    /// Counted as if no text were shared (each `Arc<str>` with its two
    /// counters): an upper bound, whether the series came from a blob
    /// (shared text) or from the normalized rows or a dump (its own).
    fn heap_bytes(&self) -> usize {
        4 * 2 * std::mem::size_of::<usize>()
            + self.end_date.len()
            + self.year.len()
            + self.period.len()
            + self.declare_date.len()
            + self.values.len() * std::mem::size_of::<f64>()
    }
}

/// All reports of one subject, sorted by `report_date` ascending, no
/// duplicates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub reports: Box<[Report]>,
}

impl Series {
    #[cfg(test)]
    pub fn new(mut reports: Vec<Report>) -> Self {
        reports.sort_by_key(|r| r.report_date);
        reports.dedup_by_key(|r| r.report_date);
        Series {
            reports: reports.into_boxed_slice(),
        }
    }

    /// The latest report on or before `as_of` (unix seconds); `as_of == 0`
    /// means the latest report of all.
    pub fn at(&self, as_of: i64) -> Option<&Report> {
        if as_of == 0 {
            return self.reports.last();
        }
        let n = self.reports.partition_point(|r| r.report_date <= as_of);
        n.checked_sub(1).map(|i| &self.reports[i])
    }

    /// Reports with `from <= report_date <= to`, oldest first.
    pub fn range(&self, from: i64, to: i64) -> &[Report] {
        let lo = self.reports.partition_point(|r| r.report_date < from);
        let hi = self.reports.partition_point(|r| r.report_date <= to);
        if lo >= hi {
            &[]
        } else {
            &self.reports[lo..hi]
        }
    }

    /// Bytes this series holds in memory, counted against the cache bound.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Series>()
            + self.reports.len() * std::mem::size_of::<Report>()
            + self.reports.iter().map(Report::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(date: i64) -> Report {
        Report {
            report_date: date,
            end_date: "2020-03-31".into(),
            year: "2020".into(),
            period: "Q1".into(),
            declare_date: "2020-04-30".into(),
            values: vec![f64::NAN, 1.0].into_boxed_slice(),
        }
    }

    #[test]
    fn at_picks_latest_on_or_before() {
        let s = Series::new(vec![report(30), report(10), report(20)]);
        assert_eq!(s.at(0).map(|r| r.report_date), Some(30));
        assert_eq!(s.at(25).map(|r| r.report_date), Some(20));
        assert_eq!(s.at(20).map(|r| r.report_date), Some(20));
        assert_eq!(s.at(9), None);
        assert_eq!(s.at(i64::MAX).map(|r| r.report_date), Some(30));
    }

    #[test]
    fn range_is_inclusive() {
        let s = Series::new(vec![report(10), report(20), report(30)]);
        let dates: Vec<i64> = s.range(10, 20).iter().map(|r| r.report_date).collect();
        assert_eq!(dates, vec![10, 20]);
        assert!(s.range(31, 40).is_empty());
        assert!(s.range(20, 10).is_empty());
    }

    #[test]
    fn nan_is_null_and_missing_index_is_null() {
        let r = report(1);
        assert_eq!(r.value(0), None);
        assert_eq!(r.value(1), Some(1.0));
        assert_eq!(r.value(7), None);
    }
}
