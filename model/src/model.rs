//! The write protocol as a stateright [`Model`]: every step a node, etcd,
//! a client or a fault can take, and the promises P1–P4 as invariants.

use stateright::{Model, Property};

use crate::protocol;
use crate::rules::{Bounds, Rules};
use crate::state::*;

/// One step. Nodes are numbered 0..NODES; `l` is the (would-be) leader a
/// follower `f` talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Candidate `n` puts its report (its position changed, or it lapsed).
    Report(u8),
    /// The report of candidate `n` lapses with its lease (node down or cut
    /// off from etcd).
    ReportLapses(u8),
    /// Candidate `n` reads etcd (members grow) and decides whether it may
    /// run; the decision waits in its volatile state for the campaign.
    ReadView(u8),
    /// The campaign transaction of `n` on its decided view. `coincide`:
    /// etcd went through a wipe or restore since the view was read and the
    /// revision of `acked` happens to equal the one read.
    Campaign { n: u8, coincide: bool },
    /// The leader key's lease runs out (the leader is dead, paused or cut
    /// off; it has not necessarily noticed).
    LeaseExpires,
    /// A leader sees that its key is gone or someone else's and steps down.
    StepDown(u8),
    /// A client write committed on leader `n`; it needs `needed`
    /// confirmations (0 when degraded).
    Write { n: u8, needed: u8 },
    /// Candidate follower `f` polls `l` at its own position: a
    /// confirmation (A1), or L3 when `f` knows a larger term.
    Confirm { f: u8, l: u8 },
    /// Follower `f` takes the next change from `l` (F1) with `l`'s
    /// acknowledged horizon.
    Pull { f: u8, l: u8 },
    /// Follower `f` copies `l`'s image (F2–F4).
    Image { f: u8, l: u8 },
    /// Leader `n` runs the fence (L2) for its waiting group (A2) and
    /// answers 200.
    Fence(u8),
    /// Node `n` crashes and restarts: its volatile state is lost.
    Crash(u8),
    /// etcd loses all its data.
    Wipe,
    /// A backup of etcd is taken.
    Snapshot,
    /// etcd goes back to the backup.
    Restore,
}

/// The protocol under `rules`, explored within `bounds`.
#[derive(Clone, Debug)]
pub struct WriteProtocol {
    pub rules: Rules,
    pub bounds: Bounds,
}

impl WriteProtocol {
    pub fn new(rules: Rules, bounds: Bounds) -> Self {
        WriteProtocol { rules, bounds }
    }

    /// Node 0 holds the imported dataset, node 1 is an empty candidate,
    /// node 2 a plain follower with the dataset; etcd is empty.
    pub fn initial() -> State {
        let node = |me: usize, base: bool| Node {
            durable: Durable {
                base,
                log: Vec::new(),
                term: 0,
                acked: Pos::default(),
                members: if is_candidate(me) { 1 << me } else { 0 },
            },
            volatile: Volatile::default(),
        };
        State {
            nodes: [node(0, true), node(1, false), node(2, true)],
            etcd: Etcd::empty(0),
            snapshot: None,
            history: History::default(),
            budget: Budget::default(),
            broken: Broken::default(),
        }
    }

    fn bump_rev(&self, etcd: &mut Etcd) {
        if !self.rules.durable_terms {
            etcd.rev += 1;
        }
    }

    /// Leader `l` learns of `term` from a follower (L3): it raises
    /// `meta.term`, resigns and deletes its key if still its own.
    fn yield_to_term(&self, s: &mut State, l: usize, term: u8) {
        let reign = s.nodes[l].volatile.leading;
        s.nodes[l].durable.term = s.nodes[l].durable.term.max(term);
        self.lose_lead(s, l);
        if let (Some(key), Some(r)) = (s.etcd.leader, reign) {
            if key.node as usize == l && key.reign == r {
                s.etcd.leader = None;
                self.bump_rev(&mut s.etcd);
            }
        }
    }

