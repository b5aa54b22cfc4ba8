//! Replication delay of slave nodes (`--follow`): one polling task per
//! follower reads `GET {follower}/health` every 5 ms from before the first
//! write until the follower has applied the last acknowledged batch or 10 s
//! after the last write, and records when each `applied_seq` was first seen.
//! A batch's delay is (first time the follower showed `applied_seq >= seq`)
//! − (time the master's answer to the batch arrived), at the resolution of
//! the polling (5 ms plus a /health round trip); a follower that applied the
//! batch before its answer reached the bench counts 0. Batches never seen
//! within the window are "not replicated".

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::report::{histogram, record_micros};
use crate::stats::error_chain;
use crate::writer::Ack;

/// Path of the health route, relative to a node's base URL.
pub const HEALTH_PATH: &str = "/health";
/// Time between two polls of a follower.
pub const POLL_EVERY: Duration = Duration::from_millis(5);
/// Longest wait for the followers after the last write.
pub const GRACE: Duration = Duration::from_secs(10);
/// Longest a single poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Told to the polling tasks once the writes are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// Stop once this seq is applied (the highest acknowledged; 0 when
    /// nothing was acknowledged).
    pub seq: u64,
    /// Stop at this moment whatever was applied.
    pub until: Instant,
}

/// What one polling task saw.
#[derive(Debug, Clone)]
pub struct Watch {
    pub url: String,
    /// (first time seen, applied_seq), each seq larger than the one before.
    pub seen: Vec<(Instant, u64)>,
    pub polls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Watch {
    /// The last applied_seq seen.
    pub fn applied(&self) -> Option<u64> {
        self.seen.last().map(|(_, s)| *s)
    }
}

/// The replication delays of one follower over the acknowledged batches.
#[derive(Debug, Clone)]
pub struct Replication {
    pub watch: Watch,
    /// Delay per replicated batch, in microseconds.
    pub delays: Histogram<u64>,
    pub replicated: u64,
    pub not_replicated: u64,
}

/// Reads `applied_seq` from `{base}/health` once (any HTTP status: a slave
/// still syncing answers 503 with its applied_seq).
pub async fn probe(client: &reqwest::Client, base: &str, timeout: Duration) -> Result<u64, String> {
    let resp = client
        .get(format!("{base}{HEALTH_PATH}"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("applied_seq").and_then(Value::as_u64))
        .ok_or_else(|| {
            format!(
                "HTTP {} without applied_seq (is it a Kamaitachi node?)",
                status.as_u16()
            )
        })
}

/// Polls `{base}/health` every [`POLL_EVERY`] until `stop` says so (or its
/// sender is gone).
pub async fn watch(
    client: reqwest::Client,
    base: String,
    timeout: Duration,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Watch {
    let timeout = timeout.min(POLL_TIMEOUT);
    let mut out = Watch {
        url: base,
        seen: Vec::new(),
        polls: 0,
        errors: 0,
        last_error: None,
    };
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        out.polls += 1;
        match probe(&client, &out.url, timeout).await {
            Ok(seq) => {
                if out.applied().is_none_or(|last| seq > last) {
                    out.seen.push((Instant::now(), seq));
                }
            }
            Err(e) => {
                out.errors += 1;
                out.last_error = Some(e);
            }
        }
        if stop.has_changed().is_err() {
            break;
        }
        if let Some(s) = *stop.borrow_and_update() {
            if out.applied().is_some_and(|a| a >= s.seq) || Instant::now() >= s.until {
                break;
            }
        }
    }
    out
}

/// The delays of the acknowledged batches as seen by one follower.
pub fn replication(watch: Watch, acks: &[Ack]) -> Replication {
    let mut delays = histogram();
    let (mut replicated, mut not_replicated) = (0, 0);
    for ack in acks {
        let first = watch.seen.partition_point(|(_, seq)| *seq < ack.seq);
        match watch.seen.get(first) {
            Some((at, _)) => {
                record_micros(&mut delays, at.saturating_duration_since(ack.at));
                replicated += 1;
            }
            None => not_replicated += 1,
        }
    }
    Replication {
        watch,
        delays,
        replicated,
        not_replicated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Latency;

    #[test]
    fn delays_from_first_sightings() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let watch = Watch {
            url: "http://127.0.0.1:1".into(),
            seen: vec![(ms(0), 10), (ms(30), 12), (ms(55), 13), (ms(90), 20)],
            polls: 20,
            errors: 0,
            last_error: None,
        };
        let ack = |seq, at| Ack {
            seq,
            at: ms(at),
            written: 1,
        };
        // 11 and 12 first seen at 30 ms, 13 at 55, 15 at 90; 21 never; 10
        // was applied before its answer arrived.
        let acks = [
            ack(11, 10),
            ack(12, 20),
            ack(13, 25),
            ack(15, 50),
            ack(21, 60),
            ack(10, 5),
        ];
        let r = replication(watch, &acks);
        assert_eq!((r.replicated, r.not_replicated), (5, 1));
        let l = Latency::of(&r.delays).expect("delays");
        assert!((l.max - 40.0).abs() < 0.1, "{l:?}");
        assert!((l.p50 - 20.0).abs() < 0.1, "{l:?}");
        assert_eq!(r.watch.applied(), Some(20));
    }
}
