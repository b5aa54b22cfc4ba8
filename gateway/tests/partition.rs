//! Issue 14 across hosts: every process (etcd, the nodes, the gateway) in a
//! network namespace of its own on a private test subnet ([`TestNet`]),
//! talking through a bridge on real addresses — never loopback, which is
//! private to each namespace. The first test proves the cluster works
//! across hosts (`bind`, `service_addr`, discovery, replication, routing);
//! the network, its namespaces and every process are removed at the end,
//! also when the test fails (the harnesses' Drop, net declared first).
//!
//! The second is the partition test of the write-HA design (README, "Write
//! availability"): the leader's link is cut; it must stop acknowledging
//! writes once its lease could have expired (writes sent to it from inside
//! its own namespace are refused), a follower must take over within
//! ttl + 2 s, and after the link is back there is one leader, the old one
//! follows and has discarded what it took while cut off, and every
//! acknowledged write is on every node exactly once. Load loops are bounded
//! in count and time.
//!
//! Needs root and iproute2 (CI runs as root; scripts/install-deps.sh).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const Q2_2025: i64 = 1_751_241_600;
const INGEST: &str = "/data/kamaitachi/api/data/v1/ingest";

/// One ingest record: `value` as `net_profit` of `subject` for Q2 2025.
fn ingest_body(subject: &str, value: f64) -> String {
    serde_json::json!({"records": [{
        "subject": subject, "report_date": Q2_2025, "end_date": "2025-06-30", "year": "2025",
        "period": "Q2", "declare_date": "2025-08-01", "values": {"net_profit": value}
    }]})
    .to_string()
}

fn net_profit_query(subject: &str) -> String {
    format!(r#"{{"ids":"net_profit","subjects":"{subject}"}}"#)
}

/// `[etcd]` lines for a node or the gateway, with lease `ttl` seconds.
fn etcd_ini(etcd: &Etcd, ttl: u64) -> String {
    format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-net\nttl = {ttl}\n",
        etcd.endpoint()
    )
}

/// A node on `host`, its database `db` (copied from the sample data first
/// when `data`), registered in etcd.
fn node_on(host: &NetHost, db: &Path, mode: &'static str, data: bool, extra: &str) -> Node {
    if data {
        std::fs::copy(sample_db(), db).expect("copy sample data");
    }
    let mut opts = NodeOpts::new(db);
    opts.mode = mode;
    opts.host = Some(host.clone());
    opts.extra = extra.to_string();
    Node::start(&node_bin(), &opts)
}

fn applied_seq(n: &Node) -> Option<u64> {
    n.get("/health").json()["applied_seq"].as_u64()
}

