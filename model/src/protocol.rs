//! The protocol's decisions as pure functions of what a node knows: who may
//! run (E1–E3), which term it takes, how far a fence may go (A1–A2), what a
//! read may see (V1–V2) and which image a follower installs (F2–F3).
//!
//! Each rule that [`Rules`] can switch off falls back to what the code did
//! before the rule existed, so a test can show the failure the rule closes.

use crate::rules::Rules;
use crate::state::{is_candidate, Durable, Etcd, Progress, Report, Waiter, CANDIDATES, NODES};

/// The reports of the candidates other than `me`.
fn other_reports(etcd: &Etcd, me: usize) -> impl Iterator<Item = (usize, &Report)> {
    etcd.reports
        .iter()
        .enumerate()
        .filter(move |(i, _)| *i != me)
        .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
}

/// E1: `acked` exists and this node holds it with the same history, holds
/// its own known acknowledged position, and no report shows a better
/// history or a larger acknowledged position than it holds.
fn normal(d: &Durable, etcd: &Etcd, me: usize) -> bool {
    let Some(a) = etcd.acked else { return false };
    d.seq() >= a.seq
        && d.digest_at(a.seq) == a.digest
        && d.seq() >= d.acked.seq
        && other_reports(etcd, me)
            .all(|(_, r)| (r.last_term, r.seq) <= (d.last_term(), d.seq()) && r.acked_seq <= d.seq())
}

/// Whether this history beats every candidate report by
/// `(last_term, seq, has_data)`, ties going to the lower address.
fn best_history(d: &Durable, etcd: &Etcd, me: usize) -> bool {
    let mine = (d.last_term(), d.seq(), d.has_data());
    other_reports(etcd, me).all(|(i, r)| {
        let theirs = (r.last_term, r.seq, r.has_data);
        mine > theirs || (mine == theirs && me < i)
    })
}

/// Whether every member this node has seen has a report in the view.
fn all_members_reported(d: &Durable, etcd: &Etcd, me: usize) -> bool {
    (0..CANDIDATES)
        .filter(|&m| m != me && d.members & (1 << m) != 0)
        .all(|m| etcd.reports[m].is_some())
}

/// E2: every member reported; this history is the best and reaches every
/// acknowledged position any report (or this node) knows of.
fn recovery(d: &Durable, etcd: &Etcd, me: usize) -> bool {
    all_members_reported(d, etcd, me)
        && best_history(d, etcd, me)
        && d.seq() >= d.acked.seq
        && other_reports(etcd, me).all(|(_, r)| r.acked_seq <= d.seq())
}

/// E3: a cluster that has never elected anyone (a node with data runs at
/// once, an empty one after one ttl: the model does not count time, so
/// both may run whenever no report shows a better history). With the
/// guard: only a node with data, once every member it saw has reported.
fn bootstrap(rules: &Rules, d: &Durable, etcd: &Etcd, me: usize) -> bool {
    if rules.bootstrap_guard && (!d.has_data() || !all_members_reported(d, etcd, me)) {
        return false;
    }
    best_history(d, etcd, me)
}

/// Whether candidate `me`, with durable state `d`, may campaign on the view
/// `etcd` (no leader key in the view is checked by the caller).
pub fn may_run(rules: &Rules, d: &Durable, etcd: &Etcd, me: usize) -> bool {
    if !rules.recovery_waits_for_members {
        return match etcd.acked {
            Some(a) => {
                d.seq() >= a.seq
                    && d.digest_at(a.seq) == a.digest
                    && other_reports(etcd, me).all(|(_, r)| (r.last_term, r.seq) <= (d.last_term(), d.seq()))
            }
            None => best_history(d, etcd, me),
        };
    }
    match etcd.acked {
        Some(a) if (a.term, a.seq) >= (d.acked.term, d.acked.seq) && a.term >= d.term => normal(d, etcd, me),
        None if d.term == 0 && other_reports(etcd, me).all(|(_, r)| r.term == 0) => {
            bootstrap(rules, d, etcd, me)
        }
        _ => recovery(d, etcd, me),
    }
}

/// The term a campaign on this view takes: above `acked.term`, `meta.term`
/// and every report's term.
pub fn next_term(d: &Durable, etcd: &Etcd, me: usize) -> u8 {
    let known = other_reports(etcd, me)
        .map(|(_, r)| r.term)
        .chain(etcd.acked.map(|a| a.term))
        .chain(std::iter::once(d.term))
        .max()
        .unwrap_or(0);
    known + 1
}

/// How many candidate followers confirmed sequence `seq` under `term`.
fn confirmations(rules: &Rules, progress: &[Option<Progress>; NODES], term: u8, seq: u8) -> u8 {
    progress
        .iter()
        .enumerate()
        .filter(|(f, p)| {
            is_candidate(*f)
                && p.is_some_and(|p| (!rules.progress_per_term || p.term == term) && p.from >= seq)
        })
        .count() as u8
}

/// The top of the group the fence may acknowledge now (A1–A2), if any.
/// `waiting` is in sequence order.
pub fn group_top(
    rules: &Rules,
    waiting: &[Waiter],
    progress: &[Option<Progress>; NODES],
    term: u8,
) -> Option<u8> {
    let confirmed = |w: &Waiter| confirmations(rules, progress, term, w.seq) >= w.needed;
    if rules.prefix_group_ack {
        waiting.iter().take_while(|w| confirmed(w)).last().map(|w| w.seq)
    } else {
        waiting.iter().filter(|w| confirmed(w)).map(|w| w.seq).max()
    }
}

/// The newest change a read on this node may return (V1–V2): the change at
/// the horizon, or the last one held when visibility ignores it.
pub fn visible_top(rules: &Rules, d: &Durable) -> Option<u8> {
    let top = if rules.visibility_at_horizon {
        d.acked.seq.min(d.seq())
    } else {
        d.seq()
    };
    (top > 0).then(|| d.log[top as usize - 1].id)
}

/// F2–F3: whether a follower installs the image `leader` sends under
/// `term`.
pub fn image_accepted(rules: &Rules, follower: &Durable, leader: &Durable, term: u8) -> bool {
    if term < follower.term {
        return false;
    }
    if rules.image_guard && (leader.seq() < follower.acked.seq || (follower.has_data() && !leader.has_data()))
    {
        return false;
    }
    true
}
