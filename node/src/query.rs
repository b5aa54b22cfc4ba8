//! The query engine: from a request body to finished response bytes.
//!
//! Order of work for a snapshot or period request:
//! 1. the response cache, keyed by the exact body — a hit is a copy of bytes;
//! 2. parse and validate against the catalog (`request.rs`);
//! 3. each subject's [`Series`] from the cache, or — for the ones missing —
//!    from SQLite in one job on a reader thread (`store.rs`), then cached;
//!    with the cache disabled, only the reports the question needs are read;
//! 4. select, sort, page and render (`response.rs`), and cache the bytes.
//!
//! Steps 3–4 for a question over many subjects (a topic pool) take
//! milliseconds of CPU; they run on the compute pool rather than on the
//! coroutine's worker, so small requests on the same worker are not held up.
//!
//! A request is a cache hit when it needed no SQLite read at all.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::{DataCache, Route};
use crate::catalog::{Catalog, SubjectInfo};
use crate::error::ApiError;
use crate::pool::WorkerPool;
use crate::request::{PeriodQuery, SnapshotQuery, SortKey};
use crate::response;
use crate::series::{Report, Series};
use crate::store::{self, ReadPool};

/// Questions over more subjects than this are answered on the compute pool.
const HEAVY_SUBJECTS: usize = 64;

/// What a question needs of each subject's series when it is read from
/// SQLite without the cache.
#[derive(Clone, Copy)]
enum Need {
    LatestAt(i64),
    Range(i64, i64),
}

pub struct QueryEngine {
    catalog: ArcSwap<Catalog>,
    cache: Arc<DataCache>,
    readers: ReadPool,
    compute: WorkerPool<()>,
    /// Data epoch: moved on by every write (twice, around invalidation).
    /// Cached responses are keyed by it; a series read from SQLite is cached
    /// only if no write happened meanwhile.
    epoch: AtomicU64,
}

