//! Whether an answer counts as a failure of the upstream: the [`FailureClassifier`] that the
//! circuit breaker and retry share.
//!
//! The default, [`ServerErrors`], counts what the contract counts: an upstream `5xx`, the
//! gateway's own `504` (the upstream was too slow) and `502` (it could not be reached or
//! broke the exchange). A `4xx` is never a failure: the client asked for something wrong, and
//! neither tripping a breaker nor retrying would help. Anything else you want counted (a
//! `429` from the upstream, a header it sets when degraded) is a closure away:
//!
//! ```
//! use http::{Response, StatusCode};
//! use tower_gateway::classify::{FailureClassifier, ResponseHead, ServerErrors};
//!
//! let busy_too = |res: &ResponseHead<'_>| {
//!     res.status() == StatusCode::TOO_MANY_REQUESTS || ServerErrors.is_failure(res)
//! };
//! let res = Response::builder().status(429).body(()).unwrap();
//! assert!(busy_too.is_failure(&ResponseHead::from(&res)));
//! assert!(!ServerErrors.is_failure(&ResponseHead::from(&res)));
//! ```
//!
//! An error from the inner service (rather than an answer) is always a failure; the
//! gateway's own stack has none, since it answers every failure with a response.

use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Response, StatusCode};

use crate::rejection::{Fault, Rejection};

/// A borrowed view of a response's head (everything but the body): three references.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> ResponseHead<'a> {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The extensions: a gateway answer carries its [`Rejection`] there.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// Whether this answer says anything about the upstream: its own answer, or the
    /// gateway's `502` or `504` for it (a rejection whose [`Fault`] is the upstream's). A
    /// refusal of the gateway's own (a full bulkhead, a rate limit, auth, a route's own
    /// layer) never reached the upstream, and a client's fault (a broken or stalled request
    /// body, a client that left) says nothing about it, so a circuit breaker counts neither
    /// as a failure nor as a success.
    pub fn is_about_upstream(&self) -> bool {
        self.extensions
            .get::<Rejection>()
            .is_none_or(|rejection| rejection.fault() == Fault::Upstream)
    }
}

impl<'a, B> From<&'a Response<B>> for ResponseHead<'a> {
    #[inline]
    fn from(res: &'a Response<B>) -> Self {
        Self {
            status: res.status(),
            headers: res.headers(),
            extensions: res.extensions(),
        }
    }
}

/// Tells whether an answer is a failure of the upstream. Closures
/// `Fn(&ResponseHead<'_>) -> bool` are classifiers too.
pub trait FailureClassifier: Send + Sync + 'static {
    /// Whether `res` counts as a failure.
    fn is_failure(&self, res: &ResponseHead<'_>) -> bool;
}

impl<F> FailureClassifier for F
where
    F: Fn(&ResponseHead<'_>) -> bool + Send + Sync + 'static,
{
    #[inline]
    fn is_failure(&self, res: &ResponseHead<'_>) -> bool {
        self(res)
    }
}

/// The default classifier: every `5xx` is a failure (the upstream's, and the gateway's own
/// `502` and `504`); nothing else is.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerErrors;

impl FailureClassifier for ServerErrors {
    #[inline]
    fn is_failure(&self, res: &ResponseHead<'_>) -> bool {
        res.status().is_server_error()
    }
}

/// Any classifier behind an `Arc`, so that one type serves every route (the
/// [builder](crate::builder)'s `Route::classifier`). Cloning is a reference-count bump; the
/// default is [`ServerErrors`].
#[derive(Clone)]
pub struct SharedClassifier(Arc<dyn FailureClassifier>);

impl SharedClassifier {
    /// Shares `classifier`.
    pub fn new(classifier: impl FailureClassifier) -> Self {
        Self(Arc::new(classifier))
    }
}

impl Default for SharedClassifier {
    fn default() -> Self {
        Self::new(ServerErrors)
    }
}

impl fmt::Debug for SharedClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClassifier(..)")
    }
}

impl FailureClassifier for SharedClassifier {
    #[inline]
    fn is_failure(&self, res: &ResponseHead<'_>) -> bool {
        self.0.is_failure(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::RejectionKind;
    use bytes::Bytes;

    fn status(code: u16) -> Response<Bytes> {
        Response::builder().status(code).body(Bytes::new()).unwrap()
    }

    #[test]
    fn server_errors_fail_and_client_errors_never_do() {
        for code in [500, 502, 503, 504, 599] {
            assert!(
                ServerErrors.is_failure(&ResponseHead::from(&status(code))),
                "{code}"
            );
        }
        for code in [200, 204, 301, 304, 400, 401, 404, 408, 429, 499] {
            assert!(
                !ServerErrors.is_failure(&ResponseHead::from(&status(code))),
                "{code}"
            );
        }
    }

    #[test]
    fn the_gateways_own_timeouts_and_unreachable_upstreams_fail() {
        for kind in [RejectionKind::GatewayTimeout, RejectionKind::BadGateway] {
            let res: Response<Bytes> = Rejection::new(kind).into_response();
            let head = ResponseHead::from(&res);
            assert!(ServerErrors.is_failure(&head), "{kind:?}");
            assert_eq!(head.extensions().get::<Rejection>().unwrap().kind(), kind);
        }
        let res: Response<Bytes> =
            Rejection::new(RejectionKind::ConcurrencyLimited).into_response();
        assert!(
            !ServerErrors.is_failure(&ResponseHead::from(&res)),
            "a full bulkhead is no upstream failure"
        );
        assert!(
            !ResponseHead::from(&res).is_about_upstream(),
            "nor a success"
        );
        for kind in [RejectionKind::GatewayTimeout, RejectionKind::BadGateway] {
            let res: Response<Bytes> = Rejection::new(kind).into_response();
            assert!(ResponseHead::from(&res).is_about_upstream(), "{kind:?}");
        }
        assert!(ResponseHead::from(&status(500)).is_about_upstream());
    }

    #[test]
    fn a_clients_fault_says_nothing_about_the_upstream() {
        for kind in [
            RejectionKind::BadRequest,
            RejectionKind::RequestTimeout,
            RejectionKind::ClientClosedRequest,
        ] {
            assert_eq!(kind.fault(), Fault::Client);
            let res: Response<Bytes> = Rejection::new(kind).into_response();
            let head = ResponseHead::from(&res);
            assert!(!head.is_about_upstream(), "{kind:?}");
            assert!(!ServerErrors.is_failure(&head), "{kind:?}");
        }
    }

    #[test]
    fn a_users_own_5xx_answer_says_nothing_about_the_upstream() {
        // A layer of the user's answering 502 or 503 itself never reached the upstream: the
        // breaker counts it neither as a failure nor as a success.
        for code in [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE] {
            let res: Response<Bytes> = Rejection::new(RejectionKind::Other(code)).into_response();
            assert!(!ResponseHead::from(&res).is_about_upstream(), "{code}");
        }
    }

    #[test]
    fn closures_classify_with_the_whole_head() {
        let degraded = |res: &ResponseHead<'_>| res.headers().contains_key("x-degraded");
        let mut res = status(200);
        assert!(!degraded.is_failure(&ResponseHead::from(&res)));
        res.headers_mut().insert("x-degraded", "1".parse().unwrap());
        assert!(degraded.is_failure(&ResponseHead::from(&res)));

        let shared = SharedClassifier::new(degraded);
        assert!(shared.clone().is_failure(&ResponseHead::from(&res)));
        assert!(SharedClassifier::default().is_failure(&ResponseHead::from(&status(502))));
        assert!(!SharedClassifier::default().is_failure(&ResponseHead::from(&res)));
    }
}
