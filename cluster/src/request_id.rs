//! `X-Request-Id`: one id per proxied request, made (or passed on) by the
//! gateway, sent to the node and logged by both for errors and slow
//! requests, so one request can be followed across processes in ELK or
//! Loki. The node reads it with the same rule.
//!
//! A client's own id is passed on when it is sane (1–64 characters of
//! `A-Z a-z 0-9 . _ -`); anything else is replaced, so a client cannot put
//! arbitrary bytes into the logs. A made id is this process's random prefix
//! and a counter: unique, cheap (no allocation, no lock) and sortable per
//! gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const HEADER: &str = "x-request-id";

/// Longest id passed on.
const MAX_LEN: usize = 64;

/// An id, inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl RequestId {
    /// The client's id, if it is one to pass on.
    pub fn from_client(value: &[u8]) -> Option<Self> {
        let sane = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        sane.then(|| {
            let mut buf = [0u8; MAX_LEN];
            buf[..value.len()].copy_from_slice(value);
            RequestId {
                buf,
                len: value.len() as u8,
            }
        })
    }

    /// A new id: `{prefix:08x}-{counter:x}`.
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; MAX_LEN];
        let mut len = push_hex(&mut buf, 0, u64::from(prefix()), 8);
        buf[len] = b'-';
        len = push_hex(&mut buf, len + 1, n, 1);
        RequestId { buf, len: len as u8 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked or made above).
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `v` in hex (at least `min_digits`) at `at`; returns the end.
fn push_hex(buf: &mut [u8; MAX_LEN], mut at: usize, v: u64, min_digits: usize) -> usize {
    let digits = (64 - v.leading_zeros() as usize).div_ceil(4).max(min_digits);
    for i in (0..digits).rev() {
        buf[at] = b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize];
        at += 1;
    }
    at
}

/// This process's random prefix (from the kernel, else time and pid).
fn prefix() -> u32 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        use std::io::Read;
        let mut b = [0u8; 4];
        match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                t ^ std::process::id().rotate_left(16)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        assert_eq!(
            RequestId::from_client(b"abc-123_X.y").map(|r| r.to_string()),
            Some("abc-123_X.y".into())
        );
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"a b").is_none());
        assert!(RequestId::from_client(b"x\r\nSet-Cookie: y").is_none());
        assert!(RequestId::from_client(&[b'a'; 65]).is_none());
        assert!(RequestId::from_client(&[b'a'; 64]).is_some());
    }

    #[test]
    fn made_ids_are_unique_and_well_formed() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_ne!(a.as_str(), b.as_str());
        let (p, n) = a.as_str().split_once('-').expect("prefix-counter");
        assert_eq!(p.len(), 8);
        assert!(u64::from_str_radix(n, 16).is_ok(), "{a}");
        assert!(
            RequestId::from_client(a.as_bytes()).is_some(),
            "a made id passes on"
        );
    }
}
