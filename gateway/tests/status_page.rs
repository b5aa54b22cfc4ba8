//! The status page in a real browser: Debian's Chromium (installed by
//! scripts/install-deps.sh), headless, loads `GET /status` from a real
//! gateway in front of real nodes and etcd; the DOM it builds has every
//! node's row with the right role, a screenshot is taken, and after a node
//! is killed its row turns "down" (red).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs headless Chromium on `url` with the flags this machine needs (no
/// sandbox as root, no background networking on a closed network) and
/// `extra`; returns stdout.
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The opening tag of the row of `addr` in a dumped DOM.
fn row_tag<'a>(dom: &'a str, addr: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-addr=\"{addr}\""))?;
    let start = dom[..at].rfind("<tr")?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

#[test]
fn status_page_shows_every_node_and_a_dead_one_turns_red() {
    let dir = temp_dir("status");
    let etcd = Etcd::start(&dir);
    let master = registered_node(&etcd, "master");
    let mut slave = registered_node(&etcd, "slave");
    let gw = Gateway::start(&format!(
        "[etcd]\nendpoints = {}\nprefix = /kmt-gw\n",
        etcd.endpoint()
    ));
    assert!(eventually(Duration::from_secs(20), || {
        request(gw.port, "GET", "/health", b"", &[]).json()["count"] == 2
    }));
    for i in 0..40 {
        let body = snapshot_body(&subject(i));
        let r = request(
            gw.port,
            "POST",
            "/data/kamaitachi/api/data/v1/snapshot",
            body.as_bytes(),
            &[],
        );
        assert_eq!(r.status, 200);
    }

    // The JSON the page reads.
    let s = request(gw.port, "GET", "/status.json", b"", &[]).json();
    assert_eq!(s["leader"], format!("localhost:{}", master.port));
    assert_eq!(s["registry"]["source"], "etcd");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(2), "{s}");
    let answered: u64 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["answered"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(answered, 40, "every relayed answer is counted: {s}");
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "up");
        assert!(n["data_version"].as_u64().is_some(), "{n}");
        assert!(n["cache_max_bytes"].as_u64().unwrap_or(0) > 0, "{n}");
        assert_eq!(n["registered"], true);
    }

    let url = format!("http://127.0.0.1:{}/status", gw.port);
    let profile = dir.join("chromium-profile");
    let dom = chromium(&profile, &url, &["--dump-dom", "--virtual-time-budget=3000"]);
    for (port, role) in [(master.port, "master"), (slave.port, "slave")] {
        let tag =
            row_tag(&dom, &format!("localhost:{port}")).unwrap_or_else(|| panic!("no row for {port}: {dom}"));
        assert!(tag.contains(&format!("data-role=\"{role}\"")), "{tag}");
        assert!(tag.contains("data-state=\"up\""), "{tag}");
    }
    assert!(dom.contains("cluster: 2 of 2 up"), "totals row: {dom}");
    let shot = dir.join("status.png");
    chromium(
        &profile,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,480",
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    // A node dies: within a health interval its row is down (red).
    slave.kill9();
    let slave_addr = format!("localhost:{}", slave.port);
    assert!(eventually(Duration::from_secs(10), || {
        let s = request(gw.port, "GET", "/status.json", b"", &[]).json();
        s["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["addr"] == slave_addr.as_str() && n["state"] == "down")
        })
    }));
    let dom = chromium(&profile, &url, &["--dump-dom", "--virtual-time-budget=3000"]);
    let tag = row_tag(&dom, &slave_addr).unwrap_or_else(|| panic!("no row for the dead node: {dom}"));
    assert!(
        tag.contains("data-state=\"down\"") && tag.contains("class=\"down\""),
        "{tag}"
    );
    let tag = row_tag(&dom, &format!("localhost:{}", master.port)).expect("master row");
    assert!(tag.contains("data-state=\"up\""), "{tag}");
    assert!(dom.contains("cluster: 1 of 2 up"), "{dom}");
    drop(master);
}
