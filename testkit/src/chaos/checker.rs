//! The checker: pure functions from a recorded history, the faults that
//! ran and what every node's database holds at the end (after every fault
//! healed and the cluster converged) to a [`Report`] of the write
//! protocol's promises (docs/WRITE_PROTOCOL.md):
//!
//! - **P1 durability**: every write answered 200 is on every node, with its
//!   value.
//! - **P2 no phantom reads**: every value a read returned belongs to the
//!   write of that cell (no other value may appear there), and that write
//!   is on every node at the end.
//! - **Convergence**: every node's rows are the same (`db_fingerprint`).
//! - **P3 terms only grow**: one node per term, each node's reigns with
//!   growing terms, over the reigns sampled by [`super::terms`] (filled in
//!   by the run, not by [`check`]).
//!
//! Failed, not-acknowledged and unknown writes constrain nothing; how many
//! of them survived is counted (a clear refusal that survived is worth a
//! look: it says the answer was not honest). Each violation names the
//! operation and the faults around it.

use std::time::Duration;

use super::cluster::NodeState;
use super::history::{cell_of, value_of, write_of_value, Op, OpKind, Outcome};
use super::nemesis::FaultSpan;

/// A fault is "around" an operation when it overlaps from this long before
/// the invocation …
const BEFORE: Duration = Duration::from_secs(2);
/// … to this long after the completion.
const AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// "P1", "P2".
    pub property: &'static str,
    pub op: Op,
    pub problem: String,
    /// The faults around the operation (or the first one after it).
    pub faults: Vec<String>,
}

impl Violation {
    pub fn describe(&self) -> String {
        format!(
            "{}: {} — {}; faults: {}",
            self.property,
            self.op.describe(),
            self.problem,
            if self.faults.is_empty() {
                "none".to_string()
            } else {
                self.faults.join(", ")
            }
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub writes_ok: usize,
    pub writes_failed: usize,
    pub writes_not_acknowledged: usize,
    pub writes_unknown: usize,
    /// Of the failed / not-acknowledged / unknown writes: how many are on
    /// every node at the end.
    pub failed_present: usize,
    pub not_acknowledged_present: usize,
    pub unknown_present: usize,
    /// Reads answered 200 with a value, 200 without one, not answered 200.
    pub reads_value: usize,
    pub reads_empty: usize,
    pub reads_failed: usize,
    /// P1 violations.
    pub lost: Vec<Violation>,
    /// Of those, how many no node holds at all (the others are missing on
    /// some nodes only: the cluster did not converge on them).
    pub lost_everywhere: usize,
    /// P2 violations.
    pub phantoms: Vec<Violation>,
    /// Convergence: one line per node whose rows differ from the first's.
    pub diverged: Vec<String>,
    /// Reigns seen (a node leading a term, per its `/health`).
    pub reigns: usize,
    /// P3 violations over those reigns ([`super::terms::check`]).
    pub terms: Vec<String>,
    /// Why writes were not acknowledged: the answers' start (digits as
    /// `#`), with how many times each came.
    pub write_errors: std::collections::BTreeMap<String, usize>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.lost.is_empty() && self.phantoms.is_empty() && self.diverged.is_empty() && self.terms.is_empty()
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "writes: {} ok, {} failed, {} not acknowledged, {} unknown (present at the end: {} failed, {} not acknowledged, {} unknown); \
             reads: {} with a value, {} empty, {} failed; ok writes lost (P1): {} ({} on no node); phantom reads (P2): {}; nodes diverged: {}; \
             reigns: {}, term violations (P3): {}",
            self.writes_ok,
            self.writes_failed,
            self.writes_not_acknowledged,
            self.writes_unknown,
            self.failed_present,
            self.not_acknowledged_present,
            self.unknown_present,
            self.reads_value,
            self.reads_empty,
            self.reads_failed,
            self.lost.len(),
            self.lost_everywhere,
            self.phantoms.len(),
            self.diverged.len(),
            self.reigns,
            self.terms.len()
        )
    }

    /// The summary and every violation (at most `limit` of each kind).
    pub fn details(&self, limit: usize) -> String {
        let mut out = self.summary();
        out.push('\n');
        for (name, list) in [("lost", &self.lost), ("phantom", &self.phantoms)] {
            for v in list.iter().take(limit) {
                out.push_str(&format!("  {}\n", v.describe()));
            }
            if list.len() > limit {
                out.push_str(&format!("  … and {} more {name}\n", list.len() - limit));
            }
        }
        for d in &self.diverged {
            out.push_str(&format!("  convergence: {d}\n"));
        }
        for t in &self.terms {
            out.push_str(&format!("  P3: {t}\n"));
        }
        let mut errors: Vec<(&String, &usize)> = self.write_errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (e, n) in errors.into_iter().take(8) {
            out.push_str(&format!("  {n} writes not acknowledged: {e}\n"));
        }
        out
    }
}

