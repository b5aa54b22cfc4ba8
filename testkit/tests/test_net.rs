//! The kit's private test network ([`TestNet`]) on its own: a host reaches
//! the test's address through the bridge, a cut host does not, a healed
//! one does again, and every namespace is removed when the net is dropped
//! — also while a test panics. Needs root and iproute2 (as CI has).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kamaitachi_testkit::{eventually, netns_exists, NetHost, TestNet};

/// Answers `ok` to each HTTP request on `listener` until `stop` (or 60 s).
fn serve_ok(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        listener.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    })
}

fn reaches(host: &NetHost, addr: &str) -> bool {
    host.http(addr, "GET", "/", b"", &[], Duration::from_secs(2))
        .is_ok_and(|r| r.status == 200 && r.body == b"ok")
}

#[test]
fn hosts_reach_the_test_until_cut_and_everything_is_removed() {
    let names = {
        let mut net = TestNet::create();
        let a = net.host("a");
        let b = net.host("b");
        assert_ne!(a.ip, b.ip);
        let listener = TcpListener::bind((net.test_ip(), 0)).expect("bind on the test network");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve_ok(listener, stop.clone());

        assert!(reaches(&a, &addr), "host a cannot reach the test at {addr}");
        assert!(reaches(&b, &addr), "host b cannot reach the test at {addr}");
        // Loopback is the host's own: nothing of the test's is there.
        let port = addr.rsplit(':').next().unwrap_or("0");
        assert!(!reaches(&a, &format!("127.0.0.1:{port}")));

        net.cut(&a);
        assert!(!reaches(&a, &addr), "a cut host still reaches the test");
        assert!(reaches(&b, &addr), "cutting a cut b off too");
        net.heal(&a);
        assert!(
            eventually(Duration::from_secs(10), || reaches(&a, &addr)),
            "a healed host does not reach the test again"
        );
        stop.store(true, Ordering::SeqCst);
        server.join().expect("server");
        let names = net.namespaces();
        for ns in &names {
            assert!(netns_exists(ns), "{ns} missing while the net lives");
        }
        names
    };
    for ns in &names {
        assert!(!netns_exists(ns), "{ns} left behind");
    }

    // A test that panics half-way removes its net too.
    let made = std::sync::Mutex::new(Vec::new());
    let panicked = std::panic::catch_unwind(|| {
        let mut net = TestNet::create();
        net.host("p");
        if let Ok(mut m) = made.lock() {
            *m = net.namespaces();
        }
        panic!("on purpose");
    });
    assert!(panicked.is_err());
    let made = made.into_inner().unwrap_or_default();
    assert_eq!(made.len(), 2, "{made:?}");
    for ns in &made {
        assert!(!netns_exists(ns), "{ns} left behind by a panicking test");
    }
}
