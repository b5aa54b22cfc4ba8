//! A 3-member etcd cluster on loopback for the fault harness: each member
//! can be killed, restarted, paused and resumed; the whole cluster can lose
//! its data (every member stopped, data removed, started fresh on the same
//! endpoints with the same users) or go back to a snapshot taken earlier
//! (`etcdctl snapshot save`, then `etcdctl snapshot restore` per member:
//! Debian's etcd 3.4 has no `etcdutl`) by the operator's runbook in
//! docs/WRITE_PROTOCOL.md: the restored cluster first serves only on
//! private client URLs, where `{prefix}/election/` is deleted, and only
//! then on the URLs the nodes use ([`EtcdCluster::start_from`]).
//!
//! Auth, when on, is set up as `make cluster` does it (root, then a role
//! that may read and write only under the prefix, and its user) and again
//! with the same passwords after a wipe; a restored snapshot carries its
//! own. Every wait is bounded; a member that does not come back panics
//! with its log. Dropping the cluster kills every member and removes its
//! data and snapshots (the logs stay).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, nanos, EtcdTestAuth};

pub const MEMBERS: usize = 3;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

pub struct EtcdCluster {
    dir: PathBuf,
    /// The nodes' `[etcd] prefix` (with or without its last `/`).
    prefix: String,
    members: Vec<Member>,
    pub auth: Option<EtcdTestAuth>,
    /// Bumped at every wipe or restore, so a fresh cluster never talks to a
    /// member of an earlier one.
    generation: u32,
    /// Snapshots saved so far (files `dir/etcd-N.snapshot`).
    snapshots: usize,
}

impl EtcdCluster {
    /// Starts the members in `dir` (data in `dir/etcd-N`), with auth on
    /// (users limited to `prefix`) when `auth`; waits until all are healthy.
    pub fn start(dir: &Path, prefix: &str, auth: bool) -> EtcdCluster {
        let auth = auth.then(|| {
            let password_file = dir.join("etcd-kamaitachi.password");
            let password = format!("pw-{:x}", nanos());
            write_private(&password_file, &format!("{password}\n"));
            EtcdTestAuth {
                root_password: format!("root-{:x}", nanos()),
                user: "kamaitachi".into(),
                password,
                password_file,
                prefix: prefix.to_string(),
            }
        });
        let members = (0..MEMBERS)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.join(format!("etcd-{i}")),
                log: dir.join(format!("etcd-{i}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            members,
            auth,
            generation: 0,
            snapshots: 0,
        };
        c.launch_all();
        c.wait_healthy(Duration::from_secs(30));
        c.enable_auth();
        c
    }

    /// `127.0.0.1:PORT` of member `i`, as an `[etcd] endpoints` entry.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        (0..MEMBERS)
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `username`/`password_file` lines for an `[etcd]` section ("" without auth).
    pub fn ini_auth(&self) -> String {
        self.auth.as_ref().map_or_else(String::new, |a| {
            format!(
                "username = {}\npassword_file = {}\n",
                a.user,
                a.password_file.display()
            )
        })
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn token(&self) -> String {
        format!("kmt-chaos-{}", self.generation)
    }

    /// Starts member `i` on its client URL (the one the nodes use).
    fn launch(&mut self, i: usize) {
        let url = self.members[i].client_url();
        self.launch_on(i, &url);
    }

    /// Starts member `i` serving clients only on `client_url` (its peer
    /// URL and data as always).
    fn launch_on(&mut self, i: usize, client_url: &str) {
        let initial = self.initial_cluster();
        let token = self.token();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd member log");
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", client_url])
            .args(["--advertise-client-urls", client_url])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (install it with scripts/install-deps.sh)");
        m.child = Some(child);
        m.paused = false;
    }

    fn launch_all(&mut self) {
        for i in 0..MEMBERS {
            self.launch(i);
        }
    }

    /// Runs etcdctl against `endpoints` as root (when auth is on) or
    /// anonymously: (success, stdout + stderr).
    pub fn etcdctl_at(&self, endpoints: &str, as_root: bool, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_USER")
            .args([
                "--endpoints",
                endpoints,
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "5s",
            ])
            .args(args)
            .stdin(Stdio::null());
        if let (true, Some(a)) = (as_root, &self.auth) {
            cmd.env("ETCDCTL_USER", format!("root:{}", a.root_password));
        }
        match cmd.output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    /// etcdctl against every member, as root when auth is on.
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        self.etcdctl_at(&self.endpoints(), true, args)
    }

    fn member_healthy(&self, i: usize) -> bool {
        let ep = self.endpoint(i);
        self.etcdctl_at(&ep, false, &["endpoint", "health"]).0
            || (self.auth.is_some() && self.etcdctl_at(&ep, true, &["endpoint", "health"]).0)
    }

    /// Waits until every running, unpaused member answers; panics with the
    /// logs after `timeout`.
    fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let all = (0..MEMBERS)
                .filter(|&i| self.members[i].child.is_some() && !self.members[i].paused)
                .all(|i| self.member_healthy(i));
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {timeout:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- etcd {} ---\n", m.name));
            out.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// As `make cluster` does it (etcd 3.4 enables auth only once root
    /// exists); steps already done are refused and change nothing.
    fn enable_auth(&self) {
        let Some(a) = &self.auth else { return };
        let steps = a.setup_steps();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let _ = self.etcdctl_at(&self.endpoints(), false, &args);
        }
        let (ok, out) = self.etcdctl(&["get", "--prefix", "--keys-only", &a.prefix]);
        assert!(ok, "etcd auth setup failed: {out}");
    }

    /// kill -9 of member `i` (resumed first if paused, so it dies at once).
    pub fn kill(&mut self, i: usize) {
        self.resume(i);
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
    }

    /// SIGSTOP of member `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].child.as_ref().map(Child::id) {
            signal(pid, "STOP");
            self.members[i].paused = true;
        }
    }

