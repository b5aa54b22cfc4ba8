//! The faults of a run and their schedule. A [`Fault`] starts at a time
//! (since the run's start), lasts a duration, and heals itself at its end:
//! a killed process is started again, a paused one resumed, a link passes
//! again, etcd comes back (empty, or from the snapshot taken earlier).
//! Faults run one after another, so at most one is active at a time (and
//! what a violation happened under is clear); the schedule is a plain list,
//! either fixed by a test or drawn from a seed ([`random_schedule`]).
//!
//! A fault on "the leader" is aimed at the node that says it leads when
//! the fault starts (the first candidate when none does, as recorded in its
//! [`FaultSpan`]).

use std::time::Duration;

use super::cluster::ChaosCluster;
use super::history::History;
use super::proxy::LinkMode;
use super::rng::Rng;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    Leader,
    /// A candidate that does not lead.
    Follower,
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// kill -9, started again at the end.
    Kill(Aim),
    /// SIGSTOP, SIGCONT at the end.
    Pause(Aim),
    /// Every chunk on the node's etcd links is held this long.
    SlowEtcd(Aim, Duration),
    /// Every chunk to and from the node's peers (inbound proxy) is held
    /// this long.
    SlowInbound(Aim, Duration),
    /// The node's etcd links and inbound link pass nothing.
    Partition(Aim),
    /// kill -9 of one etcd member.
    KillEtcdMember(usize),
    /// SIGSTOP of one etcd member.
    PauseEtcdMember(usize),
    /// Save a snapshot of etcd (lasts no time; a later restore uses it).
    SnapshotEtcd,
    /// etcd loses all its data: down for the duration, then fresh.
    WipeEtcd,
    /// etcd goes back to the last snapshot: down for the duration, then
    /// restored.
    RestoreEtcd,
    /// kill -9 of the gateway, started again at the end.
    RestartGateway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
    pub duration: Duration,
}

impl Fault {
    pub fn new(at_ms: u64, kind: FaultKind, duration_ms: u64) -> Fault {
        Fault {
            at: Duration::from_millis(at_ms),
            kind,
            duration: Duration::from_millis(duration_ms),
        }
    }
}

/// A fault as it happened: what, on whom, from when to when (since the
/// run's start).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpan {
    pub what: String,
    pub start: Duration,
    pub end: Duration,
}

impl FaultSpan {
    pub fn describe(&self) -> String {
        format!(
            "{} [{:.2}s..{:.2}s]",
            self.what,
            self.start.as_secs_f64(),
            self.end.as_secs_f64()
        )
    }
}

/// A seeded schedule of about `total`: a snapshot of etcd first, then
/// faults of every kind with gaps of 1–4 s between them; nothing starts
/// after `total` and every fault is bounded (at most 10 s).
pub fn random_schedule(seed: u64, total: Duration, ttl: u64, nodes: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let total_ms = total.as_millis() as u64;
    let ttl_ms = ttl * 1000;
    let mut at = 3_000;
    let mut out = vec![Fault::new(at, FaultKind::SnapshotEtcd, 0)];
    at += 2_000;
    let aim = |rng: &mut Rng| match rng.range(0, 5) {
        0..=2 => Aim::Leader,
        3 => Aim::Follower,
        _ => Aim::Node(rng.below(nodes)),
    };
    while at < total_ms {
        let (kind, duration) = match rng.range(0, 99) {
            0..=17 => (FaultKind::Kill(aim(&mut rng)), rng.range(1_000, 6_000)),
            18..=33 => (
                FaultKind::Pause(aim(&mut rng)),
                rng.range(ttl_ms + 500, ttl_ms + 4_000),
            ),
            34..=45 => (
                FaultKind::SlowEtcd(aim(&mut rng), Duration::from_millis(rng.range(200, 1_500))),
                rng.range(3_000, 10_000),
            ),
            46..=53 => (
                FaultKind::SlowInbound(aim(&mut rng), Duration::from_millis(rng.range(100, 1_500))),
                rng.range(3_000, 10_000),
            ),
            54..=63 => (FaultKind::Partition(aim(&mut rng)), rng.range(2_000, 8_000)),
            64..=69 => (FaultKind::KillEtcdMember(rng.below(3)), rng.range(2_000, 8_000)),
            70..=75 => (FaultKind::PauseEtcdMember(rng.below(3)), rng.range(2_000, 6_000)),
            76..=80 => (FaultKind::SnapshotEtcd, 0),
            81..=87 => (FaultKind::WipeEtcd, rng.range(500, 3_000)),
            88..=93 => (FaultKind::RestoreEtcd, rng.range(500, 3_000)),
            _ => (FaultKind::RestartGateway, rng.range(300, 2_000)),
        };
        out.push(Fault::new(at, kind, duration));
        at += duration + rng.range(1_000, 4_000);
    }
    out
}