/// Builds the cross-host cluster, checks it, and returns the namespaces it
/// made (all processes and the net are dropped on return).
fn cross_host_cluster() -> Vec<String> {
    let mut net = TestNet::create();
    let dir = TestDir::new(temp_dir("gw-net"));
    let h_etcd = net.host("etcd");
    let h_master = net.host("m");
    let h_s1 = net.host("s1");
    let h_s2 = net.host("s2");
    let h_gw = net.host("gw");
    let etcd = Etcd::start_on(&dir, &h_etcd);
    let ini = etcd_ini(&etcd, 2);
    let master = node_on(&h_master, &dir.join("m.db"), "master", true, &ini);
    let s1 = node_on(&h_s1, &dir.join("s1.db"), "slave", false, &ini);
    let s2 = node_on(&h_s2, &dir.join("s2.db"), "slave", false, &ini);
    let gw = Gateway::start_on(&h_gw, &etcd_ini(&etcd, 2));
    gw.wait_nodes(3);

    // Registered by their addresses on the test network, not localhost.
    let keys = etcd.keys("/kmt-net/services/");
    for n in [&master, &s1, &s2] {
        let addr = n.addr.to_string();
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("/{addr}"))),
            "{addr} not registered: {keys:?}"
        );
        assert!(!addr.starts_with("127."), "{addr}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("localhost") || k.contains("/127.")),
        "{keys:?}"
    );

    // A write through the gateway reaches every host.
    let auth = format!("Bearer {TOKEN}");
    let subj = subject(5);
    let r = request_at(
        gw.addr,
        "POST",
        INGEST,
        ingest_body(&subj, 7321.0).as_bytes(),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seq = r.json()["data"]["seq"].as_u64().expect("seq");
    for n in [&master, &s1, &s2] {
        assert!(
            eventually(Duration::from_secs(15), || applied_seq(n) >= Some(seq)),
            "node {} did not apply {seq}: {}",
            n.addr,
            n.log_text()
        );
        let got = n.post(SNAPSHOT, &net_profit_query(&subj)).json();
        assert_eq!(
            got["data"][0]["data"]["net_profit"], 7321.0,
            "node {}: {got}",
            n.addr
        );
    }
    // Reads through the gateway, for keys every node owns.
    for i in 0..30 {
        let r = gw.post(
            "/data/kamaitachi/api/data/v1/snapshot",
            &net_profit_query(&subject(i)),
        );
        assert_eq!(r.status, 200, "read {i}: {}", r.text());
    }
    let got = gw
        .post("/data/kamaitachi/api/data/v1/snapshot", &net_profit_query(&subj))
        .json();
    assert_eq!(got["data"][0]["data"]["net_profit"], 7321.0, "{got}");

    // The traffic really crosses the test network: a slave cut off from it
    // leaves the gateway's ring, and comes back when plugged in again.
    net.cut(&h_s2);
    assert!(
        eventually(Duration::from_secs(15), || gw.health()["healthy_nodes"] == 2),
        "the gateway still sees a cut-off node: {}",
        gw.health()
    );
    net.heal(&h_s2);
    gw.wait_nodes(3);

    let mut names = net.namespaces();
    names.sort();
    names
}

#[test]
fn the_cluster_works_across_hosts() {
    let started = Instant::now();
    let namespaces = cross_host_cluster();
    assert_eq!(namespaces.len(), 6, "{namespaces:?}");
    for ns in &namespaces {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    eprintln!("cross-host test took {:?}", started.elapsed());
}

// ---- The partition test. ----

/// Lease ttl of the nodes in the partition test (seconds).
const TTL: u64 = 3;
const NODE_INGEST: &str = "/kamaitachi/api/data/v1/ingest";

/// A write of a new subject `{market}:{id:06}` (one row): a write is
/// present on a node exactly when its subject is.
fn new_subject_body(subject: &str, value: f64) -> String {
    serde_json::json!({"records": [{
        "subject": subject, "name": format!("partition {subject}"), "report_date": Q2_2025,
        "end_date": "2025-06-30", "year": "2025", "period": "Q2", "declare_date": "2025-08-01",
        "values": {"net_profit": value}
    }]})
    .to_string()
}

/// One write of a load loop: its subject, when it was sent and answered
/// (since the test's start) and the status (0: no answer).
#[derive(Debug, Clone)]
struct Sent {
    subject: String,
    started: Duration,
    answered: Duration,
    status: u16,
    msg: String,
}

/// What a node says about the election in `/health`: (leader addr, term,
/// this node's role); `None` when it does not answer.
fn election_of(n: &Node) -> Option<(Option<String>, Option<i64>, String)> {
    let r = try_request_at(n.addr, "GET", "/health", b"", &[]).ok()?;
    let h: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    Some((
        h["leader"]["addr"].as_str().map(str::to_string),
        h["leader"]["term"].as_i64(),
        h["role"].as_str().unwrap_or("").to_string(),
    ))
}

/// How many rows of `table` name `subject`, in the (stopped) node's db.
fn rows_of(db: &Path, table: &str, subject: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open database");
    conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE subject = ?1"),
        [subject],
        |r| r.get(0),
    )
    .expect("count rows")
}

