//! The leader's lease timing as a pure state machine (docs/WRITE_PROTOCOL.md,
//! L1): time and events in, actions out, no I/O and no clock of its own, so
//! the renewal and step-down rules are tested here with controlled time.
//!
//! - The lease is renewed at once on taking the lead, then every
//!   (ttl − [`STEP_DOWN_MARGIN`]) / 3: three renewals fit in the time the
//!   leader believes its lease, so one slow answer from etcd does not
//!   depose it. The next renewal is a deadline counted from when the last
//!   one was sent, not a sleep restarted on every wake-up.
//! - A failed renewal (no answer, a broken stream) is tried again after
//!   [`RENEW_RETRY`], not a whole period later.
//! - The leader believes its lease until ttl − [`STEP_DOWN_MARGIN`] after
//!   its last successful renewal was *sent* (etcd counts from receiving it,
//!   which is later), and steps down when that passes, when etcd says the
//!   lease is gone, or when the view shows its key gone or replaced or a
//!   peer with a newer term ([`on_view`]).

use std::time::{Duration, Instant};

use super::ElectionView;

/// A leader steps down this long before its lease could have expired in
/// etcd (counted from when its last successful renewal was sent).
pub const STEP_DOWN_MARGIN: Duration = Duration::from_secs(1);

/// After a failed renewal the next one is tried this soon.
pub const RENEW_RETRY: Duration = Duration::from_millis(200);

/// Why a leader steps down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// No renewal succeeded within ttl − margin of being sent.
    NotRenewed,
    /// etcd says the lease is gone.
    Expired,
    /// The view shows the leader key gone, replaced or rewritten.
    KeyLost,
    /// A peer knows this newer term.
    NewerTerm(i64),
}

/// What the leader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a renewal; its answer must come within this long.
    Renew {
        within: Duration,
    },
    /// Nothing until this instant (or an event).
    WaitUntil(Instant),
    StepDown(StepDown),
}

/// One reign's lease clock.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    believed: Duration,
    every: Duration,
    alive_until: Instant,
    renew_at: Instant,
}

impl LeaseClock {
    /// A lease of `ttl` granted at `granted_at` (the grant was sent then).
    pub fn new(ttl: Duration, granted_at: Instant) -> Self {
        let believed = ttl.saturating_sub(STEP_DOWN_MARGIN);
        let every = (believed / 3).max(Duration::from_millis(200));
        LeaseClock {
            believed,
            every,
            alive_until: granted_at + believed,
            renew_at: granted_at,
        }
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> Action {
        if now >= self.alive_until {
            Action::StepDown(StepDown::NotRenewed)
        } else if now >= self.renew_at {
            Action::Renew {
                within: self.alive_until - now,
            }
        } else {
            Action::WaitUntil(self.renew_at.min(self.alive_until))
        }
    }

    /// A renewal was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.renew_at = at + self.every;
    }

    /// The renewal sent at `sent_at` succeeded.
    pub fn renewed(&mut self, sent_at: Instant) {
        self.alive_until = self.alive_until.max(sent_at + self.believed);
    }

    /// The renewal failed without an answer at `now`: try again soon.
    pub fn failed(&mut self, now: Instant) {
        self.renew_at = now + RENEW_RETRY;
    }
}

/// Whether the view says this reign (term `term`, leader key created at
/// revision `rev`) is over.
pub fn on_view(view: &ElectionView, rev: i64, term: i64) -> Option<StepDown> {
    if view.yield_to > term {
        return Some(StepDown::NewerTerm(view.yield_to));
    }
    key_lost(view, rev, term).then_some(StepDown::KeyLost)
}

