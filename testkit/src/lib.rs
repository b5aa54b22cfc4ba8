//! Kamaitachi's end-to-end test kit (crate `kamaitachi-testkit`, never
//! published, a dev-dependency only): real `etcd`, `kamaitachi-node` and
//! `kamaitachi-gateway` processes on free loopback ports, each in a
//! directory of its own and killed when dropped, sample data, and a
//! minimal HTTP/1.1 client that can also send raw bytes.
//!
//! The same processes also run on a host of a private test network
//! ([`TestNet`], Linux network namespaces: issue 14's cross-host and
//! partition tests): [`Etcd::start_on`], [`NodeOpts::host`],
//! [`Gateway::start_on`]; the client's `*_at` functions take any address.
//!
//! It is a crate of its own, not a feature of the `cluster` library, so
//! nothing the binaries link carries test code or its dependencies
//! (rusqlite for the fingerprints); the crates' tests use it as they use
//! any dev-dependency.
//!
//! Harnesses panic on failure (this is test code: a panic is the test's
//! failure, with the log in the message). Clean-up: a harness's directory
//! is removed when it is dropped, unless the thread is panicking — a failed
//! test keeps its files for a post-mortem (see [`TestDir`]).

pub mod chaos;
mod gateway;
mod netns;
mod process;
mod test_dir;

pub use gateway::Gateway;
pub use netns::{netns_exists, NetHost, TestNet};
pub use process::Process;
pub use test_dir::TestDir;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SNAPSHOT: &str = "/kamaitachi/api/data/v1/snapshot";
pub const PERIOD: &str = "/kamaitachi/api/data/v1/period";
pub const STATS: &str = "/kamaitachi/api/data/v1/stats";
pub const RESET: &str = "/kamaitachi/api/data/v1/cache/reset";
pub const TOKEN: &str = "test-admin-token-0123456789abcdef";
/// The cluster secret every test node and gateway shares (distinct from
/// [`TOKEN`]).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef0123456789";

/// The headers a slave signs a replication GET of `target` (path and
/// query) to the node `localhost:{port}` with.
pub fn replication_headers(port: u16, target: &str) -> Vec<(&'static str, String)> {
    let key = cluster::auth::ClusterKey::from_secret(CLUSTER_SECRET.as_bytes());
    let s = key.sign_request("repl-request", "GET", &format!("localhost:{port}"), target);
    vec![
        (cluster::auth::NONCE_HEADER, s.nonce),
        (cluster::auth::TIME_HEADER, s.time),
        (cluster::auth::PROOF_HEADER, s.mac),
    ]
}

/// Writes [`CLUSTER_SECRET`] into `dir/cluster.secret`; returns the path.
pub fn write_cluster_secret(dir: &Path) -> PathBuf {
    let file = dir.join("cluster.secret");
    std::fs::write(&file, CLUSTER_SECRET).expect("write cluster secret");
    file
}

