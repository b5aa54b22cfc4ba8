//! The query engine: from a request body to finished response bytes.
//!
//! Order of work for a snapshot or period request:
//! 1. the response cache, keyed by the exact body — a hit is a copy of bytes;
//! 2. parse and validate against the catalog (`request.rs`);
//! 3. each subject's [`Series`] from the cache, or — for the ones missing —
//!    from SQLite (`storage/store.rs`: one `subject_blob` read each), then
//!    cached; with the cache disabled, only the reports the question needs
//!    are read;
//! 4. select, sort, page and render (`render.rs`), and cache the bytes.
//!
//! 5. the horizon's gate (docs/WRITE_PROTOCOL.md, V2): if a change the
//!    answer's subjects or indicators depend on is not acknowledged yet,
//!    wait until it is (at most [`PENDING_WAIT`]), else answer 503 naming
//!    it; only an answer that passed the gate is cached.
//!
//! The gate runs after the data is read: the writer lists a change as
//! pending before it commits, so whatever a request read is either listed
//! when the gate looks or acknowledged already. A cached answer passed the
//! gate when it was made and the horizon never goes back, so a response
//! cache hit is served as it is: the hit path has no check at all, and a
//! miss while nothing is pending costs one atomic load.
//!
//! Snapshot and period go through the same steps; what differs between
//! them (route, parser, renderer) is the [`Question`] trait, so the path is
//! written once (`serve`).
//!
//! Steps 3–4 for a question over many subjects (a topic pool) take
//! milliseconds of CPU; they run on the compute pool rather than on the
//! coroutine's worker, so small requests on the same worker are not held up.
//!
//! A request is a cache hit when it needed no SQLite read at all.
//!
//! Cold loads (this file owns them, so it owns their coalescing): concurrent
//! requests missing the same subject share one load. The first registers a
//! flight for the subject in `inflight`, reads it, caches it, and hands the
//! series to every request that joined the flight meanwhile; those wait on a
//! may channel (a coroutine yields, it does not block its worker). A flight
//! is joined only by requests of the same data epoch, so nobody receives
//! data read before a write they could have seen. Loads of many subjects
//! are split across all reader threads. `store_loads` counts series read
//! from SQLite (`/metrics`: `kamaitachi_store_loads_total`).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use may::sync::mpsc;

use arc_swap::ArcSwap;

use crate::engine::cache::{DataCache, Route};
use crate::engine::error::EngineError;
use crate::engine::render;
use crate::engine::request::{PeriodQuery, SnapshotQuery, SortKey};
use crate::json;
use crate::model::catalog::{Catalog, SubjectInfo};
use crate::model::series::{Report, Series};
use crate::storage::error::StoreError;
use crate::storage::pool::WorkerPool;
use crate::storage::state::DataState;
use crate::storage::store::{self, ReadPool};
use crate::storage::writer::Publish;

/// Questions over more subjects than this are answered on the compute pool.
const HEAVY_SUBJECTS: usize = 64;

/// A cold load of more subjects than this is split across the reader
/// threads (at least this many subjects per job).
const SPLIT_LOAD: usize = 32;

/// How long a read that depends on a change not yet acknowledged waits
/// for it before it is answered 503.
pub const PENDING_WAIT: Duration = Duration::from_secs(1);

/// A load of one subject in progress, and who waits for it.
struct Flight {
    /// Data epoch of the request that started it.
    epoch: u64,
    waiters: Vec<mpsc::Sender<Arc<Series>>>,
}

/// How a request gets one missing series.
enum Slot {
    /// Cached by a flight that ended since the request first looked.
    Ready(Arc<Series>),
    /// This request leads the flight: it reads the series.
    Lead,
    /// A flight of an older epoch runs: read it alone, without a flight.
    Solo,
    /// Another request leads: wait for its series.
    Wait(mpsc::Receiver<Arc<Series>>),
}

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
    /// Loads in progress, by subject (held only to look up and register,
    /// never across a read or a wait).
    inflight: Mutex<HashMap<Arc<str>, Flight>>,
    /// Series read from SQLite since start.
    store_loads: AtomicU64,
    /// The acknowledged horizon and the pending changes (the gate).
    state: Arc<DataState>,
}

impl QueryEngine {
    pub fn new(
        catalog: Catalog,
        cache: Arc<DataCache>,
        readers: ReadPool,
        compute: WorkerPool<()>,
        state: Arc<DataState>,
    ) -> Self {
        QueryEngine {
            state,
            catalog: ArcSwap::from_pointee(catalog),
            cache,
            readers,
            compute,
            epoch: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            store_loads: AtomicU64::new(0),
        }
    }