    /// The node stops leading: waiters are answered 503; progress is
    /// forgotten with the term (A1).
    fn lose_lead(&self, s: &mut State, n: usize) {
        let v = &mut s.nodes[n].volatile;
        v.leading = None;
        v.waiting.clear();
        if self.rules.progress_per_term {
            v.progress = [None; NODES];
        }
    }

    /// A follower that takes from a leader has seen it in the election,
    /// and a leader has seen a candidate follower that polls it.
    fn meet(&self, s: &mut State, f: usize, l: usize) {
        if self.rules.members_from_following && is_candidate(f) {
            s.nodes[f].durable.members |= 1 << l;
            s.nodes[l].durable.members |= 1 << f;
        }
    }

    fn campaign(&self, s: &mut State, n: usize, coincide: bool) -> Option<()> {
        let plan = s.nodes[n].volatile.plan?;
        if s.etcd.leader.is_some() || s.budget.reigns >= self.bounds.reigns {
            return None;
        }
        if self.rules.campaign_checks_session && (plan.gen != s.etcd.gen || s.etcd.reports[n].is_none()) {
            s.nodes[n].volatile.plan = None;
            return Some(());
        }
        if self.rules.campaign_cas {
            let same = match s.etcd.compare(plan.seen) {
                Compare::Equal => true,
                Compare::Different => false,
                Compare::Either => coincide,
            };
            if !same {
                // The transaction failed: the decision is stale.
                s.nodes[n].volatile.plan = None;
                return Some(());
            }
        }
        let term = if self.rules.durable_terms {
            plan.term
        } else {
            s.etcd.rev + 1
        };
        self.bump_rev(&mut s.etcd);
        let highest = s.nodes.iter().map(|x| x.durable.term).max().unwrap_or(0);
        if term <= highest {
            s.broken.terms = true;
        }
        let d = &s.nodes[n].durable;
        if !d.has_data()
            && (0..CANDIDATES).any(|m| m != n && d.members & (1 << m) != 0 && s.nodes[m].durable.has_data())
        {
            s.broken.dataset = true;
        }
        s.budget.reigns += 1;
        let reign = Reign {
            term,
            nonce: s.budget.reigns,
        };
        let seq = d.seq();
        let digest = d.digest_at(seq);
        s.etcd.leader = Some(LeaderKey { node: n as u8, reign });
        s.etcd.put_acked(AckedVal { term, seq, digest });
        let node = &mut s.nodes[n];
        if term < node.durable.term {
            s.broken.terms = true;
        }
        node.durable.term = node.durable.term.max(term);
        node.durable.acked = node.durable.acked.max(Pos { term, seq });
        node.volatile.plan = None;
        self.lose_lead(s, n);
        s.nodes[n].volatile.leading = Some(reign);
        Some(())
    }

    fn confirm(&self, s: &mut State, f: usize, l: usize) -> Option<()> {
        let reign = s.nodes[l].volatile.leading?;
        if f == l || !is_candidate(f) || s.nodes[f].volatile.leading.is_some() {
            return None;
        }
        let fterm = s.nodes[f].durable.term;
        if reign.term < fterm {
            self.yield_to_term(s, l, fterm);
            return Some(());
        }
        if !s.nodes[f].durable.is_prefix_of(&s.nodes[l].durable) {
            return None;
        }
        s.nodes[l].volatile.progress[f] = Some(Progress {
            term: reign.term,
            from: s.nodes[f].durable.seq(),
        });
        self.meet(s, f, l);
        Some(())
    }