/// A binary of this workspace next to the running test (target/<profile>/),
/// built by `cargo build --workspace` (which `make test` runs first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A fresh directory under `$TMPDIR/kamaitachi-tests/`; the harness given
/// it as a [`TestDir`] removes it, otherwise it stays.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join("kamaitachi-tests");
    let dir = base.join(format!("{name}-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `kamaitachi-node gen-data` into `db`.
pub fn gen_data(bin: &Path, db: &Path, subjects: usize, seed: u64) {
    let out = Command::new(bin)
        .args(["gen-data", "--db"])
        .arg(db)
        .args([
            "--subjects",
            &subjects.to_string(),
            "--seed",
            &seed.to_string(),
            "--force",
        ])
        .output()
        .expect("run gen-data");
    assert!(
        out.status.success(),
        "gen-data failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

pub struct Etcd {
    /// The address it listens on: 127.0.0.1, or its host's on a [`TestNet`].
    pub ip: IpAddr,
    /// Set when it runs in a namespace of a [`TestNet`].
    host: Option<NetHost>,
    pub client_port: u16,
    peer_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// With auth on: the users made at start (see [`Etcd::start_with_auth`]).
    pub auth: Option<EtcdTestAuth>,
    /// `--auth-token-ttl` in seconds.
    token_ttl: Option<u64>,
}

/// The users of an etcd started with auth, as `make cluster` makes them:
/// `root` (role root) and `kamaitachi`, whose role may read and write only
/// under `prefix`.
#[derive(Debug, Clone)]
pub struct EtcdTestAuth {
    pub root_password: String,
    pub user: String,
    pub password: String,
    /// Holds `password` (mode 600).
    pub password_file: PathBuf,
    pub prefix: String,
}

impl EtcdTestAuth {
    /// The etcdctl steps that turn auth on as `make cluster` does: root
    /// first (etcd 3.4 enables auth only once root exists), then the
    /// prefix-limited role and user, then `auth enable`.
    pub fn setup_steps(&self) -> Vec<Vec<String>> {
        vec![
            vec![
                "user".into(),
                "add".into(),
                "root".into(),
                format!("--new-user-password={}", self.root_password),
            ],
            vec!["user".into(), "grant-role".into(), "root".into(), "root".into()],
            vec!["role".into(), "add".into(), self.user.clone()],
            vec![
                "role".into(),
                "grant-permission".into(),
                self.user.clone(),
                "readwrite".into(),
                "--prefix=true".into(),
                self.prefix.clone(),
            ],
            vec![
                "user".into(),
                "add".into(),
                self.user.clone(),
                format!("--new-user-password={}", self.password),
            ],
            vec![
                "user".into(),
                "grant-role".into(),
                self.user.clone(),
                self.user.clone(),
            ],
            vec!["auth".into(), "enable".into()],
        ]
    }
}

impl Etcd {
    /// Starts etcd in a fresh data dir under `dir` and waits until it answers.
    pub fn start(dir: &std::path::Path) -> Etcd {
        Self::start_at(dir, IpAddr::V4(Ipv4Addr::LOCALHOST), None)
    }

    /// Starts etcd inside `host`'s namespace, listening on its address
    /// (clients and peer), data and log in `dir`; waits until it answers
    /// (etcdctl from the test's namespace, through the test network).
    pub fn start_on(dir: &std::path::Path, host: &NetHost) -> Etcd {
        Self::start_at(dir, IpAddr::V4(host.ip), Some(host.clone()))
    }

    fn start_at(dir: &std::path::Path, ip: IpAddr, host: Option<NetHost>) -> Etcd {
        let mut etcd = Etcd {
            ip,
            host,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
            auth: None,
            token_ttl: None,
        };
        etcd.launch();
        etcd
    }

    /// Starts etcd with auth enabled: a `root` user and a `kamaitachi` user
    /// whose role may read/write only under `prefix` (e.g. `/kmt-gw/`);
    /// `token_ttl`: etcd's `--auth-token-ttl` in seconds (default 300).
    /// [`Etcd::etcdctl`] then runs as root; [`Etcd::etcdctl_anonymous`] as
    /// nobody.
    pub fn start_with_auth(dir: &std::path::Path, prefix: &str, token_ttl: Option<u64>) -> Etcd {
        let password_file = dir.join("etcd-kamaitachi.password");
        let password = format!("pw-{:x}", nanos());
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&password_file)
                .expect("write etcd password file");
            f.write_all(format!("{password}\n").as_bytes())
                .expect("write etcd password file");
        }
        let mut etcd = Etcd {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host: None,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
            auth: Some(EtcdTestAuth {
                root_password: format!("root-{:x}", nanos()),
                user: "kamaitachi".into(),
                password,
                password_file,
                prefix: prefix.to_string(),
            }),
            token_ttl,
        };
        etcd.launch();
        etcd
    }

    /// `username = …` and `password_file = …` lines for an `[etcd]` section
    /// (empty without auth).
    pub fn ini_auth(&self) -> String {
        match &self.auth {
            Some(a) => format!(
                "username = {}\npassword_file = {}\n",
                a.user,
                a.password_file.display()
            ),
            None => String::new(),
        }
    }

    /// Turns auth on, as `make cluster` does: root first (etcd 3.4 enables
    /// auth only once root exists), then the prefix-limited role and user.
    /// Idempotent: on an etcd that has auth on already every anonymous step
    /// is refused and nothing changes.
    fn enable_auth(&self) {
        let Some(a) = &self.auth else { return };
        let steps = a.setup_steps();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let _ = self.etcdctl_as(None, &args, None);
        }
    }

    /// Runs `etcdctl` as `user` (`(name, password)`) or anonymously, with
    /// `stdin` as its input: (success, stdout, stderr).
    pub fn etcdctl_as(
        &self,
        user: Option<(&str, &str)>,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> (bool, String, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_USER")
            .args([
                "--endpoints",
                &self.endpoint(),
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "5s",
            ])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((name, pw)) = user {
            cmd.env("ETCDCTL_USER", format!("{name}:{pw}"));
        }
        let Ok(mut child) = cmd.spawn() else {
            return (false, String::new(), "cannot run etcdctl".into());
        };
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(input);
        }
        match child.wait_with_output() {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        }
    }

    /// Runs `etcdctl` with no credentials: (success, stdout, stderr).
    pub fn etcdctl_anonymous(&self, args: &[&str]) -> (bool, String, String) {
        self.etcdctl_as(None, args, None)
    }

    /// `IP:PORT` (`127.0.0.1:PORT` unless on a [`TestNet`] host), as an
    /// `[etcd] endpoints` value.
    pub fn endpoint(&self) -> String {
        SocketAddr::new(self.ip, self.client_port).to_string()
    }

    /// The `[etcd]` config a process would read for this etcd, under
    /// `prefix` with leases of `ttl` seconds (and this etcd's credentials
    /// when its auth is on).
    pub fn client_config(&self, prefix: &str, ttl: i64) -> cluster::EtcdConfig {
        let text = format!(
            "[etcd]\nendpoints = {}\nprefix = {prefix}\nttl = {ttl}\n{}",
            self.endpoint(),
            self.ini_auth()
        );
        let ini = cluster::IniFile::parse("test.ini", &text).expect("etcd test config");
        cluster::EtcdConfig::from_ini(&ini).expect("etcd test config")
    }

    fn launch(&mut self) {
        let client = format!("http://{}", SocketAddr::new(self.ip, self.client_port));
        let peer = format!("http://{}", SocketAddr::new(self.ip, self.peer_port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let mut cmd = match &self.host {
            Some(h) => h.command("etcd"),
            None => Command::new("etcd"),
        };
        if let Some(ttl) = self.token_ttl {
            cmd.arg(format!("--auth-token-ttl={ttl}"));
        }
        let child = cmd
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (install it with scripts/install-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // With auth on, an anonymous health check is refused.
            if self.etcdctl_anonymous(&["endpoint", "health"]).0
                || (self.auth.is_some() && self.etcdctl(&["endpoint", "health"]).0)
            {
                self.enable_auth();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Runs `etcdctl` against this etcd (as root when auth is on):
    /// (success, stdout).
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        let root = self.auth.as_ref().map(|a| ("root", a.root_password.as_str()));
        let (ok, out, _) = self.etcdctl_as(root, args, None);
        (ok, out)
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (_, out) = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports; `wipe` empties the data dir first.
    pub fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        self.launch();
    }
}

impl Drop for Etcd {
    /// Kills etcd and, unless the test is failing, removes its data dir
    /// (etcd preallocates a 64 MB write-ahead log there); the caller's
    /// directory and the log stay with whoever made them.
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

pub struct NodeOpts {
    /// `master` or `slave`.
    pub mode: &'static str,
    pub db: PathBuf,
    pub max_bytes: u64,
    pub dump: Option<PathBuf>,
    pub extra: String,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
    /// Run inside this host's namespace of a [`TestNet`], with `bind` and
    /// `service_addr` its address (`None`: loopback, `localhost:PORT`).
    pub host: Option<NetHost>,
}

impl NodeOpts {
    pub fn new(db: &Path) -> Self {
        NodeOpts {
            mode: "master",
            db: db.to_path_buf(),
            max_bytes: 256 << 20,
            dump: None,
            extra: String::new(),
            env: Vec::new(),
            host: None,
        }
    }
}

/// A running node; killed when dropped. Started by [`Node::start`] it owns
/// its directory and removes it when dropped (unless the test is failing).
pub struct Node {
    pub port: u16,
    /// Where it listens: `127.0.0.1:PORT`, or its host's `IP:PORT`.
    pub addr: SocketAddr,
    /// Its host on a [`TestNet`], if any.
    pub host: Option<NetHost>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    process: Process,
    /// Last, so it is removed after the process is gone; `None` when the
    /// directory came from the caller ([`Node::start_with_config`]).
    _owned: Option<TestDir>,
}

impl Node {
    /// Starts `bin` (kamaitachi-node) as a master unless `opts.extra` says
    /// otherwise, and waits until `/health` answers 200.
    pub fn start(bin: &Path, opts: &NodeOpts) -> Node {
        let owned = TestDir::new(temp_dir("node"));
        let dir = owned.to_path_buf();
        let port = free_port();
        let token = dir.join("admin.token");
        std::fs::write(&token, TOKEN).expect("write token");
        let secret = write_cluster_secret(&dir);
        let dump = opts
            .dump
            .as_ref()
            .map(|d| format!("snapshot_path = {}\nsnapshot_interval = 0\n", d.display()))
            .unwrap_or_default();
        let config = dir.join("node.ini");
        let (bind, service_addr) = match &opts.host {
            Some(h) => (h.ip.to_string(), h.addr(port)),
            None => ("127.0.0.1".to_string(), format!("localhost:{port}")),
        };
        let ini = format!(
            "[server]\nport = {port}\nmode = {}\nbind = {bind}\nservice_addr = {service_addr}\n\
             [database]\npath = {}\n\
             [cache]\nmax_bytes = {}\n{dump}\
             [security]\nadmin_token_file = {}\ncluster_secret_file = {}\n{}",
            opts.mode,
            opts.db.display(),
            opts.max_bytes,
            token.display(),
            secret.display(),
            opts.extra
        );
        std::fs::write(&config, ini).expect("write config");
        Self::start_with_env(bin, dir, config, port, &opts.env, opts.host.as_ref(), Some(owned))
    }

    /// Starts `bin` on an existing `config` in `dir` (e.g. a restart of a
    /// killed node, whose harness still owns `dir`).
    pub fn start_with_config(bin: &Path, dir: PathBuf, config: PathBuf, port: u16) -> Node {
        Self::start_with_env(bin, dir, config, port, &[], None, None)
    }

    /// [`Node::start_with_config`] inside `host`'s namespace (a restart of
    /// a node started with [`NodeOpts::host`]).
    pub fn start_with_config_on(
        bin: &Path,
        dir: PathBuf,
        config: PathBuf,
        port: u16,
        host: &NetHost,
    ) -> Node {
        Self::start_with_env(bin, dir, config, port, &[], Some(host), None)
    }

    fn start_with_env(
        bin: &Path,
        dir: PathBuf,
        config: PathBuf,
        port: u16,
        env: &[(String, String)],
        host: Option<&NetHost>,
        owned: Option<TestDir>,
    ) -> Node {
        let log = dir.join("node.log");
        let addr = host.map_or(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), |h| h.socket(port));
        let mut cmd = match host {
            Some(h) => h.command(bin),
            None => Command::new(bin),
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .arg("-config")
            .arg(&config);
        let mut process = Process::spawn("node", &mut cmd, &log);
        process.wait_ready(Duration::from_secs(20), &format!("on {addr} not healthy"), || {
            try_request_at(addr, "GET", "/health", b"", &[]).is_ok_and(|r| r.status == 200)
        });
        Node {
            port,
            addr,
            host: host.cloned(),
            dir,
            config,
            log,
            process,
            _owned: owned,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        request_at(self.addr, "POST", path, body.as_bytes(), &[])
    }

    pub fn get(&self, path: &str) -> Resp {
        request_at(self.addr, "GET", path, b"", &[])
    }

    pub fn stats(&self) -> serde_json::Value {
        let r = self.get(STATS);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["data"].clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// kill -9 (no cleanup of any kind).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.process.stop(Duration::from_secs(20)).0
    }
}

/// A text fingerprint of a database's data (every row of every data table,
/// in key order): equal fingerprints mean equal data.
pub fn db_fingerprint(db: &Path) -> String {
    let conn = rusqlite_open(db);
    let mut out = String::new();
    for sql in [
        "SELECT id, code FROM indicators ORDER BY id",
        "SELECT subject, name FROM subjects ORDER BY subject",
        "SELECT topic, subject FROM topic_members ORDER BY topic, subject",
        "SELECT subject, report_date, end_date, year, period, declare_date FROM reports ORDER BY subject, report_date",
        "SELECT subject, report_date, indicator, quote(value) FROM report_values ORDER BY 1, 2, 3",
        // The compact per-subject form (absent from older databases).
        "SELECT subject, hex(data) FROM subject_blob ORDER BY subject",
    ] {
        let Ok(mut st) = conn.prepare(sql) else { continue };
        let n = st.column_count();
        let Ok(mut rows) = st.query([]) else { continue };
        while let Ok(Some(r)) = rows.next() {
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i).unwrap_or(rusqlite::types::Value::Null);
                out.push_str(&format!("{v:?}|"));
            }
            out.push('\n');
        }
    }
    out
}

/// Every subject of a database, sorted.
pub fn subjects(db: &Path) -> Vec<String> {
    let conn = rusqlite_open(db);
    let mut st = conn
        .prepare("SELECT subject FROM subjects ORDER BY subject")
        .expect("subjects table");
    st.query_map([], |r| r.get(0))
        .expect("query subjects")
        .filter_map(Result::ok)
        .collect()
}

fn rusqlite_open(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open database")
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- A minimal HTTP/1.1 client that can also send raw bytes. ----

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `status_msg` of an envelope.
    pub fn msg(&self) -> String {
        self.json()["status_msg"].as_str().unwrap_or("").to_string()
    }
}

/// How long the client waits for a connection: a host cut off from the
/// test network never answers a SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

pub fn request(port: u16, method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    request_at(loopback(port), method, path, body, headers)
}

/// [`request`] to any address (a node on a [`TestNet`] host).
pub fn request_at(addr: SocketAddr, method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    try_request_at(addr, method, path, body, headers).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    try_request_at(loopback(port), method, path, body, headers)
}

/// One HTTP/1.1 request, whole, with `Connection: close`; the `Host`
/// header is `localhost` on loopback (as it always was), the address
/// otherwise.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let host = if addr.ip().is_loopback() {
        "localhost".to_string()
    } else {
        addr.to_string()
    };
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// [`try_request`] to any address ([`request_bytes`]).
pub fn try_request_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let out = send_raw_at(addr, &request_bytes(addr, method, path, body, headers))?;
    parse_responses(&out)
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no response: {:?}", String::from_utf8_lossy(&out))))
}

/// Sends bytes and reads until the server closes (or 5 s pass).
pub fn send_raw(port: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    send_raw_at(loopback(port), bytes)
}

/// [`send_raw`] to any address (connecting gives up after 3 s).
pub fn send_raw_at(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Splits a byte stream into the whole responses it holds, framed by the
/// shared HTTP/1 codec (`http1`), the rules the node and the gateway frame
/// with: a test client that read answers its own way could disagree with
/// them unnoticed. An answer whose body has not all arrived is left out (a
/// caller reading in a loop until it sees `n` answers gets `n` whole ones,
/// not a head whose body is still on the way); an answer without a length
/// runs to the end of the bytes; one the codec refuses ends the list as a
/// `status: 0` answer holding the rest, so the test sees it.
pub fn parse_responses(mut data: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut headers = http1::headers();
        let head = match http1::parse_answer(data, &mut headers) {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(_) => {
                out.push(Resp {
                    status: 0,
                    headers: Vec::new(),
                    body: data.to_vec(),
                });
                break;
            }
        };
        let body_end = match head.body_len {
            Some(n) => usize::try_from(n).map_or(usize::MAX, |n| head.len.saturating_add(n)),
            None => data.len(),
        };
        if body_end > data.len() {
            break;
        }
        out.push(Resp {
            status: head.status,
            headers: head
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect(),
            body: data[head.len..body_end].to_vec(),
        });
        data = &data[body_end..];
    }
    out
}

/// How many bytes the first answer in `buf` takes: `None` while its head is
/// incomplete (or unusable), `Some(None)` when it runs until the close.
fn answer_len(buf: &[u8]) -> Option<Option<usize>> {
    let mut headers = http1::headers();
    let head = http1::parse_answer(buf, &mut headers).ok()??;
    Some(
        head.body_len
            .map(|n| usize::try_from(n).map_or(usize::MAX, |n| head.len.saturating_add(n))),
    )
}

/// A keep-alive connection for load loops: one request, one response.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> std::io::Result<Self> {
        Self::connect_at(loopback(port))
    }

    /// [`KeepAlive::connect`] to any address.
    pub fn connect_at(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn post(&mut self, path: &str, body: &str) -> std::io::Result<Resp> {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(raw.as_bytes())?;
        self.buf.clear();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(Some(len)) = answer_len(&self.buf) {
                if self.buf.len() >= len {
                    let resp = parse_responses(&self.buf[..len]);
                    return resp
                        .into_iter()
                        .next()
                        .ok_or_else(|| std::io::Error::other("bad response"));
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if let Some(None) = answer_len(&self.buf) {
                    // An answer without a length ends at the close.
                    return parse_responses(&self.buf)
                        .into_iter()
                        .next()
                        .ok_or_else(|| std::io::Error::other("bad response"));
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A client that behaves like Python's `urllib`: it writes the request head
/// and its whole body (`body_len` bytes) before reading anything, then reads
/// to the end. A server that answers early and closes with unread bytes
/// makes the kernel reset the connection, and this returns the error.
pub fn post_whole_then_read(port: u16, path: &str, body_len: usize) -> Result<Resp, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(20))))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .map_err(|e| format!("writing the head: {e}"))?;
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < body_len {
        let n = chunk.len().min(body_len - sent);
        s.write_all(&chunk[..n])
            .map_err(|e| format!("writing the body, after {sent} of {body_len} bytes: {e}"))?;
        sent += n;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("reading the answer: {e}"))?;
    parse_responses(&out)
        .into_iter()
        .next()
        .ok_or_else(|| format!("no answer: {:?}", String::from_utf8_lossy(&out)))
}
