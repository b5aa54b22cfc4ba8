//! The exhaustive checks: with every rule the whole bounded space holds
//! P1–P4; without one rule the checker finds the failure it closes.
//!
//! Run with `--nocapture` to see the state counts, times and paths.

use std::time::Duration;

use kamaitachi_model::model::{
    P1, P2, P3, P4, REACH_ACK_THEN_NEW_REIGN, REACH_FOLLOWER_READ, REACH_WIPE_REIGN,
};
use kamaitachi_model::{check, describe, Bounds, Outcome, Rules};

/// Longest any one search may take (a debug build on a busy 2-core host).
const LIMIT: Duration = Duration::from_secs(170);

fn report(label: &str, bounds: &Bounds, o: &Outcome) {
    eprintln!(
        "{label}: {} states, depth {}, {:.1} s, complete: {} ({bounds:?})",
        o.states,
        o.depth,
        o.elapsed.as_secs_f64(),
        o.complete
    );
}

/// Every rule on: the whole space within `bounds` is explored and no
/// promise is broken; the witnesses show the bound reaches the situations
/// the promises are about.
fn holds(label: &str, bounds: Bounds, floor: usize) {
    let o = check(Rules::default(), bounds, LIMIT, None);
    report(label, &bounds, &o);
    for p in [P1, P2, P3, P4] {
        if let Some(path) = o.found(p) {
            panic!("{label}: {p} broken with every rule on:\n{}", describe(path));
        }
    }
    assert!(o.complete, "{label}: the search did not finish within {LIMIT:?}");
    assert!(o.states > floor, "{label}: only {} states explored", o.states);
    for w in [REACH_ACK_THEN_NEW_REIGN, REACH_FOLLOWER_READ, REACH_WIPE_REIGN] {
        assert!(o.found(w).is_some(), "{label}: the bound never reaches: {w}");
    }
}

/// With `rules`, a shortest path to a violation of `property` exists.
fn breaks(label: &str, rules: Rules, bounds: Bounds, property: &'static str) {
    let o = check(rules, bounds, LIMIT, Some(property));
    report(label, &bounds, &o);
    match o.found(property) {
        Some(path) => eprintln!(
            "{label}: {property} broken in {} steps:\n{}",
            path.clone().into_vec().len() - 1,
            describe(path)
        ),
        None => panic!("{label}: no counterexample to {property} in {} states", o.states),
    }
}

fn bounds(writes: u8, reigns: u8, crashes: u8, wipes: u8, restores: u8) -> Bounds {
    Bounds {
        writes,
        reigns,
        crashes,
        wipes,
        snapshots: restores,
        restores,
        strict: false,
    }
}

#[test]
fn every_rule_holds_two_writes_two_reigns_a_wipe_and_a_crash() {
    holds("all rules, 2 writes", bounds(2, 2, 1, 1, 0), 1_000_000);
}

#[test]
fn every_rule_holds_three_reigns_a_wipe_and_a_restore() {
    holds("all rules, 3 reigns", bounds(1, 3, 0, 1, 1), 1_000_000);
}

#[test]
fn without_the_campaign_cas_a_stale_view_loses_an_acknowledged_write() {
    let rules = Rules {
        campaign_cas: false,
        ..Rules::default()
    };
    breaks("no campaign CAS", rules, bounds(1, 3, 0, 0, 0), P1);
}

#[test]
fn without_waiting_for_members_an_election_after_a_wipe_loses_an_acknowledged_write() {
    let rules = Rules {
        recovery_waits_for_members: false,
        ..Rules::default()
    };
    breaks("no E2", rules, bounds(1, 2, 0, 1, 0), P1);
}

#[test]
fn without_durable_terms_a_term_goes_back_after_a_wipe() {
    let rules = Rules {
        durable_terms: false,
        ..Rules::default()
    };
    breaks("revision terms", rules, bounds(1, 2, 0, 1, 0), P3);
}

#[test]
fn without_the_horizon_a_read_returns_a_write_that_is_then_lost() {
    let rules = Rules {
        visibility_at_horizon: false,
        ..Rules::default()
    };
    breaks("no V1/V2", rules, bounds(1, 2, 0, 0, 0), P2);
}

#[test]
fn without_the_session_compare_a_view_from_before_a_wipe_wins() {
    let rules = Rules {
        campaign_checks_session: false,
        ..Rules::default()
    };
    breaks("no session compare", rules, bounds(1, 3, 1, 1, 0), P1);
}

#[test]
fn a_restore_that_keeps_the_election_keys_revives_a_deposed_leader() {
    let rules = Rules {
        restore_clears_election: false,
        ..Rules::default()
    };
    breaks("restore keeps election", rules, bounds(1, 2, 0, 0, 1), P1);
}

#[test]
fn an_empty_node_that_bootstraps_after_a_wipe_loses_an_acknowledged_write() {
    let rules = Rules {
        bootstrap_guard: false,
        ..Rules::default()
    };
    breaks("E3 as first written", rules, bounds(1, 2, 0, 1, 0), P1);
}

#[test]
fn members_learned_only_from_reports_miss_the_leader_a_node_followed() {
    let rules = Rules {
        members_from_following: false,
        ..Rules::default()
    };
    breaks("members from reports only", rules, bounds(1, 2, 0, 1, 0), P1);
}