    fn pull(&self, s: &mut State, f: usize, l: usize) -> Option<()> {
        let reign = s.nodes[l].volatile.leading?;
        if f == l || s.nodes[f].volatile.leading.is_some() {
            return None;
        }
        let fterm = s.nodes[f].durable.term;
        if reign.term < fterm {
            self.yield_to_term(s, l, fterm);
            return Some(());
        }
        let leader = s.nodes[l].durable.clone();
        if !s.nodes[f].durable.is_prefix_of(&leader) {
            return None;
        }
        self.meet(s, f, l);
        let fd = &mut s.nodes[f].durable;
        fd.term = reign.term;
        if leader.seq() > fd.seq() {
            fd.log.push(leader.log[fd.seq() as usize]);
        }
        let learned = Pos {
            term: leader.acked.term,
            seq: leader.acked.seq.min(fd.seq()),
        };
        fd.acked = fd.acked.max(learned);
        Some(())
    }

    fn image(&self, s: &mut State, f: usize, l: usize) -> Option<()> {
        let reign = s.nodes[l].volatile.leading?;
        if f == l || s.nodes[f].volatile.leading.is_some() {
            return None;
        }
        let leader = s.nodes[l].durable.clone();
        let fd = &s.nodes[f].durable;
        let needs_image = !fd.is_prefix_of(&leader) || fd.base != leader.base;
        if !needs_image || !protocol::image_accepted(&self.rules, fd, &leader, reign.term) {
            return None;
        }
        if fd.has_data() && !leader.has_data() {
            s.broken.dataset = true;
        }
        self.meet(s, f, l);
        let fd = &mut s.nodes[f].durable;
        fd.base = leader.base;
        fd.log = leader.log.clone();
        fd.term = reign.term;
        fd.acked = Pos {
            term: leader.acked.term,
            seq: leader.acked.seq.min(leader.seq()),
        };
        Some(())
    }

    fn fence(&self, s: &mut State, n: usize) -> Option<()> {
        let reign = s.nodes[n].volatile.leading?;
        let v = &s.nodes[n].volatile;
        let top = protocol::group_top(&self.rules, &v.waiting, &v.progress, reign.term)?;
        if s.etcd.leader != Some(LeaderKey { node: n as u8, reign }) {
            // The guard fails; the leader steps down (StepDown).
            return None;
        }
        let digest = s.nodes[n].durable.digest_at(top);
        s.etcd.put_acked(AckedVal {
            term: reign.term,
            seq: top,
            digest,
        });
        self.bump_rev(&mut s.etcd);
        let node = &mut s.nodes[n];
        for w in node.volatile.waiting.iter().filter(|w| w.seq <= top) {
            s.history.acked |= 1 << node.durable.log[w.seq as usize - 1].id;
        }
        node.volatile.waiting.retain(|w| w.seq > top);
        node.durable.acked = node.durable.acked.max(Pos {
            term: reign.term,
            seq: top,
        });
        Some(())
    }

    /// Reads are observations: whatever a node may serve after a step is
    /// taken as read then (the strongest reader). No read step is needed,
    /// so reads add no interleavings.
    fn observe_reads(&self, s: &mut State) {
        for n in 0..NODES {
            if let Some(id) = protocol::visible_top(&self.rules, &s.nodes[n].durable) {
                s.history.read |= 1 << id;
            }
        }
    }