    /// Series read from SQLite since start (every cold load, whatever
    /// asked for it).
    pub fn store_loads(&self) -> u64 {
        self.store_loads.load(AtomicOrdering::Relaxed)
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<Arc<str>, Flight>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
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
    pub fn snapshot(self: &Arc<Self>, body: &[u8]) -> Result<Arc<[u8]>, EngineError> {
        self.serve::<SnapshotQuery>(body)
    }

    /// `POST …/period`: the full response body.
    pub fn period(self: &Arc<Self>, body: &[u8]) -> Result<Arc<[u8]>, EngineError> {
        self.serve::<PeriodQuery>(body)
    }

    /// Steps 1–5 of the module comment for either kind of question: the
    /// cached answer if there is one (no parse, no lock, no allocation
    /// beyond the cache's own lookup), else parse, answer — on the compute
    /// pool when the question is heavy —, pass the gate and cache the
    /// bytes.
    fn serve<Q: Question>(self: &Arc<Self>, body: &[u8]) -> Result<Arc<[u8]>, EngineError> {
        let e0 = self.epoch();
        if let Some(hit) = self.cache.response(Q::ROUTE, e0, body) {
            self.cache.record_hit();
            return Ok(hit);
        }
        // Rendered within one stable generation of the history, or not
        // answered: an image installed meanwhile may have discarded what
        // this read saw.
        let generation = self.state.history_generation();
        let catalog = self.catalog.load_full();
        let q = Q::parse(body, &catalog)?;
        let (q, bytes) = if q.subject_count() > HEAVY_SUBJECTS {
            let engine = self.clone();
            self.compute
                .call(move |_| {
                    let bytes = q.render(&engine, e0, &catalog);
                    bytes.map(|b| (q, b))
                })
                .map_err(EngineError::from)??
        } else {
            let bytes = q.render(self, e0, &catalog)?;
            (q, bytes)
        };
        // In the coroutine, not on the compute pool: a wait parks it.
        self.gate(&q)?;
        if generation % 2 == 1 || self.state.history_generation() != generation {
            return Err(EngineError::NotAcknowledged(
                "this node's data was replaced by the leader's image while answering; try again".into(),
            ));
        }
        let bytes: Arc<[u8]> = bytes.into();
        self.cache.insert_response(Q::ROUTE, e0, body, bytes.clone());
        Ok(bytes)
    }

    /// Step 5: waits until every change the answer to `q` may have read is
    /// acknowledged, at most [`PENDING_WAIT`]; then 503 naming one that is
    /// still not.
    fn gate<Q: Question>(&self, q: &Q) -> Result<(), EngineError> {
        let pending = &self.state.pending;
        if pending.is_empty() {
            return Ok(());
        }
        let Some(blocked) = pending.blocking(q.subject_names(), q.indicator_ids(), u64::MAX) else {
            return Ok(());
        };
        let started = Instant::now();
        self.state.wait_acked(blocked.seq, started + PENDING_WAIT);
        if self.state.acked() >= blocked.seq {
            return Ok(());
        }
        // Name one change the read still waits for.
        let what = pending
            .blocking(q.subject_names(), q.indicator_ids(), blocked.seq)
            .map_or(blocked.what, |b| b.what);
        Err(EngineError::NotAcknowledged(format!(
            "{what} is not acknowledged yet (waited {} ms); try again",
            started.elapsed().as_millis()
        )))
    }

    fn render_snapshot(&self, e0: u64, q: &SnapshotQuery, catalog: &Catalog) -> Result<Vec<u8>, EngineError> {
        let series = self.series_for(e0, &q.subjects, Need::LatestAt(q.as_of), catalog)?;

        let key = |r: Option<&Report>| -> Option<f64> {
            let r = r?;
            match q.sort {
                SortKey::ReportDate => Some(r.report_date as f64),
                SortKey::Indicator(id) => r.value(id),
            }
        };
        // The sort key is read once per row, not once per comparison: each
        // read chases pointers into a series that may not be in the CPU
        // cache (a freshly loaded one never is).
        let mut rows: Vec<(&Arc<SubjectInfo>, Option<&Report>, Option<f64>)> = q
            .subjects
            .iter()
            .zip(series.iter())
            .map(|(info, s)| {
                let report = s.at(q.as_of);
                (info, report, key(report))
            })
            .collect();
        rows.sort_by(|a, b| compare_rows(a.2, b.2, q.descending, &a.0.subject, &b.0.subject));

        let page = rows.iter().skip(q.offset).take(q.limit);
        let mut buf = Vec::with_capacity(256 + q.limit.min(rows.len()) * 256);
        json::begin_envelope(&mut buf, 0, &render::success_msg(&q.unknown));
        buf.push(b'[');
        for (n, (info, report, _)) in page.enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            render::push_snapshot_row(&mut buf, info, &q.ids, *report);
        }
        buf.push(b']');
        json::end_envelope(&mut buf);
        Ok(buf)
    }

