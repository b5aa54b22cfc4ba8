//! The one HTTP/1 codec of Kamaitachi, shared by the node's connection loop,
//! the gateway's read path and the test kit's client.
//!
//! Before this crate each of the three parsed HTTP/1 its own way and the
//! copies drifted (a Content-Length of up to 19 digits in one, 18 in
//! another; `Connection` read three ways). Here each rule is written once,
//! with its unit tests, one file per rule:
//!
//! - [`head`]: a request head, with the limits on its bytes and header count;
//! - [`framing`]: how long a body is (`Content-Length`, refusing
//!   `Transfer-Encoding`, the body limit);
//! - [`connection`]: whether a connection stays open after a message;
//! - [`answer`]: an answer (response) head and its framing.
//!
//! The codec only reads: it borrows the caller's buffer and header array
//! and never allocates, so the node's hot path costs what it did; the small
//! per-request helpers are `#[inline]` so that, across the crate boundary,
//! they still inline as the node's and gateway's private copies did. What a
//! failure means to a client (a status, a JSON body, a hand-over to another
//! proxy) is each caller's policy; the codec's errors only say what is
//! wrong. This is the only crate that names `httparse`; [`Header`] is its
//! header type, re-exported so callers can hold parsed heads without
//! depending on it.

pub mod answer;
pub mod connection;
pub mod framing;
pub mod head;

pub use answer::{parse_answer, AnswerError, AnswerHead};
pub use connection::{connection, Connection};
pub use framing::{body_length, content_length, FramingError, MAX_LENGTH_DIGITS};
pub use head::{expects_continue, header, parse_request, HeadError, HeadLimits, RequestHead};

/// One parsed header: `name` and raw `value`, borrowing the parsed buffer.
pub type Header<'b> = httparse::Header<'b>;

/// An empty header, to make the array a parse fills.
pub const EMPTY_HEADER: Header<'static> = httparse::EMPTY_HEADER;

/// The most headers any head may carry: the size of the array a parse
/// fills (on the caller's stack). A configured limit may be lower, never
/// higher.
pub const MAX_HEADERS: usize = 64;

/// The header array a parse fills.
pub type Headers<'b> = [Header<'b>; MAX_HEADERS];

/// A fresh header array for one parse.
#[inline]
pub fn headers<'b>() -> Headers<'b> {
    [EMPTY_HEADER; MAX_HEADERS]
}
