//! Feeds registry changes into pingora's load balancer as they happen.
//!
//! [`cluster::Discovery`] keeps the live set current from an etcd watch and
//! ticks a `tokio::sync::watch` channel on every change of it. This
//! background service waits on that channel and rebuilds the backend set
//! (`LoadBalancer::update`, which calls `NodeDiscovery::discover`) at once,
//! so a node that joins or leaves the registry reaches the gateway without
//! a polling delay (it used to be polled every 200 ms).
//!
//! Design: after pingora's own first update at start (this service depends
//! on the load balancer's, which is ready only once that update is done;
//! its `update_frequency` is `None`), this is the only caller of
//! `update()`, so two rebuilds never race and store an older set over a
//! newer one. A slow [`SAFETY_NET_REFRESH`] rebuilds anyway, for what no
//! registry change announces: a host name that did not resolve and now
//! does, and the static list when there is no registry at all.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::selection::Consistent;
use pingora::lb::LoadBalancer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

/// The rebuild with no change announced: slow, it only catches host names
/// that start resolving (and keeps a static-only gateway's set fresh).
pub const SAFETY_NET_REFRESH: Duration = Duration::from_secs(5);

pub struct DiscoveryFeed {
    pub lb: Arc<LoadBalancer<Consistent>>,
    /// [`cluster::Discovery::changes`]; `None` with the static list only.
    pub changes: Option<watch::Receiver<u64>>,
}

#[async_trait]
impl BackgroundService for DiscoveryFeed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.changes.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let changed = async {
                match changes.as_mut() {
                    // A closed channel (the discovery task is gone, which it
                    // never is while the process runs) leaves the safety net.
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            changes = None;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(SAFETY_NET_REFRESH) => {}
                // Shutdown, or its sender gone (the server is going away).
                r = shutdown.changed() => match r {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            }
            if let Err(e) = self.lb.update().await {
                tracing::warn!("updating the node set failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pingora::lb::discovery::ServiceDiscovery;
    use pingora::lb::{Backend, Backends};

    use super::*;

    /// Counts the rebuilds.
    struct Counting(Arc<AtomicUsize>);

    #[async_trait]
    impl ServiceDiscovery for Counting {
        async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok((BTreeSet::new(), HashMap::new()))
        }
    }

    #[tokio::test]
    async fn a_change_rebuilds_at_once_and_shutdown_stops_it() {
        let rebuilds = Arc::new(AtomicUsize::new(0));
        let lb = Arc::new(LoadBalancer::<Consistent>::from_backends(Backends::new(
            Box::new(Counting(rebuilds.clone())),
        )));
        let (changes, rx) = watch::channel(0u64);
        let (stop, shutdown) = watch::channel(false);
        let feed = DiscoveryFeed {
            lb,
            changes: Some(rx),
        };
        let task = tokio::spawn(async move { feed.start(shutdown).await });
        for n in 1..=3 {
            changes.send_modify(|v| *v += 1);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while rebuilds.load(Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "change {n} not pushed well before the {SAFETY_NET_REFRESH:?} safety net"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let _ = stop.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(ended.is_ok(), "the feed ignored shutdown");
    }
}
