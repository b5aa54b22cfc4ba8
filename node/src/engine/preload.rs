//! `[cache] preload = all`: warming the cache in the background, so the
//! first questions after a start or a full sync are not cold.
//!
//! One OS thread per warm-up (never a coroutine: it waits on the reader
//! threads) walks every subject of the catalog in chunks and loads the ones
//! the cache lacks through the query engine's normal cold path
//! ([`QueryEngine::warm`]: coalesced with requests, split across the
//! readers, cached only if no write intervened). It stops early, state
//! `full`, once the cache holds about as much as `max_bytes` allows (the
//! last chunk's bytes would not fit, or the cache started evicting), so a
//! warm-up never churns the cache it fills. A new warm-up (after a full
//! sync) supersedes a running one. Progress is in `/health` (`preload`) and
//! the log.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::query::QueryEngine;

/// Subjects loaded per step (one reader job each per reader thread).
const CHUNK: usize = 128;

const OFF: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const FULL: u8 = 3;
const FAILED: u8 = 4;

pub struct Preloader {
    engine: Arc<QueryEngine>,
    generation: AtomicU64,
    state: AtomicU8,
    loaded: AtomicU64,
    total: AtomicU64,
}

impl Preloader {
    pub fn new(engine: Arc<QueryEngine>) -> Arc<Self> {
        Arc::new(Preloader {
            engine,
            generation: AtomicU64::new(0),
            state: AtomicU8::new(OFF),
            loaded: AtomicU64::new(0),
            total: AtomicU64::new(0),
        })
    }

    /// Starts a warm-up on a thread of its own; `why` is for the log.
    pub fn start(self: &Arc<Self>, why: &'static str) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.state.store(RUNNING, Ordering::Release);
        self.loaded.store(0, Ordering::Release);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("preload".into())
            .spawn(move || me.run(generation, why));
        if let Err(e) = spawned {
            tracing::warn!("preload: cannot start its thread: {e}");
            self.state.store(FAILED, Ordering::Release);
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    fn run(&self, generation: u64, why: &str) {
        let started = Instant::now();
        let cache = self.engine.cache();
        let names = self.engine.catalog().subject_names();
        self.total.store(names.len() as u64, Ordering::Release);
        if !cache.enabled() {
            tracing::info!("preload ({why}): the cache is disabled, nothing to do");
            self.state.store(DONE, Ordering::Release);
            return;
        }
        tracing::info!("preload ({why}): warming {} subjects", names.len());
        let start = cache.stats();
        let mut last_chunk = 0u64;
        let mut read = 0usize;
        let mut next_log = names.len() / 4;
        for (i, chunk) in names.chunks(CHUNK).enumerate() {
            if !self.current(generation) {
                return;
            }
            let now = cache.stats();
            if now.bytes + last_chunk > now.max_bytes || now.evictions > start.evictions {
                tracing::info!(
                    "preload ({why}): cache full at {} of {} subjects ({} of {} bytes), stopping",
                    i * CHUNK,
                    names.len(),
                    now.bytes,
                    now.max_bytes
                );
                self.state.store(FULL, Ordering::Release);
                return;
            }
            match self.engine.warm(chunk) {
                Ok(n) => read += n,
                Err(e) => {
                    tracing::warn!("preload ({why}) stopped: {e}");
                    self.state.store(FAILED, Ordering::Release);
                    return;
                }
            }
            last_chunk = cache.stats().bytes.saturating_sub(now.bytes);
            let done = (i * CHUNK + chunk.len()) as u64;
            self.loaded.store(done, Ordering::Release);
            if done as usize >= next_log && done < names.len() as u64 {
                tracing::info!("preload ({why}): {done} of {} subjects", names.len());
                next_log += names.len() / 4;
            }
        }
        if self.current(generation) {
            self.state.store(DONE, Ordering::Release);
        }
        tracing::info!(
            "preload ({why}): done, {} subjects ({read} read from SQLite, {} bytes cached) in {:.1}s",
            names.len(),
            cache.stats().bytes,
            started.elapsed().as_secs_f64()
        );
    }

    /// `/health`'s `preload` object.
    pub fn json(&self) -> serde_json::Value {
        let state = match self.state.load(Ordering::Acquire) {
            RUNNING => "running",
            DONE => "done",
            FULL => "full",
            FAILED => "failed",
            _ => "off",
        };
        serde_json::json!({
            "state": state,
            "loaded": self.loaded.load(Ordering::Acquire),
            "total": self.total.load(Ordering::Acquire),
        })
    }
}
