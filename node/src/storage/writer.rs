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
//!
//! Visibility (docs/WRITE_PROTOCOL.md, V2): a change that is not known to
//! be acknowledged when it is applied is listed in [`DataState::pending`]
//! with the subjects it touches *before* its transaction commits, and with
//! the indicators it adds before its catalog is published, so no read can
//! load what it wrote while it is unlisted. After publishing, the horizon
//! is refreshed. An image being installed holds every read back until the
//! pending set is listed again from its change log ([`relist_pending`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::batch::{Applied, Batch};
use crate::model::catalog::Catalog;
use crate::storage::error::StoreError;
use crate::storage::horizon::MAX_CHANGES;
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
        let state = self.state.clone();
        self.commit(move |store| {
            let seq = store.data_version()?.version + 1;
            let listed = list(&state, seq, &batch);
            let (applied, seq, digest) =
                unlist_on_error(&state, listed, seq, store.write_batch(&mut batch, retain, term))?;
            list_indicators(&state, listed, seq, &batch, &applied);
            let written = applied.written;
            Ok((applied, seq, Committed { written, seq, digest }))
        })
    }

    /// Follower: applies change `seq` of `term` from the leader (it must be
    /// the next one), logs it (kept to `retain`) and publishes it.
    /// `known_acked`: the acknowledged position the leader's answer
    /// carried, persisted with the change.
    pub fn apply(
        &self,
        change: Replicated,
        retain: u64,
        known_acked: Option<(i64, u64)>,
    ) -> Result<(), StoreError> {
        let state = self.state.clone();
        self.commit(move |store| {
            let Replicated {
                seq,
                digest,
                term,
                mut batch,
            } = change;
            let listed = list(&state, seq, &batch);
            let result =
                store.apply_replicated(&mut batch, seq, digest.as_deref(), term, retain, known_acked);
            let applied = unlist_on_error(&state, listed, seq, result)?;
            list_indicators(&state, listed, seq, &batch, &applied);
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

    /// Follower: replaces the database with the image at `path` (change
    /// `seq`, served under `term`, checked by the caller) and publishes its
    /// catalog, size and version. What this node durably knew of the
    /// election is kept: its term (raised to the image's) and members
    /// always, its known acknowledged position when the image is of the
    /// same dataset (`same_dataset`). Every read is held back from before
    /// the copy until the pending set is listed again from the image's
    /// change log.
    pub fn restore(&self, path: PathBuf, seq: u64, term: i64, same_dataset: bool) -> Result<(), StoreError> {
        let (publish, state) = (self.publish.clone(), self.state.clone());
        self.pool.call(move |store| {
            let memory = store.election_memory()?;
            if !state.visible_on_apply(seq) {
                state.pending.add_everything(seq);
            }
            // Reads that overlap the replacement are not answered from
            // what they read (the history they read may be discarded).
            state.replacing_history();
            let restored = store.restore_from(&path).and_then(|()| {
                store.raise_term(memory.term.max(term))?;
                if same_dataset {
                    store.raise_known_acked(memory.acked_term, memory.acked_seq)?;
                }
                store.remember_members(&memory.members, &[])?;
                Ok((
                    store.load_catalog()?,
                    store.report_count()?,
                    store.data_version()?,
                    store.election_memory()?.acked_seq,
                ))
            });
            // The usual page cache comes back whether or not the restore
            // worked.
            store.writer_cache()?;
            let (catalog, records, v, known_acked) = match restored {
                Ok(r) => r,
                Err(e) => {
                    // Whatever the database holds now is listed again.
                    let relisted = relist_pending(store, &state);
                    state.history_replaced();
                    relisted?;
                    return Err(e);
                }
            };
            publish.after_restore(catalog);
            state.history_replaced();
            state.total_records.store(records as i64, Ordering::Release);
            state.dataset_id.store(v.dataset_id, Ordering::Release);
            state.applied_seq.store(v.version, Ordering::Release);
            state.master_seq.fetch_max(v.version, Ordering::AcqRel);
            state.set_acked(known_acked);
            relist_pending(store, &state)?;
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
            state.refresh_horizon();
            state.notify();
            Ok(out)
        })?
    }
}

/// A change of the leader's, as the follower applies it.
#[derive(Debug)]
pub struct Replicated {
    pub seq: u64,
    /// The leader's running digest after it.
    pub digest: Option<String>,
    /// The term of the leader that made it.
    pub term: i64,
    pub batch: Batch,
}

/// Lists change `seq` as pending (the subjects `batch` touches) unless it
/// is visible at once; returns whether it did. Before the transaction.
fn list(state: &DataState, seq: u64, batch: &Batch) -> bool {
    if state.visible_on_apply(seq) {
        return false;
    }
    let subjects = batch
        .upserts
        .iter()
        .map(|r| r.subject.as_str())
        .chain(batch.deletes.iter().map(|k| k.subject.as_str()));
    state.pending.add(seq, subjects);
    true
}

/// A change that did not commit is not pending.
fn unlist_on_error<T>(
    state: &DataState,
    listed: bool,
    seq: u64,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if result.is_err() && listed {
        state.pending.forget(seq);
    }
    result
}

/// The indicators a listed change declared (ids assigned now), before its
/// catalog is published.
fn list_indicators(state: &DataState, listed: bool, seq: u64, batch: &Batch, applied: &Applied) {
    if listed && applied.catalog_changed && !batch.indicators.is_empty() {
        let added = batch
            .indicators
            .iter()
            .filter(|i| i.id > 0)
            .map(|i| (i.id as usize, i.code.clone()));
        state.pending.add_indicators(seq, added);
    }
}

/// Lists, in one step, what `store`'s change log holds above the horizon
/// (V2: at start, and after an image is installed). A log that does not
/// reach back to the horizon holds every read back until the horizon
/// passes the data version. Nothing without an election.
pub fn relist_pending(store: &Store, state: &DataState) -> Result<(), StoreError> {
    if state.follows_applied() {
        state.pending.replace([], 0);
        return Ok(());
    }
    let horizon = state.acked();
    match store.touches_above(horizon, MAX_CHANGES)? {
        Some(list) => state
            .pending
            .replace(list.into_iter().map(|t| (t.seq, t.subjects, t.indicators)), 0),
        None => {
            let version = store.data_version()?.version;
            tracing::warn!(
                "the change log does not name every change from {horizon} to {version}: \
                 every read waits until change {version} is acknowledged"
            );
            state.pending.replace([], version);
        }
    }
    // The horizon may have moved while the list was read.
    state.pending.prune(state.acked());
    Ok(())
}
