//! What version of the data this node holds, what of it is acknowledged,
//! and whether it may serve.
//!
//! Shared by the HTTP routes (`/health`, `/stats`, `/metrics`), the writer
//! (`storage/writer.rs`, the only one that advances the version), the query
//! engine (which waits on the horizon) and the follower. Plain atomics:
//! read on every health check, written once per applied change.
//!
//! The **acknowledged horizon** H (docs/WRITE_PROTOCOL.md, V1) is derived
//! here and nowhere else: H = min(applied, known acknowledged), where the
//! known acknowledged position is the leader's own fences (on the leader)
//! or the `acked` of the leader's last answer (on a follower), raised with
//! [`DataState::set_acked`]. Without an election (a static master) H
//! follows the applied version ([`DataState::set_follows_applied`]). H
//! never goes down; when it moves, the changes it passes leave the
//! [`Pending`] set and the waiters wake.
//!
//! Three waits hang on it — the change feed's long-poll ("until the version
//! passes S or the horizon passes A, at most W"), a read of a pending
//! subject ("until the horizon reaches S, at most 1 s") and registration
//! ("until ready") — so every change of the version, the horizon or of
//! readiness wakes the waiters. A waiter registers a
//! one-shot `may::sync::mpsc` channel and blocks on it: in a coroutine that
//! parks the coroutine, not its worker thread (PITFALLS: may), and a plain
//! thread (the registration thread) can wait the same way. The bound on a
//! wait is a timer coroutine (`may::coroutine::sleep`, then a send on the
//! same channel), not a timed park: may's `Condvar::wait_timeout` and
//! `mpsc::Receiver::recv_timeout` were both tried first and, inside a
//! coroutine, did not come back (a 30 ms `wait_timeout` and a 1 ms
//! `recv_timeout` each hung for over a minute in the tests below), while an untimed `recv` woken by a send is what the
//! query engine's cold-load flights already rely on. The list's `std` mutex is held only to push, remove or take
//! senders — never across a yield. A waiter registers and then checks again,
//! so a change between its first check and its registration is not missed.
//! Nothing on the cache-hit path touches any of this.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use may::sync::mpsc;

use crate::storage::horizon::Pending;

#[derive(Default)]
pub struct DataState {
    /// Sequence of the last change applied (the data version).
    pub applied_seq: AtomicU64,
    /// Latest sequence the master reported (the master's own on a master).
    pub master_seq: AtomicU64,
    pub dataset_id: AtomicU64,
    /// Report rows in the database.
    pub total_records: AtomicI64,
    /// The acknowledged horizon H (docs/WRITE_PROTOCOL.md, V1): reads see
    /// nothing above it. Derived by [`DataState::refresh_horizon`].
    acked_seq: AtomicU64,
    /// The history's generation, a sequence lock: odd while the database
    /// is being replaced by an image, one more once it is. A read that
    /// began in another generation (or during a replacement) may have read
    /// a history that was just discarded: it is not answered.
    history: AtomicU64,
    /// The highest change known to be acknowledged: the leader's own
    /// fences, or the `acked` of the leader's last answer.
    known_acked: AtomicU64,
    /// No election (a static master): H follows the applied version.
    follows_applied: AtomicBool,
    /// The changes above H and what they touch (V2).
    pub pending: Pending,
    /// Why the follower refuses the leader's image (F3), for `/health`.
    refused: Mutex<Option<String>>,
    /// False while starting (a slave: until its first sync) and stopping.
    /// Set through [`DataState::set_ready`], which wakes the waiters.
    ready: AtomicBool,
    /// The master a slave follows, as last located.
    pub master_addr: Mutex<Option<String>>,
    /// Who waits for the next change (see the module comment), by id.
    waiters: Mutex<Vec<(u64, mpsc::Sender<()>)>>,
    next_waiter: AtomicU64,
}

