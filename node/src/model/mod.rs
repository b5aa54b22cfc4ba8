//! Model: what the data is — the catalog, a subject's series, dates.
pub mod batch;
pub mod catalog;
pub mod dates;
pub mod series;