/// Runs `schedule` against `cluster`: each fault at its time (or as soon as
/// the one before it has healed), for its duration, then healed. Returns
/// what happened.
pub fn run(cluster: &mut ChaosCluster, schedule: &[Fault], history: &History) -> Vec<FaultSpan> {
    let mut spans = Vec::new();
    let mut snapshots = 0usize;
    let mut last_snapshot = None;
    for fault in schedule {
        let wait = fault.at.saturating_sub(history.now());
        std::thread::sleep(wait);
        let start = history.now();
        let what = apply(
            cluster,
            &fault.kind,
            fault.duration,
            &mut snapshots,
            &mut last_snapshot,
        );
        let span = FaultSpan {
            what,
            start,
            end: history.now(),
        };
        eprintln!("chaos: {}", span.describe());
        spans.push(span);
    }
    spans
}

/// The node `aim` names now, and how to say it.
fn resolve(cluster: &ChaosCluster, aim: Aim) -> (usize, String) {
    let leader = cluster.leader();
    let (i, why) = match aim {
        Aim::Node(i) => (i.min(cluster.nodes.len() - 1), ""),
        Aim::Leader => match leader {
            Some(l) => (l, " (leader)"),
            None => (0, " (no leader seen)"),
        },
        Aim::Follower => {
            let f = (0..cluster.nodes.len()).find(|&i| cluster.nodes[i].candidate && Some(i) != leader);
            match f {
                Some(f) => (f, " (follower)"),
                None => (cluster.nodes.len() - 1, " (no candidate follower)"),
            }
        }
    };
    (i, format!("node {}{why}", cluster.nodes[i].name))
}

