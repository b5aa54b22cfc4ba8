//! Who may lead: the election's decisions as pure functions of the view
//! from etcd and the node's own durable standing (docs/WRITE_PROTOCOL.md,
//! E1–E3). No I/O and no clock: the caller passes the times, so every rule
//! is tested here without etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::records::{Acked, Report};

/// What this node durably knows of itself (its database's `meta` and
/// change log), as the election reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// The highest term seen.
    pub term: i64,
    /// The term of the last change.
    pub last_term: i64,
    /// The last applied change.
    pub seq: u64,
    /// The highest acknowledged position known, `(term, seq)`.
    pub acked: (i64, u64),
    pub has_data: bool,
    pub dataset: u64,
    /// The candidate members remembered.
    pub members: Vec<String>,
    /// Whether this node may start a cluster with no data (`mode =
    /// master`): a candidate slave never does.
    pub may_bootstrap: bool,
}

/// Which rule an election runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// E1: etcd's `acked` is there and not behind anything this node knows.
    Normal,
    /// E2: etcd lost or went back in its data.
    Recovery,
    /// E3: no election has ever been won here.
    Bootstrap,
}

/// Whether etcd's acknowledged position is behind what this node durably
/// knows (etcd lost or went back in its data).
pub fn etcd_regressed(acked: Option<&Acked>, me: &Standing) -> bool {
    match acked {
        None => me.term > 0,
        Some(a) => a.term < me.term || (a.term, a.seq) < me.acked,
    }
}

/// The rule this node's election runs under, given etcd's `acked` and the
/// other nodes' reports. Only this node's own durable knowledge puts it
/// under E2: a report may be stale (a dead node's lives until its lease
/// runs out), and E2 trusts reports for positions, so a stale one must not
/// be what moves a node away from the `acked` record that holds.
pub fn mode(acked: Option<&Acked>, me: &Standing, reports: &BTreeMap<String, Report>) -> Mode {
    if etcd_regressed(acked, me) {
        return Mode::Recovery;
    }
    if acked.is_none() {
        if reports.values().any(|r| r.term > 0) {
            return Mode::Recovery;
        }
        return Mode::Bootstrap;
    }
    Mode::Normal
}

/// The term a winner takes: larger than every term it knows of.
pub fn next_term(acked: Option<&Acked>, me: &Standing, reports: &BTreeMap<String, Report>) -> i64 {
    let known = reports
        .values()
        .flat_map(|r| [r.term, r.acked_term])
        .chain([me.term, me.acked.0, acked.map_or(0, |a| a.term)])
        .max()
        .unwrap_or(0);
    known + 1
}

/// Whether a node with this history may lead, given the acknowledged
/// position (E1's first condition). `Err` says why not.
pub fn may_lead(acked: Option<&Acked>, position: u64, digest_at_acked: Option<&str>) -> Result<(), String> {
    let Some(a) = acked else { return Ok(()) };
    if position < a.seq {
        return Err(format!(
            "behind the acknowledged position: applied {position}, acknowledged {} (term {})",
            a.seq, a.term
        ));
    }
    // An empty digest past change 0 names no history (recorded for data
    // without a change log by an earlier version): only the length counts.
    if a.seq > 0 && !a.digest.is_empty() && digest_at_acked != Some(a.digest.as_str()) {
        return Err(format!(
            "history differs from the acknowledged one at change {} (term {})",
            a.seq, a.term
        ));
    }
    Ok(())
}

/// Everything a decision reads.
pub struct Inputs<'a> {
    pub me: &'a str,
    pub standing: &'a Standing,
    /// This node's digest at `acked.seq`, when it can name it.
    pub digest_at_acked: Option<&'a str>,
    pub acked: Option<&'a Acked>,
    /// Other nodes' reports (this node's own is ignored if present).
    pub reports: &'a BTreeMap<String, Report>,
    pub excused: &'a BTreeSet<String>,
    /// How long the view has been listed and watched without a break.
    pub synced_for: Duration,
    /// How long no leader has been seen.
    pub leaderless_for: Duration,
    pub ttl: Duration,
}

