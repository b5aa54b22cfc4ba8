//! The registry against a real etcd: register, list, revoke, lease expiry,
//! etcd down at start, etcd restarted with its data wiped.

use std::time::{Duration, Instant};

use cluster::testkit::{eventually, Etcd};
use cluster::{Discovery, EtcdConfig, IniFile, Registration, ServiceInfo};

fn config(etcd: &Etcd, ttl: i64) -> EtcdConfig {
    let ini = IniFile::parse(
        "test.ini",
        &format!(
            "[etcd]\nendpoints = {}\nprefix = /kmt-test\nttl = {ttl}\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    EtcdConfig::from_ini(&ini).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const KEY: &str = "/kmt-test/services/kamaitachi-slave/localhost:18081";

#[test]
fn register_list_and_revoke_on_shutdown() {
    let etcd = Etcd::start(&temp("reg"));
    let rt = runtime();
    let cfg = config(&etcd, 10);
    let discovery = Discovery::spawn(rt.handle(), cfg.clone());
    let reg = Registration::spawn(
        rt.handle(),
        cfg,
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", "slave"),
    );
    assert!(eventually(Duration::from_secs(10), || etcd
        .keys("/kmt-test")
        .contains(&KEY.to_string())));
    // The flag is set just after the put that made the key visible.
    assert!(eventually(Duration::from_secs(2), || reg.is_registered()));
    let (_, value) = etcd.etcdctl(&["get", KEY, "--print-value-only"]);
    let info: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(info["addr"], "localhost:18081");
    assert_eq!(info["role"], "slave");
    assert!(info["started_at"].as_u64().unwrap() > 1_600_000_000);

    assert!(eventually(Duration::from_secs(10), || discovery.services().len() == 1));
    assert_eq!(discovery.services()[0].info.role, "slave");
    assert!(discovery.synced());

    // Graceful stop: the key goes at once, not after the 10 s lease.
    let started = Instant::now();
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    assert!(etcd.keys("/kmt-test").is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(3), || discovery
        .services()
        .is_empty()));
}

#[test]
fn lease_expires_when_the_process_dies() {
    let etcd = Etcd::start(&temp("expire"));
    let rt = runtime();
    let _reg = Registration::spawn(
        rt.handle(),
        config(&etcd, 2),
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", "slave"),
    );
    assert!(eventually(Duration::from_secs(10), || !etcd
        .keys("/kmt-test")
        .is_empty()));
    // Dropping the runtime ends the keep-alive without a revoke, like a kill -9.
    rt.shutdown_background();
    let gone_at = Instant::now();
    assert!(eventually(Duration::from_secs(5), || etcd
        .keys("/kmt-test")
        .is_empty()));
    assert!(
        gone_at.elapsed() <= Duration::from_secs(3),
        "lease outlived ttl + 1 s"
    );
}

#[test]
fn registers_when_etcd_comes_up_and_again_after_a_wiped_restart() {
    let dir = temp("restart");
    let mut etcd = Etcd::start(&dir);
    let cfg = config(&etcd, 3);
    etcd.kill();
    let rt = runtime();
    // etcd is down: the registration and the discovery keep trying.
    let reg = Registration::spawn(
        rt.handle(),
        cfg.clone(),
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", "slave"),
    );
    let discovery = Discovery::spawn(rt.handle(), cfg);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!reg.is_registered());

    etcd.restart(false);
    assert!(eventually(Duration::from_secs(15), || etcd
        .keys("/kmt-test")
        .len()
        == 1));
    assert!(eventually(Duration::from_secs(10), || discovery.services().len() == 1));

    // Restart with an empty data dir: the old lease is unknown, so the node
    // must register again with a new one; discovery must list again.
    etcd.restart(true);
    assert!(etcd.keys("/kmt-test").len() <= 1);
    assert!(
        eventually(Duration::from_secs(20), || etcd.keys("/kmt-test").len() == 1),
        "not registered again after a wiped etcd restart"
    );
    // Last-known set was kept while etcd was away, and is current now.
    assert_eq!(discovery.services().len(), 1);
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    assert!(eventually(Duration::from_secs(5), || discovery
        .services()
        .is_empty()));
}