/// Applies one fault, waits its duration, heals it; returns its description.
fn apply(
    cluster: &mut ChaosCluster,
    kind: &FaultKind,
    duration: Duration,
    snapshots: &mut usize,
    last_snapshot: &mut Option<std::path::PathBuf>,
) -> String {
    let sleep = || std::thread::sleep(duration);
    match kind {
        FaultKind::Kill(aim) => {
            let (i, who) = resolve(cluster, *aim);
            cluster.nodes[i].kill9();
            sleep();
            cluster.nodes[i].restart();
            format!("kill -9 {who}")
        }
        FaultKind::Pause(aim) => {
            let (i, who) = resolve(cluster, *aim);
            cluster.nodes[i].pause();
            sleep();
            cluster.nodes[i].resume();
            format!("pause {who}")
        }
        FaultKind::SlowEtcd(aim, delay) => {
            let (i, who) = resolve(cluster, *aim);
            for l in &cluster.nodes[i].etcd_links {
                l.set(LinkMode::Delay(*delay));
            }
            sleep();
            for l in &cluster.nodes[i].etcd_links {
                l.set(LinkMode::Pass);
            }
            format!("etcd links of {who} slowed by {} ms", delay.as_millis())
        }
        FaultKind::SlowInbound(aim, delay) => {
            let (i, who) = resolve(cluster, *aim);
            cluster.nodes[i].inbound.set(LinkMode::Delay(*delay));
            sleep();
            cluster.nodes[i].inbound.set(LinkMode::Pass);
            format!("links to {who} slowed by {} ms", delay.as_millis())
        }
        FaultKind::Partition(aim) => {
            let (i, who) = resolve(cluster, *aim);
            let n = &cluster.nodes[i];
            n.inbound.set(LinkMode::Blackhole);
            for l in &n.etcd_links {
                l.set(LinkMode::Blackhole);
            }
            sleep();
            let n = &cluster.nodes[i];
            n.inbound.set(LinkMode::Pass);
            for l in &n.etcd_links {
                l.set(LinkMode::Pass);
            }
            format!("partition of {who} (peers and etcd)")
        }
        FaultKind::KillEtcdMember(m) => {
            cluster.etcd.kill(*m);
            sleep();
            cluster.etcd.heal();
            format!("kill -9 etcd member {m}")
        }
        FaultKind::PauseEtcdMember(m) => {
            cluster.etcd.pause(*m);
            sleep();
            cluster.etcd.resume(*m);
            format!("pause etcd member {m}")
        }
        FaultKind::SnapshotEtcd => {
            *snapshots += 1;
            cluster.etcd.heal();
            let file = cluster.etcd.snapshot();
            *last_snapshot = Some(file);
            format!("etcd snapshot {}", *snapshots)
        }
        FaultKind::WipeEtcd => {
            cluster.etcd.destroy();
            sleep();
            cluster.etcd.start_fresh();
            "etcd wipe".to_string()
        }
        FaultKind::RestoreEtcd => match last_snapshot.clone() {
            Some(file) => {
                cluster.etcd.destroy();
                sleep();
                let deleted = cluster.etcd.start_from(&file);
                format!(
                    "etcd restore of snapshot {} (runbook: {deleted} keys under {} deleted)",
                    *snapshots,
                    cluster.etcd.election_prefix()
                )
            }
            None => "etcd restore skipped: no snapshot yet".to_string(),
        },
        FaultKind::RestartGateway => {
            cluster.gateway.kill9();
            sleep();
            cluster.gateway.start();
            "kill -9 gateway".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_schedule_is_seeded_bounded_and_snapshots_before_it_restores() {
        let total = Duration::from_secs(600);
        let a = random_schedule(42, total, 2, 3);
        assert_eq!(a, random_schedule(42, total, 2, 3));
        assert_ne!(a, random_schedule(43, total, 2, 3));
        assert_eq!(a[0].kind, FaultKind::SnapshotEtcd);
        let mut end = Duration::ZERO;
        for f in &a {
            assert!(f.at < total, "{f:?}");
            assert!(f.at >= end, "faults overlap: {f:?}");
            assert!(f.duration <= Duration::from_secs(10), "{f:?}");
            if let FaultKind::Pause(_) = f.kind {
                assert!(
                    f.duration > Duration::from_secs(2),
                    "a pause shorter than the ttl: {f:?}"
                );
            }
            end = f.at + f.duration;
        }
        // Ten minutes hold every kind of fault.
        let has = |p: fn(&FaultKind) -> bool| a.iter().any(|f| p(&f.kind));
        assert!(has(|k| matches!(k, FaultKind::Kill(_))));
        assert!(has(|k| matches!(k, FaultKind::Pause(_))));
        assert!(has(|k| matches!(k, FaultKind::SlowEtcd(..))));
        assert!(has(|k| matches!(k, FaultKind::Partition(_))));
        assert!(has(|k| matches!(k, FaultKind::WipeEtcd)));
        assert!(has(|k| matches!(k, FaultKind::RestoreEtcd)));
        assert!(has(|k| matches!(k, FaultKind::KillEtcdMember(_))));
        assert!(has(|k| matches!(k, FaultKind::RestartGateway)));
    }
}
