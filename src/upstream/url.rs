//! [`Upstream`]: where a pool's endpoint is, parsed once.

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// An upstream URL that is not `http://`, `https://` or `h2c://host[:port][/base-path]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Not a URL at all.
    #[error("invalid upstream URL {0:?}: expected http://host[:port][/path]")]
    Invalid(String),
    /// A scheme other than `http`, `https` (with the `tls` feature) and `h2c`.
    #[error("unsupported scheme in upstream URL {0:?}: http://, https:// and h2c:// are supported")]
    Scheme(String),
    /// An `https` URL in a build without the `tls` feature.
    #[error("upstream URL {0:?} needs TLS: build with the `tls` feature")]
    NoTls(String),
    /// A query, or user information in the authority.
    #[error("upstream URL {0:?} must not have a query or user information")]
    Extra(String),
}

/// Where one endpoint of a pool is: scheme, authority and an optional base path, parsed
/// from `http://host[:port][/base-path]`, `https://...` (TLS, HTTP/2 or HTTP/1.1 as ALPN
/// decides) or `h2c://...` (HTTP/2 with prior knowledge, in plaintext).
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    transport: Transport,
    authority: Authority,
    host: HeaderValue,
    base: Option<Box<str>>,
    url: Box<str>,
}

/// How the proxy speaks to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// `http://`: HTTP/1.1 in plaintext.
    Http,
    /// `https://`: TLS, then HTTP/2 or HTTP/1.1 as ALPN decides.
    Https,
    /// `h2c://`: HTTP/2 with prior knowledge, in plaintext.
    H2c,
}

impl Upstream {
    /// Parses `http://host[:port][/base-path]` (or `https://`, `h2c://`). The base path, if
    /// any, is put in front of the path of every forwarded request.
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| UpstreamError::Invalid(url.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError::Invalid(url.to_owned()));
        };
        let (scheme, transport) = match scheme.as_str() {
            "http" => (Scheme::HTTP, Transport::Http),
            "https" if cfg!(feature = "tls") => (Scheme::HTTPS, Transport::Https),
            "https" => return Err(UpstreamError::NoTls(url.to_owned())),
            "h2c" => (Scheme::HTTP, Transport::H2c),
            _ => return Err(UpstreamError::Scheme(url.to_owned())),
        };
        if uri.query().is_some() || authority.as_str().contains('@') || authority.host().is_empty()
        {
            return Err(UpstreamError::Extra(url.to_owned()));
        }
        let base = uri.path().trim_end_matches('/');
        Ok(Self {
            scheme,
            transport,
            authority: authority.clone(),
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|_| UpstreamError::Invalid(url.to_owned()))?,
            base: (!base.is_empty()).then(|| base.into()),
            url: url.into(),
        })
    }

    /// The URL it was parsed from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How the proxy speaks to it.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The authority (`host:port`) connections go to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header the upstream is sent.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream URI for a request to `uri` (whose path and query are kept).
    pub(crate) fn uri_for(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match (&self.base, uri.path_and_query()) {
            (None, Some(pq)) => pq.clone(),
            (None, None) => PathAndQuery::from_static("/"),
            (Some(base), pq) => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{base}{pq}")).ok()?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}
