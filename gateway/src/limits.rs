//! Request limits at the door: body size and a token-bucket rate limit.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::GatewayError;

pub struct Limits {
    pub max_body_bytes: u64,
    rate: Option<(DefaultDirectRateLimiter, u32, u32)>,
}

impl Limits {
    /// `qps = 0` disables the rate limit; `burst = 0` means `burst = qps`.
    pub fn new(max_body_bytes: u64, qps: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(qps).map(|q| {
            let b = NonZeroU32::new(burst).unwrap_or(q);
            (
                RateLimiter::direct(Quota::per_second(q).allow_burst(b)),
                q.get(),
                b.get(),
            )
        });
        Limits { max_body_bytes, rate }
    }

    /// Takes a token, or says why not.
    pub fn admit(&self) -> Result<(), GatewayError> {
        match &self.rate {
            Some((limiter, qps, burst)) if limiter.check().is_err() => Err(GatewayError::RateLimited {
                qps: *qps,
                burst: *burst,
            }),
            _ => Ok(()),
        }
    }

    /// The declared body length of a request: one `Content-Length` header
    /// holding one decimal number, or none. Anything else (`5, 5`, two
    /// headers, a sign, spaces inside) is refused with a 400 naming the
    /// header, as nginx does, so the length checked against the limit is the
    /// length the request is framed by.
    pub fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, GatewayError> {
        let mut found = None;
        for v in values {
            let t = v.trim_ascii();
            let n = (!t.is_empty() && t.len() <= 18 && t.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(t).ok()?.parse::<u64>().ok())
                .flatten();
            match (found, n) {
                (None, Some(n)) => found = Some(n),
                _ => {
                    return Err(GatewayError::BadRequest(format!(
                        "Content-Length: {:?} is not one decimal number (one header, one value)",
                        String::from_utf8_lossy(&v[..v.len().min(40)])
                    )))
                }
            }
        }
        Ok(found)
    }

    pub fn check_body(&self, content_length: Option<u64>) -> Result<(), GatewayError> {
        match content_length {
            Some(n) if n > self.max_body_bytes => Err(GatewayError::PayloadTooLarge {
                got: n,
                limit: self.max_body_bytes,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let l = Limits::new(10, 5, 3);
        assert!((0..3).all(|_| l.admit().is_ok()));
        assert!(matches!(l.admit(), Err(GatewayError::RateLimited { .. })));
        let open = Limits::new(10, 0, 0);
        assert!((0..1000).all(|_| open.admit().is_ok()));
        assert!(open.check_body(Some(10)).is_ok());
        let cl = |v: &[&str]| Limits::content_length(v.iter().map(|s| s.as_bytes()));
        assert_eq!(cl(&[]).unwrap(), None);
        assert_eq!(cl(&[" 12 "]).unwrap(), Some(12));
        for bad in [
            &["5, 5"][..],
            &["5", "5"],
            &["-1"],
            &["+5"],
            &["1 2"],
            &[""],
            &["99999999999999999999"],
        ] {
            assert!(matches!(cl(bad), Err(GatewayError::BadRequest(_))), "{bad:?}");
        }
        assert!(matches!(
            open.check_body(Some(11)),
            Err(GatewayError::PayloadTooLarge { got: 11, limit: 10 })
        ));
    }
}
