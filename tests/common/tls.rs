//! TLS for the tests: a throwaway CA that issues server and client certificates into a
//! temporary directory, a rustls client, HTTP/1.1 and HTTP/2 exchanges over any stream, and
//! an upstream that speaks HTTP/1.1, h2c or TLS (with ALPN) and says what it saw, and the
//! gateway served over TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A CA of its own and the files it issued, in a directory removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A certificate and key issued by a [`Pki`], as files and PEM text.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// The certificate chain, parsed.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// The private key, parsed.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-gateway-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tower-gateway test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir, ca };
        std::fs::write(pki.ca_path(), pki.ca.pem()).unwrap();
        pki
    }

    /// The CA certificate's PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses), written as
    /// `{file}.crt` and `{file}.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        self.issue(file, params)
    }

    /// A client certificate whose subject common name is `name`.
    pub fn client(&self, file: &str, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key, &issued.key_pem).unwrap();
        issued
    }

    /// A store that trusts this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config that trusts `pki`, offers `alpn`, and shows `client` if given. Every
/// connection makes a full handshake, so it shows the certificate served now (a resumed
/// session shows the one it began with).
pub fn client_config(pki: &Pki, client: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = config(pki, rustls::DEFAULT_VERSIONS, client, alpn);
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A client config that trusts `pki`, speaks only `version`, offers `http/1.1`, shows
/// `client` if given, and resumes sessions (rustls' default).
pub fn resuming_client_config(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    client: Option<&Issued>,
) -> Arc<ClientConfig> {
    Arc::new(config(pki, &[version], client, &[b"http/1.1"]))
}

fn config(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<&Issued>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(issued.chain(), issued.private_key())
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Connects to `addr` over TLS, asking for `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// The subject alternative names of the certificate the server presented.
pub fn presented_names(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<String> {
    let cert = &stream.get_ref().1.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| name.to_string())
        .collect()
}

/// An answer as a test reads it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

async fn read(res: Response<Incoming>) -> Answer {
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A client connection: HTTP/2 when `h2`, else HTTP/1.1.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<SentBody>),
    H2(hyper::client::conn::http2::SendRequest<SentBody>),
}

/// What a test sends as a request body.
pub type SentBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Conn {
    pub async fn open<IO>(io: IO, h2: bool) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Self::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(send)
        }
    }

    /// Sends `req` (its URI absolute: HTTP/2 needs the authority, HTTP/1.1 gets it as
    /// `Host`) and reads the whole answer.
    pub async fn send<B>(&mut self, req: Request<B>) -> Result<Answer, hyper::Error>
    where
        B: http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
    {
        let mut req = req.map(BodyExt::boxed);
        let res = match self {
            Self::H1(send) => {
                let authority = req.uri().authority().unwrap().to_string();
                req.headers_mut()
                    .insert(http::header::HOST, authority.parse().unwrap());
                let path = req.uri().path_and_query().unwrap().clone();
                *req.uri_mut() = http::Uri::from(path);
                send.ready().await?;
                send.send_request(req).await?
            }
            Self::H2(send) => {
                *req.version_mut() = http::Version::HTTP_2;
                send.ready().await?;
                send.send_request(req).await?
            }
        };
        Ok(read(res).await)
    }

    pub async fn get(&mut self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap()
    }
}

/// How a test upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 in plaintext.
    Http1,
    /// HTTP/2 with prior knowledge, in plaintext.
    H2c,
}

/// Starts an upstream that answers every request with JSON `{version, method, path,
/// headers, client_name}`: plaintext as `speaks` says, or TLS with `tls` (HTTP/2 or
/// HTTP/1.1 by ALPN), where `client_name` is the common name of the client certificate it
/// was shown, if any.
pub async fn echo_upstream(speaks: Speaks, tls: Option<Arc<ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve(stream, speaks == Speaks::H2c, None).await,
                    Some(config) => {
                        let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let conn = stream.get_ref().1;
                        let h2 = conn.alpn_protocol() == Some(b"h2");
                        let client = conn.peer_certificates().map(|chain| {
                            let (_, cert) =
                                x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
                            let cn = cert.subject().iter_common_name().next().unwrap();
                            cn.as_str().unwrap().to_owned()
                        });
                        serve(stream, h2, client).await;
                    }
                }
            });
        }
    });
    addr
}

async fn serve<IO>(io: IO, h2: bool, client_name: Option<String>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let client_name = client_name.clone();
        async move {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::from(v.to_str().unwrap_or("?")),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "version": format!("{:?}", req.version()),
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "headers": headers,
                "client_name": client_name,
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
        }
    });
    let io = TokioIo::new(io);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    };
}

/// A rustls server config for `issued`, offering `alpn`, asking for client certificates
/// signed by `client_ca` if given.
pub fn server_config(
    issued: &Issued,
    alpn: &[&[u8]],
    client_ca: Option<&Pki>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pki) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(pki.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        ),
    };
    let mut config = builder
        .with_single_cert(issued.chain(), issued.private_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Builds `builder`'s gateway and serves it with [`Server`] on a fresh loopback port, over
/// TLS with `tls` if given.
pub async fn serve_gateway(
    builder: tower_gateway::builder::GatewayBuilder,
    tls: Option<tower_gateway::tls::ServerTls>,
) -> SocketAddr {
    serve_gateway_built(builder.build().unwrap(), tls).await
}

/// Serves `gateway` with [`Server`], over TLS with `tls` if given.
pub async fn serve_gateway_built(
    gateway: tower_gateway::builder::Gateway,
    tls: Option<tower_gateway::tls::ServerTls>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = tower_gateway::server::Server::new();
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    tokio::spawn(server.serve(listener, gateway, std::future::pending()));
    addr
}

/// Writes `contents` to `path` in one step (a rename), as a deploy would.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
