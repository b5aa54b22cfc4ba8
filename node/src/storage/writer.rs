//! The one writer: every change to the database — a master's write, a
//! slave's replicated change, a slave's full restore — goes through
//! [`Writer`], which owns the rule the three used to repeat:
//!
//! 1. run the change in one transaction on the writer thread (one thread,
//!    one read-write connection, so changes are serialised);
//! 2. reload the catalog when the change created or renamed something;
//! 3. publish, still on the writer thread — so changes are published in
//!    commit order — cache and catalog first (through [`Publish`]), then
//!    the new version in [`DataState`], then wake the waiters: anyone who
//!    sees the version sees the data.
//!
//! Publishing into the cache is the engine's business, a layer above; the
//! writer reaches it through the [`Publish`] trait the engine implements
//! (the dependency is inverted, so storage imports nothing above itself).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::batch::{Applied, Batch};
use crate::model::catalog::Catalog;
use crate::storage::error::StoreError;
use crate::storage::state::DataState;
use crate::storage::store::{ElectionMemory, Store, WritePool};

/// What sits on top of the data and must follow every change (the query
/// engine: its cache and catalog). Called on the writer thread, in commit
/// order, before the new version is visible.
pub trait Publish: Send + Sync + 'static {
    /// A change committed: forget what it touched; `catalog` is the new
    /// catalog when the change created or renamed a subject or indicator.
    fn after_write(&self, touched: BTreeSet<String>, catalog: Option<Catalog>);
    /// The whole database was replaced.
    fn after_restore(&self, catalog: Catalog);
}

/// A leader's committed write.
#[derive(Debug, Clone)]
pub struct Committed {
    pub written: u64,
    pub seq: u64,
    pub digest: String,
}

#[derive(Clone)]
pub struct Writer {
    pool: WritePool,
    state: Arc<DataState>,
    publish: Arc<dyn Publish>,
}

impl Writer {
    pub fn new(pool: WritePool, state: Arc<DataState>, publish: Arc<dyn Publish>) -> Self {
        Writer { pool, state, publish }
    }

    /// Leader: commits `batch` as the next change of `term` (with its
    /// change-log entry, the log kept to `retain`) and publishes it.
    /// Returns the rows written, the new sequence and the running history
    /// digest after it (what the acknowledgment records in etcd).
    pub fn write(&self, mut batch: Batch, retain: u64, term: i64) -> Result<Committed, StoreError> {
        self.commit(move |store| {
            let (applied, seq, digest) = store.write_batch(&mut batch, retain, term)?;
            let written = applied.written;
            Ok((applied, seq, Committed { written, seq, digest }))
        })
    }

    /// Follower: applies change `seq` of `term` from the leader (it must be
    /// the next one), logs it (kept to `retain`) and publishes it.
    pub fn apply(
        &self,
        seq: u64,
        digest: Option<String>,
        term: i64,
        retain: u64,
        mut batch: Batch,
    ) -> Result<(), StoreError> {
        self.commit(move |store| {
            let applied = store.apply_replicated(&mut batch, seq, digest.as_deref(), term, retain)?;
            Ok((applied, seq, ()))
        })
    }

    /// Raises the persisted highest term seen (a follower that learned of
    /// a newer leader).
    pub fn raise_term(&self, term: i64) -> Result<(), StoreError> {
        self.pool.call(move |store| store.raise_term(term))?
    }

    /// The persisted highest term seen, on the writer's connection.
    pub fn term(&self) -> Result<i64, StoreError> {
        self.pool.call(move |store| store.term())?
    }

    /// What this node durably knows of the election
    /// ([`Store::election_memory`]), on the writer's connection.
    pub fn election_memory(&self) -> Result<ElectionMemory, StoreError> {
        self.pool.call(move |store| store.election_memory())?
    }

    /// Raises the durably known acknowledged position.
    pub fn raise_known_acked(&self, term: i64, seq: u64) -> Result<(), StoreError> {
        self.pool.call(move |store| store.raise_known_acked(term, seq))?
    }

    /// Updates the remembered candidate members; returns them.
    pub fn remember_members(&self, add: Vec<String>, remove: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.pool
            .call(move |store| store.remember_members(&add, &remove))?
    }

    /// The term of the last applied change.
    pub fn last_term(&self) -> Result<i64, StoreError> {
        self.pool.call(move |store| store.last_term())?
    }

    /// This node's history at `seq` as the election compares it
    /// ([`Store::history_digest_at`]), on the writer's connection.
    pub fn history_digest_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        self.pool.call(move |store| store.history_digest_at(seq))?
    }

    /// Slave: replaces the database with the image at `path` and publishes
    /// its catalog, size and version.
    pub fn restore(&self, path: PathBuf) -> Result<(), StoreError> {
        let (publish, state) = (self.publish.clone(), self.state.clone());
        self.pool.call(move |store| {
            let restored = store.restore_from(&path).and_then(|()| {
                Ok((
                    store.load_catalog()?,
                    store.report_count()?,
                    store.data_version()?,
                ))
            });
            // The usual page cache comes back whether or not the restore
            // worked.
            store.writer_cache()?;
            let (catalog, records, v) = restored?;
            publish.after_restore(catalog);
            state.total_records.store(records as i64, Ordering::Release);
            state.dataset_id.store(v.dataset_id, Ordering::Release);
            state.applied_seq.store(v.version, Ordering::Release);
            state.master_seq.fetch_max(v.version, Ordering::AcqRel);
            state.notify();
            Ok(())
        })?
    }

    /// Reads one `meta` value on the writer's own connection (a slave's
    /// running digest: it must be the one of its last applied change).
    pub fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.pool.call(move |store| store.meta(key))?
    }

    /// Steps 1–3 of the module comment for one change made by `change`.
    fn commit<R, F>(&self, change: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<(Applied, u64, R), StoreError> + Send + 'static,
    {
        let (publish, state) = (self.publish.clone(), self.state.clone());
        self.pool.call(move |store| {
            let (applied, seq, out) = change(store)?;
            let catalog = if applied.catalog_changed {
                Some(store.load_catalog()?)
            } else {
                None
            };
            publish.after_write(applied.touched, catalog);
            state
                .total_records
                .fetch_add(applied.records_delta, Ordering::AcqRel);
            state.applied_seq.fetch_max(seq, Ordering::AcqRel);
            state.master_seq.fetch_max(seq, Ordering::AcqRel);
            state.notify();
            Ok(out)
        })?
    }
}
