//! What version of the data this node holds, and whether it may serve.
//!
//! Shared by the HTTP routes (`/health`, `/stats`, `/metrics`), the write
//! path (master) and the follower (slave). Plain atomics: read on every
//! health check, written once per applied change.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::engine::query::QueryEngine;
use crate::storage::write::Applied;

#[derive(Debug, Default)]
pub struct DataState {
    /// Sequence of the last change applied (the data version).
    pub applied_seq: AtomicU64,
    /// Latest sequence the master reported (the master's own on a master).
    pub master_seq: AtomicU64,
    pub dataset_id: AtomicU64,
    /// Report rows in the database.
    pub total_records: AtomicI64,
    /// False while starting (a slave: until its first sync) and stopping.
    pub ready: AtomicBool,
    /// The master a slave follows, as last located.
    pub master_addr: Mutex<Option<String>>,
}

impl DataState {
    pub fn applied(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    pub fn lag(&self) -> u64 {
        self.master_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.applied())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn master_addr(&self) -> Option<String> {
        self.master_addr.lock().ok().and_then(|m| m.clone())
    }

    /// Publishes a committed change: cache and catalog first, then the new
    /// version (so anyone who sees the version sees the data). Runs on the
    /// writer thread, so commits are published in order.
    pub fn publish(
        &self,
        engine: &QueryEngine,
        applied: Applied,
        seq: u64,
        catalog: Option<crate::model::catalog::Catalog>,
    ) {
        engine.after_write(applied.touched, catalog);
        self.total_records
            .fetch_add(applied.records_delta, Ordering::AcqRel);
        self.applied_seq.fetch_max(seq, Ordering::AcqRel);
        self.master_seq.fetch_max(seq, Ordering::AcqRel);
    }
}
