//! The registry against a real etcd: register, list, revoke, lease expiry,
//! etcd down at start, etcd restarted with its data wiped.

use std::time::{Duration, Instant};

use cluster::{Discovery, EtcdConfig, IniFile, Registration, Role, ServiceInfo};
use kamaitachi_testkit::{eventually, Etcd};

fn config(etcd: &Etcd, ttl: i64) -> EtcdConfig {
    etcd.client_config("/kmt-test", ttl)
}

fn runtime() -> tokio::runtime::Runtime {
    cluster::registry::runtime().expect("tokio runtime")
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
        ServiceInfo::new("localhost:18081", Role::Slave),
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
    assert_eq!(discovery.services()[0].info.role, Role::Slave);
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
        ServiceInfo::new("localhost:18081", Role::Slave),
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
        ServiceInfo::new("localhost:18081", Role::Slave),
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

fn auth_config(etcd: &Etcd, ttl: i64, password_file: &std::path::Path) -> EtcdConfig {
    let ini = IniFile::parse(
        "test.ini",
        &format!(
            "[etcd]\nendpoints = {}\nprefix = /kmt-test\nttl = {ttl}\nusername = kamaitachi\npassword_file = {}\n",
            etcd.endpoint(),
            password_file.display()
        ),
    )
    .unwrap();
    EtcdConfig::from_ini(&ini).unwrap()
}

#[test]
fn with_auth_anonymous_writes_are_refused_and_credentials_work() {
    let dir = temp("auth");
    let etcd = Etcd::start_with_auth(&dir, "/kmt-test/", None);
    let auth = etcd.auth.clone().unwrap();
    let (ok, _, err) = etcd.etcdctl_anonymous(&["put", "/kmt-test/services/rogue/127.0.0.1:1", "x"]);
    assert!(!ok, "anonymous put accepted");
    assert!(!err.is_empty());
    // The kamaitachi user may not write outside its prefix.
    let (ok, _, _) = etcd.etcdctl_as(
        Some((&auth.user, &auth.password)),
        &["put", "/elsewhere", "x"],
        None,
    );
    assert!(!ok, "put outside the prefix accepted");

    let rt = runtime();
    let cfg = auth_config(&etcd, 10, &auth.password_file);
    let discovery = Discovery::spawn(rt.handle(), cfg.clone());
    let reg = Registration::spawn(
        rt.handle(),
        cfg,
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", Role::Slave),
    );
    assert!(eventually(Duration::from_secs(10), || reg.is_registered()));
    assert_eq!(etcd.keys("/kmt-test"), vec![KEY.to_string()]);
    assert!(eventually(Duration::from_secs(10), || discovery.services().len() == 1));

    // A wrong password: never registered.
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let bad = Registration::spawn(
        rt.handle(),
        auth_config(&etcd, 10, &wrong),
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18082", Role::Slave),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!bad.is_registered());
    assert_eq!(etcd.keys("/kmt-test").len(), 1);
    rt.block_on(bad.shutdown(Duration::from_secs(2)));
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    assert!(etcd.keys("/kmt-test").is_empty());
}

/// etcd's tokens expire after `--auth-token-ttl` (2 s here) and die with a
/// restart; the registry authenticates again each time.
#[test]
fn an_expired_token_and_an_etcd_restart_are_survived() {
    let dir = temp("token");
    let mut etcd = Etcd::start_with_auth(&dir, "/kmt-test/", Some(2));
    let auth = etcd.auth.clone().unwrap();
    let rt = runtime();
    let cfg = auth_config(&etcd, 30, &auth.password_file);
    let discovery = Discovery::spawn(rt.handle(), cfg.clone());
    let reg = Registration::spawn(
        rt.handle(),
        cfg.clone(),
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", Role::Slave),
    );
    assert!(eventually(Duration::from_secs(10), || reg.is_registered()));
    assert!(eventually(Duration::from_secs(10), || discovery.services().len() == 1));

    // Idle past the token's life: the revoke at shutdown (a plain call on
    // the old client) must authenticate again, or the key stays 30 s.
    std::thread::sleep(Duration::from_secs(5));
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    assert!(
        etcd.keys("/kmt-test").is_empty(),
        "lease not revoked after the token expired"
    );
    assert!(eventually(Duration::from_secs(5), || discovery
        .services()
        .is_empty()));

    // A restart invalidates every token: register and discover again.
    let reg = Registration::spawn(
        rt.handle(),
        cfg,
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", Role::Slave),
    );
    assert!(eventually(Duration::from_secs(10), || reg.is_registered()));
    etcd.restart(false);
    let (ok, _, err) = etcd.etcdctl_as(
        Some((&auth.user, &auth.password)),
        &[
            "put",
            "/kmt-test/services/kamaitachi-master/localhost:18080",
            r#"{"addr":"localhost:18080","role":"master","started_at":1}"#,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        eventually(Duration::from_secs(20), || discovery.services().len() == 2),
        "discovery did not come back after an etcd restart: {:?}",
        discovery.services()
    );
    std::thread::sleep(Duration::from_secs(5));
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    assert_eq!(
        etcd.keys("/kmt-test").len(),
        1,
        "lease not revoked after a restart"
    );
    assert!(cluster::registry::reconnects() > 0);
}

/// etcd serving TLS only and requiring a client certificate; the CA, server
/// and client certificates are made here with openssl.
#[test]
fn tls_with_a_client_certificate() {
    use std::process::{Command, Stdio};
    let dir = temp("tls");
    let sh = |script: &str| {
        let out = Command::new("bash")
            .args(["-c", script])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=kmt-test-ca");
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} && \
             printf '{ext}\\n' > {name}.ext && \
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile {name}.ext"
        ));
    }
    let port = kamaitachi_testkit::free_port();
    let peer = kamaitachi_testkit::free_port();
    let client_url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(
        Command::new("etcd")
            .current_dir(&dir)
            .args(["--name", "tls", "--data-dir", "data"])
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .args(["--cert-file", "server.pem", "--key-file", "server.key"])
            .args(["--trusted-ca-file", "ca.pem", "--client-cert-auth"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .current_dir(&dir)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &client_url,
                "--cacert",
                "ca.pem",
                "--cert",
                "client.pem",
            ])
            .args(["--key", "client.key", "--dial-timeout", "1s"])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert!(
        eventually(Duration::from_secs(20), || etcdctl(&["endpoint", "health"])
            .is_some()),
        "TLS etcd did not start: {}",
        std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
    );
    let config = |keys: &str| {
        let ini = IniFile::parse(
            "tls.ini",
            &format!("[etcd]\nendpoints = 127.0.0.1:{port}\nprefix = /kmt-test\nttl = 5\n{keys}",),
        )
        .unwrap();
        EtcdConfig::from_ini(&ini).unwrap()
    };
    let p = |f: &str| dir.join(f).display().to_string();
    let rt = runtime();
    // Without a client certificate etcd refuses the handshake.
    let refused = Registration::spawn(
        rt.handle(),
        config(&format!("ca_file = {}\n", p("ca.pem"))),
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18082", Role::Slave),
    );
    let cfg = config(&format!(
        "ca_file = {}\ncert_file = {}\nkey_file = {}\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    ));
    assert_eq!(cfg.endpoints, vec![client_url.clone()]);
    let discovery = Discovery::spawn(rt.handle(), cfg.clone());
    let reg = Registration::spawn(
        rt.handle(),
        cfg,
        "kamaitachi-slave",
        ServiceInfo::new("localhost:18081", Role::Slave),
    );
    assert!(eventually(Duration::from_secs(10), || reg.is_registered()));
    assert!(eventually(Duration::from_secs(10), || discovery.services().len() == 1));
    let keys = etcdctl(&["get", "--prefix", "--keys-only", "/kmt-test"]).unwrap_or_default();
    assert!(keys.contains(KEY), "{keys}");
    assert!(!refused.is_registered());
    rt.block_on(reg.shutdown(Duration::from_secs(3)));
    rt.block_on(refused.shutdown(Duration::from_secs(1)));
}
