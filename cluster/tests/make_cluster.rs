//! `make cluster`, the README's examples, `make status` and `make stop`, run
//! for real in a temporary copy of the checkout, on free ports, against a
//! real etcd. Reuses this workspace's debug build (PROFILE=debug,
//! CARGO_TARGET_DIR), so it does not rebuild.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kamaitachi_testkit::{eventually, temp_dir, Etcd};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The checkout's files (tracked and new, not ignored) copied to `dst`.
fn copy_checkout(dst: &Path) {
    let root = workspace();
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard", "-z"])
        .current_dir(&root)
        .output()
        .expect("git ls-files");
    assert!(out.status.success());
    for rel in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let (from, to) = (root.join(rel), dst.join(rel));
        if !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
}

/// The `curl` commands of the README's examples block, continuation lines
/// joined.
fn readme_examples(readme: &str) -> Vec<String> {
    let block = readme
        .split("<!-- examples:start -->")
        .nth(1)
        .and_then(|r| r.split("<!-- examples:end -->").next())
        .expect("README has an examples block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if current.is_empty() && !line.starts_with("curl ") {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

fn make(dir: &Path, env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let out = Command::new("make")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run make");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `make stop` in the checkout when dropped, so a test that fails
/// half-way leaves no process behind.
struct StopOnDrop<'a>(&'a Path, &'a [(String, String)]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = make(self.0, self.1, &["stop"]);
    }
}

/// The two `make cluster` tests run one at a time: each builds, then holds
/// its ports for minutes, and two at once only wait on cargo's lock while
/// the first one's chosen ports age.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A free port below the kernel's ephemeral range (32768+), so no outgoing
/// connection of another test can take it while `make cluster` builds
/// before it binds (a port from `free_port()` can be reused that way).
fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() as u16).wrapping_mul(31) % 6000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 6000, "no free port in 20000-26000");
        let p = 20_000 + (start + n) % 6000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// `make`'s environment: `(name, value)` pairs.
type Env = Vec<(String, String)>;

