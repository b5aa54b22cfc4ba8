//! An answer (response) head and how its body is framed.
//!
//! Framing (RFC 9112 §6.3): 1xx, 204 and 304 answers have no body; other
//! answers are framed by their `Content-Length` (the [`crate::framing`]
//! rule: `Transfer-Encoding` refused, equal duplicates accepted); an answer
//! with neither runs until the connection closes, so it also closes the
//! connection. Persistence is the [`crate::connection`] rule. Whether an
//! interim (1xx) answer is acceptable is the caller's policy.

use crate::{framing, Header, Headers, MAX_HEADERS};

/// What is wrong with an answer head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("malformed answer head: {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_HEADERS} answer headers")]
    TooManyHeaders,
    #[error(transparent)]
    Framing(#[from] framing::FramingError),
}

/// A parsed answer head, borrowing the buffer (`'b`) and the header array
/// (`'h`).
#[derive(Debug)]
pub struct AnswerHead<'b, 'h> {
    pub status: u16,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, blank line included: the body starts here.
    pub len: usize,
    /// `None`: the body runs until the connection closes.
    pub body_len: Option<u64>,
    /// The connection closes after this answer.
    pub close: bool,
}

/// Parses the answer head at the start of `buf` into `headers`: `Ok(None)`
/// while it is incomplete.
#[inline]
pub fn parse_answer<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
) -> Result<Option<AnswerHead<'b, 'h>>, AnswerError> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(AnswerError::TooManyHeaders),
        Err(e) => return Err(AnswerError::Malformed(crate::head::describe(e))),
    };
    let httparse::Response {
        version,
        code,
        headers,
        ..
    } = resp;
    let (Some(version), Some(status)) = (version, code) else {
        return Err(AnswerError::Malformed("incomplete status line"));
    };
    let body_len = if (100..200).contains(&status) || status == 204 || status == 304 {
        Some(0)
    } else {
        framing::content_length(headers)?
    };
    let close = !crate::connection(version, headers).keep_alive || body_len.is_none();
    Ok(Some(AnswerHead {
        status,
        version,
        headers,
        len,
        body_len,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::FramingError;
    use crate::headers;

    /// Status, head length, body length, close.
    type Seen = (u16, usize, Option<u64>, bool);

    fn parse(buf: &[u8]) -> Result<Option<Seen>, AnswerError> {
        let mut h = headers();
        Ok(parse_answer(buf, &mut h)?.map(|a| (a.status, a.len, a.body_len, a.close)))
    }

    #[test]
    fn answers_are_framed_by_their_length() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(ok), Ok(Some((200, ok.len() - 5, Some(5), false))));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(
            parse(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some((503, 56, Some(0), true)))
        );
        let mut h = headers();
        let a = parse_answer(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n", &mut h)
            .unwrap()
            .unwrap();
        assert_eq!((a.headers.len(), a.headers[0].value), (1, &b"b"[..]));
    }

    #[test]
    fn unframed_answers_run_to_the_close() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\nabc"),
            Ok(Some((200, 19, None, true)))
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na"),
            Ok(Some((200, 38, Some(1), true)))
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\na"),
            Ok(Some((200, 62, Some(1), false)))
        );
    }

    #[test]
    fn some_statuses_have_no_body() {
        for raw in [
            &b"HTTP/1.1 204 No\r\n\r\n"[..],
            b"HTTP/1.1 304 Same\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert_eq!(parse(raw).map(|a| a.map(|a| a.2)), Ok(Some(Some(0))));
        }
    }

    #[test]
    fn bad_framing_is_refused() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(AnswerError::Framing(FramingError::TransferEncoding))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(AnswerError::Framing(FramingError::BadLength("x".into())))
        );
        assert!(matches!(
            parse(b"garbage\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
    }
}
