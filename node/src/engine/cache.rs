//! The bounded, data-aware cache.
//!
//! Two kinds of entries share one byte budget (`[cache] max_bytes`):
//! a subject's whole [`Series`] — which answers any snapshot or period
//! question about that subject without SQLite — and finished response bodies
//! keyed by route and the exact request body, so a repeated question is
//! answered by copying bytes, with no JSON parsing at all.
//!
//! Storage is `quick_cache` (sharded, S3-FIFO eviction, weighted by bytes):
//! lookups take one shard's lock for a moment, never a global one, and never
//! across I/O. Every entry's weight is its accounted memory (key, value and a
//! fixed per-entry overhead); the capacity is rounded down so that the sum
//! over shards never exceeds `max_bytes`. `max_bytes = 0` disables caching.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Lifecycle, OptionsBuilder, Weighter};

use crate::model::series::Series;

/// Bookkeeping bytes per entry that the entry's own size does not show
/// (hash table slot, eviction-queue links, `Arc` headers).
const ENTRY_OVERHEAD: u64 = 96;
const SHARDS: usize = 16;

/// Which route a cached response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Snapshot = 1,
    Period = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKey {
    Series(Arc<str>),
    Response {
        route: Route,
        epoch: u64,
        body: Box<[u8]>,
    },
}

/// A borrowed key, so lookups allocate nothing.
#[derive(Debug, Clone, Copy)]
pub enum KeyRef<'a> {
    Series(&'a str),
    Response {
        route: Route,
        epoch: u64,
        body: &'a [u8],
    },
}

impl KeyRef<'_> {
    fn hash_into<H: Hasher>(&self, state: &mut H) {
        match *self {
            KeyRef::Series(s) => {
                state.write_u8(0);
                state.write(s.as_bytes());
            }
            KeyRef::Response { route, epoch, body } => {
                state.write_u8(route as u8);
                state.write_u64(epoch);
                state.write(body);
            }
        }
    }
}

