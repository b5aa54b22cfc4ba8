//! The failover policy, written once for both paths a proxied request can
//! take: the read path (`read_path/`, which drives its own attempts) and
//! pingora's proxy (`proxy.rs`, whose `ProxyHttp` hooks are called by
//! pingora's attempt loop and only supply policy, as pingora intends).
//!
//! One request's failover, in the order it happens:
//! 1. **Pick** ([`Failover::pick`]): the key's node on the ring for a read,
//!    the master for a write, skipping the nodes this request already tried
//!    ([`Tries`]); every pick after the first counts as a retry in the
//!    metrics.
//! 2. **Attempt**: the path sends the request (the read path itself, or
//!    pingora).
//! 3. **Answered** ([`Failover::answered`]): a 500, 502, 503 or 504 from a
//!    node is relayed as it is, and ejects the node (`[gateway] eject_ms`).
//! 4. **Failed** ([`Failover::failed`]): the failure is classified
//!    ([`Failure`]) and the policy decides whether the node is ejected and
//!    whether the request goes to the next node ([`Retry`]), at most
//!    `max_tries` nodes.
//! 5. **Gave up** ([`Failover::give_up`], [`Unanswered`]): no node left is
//!    a 503 ("no healthy node", "no healthy master", "every node tried
//!    failed"), a timeout a 504, any other failure a 502, each as the
//!    gateway's JSON error.
//!
//! The error that carries a failure's source and its retry decision is, on
//! pingora's path, pingora's own `Error` (its `esource` and `retry`, which
//! the hooks set from [`Retry`]); on the read path the attempt's
//! `UpstreamError` is the source and [`Failover::failed`]'s [`Retry`] is
//! the decision, kept side by side rather than boxed into one error per
//! failed attempt. The policy is a borrowed view ([`Failover`]) over the
//! shared `Upstreams` and `Metrics`, made per call on the stack and used
//! through plain (static) calls: the read path is the hot path and this
//! adds no allocation, lock or dynamic call to it.

use std::fmt::Display;

use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{ErrorSource, ErrorType};

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::upstreams::Upstreams;

/// Which nodes may answer a request.
#[derive(Debug, Clone, Copy)]
pub enum Target<'k> {
    /// A read: the node of this routing key on the ring, then the next
    /// ones (round robin without a key).
    Read(Option<&'k [u8]>),
    /// A write or an admin call: the master only.
    Master,
}

/// The nodes one request has been sent to, in order; the last is the one
/// it is at now, and how often it was sent to the same node again because
/// a pooled connection had gone stale. A connection reuses one for all
/// its requests (`clear` keeps the allocation).
#[derive(Debug, Default)]
pub struct Tries(Vec<SocketAddr>, u8);

/// How often one request may be sent to the same node again after a
/// pooled connection to it failed (pingora may hand out another pooled
/// one, stale too, before a fresh one): more says the node is in trouble.
pub const MAX_STALE_RETRIES: u8 = 2;

impl Tries {
    pub fn clear(&mut self) {
        self.0.clear();
        self.1 = 0;
    }

    /// Whether the request may still go to the same node again.
    fn stale_retry_left(&self) -> bool {
        self.1 < MAX_STALE_RETRIES
    }

    /// The node tried last may be picked again (counted).
    fn again(&mut self) {
        self.0.pop();
        self.1 += 1;
    }

    /// How many nodes were tried.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The node tried last (the one answering, once an answer came).
    pub fn last(&self) -> Option<&SocketAddr> {
        self.0.last()
    }
}

/// How an attempt at a node failed, in the terms the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Only the node can explain it: a connect failure (nothing was sent,
    /// so any request may go elsewhere), or, on the read path, a failure
    /// after a stale pooled connection was already ruled out (retried on a
    /// fresh one). The node is ejected; the request tries the next node.
    Node,
    /// Pingora's proxy failed mid-request.
    MidProxy {
        /// On a pooled connection, which may just have gone stale (closed
        /// by the node as it was reused): not the node's fault for sure,
        /// so it is not ejected, and a request that may be sent again goes
        /// to the same node on another connection.
        reused: bool,
        /// The request can be sent again whole (no body, or a body held
        /// whole in the retry buffer) and nothing of its answer went
        /// downstream.
        replayable: bool,
        /// The request is a read.
        read: bool,
        /// Its method is idempotent.
        idempotent: bool,
    },
}

impl Failure {
    /// The policy's decision, as `(eject the node, retry)`, given whether
    /// the request may go to one more node (`max_tries`) and to the same
    /// node once more ([`MAX_STALE_RETRIES`]).
    pub fn decide(self, tries_left: bool, stale_retry_left: bool) -> (bool, Retry) {
        match self {
            Failure::Node => (true, if tries_left { Retry::NextNode } else { Retry::No }),
            Failure::MidProxy {
                reused,
                replayable,
                read,
                idempotent,
            } => {
                // A read or an idempotent request that can be sent again
                // whole (pingora's own rule for a stale pooled connection).
                if reused && replayable && (read || idempotent) && stale_retry_left {
                    (false, Retry::SameNode)
                } else if read && replayable && tries_left {
                    // A fresh connection failed (or stale ones kept
                    // failing): the node is in trouble.
                    (!reused, Retry::NextNode)
                } else {
                    (false, Retry::No)
                }
            }
        }
    }
}