impl DataState {
    pub fn applied(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// The history's generation (see the field): even while stable.
    pub fn history_generation(&self) -> u64 {
        self.history.load(Ordering::Acquire)
    }

    /// The database is about to be replaced (the generation turns odd).
    pub fn replacing_history(&self) {
        self.history.fetch_add(1, Ordering::AcqRel);
    }

    /// The database was replaced (or the replacement failed) and what sits
    /// on it (caches, catalog) follows it: the generation turns even.
    pub fn history_replaced(&self) {
        self.history.fetch_add(1, Ordering::AcqRel);
    }

    /// The acknowledged horizon H (V1).
    pub fn acked(&self) -> u64 {
        self.acked_seq.load(Ordering::Acquire)
    }

    /// The highest change known to be acknowledged (may be above the
    /// applied version on a follower).
    pub fn known_acked(&self) -> u64 {
        self.known_acked.load(Ordering::Acquire)
    }

    /// Change `seq` is known to be acknowledged (the leader's fence, its
    /// baseline, or the `acked` of the leader's answer): raises the known
    /// position and with it H, and wakes the waiters if H moved.
    pub fn set_acked(&self, seq: u64) {
        self.known_acked.fetch_max(seq, Ordering::AcqRel);
        self.refresh_horizon();
    }

    /// Without an election H follows the applied version (nothing is ever
    /// pending).
    pub fn set_follows_applied(&self, follows: bool) {
        self.follows_applied.store(follows, Ordering::Release);
        self.refresh_horizon();
    }

    pub fn follows_applied(&self) -> bool {
        self.follows_applied.load(Ordering::Acquire)
    }

    /// Whether change `seq`, about to be applied, is visible at once (it
    /// is known acknowledged, or there is no election): not listed as
    /// pending.
    pub fn visible_on_apply(&self, seq: u64) -> bool {
        self.follows_applied() || seq <= self.known_acked()
    }

    /// H = min(applied, known acknowledged) (applied alone without an
    /// election), never lowered; the changes it passes leave the pending
    /// set and the waiters wake. Called whenever either input moves.
    pub fn refresh_horizon(&self) {
        let applied = self.applied();
        let h = if self.follows_applied() {
            applied
        } else {
            applied.min(self.known_acked())
        };
        if self.acked_seq.fetch_max(h, Ordering::AcqRel) < h {
            self.pending.prune(h);
            self.notify();
        }
    }

    /// Why the follower refuses the leader's image, if it does.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// Records (or clears) why the follower refuses the leader's image.
    pub fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    pub fn lag(&self) -> u64 {
        self.master_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.applied())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn master_addr(&self) -> Option<String> {
        self.master_addr.lock().ok().and_then(|m| m.clone())
    }

    /// Marks the node ready (or not) and wakes whoever waits for it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.notify();
    }

