//! Writing JSON straight into bytes: the leaf every layer may use.
//!
//! Responses are written field by field into one buffer (no intermediate
//! `serde_json::Value`), so the few primitives they need — a string
//! literal, an integer, an optional number, the contract's envelope
//! `{"status_code":N,"status_msg":"…","data":…}` — live here, once. This
//! file imports nothing of the crate: the catalog (pre-rendered subject
//! objects), the renderer (query results) and the server (change feed,
//! error bodies) all build on it without pointing at each other.

/// Appends `s` as a JSON string literal.
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail; a &str always serialises.
    let _ = serde_json::to_writer(&mut *buf, s);
}

pub fn push_i64(buf: &mut Vec<u8>, v: i64) {
    let _ = serde_json::to_writer(&mut *buf, &v);
}

/// Appends a number, or `null` for a missing value.
pub fn push_opt_f64(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) if v.is_finite() => {
            let _ = serde_json::to_writer(&mut *buf, &v);
        }
        _ => buf.extend_from_slice(b"null"),
    }
}

/// Starts an envelope; the caller appends `data` and then calls
/// [`end_envelope`].
pub fn begin_envelope(buf: &mut Vec<u8>, status_code: u16, msg: &str) {
    buf.extend_from_slice(b"{\"status_code\":");
    push_i64(buf, status_code as i64);
    buf.extend_from_slice(b",\"status_msg\":");
    push_str(buf, msg);
    buf.extend_from_slice(b",\"data\":");
}

pub fn end_envelope(buf: &mut Vec<u8>) {
    buf.push(b'}');
}

/// A whole envelope whose `data` is already JSON.
pub fn envelope(status_code: u16, msg: &str, data_json: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + msg.len() + data_json.len());
    begin_envelope(&mut buf, status_code, msg);
    buf.extend_from_slice(data_json);
    end_envelope(&mut buf);
    buf
}
