//! Typed request extensions that several layers read: [`CorrelationId`] and [`PeerAddr`].
//!
//! They live here, not in the layer that sets them, because concern modules never import each
//! other: the rate limiter, the proxy and every rejection read them without depending on
//! the correlation ID layer or the server.

use std::fmt;
use std::net::SocketAddr;

use http::header::HeaderValue;

/// The correlation ID of a request, as the
/// [`CorrelationIdLayer`](crate::correlation_id::CorrelationIdLayer) put it in the request
/// extensions.
///
/// Every [`Rejection`](crate::rejection::Rejection) captures it, so layers find it in the
/// request extensions without depending on the correlation ID layer. It is always 1 to 128
/// visible ASCII characters (`0x21..=0x7e`), so it is a valid header value and a valid JSON
/// string without escaping.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The longest correlation ID that is accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Accepts `value` when it is 1 to [`MAX_LEN`](Self::MAX_LEN) visible ASCII characters.
    pub fn from_header_value(value: &HeaderValue) -> Option<Self> {
        Self::is_valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// Accepts `value` when it is 1 to [`MAX_LEN`](Self::MAX_LEN) visible ASCII characters.
    pub fn from_bytes(value: &[u8]) -> Option<Self> {
        if !Self::is_valid(value) {
            return None;
        }
        let value = HeaderValue::from_bytes(value).expect("visible ASCII is a valid header value");
        Some(Self(value))
    }

    /// Wraps a value the caller has already made valid (a generated ID).
    #[cfg(feature = "correlation-id")]
    pub(crate) fn from_valid(value: HeaderValue) -> Self {
        debug_assert!(Self::is_valid(value.as_bytes()));
        Self(value)
    }

    /// Whether `value` is an acceptable correlation ID: 1 to 128 bytes, each `0x21..=0x7e`.
    pub fn is_valid(value: &[u8]) -> bool {
        // A fold rather than `all`: no early exit, so the check vectorizes.
        (1..=Self::MAX_LEN).contains(&value.len())
            && value.iter().fold(true, |ok, b| ok & b.is_ascii_graphic())
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        self.0
            .to_str()
            .expect("a correlation ID is visible ASCII by construction")
    }

    /// The ID as a header value; cloning it is a reference-count bump at most.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address of the client's end of the connection, as the server put it in the request
/// extensions (the way axum's `ConnectInfo` does).
///
/// [`server::serve`](crate::server) sets it on every request. The proxy appends its IP to
/// `X-Forwarded-For`; an embedder who serves the gateway some other way inserts it
/// themselves:
///
/// ```
/// use tower_gateway::extensions::PeerAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr("192.0.2.7:50123".parse().unwrap()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);