/// The ports (`MASTER_PORT` … `GATEWAY_PORT`, each from [`stable_port`])
/// and the environment `make` runs with: those ports, `ETCD_PORT`, the
/// debug build in this workspace's target dir, and `extra`.
fn cluster_env(etcd_port: u16, extra: &[(&str, &str)]) -> (Vec<(&'static str, u16)>, Env) {
    let ports: Vec<(&'static str, u16)> = ["MASTER_PORT", "SLAVE1_PORT", "SLAVE2_PORT", "GATEWAY_PORT"]
        .into_iter()
        .map(|k| (k, stable_port()))
        .collect();
    let mut env: Vec<(String, String)> = ports
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    env.push(("ETCD_PORT".into(), etcd_port.to_string()));
    env.push(("PROFILE".into(), "debug".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| workspace().join("target").display().to_string());
    env.push(("CARGO_TARGET_DIR".into(), target));
    (ports, env)
}

#[test]
fn make_cluster_serves_the_readme_examples_and_make_stop_cleans_up() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("make-cluster");
    let checkout = dir.join("checkout");
    copy_checkout(&checkout);
    let etcd = Etcd::start(&dir);
    let (ports, env) = cluster_env(etcd.client_port, &[("SUBJECTS", "300")]);

    let (ok, out) = make(&checkout, &env, &["cluster"]);
    // A failed assertion below must not leave the cluster running (the
    // `make stop` at the end is then not reached).
    let _stop = StopOnDrop(&checkout, &env);
    assert!(ok, "make cluster failed:\n{out}");
    assert!(
        out.contains("curl -s -X POST http://localhost:"),
        "no examples printed:\n{out}"
    );
    // Issue 11: a cluster secret of its own (mode 600), not the admin token,
    // named by every config.
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = checkout.join("run/cluster.secret");
        let meta = std::fs::metadata(&secret).expect("run/cluster.secret");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let (secret, token) = (
            std::fs::read_to_string(&secret).unwrap(),
            std::fs::read_to_string(checkout.join("run/admin.token")).unwrap(),
        );
        assert!(secret.trim().len() >= 32 && secret.trim() != token.trim());
        for conf in ["master", "slave", "slave2", "gateway"] {
            let text = std::fs::read_to_string(checkout.join(format!("conf/{conf}.ini"))).unwrap();
            assert!(
                text.contains("cluster_secret_file = ./run/cluster.secret"),
                "{conf}"
            );
        }
    }
    let (gw, master, slave1, slave2) = (ports[3].1, ports[0].1, ports[1].1, ports[2].1);

    // etcd auth: anonymous writes under the prefix are refused; the
    // passwords are in run/, mode 600; every process connects as kamaitachi.
    let (ok, _, err) = etcd.etcdctl_anonymous(&[
        "put",
        "/kamaitachi/services/a-rogue/127.0.0.1:28001",
        r#"{"addr":"127.0.0.1:28001","role":"master","started_at":0}"#,
    ]);
    assert!(!ok, "anonymous put accepted by the etcd make cluster set up");
    assert!(!err.is_empty());
    let mut secrets = Vec::new();
    for file in ["etcd-root.password", "etcd-kamaitachi.password"] {
        use std::os::unix::fs::PermissionsExt;
        let path = checkout.join("run").join(file);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
        assert!(secret.len() >= 32, "{file}");
        secrets.push(secret);
    }
    let root_keys = |prefix: &str| -> Vec<String> {
        let (_, out, _) = etcd.etcdctl_as(
            Some(("root", secrets[0].as_str())),
            &["get", "--prefix", "--keys-only", prefix],
            None,
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        root_keys("/kamaitachi/services/").len(),
        3,
        "{:?}",
        root_keys("/kamaitachi")
    );
    for conf in ["master", "slave1", "slave2", "gateway"] {
        let ini = std::fs::read_to_string(checkout.join(format!("run/conf/{conf}.ini"))).unwrap();
        assert!(
            ini.contains("username = kamaitachi")
                && ini.contains("password_file = ./run/etcd-kamaitachi.password"),
            "{conf}.ini:\n{ini}"
        );
    }

    let readme = std::fs::read_to_string(checkout.join("README.md")).unwrap();
    let examples = readme_examples(&readme);
    assert!(examples.len() >= 8, "{examples:?}");
    for example in &examples {
        let cmd = example
            .replace("localhost:9000", &format!("localhost:{gw}"))
            .replace("localhost:8080", &format!("localhost:{master}"))
            .replace("localhost:8081", &format!("localhost:{slave1}"))
            .replace("localhost:8082", &format!("localhost:{slave2}"));
        let out = Command::new("bash")
            .args(["-c", &cmd])
            .current_dir(&checkout)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        let fine = body["status_code"] == 0 || body["status"] == "ok";
        assert!(fine, "{cmd} -> {body}");
        if cmd.contains("/snapshot") || cmd.contains("/period") {
            assert!(!body["data"].as_array().unwrap().is_empty(), "{cmd} -> {body}");
        }
    }

    // The load generator against the running cluster: every request counted,
    // none failed.
    for scenario in ["1", "3", "period"] {
        let out = Command::new(checkout.join("bin/kamaitachi-bench"))
            .args([
                "--scenario",
                scenario,
                "--requests",
                "1500",
                "--concurrency",
                "20",
                "--subjects",
                "300",
                "--json",
            ])
            .args(["--target", &format!("http://localhost:{gw}/data")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["requests"], 1500, "{report}");
        assert_eq!(report["errors_total"], 0, "{report}");
        assert_eq!(report["ok"], 1500, "{report}");
        assert!(
            report["hit_rate"]["after"]["hits"].as_u64().is_some(),
            "no cluster hit rate: {report}"
        );
    }

    // One more slave, picked up by the gateway through etcd.
    let (ok, out) = make(&checkout, &env, &["node", "N=7"]);
    assert!(ok, "make node failed:\n{out}");
    let health = |port: u16| -> serde_json::Value {
        kamaitachi_testkit::request(port, "GET", "/health", b"", &[]).json()
    };
    assert!(
        eventually(Duration::from_secs(20), || health(gw)["healthy_nodes"] == 4),
        "the gateway did not pick up slave7: {}",
        health(gw)
    );

    let (ok, status) = make(&checkout, &env, &["status"]);
    assert!(ok, "{status}");
    for name in ["master", "slave1", "slave2", "gateway"] {
        assert!(
            status.lines().any(|l| l.starts_with(name) && l.ends_with("ok")),
            "{name} not ok:\n{status}"
        );
    }
    assert!(
        status.contains("/kamaitachi/services/kamaitachi-master/"),
        "{status}"
    );

    let pids: Vec<String> = ["master", "slave1", "slave2", "slave7", "gateway"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(checkout.join("run").join(format!("{n}.pid")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    let (ok, out) = make(&checkout, &env, &["stop"]);
    assert!(ok, "{out}");
    for pid in &pids {
        let gone = eventually(Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "process {pid} still runs after make stop");
    }
    assert!(
        root_keys("/kamaitachi/services").is_empty(),
        "registry not empty: {:?}",
        root_keys("/kamaitachi")
    );
    // Issue 14: the acknowledged position outlives every leader (no lease)
    // so the next start elects only a node holding it; the leader key goes
    // with the leader's resignation.
    assert!(
        !root_keys("/kamaitachi").contains(&"/kamaitachi/election/leader".to_string()),
        "the leader did not resign: {:?}",
        root_keys("/kamaitachi")
    );
    assert!(std::fs::read_dir(checkout.join("run")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".pid")));
}

/// A base port `p` with `p`, `p+1`, `p+100`, `p+101`, `p+200`, `p+201` free:
/// the client and peer ports of a 3-member `make cluster` etcd.
fn free_etcd_base() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = std::process::id() as u16;
    (0..400u16)
        .map(|i| 26_000 + (seed.wrapping_mul(7).wrapping_add(i * 97)) % 5_500)
        .find(|&p| [0, 1, 100, 101, 200, 201].iter().all(|d| free(p + d)))
        .expect("no free etcd port range")
}

/// `etcdctl` against the 3 members as root: (success, stdout).
fn etcdctl_root(checkout: &Path, endpoints: &str, args: &[&str]) -> (bool, String) {
    let root = std::fs::read_to_string(checkout.join("run/etcd-root.password")).unwrap();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_USER", format!("root:{}", root.trim()))
        .args([
            "--endpoints",
            endpoints,
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "5s",
        ])
        .args(args)
        .output()
        .expect("etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn make_cluster_with_three_etcd_members_loses_one_and_no_request_fails() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("make-cluster-etcd3");
    let checkout = dir.join("checkout");
    copy_checkout(&checkout);
    let base = free_etcd_base();
    let (ports, env) = cluster_env(base, &[("ETCD_MEMBERS", "3"), ("SUBJECTS", "200")]);
    let gw = ports[3].1;
    let endpoints = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 100,
        base + 200
    );

    let (ok, out) = make(&checkout, &env, &["cluster"]);
    // Whatever happens next, stop what make cluster started.
    let _stop = StopOnDrop(&checkout, &env);
    assert!(ok, "make cluster ETCD_MEMBERS=3 failed:\n{out}");
    assert!(out.contains("etcd runs as 3 members"), "{out}");
    // Every process is given all three endpoints.
    for conf in ["master", "slave1", "slave2", "gateway"] {
        let text = std::fs::read_to_string(checkout.join(format!("run/conf/{conf}.ini"))).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("endpoints"))
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            line.split(';')
                .next()
                .unwrap_or_default()
                .matches("localhost:")
                .count(),
            3,
            "{conf}: {line}"
        );
    }
    let (ok, list) = etcdctl_root(&checkout, &endpoints, &["member", "list"]);
    assert!(
        ok && list.lines().filter(|l| l.contains("started")).count() == 3,
        "{list}"
    );

    // Read and write load through the gateway while etcd's leader member is
    // killed: not one request may fail.
    let token = std::fs::read_to_string(checkout.join("run/admin.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, auth) = (stop.clone(), auth.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let started = std::time::Instant::now();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
                && n < 20_000
            {
                n += 1;
                let r = if n.is_multiple_of(5) {
                    let body = format!(
                        r#"{{"records":[{{"subject":"33:{:06}","name":"Etcd3 {n}","report_date":1703980800,"end_date":"2023-12-31","year":"2023","period":"Q4","declare_date":"2024-03-30","values":{{"net_profit":{n}}}}}]}}"#,
                        900_000 + n % 50
                    );
                    kamaitachi_testkit::try_request(
                        gw,
                        "POST",
                        "/data/kamaitachi/api/data/v1/ingest",
                        body.as_bytes(),
                        &[("Authorization", &auth)],
                    )
                } else {
                    let body = format!(r#"{{"ids":"net_profit","subjects":"33:{:06}"}}"#, 1 + n % 150);
                    kamaitachi_testkit::try_request(
                        gw,
                        "POST",
                        "/data/kamaitachi/api/data/v1/snapshot",
                        body.as_bytes(),
                        &[],
                    )
                };
                match r {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let (ok, status) = etcdctl_root(&checkout, &endpoints, &["endpoint", "status", "-w", "json"]);
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let leader_index = status
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m["Status"]["header"]["member_id"] == m["Status"]["leader"])
        .expect("no etcd leader");
    let pid_file = if leader_index == 0 {
        "etcd.pid".to_string()
    } else {
        format!("etcd-{}.pid", leader_index + 1)
    };
    let pid = std::fs::read_to_string(checkout.join("run").join(&pid_file))
        .unwrap()
        .trim()
        .to_string();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after killing etcd member {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        leader_index + 1,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "too little load: {ok}");
    // make status shows the dead member; the registry still answers.
    let (ok, status) = make(&checkout, &env, &["status"]);
    assert!(ok, "{status}");
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("etcd member") && l.ends_with("down"))
            .count(),
        1,
        "{status}"
    );
    assert!(
        status.contains("/kamaitachi/services/kamaitachi-master/"),
        "{status}"
    );
}
