//! What a read may not see yet (docs/WRITE_PROTOCOL.md, V2): the changes
//! above the acknowledged horizon, by what they touch.
//!
//! [`Pending`] holds, for every committed change not yet acknowledged, the
//! subjects it touches and the indicators it adds. The one writer adds a
//! change *before* its transaction commits (so no reader can load its rows
//! while it is not listed) and the horizon removes it once it passes the
//! change ([`Pending::prune`], called by `DataState` when the horizon
//! moves). A read asks [`Pending::blocking`] after it has read its data:
//! whatever it read was listed before it was readable, so if nothing it
//! touches is listed then, nothing it read is unacknowledged.
//!
//! Guarantees:
//! - [`Pending::is_empty`] is one atomic load: a read while nothing is
//!   pending takes no lock.
//! - Bounded: at most [`MAX_CHANGES`] changes and [`MAX_SUBJECTS`] subject
//!   entries are tracked one by one; past that (or when a change's subjects
//!   are not known: an image being installed, a change log that does not
//!   reach back to the horizon) the change is kept as *everything*: every
//!   read waits for it. Never unbounded, never less strict.
//! - The lock is a `std` mutex held only to look up or edit the maps,
//!   never across a wait or any I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Changes tracked one by one; more are folded into "everything".
pub const MAX_CHANGES: usize = 4096;
/// Subject entries (over all tracked changes) tracked one by one.
pub const MAX_SUBJECTS: usize = 100_000;

/// A pending change a read touches: the one it must wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The highest pending change the read touches: once the horizon
    /// reaches it, everything the read saw is acknowledged.
    pub seq: u64,
    /// One of those changes, for the message: `change 12 touching 33:000001`.
    pub what: String,
}

/// The changes above the horizon (see the module comment).
#[derive(Default)]
pub struct Pending {
    /// Tracked changes, plus one while "everything" is pending: 0 means
    /// nothing is pending.
    count: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Pending changes one by one: what each touches.
    changes: BTreeMap<u64, Touches>,
    /// Subject → the highest pending change touching it.
    subjects: HashMap<Box<str>, u64>,
    /// Indicator id → the highest pending change adding it, and its code.
    indicators: HashMap<usize, (u64, Box<str>)>,
    /// Subject entries over all `changes`.
    subject_entries: usize,
    /// Every read waits for this change (0: none).
    everything: u64,
}

#[derive(Default)]
struct Touches {
    subjects: Vec<Box<str>>,
    indicators: Vec<usize>,
}

impl Inner {
    fn count(&self) -> usize {
        self.changes.len() + usize::from(self.everything > 0)
    }

    fn fold_into_everything(&mut self, seq: u64) {
        self.everything = self.everything.max(seq);
    }

    fn add<'a>(&mut self, seq: u64, subjects: impl IntoIterator<Item = &'a str>) {
        let mut list: Vec<Box<str>> = Vec::new();
        let mut overflow = self.changes.len() >= MAX_CHANGES;
        for s in subjects {
            if overflow {
                break;
            }
            if self.subject_entries + list.len() >= MAX_SUBJECTS {
                overflow = true;
                break;
            }
            list.push(s.into());
        }
        if overflow {
            self.fold_into_everything(seq);
            return;
        }
        for s in &list {
            let top = self.subjects.entry(s.clone()).or_insert(seq);
            *top = (*top).max(seq);
        }
        self.subject_entries += list.len();
        self.changes.entry(seq).or_default().subjects.extend(list);
    }

    fn add_indicators(&mut self, seq: u64, added: impl IntoIterator<Item = (usize, String)>) {
        if self.everything >= seq {
            return;
        }
        let mut ids = Vec::new();
        for (id, code) in added {
            let top = self.indicators.entry(id).or_insert((seq, code.into()));
            top.0 = top.0.max(seq);
            ids.push(id);
        }
        if !ids.is_empty() {
            self.changes.entry(seq).or_default().indicators.extend(ids);
        }
    }
}

impl Pending {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_count(&self, inner: &Inner) {
        self.count.store(inner.count(), Ordering::Release);
    }