    fn step(&self, s: &mut State, action: Action) -> Option<()> {
        match action {
            Action::Report(n) => {
                let r = Report::of(&s.nodes[n as usize].durable);
                let current = s.etcd.reports[n as usize];
                // Kept at all times; refreshed while no leader exists.
                if current == Some(r) || (current.is_some() && s.etcd.leader.is_some()) {
                    return None;
                }
                s.etcd.reports[n as usize] = Some(r);
            }
            Action::ReportLapses(n) => {
                s.etcd.reports[n as usize].take()?;
                if self.rules.campaign_checks_session {
                    // The node's session lease is gone: so is its decision.
                    s.nodes[n as usize].volatile.plan = None;
                }
            }
            Action::ReadView(n) => {
                let n = n as usize;
                if s.nodes[n].volatile.leading.is_some() {
                    return None;
                }
                for (m, r) in s.etcd.reports.iter().enumerate() {
                    if r.is_some() {
                        s.nodes[n].durable.members |= 1 << m;
                    }
                }
                let d = &s.nodes[n].durable;
                let session = !self.rules.campaign_checks_session || s.etcd.reports[n].is_some();
                let may = s.etcd.leader.is_none() && session && protocol::may_run(&self.rules, d, &s.etcd, n);
                let plan = may.then(|| Plan {
                    term: if self.rules.durable_terms {
                        protocol::next_term(d, &s.etcd, n)
                    } else {
                        0
                    },
                    seen: s.etcd.seen(),
                    gen: s.etcd.gen,
                });
                s.nodes[n].volatile.plan = plan;
            }
            Action::Campaign { n, coincide } => self.campaign(s, n as usize, coincide)?,
            Action::LeaseExpires => {
                s.etcd.leader.take()?;
                self.bump_rev(&mut s.etcd);
            }
            Action::StepDown(n) => {
                let n = n as usize;
                let reign = s.nodes[n].volatile.leading?;
                if s.etcd.leader == Some(LeaderKey { node: n as u8, reign }) {
                    return None;
                }
                self.lose_lead(s, n);
            }
            Action::Write { n, needed } => {
                let n = n as usize;
                let reign = s.nodes[n].volatile.leading?;
                if s.budget.writes >= self.bounds.writes {
                    return None;
                }
                s.budget.writes += 1;
                let d = &mut s.nodes[n].durable;
                d.log.push(Entry {
                    id: s.budget.writes,
                    term: reign.term,
                });
                let seq = d.seq();
                s.nodes[n].volatile.waiting.push(Waiter { seq, needed });
            }
            Action::Confirm { f, l } => self.confirm(s, f as usize, l as usize)?,
            Action::Pull { f, l } => self.pull(s, f as usize, l as usize)?,
            Action::Image { f, l } => self.image(s, f as usize, l as usize)?,
            Action::Fence(n) => self.fence(s, n as usize)?,
            Action::Crash(n) => {
                if s.budget.crashes >= self.bounds.crashes
                    || s.nodes[n as usize].volatile == Volatile::default()
                {
                    return None;
                }
                s.budget.crashes += 1;
                s.nodes[n as usize].volatile = Volatile::default();
            }
            Action::Wipe => {
                if s.budget.wipes >= self.bounds.wipes {
                    return None;
                }
                s.budget.wipes += 1;
                s.etcd = Etcd::empty(s.etcd.gen + 1);
            }
            Action::Snapshot => {
                // A snapshot matters only to a restore that keeps it.
                if self.rules.restore_clears_election
                    || s.budget.snapshots >= self.bounds.snapshots
                    || s.etcd.acked.is_none()
                {
                    return None;
                }
                s.budget.snapshots += 1;
                s.snapshot = Some(s.etcd.clone());
            }
            Action::Restore => {
                if s.budget.restores >= self.bounds.restores {
                    return None;
                }
                if self.rules.restore_clears_election {
                    // What the snapshot held of the election is deleted.
                    s.budget.restores += 1;
                    s.etcd = Etcd::empty(s.etcd.gen + 1);
                    return Some(());
                }
                let mut back = s.snapshot.clone()?;
                s.budget.restores += 1;
                back.origin = Some((back.gen, back.puts));
                back.gen = s.etcd.gen + 1;
                back.puts = 0;
                s.etcd = back;
            }
        }
        Some(())
    }
}

/// Every write answered 200 is held by the leader of the newest reign.
fn durability(_: &WriteProtocol, s: &State) -> bool {
    let Some((n, _)) = s.newest_leader() else {
        return true;
    };
    (1..8u8).all(|id| s.history.acked & (1 << id) == 0 || s.nodes[n].durable.holds(id))
}

