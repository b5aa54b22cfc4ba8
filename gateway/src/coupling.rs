//! Numbers that tie the gateway to another process's settings.
//!
//! Each of these is only right relative to a number that lives elsewhere
//! (a node's config default, etcd's lease, the health checker's period),
//! and nothing but this comment keeps the two in step. They are gathered
//! here, each with the rule it must keep and why, so a change to one side
//! finds the other. Numbers that only concern the gateway itself (linger
//! bounds, pool sizes) stay beside the code that uses them.

use std::time::Duration;

/// How long an idle keep-alive connection to a node is kept for reuse,
/// on both paths: the read path's pool (`upstream_pool.rs`) and pingora's
/// upstream peers (`proxy.rs`).
///
/// Must stay **below the nodes' idle timeout** (`[limits]
/// idle_timeout_secs`, default 60 s, `node/src/http.rs`): a connection the
/// node has already closed would otherwise be picked from the pool, fail
/// on first use and cost a retry (the read path retries a stale pooled
/// connection once, but a node that closed many at once would see them
/// all fail together). The 10 s margin covers a node whose clock for the
/// idle timer started before the gateway's (the answer's last byte).
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(50);

/// How long one active health check (`GET /health` on a node) may take
/// before the node counts as down.
///
/// Must stay **at or below the health check period** (`[gateway]
/// health_interval_ms`, default 1000 ms) so one round of checks ends before
/// the next starts, and far **below the etcd lease ttl** (`[etcd] ttl`,
/// default 10 s) so a node that hangs is taken off the ring by the health
/// checks (within about period + this) long before its registry entry
/// expires. A node answers `/health` from memory, well within it.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the stats and cache-reset fan-outs (`own_routes.rs`) wait for
/// each node.
///
/// Must stay **above a node's `/stats` and `/cache/reset` time** under load
/// (both answer from memory) and **below the gateway's upstream read
/// timeout** (`[gateway] read_timeout_ms`, default 5 s), so one hung node
/// cannot make the cluster-wide answer wait longer than a proxied request
/// may: it shows as that node's error instead.
pub const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(2);
