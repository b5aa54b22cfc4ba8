//! A private test network of Linux network namespaces, for tests that cut
//! links (issue 14's partition test) and that prove the cluster works
//! across hosts, not only on loopback.
//!
//! Layout: one "switch" namespace holding a bridge; every host is a
//! namespace whose `eth0` is one end of a veth pair, the other end plugged
//! into the bridge; the test's own namespace is plugged in too (address
//! `.1`), so the test reaches every host directly. [`TestNet::cut`] sets a
//! host's switch-side link down (the host is cut off from everyone, the
//! test included) and [`TestNet::heal`] sets it up again.
//!
//! Addresses are in a /24 of 10.200.0.0–10.249.255.0 picked at random,
//! skipped when the test's namespace already routes it; namespace and
//! interface names carry a short id naming that /24, and creating the
//! switch namespace claims it (`ip netns add` fails when the name exists,
//! and then another /24 is tried), so concurrent tests and test runs do
//! not meet, and a net never removes what it did not make. Everything is
//! removed on drop:
//! deleting a namespace deletes its ends of the veth pairs, and with them
//! the other ends. A host is recorded before it is configured, so a
//! half-made host is removed too. Processes started in a host must be
//! stopped before the net is dropped (declare the [`TestNet`] first: locals
//! drop in reverse order); a namespace still holding a process outlives
//! its name until that process exits.
//!
//! It needs root and `ip` (iproute2), as CI has (`scripts/install-deps.sh`
//! installs it); [`TestNet::create`] panics with the reason otherwise.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Resp;

/// One host of a [`TestNet`].
#[derive(Debug, Clone)]
pub struct NetHost {
    /// The namespace name (`ip netns exec NS …`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The switch-side end of its veth pair.
    switch_if: String,
}

impl NetHost {
    /// `ip:port`.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    /// `ip:port` as a socket address.
    pub fn socket(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// A command that runs `program` inside this host's namespace
    /// (`ip netns exec` execs it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program.as_ref());
        cmd
    }