/// Every value a read returned is held by the leader of the newest reign
/// (so by every node that leads after it was read).
fn no_phantom_reads(_: &WriteProtocol, s: &State) -> bool {
    let Some((n, _)) = s.newest_leader() else {
        return true;
    };
    (1..8u8).all(|id| s.history.read & (1 << id) == 0 || s.nodes[n].durable.holds(id))
}

/// `meta.term` never went down, and every leader's term was above every
/// node's `meta.term` when it was elected.
fn terms_only_grow(_: &WriteProtocol, s: &State) -> bool {
    !s.broken.terms
}

/// No node with data installed an image with none, and no empty node was
/// elected while a member it knew of held data.
fn dataset_kept(_: &WriteProtocol, s: &State) -> bool {
    !s.broken.dataset
}

pub const P1: &str = "P1 durability";
pub const P2: &str = "P2 no phantom reads";
pub const P3: &str = "P3 terms only grow";
pub const P4: &str = "P4 dataset never replaced";
/// Reachability witnesses: the bound reaches the situations the
/// invariants are about (a check that never gets there proves nothing).
pub const REACH_ACK_THEN_NEW_REIGN: &str = "a write answered 200 and a later reign";
pub const REACH_WIPE_REIGN: &str = "a reign after a wipe with a write answered 200";
pub const REACH_RESTORE_REIGN: &str = "a reign after a restore with a write answered 200";
pub const REACH_FOLLOWER_READ: &str = "a follower read a write";

impl Model for WriteProtocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![Self::initial()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for n in 0..NODES as u8 {
            let leading = s.nodes[n as usize].volatile.leading.is_some();
            if is_candidate(n as usize) {
                actions.push(Action::Report(n));
                actions.push(Action::ReportLapses(n));
                if !leading {
                    actions.push(Action::ReadView(n));
                    if let Some(plan) = s.nodes[n as usize].volatile.plan {
                        actions.push(Action::Campaign { n, coincide: false });
                        if self.rules.campaign_cas && s.etcd.compare(plan.seen) == Compare::Either {
                            actions.push(Action::Campaign { n, coincide: true });
                        }
                    }
                }
            }
            if leading {
                actions.push(Action::StepDown(n));
                actions.push(Action::Write { n, needed: 1 });
                if !self.bounds.strict {
                    actions.push(Action::Write { n, needed: 0 });
                }
                actions.push(Action::Fence(n));
                for f in 0..NODES as u8 {
                    if f != n {
                        actions.push(Action::Confirm { f, l: n });
                        actions.push(Action::Pull { f, l: n });
                        actions.push(Action::Image { f, l: n });
                    }
                }
            }
            if leading {
                actions.push(Action::Crash(n));
            }
        }
        actions.push(Action::LeaseExpires);
        actions.push(Action::Wipe);
        actions.push(Action::Snapshot);
        actions.push(Action::Restore);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        self.step(&mut s, action)?;
        self.observe_reads(&mut s);
        // A step that changes nothing is no step (keeps the graph small).
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(P1, durability),
            Property::always(P2, no_phantom_reads),
            Property::always(P3, terms_only_grow),
            Property::always(P4, dataset_kept),
            Property::sometimes(REACH_ACK_THEN_NEW_REIGN, |_, s: &State| {
                s.history.acked != 0 && s.budget.reigns >= 2
            }),
            Property::sometimes(REACH_WIPE_REIGN, |_, s: &State| {
                s.budget.wipes == 1 && s.etcd.leader.is_some() && s.history.acked != 0 && s.etcd.gen == 1
            }),
            Property::sometimes(REACH_RESTORE_REIGN, |_, s: &State| {
                s.budget.restores == 1
                    && s.history.acked != 0
                    && s.newest_leader()
                        .is_some_and(|(_, r)| s.etcd.leader.is_some_and(|k| k.reign == r))
            }),
            Property::sometimes(REACH_FOLLOWER_READ, |_, s: &State| {
                s.history.read != 0 && s.nodes[2].durable.acked.seq > 0
            }),
        ]
    }
}