    /// SIGCONT of member `i` (nothing when it is not paused).
    pub fn resume(&mut self, i: usize) {
        if let (true, Some(pid)) = (
            self.members[i].paused,
            self.members[i].child.as_ref().map(Child::id),
        ) {
            signal(pid, "CONT");
        }
        self.members[i].paused = false;
    }

    /// Whether every member runs unpaused.
    pub fn all_up(&self) -> bool {
        self.members.iter().all(|m| m.child.is_some() && !m.paused)
    }

    /// Resumes and starts every member that is paused or down, and waits
    /// (bounded) until all answer.
    pub fn heal(&mut self) {
        for i in 0..MEMBERS {
            self.resume(i);
            if self.members[i].child.is_none() {
                self.launch(i);
            }
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Every member killed and its data removed (the first half of a wipe
    /// or a restore).
    pub fn destroy(&mut self) {
        for i in 0..MEMBERS {
            self.kill(i);
            let _ = std::fs::remove_dir_all(&self.members[i].data_dir);
        }
        self.generation += 1;
    }

    /// The whole cluster loses its data: every member stopped, its data
    /// removed, started fresh on the same endpoints; the same users again.
    pub fn wipe(&mut self) {
        self.destroy();
        self.start_fresh();
    }

    /// After [`EtcdCluster::destroy`]: every member started empty on the
    /// same endpoints, the same users made again.
    pub fn start_fresh(&mut self) {
        self.launch_all();
        self.wait_healthy(Duration::from_secs(30));
        self.enable_auth();
    }

    fn snapshot_path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("etcd-{n}.snapshot"))
    }

    /// Saves a snapshot of the cluster's data (through a running member)
    /// into `dir/etcd-N.snapshot`; returns its path.
    pub fn snapshot(&mut self) -> PathBuf {
        self.snapshots += 1;
        let file = self.snapshot_path(self.snapshots);
        let path = file.to_string_lossy().into_owned();
        let mut last = String::new();
        for i in 0..MEMBERS {
            if self.members[i].child.is_none() || self.members[i].paused {
                continue;
            }
            let (ok, out) = self.etcdctl_at(&self.endpoint(i), true, &["snapshot", "save", &path]);
            if ok {
                return file;
            }
            last = out;
        }
        panic!("etcdctl snapshot save failed: {last}\n{}", self.logs());
    }

    /// The whole cluster goes back to `snapshot` by the runbook (see
    /// [`EtcdCluster::start_from`]); returns how many election keys the
    /// runbook deleted.
    pub fn restore(&mut self, snapshot: &Path) -> usize {
        self.destroy();
        self.start_from(snapshot)
    }

    /// After [`EtcdCluster::destroy`], the runbook's restore
    /// (docs/WRITE_PROTOCOL.md, "Runbook"), step by step:
    ///
    /// 1. every member's data made from `snapshot` (`etcdctl snapshot
    ///    restore`, the member's usual name, peer URL and cluster);
    /// 2. every member started with its usual data and peer URL but serving
    ///    clients only on a private URL, which no node knows, and the
    ///    cluster waited for there;
    /// 3. `etcdctl del --prefix {prefix}/election/` there, as root: the
    ///    restored leader key, `acked` and reports are gone before any node
    ///    reads them;
    /// 4. every member stopped (SIGTERM) and started again on its usual
    ///    client URL.
    ///
    /// Returns how many keys step 3 deleted. Panics, with the logs, when a
    /// step fails.
    pub fn start_from(&mut self, snapshot: &Path) -> usize {
        let initial = self.initial_cluster();
        let token = self.token();
        let snap = snapshot.to_string_lossy().into_owned();
        for m in &self.members {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore", &snap, "--name", &m.name])
                .arg("--data-dir")
                .arg(&m.data_dir)
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-advertise-peer-urls", &m.peer_url()])
                .output()
                .expect("run etcdctl snapshot restore");
            assert!(
                out.status.success(),
                "etcdctl snapshot restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let private: Vec<String> = (0..MEMBERS)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        for (i, url) in private.iter().enumerate() {
            self.launch_on(i, url);
        }
        let endpoints = private.join(",");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !private
            .iter()
            .all(|url| self.etcdctl_at(url, true, &["endpoint", "health"]).0)
        {
            assert!(
                Instant::now() < deadline,
                "the restored etcd did not come up on its private URLs: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let election = self.election_prefix();
        let (ok, out) = self.etcdctl_at(&endpoints, true, &["del", "--prefix", &election]);
        assert!(
            ok,
            "etcdctl del --prefix {election} on the restored etcd: {out}\n{}",
            self.logs()
        );
        let deleted = out.trim().parse().unwrap_or(0);
        let (ok, left) = self.etcdctl_at(&endpoints, true, &["get", "--prefix", "--keys-only", &election]);
        assert!(
            ok && left.trim().is_empty(),
            "the restored etcd still holds election keys after the runbook's delete: {left}"
        );
        for i in 0..MEMBERS {
            self.stop(i);
        }
        self.launch_all();
        self.wait_healthy(Duration::from_secs(30));
        deleted
    }

    /// `{prefix}/election/`: what the runbook deletes after a restore.
    pub fn election_prefix(&self) -> String {
        format!("{}/election/", self.prefix.trim_end_matches('/'))
    }

    /// SIGTERM of member `i` and a bounded wait for it to exit (kill -9
    /// after 10 s).
    fn stop(&mut self, i: usize) {
        self.resume(i);
        let Some(mut child) = self.members[i].child.take() else {
            return;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EtcdCluster {
    /// Kills every member and removes its data (and the snapshots), failing
    /// test or not: a failed fault run's evidence is the nodes' databases
    /// and the logs, which stay; etcd's preallocated write-ahead logs
    /// (64 MB a member) would only fill the disk.
    fn drop(&mut self) {
        for i in 0..MEMBERS {
            self.kill(i);
            let _ = std::fs::remove_dir_all(&self.members[i].data_dir);
        }
        for n in 1..=self.snapshots {
            let _ = std::fs::remove_file(self.snapshot_path(n));
        }
    }
}

/// `kill -SIG pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("write a private file");
    f.write_all(text.as_bytes()).expect("write a private file");
}
