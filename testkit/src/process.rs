//! One child process of a test (etcd aside): spawned with its stderr in a
//! log file, waited for until it is ready, stopped with SIGTERM or killed,
//! and always killed when dropped — so a failing test leaves no process
//! behind. [`crate::Node`] and [`crate::Gateway`] are this plus what their
//! program needs; a test with a program of its own uses it directly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    /// What it is, for panic messages ("node", "gateway").
    name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Spawns `cmd` with stdout discarded and stderr into `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Process {
        let stderr = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("{name}: cannot create {}: {e}", log.display()));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Process {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// Polls `ready` every 50 ms for up to `timeout`; panics, with the log,
    /// when the process exits first or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited with {status}: {}", self.name, self.log_text());
            }
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {what} in time: {}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// kill -9 (no cleanup of any kind), and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit: its status and how
    /// long it took. Panics (after kill -9) when it does not exit.
    pub fn stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, started.elapsed());
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop on SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
