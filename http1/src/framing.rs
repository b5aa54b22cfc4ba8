//! How long a message body is: the one `Content-Length` rule.
//!
//! - `Transfer-Encoding` is not supported, in either direction: a message
//!   that has it is refused whatever else it carries (RFC 9112 §6.3: it
//!   overrides `Content-Length`, so honouring the length instead would let a
//!   chunked body be read as the next request). It is checked before any
//!   `Content-Length`, so the answer does not depend on header order.
//! - A value is 1 to [`MAX_LENGTH_DIGITS`] ASCII digits, with optional
//!   surrounding blanks; no sign, no list, nothing else.
//!   19 digits: the most for which every value fits a `u64`
//!   (10^19 - 1 < 2^64); the gateway used to accept 18 and the node 19, and
//!   the larger bound refuses nothing a `u64` can hold. Any real limit is
//!   far lower and applied after, as a size error rather than a syntax one.
//! - Several `Content-Length` headers are accepted when they all say the
//!   same number (RFC 9110 §8.6 lets a recipient treat them as one) and
//!   refused when they differ.

use crate::Header;

/// Most digits of a `Content-Length` value.
pub const MAX_LENGTH_DIGITS: usize = 19;

/// Why a body's length cannot be known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
    /// The value as sent (lossy UTF-8, on the error path only).
    #[error("Content-Length {0:?} is not a decimal number")]
    BadLength(String),
    #[error("conflicting Content-Length headers")]
    ConflictingLengths,
    #[error("body is {got} bytes; the limit is {limit} bytes")]
    TooLarge { got: u64, limit: u64 },
}

/// The declared `Content-Length`, `None` when there is none.
#[inline]
pub fn content_length(headers: &[Header<'_>]) -> Result<Option<u64>, FramingError> {
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(FramingError::TransferEncoding);
    }
    let mut length: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let n = decimal(h.value)
            .ok_or_else(|| FramingError::BadLength(String::from_utf8_lossy(h.value).into_owned()))?;
        if length.is_some_and(|l| l != n) {
            return Err(FramingError::ConflictingLengths);
        }
        length = Some(n);
    }
    Ok(length)
}

/// A request body's length: its `Content-Length`, 0 without one, at most
/// `limit`.
#[inline]
pub fn body_length(headers: &[Header<'_>], limit: u64) -> Result<u64, FramingError> {
    let n = content_length(headers)?.unwrap_or(0);
    if n > limit {
        return Err(FramingError::TooLarge { got: n, limit });
    }
    Ok(n)
}

/// A `Content-Length` value: blanks around 1 to [`MAX_LENGTH_DIGITS`] ASCII
/// digits.
#[inline]
fn decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > MAX_LENGTH_DIGITS || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn digits_only_up_to_nineteen() {
        assert_eq!(content_length(&[h("Content-Length", " 42 ")]), Ok(Some(42)));
        assert_eq!(content_length(&[h("content-LENGTH", "007")]), Ok(Some(7)));
        assert_eq!(content_length(&[]), Ok(None));
        assert_eq!(
            content_length(&[h("Content-Length", "9999999999999999999")]),
            Ok(Some(9_999_999_999_999_999_999))
        );
        for bad in [
            "",
            " ",
            "+2",
            "-1",
            "0x10",
            "1,1",
            "1 1",
            "12a",
            "10000000000000000000",
        ] {
            assert_eq!(
                content_length(&[h("Content-Length", bad)]),
                Err(FramingError::BadLength(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn duplicates_must_agree() {
        assert_eq!(
            content_length(&[h("Content-Length", "2"), h("Content-Length", "02")]),
            Ok(Some(2))
        );
        assert_eq!(
            content_length(&[h("Content-Length", "2"), h("Content-Length", "3")]),
            Err(FramingError::ConflictingLengths)
        );
    }

    #[test]
    fn transfer_encoding_wins_whatever_the_order() {
        for headers in [
            [h("Transfer-Encoding", "chunked"), h("Content-Length", "x")],
            [h("Content-Length", "x"), h("transfer-encoding", "identity")],
        ] {
            assert_eq!(content_length(&headers), Err(FramingError::TransferEncoding));
            assert_eq!(body_length(&headers, 10), Err(FramingError::TransferEncoding));
        }
    }

    #[test]
    fn the_body_limit_is_inclusive() {
        assert_eq!(body_length(&[], 0), Ok(0));
        assert_eq!(body_length(&[h("Content-Length", "10")], 10), Ok(10));
        assert_eq!(
            body_length(&[h("Content-Length", "11")], 10),
            Err(FramingError::TooLarge { got: 11, limit: 10 })
        );
    }
}