/// How long a candidate watches after (re)listing before it runs: reports
/// of the others (recovering ones included) arrive meanwhile.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// May this candidate run now (no leader key exists)? `Err` says why not,
/// in words for `/health`.
pub fn decide(i: &Inputs<'_>) -> Result<Mode, String> {
    let me = i.standing;
    let others: BTreeMap<&str, &Report> = i
        .reports
        .iter()
        .filter(|(a, _)| a.as_str() != i.me)
        .map(|(a, r)| (a.as_str(), r))
        .collect();
    if i.synced_for < SETTLE {
        return Err("waiting for the other nodes' reports".into());
    }
    let mode = mode(i.acked, me, i.reports);
    match mode {
        Mode::Normal => {
            may_lead(i.acked, me.seq, i.digest_at_acked)?;
            if me.seq < me.acked.1 {
                return Err(format!(
                    "behind an acknowledged position this node knows of: applied {}, acknowledged {}",
                    me.seq, me.acked.1
                ));
            }
            // A node that knows of an acknowledged change this one lacks
            // (it saw etcd go back, or was told by a leader): never run.
            if let Some(knows) = others.values().find(|r| r.acked_seq > me.seq) {
                return Err(format!(
                    "{} knows change {} of term {} was acknowledged; this node holds only {}",
                    knows.addr, knows.acked_seq, knows.acked_term, me.seq
                ));
            }
            let acked_seq = i.acked.map_or(0, |a| a.seq);
            // Liveness, not safety (the campaign's guard is the safety):
            // let a candidate with a more recent history go first, for a
            // while.
            if i.leaderless_for < i.ttl * 2 {
                if let Some(better) = others
                    .values()
                    .find(|r| r.candidate && r.seq >= acked_seq && r.history_rank() > mine(me))
                {
                    return Err(format!(
                        "{} holds a more recent history (change {} of term {}); it goes first",
                        better.addr, better.seq, better.last_term
                    ));
                }
            }
        }
        Mode::Recovery | Mode::Bootstrap => {
            // Every member remembered (by this node or any reporter) must
            // have reported: the one missing may hold the newest history.
            let mut required: BTreeSet<&str> = me.members.iter().map(String::as_str).collect();
            for r in others.values() {
                required.extend(r.members.iter().map(String::as_str));
            }
            required.remove(i.me);
            let missing: Vec<&str> = required
                .into_iter()
                .filter(|m| !others.contains_key(m) && !i.excused.contains(*m))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: waiting for the report of member(s) {} \
                     (an operator may excuse a member that is gone for good)",
                    why_no_acked(mode),
                    missing.join(", ")
                ));
            }
            if mode == Mode::Recovery && i.synced_for < i.ttl + SETTLE {
                return Err(
                    "etcd lost or went back in its data: letting reports from before it expire".into(),
                );
            }
            let best_known_acked = others
                .values()
                .map(|r| (r.acked_term, r.acked_seq))
                .chain([me.acked])
                .max()
                .unwrap_or((0, 0));
            if me.seq < best_known_acked.1 {
                return Err(format!(
                    "{}: change {} of term {} was acknowledged, this node holds only {}",
                    why_no_acked(mode),
                    best_known_acked.1,
                    best_known_acked.0,
                    me.seq
                ));
            }
            beats_every_candidate(i.me, me, &others)?;
            if !me.has_data && others.values().any(|r| r.has_data) {
                return Err("empty, while a node with data is known".into());
            }
            if mode == Mode::Bootstrap && !me.has_data && !me.may_bootstrap {
                return Err(
                    "empty, and only a `mode = master` node starts a cluster with no data: \
                     waiting for a node with data"
                        .into(),
                );
            }
            if mode == Mode::Bootstrap && !me.has_data && i.leaderless_for < i.ttl {
                return Err(format!(
                    "empty and no leader ever elected: giving a node with data {}s to run first",
                    i.ttl.as_secs()
                ));
            }
        }
    }
    Ok(mode)
}

