//! The read path's HTTP/1 framing: which requests it takes and how it
//! rewrites them for the node (`parse_request`), how it frames a node's
//! answer (`parse_answer`), and the Content-Length rule both use
//! (`decimal`). Pure functions over bytes, tested here; the sockets are in
//! `client.rs` and `upstream.rs`.
//!
//! Kept in one file because these are the rules a shared HTTP/1 codec
//! takes over: this is the file that changes when it does.

use crate::routing::{self, Route};
use cluster::request_id::{self, RequestId};

/// A request head larger than this goes to the general path (which answers
/// it or refuses it). Couples to the node: the same as its
/// `max_header_bytes` (16 KiB, `node/src/http.rs`), so a head this path
/// takes is one the node takes; it must not rise above it.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Like the node's `MAX_HEADERS`; must not rise above it either.
pub(super) const MAX_HEADERS: usize = 64;
/// Read bodies up to this size are held whole, as on the general path.
pub(super) const MAX_READ_BODY: u64 = crate::proxy::RETRY_BUFFER;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    Partial,
    /// Still incomplete at `MAX_HEAD` bytes: refused (431), never handed
    /// to pingora, whose per-read timeout would let a client that sends a
    /// byte now and then hold the connection for ever.
    TooLarge,
    /// Not for this path. `Some(n)`: the request is exactly `n` bytes (head
    /// and Content-Length body), so pingora is handed just those and the
    /// next pipelined request stays here; `None`: its length is unknown
    /// (chunked, malformed) and pingora is handed everything.
    General(Option<usize>),
    Read(ReadHead),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ReadHead {
    pub(super) route: Route,
    pub(super) head_len: usize,
    pub(super) body_len: usize,
    /// The client sent `Connection: close`.
    pub(super) close: bool,
    /// Sent to the node as `X-Request-Id` and logged with errors.
    pub(super) request_id: RequestId,
}

/// A parsed answer head.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) head_len: usize,
    /// `None`: the body runs until the node closes the connection.
    pub(super) body_len: Option<usize>,
    /// The node closes the connection after this answer.
    pub(super) close: bool,
}

/// Parses a client request head; for a read, writes the head it goes
/// upstream with (`/data` stripped, hop-by-hop headers dropped) into
/// `upstream`.
pub(super) fn parse_request(buf: &[u8], max_body: u64, upstream: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) => return Head::TooLarge,
        // Too large, too many headers, or malformed: the general path
        // answers it as pingora does.
        _ => return Head::General(None),
    };
    let mut body_len = None;
    let mut framed = true;
    let mut close = false;
    let mut plain = true;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (body_len, decimal(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                _ => framed = false,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            framed = false;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                match token.trim_ascii() {
                    t if t.eq_ignore_ascii_case(b"close") => close = true,
                    t if t.eq_ignore_ascii_case(b"keep-alive") || t.is_empty() => {}
                    _ => plain = false,
                }
            }
        } else if ["expect", "upgrade", "te", "trailer"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            plain = false;
        }
    }
    let general = Head::General(
        framed
            .then(|| usize::try_from(body_len.unwrap_or(0)).ok())
            .flatten()
            .and_then(|b| head_len.checked_add(b)),
    );
    let route = match req.path {
        Some(target) => routing::classify(target.split('?').next().unwrap_or(target)),
        None => Route::NotFound,
    };
    let (Some(target), Route::Read(_), Some(body_len), true, Some(1), Some("POST")) = (
        req.path,
        route,
        body_len,
        framed && plain,
        req.version,
        req.method,
    ) else {
        return general;
    };
    if body_len > MAX_READ_BODY || body_len > max_body {
        return general;
    }
    upstream.clear();
    upstream.extend_from_slice(b"POST ");
    upstream.extend_from_slice(routing::strip_prefix(target).as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    let mut client_id = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case(request_id::HEADER) {
            client_id = client_id.or_else(|| RequestId::from_client(h.value));
            continue;
        }
        if ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        upstream.extend_from_slice(h.name.as_bytes());
        upstream.extend_from_slice(b": ");
        upstream.extend_from_slice(h.value);
        upstream.extend_from_slice(b"\r\n");
    }
    let request_id = client_id.unwrap_or_default();
    upstream.extend_from_slice(b"X-Request-Id: ");
    upstream.extend_from_slice(request_id.as_bytes());
    upstream.extend_from_slice(b"\r\n\r\n");
    Head::Read(ReadHead {
        route,
        head_len,
        body_len: body_len as usize,
        close,
        request_id,
    })
}

/// Parses an answer head: `Ok(None)` while incomplete.
pub(super) fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed answer head"),
    };
    let status = resp.code.unwrap_or(0);
    if status < 200 {
        return Err("interim (1xx) answer");
    }
    let mut close = resp.version != Some(1);
    let mut body_len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match (body_len, decimal(h.value)) {
                (None, Some(n)) => body_len = Some(n as usize),
                _ => return Err("bad Content-Length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding (the nodes send Content-Length)");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if status == 204 || status == 304 {
        body_len = Some(0);
    }
    Ok(Some(Answer {
        status,
        head_len,
        body_len,
        close: close || body_len.is_none(),
    }))
}

