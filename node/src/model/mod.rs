//! Model: what the data is — the catalog (indicators, subjects, pools), a
//! subject's series of reports, the batch a write carries, dates.
//!
//! Plain types with no I/O. They import only `json.rs` (the catalog
//! pre-renders each subject's JSON), so every layer above can share them
//! without pulling in SQLite, HTTP or the cache.

pub mod batch;
pub mod catalog;
pub mod dates;
pub mod series;
