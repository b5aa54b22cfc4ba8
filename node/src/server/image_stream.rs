//! A database image (`GET …/replication/image`) sent as a streamed body.
//!
//! The image is a temporary file made by the store; this adapts it to the
//! HTTP layer's [`BodyStream`], so it lives with the server (storage knows
//! nothing of HTTP bodies).

use std::path::PathBuf;

use crate::server::http::BodyStream;
use crate::storage::store::{ReadPool, IMAGE_CHUNK};

/// A database image streamed from its temporary file, chunk by chunk; each
/// chunk is read on a pool thread (file I/O must not block a coroutine's
/// worker). The file is removed when the stream is dropped.
pub struct ImageStream {
    file: std::sync::Arc<std::fs::File>,
    path: PathBuf,
    len: u64,
    offset: u64,
    pool: ReadPool,
}

impl ImageStream {
    pub fn new(file: std::fs::File, path: PathBuf, len: u64, pool: ReadPool) -> Self {
        ImageStream {
            file: std::sync::Arc::new(file),
            path,
            len,
            offset: 0,
            pool,
        }
    }
}

impl BodyStream for ImageStream {
    fn len(&self) -> u64 {
        self.len
    }

    fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        if self.offset >= self.len {
            return Ok(None);
        }
        let n = (self.len - self.offset).min(IMAGE_CHUNK as u64) as usize;
        let (file, at) = (self.file.clone(), self.offset);
        let chunk = self
            .pool
            .call(move |_| {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .map_err(std::io::Error::other)??;
        self.offset += n as u64;
        Ok(Some(chunk))
    }
}

impl Drop for ImageStream {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
