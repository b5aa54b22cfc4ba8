//! The terms the nodes lead with, as their own `/health` shows them
//! (`term`: set only while the node leads), sampled through a whole run:
//! the checker's evidence for P3 (docs/WRITE_PROTOCOL.md): one leader per
//! term, and each node's reigns have growing terms (a term lives on in the
//! node's data, across restarts and etcd wipes and restores).
//!
//! A sample is one `/health` of one node; consecutive samples of a node
//! with the same term are one [`Reign`]. Paused, killed or cut-off nodes
//! are simply not sampled. Bounded in time and in reigns kept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::health;
use super::history::History;

/// Pause between two rounds of `/health` over every node.
const EVERY: Duration = Duration::from_millis(150);
/// Most reigns recorded (a run has a few dozen).
const MAX_REIGNS: usize = 10_000;

/// A node seen leading one term, from its first to its last sample (time
/// since the run's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reign {
    pub node: String,
    pub term: i64,
    pub first: Duration,
    pub last: Duration,
}

impl Reign {
    pub fn describe(&self) -> String {
        format!(
            "node {} led term {} [{:.2}s..{:.2}s]",
            self.node,
            self.term,
            self.first.as_secs_f64(),
            self.last.as_secs_f64()
        )
    }
}

/// The sampling thread; [`TermWatch::stop`] ends it and returns the reigns.
pub struct TermWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Reign>>,
}

impl TermWatch {
    /// Samples `nodes` ((name, own address)) until stopped, or for at most
    /// `max_time`.
    pub fn start(nodes: Vec<(String, SocketAddr)>, history: Arc<History>, max_time: Duration) -> TermWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("chaos-terms".into())
            .spawn(move || sample(&nodes, &history, &flag, Instant::now() + max_time))
            .expect("spawn the term sampler");
        TermWatch { stop, handle }
    }

    /// Stops sampling (after the round in flight) and returns every reign
    /// seen, in order of first sample per node.
    pub fn stop(self) -> Vec<Reign> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn sample(
    nodes: &[(String, SocketAddr)],
    history: &History,
    stop: &AtomicBool,
    until: Instant,
) -> Vec<Reign> {
    let mut reigns: Vec<Reign> = Vec::new();
    // Index in `reigns` of each node's current reign.
    let mut current: Vec<Option<usize>> = vec![None; nodes.len()];
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        for (i, (name, addr)) in nodes.iter().enumerate() {
            let Some(term) = health(*addr, Duration::from_millis(300)).and_then(|h| h["term"].as_i64())
            else {
                continue;
            };
            let now = history.now();
            match current[i] {
                Some(r) if reigns[r].term == term => reigns[r].last = now,
                _ if reigns.len() < MAX_REIGNS => {
                    current[i] = Some(reigns.len());
                    reigns.push(Reign {
                        node: name.clone(),
                        term,
                        first: now,
                        last: now,
                    });
                }
                _ => {}
            }
        }
        std::thread::sleep(EVERY);
    }
    reigns
}

/// P3 over `reigns`: every term led by one node only, and every node's
/// successive reigns with growing terms. One line per violation.
pub fn check(reigns: &[Reign]) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_term: std::collections::BTreeMap<i64, Vec<&Reign>> = Default::default();
    for r in reigns {
        by_term.entry(r.term).or_default().push(r);
    }
    for (term, rs) in &by_term {
        let first = rs[0];
        if let Some(other) = rs.iter().find(|r| r.node != first.node) {
            out.push(format!(
                "term {term} led by two nodes: {}; {}",
                first.describe(),
                other.describe()
            ));
        }
    }
    let mut nodes: Vec<&str> = reigns.iter().map(|r| r.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        let mine: Vec<&Reign> = reigns.iter().filter(|r| r.node == node).collect();
        for w in mine.windows(2) {
            if w[1].term <= w[0].term {
                out.push(format!(
                    "node {node}'s term did not grow: {}, then {}",
                    w[0].describe(),
                    w[1].describe()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reign(node: &str, term: i64, first: f64) -> Reign {
        Reign {
            node: node.into(),
            term,
            first: Duration::from_secs_f64(first),
            last: Duration::from_secs_f64(first + 1.0),
        }
    }

    #[test]
    fn growing_terms_one_node_each_hold() {
        let rs = [
            reign("a", 1, 0.0),
            reign("b", 2, 5.0),
            reign("a", 3, 9.0),
            reign("c", 7, 20.0),
        ];
        assert!(check(&rs).is_empty(), "{:?}", check(&rs));
    }

    #[test]
    fn a_term_led_by_two_nodes_is_a_violation() {
        let out = check(&[reign("a", 1, 0.0), reign("b", 2, 5.0), reign("c", 2, 9.0)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("term 2 led by two nodes"), "{out:?}");
        assert!(out[0].contains("node b") && out[0].contains("node c"), "{out:?}");
    }

    #[test]
    fn a_node_leading_a_lower_or_the_same_term_again_is_a_violation() {
        let out = check(&[reign("a", 3, 0.0), reign("b", 4, 5.0), reign("a", 2, 9.0)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("node a's term did not grow"), "{out:?}");
        // The same term again in a later reign of the same node (a reign
        // in between) does not grow either.
        let out = check(&[reign("a", 3, 0.0), reign("a", 5, 4.0), reign("a", 5, 9.0)]);
        assert_eq!(out.len(), 1, "{out:?}");
    }
}
