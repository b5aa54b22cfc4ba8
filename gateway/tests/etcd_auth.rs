//! etcd with auth on, as `make cluster` runs it: nodes and the gateway
//! register and discover with their credentials, anonymous writes are
//! refused, a wrong password is named and retried; and discovery ignores bad
//! registry values (a 1 MB one, a link-local address) with a few short log
//! lines.

mod common;

use std::time::Duration;

use common::*;

/// A node registered under /kmt-gw with the etcd credentials of `auth`
/// (`username`/`password_file` lines).
fn node_with(etcd: &Etcd, mode: &'static str, auth: &str) -> Node {
    let db = temp_dir("etcd-auth-node").join("node.db");
    std::fs::copy(sample_db(), &db).unwrap();
    let mut opts = NodeOpts::new(&db);
    opts.mode = mode;
    opts.extra = format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\nttl = 2\n{auth}",
        etcd.endpoint()
    );
    Node::start(&node_bin(), &opts)
}

#[test]
fn with_auth_nodes_and_the_gateway_use_their_credentials() {
    let dir = temp_dir("gw-etcd-auth");
    let etcd = Etcd::start_with_auth(&dir, "/kmt-gw/", None);

    let (ok, _, err) = etcd.etcdctl_anonymous(&[
        "put",
        "/kmt-gw/services/a-rogue/127.0.0.1:28001",
        r#"{"addr":"127.0.0.1:28001","role":"master","started_at":0}"#,
    ]);
    assert!(!ok, "anonymous put accepted");
    assert!(
        err.contains("user name is empty") || err.contains("permission denied"),
        "{err}"
    );

    let master = node_with(&etcd, "master", &etcd.ini_auth());
    let key = format!("/kmt-gw/services/kamaitachi-master/localhost:{}", master.port);
    assert!(
        eventually(Duration::from_secs(10), || etcd.keys("/kmt-gw/services")
            == vec![key.clone()]),
        "master not registered: {:?}\n{}",
        etcd.keys("/kmt-gw/services"),
        master.log_text()
    );
    assert!(!master.log_text().contains("without authentication"));

    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n{}",
        etcd.endpoint(),
        etcd.ini_auth()
    ));
    gw.wait_nodes(1);
    let r = gw.post(
        "/data/kamaitachi/api/data/v1/snapshot",
        &snapshot_body(&subject(1)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !gw.log_text().contains("Failed to connect to etcd"),
        "{}",
        gw.log_text()
    );

    // A wrong password: a clear message, retried, never registered.
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let bad = node_with(
        &etcd,
        "master",
        &format!("username = kamaitachi\npassword_file = {}\n", wrong.display()),
    );
    let failures = || {
        bad.log_text()
            .lines()
            .filter(|l| {
                l.contains("Failed to connect to etcd: authentication failed for etcd user \"kamaitachi\"")
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || failures() >= 3),
        "no repeated clear message: {}",
        bad.log_text()
    );
    assert!(bad.log_text().contains(&wrong.display().to_string()));
    assert_eq!(etcd.keys("/kmt-gw/services").len(), 1);

    // No credentials against an etcd with auth on: told what to set.
    let anon = node_with(&etcd, "master", "");
    assert!(
        eventually(Duration::from_secs(10), || anon
            .log_text()
            .contains("set [etcd] username and password_file")),
        "{}",
        anon.log_text()
    );
    assert_eq!(etcd.keys("/kmt-gw/services").len(), 1);
}

#[test]
fn without_credentials_an_open_etcd_works_and_says_so_once() {
    let dir = temp_dir("gw-etcd-open");
    let etcd = Etcd::start(&dir);
    let master = node_with(&etcd, "master", "");
    assert!(eventually(Duration::from_secs(10), || etcd
        .keys("/kmt-gw/services")
        .len()
        == 1));
    let said = master
        .log_text()
        .lines()
        .filter(|l| l.contains("without authentication"))
        .count();
    assert_eq!(said, 1, "{}", master.log_text());
}

/// The issue's reproduction: a 1 MB `addr` made the gateway log 25 MB in 5 s.
#[test]
fn a_one_megabyte_registry_value_is_ignored_with_a_few_log_lines() {
    let dir = temp_dir("gw-etcd-1mb");
    let mut etcd = Etcd::start(&dir);
    let master = node_with(&etcd, "master", "");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    gw.wait_nodes(1);
    let before = gw.log_text().len();

    let huge = format!(
        r#"{{"addr":"{}.example:80","role":"master","started_at":0}}"#,
        "a".repeat(1 << 20)
    );
    let put = |etcd: &Etcd, key: &str, value: &[u8]| {
        let (ok, _, err) = etcd.etcdctl_as(None, &["put", key], Some(value));
        assert!(ok, "put {key}: {err}");
    };
    put(&etcd, "/kmt-gw/services/a-rogue/huge", huge.as_bytes());
    put(
        &etcd,
        "/kmt-gw/services/a-rogue/169.254.169.254:80",
        br#"{"addr":"169.254.169.254:80","role":"slave","started_at":0}"#,
    );
    let long_key = format!("/kmt-gw/services/a-rogue/{}", "k".repeat(4000));
    put(&etcd, &long_key, b"{}");
    std::thread::sleep(Duration::from_secs(6));

    let log = gw.log_text();
    let grown = &log[before.min(log.len())..];
    let lines: Vec<&str> = grown.lines().filter(|l| l.contains("ignored")).collect();
    assert_eq!(lines.len(), 3, "{}", &grown[..grown.len().min(4000)]);
    assert!(grown.len() < 3000, "log grew {} bytes", grown.len());
    assert!(lines.iter().all(|l| l.len() < 600), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("at most 4096")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("link-local")), "{lines:?}");
    // Only the real node is used.
    let health = gw.health();
    assert_eq!(health["healthy_nodes"], 1, "{health}");
    assert!(!health.to_string().contains("169.254"), "{health}");
    assert!(master.log_text().len() < 20_000);

    // A restart makes discovery list everything again: nothing new to say.
    etcd.restart(false);
    let relisted = || {
        gw.log_text()
            .lines()
            .filter(|l| l.contains("Failed to connect to etcd") || l.contains("etcd watch"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || relisted() > 0),
        "{}",
        gw.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let log = gw.log_text();
    let n = log[before.min(log.len())..]
        .lines()
        .filter(|l| l.contains("ignored"))
        .count();
    assert_eq!(n, 3, "bad keys logged again after a re-list");

    // Once per change: the same key changed is logged again, once.
    put(
        &etcd,
        "/kmt-gw/services/a-rogue/169.254.169.254:80",
        br#"{"addr":"169.254.169.254:81","role":"slave","started_at":0}"#,
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = gw.log_text();
    let n = log[before.min(log.len())..]
        .lines()
        .filter(|l| l.contains("ignored"))
        .count();
    assert_eq!(n, 4, "{}", &log[before..]);
}
