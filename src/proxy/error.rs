//! [`ProxyError`]: why the upstream exchange failed.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Why the proxy could not get a response head from the upstream.
///
/// The proxy answers such a failure with a `502` rejection and puts the `ProxyError` into the
/// response extensions beside the [`Rejection`](crate::rejection::Rejection), so a failure
/// classifier, a log line or a test can tell a refused connection from a broken one without
/// parsing anything. The `source()` chain is kept. Cloning is a reference-count bump.
#[derive(Clone)]
pub struct ProxyError {
    kind: Kind,
    source: Arc<dyn StdError + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect,
    Exchange,
}

impl ProxyError {
    pub(crate) fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        let kind = if error.is_connect() {
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

    /// The connection was made but the exchange broke before a response head arrived.
    pub fn is_exchange(&self) -> bool {
        self.kind == Kind::Exchange
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
        }
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
