//! Dedicated OS threads that take jobs from coroutines.
//!
//! A may coroutine must not block or run long on its worker thread: every
//! socket bound to that worker waits meanwhile. Work that blocks (SQLite) or
//! runs for milliseconds (a query over thousands of subjects) is handed to a
//! [`WorkerPool`]; the coroutine waits on a may channel, which yields instead
//! of blocking. Each thread owns a state `S` (e.g. its SQLite connection).
//! Create pools in `main` before the first coroutine, so may's core pinning
//! does not catch their threads.
//!
//! A job that panics does not take its thread down silently: the panic is
//! caught, the caller gets [`PoolError::Panicked`] (a 500 for the request),
//! the count in `/metrics` goes up, and the thread is replaced by a new one
//! with a fresh state (a new SQLite connection), so the pool keeps its size.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;
type MakeState<S> = Box<dyn Fn() -> Result<S, String> + Send + Sync>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The pool's threads are gone (the process is stopping).
    #[error("worker threads are gone")]
    Gone,
    /// The job panicked; its thread was replaced.
    #[error("worker thread panicked: {0}")]
    Panicked(String),
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Jobs that panicked, over every pool of the process.
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

pub struct WorkerPool<S> {
    jobs: Sender<Job<S>>,
    threads: usize,
}

impl<S> Clone for WorkerPool<S> {
    fn clone(&self) -> Self {
        WorkerPool {
            jobs: self.jobs.clone(),
            threads: self.threads,
        }
    }
}

struct Shared<S> {
    name: String,
    jobs: Receiver<Job<S>>,
    /// A fresh state for a replacement thread.
    make: MakeState<S>,
}

impl<S: Send + 'static> WorkerPool<S> {
    /// `threads` threads named `{name}-{n}`, each with a state from `make`
    /// (called again for a thread that replaces one whose job panicked).
    pub fn start<F>(name: &str, threads: usize, make: F) -> std::io::Result<Self>
    where
        F: Fn() -> Result<S, String> + Send + Sync + 'static,
    {
        let (tx, rx) = crossbeam_channel::unbounded::<Job<S>>();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            jobs: rx,
            make: Box::new(make),
        });
        let threads = threads.max(1);
        for n in 0..threads {
            let state = (shared.make)().map_err(std::io::Error::other)?;
            spawn_worker(shared.clone(), n, state)?;
        }
        Ok(WorkerPool { jobs: tx, threads })
    }

    /// Number of threads (jobs that can run at once).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread and waits for its result. From a coroutine
    /// the wait yields; from a plain thread it blocks.
    pub fn call<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        self.submit(f)?.recv().map_err(|_| PoolError::Gone)?
    }

    /// Queues `f` and returns at once; its result arrives on the returned
    /// may channel (so several jobs can run on several threads while the
    /// caller waits for all of them).
    pub fn submit<R, F>(&self, f: F) -> Result<may::sync::mpsc::Receiver<Result<R, PoolError>>, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let (tx, rx) = may::sync::mpsc::channel();
        let job: Job<S> = Box::new(move |state| match catch_unwind(AssertUnwindSafe(|| f(state))) {
            Ok(r) => {
                let _ = tx.send(Ok(r));
            }
            Err(payload) => {
                let _ = tx.send(Err(PoolError::Panicked(panic_message(&*payload))));
                // On to the worker loop, which replaces the thread.
                resume_unwind(payload);
            }
        });
        self.jobs.send(job).map_err(|_| PoolError::Gone)?;
        Ok(rx)
    }
}

fn spawn_worker<S: Send + 'static>(shared: Arc<Shared<S>>, n: usize, state: S) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("{}-{n}", shared.name))
        .spawn(move || run_worker(shared, n, state))
        .map(|_| ())
}

fn run_worker<S: Send + 'static>(shared: Arc<Shared<S>>, n: usize, mut state: S) {
    while let Ok(job) = shared.jobs.recv() {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(&mut state))) else {
            continue;
        };
        PANICS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", shared.name);
        tracing::error!(
            "thread {name}: a job panicked ({}); replacing the thread",
            panic_message(&*payload)
        );
        // A fresh state: whatever the panic left half-done is dropped with
        // the old one (an open SQLite transaction rolls back).
        let fresh = match (shared.make)() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("thread {name}: cannot make a fresh state ({e}); keeping the old one");
                state
            }
        };
        match spawn_worker(shared.clone(), n, fresh) {
            Ok(()) => return,
            Err(e) => match (shared.make)() {
                // The spawn consumed the state; go on here with another.
                Ok(s) => {
                    tracing::error!("thread {name}: cannot start a replacement ({e}); going on in this one");
                    state = s;
                }
                Err(e2) => {
                    tracing::error!(
                        "thread {name}: cannot start a replacement ({e}) nor a state ({e2}); exiting"
                    );
                    return;
                }
            },
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_with_their_state() {
        let next = std::sync::atomic::AtomicU32::new(1);
        let pool =
            WorkerPool::start("test", 2, move || Ok(next.fetch_add(1, Ordering::Relaxed) * 10)).unwrap();
        let mut seen: Vec<u32> = (0..50).map(|_| pool.call(|s: &mut u32| *s).unwrap()).collect();
        seen.sort();
        seen.dedup();
        assert!(seen.iter().all(|s| *s == 10 || *s == 20));
        let name = pool
            .call(|_| std::thread::current().name().map(str::to_string))
            .unwrap();
        assert!(name.unwrap().starts_with("test-"));
    }

    #[test]
    fn a_panicking_job_is_reported_and_its_thread_replaced() {
        let pool = WorkerPool::start("panicky", 1, || Ok(())).unwrap();
        for _ in 0..3 {
            let r = pool.call(|_| -> u32 { panic!("boom") });
            assert!(
                matches!(r, Err(PoolError::Panicked(ref m)) if m == "boom"),
                "{r:?}"
            );
            assert_eq!(pool.call(|_| 7).unwrap(), 7);
        }
    }
}