/// The faults around `op` (see [`BEFORE`], [`AFTER`]); when none overlaps,
/// the last one before it and the first one after it.
pub fn faults_around(op: &Op, faults: &[FaultSpan]) -> Vec<String> {
    let from = op.invoked.saturating_sub(BEFORE);
    let to = op.completed + AFTER;
    let around: Vec<String> = faults
        .iter()
        .filter(|f| f.end >= from && f.start <= to)
        .map(FaultSpan::describe)
        .collect();
    if !around.is_empty() {
        return around;
    }
    let before = faults.iter().rev().find(|f| f.end <= op.invoked);
    let after = faults.iter().find(|f| f.start >= op.completed);
    before
        .map(|f| format!("previous: {}", f.describe()))
        .into_iter()
        .chain(after.map(|f| format!("next: {}", f.describe())))
        .collect()
}

/// Where write `id` is at the end: the nodes without it (or with another
/// value), as "b: absent" / "c: 12.5".
fn missing_on(id: u64, states: &[NodeState]) -> Vec<String> {
    let (cell, value) = (cell_of(id), value_of(id));
    states
        .iter()
        .filter_map(|s| match s.cells.get(&cell) {
            Some(v) if *v == value => None,
            Some(v) => Some(format!("{}: {v}", s.name)),
            None => Some(format!("{}: absent", s.name)),
        })
        .collect()
}

