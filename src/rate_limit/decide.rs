//! What follows a store's decision, shared by the service and its future: the request's
//! state (wait for the store, forward, or answer), the step that turns a decision into it,
//! and the rate-limit headers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::Quota;
use super::store::Decision;
use crate::rejection::{Rejection, RejectionKind, RenderRejection, ceil_secs};

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

pub(super) struct Pending<S, R, ReqB> {
    pub(super) req: Request<ReqB>,
    pub(super) inner: S,
    pub(super) headers: Arc<Headers>,
    pub(super) render: R,
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, F, R, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
    {
        Check {
            #[pin]
            check: F,
            // Boxed: only a store that answers later pays for carrying the request, and the
            // future of the synchronous path stays small.
            pending: Option<Box<Pending<S, R, ReqB>>>,
        },
        Forward {
            #[pin]
            fut: S::Future,
            usage: Option<(Usage, Headers)>,
        },
        Answer { res: Option<Response<ResB>> },
    }
}

/// Forwards `req` to `inner` or answers for it, once the store has decided.
#[inline]
pub(super) fn decide<S, St, R, ReqB, ResB>(
    inner: &mut S,
    headers: &Arc<Headers>,
    render: &mut R,
    decision: Decision,
    req: Request<ReqB>,
) -> State<S, St, R, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB>,
{
    match decision {
        Decision::Allow { remaining, reset } => State::Forward {
            fut: inner.call(req),
            usage: headers
                .any()
                .then(|| (Usage { remaining, reset }, Headers::clone(headers))),
        },
        Decision::Deny { retry_after, reset } => {
            let mut rejection = Rejection::new(RejectionKind::RateLimited)
                .for_request(&req)
                .with_retry_after(retry_after);
            // `Retry-After` is whole seconds, at least one; `t` is never less.
            let wait = Duration::from_secs(ceil_secs(retry_after).max(1));
            let mut extra = HeaderMap::new();
            headers.apply(
                &mut extra,
                Usage {
                    remaining: 0,
                    reset: reset.max(wait),
                },
            );
            for (name, value) in extra {
                if let Some(name) = name {
                    rejection = rejection.with_header(name, value);
                }
            }
            State::Answer {
                res: Some(rejection.into_response_with(render)),
            }
        }
        Decision::Unavailable => State::Answer {
            res: Some(
                Rejection::new(RejectionKind::ServiceUnavailable)
                    .with_detail("the rate-limit store is unavailable")
                    .for_request(&req)
                    .into_response_with(render),
            ),
        },
    }
}

/// What the client has left, for the headers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Usage {
    remaining: u32,
    reset: Duration,
}

/// Which headers go on responses, and the parts that never change.
#[derive(Clone, Debug)]
pub(super) struct Headers {
    pub(super) ietf: bool,
    pub(super) legacy: bool,
    policy: HeaderValue,
    limit: HeaderValue,
}

impl Headers {
    pub(super) fn new(quota: Quota) -> Self {
        let policy = format!(
            "\"default\";q={};w={}",
            quota.requests(),
            ceil_secs(quota.window())
        );
        Self {
            ietf: true,
            legacy: false,
            policy: interned(policy),
            limit: interned(quota.requests().to_string()),
        }
    }

    pub(super) fn any(&self) -> bool {
        self.ietf || self.legacy
    }

    /// Sets the headers on `headers`, replacing any of the same names.
    pub(super) fn apply(&self, headers: &mut HeaderMap, usage: Usage) {
        let reset = ceil_secs(usage.reset);
        if self.ietf {
            // `"default";r=<u32>;t=<u64>`: at most 44 bytes, written without `fmt`.
            const PREFIX: &[u8] = b"\"default\";r=";
            let mut buf = [0u8; 48];
            buf[..PREFIX.len()].copy_from_slice(PREFIX);
            let mut len = PREFIX.len();
            len += write_decimal(&mut buf[len..], u64::from(usage.remaining));
            buf[len..len + 3].copy_from_slice(b";t=");
            len += 3;
            len += write_decimal(&mut buf[len..], reset);
            headers.insert(RATELIMIT_POLICY, self.policy.clone());
            headers.insert(
                RATELIMIT,
                HeaderValue::from_bytes(&buf[..len]).expect("digits and quotes are a valid value"),
            );
        }
        if self.legacy {
            headers.insert(X_RATELIMIT_LIMIT, self.limit.clone());
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(usage.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
        }
    }
}

/// `value` as a header value whose clones cost no reference count: each distinct value is
/// kept once for the life of the process (one per distinct quota, so a handful), and
/// responses clone it from there.
fn interned(value: String) -> HeaderValue {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let value: &'static str = match seen.get(value.as_str()) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(value.into_boxed_str());
            seen.insert(kept);
            kept
        }
    };
    HeaderValue::from_static(value)
}

/// Writes `n` in decimal at the start of `buf` (at least 20 bytes long); returns the length.
fn write_decimal(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    buf[..len].copy_from_slice(&digits[i..]);
    len
}

#[cfg(test)]
mod tests {
    use super::write_decimal;

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 1234567890, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0u8; 20];
            let len = write_decimal(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
    }
}