    /// Whether nothing is pending: one atomic load.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Lists change `seq`, touching `subjects`, before it commits.
    pub fn add<'a>(&self, seq: u64, subjects: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner();
        inner.add(seq, subjects);
        self.publish_count(&inner);
    }

    /// Change `seq` (listed already, or not) adds these indicators (id,
    /// code): a read naming one waits for it. Called after the change is
    /// applied and before the new catalog is published.
    pub fn add_indicators(&self, seq: u64, added: impl IntoIterator<Item = (usize, String)>) {
        let mut inner = self.inner();
        inner.add_indicators(seq, added);
        self.publish_count(&inner);
    }

    /// Replaces the whole set, in one step: `changes` (seq, subjects,
    /// indicators) and, when not 0, `everything` (a change every read
    /// waits for). A node that starts, or installed an image, lists here
    /// what its change log holds above the horizon.
    pub fn replace(
        &self,
        changes: impl IntoIterator<Item = (u64, Vec<String>, Vec<(usize, String)>)>,
        everything: u64,
    ) {
        let mut fresh = Inner::default();
        for (seq, subjects, indicators) in changes {
            fresh.add(seq, subjects.iter().map(String::as_str));
            fresh.add_indicators(seq, indicators);
        }
        fresh.fold_into_everything(everything);
        let mut inner = self.inner();
        *inner = fresh;
        self.publish_count(&inner);
    }

    /// Every read waits for change `seq` (what it touches is not known).
    pub fn add_everything(&self, seq: u64) {
        let mut inner = self.inner();
        inner.fold_into_everything(seq);
        self.publish_count(&inner);
    }

    /// Change `seq` did not commit: it is not pending after all. (Rare: a
    /// write whose transaction failed. An earlier pending change touching
    /// the same subject keeps it listed, found by a scan.)
    pub fn forget(&self, seq: u64) {
        let mut inner = self.inner();
        if let Some(t) = inner.changes.remove(&seq) {
            inner.subject_entries = inner.subject_entries.saturating_sub(t.subjects.len());
            for s in t.subjects {
                let top = inner
                    .changes
                    .iter()
                    .rev()
                    .find(|(_, c)| c.subjects.contains(&s))
                    .map(|(seq, _)| *seq);
                match top {
                    Some(top) => inner.subjects.insert(s, top),
                    None => inner.subjects.remove(&s),
                };
            }
            for id in t.indicators {
                let top = inner
                    .changes
                    .iter()
                    .rev()
                    .find(|(_, c)| c.indicators.contains(&id))
                    .map(|(seq, _)| *seq);
                match (top, inner.indicators.get_mut(&id)) {
                    (Some(top), Some(entry)) => entry.0 = top,
                    _ => {
                        inner.indicators.remove(&id);
                    }
                }
            }
        }
        self.publish_count(&inner);
    }

    /// The horizon reached `horizon`: every change up to it is visible.
    pub fn prune(&self, horizon: u64) {
        if self.is_empty() {
            return;
        }
        let mut inner = self.inner();
        let above = inner.changes.split_off(&horizon.saturating_add(1));
        let passed = std::mem::replace(&mut inner.changes, above);
        for (seq, t) in passed {
            drop_touches(&mut inner, seq, t);
        }
        if inner.everything <= horizon {
            inner.everything = 0;
        }
        self.publish_count(&inner);
    }

    /// The highest pending change at or below `up_to` that a read of these
    /// subjects and indicator ids touches, if any.
    pub fn blocking<'a>(
        &self,
        subjects: impl IntoIterator<Item = &'a str>,
        indicators: impl IntoIterator<Item = usize>,
        up_to: u64,
    ) -> Option<Blocked> {
        if self.is_empty() {
            return None;
        }
        let inner = self.inner();
        let mut found: Option<Blocked> = None;
        let mut note = |seq: u64, what: &dyn Fn() -> String| {
            if seq > up_to {
                return;
            }
            match &mut found {
                Some(b) if b.seq >= seq => {}
                Some(b) => b.seq = seq,
                None => {
                    found = Some(Blocked { seq, what: what() });
                }
            }
        };
        if inner.everything > 0 {
            let seq = inner.everything;
            note(seq, &|| {
                format!("change {seq} (what it touches is not known here)")
            });
        }
        if !inner.subjects.is_empty() {
            for s in subjects {
                if let Some(&seq) = inner.subjects.get(s) {
                    note(seq, &|| format!("change {seq} touching {s}"));
                }
            }
        }
        if !inner.indicators.is_empty() {
            for id in indicators {
                if let Some((seq, code)) = inner.indicators.get(&id) {
                    let seq = *seq;
                    note(seq, &|| format!("change {seq} adding indicator {code}"));
                }
            }
        }
        found
    }

    /// Pending changes (tracked one by one) and whether "everything" is
    /// pending, for `/health`.
    pub fn describe(&self) -> (usize, u64) {
        if self.is_empty() {
            return (0, 0);
        }
        let inner = self.inner();
        (inner.changes.len(), inner.everything)
    }
}

