//! [`ProxyError`]: why the upstream exchange failed, and whose fault that was.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use super::body::{BodyFault, ClientBodyError};
use crate::rejection::{Fault, RejectionKind};

/// Why the proxy could not get a response head from the upstream, and whose
/// [`Fault`] that was.
///
/// The upstream's failures (it could not be reached, or broke the exchange) are answered
/// `502`. The client's (its request body was malformed, cut short, stalled, or the client
/// went away while sending it) are answered `400`, `408` or `499` and never count against
/// the upstream. Either way the `ProxyError` goes into the response extensions beside the
/// [`Rejection`](crate::rejection::Rejection), so a failure classifier, a log line or a test
/// can tell them apart without parsing anything. The `source()` chain is kept. Cloning is a
/// reference-count bump.
#[derive(Clone)]
pub struct ProxyError {
    kind: Kind,
    source: Arc<dyn StdError + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect,
    Exchange,
    ClientBody(BodyFault),
}

impl ProxyError {
    pub(crate) fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        let kind = if let Some(body) = ClientBodyError::find(&error) {
            // Whatever else broke, it broke because the client's body did.
            Kind::ClientBody(body.fault())
        } else if error.is_connect() {
            Kind::Connect
        } else {
            Kind::Exchange
        };
        Self {
            kind,
            source: Arc::new(error),
        }
    }

    /// The connection to the upstream could not be made (refused, unreachable, DNS).
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The connection was made but the upstream broke the exchange before a response head
    /// arrived (a reset, a malformed answer).
    pub fn is_exchange(&self) -> bool {
        self.kind == Kind::Exchange
    }

    /// Whose fault it was: [`Fault::Client`] when the client's request body failed (then
    /// nothing is known about the upstream), else [`Fault::Upstream`].
    pub fn fault(&self) -> Fault {
        match self.kind {
            Kind::ClientBody(_) => Fault::Client,
            Kind::Connect | Kind::Exchange => Fault::Upstream,
        }
    }

    /// The answer the proxy gives for it, and that answer's detail.
    pub(crate) fn answer(&self) -> (RejectionKind, &'static str) {
        match self.kind {
            Kind::Connect => (
                RejectionKind::BadGateway,
                "the upstream could not be reached",
            ),
            Kind::Exchange => (
                RejectionKind::BadGateway,
                "the upstream connection failed before it answered",
            ),
            Kind::ClientBody(BodyFault::Malformed) => {
                (RejectionKind::BadRequest, "the request body is malformed")
            }
            Kind::ClientBody(BodyFault::Truncated) => (
                RejectionKind::BadRequest,
                "the request body ended before its announced length",
            ),
            Kind::ClientBody(BodyFault::Stalled) => (
                RejectionKind::RequestTimeout,
                "the request body sent nothing for too long",
            ),
            Kind::ClientBody(BodyFault::Gone) => (
                RejectionKind::ClientClosedRequest,
                "the client went away while sending the request body",
            ),
        }
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Connect => f.write_str("could not connect to the upstream"),
            Kind::Exchange => f.write_str("the upstream exchange failed"),
            Kind::ClientBody(_) => f.write_str("the client's request body failed"),
        }
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