    /// Wakes every waiter: the version or readiness changed. Called after
    /// the atomics are stored, so a woken waiter sees the new values.
    pub fn notify(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, waiter) in waiters {
            // A waiter that timed out meanwhile is gone: nothing to wake.
            let _ = waiter.send(());
        }
    }

    /// The change feed's long-poll: waits until the applied version passes
    /// `seq`, or the horizon passes `acked` (what the follower knows of
    /// it), at most `wait`. Returns at once if either already has.
    pub fn wait_for_poll(&self, seq: u64, acked: Option<u64>, wait: Duration) {
        let deadline = Instant::now() + wait;
        self.wait_until(
            || self.applied() > seq || acked.is_some_and(|a| self.acked() > a),
            Some(deadline),
        );
    }

    /// Waits until the horizon reaches `seq`, at most until `deadline`.
    pub fn wait_acked(&self, seq: u64, deadline: Instant) {
        self.wait_until(|| self.acked() >= seq, Some(deadline));
    }

    /// Waits until the node is ready.
    pub fn wait_ready(&self) {
        self.wait_until(|| self.is_ready(), None);
    }

    fn wait_until(&self, done: impl Fn() -> bool, deadline: Option<Instant>) {
        while !done() {
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return,
                    left => Some(left),
                },
            };
            let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            if let Some(left) = left {
                // The deadline is a second sender: a timer coroutine that
                // sleeps (may's sleep parks it, not a thread) and then
                // wakes this waiter. Not `recv_timeout`: see the module
                // comment.
                let timer = tx.clone();
                // SAFETY: the coroutine owns what it captures (a sender and
                // a duration), uses no thread-local state and holds no lock.
                let spawned = unsafe {
                    may::coroutine::Builder::new().spawn(move || {
                        may::coroutine::sleep(left);
                        let _ = timer.send(());
                    })
                };
                if spawned.is_err() {
                    // No timer, no bounded wait: answer now, as a zero wait
                    // does; the caller asks again.
                    return;
                }
            }
            self.waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((id, tx));
            if !done() {
                // Woken by a change or by the timer; the loop tells which.
                let _ = rx.recv();
            }
            // Off the list, or waits that never see a change would pile up
            // on an idle master (a no-op when `notify` took it already).
            self.forget_waiter(id);
        }
    }

    fn forget_waiter(&self, id: u64) {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(w, _)| *w != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_wakes_on_the_change_not_at_its_deadline() {
        let state = Arc::new(DataState::default());
        let writer = state.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.applied_seq.store(3, Ordering::Release);
            writer.notify();
        });
        let started = Instant::now();
        state.wait_for_poll(2, None, Duration::from_secs(10));
        assert_eq!(state.applied(), 3);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woke late: {:?}",
            started.elapsed()
        );
        t.join().expect("writer thread");
    }

    #[test]
    fn a_wait_is_bounded_and_returns_at_once_when_already_past() {
        let state = DataState::default();
        let started = Instant::now();
        state.wait_for_poll(0, None, Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        state.applied_seq.store(5, Ordering::Release);
        let started = Instant::now();
        state.wait_for_poll(4, None, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_horizon_is_the_smaller_of_applied_and_known_acknowledged() {
        let state = DataState::default();
        state.applied_seq.store(10, Ordering::Release);
        state.pending.add(9, ["a:1"]);
        state.pending.add(10, ["b:1"]);
        state.set_acked(8);
        assert_eq!((state.acked(), state.known_acked()), (8, 8));
        // A follower learns of an acknowledgment beyond what it applied.
        state.set_acked(15);
        assert_eq!(state.acked(), 10, "H never passes the applied version");
        assert!(state.pending.is_empty(), "changes 9 and 10 are visible now");
        state.applied_seq.store(12, Ordering::Release);
        state.refresh_horizon();
        assert_eq!(state.acked(), 12);
        assert!(state.visible_on_apply(15) && !state.visible_on_apply(16));
        // Never lowered.
        state.applied_seq.store(11, Ordering::Release);
        state.refresh_horizon();
        assert_eq!(state.acked(), 12);
    }

    #[test]
    fn without_an_election_the_horizon_follows_applied() {
        let state = DataState::default();
        state.set_follows_applied(true);
        assert!(state.visible_on_apply(1_000));
        state.applied_seq.store(4, Ordering::Release);
        state.refresh_horizon();
        assert_eq!(state.acked(), 4);
    }

    #[test]
    fn a_poll_returns_when_the_horizon_passes_what_the_follower_knows() {
        let state = Arc::new(DataState::default());
        state.applied_seq.store(5, Ordering::Release);
        state.set_acked(4);
        let leader = state.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            leader.set_acked(5);
        });
        let started = Instant::now();
        // The follower has applied 5 and knows of 4: no new change, but
        // the horizon moves to 5.
        state.wait_for_poll(5, Some(4), Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5), "woke late");
        assert_eq!(state.acked(), 5);
        t.join().expect("leader thread");
        // Without `acked` only a new change ends the wait.
        let started = Instant::now();
        state.wait_for_poll(5, None, Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn readiness_wakes_its_waiter() {
        let state = Arc::new(DataState::default());
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || state.wait_ready())
        };
        std::thread::sleep(Duration::from_millis(20));
        state.set_ready(true);
        waiter.join().expect("waiter thread");
        assert!(state.is_ready());
    }

    #[test]
    fn a_coroutine_wait_is_bounded() {
        let state = Arc::new(DataState::default());
        let waiter = state.clone();
        let started = Instant::now();
        // SAFETY: the coroutine touches only `Arc`-shared state and returns.
        let h = unsafe {
            may::coroutine::spawn(move || waiter.wait_for_poll(0, None, Duration::from_millis(30)))
        };
        h.join().expect("coroutine");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(
            state.waiters.lock().is_ok_and(|w| w.is_empty()),
            "a timed-out waiter stays listed"
        );
    }

    #[test]
    fn short_coroutine_waits_return() {
        for ms in [1, 2, 3, 0] {
            let state = Arc::new(DataState::default());
            let waiter = state.clone();
            // SAFETY: the coroutine touches only `Arc`-shared state and returns.
            let h = unsafe {
                may::coroutine::spawn(move || waiter.wait_for_poll(0, None, Duration::from_millis(ms)))
            };
            h.join().expect("coroutine");
        }
    }

    #[test]
    fn a_coroutine_wakes_on_the_change() {
        let state = Arc::new(DataState::default());
        let waiter = state.clone();
        let started = Instant::now();
        // SAFETY: the coroutine touches only `Arc`-shared state and returns.
        let h =
            unsafe { may::coroutine::spawn(move || waiter.wait_for_poll(0, None, Duration::from_secs(10))) };
        std::thread::sleep(Duration::from_millis(30));
        state.applied_seq.store(1, Ordering::Release);
        state.notify();
        h.join().expect("coroutine");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woke late: {:?}",
            started.elapsed()
        );
    }
}