/// Whether the request is sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// To the next node (a new pick).
    NextNode,
    /// Not at all: the failure is answered.
    No,
    /// To the same node, on another connection: the pooled one it was
    /// sent on had gone stale, which says nothing about the node. (With
    /// one node, or the last one, sending it elsewhere was a 503.)
    SameNode,
}

/// Why a request got no answer from any node: how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// No node was left to try: 503.
    NoNode,
    /// The last node tried timed out: 504.
    TimedOut,
    /// The last node tried failed otherwise: 502.
    Failed,
}

impl Unanswered {
    /// The gateway's error answer, with `detail` saying what happened.
    pub fn answer(self, detail: String) -> GatewayError {
        match self {
            Unanswered::NoNode => GatewayError::NoUpstream(detail),
            Unanswered::TimedOut => GatewayError::GatewayTimeout(detail),
            Unanswered::Failed => GatewayError::BadGateway(detail),
        }
    }

    /// How pingora's error ends a request; `None` when the client's side
    /// failed (nothing to answer, nobody to answer to).
    pub fn of_pingora(e: &pingora::Error) -> Option<Self> {
        match e.etype() {
            ErrorType::HTTPStatus(503) => Some(Unanswered::NoNode),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(Unanswered::TimedOut)
            }
            _ => match e.esource() {
                ErrorSource::Downstream => None,
                _ => Some(Unanswered::Failed),
            },
        }
    }
}

/// A failed attempt's source, as the read path keeps it: its message goes
/// into the error answer, its class decides the status.
pub trait Cause: Display {
    fn class(&self) -> Unanswered;
}

/// Whether a node's answer with this status ejects it (the answer itself
/// is still relayed: the node did answer). A 503 with `Retry-After`
/// (`retry_later`) is a node saying the answer is not ready yet (a read
/// waiting on an unacknowledged change), not that it is unwell.
pub fn ejects(status: u16, retry_later: bool) -> bool {
    match status {
        503 => !retry_later,
        500 | 502 | 504 => true,
        _ => false,
    }
}

/// The policy, over the shared node set and metrics (see the module
/// comment).
#[derive(Clone, Copy)]
pub struct Failover<'a> {
    pub upstreams: &'a Upstreams,
    pub metrics: &'a Metrics,
    /// Most nodes one request is sent to (`[gateway] max_tries`).
    pub max_tries: usize,
}