/// Whether `view` shows this reign's leader key (created at revision
/// `rev`, naming `term`) gone, or someone else's (replaced, or rewritten
/// in place: the fence, which compares the exact value, fails anyway).
/// Only a view as new as the key can say so: the watch delivers the key's
/// creation after the campaign's answer, and a view from before it (a busy
/// host) must not depose a new leader.
pub fn key_lost(view: &ElectionView, rev: i64, term: i64) -> bool {
    view.synced
        && view.revision >= rev
        && view
            .leader
            .as_ref()
            .is_none_or(|l| l.rev != rev || l.term != term)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Leader;

    const TTL: Duration = Duration::from_secs(4);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_new_leader_renews_at_once_then_every_third_of_what_it_believes() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(TTL, t0);
        assert_eq!(c.next(t0), Action::Renew { within: ms(3000) });
        c.sent(t0);
        c.renewed(t0);
        assert_eq!(c.next(t0 + ms(10)), Action::WaitUntil(t0 + ms(1000)));
        assert_eq!(c.next(t0 + ms(1000)), Action::Renew { within: ms(2000) });
    }

    #[test]
    fn the_lease_is_believed_from_when_the_renewal_was_sent_not_answered() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(TTL, t0);
        c.sent(t0 + ms(1000));
        // The answer comes 900 ms later: the lease counts from the sending.
        c.renewed(t0 + ms(1000));
        assert_eq!(c.next(t0 + ms(3999)), Action::Renew { within: ms(1) });
        assert_eq!(c.next(t0 + ms(4000)), Action::StepDown(StepDown::NotRenewed));
    }

    #[test]
    fn failed_renewals_are_retried_soon_and_the_leader_steps_down_in_time() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(TTL, t0);
        c.sent(t0);
        c.failed(t0 + ms(50));
        assert_eq!(c.next(t0 + ms(100)), Action::WaitUntil(t0 + ms(250)));
        let mut now = t0 + ms(250);
        // etcd never answers: the leader keeps trying, and stops believing
        // its lease ttl − margin after the grant was sent.
        while let Action::Renew { .. } | Action::WaitUntil(_) = c.next(now) {
            if let Action::Renew { within } = c.next(now) {
                assert!(within <= ms(3000));
                c.sent(now);
                c.failed(now + ms(10));
            }
            now += ms(10);
            assert!(now < t0 + ms(3100), "never stepped down");
        }
        assert_eq!(c.next(now), Action::StepDown(StepDown::NotRenewed));
        assert!(now >= t0 + ms(3000));
    }

    #[test]
    fn an_older_renewal_answered_late_does_not_shorten_the_lease() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(TTL, t0);
        c.renewed(t0 + ms(2000));
        c.renewed(t0 + ms(1000));
        assert_eq!(c.next(t0 + ms(4500)), Action::Renew { within: ms(500) });
    }

    #[test]
    fn a_leader_steps_down_only_on_a_view_that_has_seen_its_key() {
        let leader = |rev| Leader {
            addr: "10.0.0.1:8080".into(),
            term: 3,
            since: 1,
            rev,
        };
        let view = |revision, l: Option<Leader>| ElectionView {
            synced: true,
            revision,
            leader: l,
            ..ElectionView::default()
        };
        // Just elected at revision 9; the watch has not delivered it yet.
        assert_eq!(on_view(&view(8, None), 9, 3), None);
        assert_eq!(on_view(&view(8, Some(leader(4))), 9, 3), None);
        assert_eq!(on_view(&ElectionView::default(), 9, 3), None);
        // Seen, and still its own.
        assert_eq!(on_view(&view(9, Some(leader(9))), 9, 3), None);
        assert_eq!(on_view(&view(15, Some(leader(9))), 9, 3), None);
        // Gone, replaced, or rewritten in place after the reign began.
        assert_eq!(on_view(&view(12, None), 9, 3), Some(StepDown::KeyLost));
        assert_eq!(
            on_view(&view(14, Some(leader(14))), 9, 3),
            Some(StepDown::KeyLost)
        );
        assert_eq!(on_view(&view(14, Some(leader(9))), 9, 4), Some(StepDown::KeyLost));
        // A peer knows a newer term.
        let newer = ElectionView {
            yield_to: 5,
            ..view(9, Some(leader(9)))
        };
        assert_eq!(on_view(&newer, 9, 3), Some(StepDown::NewerTerm(5)));
    }
}