    /// An HTTP request sent from inside this host (curl run in its
    /// namespace) to `addr` (`ip:port`), giving up after `timeout`: the
    /// answer (headers left out), or why there is none (curl's message,
    /// e.g. a timeout while the host is cut off).
    pub fn http(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Resp, String> {
        use std::io::Write;
        let mut cmd = self.command("curl");
        cmd.args(["-sS", "-X", method, "--max-time"])
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .args(["-w", "\n%{http_code}", "--data-binary", "@-"]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        let mut child = cmd
            .arg(format!("http://{addr}{path}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(body);
        }
        let out = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
        let stdout = out.stdout;
        let split = stdout.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status: u16 = String::from_utf8_lossy(&stdout[split..])
            .trim()
            .parse()
            .unwrap_or(0);
        if !out.status.success() || status == 0 {
            return Err(format!(
                "curl from {} to {addr}{path}: {} ({})",
                self.ns,
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
        Ok(Resp {
            status,
            headers: Vec::new(),
            body: stdout[..split].to_vec(),
        })
    }
}

pub struct TestNet {
    id: String,
    net: [u8; 3],
    switch_ns: String,
    root_if: String,
    hosts: Vec<NetHost>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("test network: {e} (these tests need root and iproute2)");
    }
}

impl TestNet {
    /// The switch namespace with its bridge, and the test's own link into
    /// it. Panics (after removing what it made) when it cannot.
    pub fn create() -> TestNet {
        use std::hash::{BuildHasher, Hasher};
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut tries = 0;
        let (id, net, switch_ns) = loop {
            // Random per call (tests of one binary run at the same time in
            // one process): the std's randomly keyed hasher.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(super::nanos());
            h.write_u64(RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let seed = h.finish();
            let net = [10, 200 + (seed % 50) as u8, ((seed >> 8) % 250) as u8 + 1];
            // The id names the subnet, so claiming the switch namespace's
            // name (atomic: `ip netns add` fails if it exists) claims the
            // subnet among test runs; the route check keeps off subnets
            // the machine uses otherwise.
            let id = format!("{:02x}{:02x}", net[1], net[2]);
            let subnet = format!("{}.{}.{}.0/24", net[0], net[1], net[2]);
            let routed = ip(&["-4", "route", "show", "to", "match", &subnet])
                .map(|r| r.lines().any(|l| !l.starts_with("default")))
                .unwrap_or(true);
            let switch_ns = format!("kt{id}-sw");
            if !routed && ip(&["netns", "add", &switch_ns]).is_ok() {
                break (id, net, switch_ns);
            }
            tries += 1;
            assert!(
                tries < 20,
                "test network: no free subnet after 20 tries (these tests need root and iproute2)"
            );
        };
        let t = TestNet {
            root_if: format!("kt{id}r"),
            switch_ns,
            id,
            net,
            hosts: Vec::new(),
        };
        // From here a panic drops `t`, which removes what exists.
        must(&["-n", &t.switch_ns, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &t.switch_ns, "link", "set", "br0", "up"]);
        let peer = format!("kt{}rs", t.id);
        must(&["link", "add", &t.root_if, "type", "veth", "peer", "name", &peer]);
        must(&["link", "set", &peer, "netns", &t.switch_ns]);
        must(&["-n", &t.switch_ns, "link", "set", &peer, "master", "br0"]);
        must(&["-n", &t.switch_ns, "link", "set", &peer, "up"]);
        let root_ip = format!("{}/24", t.ip_of(1));
        must(&["addr", "add", &root_ip, "dev", &t.root_if]);
        must(&["link", "set", &t.root_if, "up"]);
        t
    }

    fn ip_of(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], n)
    }

    /// The test's own address on this network.
    pub fn test_ip(&self) -> Ipv4Addr {
        self.ip_of(1)
    }

    /// A new host named `name` (short: it is part of the namespace name),
    /// plugged into the switch, its loopback up.
    pub fn host(&mut self, name: &str) -> NetHost {
        assert!(self.hosts.len() < 200, "test network: too many hosts");
        let n = self.hosts.len() as u8 + 2;
        let ns = format!("kt{}-{name}", self.id);
        let host_if = format!("kt{}{n:02}h", self.id);
        let switch_if = format!("kt{}{n:02}s", self.id);
        let host = NetHost {
            ns: ns.clone(),
            ip: self.ip_of(n),
            switch_if: switch_if.clone(),
        };
        must(&["netns", "add", &ns]);
        // Recorded at once: if a step below fails, drop removes it.
        self.hosts.push(host.clone());
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        must(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &switch_if,
        ]);
        if let Err(e) = ip(&["link", "set", &host_if, "netns", &ns]) {
            let _ = ip(&["link", "del", &host_if]);
            panic!("test network: {e}");
        }
        must(&["link", "set", &switch_if, "netns", &self.switch_ns]);
        must(&["-n", &ns, "link", "set", &host_if, "name", "eth0"]);
        let addr = format!("{}/24", host.ip);
        must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        must(&["-n", &ns, "link", "set", "eth0", "up"]);
        must(&["-n", &self.switch_ns, "link", "set", &switch_if, "master", "br0"]);
        must(&["-n", &self.switch_ns, "link", "set", &switch_if, "up"]);
        host
    }

    /// Cuts `host` off from every other host and from the test.
    pub fn cut(&self, host: &NetHost) {
        must(&["-n", &self.switch_ns, "link", "set", &host.switch_if, "down"]);
    }

    /// Plugs `host` back in.
    pub fn heal(&self, host: &NetHost) {
        must(&["-n", &self.switch_ns, "link", "set", &host.switch_if, "up"]);
    }

    /// The namespaces this net made (for a test that checks the clean-up).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        all.push(self.switch_ns.clone());
        all
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch_ns]);
        // Gone already with its peer in the switch namespace; just in case.
        let _ = ip(&["link", "del", &self.root_if]);
    }
}

/// Whether the namespace `ns` exists (`ip netns list`).
pub fn netns_exists(ns: &str) -> bool {
    ip(&["netns", "list"])
        .map(|l| l.lines().any(|line| line.split_whitespace().next() == Some(ns)))
        .unwrap_or(false)
}
