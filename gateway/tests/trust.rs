//! Issue 11: a node is believed only once it proves it holds the cluster
//! secret. Real etcd (open, auth off), real nodes and gateway; rogue
//! "masters" registered in etcd point at fake HTTP servers inside the test.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "/kmt-trust";
const Q2_2025: i64 = 1_751_241_600;
const CHANGES: &str = "/kamaitachi/api/data/v1/replication/changes";

/// What a fake server saw: each request's head.
type Heads = Arc<Mutex<Vec<String>>>;

/// A fake node that knows nothing of the cluster secret: it answers its
/// health checks 200 with a made-up proof, `changes` with `changes_body`
/// (or 410 when `None`), `image` with `image` and correct CRC/seq/dataset
/// headers and a made-up proof, anything else 200 `{}`.
fn fake(changes_body: Option<Vec<u8>>, image: Vec<u8>, seq: u64, dataset: u64) -> (u16, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    let crc = crc32fast::hash(&image);
    std::thread::spawn(move || {
        let started = Instant::now();
        for conn in listener.incoming() {
            if started.elapsed() > Duration::from_secs(120) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i);
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            seen.lock().unwrap().push(head.clone());
            let line = head.lines().next().unwrap_or("").to_string();
            let bogus =
                "X-Kamaitachi-Proof: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\r\n";
            let (status, extra, body): (&str, String, Vec<u8>) = if line.contains("/replication/changes") {
                match &changes_body {
                    Some(b) => ("200 OK", bogus.to_string(), b.clone()),
                    None => ("410 Gone", String::new(), b"{\"status_code\":410}".to_vec()),
                }
            } else if line.contains("/replication/image") {
                (
                    "200 OK",
                    format!("{bogus}X-Kamaitachi-Seq: {seq}\r\nX-Kamaitachi-Dataset: {dataset}\r\nX-Kamaitachi-Crc32: {crc}\r\n"),
                    image.clone(),
                )
            } else if line.starts_with("GET /health") {
                (
                    "200 OK",
                    bogus.to_string(),
                    b"{\"status\":\"ok\",\"mode\":\"master\"}".to_vec(),
                )
            } else {
                (
                    "200 OK",
                    String::new(),
                    b"{\"status_code\":0,\"status_msg\":\"success\",\"data\":{}}".to_vec(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn
                .write_all(resp.as_bytes())
                .and_then(|_| conn.write_all(&body));
        }
    });
    (port, heads)
}

fn node(etcd: &Etcd, db: &Path, mode: &'static str) -> Node {
    let mut opts = NodeOpts::new(db);
    opts.mode = mode;
    opts.extra = format!(
        "[etcd]\nendpoints = {}\nprefix = {PREFIX}\nttl = 2\n",
        etcd.endpoint()
    );
    Node::start(&node_bin(), &opts)
}

fn applied(n: &Node) -> u64 {
    n.get("/health").json()["applied_seq"].as_u64().unwrap_or(0)
}

fn ingest(port: u16, path: &str, value: f64) -> Resp {
    let body = serde_json::json!({"records": [{
        "subject": subject(3), "report_date": Q2_2025, "end_date": "2025-06-30", "year": "2025",
        "period": "Q2", "declare_date": "2025-08-01", "values": {"net_profit": value}
    }]})
    .to_string();
    let auth = format!("Bearer {TOKEN}");
    request(port, "POST", path, body.as_bytes(), &[("Authorization", &auth)])
}

/// A signed GET as a slave sends it (the test holds the cluster secret).
fn signed_get(port: u16, target: &str) -> Resp {
    let key = cluster::auth::ClusterKey::from_secret(CLUSTER_SECRET.as_bytes());
    let s = key.sign_request("repl-request", "GET", &format!("localhost:{port}"), target);
    request(
        port,
        "GET",
        target,
        b"",
        &[
            (cluster::auth::NONCE_HEADER, &s.nonce),
            (cluster::auth::TIME_HEADER, &s.time),
            (cluster::auth::PROOF_HEADER, &s.mac),
        ],
    )
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn rogue_masters_in_etcd_learn_nothing_and_change_nothing() {
    let dir = temp_dir("trust");
    let etcd = Etcd::start(&dir);
    let db = dir.join("master.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let master = node(&etcd, &db, "master");
    let slave = node(&etcd, &dir.join("slave.db"), "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = {PREFIX}\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(2);

    // A change on the real master, applied by the slave.
    let base = applied(&master);
    let r = ingest(master.port, "/kamaitachi/api/data/v1/ingest", 1.0);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(10), || applied(&slave) == base + 1));

    // Rogue A serves change 2 (a real batch of the master's, with
    // net_profit 666) without a valid MAC.
    let real = signed_get(master.port, &format!("{CHANGES}?from={base}"));
    assert_eq!(real.status, 200, "{}", real.text());
    let poisoned = real
        .text()
        .replace(&format!("\"seq\":{}", base + 1), &format!("\"seq\":{}", base + 2))
        .replace(
            &format!("\"master_seq\":{}", base + 1),
            &format!("\"master_seq\":{}", base + 2),
        )
        .replace("1.0", "666.0");
    assert!(poisoned.contains("666"), "{poisoned}");
    // Rogue B says 410 and serves an image: a copy of the master's database
    // at sequence 77, renamed, with correct CRC, sequence and dataset.
    let image_path = dir.join("poisoned.db");
    std::fs::copy(sample_db(), &image_path).unwrap();
    let dataset: u64 = {
        let c = rusqlite::Connection::open(&image_path).unwrap();
        c.execute("UPDATE meta SET value = '77' WHERE key = 'data_version'", [])
            .unwrap();
        c.execute("UPDATE subjects SET name = 'POISONED'", []).unwrap();
        let d: String = c
            .query_row("SELECT value FROM meta WHERE key = 'dataset_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        c.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
        d.parse().unwrap()
    };
    let image = std::fs::read(&image_path).unwrap();
    let (port_a, seen_a) = fake(Some(poisoned.into_bytes()), Vec::new(), 0, 0);
    let (port_b, seen_b) = fake(None, image, 77, dataset);
    // Registry entries saying `master`; B's with a term above any real one,
    // so a follower would try it before the real master's entry.
    for (name, port, term) in [
        ("a-rogue", port_a, ""),
        ("b-rogue", port_b, r#","term":9000000000"#),
    ] {
        let value = format!(r#"{{"addr":"127.0.0.1:{port}","role":"master","started_at":0{term}}}"#);
        let (ok, out) = etcd.etcdctl(&[
            "put",
            &format!("{PREFIX}/services/{name}/127.0.0.1:{port}"),
            &value,
        ]);
        assert!(ok, "etcdctl put: {out}");
    }
    // And the election's leader key rewritten to name rogue A (anyone with
    // write access to the prefix can): a follower tries the elected leader
    // first, then `master` entries by term, so the slave asks A, then B,
    // before the real master — and must refuse what both send.
    let (ok, out) = etcd.etcdctl(&[
        "put",
        &format!("{PREFIX}/election/leader"),
        &format!(r#"{{"addr":"127.0.0.1:{port_a}","since":0}}"#),
    ]);
    assert!(ok, "etcdctl put: {out}");
    let asked = |seen: &Heads, what: &str| seen.lock().unwrap().iter().any(|h| h.contains(what));
    assert!(
        eventually(Duration::from_secs(15), || asked(&seen_a, "/replication/changes")
            && asked(&seen_b, "/replication/image")),
        "the slave never tried the rogues: {:?} {:?}\n{}",
        seen_a.lock().unwrap(),
        seen_b.lock().unwrap(),
        slave.log_text()
    );
    // The gateway checks them (with a challenge) and lists them unusable.
    assert!(eventually(Duration::from_secs(10), || asked(
        &seen_a,
        "GET /health"
    ) && asked(
        &seen_b,
        "GET /health"
    )));

    // Admin calls through the gateway: to the real master only. The
    // rewritten leader key fences the real master out (its acknowledgment
    // compares the key's exact value) until it steps down, resigns and is
    // elected again: a write may be refused meanwhile, never acknowledged
    // by anyone else.
    let mut r = ingest(gw.port, "/data/kamaitachi/api/data/v1/ingest", 2.0);
    let retry_until = std::time::Instant::now() + Duration::from_secs(20);
    while r.status == 503 && std::time::Instant::now() < retry_until {
        // The node's refusal, or the gateway's "no healthy master" while
        // the master is elected again: never an acknowledgment elsewhere.
        assert_eq!(r.json()["outcome"], "not_acknowledged", "{}", r.text());
        std::thread::sleep(Duration::from_millis(300));
        r = ingest(gw.port, "/data/kamaitachi/api/data/v1/ingest", 2.0);
    }
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["seq"], base + 2, "{}", r.text());
    let r = admin_post(gw.port, "/kamaitachi/api/data/v1/cache/reset");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["data"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text()
    );
    let r = request(gw.port, "GET", "/kamaitachi/api/data/v1/stats", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = request(gw.port, "GET", "/status.json", b"", &[]);
    std::thread::sleep(Duration::from_secs(2));

    // The slave applied nothing from them and follows the real master.
    assert!(
        eventually(Duration::from_secs(10), || applied(&slave) == base + 2),
        "slave at {}\n{}",
        applied(&slave),
        slave.log_text()
    );
    let q = snapshot_body(&subject(3));
    let want = master.post(SNAPSHOT, &q).json();
    assert_eq!(want["data"][0]["data"]["net_profit"], 2.0, "{want}");
    assert_eq!(slave.post(SNAPSHOT, &q).json(), want);
    assert!(!slave.post(SNAPSHOT, &q).text().contains("POISONED"));

    // The gateway never used them.
    let health = gw.health();
    assert_eq!(health["healthy_nodes"], 2, "{health}");
    for rogue in [port_a, port_b] {
        let me = format!("127.0.0.1:{rogue}");
        let listed = health["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["addr"] == me.as_str());
        assert_eq!(
            listed.map(|n| n["healthy"].clone()),
            Some(false.into()),
            "{health}"
        );
    }

    // What the fakes received: no token, no secret, nothing but health
    // checks and replication GETs; the replication MAC is useless against
    // the real master (bound to the fake's address).
    for (seen, rogue) in [(&seen_a, port_a), (&seen_b, port_b)] {
        let heads = seen.lock().unwrap().clone();
        for h in &heads {
            let lower = h.to_ascii_lowercase();
            assert!(!lower.contains("authorization"), "{h}");
            assert!(!h.contains(TOKEN) && !h.contains(CLUSTER_SECRET), "{h}");
            let line = h.lines().next().unwrap_or("");
            assert!(
                line.starts_with("GET /health ")
                    || line.starts_with("GET /kamaitachi/api/data/v1/replication/"),
                "rogue {rogue} got {line}"
            );
            if line.starts_with("GET /health ") {
                assert!(header_of(h, cluster::auth::CHALLENGE_HEADER).is_some(), "{h}");
            }
        }
        for h in heads.iter().filter(|h| h.contains("/replication/")) {
            let target = h.lines().next().unwrap().split(' ').nth(1).unwrap().to_string();
            let replay: Vec<(&str, String)> = [
                cluster::auth::NONCE_HEADER,
                cluster::auth::TIME_HEADER,
                cluster::auth::PROOF_HEADER,
            ]
            .iter()
            .map(|n| (*n, header_of(h, n).unwrap_or_default()))
            .collect();
            let headers: Vec<(&str, &str)> = replay.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = request(master.port, "GET", &target, b"", &headers);
            assert_eq!(r.status, 403, "a replayed request was accepted: {}", r.text());
        }
    }

    // One warning each, however often they were checked. The rewritten
    // leader key makes the real master step down for a moment, so the
    // rogues may be met by the master as well as by the slave: each node
    // that met one warns once, and some node met each.
    let gw_log = gw.log_text();
    let (slave_log, master_log) = (slave.log_text(), master.log_text());
    for rogue in [port_a, port_b] {
        let me = format!("node 127.0.0.1:{rogue} (registered as master) ignored");
        assert_eq!(gw_log.matches(&me).count(), 1, "{gw_log}");
        let me = format!("at 127.0.0.1:{rogue}: it did not prove");
        let (by_slave, by_master) = (slave_log.matches(&me).count(), master_log.matches(&me).count());
        assert!(
            by_slave <= 1 && by_master <= 1 && by_slave + by_master >= 1,
            "{by_slave} and {by_master} warnings about {rogue}:\n{slave_log}\n--- master ---\n{master_log}"
        );
    }
}