fn why_no_acked(mode: Mode) -> &'static str {
    match mode {
        Mode::Recovery => "etcd lost or went back in its data",
        _ => "no leader ever elected here",
    }
}

fn mine(me: &Standing) -> (i64, u64, bool) {
    (me.last_term, me.seq, me.has_data)
}

/// E2/E3: this node's history is the best among the candidates' (ties go
/// to the lower address).
fn beats_every_candidate(addr: &str, me: &Standing, others: &BTreeMap<&str, &Report>) -> Result<(), String> {
    for r in others.values().filter(|r| r.candidate) {
        let theirs = r.history_rank();
        if theirs > mine(me) || (theirs == mine(me) && r.addr.as_str() < addr) {
            return Err(format!(
                "{} holds a history at least as recent (change {} of term {}); it leads",
                r.addr, r.seq, r.last_term
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "10.0.0.1:8080";
    const B: &str = "10.0.0.2:8080";
    const C: &str = "10.0.0.3:8080";

    fn acked(term: i64, seq: u64, digest: &str) -> Acked {
        Acked {
            term,
            seq,
            digest: digest.into(),
        }
    }

    fn standing(term: i64, last_term: i64, seq: u64, acked: (i64, u64)) -> Standing {
        Standing {
            term,
            last_term,
            seq,
            acked,
            has_data: seq > 0,
            dataset: 1,
            members: vec![ME.into(), B.into()],
            may_bootstrap: false,
        }
    }

    fn report(addr: &str, last_term: i64, seq: u64) -> Report {
        Report {
            addr: addr.into(),
            candidate: true,
            term: last_term,
            last_term,
            seq,
            acked_term: last_term,
            acked_seq: seq,
            has_data: seq > 0,
            dataset: 1,
            members: vec![ME.into(), B.into()],
            recovering: false,
        }
    }

    fn reports(rs: &[Report]) -> BTreeMap<String, Report> {
        rs.iter().map(|r| (r.addr.clone(), r.clone())).collect()
    }

    fn decide_with(
        standing: &Standing,
        digest: Option<&str>,
        acked: Option<&Acked>,
        rs: &BTreeMap<String, Report>,
        excused: &BTreeSet<String>,
        synced_for: Duration,
    ) -> Result<Mode, String> {
        decide(&Inputs {
            me: ME,
            standing,
            digest_at_acked: digest,
            acked,
            reports: rs,
            excused,
            synced_for,
            leaderless_for: synced_for,
            ttl: Duration::from_secs(2),
        })
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn anyone_may_lead_before_any_acknowledgment() {
        assert!(may_lead(None, 0, None).is_ok());
        assert!(may_lead(None, 5, None).is_ok());
    }

    #[test]
    fn a_node_behind_the_acknowledged_position_may_not_lead() {
        let d = "a".repeat(64);
        let e = may_lead(Some(&acked(7, 10, &d)), 9, None).unwrap_err();
        assert!(e.contains("applied 9, acknowledged 10"), "{e}");
        assert!(may_lead(Some(&acked(7, 10, &d)), 10, Some(&d)).is_ok());
        assert!(may_lead(Some(&acked(7, 10, &d)), 12, Some(&d)).is_ok());
    }

    #[test]
    fn a_node_with_another_history_may_not_lead() {
        let (d, other) = ("a".repeat(64), "b".repeat(64));
        let e = may_lead(Some(&acked(7, 10, &d)), 11, Some(&other)).unwrap_err();
        assert!(e.contains("history differs"), "{e}");
        assert!(may_lead(Some(&acked(7, 10, &d)), 11, None).is_err());
        assert!(may_lead(Some(&acked(7, 0, "")), 0, None).is_ok());
    }

    #[test]
    fn an_acknowledgment_naming_no_history_checks_the_length_only() {
        assert!(may_lead(Some(&acked(7, 3, "")), 3, None).is_ok());
        assert!(may_lead(Some(&acked(7, 3, "")), 4, Some(&"c".repeat(64))).is_ok());
        assert!(may_lead(Some(&acked(7, 3, "")), 2, None).is_err());
    }

    #[test]
    fn etcd_without_acked_is_a_loss_only_for_a_node_that_saw_a_term() {
        assert!(!etcd_regressed(None, &standing(0, 0, 5, (0, 0))));
        assert!(etcd_regressed(None, &standing(3, 3, 5, (3, 5))));
        // Restored from an older snapshot: behind what this node knows.
        assert!(etcd_regressed(Some(&acked(3, 4, "")), &standing(3, 3, 5, (3, 5))));
        assert!(etcd_regressed(Some(&acked(2, 9, "")), &standing(3, 3, 5, (2, 9))));
        assert!(!etcd_regressed(
            Some(&acked(3, 5, "")),
            &standing(3, 3, 5, (3, 5))
        ));
    }

    #[test]
    fn the_next_term_is_above_every_term_known_even_after_etcd_restarted_low() {
        let me = standing(3122, 3122, 9, (3122, 9));
        // etcd was wiped and now holds term 2 (revision-numbered terms restart low).
        assert_eq!(next_term(Some(&acked(2, 0, "")), &me, &BTreeMap::new()), 3123);
        let mut b = report(B, 4000, 1);
        b.term = 4001;
        assert_eq!(next_term(None, &me, &reports(&[b])), 4002);
    }

    #[test]
    fn a_candidate_runs_only_after_watching_long_enough_to_see_the_others() {
        let me = standing(3, 3, 5, (3, 5));
        let e = decide_with(
            &me,
            Some("d"),
            Some(&acked(3, 5, "d")),
            &BTreeMap::new(),
            &BTreeSet::new(),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(e.contains("reports"), "{e}");
    }

    #[test]
    fn normally_a_node_holding_acked_runs_and_defers_to_a_more_recent_candidate_for_a_while() {
        let me = standing(3, 3, 5, (3, 5));
        let a = acked(3, 5, "d");
        assert_eq!(
            decide_with(&me, Some("d"), Some(&a), &BTreeMap::new(), &BTreeSet::new(), LONG),
            Ok(Mode::Normal)
        );
        // B applied more (7), but only 5 is known acknowledged.
        let mut b = report(B, 3, 7);
        b.acked_seq = 5;
        let rs = reports(&[b]);
        let shortly = Duration::from_secs(2);
        let e = decide_with(&me, Some("d"), Some(&a), &rs, &BTreeSet::new(), shortly).unwrap_err();
        assert!(e.contains("goes first"), "{e}");
        // It does not wait for ever for a better node that does not run.
        assert!(decide_with(&me, Some("d"), Some(&a), &rs, &BTreeSet::new(), LONG).is_ok());
    }

    #[test]
    fn a_node_behind_an_acknowledgment_it_knows_of_does_not_run() {
        // etcd says 5 (it went back), this node was told 8 was acknowledged.
        let me = standing(3, 3, 6, (3, 8));
        let a = acked(3, 5, "d");
        let rs = reports(&[report(B, 3, 8)]);
        let e = decide_with(&me, Some("d"), Some(&a), &rs, &BTreeSet::new(), LONG).unwrap_err();
        assert!(
            e.contains("B") || e.contains(B) || e.contains("acknowledged"),
            "{e}"
        );
    }

    #[test]
    fn after_etcd_lost_its_data_every_member_reports_before_anyone_runs() {
        let me = standing(3, 3, 9, (3, 9));
        let e = decide_with(&me, None, None, &BTreeMap::new(), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains(B) && e.contains("waiting for the report"), "{e}");
        // Excused by an operator: it is not waited for.
        let excused = BTreeSet::from([B.to_string()]);
        assert_eq!(
            decide_with(&me, None, None, &BTreeMap::new(), &excused, LONG),
            Ok(Mode::Recovery)
        );
        // Reported: the most recent history leads.
        let rs = reports(&[report(B, 3, 8)]);
        assert_eq!(
            decide_with(&me, None, None, &rs, &BTreeSet::new(), LONG),
            Ok(Mode::Recovery)
        );
        let rs = reports(&[report(B, 3, 10)]);
        assert!(decide_with(&me, None, None, &rs, &BTreeSet::new(), LONG).is_err());
        // A member named only by another node's report is waited for too.
        let mut b = report(B, 3, 8);
        b.members.push(C.into());
        let e = decide_with(&me, None, None, &reports(&[b]), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains(C), "{e}");
    }

    #[test]
    fn after_etcd_lost_its_data_an_empty_node_never_leads_over_one_with_data() {
        let mut me = standing(3, 0, 0, (0, 0));
        me.has_data = false;
        let mut b = report(B, 3, 9);
        b.acked_seq = 0;
        let e = decide_with(&me, None, None, &reports(&[b]), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains(B), "{e}");
        // A plain follower with data counts too: the empty one waits.
        let mut plain = report(B, 3, 9);
        plain.candidate = false;
        plain.acked_seq = 0;
        let e = decide_with(&me, None, None, &reports(&[plain]), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn reports_restored_from_an_old_snapshot_are_let_expire_first() {
        let me = standing(3, 3, 9, (3, 9));
        let rs = reports(&[report(B, 3, 8)]);
        let e = decide_with(&me, None, None, &rs, &BTreeSet::new(), Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("expire"), "{e}");
    }

    #[test]
    fn a_dead_leaders_stale_report_does_not_let_a_candidate_behind_acked_lead() {
        // The leader (B) was elected under recovery, acknowledged up to 3838
        // alone (degraded) and died; its report, still on its lease, is from
        // before (3818, still saying it recovers). This node holds 3834.
        let me = standing(29, 29, 3834, (29, 3818));
        let mut stale = report(B, 29, 3818);
        stale.recovering = true;
        let acked = acked(29, 3838, "d");
        let e = decide_with(
            &me,
            None,
            Some(&acked),
            &reports(&[stale]),
            &BTreeSet::new(),
            LONG,
        )
        .unwrap_err();
        assert!(e.contains("behind the acknowledged position"), "{e}");
    }

    #[test]
    fn a_report_does_not_move_a_node_off_the_acked_record_but_what_it_knows_bars_a_lesser_history() {
        let me = standing(3, 3, 6, (3, 6));
        let mut b = report(B, 3, 9);
        b.recovering = true;
        let rs = reports(&[b]);
        // A stale report says nothing of the mode: etcd's record holds.
        assert_eq!(mode(Some(&acked(3, 6, "d")), &me, &rs), Mode::Normal);
        // But a node that knows change 9 was acknowledged bars this one.
        let e = decide_with(
            &me,
            Some("d"),
            Some(&acked(3, 6, "d")),
            &rs,
            &BTreeSet::new(),
            LONG,
        )
        .unwrap_err();
        assert!(e.contains("acknowledged") || e.contains(B), "{e}");
    }

    #[test]
    fn a_first_election_goes_to_data_and_an_empty_node_waits_one_ttl() {
        let mut empty = standing(0, 0, 0, (0, 0));
        empty.has_data = false;
        empty.members.clear();
        // A candidate slave never starts a cluster empty.
        let e = decide_with(&empty, None, None, &BTreeMap::new(), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains("mode = master"), "{e}");
        empty.may_bootstrap = true;
        let none = BTreeMap::new();
        let e = decide(&Inputs {
            me: ME,
            standing: &empty,
            digest_at_acked: None,
            acked: None,
            reports: &none,
            excused: &BTreeSet::new(),
            synced_for: LONG,
            leaderless_for: Duration::from_secs(1),
            ttl: Duration::from_secs(2),
        })
        .unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert_eq!(
            decide_with(&empty, None, None, &none, &BTreeSet::new(), LONG),
            Ok(Mode::Bootstrap)
        );
        let mut b = report(B, 0, 0);
        b.term = 0;
        b.acked_term = 0;
        b.has_data = true;
        let e = decide_with(&empty, None, None, &reports(&[b]), &BTreeSet::new(), LONG).unwrap_err();
        assert!(e.contains(B), "{e}");
    }
}
