//! Whether a connection stays open after a message: the `Connection` rule.
//!
//! RFC 9112 §9.3: HTTP/1.1 keeps the connection unless a `close` option is
//! sent; HTTP/1.0 closes it unless a `keep-alive` option is sent; `close`
//! wins over `keep-alive` wherever it appears. Options are comma-separated
//! tokens, possibly spread over several `Connection` headers; header names
//! and tokens compare case-insensitively, blanks around tokens and empty
//! list elements are ignored. Any other option (`upgrade`, a hop-by-hop
//! header name) is reported so a proxy can decline what it does not handle.
//! The same rule serves requests and answers.

use crate::Header;

/// What the `Connection` headers of a message say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The connection may carry another message after this one.
    pub keep_alive: bool,
    /// An option other than `close` and `keep-alive` was sent.
    pub other_options: bool,
}

/// Reads the `Connection` headers of a message of HTTP/1.`version`.
#[inline]
pub fn connection(version: u8, headers: &[Header<'_>]) -> Connection {
    let mut close = false;
    let mut keep_alive_option = false;
    let mut other_options = false;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive_option = true;
            } else if !token.is_empty() {
                other_options = true;
            }
        }
    }
    Connection {
        keep_alive: !close && (version >= 1 || keep_alive_option),
        other_options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(version: u8, values: &[&'static str]) -> Connection {
        let headers: Vec<Header<'static>> = values
            .iter()
            .map(|v| Header {
                name: "Connection",
                value: v.as_bytes(),
            })
            .collect();
        connection(version, &headers)
    }

    #[test]
    fn versions_have_their_defaults() {
        assert!(conn(1, &[]).keep_alive);
        assert!(!conn(0, &[]).keep_alive);
        assert!(conn(0, &["Keep-Alive"]).keep_alive);
        assert!(!conn(1, &["CLOSE"]).keep_alive);
    }

    #[test]
    fn close_wins_in_any_list_or_header() {
        assert!(!conn(1, &["keep-alive, close"]).keep_alive);
        assert!(!conn(0, &["close ,keep-alive"]).keep_alive);
        assert!(!conn(1, &["keep-alive", " close "]).keep_alive);
        assert!(conn(1, &[" , keep-alive ,"]).keep_alive);
    }

    #[test]
    fn other_options_are_reported() {
        assert!(!conn(1, &["keep-alive, close"]).other_options);
        assert!(conn(1, &["Upgrade"]).other_options);
        assert!(conn(1, &["close, x-hop"]).other_options);
        let other = [Header {
            name: "connectionx",
            value: b"close",
        }];
        assert_eq!(
            connection(1, &other),
            Connection {
                keep_alive: true,
                other_options: false
            }
        );
    }
}