/// Writes through the gateway at a steady pace whatever the answers take
/// (open loop: a write held by a cut-off node must not hold back the next
/// ones, or the takeover time would measure the gateway's upstream
/// timeout): one new write every 50 ms, each on its own thread and
/// connection, until `stop`, 1,200 writes or 90 s, at most 64 at a time.
/// Subjects are `77:NNNNNN`. Returns when every write has been answered.
fn gateway_writer(
    gw: std::net::SocketAddr,
    t0: Instant,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Sent>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut writes = Vec::new();
        for id in 0..1_200 {
            if stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(90) {
                break;
            }
            if in_flight.load(Ordering::SeqCst) < 64 {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (out, in_flight) = (out.clone(), in_flight.clone());
                writes.push(std::thread::spawn(move || {
                    let auth = format!("Bearer {TOKEN}");
                    let subject = format!("77:{id:06}");
                    let started = t0.elapsed();
                    let r = try_request_at(
                        gw,
                        "POST",
                        INGEST,
                        new_subject_body(&subject, id as f64).as_bytes(),
                        &[("Authorization", &auth)],
                    );
                    let (status, msg) = match r {
                        Ok(r) => (r.status, r.text()),
                        Err(e) => (0, e.to_string()),
                    };
                    if let Ok(mut out) = out.lock() {
                        out.push(Sent {
                            subject,
                            started,
                            answered: t0.elapsed(),
                            status,
                            msg,
                        });
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for w in writes {
            let _ = w.join();
        }
    })
}

/// Stops the load loops when dropped: also when the test fails half-way.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_cut_off_leader_stops_acknowledging_and_a_follower_takes_over() {
    let mut net = TestNet::create();
    let dir = TestDir::new(temp_dir("gw-part"));
    let h_etcd = net.host("etcd");
    let h_a = net.host("a");
    let h_b = net.host("b");
    let h_c = net.host("c");
    let h_gw = net.host("gw");
    let etcd = Etcd::start_on(&dir, &h_etcd);
    let ini = etcd_ini(&etcd, TTL);
    let (db_a, db_b, db_c) = (dir.join("a.db"), dir.join("b.db"), dir.join("c.db"));
    // A: a candidate with the data (leads first); B: a candidate follower
    // (the one sync replica); C: a plain follower.
    let mut a = node_on(&h_a, &db_a, "master", true, &ini);
    let mut b = node_on(
        &h_b,
        &db_b,
        "slave",
        false,
        &format!("{ini}[replication]\ncandidate = true\n"),
    );
    let mut c = node_on(&h_c, &db_c, "slave", false, &ini);
    let gw = Gateway::start_on(&h_gw, &etcd_ini(&etcd, TTL));
    gw.wait_nodes(3);
    let a_addr = a.addr.to_string();
    let b_addr = b.addr.to_string();
    assert!(
        eventually(Duration::from_secs(15), || [&a, &b, &c].iter().all(|n| {
            election_of(n).is_some_and(|(l, _, _)| l.as_deref() == Some(a_addr.as_str()))
        })),
        "A never led for everyone: {:?}",
        [&a, &b, &c].map(election_of)
    );
    let term_a = election_of(&a).and_then(|(_, t, _)| t).expect("A's term");

    // Steady writes through the gateway, before, during and after the cut.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_loops = StopOnDrop(stop.clone());
    let through_gw = Arc::new(Mutex::new(Vec::new()));
    let writer = gateway_writer(gw.addr, t0, stop.clone(), through_gw.clone());
    assert!(
        eventually(Duration::from_secs(10), || through_gw.lock().is_ok_and(|v| v
            .iter()
            .filter(|s| s.status == 200)
            .count()
            >= 20)),
        "writes through the gateway do not succeed: {:?}",
        through_gw.lock().map(|v| v.last().cloned())
    );

    // Cut A off; keep writing to it from inside its own namespace.
    let cut_at = t0.elapsed();
    net.cut(&h_a);
    let lease_over = cut_at + Duration::from_secs(TTL);
    let to_a: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::new()));
    let a_writer = {
        let (h, addr, stop, out) = (h_a.clone(), a_addr.clone(), stop.clone(), to_a.clone());
        std::thread::spawn(move || {
            let auth = format!("Bearer {TOKEN}");
            for id in 0..40 {
                if stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let subject = format!("78:{id:06}");
                let started = t0.elapsed();
                let r = h.http(
                    &addr,
                    "POST",
                    NODE_INGEST,
                    new_subject_body(&subject, id as f64).as_bytes(),
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    Duration::from_secs(12),
                );
                let (status, msg) = match r {
                    Ok(r) => (r.status, r.text()),
                    Err(e) => (0, e),
                };
                if let Ok(mut out) = out.lock() {
                    out.push(Sent {
                        subject,
                        started,
                        answered: t0.elapsed(),
                        status,
                        msg,
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // A follower (B, the only other candidate) leads within ttl + 2 s, and
    // writes through the gateway succeed again.
    let deadline = Duration::from_secs(TTL + 2);
    let mut elected = None;
    let mut gw_ok = None;
    while t0.elapsed() < cut_at + deadline + Duration::from_secs(10) && (elected.is_none() || gw_ok.is_none())
    {
        if elected.is_none()
            && [&b, &c].iter().all(|n| {
                election_of(n).is_some_and(|(l, t, _)| {
                    l.as_deref() == Some(b_addr.as_str()) && t.is_some_and(|t| t > term_a)
                })
            })
        {
            elected = Some(t0.elapsed() - cut_at);
        }
        if gw_ok.is_none() {
            gw_ok = through_gw.lock().ok().and_then(|v| {
                v.iter()
                    .filter(|s| s.status == 200 && s.started > cut_at)
                    .map(|s| s.answered)
                    .min()
                    .map(|t| t - cut_at)
            });
            // A write sent before the cut but answered after it counts too
            // only if sent to the new leader; keep to writes sent after.
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let elected = elected.unwrap_or_else(|| {
        panic!(
            "no follower took over: {:?}\nB: {}",
            [&b, &c].map(election_of),
            b.log_text()
        )
    });
    let gw_ok = gw_ok.unwrap_or_else(|| {
        panic!(
            "no write through the gateway succeeded after the cut: {:?}",
            through_gw
                .lock()
                .map(|v| v.iter().rev().take(5).cloned().collect::<Vec<_>>())
        )
    });
    eprintln!(
        "takeover: B leads {:.2} s after the cut, first write through the gateway acknowledged {:.2} s after it (ttl {TTL} s)",
        elected.as_secs_f64(),
        gw_ok.as_secs_f64()
    );
    assert!(elected <= deadline, "B led only after {elected:?}");
    assert!(gw_ok <= deadline, "writes came back only after {gw_ok:?}");

    // Keep A cut off until several writes sent to it after its lease ended
    // have been answered (bounded: 30 s).
    assert!(
        eventually(Duration::from_secs(30), || to_a.lock().is_ok_and(|v| v
            .iter()
            .filter(|s| s.started > lease_over && s.status != 0)
            .count()
            >= 3)),
        "A does not answer from inside its namespace: {:?}",
        to_a.lock().map(|v| v.clone())
    );
    net.heal(&h_a);
    let healed_at = t0.elapsed();
    // More acknowledged writes after the heal, then stop every loop.
    assert!(
        eventually(Duration::from_secs(20), || through_gw.lock().is_ok_and(|v| v
            .iter()
            .filter(|s| s.status == 200 && s.started > healed_at)
            .count()
            >= 20)),
        "writes through the gateway fail after the heal"
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("gateway writer");
    a_writer.join().expect("writer to A");
    let through_gw = through_gw.lock().map(|v| v.clone()).expect("results");
    let to_a = to_a.lock().map(|v| v.clone()).expect("results");

    // A, cut off, never acknowledged a write once its lease could have
    // expired: each was refused with 503.
    for s in &to_a {
        if s.started > lease_over {
            assert_eq!(s.status, 503, "A answered a write it took while cut off: {s:?}");
        }
    }
    let late = to_a.iter().filter(|s| s.started > lease_over).count();
    assert!(late >= 3, "{to_a:?}");

    // One leader, B; A follows it and converges (it discarded what it
    // took while cut off: copying B's image).
    let all = [&a, &b, &c];
    assert!(
        eventually(Duration::from_secs(30), || {
            let views: Vec<_> = all.iter().map(|n| election_of(n)).collect();
            views.iter().all(|v| {
                v.as_ref()
                    .is_some_and(|(l, _, _)| l.as_deref() == Some(b_addr.as_str()))
            }) && views
                .iter()
                .filter(|v| v.as_ref().is_some_and(|(_, _, role)| role == "master"))
                .count()
                == 1
                && election_of(&b).is_some_and(|(_, _, role)| role == "master")
        }),
        "not exactly one leader after the heal: {:?}\nA: {}",
        all.map(election_of),
        a.log_text()
    );
    let (ok, leader_key) = etcd.etcdctl(&["get", "--print-value-only", "/kmt-net/election/leader"]);
    assert!(ok && leader_key.contains(&b_addr), "{leader_key}");
    let leader_seq = applied_seq(&b).expect("B's applied seq");
    assert!(
        eventually(Duration::from_secs(30), || applied_seq(&a) == Some(leader_seq)
            && applied_seq(&c) == Some(leader_seq)),
        "followers did not converge on {leader_seq}: A {:?} C {:?}\nA: {}",
        applied_seq(&a),
        applied_seq(&c),
        a.log_text()
    );
    // The first writes sent to A after the cut found it still leading: it
    // committed them locally and then refused them (NOT acknowledged); back
    // in the cluster it discarded them by copying the leader's image.
    let a_took_some = to_a
        .iter()
        .any(|s| s.status == 503 && s.msg.contains("NOT acknowledged"));
    assert!(a_took_some, "A never took a write while cut off: {to_a:?}");
    assert!(
        a.log_text().contains("discarding"),
        "A took writes while cut off but never said it discarded them: {}",
        a.log_text()
    );

    // Stopped (followers first), the three databases hold the same rows;
    // every acknowledged write is on each exactly once, every write A took
    // while cut off on none, every failed write everywhere or nowhere.
    for n in [&mut c, &mut a, &mut b] {
        n.stop();
    }
    let dbs = [&db_a, &db_b, &db_c];
    let fp = db_fingerprint(&db_b);
    assert_eq!(db_fingerprint(&db_a), fp, "A differs from the leader");
    assert_eq!(db_fingerprint(&db_c), fp, "C differs from the leader");
    let acked: Vec<&Sent> = through_gw.iter().filter(|s| s.status == 200).collect();
    for s in &acked {
        for db in dbs {
            assert_eq!(
                rows_of(db, "subjects", &s.subject),
                1,
                "{s:?} in {}",
                db.display()
            );
            assert_eq!(rows_of(db, "reports", &s.subject), 1, "{s:?} in {}", db.display());
        }
    }
    for s in through_gw.iter().filter(|s| s.status != 200) {
        let n: Vec<i64> = dbs.iter().map(|db| rows_of(db, "reports", &s.subject)).collect();
        assert!(n == [0, 0, 0] || n == [1, 1, 1], "{s:?}: {n:?}");
    }
    for s in &to_a {
        // Acknowledged (possible only before its lease ended, while the
        // fence still let it through): everywhere; otherwise nowhere.
        let want = i64::from(s.status == 200);
        for db in dbs {
            assert_eq!(
                rows_of(db, "subjects", &s.subject),
                want,
                "{s:?} in {}",
                db.display()
            );
        }
    }
    for s in &to_a {
        eprintln!(
            "write to the cut-off leader sent at cut + {:.2} s: {} after {:.2} s {}",
            s.started.as_secs_f64() - cut_at.as_secs_f64(),
            s.status,
            (s.answered - s.started).as_secs_f64(),
            s.msg.chars().take(160).collect::<String>()
        );
    }
    // Once the new leader takes writes, nothing interrupts them: not the
    // old leader coming back (it follows, it does not fight).
    let settled = cut_at + gw_ok + Duration::from_millis(500);
    let late_failures: Vec<&Sent> = through_gw
        .iter()
        .filter(|s| s.status != 200 && s.started > settled)
        .collect();
    assert!(
        late_failures.is_empty(),
        "writes through the gateway failed after the takeover (heal at cut + {:.2} s): {late_failures:?}",
        (healed_at - cut_at).as_secs_f64()
    );
    let failed = through_gw.len() - acked.len();
    eprintln!(
        "writes through the gateway: {} acknowledged, {failed} failed; writes to the cut-off leader: {} (all refused)",
        acked.len(),
        to_a.len()
    );
}
