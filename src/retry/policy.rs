//! [`RetryPolicy`]: when to retry, and how long to wait first.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{RETRY_AFTER, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Sleep;

use super::budget::RetryBudget;
use super::replay_body::RetryBody;
use crate::classify::{FailureClassifier, ResponseHead};
use crate::extensions::MatchedRoute;
use crate::random::random;

/// Which methods are retried, as bits.
pub(super) const GET: u8 = 1;
pub(super) const HEAD: u8 = 1 << 1;
pub(super) const OPTIONS: u8 = 1 << 2;
pub(super) const PUT: u8 = 1 << 3;
pub(super) const DELETE: u8 = 1 << 4;

/// What a [`RetryLayer`](super::RetryLayer) was configured with; shared by every request.
pub(super) struct Settings<C> {
    pub(super) max_retries: u32,
    pub(super) base_delay: Duration,
    pub(super) max_delay: Duration,
    pub(super) retry_after_cap: Option<Duration>,
    pub(super) methods: u8,
    pub(super) replay_limit: usize,
    pub(super) budget: Arc<RetryBudget>,
    pub(super) classifier: Arc<C>,
    /// The service inside hands request heads back (see `RetryLayer::hand_back`).
    pub(super) hand_back: bool,
    /// Told of every retry decided on (see `RetryLayer::on_retry`).
    pub(super) on_retry: Option<RetryHook>,
}

/// A retry decided on, as [`RetryLayer::on_retry`](super::RetryLayer::on_retry) reports it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Retrying {
    /// Which retry this is, from 1 (the request's second attempt).
    pub attempt: u32,
    /// The wait before it is sent: the backoff, or the upstream's `Retry-After`.
    pub wait: Duration,
    /// The failed attempt's status, or `None` when it ended in an error.
    pub status: Option<StatusCode>,
}

pub(super) type RetryHook = Arc<dyn Fn(&Retrying) + Send + Sync>;

impl<C> Clone for Settings<C> {
    fn clone(&self) -> Self {
        Self {
            budget: Arc::clone(&self.budget),
            classifier: Arc::clone(&self.classifier),
            on_retry: self.on_retry.clone(),
            ..*self
        }
    }
}

impl<C> fmt::Debug for Settings<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("max_retries", &self.max_retries)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("retry_after_cap", &self.retry_after_cap())
            .field("methods", &self.method_names())
            .field("replay_limit", &self.replay_limit)
            .field("budget", &self.budget)
            .field("hand_back", &self.hand_back)
            .field("on_retry", &self.on_retry.as_ref().map(|_| "<fn>"))
            .finish_non_exhaustive()
    }
}

impl<C> Settings<C> {
    /// Whether a request may be retried at all: a retried method, no upgrade.
    #[inline]
    pub(super) fn retries<B>(&self, req: &Request<B>) -> bool {
        let bit = match *req.method() {
            Method::GET => GET,
            Method::HEAD => HEAD,
            Method::OPTIONS => OPTIONS,
            Method::PUT => PUT,
            Method::DELETE => DELETE,
            _ => return false,
        };
        self.methods & bit != 0 && self.max_retries > 0 && !req.headers().contains_key(UPGRADE)
    }

    /// The longest upstream `Retry-After` that is waited for: the larger of `max_delay` and
    /// 1 s unless set.
    pub(super) fn retry_after_cap(&self) -> Duration {
        self.retry_after_cap
            .unwrap_or(self.max_delay.max(Duration::from_secs(1)))
    }

    pub(super) fn method_names(&self) -> Vec<&'static str> {
        [
            (GET, "GET"),
            (HEAD, "HEAD"),
            (OPTIONS, "OPTIONS"),
            (PUT, "PUT"),
            (DELETE, "DELETE"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.methods & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }

    /// The wait before retry number `attempt` (from 1): a random time up to
    /// `base_delay × 2^(attempt - 1)`, capped at `max_delay` ("full jitter").
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(31))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(random() % nanos.saturating_add(1))
    }
}

/// The wait an upstream asked for in `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The [`tower::retry::Policy`] behind [`RetryLayer`](super::RetryLayer): one per request
/// (cloned from the layer's, which counts nothing), counting that request's retries.
///
/// It retries an attempt that failed by the layer's
/// [`FailureClassifier`](crate::classify::FailureClassifier) (or with an error of the inner
/// service) while retries are left, the body can be sent again and the
/// [`RetryBudget`] allows it, after the upstream's `Retry-After` when it gave one within the
/// cap (an attempt told to wait longer is not retried), else after a jittered exponential
/// backoff.
pub struct RetryPolicy<C> {
    settings: Arc<Settings<C>>,
    attempts: u32,
}

impl<C> RetryPolicy<C> {
    pub(super) fn new(settings: Arc<Settings<C>>) -> Self {
        Self {
            settings,
            attempts: 0,
        }
    }

    /// The retries this request has made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl<C> Clone for RetryPolicy<C> {
    fn clone(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
            attempts: self.attempts,
        }
    }
}

impl<C> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("settings", &self.settings)
            .finish()
    }
}

/// A failed attempt that may be retried, as far as its answer tells.
#[derive(Clone, Copy, Debug)]
pub(super) struct Failure {
    /// The status of the failed answer; `None` for an error of the inner service.
    status: Option<u16>,
    /// The wait the upstream asked for in `Retry-After`, within the cap.
    asked: Option<Duration>,
}

