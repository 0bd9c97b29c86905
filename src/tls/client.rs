//! [`UpstreamTls`]: how the proxy verifies `https://` upstreams and proves itself to them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};

use super::certs;
use super::{TlsError, VERSIONS, provider};

/// How `https://` upstreams are spoken to: verified against the system's root certificates
/// or a CA bundle of your own, with an optional client certificate (for an upstream that
/// wants mTLS), and HTTP/2 or HTTP/1.1 as ALPN decides. The server name sent (SNI) and
/// verified is the upstream URL's host.
///
/// ```no_run
/// use tower_gateway::tls::UpstreamTls;
///
/// let tls = UpstreamTls::new()
///     .ca("upstream-ca.pem")
///     .client_certificate("client.crt", "client.key");
/// tls.check().expect("readable PEM files");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[must_use]
pub struct UpstreamTls {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    http1_only: bool,
}

impl UpstreamTls {
    /// The system's root certificates, no client certificate, ALPN `h2` and `http/1.1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies upstreams against the CA certificates in `path` (PEM) instead of the
    /// system's roots.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Presents the chain in `cert` with the key in `key` (PEM) to upstreams that ask for a
    /// client certificate.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    /// Offers only `http/1.1` by ALPN (default: `h2` first).
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    /// Reads the files and checks them, as building a client does.
    pub fn check(&self) -> Result<(), TlsError> {
        self.client_config().map(drop)
    }

    /// The rustls client config these settings make.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let roots = match &self.ca {
            Some(path) => {
                let unusable = |detail| TlsError::Pem {
                    path: path.clone(),
                    detail,
                };
                Arc::new(certs::root_store(path, &certs::read(path)?, unusable)?)
            }
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(VERSIONS)
            .map_err(|error| TlsError::Settings(error.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs::certificates(cert, &certs::read(cert)?)?;
                let private = certs::private_key(key, &certs::read(key)?)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|error| TlsError::KeyMismatch {
                        cert: cert.clone(),
                        key: key.clone(),
                        detail: error.to_string(),
                    })?
            }
        };
        Ok(config)
    }

    /// The protocols to offer by ALPN, best first (the client config leaves them out: the
    /// proxy's connector sets its own).
    #[cfg(feature = "proxy")]
    pub(crate) fn alpn(&self) -> Vec<Vec<u8>> {
        super::alpn(!self.http1_only)
    }

    /// Whether ALPN offers `h2`.
    #[cfg(feature = "proxy")]
    pub(crate) fn http2(&self) -> bool {
        !self.http1_only
    }
}

#[cfg(feature = "proxy")]
impl UpstreamTls {
    /// A config that trusts no root: every handshake fails verification. What a client gets
    /// for `https://` upstreams when the system has no roots and no CA was given.
    pub(crate) fn no_roots_config() -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    }
}

/// The system's root certificates, read once.
pub(crate) fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(format!(
                    "the system's root certificates cannot be loaded ({why}); install them (ca-certificates) or give the upstream a CA file"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::Roots)
}
