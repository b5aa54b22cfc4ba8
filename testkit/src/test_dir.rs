//! A harness's directory under `/tmp/kamaitachi-tests/`, removed when the
//! harness is dropped — but only when the thread is not panicking: a
//! failed test keeps its configs, logs and data for a post-mortem (the
//! panic message names the files). Directories a test makes itself with
//! [`crate::temp_dir`] (sample databases shared by a whole test binary)
//! are not guarded and stay until cleaned by hand.

use std::ops::Deref;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// Takes charge of `path` (made by [`crate::temp_dir`]).
    pub fn new(path: PathBuf) -> TestDir {
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