impl CacheKey {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            CacheKey::Series(s) => KeyRef::Series(s),
            CacheKey::Response { route, epoch, body } => KeyRef::Response {
                route: *route,
                epoch: *epoch,
                body,
            },
        }
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash_into(state)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash_into(state)
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        match (*self, key) {
            (KeyRef::Series(a), CacheKey::Series(b)) => a == &**b,
            (
                KeyRef::Response {
                    route: r1,
                    epoch: e1,
                    body: b1,
                },
                CacheKey::Response {
                    route: r2,
                    epoch: e2,
                    body: b2,
                },
            ) => r1 == *r2 && e1 == *e2 && b1 == &**b2,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum CacheValue {
    Series(Arc<Series>),
    Response(Arc<[u8]>),
}

#[derive(Clone)]
struct ByteWeigher;

impl Weighter<CacheKey, CacheValue> for ByteWeigher {
    fn weight(&self, key: &CacheKey, val: &CacheValue) -> u64 {
        let key_bytes = match key {
            CacheKey::Series(s) => s.len(),
            CacheKey::Response { body, .. } => body.len(),
        };
        let val_bytes = match val {
            CacheValue::Series(s) => s.memory_bytes(),
            CacheValue::Response(b) => b.len(),
        };
        ENTRY_OVERHEAD + key_bytes as u64 + val_bytes as u64
    }
}

/// Counts evictions (and entries too large to be admitted at all).
#[derive(Clone, Default)]
struct EvictionCounter(Arc<AtomicU64>);

impl Lifecycle<CacheKey, CacheValue> for EvictionCounter {
    type RequestState = ();
    fn on_evict(&self, _state: &mut (), _key: CacheKey, _val: CacheValue) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Inner = Cache<CacheKey, CacheValue, ByteWeigher, quick_cache::DefaultHashBuilder, EvictionCounter>;

/// Counters and sizes, as `/stats` and `/metrics` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

pub struct DataCache {
    inner: Option<Inner>,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: EvictionCounter,
}

impl DataCache {
    pub fn new(max_bytes: u64) -> Self {
        let evictions = EvictionCounter::default();
        let capacity = max_bytes / SHARDS as u64 * SHARDS as u64;
        let inner = if capacity == 0 {
            None
        } else {
            let estimated = (capacity / 8192).clamp(64, 1 << 20) as usize;
            OptionsBuilder::new()
                .shards(SHARDS)
                .estimated_items_capacity(estimated)
                .weight_capacity(capacity)
                .build()
                .ok()
                .map(|opts| Cache::with_options(opts, ByteWeigher, Default::default(), evictions.clone()))
        };
        DataCache {
            inner,
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn series(&self, subject: &str) -> Option<Arc<Series>> {
        match self.inner.as_ref()?.get(&KeyRef::Series(subject))? {
            CacheValue::Series(s) => Some(s),
            CacheValue::Response(_) => None,
        }
    }

    pub fn insert_series(&self, subject: Arc<str>, series: Arc<Series>) {
        if let Some(c) = &self.inner {
            c.insert(CacheKey::Series(subject), CacheValue::Series(series));
        }
    }

    /// A finished response for `body`, computed at data `epoch`.
    pub fn response(&self, route: Route, epoch: u64, body: &[u8]) -> Option<Arc<[u8]>> {
        match self
            .inner
            .as_ref()?
            .get(&KeyRef::Response { route, epoch, body })?
        {
            CacheValue::Response(b) => Some(b),
            CacheValue::Series(_) => None,
        }
    }

    pub fn insert_response(&self, route: Route, epoch: u64, body: &[u8], response: Arc<[u8]>) {
        if let Some(c) = &self.inner {
            let key = CacheKey::Response {
                route,
                epoch,
                body: body.into(),
            };
            c.insert(key, CacheValue::Response(response));
        }
    }

    /// Drops the cached series of `subject`. Cached responses need no
    /// dropping: their keys carry the data epoch, which every write moves on,
    /// so older ones are never looked up again and age out.
    pub fn invalidate_subject(&self, subject: &str) {
        if let Some(c) = &self.inner {
            c.remove(&KeyRef::Series(subject));
        }
    }

    /// Drops every entry (after a full resync), keeping the counters.
    pub fn clear(&self) {
        if let Some(c) = &self.inner {
            c.clear();
        }
    }

    /// A request answered without SQLite.
    pub fn record_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that had to read SQLite.
    pub fn record_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Empties the cache and zeroes the counters.
    pub fn reset(&self) {
        if let Some(c) = &self.inner {
            c.clear();
        }
        self.hits.store(0, Ordering::Relaxed);
        self.misses.store(0, Ordering::Relaxed);
        self.evictions.0.store(0, Ordering::Relaxed);
    }

    /// Every cached series, for the cache dump.
    pub fn all_series(&self) -> Vec<(Arc<str>, Arc<Series>)> {
        let Some(c) = &self.inner else { return Vec::new() };
        c.iter()
            .filter_map(|(k, v)| match (k, v) {
                (CacheKey::Series(s), CacheValue::Series(v)) => Some((s, v)),
                _ => None,
            })
            .collect()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            bytes: self.inner.as_ref().map_or(0, |c| c.weight()),
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.0.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::series::Report;

    fn series(n: usize) -> Arc<Series> {
        let reports = (0..n)
            .map(|i| Report {
                report_date: i as i64,
                end_date: "2020-03-31".into(),
                year: "2020".into(),
                period: "Q1".into(),
                declare_date: "2020-04-30".into(),
                values: vec![1.0; 9].into_boxed_slice(),
            })
            .collect();
        Arc::new(Series::new(reports))
    }

    #[test]
    fn bytes_never_exceed_max_and_evictions_are_counted() {
        let max = 200_000;
        let cache = DataCache::new(max);
        for i in 0..2_000 {
            cache.insert_series(Arc::from(format!("33:{i:06}")), series(40));
            let s = cache.stats();
            assert!(s.bytes <= max, "bytes {} > max {}", s.bytes, max);
        }
        let s = cache.stats();
        assert!(s.evictions > 0);
        assert!(s.entries > 0 && s.entries < 2_000);
    }

    #[test]
    fn responses_and_series_are_distinct_keys() {
        let cache = DataCache::new(1 << 20);
        cache.insert_series(Arc::from("33:000001"), series(2));
        cache.insert_response(Route::Snapshot, 1, b"33:000001", Arc::from(&b"resp"[..]));
        assert!(cache.series("33:000001").is_some());
        assert_eq!(
            cache.response(Route::Snapshot, 1, b"33:000001").as_deref(),
            Some(&b"resp"[..])
        );
        assert!(cache.response(Route::Period, 1, b"33:000001").is_none());
        // Another data epoch: the old response is not found.
        assert!(cache.response(Route::Snapshot, 2, b"33:000001").is_none());
        cache.invalidate_subject("33:000001");
        assert!(cache.series("33:000001").is_none());
    }

    #[test]
    fn zero_max_bytes_disables() {
        let cache = DataCache::new(0);
        assert!(!cache.enabled());
        cache.insert_series(Arc::from("33:000001"), series(2));
        assert!(cache.series("33:000001").is_none());
        assert_eq!(cache.stats().bytes, 0);
    }
}
