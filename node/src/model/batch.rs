//! A write, as validated, applied and replicated: the typed [`Batch`] and
//! what applying it did ([`Applied`]).
//!
//! Plain data with serde: the master stores a batch in its change log as
//! JSON and a slave reads it back, so these types are the replication wire
//! format too. Parsing a request into a batch is the engine's job
//! (`engine/write_request.rs`); applying it is storage's
//! (`storage/apply.rs`); neither lives here so this file imports nothing of
//! the crate.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub const MAX_ROWS: usize = 10_000;
/// The pool every subject belongs to.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIndicator {
    /// Assigned by the master when the batch is applied there.
    #[serde(default)]
    pub id: i64,
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub subject: String,
    pub name: Option<String>,
    pub report_date: i64,
    pub end_date: String,
    pub year: String,
    pub period: String,
    pub declare_date: String,
    pub values: BTreeMap<String, Option<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub subject: String,
    pub report_date: i64,
}

/// One write, as validated, applied and replicated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub indicators: Vec<NewIndicator>,
    #[serde(default)]
    pub upserts: Vec<Row>,
    #[serde(default)]
    pub deletes: Vec<Key>,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Rows upserted or deleted.
    pub written: u64,
    /// Subjects whose series changed.
    pub touched: BTreeSet<String>,
    /// Subjects or indicators were created or renamed: reload the catalog.
    pub catalog_changed: bool,
    /// Change in the number of report rows.
    pub records_delta: i64,
}