impl QueryEngine {
    pub fn new(catalog: Catalog, cache: Arc<DataCache>, readers: ReadPool, compute: WorkerPool<()>) -> Self {
        QueryEngine {
            catalog: ArcSwap::from_pointee(catalog),
            cache,
            readers,
            compute,
            epoch: AtomicU64::new(0),
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(AtomicOrdering::Acquire)
    }

    /// After a write committed: new catalog if it changed, the touched
    /// subjects out of the cache, and the epoch moved on so no response
    /// computed before the write is looked up again.
    pub fn after_write(&self, touched: impl IntoIterator<Item = String>, catalog: Option<Catalog>) {
        if let Some(c) = catalog {
            self.catalog.store(Arc::new(c));
        }
        self.epoch.fetch_add(1, AtomicOrdering::AcqRel);
        for subject in touched {
            self.cache.invalidate_subject(&subject);
        }
        self.epoch.fetch_add(1, AtomicOrdering::AcqRel);
    }

    /// After the whole database was replaced (full resync).
    pub fn after_restore(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
        self.epoch.fetch_add(1, AtomicOrdering::AcqRel);
        self.cache.clear();
        self.epoch.fetch_add(1, AtomicOrdering::AcqRel);
    }

    pub fn readers(&self) -> &ReadPool {
        &self.readers
    }

    /// Caches a series read at epoch `e0`, unless a write came in between
    /// (checked again after the insert, so a racing invalidation wins).
    fn cache_series_if_current(&self, e0: u64, subject: Arc<str>, series: Arc<Series>) {
        if self.epoch() != e0 {
            return;
        }
        self.cache.insert_series(subject.clone(), series);
        if self.epoch() != e0 {
            self.cache.invalidate_subject(&subject);
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn cache(&self) -> &DataCache {
        &self.cache
    }

    /// `POST …/snapshot`: the full response body.
    pub fn snapshot(self: &Arc<Self>, body: &[u8]) -> Result<Arc<[u8]>, ApiError> {
        let e0 = self.epoch();
        if let Some(hit) = self.cache.response(Route::Snapshot, e0, body) {
            self.cache.record_hit();
            return Ok(hit);
        }
        let catalog = self.catalog.load_full();
        let q = SnapshotQuery::parse(body, &catalog)?;
        if q.subjects.len() > HEAVY_SUBJECTS {
            let engine = self.clone();
            let body = body.to_vec();
            return self
                .compute
                .call(move |_| engine.answer_snapshot(e0, &q, &body, &catalog))
                .map_err(ApiError::from)?;
        }
        self.answer_snapshot(e0, &q, body, &catalog)
    }

    fn answer_snapshot(
        &self,
        e0: u64,
        q: &SnapshotQuery,
        body: &[u8],
        catalog: &Catalog,
    ) -> Result<Arc<[u8]>, ApiError> {
        let series = self.series_for(e0, &q.subjects, Need::LatestAt(q.as_of), catalog)?;

        let mut rows: Vec<(&Arc<SubjectInfo>, Option<&Report>)> = q
            .subjects
            .iter()
            .zip(series.iter())
            .map(|(info, s)| (info, s.at(q.as_of)))
            .collect();
        let key = |r: Option<&Report>| -> Option<f64> {
            let r = r?;
            match q.sort {
                SortKey::ReportDate => Some(r.report_date as f64),
                SortKey::Indicator(id) => r.value(id),
            }
        };
        rows.sort_by(|a, b| compare_rows(key(a.1), key(b.1), q.descending, &a.0.subject, &b.0.subject));

        let page = rows.iter().skip(q.offset).take(q.limit);
        let mut buf = Vec::with_capacity(256 + q.limit.min(rows.len()) * 256);
        response::begin_envelope(&mut buf, 0, &response::success_msg(&q.unknown));
        buf.push(b'[');
        for (n, (info, report)) in page.enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            response::push_snapshot_row(&mut buf, info, &q.ids, *report);
        }
        buf.push(b']');
        response::end_envelope(&mut buf);
        let bytes: Arc<[u8]> = buf.into();
        self.cache
            .insert_response(Route::Snapshot, e0, body, bytes.clone());
        Ok(bytes)
    }

    /// `POST …/period`: the full response body.
    pub fn period(self: &Arc<Self>, body: &[u8]) -> Result<Arc<[u8]>, ApiError> {
        let e0 = self.epoch();
        if let Some(hit) = self.cache.response(Route::Period, e0, body) {
            self.cache.record_hit();
            return Ok(hit);
        }
        let catalog = self.catalog.load_full();
        let q = PeriodQuery::parse(body, &catalog)?;
        if q.subjects.len() > HEAVY_SUBJECTS {
            let engine = self.clone();
            let body = body.to_vec();
            return self
                .compute
                .call(move |_| engine.answer_period(e0, &q, &body, &catalog))
                .map_err(ApiError::from)?;
        }
        self.answer_period(e0, &q, body, &catalog)
    }

    fn answer_period(
        &self,
        e0: u64,
        q: &PeriodQuery,
        body: &[u8],
        catalog: &Catalog,
    ) -> Result<Arc<[u8]>, ApiError> {
        let series = self.series_for(e0, &q.subjects, Need::Range(q.from, q.to), catalog)?;
        let mut buf = Vec::with_capacity(256 + q.subjects.len() * 1024);
        response::begin_envelope(&mut buf, 0, &response::success_msg(&q.unknown));
        buf.push(b'[');
        for (n, (info, s)) in q.subjects.iter().zip(series.iter()).enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            response::push_period_entry(&mut buf, info, &q.ids, s.range(q.from, q.to));
        }
        buf.push(b']');
        response::end_envelope(&mut buf);
        let bytes: Arc<[u8]> = buf.into();
        self.cache.insert_response(Route::Period, e0, body, bytes.clone());
        Ok(bytes)
    }

    /// The series of every subject, in order: from the cache where present,
    /// the rest read in one job on a reader thread.
    fn series_for(
        &self,
        e0: u64,
        subjects: &[Arc<SubjectInfo>],
        need: Need,
        catalog: &Catalog,
    ) -> Result<Vec<Arc<Series>>, ApiError> {
        let width = catalog.value_width();
        if !self.cache.enabled() {
            self.cache.record_miss();
            let names: Vec<Arc<str>> = subjects.iter().map(|s| s.subject.clone()).collect();
            let loaded = store::read(&self.readers, move |store| {
                names
                    .iter()
                    .map(|name| {
                        match need {
                            Need::LatestAt(t) => store.load_latest(name, t, width),
                            Need::Range(from, to) => store.load_range(name, from, to, width),
                        }
                        .map(Arc::new)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })?;
            return Ok(loaded);
        }

        let mut out: Vec<Option<Arc<Series>>> =
            subjects.iter().map(|s| self.cache.series(&s.subject)).collect();
        let missing: Vec<Arc<str>> = subjects
            .iter()
            .zip(out.iter())
            .filter(|(_, s)| s.is_none())
            .map(|(info, _)| info.subject.clone())
            .collect();
        if missing.is_empty() {
            self.cache.record_hit();
        } else {
            self.cache.record_miss();
            let loaded = store::read(&self.readers, move |store| {
                missing
                    .into_iter()
                    .map(|name| store.load_series(&name, width).map(|s| (name, Arc::new(s))))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            let mut loaded = loaded.into_iter();
            for slot in out.iter_mut().filter(|s| s.is_none()) {
                if let Some((name, series)) = loaded.next() {
                    self.cache_series_if_current(e0, name, series.clone());
                    *slot = Some(series);
                }
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// Sort order of snapshot rows: by key (nulls last whatever the order), then
/// by subject ascending.
fn compare_rows(a: Option<f64>, b: Option<f64>, descending: bool, sa: &str, sb: &str) -> Ordering {
    let by_key = match (a, b) {
        (Some(x), Some(y)) => {
            let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            if descending {
                o.reverse()
            } else {
                o
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_key.then_with(|| sa.cmp(sb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_last_in_both_orders_and_ties_by_subject() {
        let mut v = [
            (None, "b"),
            (Some(1.0), "z"),
            (Some(2.0), "a"),
            (Some(1.0), "c"),
            (None, "a"),
        ];
        v.sort_by(|x, y| compare_rows(x.0, y.0, true, x.1, y.1));
        assert_eq!(
            v.iter().map(|x| x.1).collect::<Vec<_>>(),
            ["a", "c", "z", "a", "b"]
        );
        v.sort_by(|x, y| compare_rows(x.0, y.0, false, x.1, y.1));
        assert_eq!(
            v.iter().map(|x| x.1).collect::<Vec<_>>(),
            ["c", "z", "a", "a", "b"]
        );
    }
}