/// Removes the entries of change `seq`, the lowest pending one, from the
/// subject and indicator indexes (an entry stays while a later pending
/// change touches the same key).
fn drop_touches(inner: &mut Inner, seq: u64, t: Touches) {
    inner.subject_entries = inner.subject_entries.saturating_sub(t.subjects.len());
    for s in t.subjects {
        if inner.subjects.get(&s).is_some_and(|top| *top <= seq) {
            inner.subjects.remove(&s);
        }
    }
    for id in t.indicators {
        if inner.indicators.get(&id).is_some_and(|(top, _)| *top <= seq) {
            inner.indicators.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(p: &Pending, subjects: &[&str]) -> Option<u64> {
        p.blocking(subjects.iter().copied(), [], u64::MAX).map(|b| b.seq)
    }

    #[test]
    fn a_pending_subject_blocks_until_the_horizon_passes_its_last_change() {
        let p = Pending::default();
        assert!(p.is_empty());
        p.add(5, ["33:000001", "33:000002"]);
        p.add(7, ["33:000001"]);
        assert!(!p.is_empty());
        assert_eq!(blocked(&p, &["33:000001"]), Some(7));
        assert_eq!(blocked(&p, &["33:000002"]), Some(5));
        assert_eq!(
            blocked(&p, &["33:000003"]),
            None,
            "an untouched subject is served"
        );
        let b = p.blocking(["33:000002"], [], u64::MAX).unwrap();
        assert_eq!(b.what, "change 5 touching 33:000002");
        p.prune(5);
        assert_eq!(blocked(&p, &["33:000002"]), None);
        assert_eq!(blocked(&p, &["33:000001"]), Some(7), "change 7 still pending");
        p.prune(7);
        assert!(p.is_empty());
        assert_eq!(blocked(&p, &["33:000001"]), None);
    }

    #[test]
    fn up_to_bounds_what_is_reported() {
        let p = Pending::default();
        p.add(5, ["a:1"]);
        p.add(9, ["a:1"]);
        assert_eq!(
            p.blocking(["a:1"], [], 8).map(|b| b.seq),
            None,
            "only 9 touches a:1 now"
        );
        p.add(3, ["b:1"]);
        assert_eq!(p.blocking(["a:1", "b:1"], [], 8).map(|b| b.seq), Some(3));
    }

    #[test]
    fn an_added_indicator_blocks_reads_naming_it() {
        let p = Pending::default();
        p.add(4, ["a:1"]);
        p.add_indicators(4, [(9, "new_ratio".to_string())]);
        let b = p.blocking(["z:9"], [1, 9], u64::MAX).unwrap();
        assert_eq!(
            (b.seq, b.what.as_str()),
            (4, "change 4 adding indicator new_ratio")
        );
        assert_eq!(p.blocking(["z:9"], [1, 2], u64::MAX), None);
        p.prune(4);
        assert_eq!(p.blocking(["z:9"], [9], u64::MAX), None);
        assert!(p.is_empty());
    }

    #[test]
    fn a_change_that_did_not_commit_is_forgotten() {
        let p = Pending::default();
        p.add(3, ["a:1"]);
        p.add(4, ["a:1", "b:1"]);
        p.add_indicators(3, [(5, "x".to_string())]);
        p.add_indicators(4, [(5, "x".to_string())]);
        p.forget(4);
        assert_eq!(p.blocking([], [5], u64::MAX).map(|b| b.seq), Some(3));
        assert_eq!(blocked(&p, &["a:1"]), Some(3), "change 3 still lists a:1");
        assert_eq!(blocked(&p, &["b:1"]), None);
        p.forget(3);
        assert!(p.is_empty());
    }

    #[test]
    fn everything_blocks_every_read_until_passed() {
        let p = Pending::default();
        p.add_everything(20);
        let b = p.blocking(["x:1"], [], u64::MAX).unwrap();
        assert_eq!(b.seq, 20);
        assert!(b.what.contains("change 20"), "{}", b.what);
        p.prune(19);
        assert!(blocked(&p, &["x:1"]).is_some());
        p.prune(20);
        assert!(p.is_empty());
    }

    #[test]
    fn too_many_changes_fold_into_everything_never_less_strict() {
        let p = Pending::default();
        for seq in 1..=MAX_CHANGES as u64 {
            p.add(seq, ["a:1"]);
        }
        let over = MAX_CHANGES as u64 + 1;
        p.add(over, ["b:1"]);
        assert_eq!(p.describe(), (MAX_CHANGES, over));
        assert_eq!(
            blocked(&p, &["b:1"]),
            Some(over),
            "an untracked change still blocks"
        );
        assert_eq!(blocked(&p, &["c:1"]), Some(over));
        p.prune(over);
        assert!(p.is_empty());
        assert_eq!(p.inner().subject_entries, 0);
    }

    #[test]
    fn too_many_subjects_fold_into_everything() {
        let p = Pending::default();
        let names: Vec<String> = (0..MAX_SUBJECTS + 1).map(|i| format!("1:{i}")).collect();
        p.add(2, names.iter().map(String::as_str));
        assert_eq!(p.describe(), (0, 2));
        assert!(p.inner().subjects.is_empty(), "nothing tracked one by one");
        assert_eq!(blocked(&p, &["9:9"]), Some(2));
    }

    #[test]
    fn replace_lists_what_a_log_holds_in_one_step() {
        let p = Pending::default();
        p.add(2, ["old:1"]);
        p.replace(
            [
                (8, vec!["a:1".to_string()], vec![]),
                (9, vec!["b:1".to_string()], vec![(4, "x".to_string())]),
            ],
            0,
        );
        assert_eq!(blocked(&p, &["old:1"]), None, "the old set is gone");
        assert_eq!(blocked(&p, &["a:1", "b:1"]), Some(9));
        assert_eq!(p.blocking([], [4], u64::MAX).map(|b| b.seq), Some(9));
        p.replace([], 12);
        assert_eq!(p.describe(), (0, 12));
        p.replace([], 0);
        assert!(p.is_empty());
    }
}
