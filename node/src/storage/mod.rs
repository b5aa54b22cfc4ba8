//! Storage: SQLite, the writer, the blob images, the worker pools.
pub mod apply;
pub mod blob;
pub mod db_file;
pub mod dump;
pub mod pool;
pub mod state;
pub mod store;
pub mod writer;