impl<C: FailureClassifier> RetryPolicy<C> {
    /// Whether the answer to an attempt calls for another one: a failure by the classifier
    /// (never a `4xx`) or an error, with retries left and no `Retry-After` beyond the cap.
    pub(super) fn failed<ResB, E>(&self, result: &Result<Response<ResB>, E>) -> Option<Failure> {
        let settings = &*self.settings;
        let (status, asked) = match result {
            Ok(res) => {
                // Never a 4xx, whatever the classifier counts for the circuit breaker.
                if res.status().is_client_error()
                    || !settings.classifier.is_failure(&ResponseHead::from(res))
                {
                    return None;
                }
                (Some(res.status().as_u16()), retry_after(res.headers()))
            }
            Err(_) => (None, None),
        };
        if self.attempts >= settings.max_retries {
            return None;
        }
        if let Some(wait) = asked {
            if wait > settings.retry_after_cap() {
                tracing::debug!(
                    status,
                    retry_after = ?wait,
                    "not retrying: the upstream asked for a longer wait than the cap"
                );
                return None;
            }
        }
        Some(Failure { status, asked })
    }

    /// Whether the request whose attempt failed is sent again, with `body`: the wait before
    /// it when the body can be sent whole and the budget has a retry left (which this takes).
    pub(super) fn admit<B: Body>(
        &mut self,
        failure: Failure,
        req: &Request<RetryBody<B>>,
    ) -> Option<Duration> {
        let Failure { status, asked } = failure;
        if !req.body().claim() {
            tracing::debug!(
                status,
                "not retrying: the request body cannot be sent again"
            );
            return None;
        }
        if !self.settings.budget.withdraw() {
            tracing::debug!(status, "not retrying: the retry budget is spent");
            return None;
        }
        self.attempts += 1;
        let wait = asked.unwrap_or_else(|| self.settings.backoff(self.attempts));
        let route = req
            .extensions()
            .get::<MatchedRoute>()
            .map(MatchedRoute::prefix);
        tracing::debug!(
            retry.attempt = self.attempts,
            status,
            wait = ?wait,
            route,
            path = req.uri().path(),
            "retrying"
        );
        if let Some(hook) = &self.settings.on_retry {
            hook(&Retrying {
                attempt: self.attempts,
                wait,
                status: status.and_then(|code| StatusCode::from_u16(code).ok()),
            });
        }
        Some(wait)
    }

    /// Whether another attempt may follow the coming one.
    pub(super) fn has_retries_left(&self) -> bool {
        self.attempts < self.settings.max_retries
    }
}

impl<C, B, ResB, E> tower::retry::Policy<Request<RetryBody<B>>, Response<ResB>, E>
    for RetryPolicy<C>
where
    C: FailureClassifier,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Future = Pin<Box<Sleep>>;

    fn retry(
        &mut self,
        req: &mut Request<RetryBody<B>>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let failure = self.failed(result)?;
        let wait = self.admit(failure, req)?;
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, req: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
        if !self.has_retries_left() {
            return None;
        }
        let body = req.body().try_clone()?;
        Some(Request::from_parts(copy_parts(req), body))
    }
}

/// A copy of `req`'s method, URI, version, headers and extensions.
pub(super) fn copy_parts<B>(req: &Request<B>) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = req.method().clone();
    parts.uri = req.uri().clone();
    parts.version = req.version();
    parts.headers = req.headers().clone();
    parts.extensions = req.extensions().clone();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ServerErrors;

    fn settings(base: u64, max: u64) -> Settings<ServerErrors> {
        Settings {
            max_retries: 3,
            base_delay: Duration::from_millis(base),
            max_delay: Duration::from_millis(max),
            retry_after_cap: None,
            methods: GET | HEAD | OPTIONS,
            replay_limit: 64 * 1024,
            budget: Arc::new(RetryBudget::default()),
            classifier: Arc::new(ServerErrors),
            hand_back: false,
            on_retry: None,
        }
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling_and_capped() {
        let settings = settings(100, 350);
        for (attempt, ceiling) in [(1, 100), (2, 200), (3, 350), (4, 350), (40, 350)] {
            let waits: Vec<_> = (0..2000).map(|_| settings.backoff(attempt)).collect();
            let max = waits.iter().max().unwrap();
            let min = waits.iter().min().unwrap();
            assert!(
                *max <= Duration::from_millis(ceiling),
                "attempt {attempt}: {max:?}"
            );
            // Full jitter: the waits spread over the whole range.
            assert!(
                *max > Duration::from_millis(ceiling * 9 / 10),
                "attempt {attempt}"
            );
            assert!(
                *min < Duration::from_millis(ceiling / 10),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn a_zero_base_delay_retries_at_once() {
        assert_eq!(settings(0, 0).backoff(3), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date passed");
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_the_configured_methods_are_retried_and_never_upgrades() {
        let settings = settings(1, 1);
        let req = |method: Method| Request::builder().method(method).body(()).unwrap();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(settings.retries(&req(method)));
        }
        for method in [
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
        ] {
            assert!(!settings.retries(&req(method)));
        }
        let upgrade = Request::builder()
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!settings.retries(&upgrade));
    }
}
