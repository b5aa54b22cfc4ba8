//! The write election against a real etcd: one leader at a time, takeover
//! after a crash within the lease, the acknowledgment fence, and the rule
//! that only a node holding every acknowledged change may lead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::election::{AckError, Election, History, Standing};
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
    /// What a node's database keeps for the election.
    durable: Mutex<Standing>,
}

impl FakeHistory {
    fn new(position: u64, tag: &str) -> Arc<Self> {
        Arc::new(FakeHistory {
            position: AtomicU64::new(position),
            tag: Mutex::new(tag.into()),
            durable: Mutex::default(),
        })
    }

    /// A `mode = master` node: may start a cluster with no data.
    fn bootstrapping(position: u64, tag: &str) -> Arc<Self> {
        let h = Self::new(position, tag);
        h.durable.lock().unwrap().may_bootstrap = true;
        h
    }

    fn term(&self) -> i64 {
        self.durable.lock().unwrap().term
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
    fn standing(&self) -> Result<Standing, String> {
        let mut s = self.durable.lock().unwrap().clone();
        s.seq = self.position();
        s.has_data = s.seq > 0;
        Ok(s)
    }
    fn raise_term(&self, term: i64) -> Result<(), String> {
        let mut d = self.durable.lock().unwrap();
        d.term = d.term.max(term);
        Ok(())
    }
    fn raise_known_acked(&self, term: i64, seq: u64) -> Result<(), String> {
        let mut d = self.durable.lock().unwrap();
        d.acked = d.acked.max((term, seq));
        Ok(())
    }
    fn remember_members(&self, add: Vec<String>, remove: Vec<String>) -> Result<(), String> {
        let mut d = self.durable.lock().unwrap();
        d.members.retain(|m| !remove.contains(m));
        for a in add {
            if !d.members.contains(&a) {
                d.members.push(a);
            }
        }
        Ok(())
    }
}

/// A candidate at `addr` with `history`, campaigning in `etcd`.
fn candidate(
    rt: &tokio::runtime::Runtime,
    etcd: &Etcd,
    ttl: i64,
    addr: &str,
    history: Arc<FakeHistory>,
) -> Election {
    Election::spawn(rt.handle(), config(etcd, ttl), addr, true, history)
}

fn digest(tag: &str, seq: u64) -> String {
    format!("{tag}{seq:0>63}").chars().take(64).collect()
}

#[test]
fn one_leader_then_takeover_within_the_lease_after_a_crash() {
    let etcd = Etcd::start(&temp_dir("election-takeover"));
    let rt = runtime();
    let ttl = 3;
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18001", FakeHistory::new(5, "a"));
    assert!(
        eventually(Duration::from_secs(10), || a.leading().is_some()),
        "{:?}",
        a.view()
    );
    let term_a = a.leading().unwrap();
    // A second candidate with the same history follows; it does not lead.
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18002", FakeHistory::new(5, "a"));
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
    b.abandon();
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18002", b_history);
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
    let d = candidate(&rt, &etcd, ttl, "127.0.0.1:18004", FakeHistory::new(6, "a"));
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
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18011", FakeHistory::new(10, "a"));
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let term = a.leading().unwrap();
    a.record_acked_blocking(term, 12, &digest("a", 12), Duration::from_secs(2))
        .unwrap();
    a.abandon();
    // Behind (11 < 12), and a different history at 12: neither may lead.
    let behind = candidate(&rt, &etcd, ttl, "127.0.0.1:18012", FakeHistory::new(11, "a"));
    let other = candidate(&rt, &etcd, ttl, "127.0.0.1:18013", FakeHistory::new(13, "b"));
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
    let good = candidate(&rt, &etcd, ttl, "127.0.0.1:18014", FakeHistory::new(14, "a"));
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
    let empty = candidate(
        &rt,
        &etcd,
        ttl,
        "127.0.0.1:18021",
        FakeHistory::bootstrapping(0, "a"),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let full = candidate(&rt, &etcd, ttl, "127.0.0.1:18022", FakeHistory::new(40, "a"));
    assert!(
        eventually(Duration::from_secs(5), || full.leading().is_some()),
        "{:?}",
        full.view()
    );
    assert_eq!(empty.leading(), None);
    // Alone, an empty candidate slave never starts a cluster; an empty
    // `mode = master` node does, after the grace (a new cluster).
    full.shutdown_blocking(Duration::from_secs(3));
    empty.abandon();
    etcd.etcdctl(&["del", "--prefix", "/kmt-el/"]);
    let slave = candidate(&rt, &etcd, ttl, "127.0.0.1:18024", FakeHistory::new(0, "a"));
    std::thread::sleep(Duration::from_secs(ttl as u64 + 2));
    assert_eq!(slave.leading(), None, "{:?}", slave.view());
    assert!(
        slave.view().waiting.contains("mode = master"),
        "{:?}",
        slave.view()
    );
    slave.shutdown_blocking(Duration::from_secs(3));
    etcd.etcdctl(&["del", "--prefix", "/kmt-el/"]);
    let alone = candidate(
        &rt,
        &etcd,
        ttl,
        "127.0.0.1:18023",
        FakeHistory::bootstrapping(0, "a"),
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

/// Waits until every history remembers `n` candidate members.
fn remembers(histories: &[&Arc<FakeHistory>], n: usize) -> bool {
    eventually(Duration::from_secs(10), || {
        histories
            .iter()
            .all(|h| h.durable.lock().unwrap().members.len() >= n)
    })
}

#[test]
fn terms_keep_growing_after_etcd_lost_its_data() {
    let mut etcd = Etcd::start(&temp_dir("election-wipe-term"));
    let rt = runtime();
    let ttl = 2;
    let (ha, hb) = (FakeHistory::new(5, "a"), FakeHistory::new(5, "a"));
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18031", ha.clone());
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18032", hb.clone());
    assert!(remembers(&[&ha, &hb], 2));
    let term_a = a.leading().unwrap();
    assert_eq!(ha.term(), term_a, "the winner records its term in its data");
    // Both crash; etcd loses everything; its revisions start again at 1.
    a.abandon();
    b.abandon();
    etcd.restart(true);
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18031", ha.clone());
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18032", hb.clone());
    assert!(
        eventually(Duration::from_secs(20), || a.leading().or(b.leading()).is_some()),
        "nobody leads after the wipe: {:?} / {:?}",
        a.view(),
        b.view()
    );
    let term = a.leading().or(b.leading()).unwrap();
    assert!(term > term_a, "the term went backwards: {term} after {term_a}");
    a.shutdown_blocking(Duration::from_secs(3));
    b.shutdown_blocking(Duration::from_secs(3));
}

#[test]
fn after_etcd_lost_its_data_the_members_elect_the_most_recent_history_and_never_an_empty_node() {
    let mut etcd = Etcd::start(&temp_dir("election-wipe-members"));
    let rt = runtime();
    let ttl = 2;
    let (ha, hb, hc) = (
        FakeHistory::new(10, "a"),
        FakeHistory::new(8, "a"),
        FakeHistory::new(0, "a"),
    );
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18041", ha.clone());
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18042", hb.clone());
    let c = candidate(&rt, &etcd, ttl, "127.0.0.1:18043", hc.clone());
    assert!(remembers(&[&ha, &hb, &hc], 3));
    // A write acknowledged by the leader (the others were behind). The
    // followers know the term, as a follower learns it from the leader.
    let term = a.leading().unwrap();
    hb.raise_term(term).unwrap();
    hc.raise_term(term).unwrap();
    ha.position.store(11, Ordering::SeqCst);
    a.record_acked_blocking(term, 11, &digest("a", 11), Duration::from_secs(2))
        .unwrap();
    a.abandon();
    b.abandon();
    c.abandon();
    etcd.restart(true);
    // The empty node and the stale one come back first: they wait for a.
    let c = candidate(&rt, &etcd, ttl, "127.0.0.1:18043", hc.clone());
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18042", hb.clone());
    std::thread::sleep(Duration::from_secs(3 * ttl as u64 + 2));
    assert_eq!(b.leading(), None, "a stale node led: {:?}", b.view());
    assert_eq!(c.leading(), None, "an empty node led: {:?}", c.view());
    let waiting = b.view().waiting.clone();
    assert!(waiting.contains("127.0.0.1:18041"), "{waiting}");
    // a comes back: its history is the most recent, it leads, and its
    // baseline holds the write it acknowledged alone.
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18041", ha.clone());
    assert!(
        eventually(Duration::from_secs(15), || a.leading().is_some()),
        "{:?}",
        a.view()
    );
    assert!(a.leading().unwrap() > term);
    assert!(eventually(Duration::from_secs(3), || b
        .view()
        .acked
        .as_ref()
        .map(|x| x.seq)
        == Some(11)));
    for e in [a, b, c] {
        e.shutdown_blocking(Duration::from_secs(3));
    }
}

#[test]
fn an_operator_excuses_a_member_that_is_gone_for_good() {
    let mut etcd = Etcd::start(&temp_dir("election-excuse"));
    let rt = runtime();
    let ttl = 2;
    let (ha, hb) = (FakeHistory::new(4, "a"), FakeHistory::new(4, "a"));
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18051", ha.clone());
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18052", hb.clone());
    assert!(remembers(&[&ha, &hb], 2));
    a.abandon();
    b.abandon();
    etcd.restart(true);
    let b = candidate(&rt, &etcd, ttl, "127.0.0.1:18052", hb.clone());
    std::thread::sleep(Duration::from_secs(ttl as u64 + 3));
    assert_eq!(b.leading(), None, "{:?}", b.view());
    // The runbook's step: a is gone for good.
    let (ok, _) = etcd.etcdctl(&["put", "/kmt-el/election/excused/127.0.0.1:18051", "1"]);
    assert!(ok);
    assert!(
        eventually(Duration::from_secs(10), || b.leading().is_some()),
        "{:?}",
        b.view()
    );
    assert!(
        eventually(Duration::from_secs(5), || !hb
            .durable
            .lock()
            .unwrap()
            .members
            .contains(&"127.0.0.1:18051".to_string())),
        "the excused member is still remembered"
    );
    b.shutdown_blocking(Duration::from_secs(3));
}

#[test]
fn a_leader_whose_key_is_rewritten_in_place_steps_down_and_a_leader_is_elected_again() {
    let etcd = Etcd::start(&temp_dir("election-rewritten"));
    let rt = runtime();
    let ttl = 2;
    let h = FakeHistory::new(5, "a");
    let a = candidate(&rt, &etcd, ttl, "127.0.0.1:18061", h.clone());
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let term = a.leading().unwrap();
    // Someone with write access to the prefix names another leader.
    let (ok, out) = etcd.etcdctl(&[
        "put",
        "/kmt-el/election/leader",
        r#"{"addr":"127.0.0.1:9","since":0}"#,
    ]);
    assert!(ok, "{out}");
    // Its fence fails at once (exact value), and it steps down and resigns.
    match a.record_acked_blocking(term, 6, &digest("a", 6), Duration::from_secs(1)) {
        Err(AckError::NotLeader(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(10), || a.leading().is_some_and(|t| t > term)),
        "not elected again: {:?}",
        a.view()
    );
    a.shutdown_blocking(Duration::from_secs(3));
}

/// A fence whose attempts time out on a slow link to etcd may still have
/// been recorded: the answer is never "not acknowledged" then. It is read
/// back (acknowledged after all) or "unknown"; and etcd does hold it.
#[test]
fn a_fence_that_timed_out_is_read_back_never_reported_as_not_acknowledged() {
    use kamaitachi_testkit::chaos::proxy::{LinkMode, Proxy};
    let etcd = Etcd::start(&temp_dir("election-fence-doubt"));
    let proxy = Proxy::start(etcd.endpoint().parse().unwrap());
    let rt = runtime();
    let mut cfg = config(&etcd, 10);
    cfg.endpoints = vec![proxy.addr()];
    let a = Election::spawn(
        rt.handle(),
        cfg,
        "127.0.0.1:18071",
        true,
        FakeHistory::new(5, "a"),
    );
    assert!(eventually(Duration::from_secs(10), || a.leading().is_some()));
    let term = a.leading().unwrap();
    // Every answer now arrives after the 1 s attempts have given up.
    proxy.set(LinkMode::Delay(Duration::from_millis(1500)));
    let r = a.record_acked_blocking(term, 6, &digest("a", 6), Duration::from_secs(2));
    proxy.set(LinkMode::Pass);
    assert!(
        matches!(r, Ok(()) | Err(AckError::Unknown(_))),
        "a fence in doubt reported as {r:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, out) = etcd.etcdctl(&["get", "/kmt-el/election/acked", "--print-value-only"]);
            out.contains("\"seq\":6")
        }),
        "the fence was not recorded after all"
    );
    a.shutdown_blocking(Duration::from_secs(3));
}