impl Failover<'_> {
    /// Whether the request may be sent to one more node.
    pub fn tries_left(&self, tries: &Tries) -> bool {
        tries.count() < self.max_tries
    }

    /// The next node for the request, recorded in `tries`; `None` when no
    /// healthy node is left that it has not tried.
    pub fn pick(&self, target: Target<'_>, tries: &mut Tries) -> Option<Backend> {
        let backend = match target {
            Target::Read(key) => self.upstreams.pick_read(key, &tries.0),
            Target::Master => self.upstreams.pick_master(&tries.0),
        }?;
        if tries.count() > 0 {
            self.metrics.retried();
        }
        tries.0.push(backend.addr.clone());
        Some(backend)
    }

    /// Why [`Failover::pick`] found no node.
    pub fn no_node(target: Target<'_>, tries: &Tries) -> &'static str {
        match (target, tries.count()) {
            (Target::Master, 0) => "no healthy master",
            (_, 0) => "no healthy node",
            _ => "every node tried failed",
        }
    }

    /// The node tried last answered with `status` (and `Retry-After`, when
    /// `retry_later`).
    pub fn answered(&self, tries: &Tries, status: u16, retry_later: bool) {
        if ejects(status, retry_later) {
            if let Some(addr) = tries.last() {
                self.upstreams.eject(addr);
            }
        }
    }

    /// The attempt at `addr` failed as `failure`: ejects the node when
    /// [`Failure::decide`] says so, and says whether the request is sent
    /// again.
    pub fn failed(&self, addr: &SocketAddr, failure: Failure, tries: &mut Tries) -> Retry {
        let (eject, retry) = failure.decide(self.tries_left(tries), tries.stale_retry_left());
        if retry == Retry::SameNode {
            tries.again();
        }
        if eject {
            self.upstreams.eject(addr);
        }
        retry
    }

    /// The answer when the request ends without one from a node: the last
    /// failure's, or "no node" when there was none.
    pub fn give_up<C: Cause>(target: Target<'_>, tries: &Tries, last: Option<&C>) -> GatewayError {
        match last {
            None => Unanswered::NoNode.answer(Self::no_node(target, tries).into()),
            Some(cause) => cause.class().answer(cause.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_eject() {
        for s in [500, 502, 503, 504] {
            assert!(ejects(s, false), "{s}");
        }
        assert!(!ejects(503, true), "a 503 with Retry-After: the node is well");
        assert!(ejects(500, true));
        for s in [200, 404, 429, 501, 505] {
            assert!(!ejects(s, false), "{s}");
        }
    }

    #[test]
    fn no_node_messages() {
        let mut tries = Tries::default();
        assert_eq!(Failover::no_node(Target::Master, &tries), "no healthy master");
        assert_eq!(Failover::no_node(Target::Read(None), &tries), "no healthy node");
        tries
            .0
            .push(SocketAddr::Inet("127.0.0.1:1".parse().expect("an address")));
        for t in [Target::Master, Target::Read(Some(b"k"))] {
            assert_eq!(Failover::no_node(t, &tries), "every node tried failed");
        }
    }

    #[test]
    fn decisions_after_a_failure() {
        use Retry::*;
        // Nothing sent, or known to be the node: eject, next node while
        // tries are left (on the read path, even on the last try).
        assert_eq!(Failure::Node.decide(true, true), (true, NextNode));
        assert_eq!(Failure::Node.decide(false, true), (true, No));
        let mid = |reused, replayable, read, idempotent| Failure::MidProxy {
            reused,
            replayable,
            read,
            idempotent,
        };
        // A replayable read on a fresh connection: the next node, ejected.
        assert_eq!(mid(false, true, true, true).decide(true, true), (true, NextNode));
        // On a pooled connection: the same node again, even on the last
        // try, not ejected; once stale retries are used up, the next node.
        assert_eq!(mid(true, true, true, true).decide(true, true), (false, SameNode));
        assert_eq!(mid(true, true, true, true).decide(false, true), (false, SameNode));
        assert_eq!(mid(true, true, true, true).decide(true, false), (false, NextNode));
        // Out of tries, or not replayable: no retry, no ejection.
        assert_eq!(mid(false, true, true, true).decide(false, true), (false, No));
        assert_eq!(mid(false, false, true, true).decide(true, true), (false, No));
        assert_eq!(mid(true, false, true, true).decide(true, true), (false, No));
        // A write is never sent again; an idempotent non-read only when
        // its pooled connection was stale, to the same node, and only if
        // its body can be sent again.
        assert_eq!(mid(true, true, false, false).decide(true, true), (false, No));
        assert_eq!(mid(true, true, false, true).decide(true, true), (false, SameNode));
        assert_eq!(mid(true, false, false, true).decide(true, true), (false, No));
        assert_eq!(mid(false, true, false, true).decide(true, true), (false, No));
    }

    #[test]
    fn a_stale_pooled_connection_sends_the_request_to_the_same_node_a_bounded_number_of_times() {
        let lb = pingora::lb::LoadBalancer::try_from_iter(["127.0.0.1:1"]).expect("a node set");
        let upstreams = Upstreams::new(std::sync::Arc::new(lb), std::time::Duration::from_secs(1));
        let metrics = Metrics::new().expect("metrics");
        let failover = Failover {
            upstreams: &upstreams,
            metrics: &metrics,
            max_tries: 3,
        };
        let node = SocketAddr::Inet("127.0.0.1:1".parse().expect("an address"));
        let stale = Failure::MidProxy {
            reused: true,
            replayable: true,
            read: true,
            idempotent: true,
        };
        let mut tries = Tries::default();
        for _ in 0..MAX_STALE_RETRIES {
            tries.0.push(node.clone());
            assert_eq!(failover.failed(&node, stale, &mut tries), Retry::SameNode);
            // The node may be picked again.
            assert_eq!(tries.count(), 0);
        }
        tries.0.push(node.clone());
        assert_eq!(failover.failed(&node, stale, &mut tries), Retry::NextNode);
        assert_eq!(tries.count(), 1);
    }

    struct Timeout;
    impl Display for Timeout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("n did not answer in time")
        }
    }
    impl Cause for Timeout {
        fn class(&self) -> Unanswered {
            Unanswered::TimedOut
        }
    }

    #[test]
    fn giving_up_answers_503_504_502() {
        let tries = Tries::default();
        let e = Failover::give_up::<Timeout>(Target::Read(None), &tries, None);
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (503, "no healthy node can answer: no healthy node")
        );
        let e = Failover::give_up(Target::Read(None), &tries, Some(&Timeout));
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (504, "upstream timed out: n did not answer in time")
        );
        assert_eq!(Unanswered::Failed.answer("x".into()).status(), 502);
        let pingora_503 = pingora::Error::explain(ErrorType::HTTPStatus(503), "no healthy node");
        assert_eq!(Unanswered::of_pingora(&pingora_503), Some(Unanswered::NoNode));
        let timed_out = pingora::Error::new(ErrorType::ReadTimedout);
        assert_eq!(Unanswered::of_pingora(&timed_out), Some(Unanswered::TimedOut));
        let client_gone = pingora::Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(Unanswered::of_pingora(&client_gone), None);
        let reset = pingora::Error::new_up(ErrorType::ConnectionClosed);
        assert_eq!(Unanswered::of_pingora(&reset), Some(Unanswered::Failed));
    }
}
