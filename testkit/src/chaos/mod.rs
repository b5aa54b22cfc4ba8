//! A Jepsen-style fault harness for the write path: real processes (a
//! 3-member etcd, write-HA nodes, the gateway; [`cluster`]), clients that
//! write and read through the gateway and straight to nodes while a
//! nemesis injects faults ([`client`], [`nemesis`], [`proxy`] for slow and
//! cut links), a recorded [`history`], and a [`checker`] of the write
//! protocol's promises (docs/WRITE_PROTOCOL.md: P1 durability, P2 no
//! phantom reads, P3 terms only grow, convergence) over it; [`terms`]
//! samples who leads which term throughout.
//!
//! [`run`] is one run: start the cluster, start the clients, play the
//! schedule (each fault heals itself), let the clients go on a little,
//! stop them, heal everything, wait (bounded) for the cluster to converge,
//! read every node's database and check. Every loop and wait is bounded;
//! the processes and their directory go away with the [`RunResult`] (the
//! directory stays when the test fails, for a post-mortem).

pub mod checker;
pub mod client;
pub mod cluster;
pub mod etcd_cluster;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod rng;
pub mod terms;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use checker::Report;
pub use client::Workload;
pub use cluster::{ChaosCluster, ClusterSpec};
pub use nemesis::{Aim, Fault, FaultKind, FaultSpan};

/// One run's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub cluster: ClusterSpec,
    pub workload: Workload,
    pub schedule: Vec<Fault>,
    /// How long the clients go on after the last fault healed.
    pub settle: Duration,
    /// Longest wait for the cluster to converge once everything healed.
    pub converge_timeout: Duration,
}

impl Plan {
    pub fn new(name: &str, schedule: Vec<Fault>) -> Plan {
        Plan {
            name: name.to_string(),
            cluster: ClusterSpec::default(),
            workload: Workload::default(),
            schedule,
            settle: Duration::from_secs(3),
            converge_timeout: Duration::from_secs(30),
        }
    }
}

/// What a run found.
pub struct RunResult {
    pub plan: Plan,
    pub report: Report,
    pub faults: Vec<FaultSpan>,
    /// How long the cluster took to converge, or why it did not.
    pub converged: Result<Duration, String>,
    /// The whole run, cluster start included.
    pub elapsed: Duration,
    pub cluster: ChaosCluster,
}

impl RunResult {
    /// The counts and how long it took, one line.
    pub fn summary(&self) -> String {
        format!(
            "chaos run '{}': {:.1} s, {} faults; {}",
            self.plan.name,
            self.elapsed.as_secs_f64(),
            self.faults.len(),
            self.report.summary()
        )
    }

    /// Panics, with every violation, the faults and the logs' tails (the
    /// whole history is in `history.log` in the run's directory), unless
    /// P1, P2, P3 and convergence hold and at least `min_ok_writes` writes
    /// were acknowledged (a run that acknowledged nothing proves nothing).
    pub fn assert_holds(&self, min_ok_writes: usize) {
        let faults: Vec<String> = self.faults.iter().map(FaultSpan::describe).collect();
        assert!(
            self.report.holds() && self.report.writes_ok >= min_ok_writes,
            "the write protocol's promises do not hold ({} acknowledged writes, at least {min_ok_writes} wanted):\n{}\nfaults:\n  {}\nlogs ({}):\n{}",
            self.report.writes_ok,
            self.report.details(25),
            faults.join("\n  "),
            self.cluster.dir().display(),
            self.cluster.logs(25)
        );
    }
}

/// Plays `plan` (see the module comment).
pub fn run(plan: Plan) -> RunResult {
    let started = Instant::now();
    let mut cluster = ChaosCluster::start(plan.cluster.clone());
    let history = Arc::new(history::History::new(Instant::now()));
    let targets = client::Targets {
        gateway: cluster.gateway.addr(),
        nodes: cluster.nodes.iter().map(|n| (n.name.clone(), n.addr())).collect(),
    };
    let last = plan
        .schedule
        .iter()
        .map(|f| f.at + f.duration)
        .max()
        .unwrap_or_default();
    // A bound of their own, should the nemesis overrun its schedule.
    let client_time = last + plan.settle + Duration::from_secs(120);
    let watch = terms::TermWatch::start(
        targets.nodes.clone(),
        history.clone(),
        client_time + plan.converge_timeout,
    );
    let clients = client::Clients::start(targets, plan.workload.clone(), history.clone(), client_time);
    let faults = nemesis::run(&mut cluster, &plan.schedule, &history);
    std::thread::sleep(plan.settle);
    clients.stop();
    cluster.heal();
    let converged = cluster.wait_converged(plan.converge_timeout);
    let reigns = watch.stop();
    let states = cluster.states();
    let mut report = checker::check(&history.ops(), &states, &faults);
    report.reigns = reigns.len();
    report.terms = terms::check(&reigns);
    if let Err(why) = &converged {
        report
            .diverged
            .insert(0, format!("the cluster did not converge: {why}"));
    }
    write_history(&cluster.dir().join("history.log"), &history.ops(), &faults);
    let result = RunResult {
        plan,
        report,
        faults,
        converged,
        elapsed: started.elapsed(),
        cluster,
    };
    eprintln!("{}", result.summary());
    // The violations (if any) and why writes failed.
    eprintln!("{}", result.report.details(25));
    result
}

/// Every fault and operation, one a line, in order of start: the evidence
/// a failed run leaves next to the nodes' logs (its directory stays).
fn write_history(path: &std::path::Path, ops: &[history::Op], faults: &[FaultSpan]) {
    let mut lines: Vec<(Duration, String)> = faults
        .iter()
        .map(|f| (f.start, format!("FAULT {}", f.describe())))
        .chain(ops.iter().map(|o| (o.invoked, o.describe())))
        .collect();
    lines.sort_by_key(|l| l.0);
    let text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("chaos: could not write {}: {e}", path.display());
    }
}
