//! The read path's HTTP/1 policy: which requests it takes and how it
//! rewrites them for the node (`parse_request`), and how it frames a node's
//! answer (`parse_answer`). The HTTP/1 rules themselves (head limits,
//! Content-Length, Connection) are the shared `http1` codec's, the same the
//! nodes apply; this file only decides what the fast path accepts. Pure
//! functions over bytes, tested here; the sockets are in `client.rs` and
//! `upstream.rs`.

use crate::routing::{self, Route};
use cluster::request_id::{self, RequestId};

/// A request head larger than this goes to the general path (which answers
/// it or refuses it). Couples to the node: the same as its
/// `max_header_bytes` (16 KiB, `node/src/http.rs`), so a head this path
/// takes is one the node takes; it must not rise above it.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Like the node's `MAX_HEADERS`; must not rise above it either.
pub(super) const MAX_HEADERS: usize = http1::MAX_HEADERS;
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
    /// The answer carries `Retry-After` (see `failover::ejects`).
    pub(super) retry_later: bool,
}

/// Parses a client request head; for a read, writes the head it goes
/// upstream with (`/data` stripped, hop-by-hop headers dropped) into
/// `upstream`.
///
/// The HTTP/1 rules (head limits, `Content-Length`, `Connection`) are the
/// shared codec's (`http1`), the same the nodes apply, so the gateway and a
/// node never frame one request two ways; what this path takes is its own
/// policy. A head over `MAX_HEAD` bytes is refused whether or not it
/// arrived whole, so the answer does not depend on how the client's bytes
/// were split into reads.
pub(super) fn parse_request(buf: &[u8], max_body: u64, upstream: &mut Vec<u8>) -> Head {
    let mut headers = http1::headers();
    let limits = http1::HeadLimits {
        max_bytes: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let req = match http1::parse_request(buf, &mut headers, limits) {
        Ok(Some(req)) => req,
        Ok(None) => return Head::Partial,
        Err(http1::HeadError::TooLarge) => return Head::TooLarge,
        // Too many headers, or malformed: the general path answers it as
        // pingora does.
        Err(http1::HeadError::TooManyHeaders | http1::HeadError::Malformed(_)) => return Head::General(None),
    };
    let head_len = req.len;
    // Unframed (chunked, a bad or conflicting length): its length is unknown.
    let (body_len, framed) = match http1::content_length(req.headers) {
        Ok(n) => (n, true),
        Err(_) => (None, false),
    };
    let connection = http1::connection(req.version, req.headers);
    let close = !connection.keep_alive;
    let plain = !connection.other_options
        && !req.headers.iter().any(|h| {
            ["expect", "upgrade", "te", "trailer"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
        });
    let general = Head::General(
        framed
            .then(|| usize::try_from(body_len.unwrap_or(0)).ok())
            .flatten()
            .and_then(|b| head_len.checked_add(b)),
    );
    let target = req.target;
    let route = routing::classify(target.split('?').next().unwrap_or(target));
    let (Route::Read(_), Some(body_len), true, 1, "POST") =
        (route, body_len, framed && plain, req.version, req.method)
    else {
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

/// Parses an answer head: `Ok(None)` while incomplete. Framing and
/// persistence are the codec's rules; refusing an interim (1xx) answer is
/// this path's (it sends no `Expect`, so a node never owes one).
pub(super) fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut headers = http1::headers();
    let head = match http1::parse_answer(buf, &mut headers) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(http1::AnswerError::Malformed(_) | http1::AnswerError::TooManyHeaders) => {
            return Err("malformed answer head")
        }
        Err(http1::AnswerError::Framing(http1::FramingError::TransferEncoding)) => {
            return Err("Transfer-Encoding (the nodes send Content-Length)")
        }
        Err(http1::AnswerError::Framing(_)) => return Err("bad Content-Length"),
    };
    if head.status < 200 {
        return Err("interim (1xx) answer");
    }
    let body_len = head
        .body_len
        .map(usize::try_from)
        .transpose()
        .map_err(|_| "bad Content-Length")?;
    let retry_later = head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(cluster::RETRY_AFTER));
    Ok(Some(Answer {
        status: head.status,
        head_len: head.len,
        body_len,
        close: head.close,
        retry_later,
    }))
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
                close: false,
                retry_later: false
            })
        );
        let later = parse_answer(b"HTTP/1.1 503 X\r\nretry-after: 1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(later.is_some_and(|a| a.retry_later && a.status == 503));
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
