//! A request head: request line and headers, within the head limits.
//!
//! Limits: a head longer than [`HeadLimits::max_bytes`] or with more than
//! [`HeadLimits::max_headers`] headers is refused. An incomplete head is
//! refused as soon as the buffer holds `max_bytes` bytes of it: completing
//! it needs at least one more byte, so it could only end over the limit
//! (the node used to wait for that byte; the gateway refused at once; the
//! earlier answer is the same answer, sooner). A complete head over the
//! limit is refused as well, whichever way its bytes arrived, so the answer
//! never depends on how the client's writes were split.

use crate::{Header, Headers, MAX_HEADERS};

/// Bounds on a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes of request line and headers, the final blank line included.
    pub max_bytes: usize,
    /// Most headers; capped at [`MAX_HEADERS`].
    pub max_headers: usize,
}

/// What is wrong with a request head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is (or can only end up) longer than the byte limit.
    #[error("request head larger than the limit")]
    TooLarge,
    /// More headers than the limit.
    #[error("too many request headers")]
    TooManyHeaders,
    /// Not an HTTP/1 request head; says what the parser tripped on.
    #[error("{0}")]
    Malformed(&'static str),
}

/// A parsed request head, borrowing the buffer (`'b`) and the header
/// array (`'h`).
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    /// The request target as sent: path and query string.
    pub target: &'b str,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, blank line included: the body starts here.
    pub len: usize,
}

impl<'b> RequestHead<'b, '_> {
    /// The first value of header `name` (case-insensitive).
    #[inline]
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header(self.headers, name)
    }
}

/// Parses the request head at the start of `buf` into `headers`:
/// `Ok(None)` while it is incomplete and still within the limits.
#[inline]
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
    limits: HeadLimits,
) -> Result<Option<RequestHead<'b, 'h>>, HeadError> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(describe(e))),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    if len > limits.max_bytes {
        return Err(HeadError::TooLarge);
    }
    if headers.len() > limits.max_headers.min(MAX_HEADERS) {
        return Err(HeadError::TooManyHeaders);
    }
    // A complete parse always sets the request line.
    let (Some(method), Some(target), Some(version)) = (method, path, version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        len,
    }))
}

/// The first value of header `name` (case-insensitive).
#[inline]
pub fn header<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether the client waits for `100 Continue` before sending the body.
#[inline]
pub fn expects_continue(headers: &[Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue"))
}

/// httparse's own description of a parse error (its `Display` text),
/// without allocating.
pub(crate) fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid response status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 64,
        max_headers: 3,
    };

    /// Method, target, version, header count, head length.
    type Seen = (String, String, u8, usize, usize);

    fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<Seen>, HeadError> {
        let mut h = headers();
        Ok(parse_request(buf, &mut h, limits)?.map(|r| {
            (
                r.method.to_string(),
                r.target.to_string(),
                r.version,
                r.headers.len(),
                r.len,
            )
        }))
    }

    #[test]
    fn a_head_is_parsed_with_its_length() {
        let raw = b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n\r\nbody";
        assert_eq!(
            parse(raw, LIMITS),
            Ok(Some(("POST".into(), "/a?b=c".into(), 0, 1, raw.len() - 4)))
        );
        let mut h = headers();
        let head = parse_request(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n", &mut h, LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(head.header("X-a"), Some(&b"1"[..]));
        assert_eq!(head.header("y"), None);
    }

    #[test]
    fn an_incomplete_head_waits_until_it_can_only_be_too_large() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS), Ok(None));
        let at_limit = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(64 - 19));
        assert_eq!(at_limit.len(), 64);
        assert_eq!(parse(&at_limit.as_bytes()[..63], LIMITS), Ok(None));
        assert_eq!(parse(at_limit.as_bytes(), LIMITS), Err(HeadError::TooLarge));
    }

    #[test]
    fn a_complete_head_is_held_to_the_limits() {
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(64 - 23));
        assert_eq!(exact.len(), 64);
        assert!(matches!(parse(exact.as_bytes(), LIMITS), Ok(Some(_))));
        let over = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(64 - 22));
        assert_eq!(parse(over.as_bytes(), LIMITS), Err(HeadError::TooLarge));
        let four = b"GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n";
        assert_eq!(parse(four, LIMITS), Err(HeadError::TooManyHeaders));
        let big = HeadLimits {
            max_bytes: 1 << 20,
            max_headers: 1000,
        };
        assert!(matches!(parse(four, big), Ok(Some(_))));
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(parse(raw.as_bytes(), big), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn malformed_heads_say_why() {
        assert_eq!(
            parse(b"GET / HTTP/9.9\r\n\r\n", LIMITS),
            Err(HeadError::Malformed("invalid HTTP version"))
        );
        assert!(matches!(
            parse(b"GET /\0 HTTP/1.1\r\n\r\n", LIMITS),
            Err(HeadError::Malformed(_))
        ));
        // The same words as httparse's own `Display`.
        for e in [
            httparse::Error::HeaderName,
            httparse::Error::HeaderValue,
            httparse::Error::NewLine,
            httparse::Error::Status,
            httparse::Error::Token,
            httparse::Error::TooManyHeaders,
            httparse::Error::Version,
        ] {
            assert_eq!(describe(e), e.to_string());
        }
    }

    #[test]
    fn expect_continue_is_recognised() {
        let mut h = headers();
        let head = parse_request(b"POST / HTTP/1.1\r\nEXPECT: 100-Continue\r\n\r\n", &mut h, LIMITS)
            .unwrap()
            .unwrap();
        assert!(expects_continue(head.headers));
        assert!(!expects_continue(&[]));
    }
}