/// A Content-Length value: ASCII digits only.
fn decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ReadKind;

    fn parse(raw: &str) -> (Head, String) {
        let mut up = Vec::new();
        let head = parse_request(raw.as_bytes(), 1 << 20, &mut up);
        (head, String::from_utf8(up).unwrap())
    }

    #[test]
    fn a_read_is_taken_and_rewritten() {
        let raw = "POST /data/kamaitachi/api/data/v1/period?x=/data HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-Request-Id: client-7\r\nX-A: b\r\n\r\n{}";
        let (head, up) = parse(raw);
        assert_eq!(
            head,
            Head::Read(ReadHead {
                route: Route::Read(ReadKind::Period),
                head_len: raw.len() - 2,
                body_len: 2,
                close: false,
                request_id: RequestId::from_client(b"client-7").expect("sane"),
            })
        );
        assert_eq!(
            up,
            "POST /kamaitachi/api/data/v1/period?x=/data HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: b\r\nX-Request-Id: client-7\r\n\r\n"
        );
        // No id, or one that is not sane: the gateway makes one.
        for extra in ["", "X-Request-Id: a b\r\n"] {
            let raw = format!(
                "POST /data/kamaitachi/api/data/v1/period HTTP/1.1\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            let (head, up) = parse(&raw);
            let Head::Read(h) = head else { panic!("{raw}") };
            assert!(
                up.ends_with(&format!("X-Request-Id: {}\r\n\r\n", h.request_id)),
                "{up}"
            );
            assert!(!up.contains("a b"), "{up}");
        }
        let (head, _) = parse("POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(head, Head::Read(ReadHead { close: true, .. })));
        let (head, _) = parse("POST /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nContent-Le");
        assert_eq!(head, Head::Partial);
    }

    #[test]
    fn everything_else_goes_to_the_general_path() {
        let read = "POST /data/kamaitachi/api/data/v1/snapshot";
        // Framed by Content-Length: pingora gets exactly this request.
        for (raw, body) in [
            (format!("{read} HTTP/1.0\r\nContent-Length: 2\r\n\r\n"), 2),
            (
                format!("{read} HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"),
                2,
            ),
            (
                format!("{read} HTTP/1.1\r\nConnection: upgrade\r\nContent-Length: 2\r\n\r\n"),
                2,
            ),
            (
                format!("{read} HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"),
                70_000,
            ),
            (format!("{read} HTTP/1.1\r\n\r\n"), 0),
            (
                "GET /data/kamaitachi/api/data/v1/snapshot HTTP/1.1\r\n\r\n".into(),
                0,
            ),
            (
                "POST /data/kamaitachi/api/data/v1/ingest HTTP/1.1\r\nContent-Length: 2\r\n\r\n".into(),
                2,
            ),
            (
                "POST /kamaitachi/api/data/v1/snapshot HTTP/1.1\r\nContent-Length: 2\r\n\r\n".into(),
                2,
            ),
            ("GET /health HTTP/1.1\r\n\r\n".into(), 0),
        ] {
            let pipelined = format!("{raw}GET /next HTTP/1.1\r\n");
            assert_eq!(
                parse(&pipelined).0,
                Head::General(Some(raw.len() + body)),
                "{raw:?}"
            );
        }
        // Length unknown: pingora gets everything read so far.
        for raw in [
            format!("{read} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"),
            format!("{read} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            format!("{read} HTTP/1.1\r\nContent-Length: +2\r\n\r\n"),
            "POST /data/\0 HTTP/1.1\r\n\r\n".into(),
        ] {
            assert_eq!(parse(&raw).0, Head::General(None), "{raw:?}");
        }
        // Still incomplete at MAX_HEAD: refused here, never handed over.
        let raw = format!("{read} HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert_eq!(parse(&raw).0, Head::TooLarge);
        let raw = format!("{read} HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(
            parse_request(raw.as_bytes(), 10, &mut Vec::new()),
            Head::General(Some(raw.len() + 11)),
            "the body limit is the general path's to answer"
        );
    }

    #[test]
    fn answers_are_framed_or_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_answer(ok).unwrap(),
            Some(Answer {
                status: 200,
                head_len: ok.len() - 5,
                body_len: Some(5),
                close: false
            })
        );
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let close =
            parse_answer(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(close.is_some_and(|a| a.close && a.status == 503));
        let eof = parse_answer(b"HTTP/1.1 200 OK\r\n\r\nabc").unwrap().unwrap();
        assert_eq!((eof.body_len, eof.close), (None, true));
        assert_eq!(
            parse_answer(b"HTTP/1.1 204 No\r\n\r\n")
                .unwrap()
                .unwrap()
                .body_len,
            Some(0)
        );
        assert!(parse_answer(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }
}
