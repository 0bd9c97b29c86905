//! TLS on rustls: the listener's certificates ([`ServerTls`]), hot-reloaded, chosen by SNI,
//! with optional client certificates (mTLS); and the settings for `https://` upstreams
//! ([`UpstreamTls`]).
//!
//! The crypto provider is **aws-lc-rs** (rustls' default; it builds with a C compiler alone,
//! no cmake), for the server, the upstream client and, later, JWT verification: one crypto
//! stack in the binary.
//!
//! # The listener
//! [`ServerTls::builder`] takes a PEM certificate chain and key, the default certificate;
//! [`certificate`](ServerTlsBuilder::certificate) adds more, each served to clients whose SNI
//! names one of its DNS names (wildcards `*.example.com` match one label). The listener
//! speaks TLS 1.3 and 1.2 only, offers ALPN `h2` and `http/1.1`, and resumes sessions (TLS
//! 1.3 tickets, a session cache for 1.2), also across reloads: a resumed session's client
//! certificate is verified again, against the CA and the clock of now, so taking a CA out
//! locks its clients out at their next connection.
//!
//! [`client_ca`](ServerTlsBuilder::client_ca) makes the listener ask for a client
//! certificate and verify it against that CA bundle: a connection without a valid one fails
//! its handshake. A verified certificate reaches every request of its connection as a
//! [`TlsInfo`](crate::extensions::TlsInfo), whose
//! [`client_name`](crate::extensions::TlsInfo::client_name) (the subject's common name;
//! without one, the first DNS, e-mail or URI subject alternative name, else `serial:` and the
//! serial number in hex) the
//! [`Server`](crate::server::Server) also makes the request's
//! [`Identity`](crate::extensions::Identity).
//!
//! **Reload**: [`ServerTls::reload`] reads the files again, checks that every chain parses,
//! every key matches its certificate and the CA bundle holds a certificate, and only then
//! swaps them in: new handshakes get the new certificates, open connections are untouched,
//! and a bad file leaves the old ones serving. [`ServerTls::watch`] does that whenever the
//! files' contents change (and logs one line per change, good or bad); call `reload` on
//! SIGHUP.
//!
//! # Example: HTTPS and HTTP/2 for an axum app
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::server::Server;
//! use tower_gateway::tls::ServerTls;
//!
//! let tls = ServerTls::builder("server.crt", "server.key").build()?;
//! tokio::spawn(tls.watch(Duration::from_secs(1)));
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello over TLS" }));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! Server::new().tls(tls).serve(listener, app, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! With a hyper server of your own, [`ServerTls::accept`] does the handshake and tells what
//! it negotiated:
//! ```no_run
//! # async fn run(tls: tower_gateway::tls::ServerTls, stream: tokio::net::TcpStream) -> std::io::Result<()> {
//! let (stream, info) = tls.accept(stream).await?;
//! let h2 = info.alpn() == Some(b"h2");
//! // Serve `hyper_util::rt::TokioIo::new(stream)` with hyper's http2 builder when `h2`, else
//! // http1, and put `info` (and a PeerAddr) into each request's extensions.
//! # let _ = (stream, h2); Ok(())
//! # }
//! ```

mod certs;
mod client;
mod server;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub use certs::CertificateInfo;
pub use client::UpstreamTls;
pub use server::{ServerTls, ServerTlsBuilder, TlsStream};

/// A certificate, key or CA file that cannot be used; the running certificates (on a reload)
/// keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid PEM, or holds something that is not what it should.
    #[error("{}: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file holds no certificate.
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    /// The file holds no private key.
    #[error("{}: no private key in the file", .0.display())]
    NoKey(PathBuf),
    /// The key is not the certificate's, or cannot be used.
    #[error("the key in {} does not match the certificate in {}: {detail}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// An additional certificate names no DNS name for SNI to choose it by.
    #[error("{}: the certificate names no DNS name (subject alternative name) to be chosen by", .0.display())]
    NoNames(PathBuf),
    /// The client CA bundle cannot verify client certificates.
    #[error("client CA {}: {detail}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No root certificates to verify an upstream with.
    #[error("no root certificates: {0}")]
    Roots(String),
    /// rustls refused the settings.
    #[error("TLS settings refused: {0}")]
    Settings(String),
}

/// The crypto provider every TLS piece of the crate uses: aws-lc-rs.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// The protocol versions spoken, both ways: TLS 1.3 and 1.2 only.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The protocols offered by ALPN, best first.
fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}
