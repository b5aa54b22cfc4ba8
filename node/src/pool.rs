//! Dedicated OS threads that take jobs from coroutines.
//!
//! A may coroutine must not block or run long on its worker thread: every
//! socket bound to that worker waits meanwhile. Work that blocks (SQLite) or
//! runs for milliseconds (a query over thousands of subjects) is handed to a
//! [`WorkerPool`]; the coroutine waits on a may channel, which yields instead
//! of blocking. Each thread owns a state `S` (e.g. its SQLite connection).
//! Create pools in `main` before the first coroutine, so may's core pinning
//! does not catch their threads.

use crossbeam_channel::Sender;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// The pool's threads are gone (the process is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("worker threads are gone")]
pub struct PoolGone;

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

impl<S: Send + 'static> WorkerPool<S> {
    /// One thread per state, named `{name}-{n}`.
    pub fn start(name: &str, states: Vec<S>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job<S>>();
        let threads = states.len();
        for (n, mut state) in states.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job(&mut state);
                    }
                })?;
        }
        Ok(WorkerPool { jobs: tx, threads })
    }

    /// Number of threads (jobs that can run at once).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread and waits for its result. From a coroutine
    /// the wait yields; from a plain thread it blocks.
    pub fn call<R, F>(&self, f: F) -> Result<R, PoolGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        self.submit(f)?.recv().map_err(|_| PoolGone)
    }

    /// Queues `f` and returns at once; its result arrives on the returned
    /// may channel (so several jobs can run on several threads while the
    /// caller waits for all of them).
    pub fn submit<R, F>(&self, f: F) -> Result<may::sync::mpsc::Receiver<R>, PoolGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let (tx, rx) = may::sync::mpsc::channel();
        let job: Job<S> = Box::new(move |state| {
            let _ = tx.send(f(state));
        });
        self.jobs.send(job).map_err(|_| PoolGone)?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_with_their_state() {
        let pool = WorkerPool::start("test", vec![10u32, 20u32]).unwrap();
        let mut seen: Vec<u32> = (0..50).map(|_| pool.call(|s: &mut u32| *s).unwrap()).collect();
        seen.sort();
        seen.dedup();
        assert!(seen.iter().all(|s| *s == 10 || *s == 20));
        let name = pool
            .call(|_| std::thread::current().name().map(str::to_string))
            .unwrap();
        assert!(name.unwrap().starts_with("test-"));
    }
}
