//! The write election against a real etcd: one leader at a time, takeover
//! after a crash within the lease, the acknowledgment fence, and the rule
//! that only a node holding every acknowledged change may lead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::election::{AckError, Election, History};
use cluster::EtcdConfig;
use kamaitachi_testkit::{eventually, temp_dir, Etcd};

fn config(etcd: &Etcd, ttl: i64) -> EtcdConfig {
    etcd.client_config("/kmt-el", ttl)
}

fn runtime() -> tokio::runtime::Runtime {
    cluster::registry::runtime().expect("tokio runtime")
}

/// A node's history for the election: a position and one digest per
/// position, as the node's change log would give.
#[derive(Default)]
struct FakeHistory {
    position: AtomicU64,
    /// The digest prefix: two histories with different tags differ.
    tag: Mutex<String>,
}

impl FakeHistory {
    fn new(position: u64, tag: &str) -> Arc<Self> {
        Arc::new(FakeHistory {
            position: AtomicU64::new(position),
            tag: Mutex::new(tag.into()),
        })
    }
}

impl History for FakeHistory {
    fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }
    fn digest_at(&self, seq: u64) -> Option<String> {
        if seq == 0 {
            return Some(String::new());
        }
        (seq <= self.position()).then(|| {
            let tag = self.tag.lock().unwrap().clone();
            format!("{tag}{seq:0>63}").chars().take(64).collect()
        })
    }
}

fn digest(tag: &str, seq: u64) -> String {
    format!("{tag}{seq:0>63}").chars().take(64).collect()
}

#[test]
fn one_leader_then_takeover_within_the_lease_after_a_crash() {
    let etcd = Etcd::start(&temp_dir("election-takeover"));
    let rt = runtime();
    let ttl = 3;
    let a = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18001",
        true,
        FakeHistory::new(5, "a"),
    );
    assert!(
        eventually(Duration::from_secs(10), || a.leading().is_some()),
        "{:?}",
        a.view()
    );
    let term_a = a.leading().unwrap();
    // A second candidate with the same history follows; it does not lead.
    let b = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18002",
        true,
        FakeHistory::new(5, "a"),
    );
    assert!(eventually(Duration::from_secs(5), || b
        .view()
        .leader
        .as_ref()
        .is_some_and(|l| l.addr == "127.0.0.1:18001")));
    std::thread::sleep(Duration::from_secs(ttl as u64 + 1));
    assert_eq!(b.leading(), None, "two leaders");
    assert_eq!(a.leading(), Some(term_a), "the leader lost its lease while alive");
    // The baseline: the winner's history counts as acknowledged.
    let acked = b.view().acked.clone().unwrap();
    assert_eq!((acked.term, acked.seq), (term_a, 5));
    // The leader records an acknowledgment under its term.
    a.record_acked_blocking(term_a, 6, &digest("a", 6), Duration::from_secs(2))
        .unwrap();
    // A crash: the lease runs out; b takes over within ttl + 2 s.
    let crashed = Instant::now();
    a.abandon();
    // b has change 6 too (it was acknowledged, so a sync follower had it).
    let b_history = FakeHistory::new(6, "a");
    drop(b);
    let b = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18002",
        true,
        b_history,
    );
    assert!(
        eventually(Duration::from_secs(ttl as u64 + 2), || b.leading().is_some()),
        "{:?}",
        b.view()
    );
    let took = crashed.elapsed();
    let term_b = b.leading().unwrap();
    assert!(term_b > term_a, "terms must grow: {term_b} after {term_a}");
    assert!(
        took <= Duration::from_secs(ttl as u64 + 2),
        "takeover took {took:?}"
    );
    // The fence: the old term can no longer acknowledge anything.
    let c = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18003",
        false,
        FakeHistory::new(0, "a"),
    );
    assert!(eventually(Duration::from_secs(5), || c.view().synced));
    // (c is not a candidate: it never leads, whatever happens.)
    b.shutdown_blocking(Duration::from_secs(3));
    let d = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18004",
        true,
        FakeHistory::new(6, "a"),
    );
    // A graceful stop hands over at once, not after a ttl.
    assert!(
        eventually(Duration::from_secs(2), || d.leading().is_some()),
        "{:?}",
        d.view()
    );
    let term_d = d.leading().unwrap();
    assert!(eventually(Duration::from_secs(2), || c
        .view()
        .leader
        .as_ref()
        .is_some_and(|l| l.term == term_d)));
    assert_eq!(c.leading(), None);
    match d.record_acked_blocking(term_a, 99, &digest("a", 99), Duration::from_secs(2)) {
        Err(AckError::NotLeader(t)) => assert_eq!(t, term_a),
        other => panic!("an old term acknowledged a write: {other:?}"),
    }
    assert_eq!(c.view().acked.as_ref().map(|a| a.seq), Some(6));
}

#[test]
fn only_a_node_with_every_acknowledged_change_may_lead() {
    let etcd = Etcd::start(&temp_dir("election-eligible"));
    let rt = runtime();
    let ttl = 2;
    let a = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18011",
        true,
        FakeHistory::new(10, "a"),
    );
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let term = a.leading().unwrap();
    a.record_acked_blocking(term, 12, &digest("a", 12), Duration::from_secs(2))
        .unwrap();
    a.abandon();
    // Behind (11 < 12), and a different history at 12: neither may lead.
    let behind = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18012",
        true,
        FakeHistory::new(11, "a"),
    );
    let other = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18013",
        true,
        FakeHistory::new(13, "b"),
    );
    std::thread::sleep(Duration::from_secs(ttl as u64 + 3));
    assert_eq!(behind.leading(), None);
    assert_eq!(other.leading(), None);
    assert!(behind.view().leader.is_none(), "{:?}", behind.view());
    assert!(
        behind.view().waiting.contains("behind"),
        "{}",
        behind.view().waiting
    );
    assert!(
        other.view().waiting.contains("history differs"),
        "{}",
        other.view().waiting
    );
    // One that has everything acknowledged (and more) runs and wins.
    let good = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18014",
        true,
        FakeHistory::new(14, "a"),
    );
    assert!(
        eventually(Duration::from_secs(5), || good.leading().is_some()),
        "{:?}",
        good.view()
    );
    assert!(good.leading().unwrap() > term);
    // Its baseline is now what others must hold.
    assert!(eventually(Duration::from_secs(2), || behind
        .view()
        .acked
        .as_ref()
        .map(|a| a.seq)
        == Some(14)));
}

#[test]
fn an_empty_candidate_gives_one_with_data_the_first_election() {
    let etcd = Etcd::start(&temp_dir("election-bootstrap"));
    let rt = runtime();
    let ttl = 3;
    let empty = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18021",
        true,
        FakeHistory::new(0, "a"),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let full = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18022",
        true,
        FakeHistory::new(40, "a"),
    );
    assert!(
        eventually(Duration::from_secs(5), || full.leading().is_some()),
        "{:?}",
        full.view()
    );
    assert_eq!(empty.leading(), None);
    // Alone, an empty candidate does lead after the grace (a new cluster).
    full.shutdown_blocking(Duration::from_secs(3));
    empty.abandon();
    etcd.etcdctl(&["del", "--prefix", "/kmt-el/"]);
    let alone = Election::spawn(
        rt.handle(),
        config(&etcd, ttl),
        "127.0.0.1:18023",
        true,
        FakeHistory::new(0, "a"),
    );
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(ttl as u64 + 3), || alone.leading().is_some()),
        "{:?}",
        alone.view()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(ttl as u64 - 1),
        "no grace: {:?}",
        started.elapsed()
    );
}