    fn render_period(&self, e0: u64, q: &PeriodQuery, catalog: &Catalog) -> Result<Vec<u8>, EngineError> {
        let series = self.series_for(e0, &q.subjects, Need::Range(q.from, q.to), catalog)?;
        let mut buf = Vec::with_capacity(256 + q.subjects.len() * 1024);
        json::begin_envelope(&mut buf, 0, &render::success_msg(&q.unknown));
        buf.push(b'[');
        for (n, (info, s)) in q.subjects.iter().zip(series.iter()).enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            render::push_period_entry(&mut buf, info, &q.ids, s.range(q.from, q.to));
        }
        buf.push(b']');
        json::end_envelope(&mut buf);
        Ok(buf)
    }

    /// The series of every subject, in order: from the cache where present,
    /// the rest read in one job on a reader thread.
    fn series_for(
        &self,
        e0: u64,
        subjects: &[Arc<SubjectInfo>],
        need: Need,
        catalog: &Catalog,
    ) -> Result<Vec<Arc<Series>>, EngineError> {
        let width = catalog.value_width();
        if !self.cache.enabled() {
            self.cache.record_miss();
            self.store_loads
                .fetch_add(subjects.len() as u64, AtomicOrdering::Relaxed);
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
        let missing: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            self.cache.record_hit();
        } else {
            self.cache.record_miss();
            let names = missing.iter().map(|i| subjects[*i].subject.clone()).collect();
            let loaded = self.load(e0, names, width)?;
            for (i, series) in missing.into_iter().zip(loaded) {
                out[i] = Some(series);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Loads into the cache those of `names` it does not hold (the
    /// preloader's entry point); returns how many it read.
    pub fn warm(&self, names: &[Arc<str>]) -> Result<usize, EngineError> {
        let e0 = self.epoch();
        let missing: Vec<Arc<str>> = names
            .iter()
            .filter(|n| self.cache.series(n).is_none())
            .cloned()
            .collect();
        let n = missing.len();
        if n > 0 {
            let width = self.catalog.load().value_width();
            self.load(e0, missing, width)?;
        }
        Ok(n)
    }

    /// The series of `names` (none of them cached when the caller looked),
    /// each read once however many requests ask for it at the same time,
    /// and cached.
    fn load(&self, e0: u64, names: Vec<Arc<str>>, width: usize) -> Result<Vec<Arc<Series>>, EngineError> {
        let mut slots = Vec::with_capacity(names.len());
        {
            let mut map = self.inflight();
            for name in &names {
                let slot = match map.get_mut(name) {
                    Some(f) if f.epoch == e0 => {
                        let (tx, rx) = mpsc::channel();
                        f.waiters.push(tx);
                        Slot::Wait(rx)
                    }
                    Some(_) => Slot::Solo,
                    None => match self.cache.series(name) {
                        Some(s) => Slot::Ready(s),
                        None => {
                            map.insert(
                                name.clone(),
                                Flight {
                                    epoch: e0,
                                    waiters: Vec::new(),
                                },
                            );
                            Slot::Lead
                        }
                    },
                };
                slots.push(slot);
            }
        }
        let mut flights = Flights {
            engine: self,
            led: names
                .iter()
                .zip(&slots)
                .filter(|(_, s)| matches!(s, Slot::Lead))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        let to_read: Vec<Arc<str>> = names
            .iter()
            .zip(&slots)
            .filter(|(_, s)| matches!(s, Slot::Lead | Slot::Solo))
            .map(|(n, _)| n.clone())
            .collect();
        let mut read = self.read_series(to_read.clone(), width)?.into_iter();
        let mut by_name: HashMap<Arc<str>, Arc<Series>> = HashMap::with_capacity(to_read.len());
        for name in to_read {
            if let Some(series) = read.next() {
                self.cache_series_if_current(e0, name.clone(), series.clone());
                by_name.insert(name, series);
            }
        }
        flights.complete(&by_name);

        let mut out = Vec::with_capacity(names.len());
        let mut failed = Vec::new();
        for (i, (name, slot)) in names.iter().zip(slots).enumerate() {
            let series = match slot {
                Slot::Ready(s) => Some(s),
                Slot::Lead | Slot::Solo => by_name.get(name).cloned(),
                // The leader failed: read it here instead.
                Slot::Wait(rx) => rx.recv().ok(),
            };
            if series.is_none() {
                failed.push(i);
            }
            out.push(series.unwrap_or_default());
        }
        if !failed.is_empty() {
            let again = failed.iter().map(|i| names[*i].clone()).collect();
            for (i, series) in failed.into_iter().zip(self.read_series(again, width)?) {
                out[i] = series;
            }
        }
        Ok(out)
    }

    /// Reads `names` from SQLite, split across the reader threads when there
    /// are many, in order.
    fn read_series(&self, names: Vec<Arc<str>>, width: usize) -> Result<Vec<Arc<Series>>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.store_loads
            .fetch_add(names.len() as u64, AtomicOrdering::Relaxed);
        let parts = self
            .readers
            .threads()
            .min(names.len().div_ceil(SPLIT_LOAD))
            .max(1);
        let per_job = names.len().div_ceil(parts);
        let jobs = names
            .chunks(per_job)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                self.readers.submit(move |store| {
                    chunk
                        .iter()
                        .map(|name| store.load_series(name, width).map(Arc::new))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for job in jobs {
            // A job that panicked reports it (its thread is replaced); a
            // closed channel means the pool is gone.
            let done = job
                .recv()
                .map_err(|_| StoreError::Worker(crate::storage::pool::PoolError::Gone))?;
            out.extend(done??);
        }
        Ok(out)
    }
}

/// The flights a request leads. Completing hands each series to its
/// waiters; dropping without completing (an error) ends the flights with no
/// series, and the waiters read for themselves.
struct Flights<'a> {
    engine: &'a QueryEngine,
    led: Vec<Arc<str>>,
}

impl Flights<'_> {
    fn complete(&mut self, loaded: &HashMap<Arc<str>, Arc<Series>>) {
        let mut handoff = Vec::new();
        {
            let mut map = self.engine.inflight();
            for name in self.led.drain(..) {
                if let Some(f) = map.remove(&name) {
                    if let Some(series) = loaded.get(&name) {
                        handoff.push((f.waiters, series.clone()));
                    }
                }
            }
        }
        for (waiters, series) in handoff {
            for w in waiters {
                let _ = w.send(series.clone());
            }
        }
    }
}

impl Drop for Flights<'_> {
    fn drop(&mut self) {
        if self.led.is_empty() {
            return;
        }
        let mut map = self.engine.inflight();
        for name in self.led.drain(..) {
            map.remove(&name);
        }
    }
}

/// A kind of question the engine answers (snapshot, period): what differs
/// between them, so [`QueryEngine::serve`] is written once. Static dispatch:
/// the cache-hit path is the same code it was for each route.
trait Question: Sized + Send + 'static {
    /// The response cache's route for this kind.
    const ROUTE: Route;
    fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, EngineError>;
    fn subject_count(&self) -> usize;
    /// The subjects the answer reads (what the gate checks).
    fn subject_names(&self) -> impl Iterator<Item = &str>;
    /// The indicator ids the answer names or sorts by.
    fn indicator_ids(&self) -> impl Iterator<Item = usize>;
    /// The whole response envelope.
    fn render(&self, engine: &QueryEngine, e0: u64, catalog: &Catalog) -> Result<Vec<u8>, EngineError>;
}

impl Question for SnapshotQuery {
    const ROUTE: Route = Route::Snapshot;

    fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, EngineError> {
        SnapshotQuery::parse(body, catalog)
    }

    fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    fn subject_names(&self) -> impl Iterator<Item = &str> {
        self.subjects.iter().map(|s| &*s.subject)
    }

    fn indicator_ids(&self) -> impl Iterator<Item = usize> {
        let sort = match self.sort {
            SortKey::Indicator(id) => Some(id),
            SortKey::ReportDate => None,
        };
        self.ids.iter().map(|i| i.id).chain(sort)
    }

    fn render(&self, engine: &QueryEngine, e0: u64, catalog: &Catalog) -> Result<Vec<u8>, EngineError> {
        engine.render_snapshot(e0, self, catalog)
    }
}

impl Question for PeriodQuery {
    const ROUTE: Route = Route::Period;

    fn parse(body: &[u8], catalog: &Catalog) -> Result<Self, EngineError> {
        PeriodQuery::parse(body, catalog)
    }

    fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    fn subject_names(&self) -> impl Iterator<Item = &str> {
        self.subjects.iter().map(|s| &*s.subject)
    }

    fn indicator_ids(&self) -> impl Iterator<Item = usize> {
        self.ids.iter().map(|i| i.id)
    }

    fn render(&self, engine: &QueryEngine, e0: u64, catalog: &Catalog) -> Result<Vec<u8>, EngineError> {
        engine.render_period(e0, self, catalog)
    }
}

/// The writer publishes every committed change here, on its thread and in
/// commit order (`storage/writer.rs`).
impl Publish for QueryEngine {
    fn after_write(&self, touched: BTreeSet<String>, catalog: Option<Catalog>) {
        QueryEngine::after_write(self, touched, catalog);
    }

    fn after_restore(&self, catalog: Catalog) {
        QueryEngine::after_restore(self, catalog);
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
