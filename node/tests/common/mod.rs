//! Test harness: real `kamaitachi-node` processes on free loopback ports,
//! over a generated sample database, and a minimal HTTP/1.1 client that can
//! also send raw bytes.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use kamaitachi_testkit::{
    free_port, parse_responses, post_whole_then_read, request, send_raw, temp_dir, try_request, Node,
    NodeOpts, Resp, PERIOD, RESET, SNAPSHOT, STATS, TOKEN,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_kamaitachi-node");
pub const SUBJECTS: usize = 400;

/// The shared sample database of this test binary (generated once).
pub fn sample_db() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = temp_dir("sample");
        let db = dir.join("sample.db");
        kamaitachi_testkit::gen_data(Path::new(BIN), &db, SUBJECTS, 7);
        db
    })
}

pub fn gen_data(db: &Path, subjects: usize, seed: u64) {
    kamaitachi_testkit::gen_data(Path::new(BIN), db, subjects, seed)
}

pub fn start_node(opts: &NodeOpts) -> Node {
    Node::start(Path::new(BIN), opts)
}

pub fn bin() -> PathBuf {
    PathBuf::from(BIN)
}