/// An answer's start with its numbers blanked, so alike answers count together.
fn error_class(detail: &str) -> String {
    detail
        .chars()
        .take(90)
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// Checks P1, P2 and convergence (see the module comment).
pub fn check(ops: &[Op], states: &[NodeState], faults: &[FaultSpan]) -> Report {
    let mut r = Report::default();
    for op in ops {
        match &op.kind {
            OpKind::Write { id } => {
                let missing = missing_on(*id, states);
                let present = missing.is_empty() && !states.is_empty();
                if op.outcome != Outcome::Ok {
                    *r.write_errors.entry(error_class(&op.detail)).or_default() += 1;
                }
                match op.outcome {
                    Outcome::Ok => {
                        r.writes_ok += 1;
                        if !present {
                            r.lost_everywhere += usize::from(missing.len() == states.len());
                            r.lost.push(Violation {
                                property: "P1",
                                op: op.clone(),
                                problem: format!(
                                    "acknowledged, not on every node at the end ({})",
                                    missing.join(", ")
                                ),
                                faults: faults_around(op, faults),
                            });
                        }
                    }
                    Outcome::Failed => {
                        r.writes_failed += 1;
                        r.failed_present += usize::from(present);
                    }
                    Outcome::NotAcknowledged => {
                        r.writes_not_acknowledged += 1;
                        r.not_acknowledged_present += usize::from(present);
                    }
                    Outcome::Unknown => {
                        r.writes_unknown += 1;
                        r.unknown_present += usize::from(present);
                    }
                }
            }
            OpKind::Read { id, seen } => {
                if op.outcome != Outcome::Ok {
                    r.reads_failed += 1;
                    continue;
                }
                let Some(v) = seen else {
                    r.reads_empty += 1;
                    continue;
                };
                r.reads_value += 1;
                let problem = if write_of_value(*v) != Some(*id) {
                    Some(format!("{v} is not the value write {id} set ({})", value_of(*id)))
                } else {
                    let missing = missing_on(*id, states);
                    (!missing.is_empty() || states.is_empty()).then(|| {
                        let write = ops
                            .iter()
                            .find(|w| w.kind == OpKind::Write { id: *id })
                            .map_or_else(|| "not recorded".to_string(), Op::describe);
                        format!(
                            "read a write that is not on every node at the end ({}); the write: {write}",
                            missing.join(", ")
                        )
                    })
                };
                if let Some(problem) = problem {
                    r.phantoms.push(Violation {
                        property: "P2",
                        op: op.clone(),
                        problem,
                        faults: faults_around(op, faults),
                    });
                }
            }
        }
    }
    if let Some(first) = states.first() {
        for s in &states[1..] {
            if s.fingerprint != first.fingerprint {
                let only_first = first.cells.keys().filter(|k| !s.cells.contains_key(*k)).count();
                let only_this = s.cells.keys().filter(|k| !first.cells.contains_key(*k)).count();
                r.diverged.push(format!(
                    "node {} holds other rows than node {} (run cells only on {}: {only_first}, only on {}: {only_this})",
                    s.name, first.name, first.name, s.name
                ));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn write(id: u64, outcome: Outcome, at: f64) -> Op {
        Op {
            kind: OpKind::Write { id },
            target: "gateway".into(),
            invoked: secs(at),
            completed: secs(at + 0.1),
            outcome,
            detail: String::new(),
        }
    }

    fn read(id: u64, seen: Option<f64>, at: f64) -> Op {
        Op {
            kind: OpKind::Read { id, seen },
            target: "b".into(),
            invoked: secs(at),
            completed: secs(at + 0.05),
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }

    /// A node holding the writes `ids` (fingerprint: the ids themselves).
    fn node(name: &str, ids: &[u64]) -> NodeState {
        let cells: BTreeMap<String, f64> = ids.iter().map(|&i| (cell_of(i), value_of(i))).collect();
        NodeState {
            name: name.into(),
            fingerprint: format!("{ids:?}"),
            cells,
        }
    }

    fn kill_at(s: f64) -> FaultSpan {
        FaultSpan {
            what: "kill -9 node a (leader)".into(),
            start: secs(s),
            end: secs(s + 3.0),
        }
    }

    #[test]
    fn a_clean_history_holds() {
        let ops = vec![
            write(0, Outcome::Ok, 1.0),
            write(1, Outcome::Failed, 1.2),
            write(2, Outcome::Unknown, 1.4),
            read(0, Some(value_of(0)), 2.0),
            read(1, None, 2.1),
        ];
        let states = [node("a", &[0, 2]), node("b", &[0, 2]), node("c", &[0, 2])];
        let r = check(&ops, &states, &[]);
        assert!(r.holds(), "{}", r.details(10));
        assert_eq!((r.writes_ok, r.writes_failed, r.writes_unknown), (1, 1, 1));
        assert_eq!((r.unknown_present, r.failed_present), (1, 0));
        assert_eq!((r.reads_value, r.reads_empty), (1, 1));
    }

    #[test]
    fn an_acknowledged_write_missing_on_one_node_is_lost_and_names_the_fault() {
        let ops = vec![write(0, Outcome::Ok, 1.0), write(1, Outcome::Ok, 5.0)];
        let states = [node("a", &[0, 1]), node("b", &[0]), node("c", &[0, 1])];
        let r = check(&ops, &states, &[kill_at(6.0), kill_at(40.0)]);
        assert!(!r.holds());
        assert_eq!((r.lost.len(), r.lost_everywhere), (1, 0));
        let v = &r.lost[0];
        assert_eq!(v.op.kind, OpKind::Write { id: 1 });
        assert!(v.problem.contains("b: absent"), "{}", v.problem);
        assert_eq!(v.faults.len(), 1, "{:?}", v.faults);
        assert!(v.faults[0].contains("[6.00s"), "{:?}", v.faults);
        // The nodes differ too.
        assert_eq!(r.diverged.len(), 1, "{:?}", r.diverged);
        assert!(r.diverged[0].contains("node b"), "{:?}", r.diverged);
    }

    #[test]
    fn a_lost_write_far_from_any_fault_names_the_faults_before_and_after_it() {
        let ops = vec![write(3, Outcome::Ok, 1.0)];
        let states = [node("a", &[]), node("b", &[])];
        let r = check(&ops, &states, &[kill_at(30.0)]);
        assert_eq!((r.lost.len(), r.lost_everywhere), (1, 1));
        assert!(
            r.lost[0].faults[0].starts_with("next: "),
            "{:?}",
            r.lost[0].faults
        );
        assert!(r.diverged.is_empty());
    }

    #[test]
    fn a_read_of_a_write_that_is_gone_is_a_phantom_even_if_the_write_was_never_acknowledged() {
        let ops = vec![
            write(0, Outcome::NotAcknowledged, 1.0),
            read(0, Some(value_of(0)), 1.05),
        ];
        let states = [node("a", &[]), node("b", &[])];
        let r = check(&ops, &states, &[]);
        assert!(r.lost.is_empty());
        assert_eq!(r.phantoms.len(), 1);
        assert_eq!(r.writes_not_acknowledged, 1);
    }

    #[test]
    fn a_value_no_write_of_that_cell_set_is_a_phantom() {
        let ops = vec![write(0, Outcome::Ok, 1.0), read(0, Some(value_of(7)), 2.0)];
        let states = [node("a", &[0])];
        let r = check(&ops, &states, &[]);
        assert_eq!(r.phantoms.len(), 1);
        assert!(
            r.phantoms[0].problem.contains("not the value"),
            "{}",
            r.phantoms[0].problem
        );
    }

    #[test]
    fn an_acknowledged_write_with_another_value_is_lost() {
        let ops = vec![write(0, Outcome::Ok, 1.0)];
        let mut a = node("a", &[0]);
        a.cells.insert(cell_of(0), 1.0);
        let r = check(&ops, &[a], &[]);
        assert_eq!(r.lost.len(), 1);
        assert!(r.lost[0].problem.contains("a: 1"), "{}", r.lost[0].problem);
    }

    #[test]
    fn nothing_holds_without_any_node_state() {
        let r = check(&[write(0, Outcome::Ok, 1.0)], &[], &[]);
        assert_eq!(r.lost.len(), 1);
    }
}
