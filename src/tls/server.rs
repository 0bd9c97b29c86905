//! [`ServerTls`]: a listener's certificates, chosen by SNI and swapped on reload.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite};

use super::certs::{self, CertificateInfo};
use super::{TlsError, VERSIONS, alpn, provider};
use crate::extensions::TlsInfo;

/// A TLS stream the listener accepted (tokio-rustls' server stream).
pub use tokio_rustls::server::TlsStream;

/// TLS 1.2 sessions remembered for resumption (TLS 1.3 resumes from tickets).
const SESSION_CACHE: usize = 4096;

/// How long [`ServerTls::watch`] waits for a changed file to hold still before reading it:
/// an editor or a deploy script may be halfway through writing it.
const SETTLE: Duration = Duration::from_millis(250);

/// A listener's TLS settings: the files to read and what to offer; see the
/// [module docs](super). `build()` reads them.
#[derive(Clone, Debug)]
#[must_use]
pub struct ServerTlsBuilder {
    default: (PathBuf, PathBuf),
    more: Vec<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    http2: bool,
    on_load: Option<LoadHook>,
}

/// A hook called with the certificates each load serves.
#[derive(Clone)]
struct LoadHook(Arc<LoadFn>);

type LoadFn = dyn Fn(&[CertificateInfo]) + Send + Sync;

impl fmt::Debug for LoadHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoadHook")
    }
}

impl ServerTlsBuilder {
    /// Also serves the chain in `cert` with the key in `key` (PEM), to clients whose SNI
    /// names one of its DNS names. The first certificate whose names match wins; a client
    /// that names none of them, or sends no SNI, gets the default certificate.
    pub fn certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.more.push((cert.into(), key.into()));
        self
    }

    /// Asks every client for a certificate and verifies it against the CA certificates in
    /// `path` (PEM): a connection without a valid one fails its handshake.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// Whether ALPN offers `h2` before `http/1.1` (default `true`); without it every client
    /// speaks HTTP/1.1.
    pub fn http2(mut self, enabled: bool) -> Self {
        self.http2 = enabled;
        self
    }

    /// Calls `hook` with the certificates served, default first, when they are first read and
    /// after each reload that swaps them in: for an expiry metric
    /// ([`record_tls_certificates`](crate::metrics::record_tls_certificates) with the
    /// `metrics` feature) or an alert.
    pub fn on_load<F>(mut self, hook: F) -> Self
    where
        F: Fn(&[CertificateInfo]) + Send + Sync + 'static,
    {
        self.on_load = Some(LoadHook(Arc::new(hook)));
        self
    }

    /// Reads and checks the files; see [`ServerTls::reload`] for what is checked.
    pub fn build(self) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|error| TlsError::Settings(error.to_string()))?;
        let files = Snapshot::read(&self.paths());
        let loaded = load(&self, &provider, &sessions, &ticketer, &files)?;
        if let Some(LoadHook(hook)) = &self.on_load {
            hook(&loaded.certificates);
        }
        Ok(ServerTls {
            shared: Arc::new(Shared {
                settings: self,
                provider,
                sessions,
                ticketer,
                current: ArcSwap::from_pointee(loaded),
                seen: Mutex::new(files),
            }),
        })
    }

    /// Every file the settings name, in a fixed order.
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.default.0.clone(), self.default.1.clone()];
        for (cert, key) in &self.more {
            paths.push(cert.clone());
            paths.push(key.clone());
        }
        paths.extend(self.client_ca.iter().cloned());
        paths
    }
}

/// A listener's certificates, ready to accept TLS connections and reloaded in place; see the
/// [module docs](super). Cloning is a reference-count bump, and clones share the
/// certificates: a reload through one is seen by all.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    settings: ServerTlsBuilder,
    provider: Arc<CryptoProvider>,
    /// Kept across reloads, so clients resume their sessions after one.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    current: ArcSwap<Loaded>,
    /// The files' contents as last looked at, loaded or refused: a change is what the
    /// watcher reacts to, so a bad file is reported once.
    seen: Mutex<Snapshot>,
}

/// What one load made of the files.
struct Loaded {
    config: Arc<ServerConfig>,
    certificates: Vec<CertificateInfo>,
    /// The client certificate verifier, with `client_ca`.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.shared.settings)
            .field("certificates", &self.shared.current.load().certificates)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Settings that serve the chain in `cert` with the key in `key` (PEM files) to every
    /// client, unless a certificate added with
    /// [`certificate`](ServerTlsBuilder::certificate) matches its SNI.
    pub fn builder(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ServerTlsBuilder {
        ServerTlsBuilder {
            default: (cert.into(), key.into()),
            more: Vec::new(),
            client_ca: None,
            http2: true,
            on_load: None,
        }
    }

    /// Does the TLS handshake on `io` with the current certificates, and tells what it
    /// negotiated (to be put in each request's extensions). Bound it with a timeout: a
    /// client may never finish it.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<(TlsStream<IO>, TlsInfo)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = Arc::clone(&self.shared.current.load().config);
        let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
        let conn = stream.get_ref().1;
        if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            // A resumed session brings the client certificate it was verified with, maybe
            // under a CA that is no longer trusted, or since expired: verified again, by the
            // certificates and the clock of now.
            if let Some(verifier) = &self.shared.current.load().verifier {
                verify_again(verifier.as_ref(), conn)?;
            }
        }
        let info = session_info(conn);
        Ok((stream, info))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.shared.settings.client_ca.is_some()
    }

    /// The certificates served now, default first.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        self.shared.current.load().certificates.clone()
    }

    /// Reads the files again and, when every chain parses, every key matches its
    /// certificate, every additional certificate has a DNS name and the client CA bundle
    /// (if any) holds a certificate, serves them to new connections. Otherwise the running
    /// certificates keep serving and the error says what is wrong. Connections already
    /// open are never touched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = Snapshot::read(&self.shared.settings.paths());
        self.load(files)
    }

    /// Watches the files, looking every `every`: when their contents change (and then hold
    /// still for a moment), it [reloads](Self::reload) them and logs one line, `info` when
    /// the new certificates serve, `error` when they were refused. Runs until dropped; spawn
    /// it.
    pub fn watch(&self, every: Duration) -> impl Future<Output = ()> + Send + 'static {
        let tls = self.clone();
        async move {
            let paths = tls.shared.settings.paths();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let files = Snapshot::read(&paths);
                if files == *tls.seen() {
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
                if Snapshot::read(&paths) != files {
                    continue;
                }
                match tls.load(files) {
                    Ok(()) => tracing::info!(
                        certificates = tls.shared.current.load().certificates.len(),
                        "reloaded the TLS certificates (the files changed)"
                    ),
                    Err(error) => tracing::error!(
                        "TLS certificate reload refused, the running certificates keep serving: {error}"
                    ),
                }
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self, files: Snapshot) -> Result<(), TlsError> {
        let shared = &*self.shared;
        let result = load(
            &shared.settings,
            &shared.provider,
            &shared.sessions,
            &shared.ticketer,
            &files,
        );
        *self.seen() = files;
        let loaded = result?;
        if let Some(LoadHook(hook)) = &shared.settings.on_load {
            hook(&loaded.certificates);
        }
        shared.current.store(Arc::new(loaded));
        Ok(())
    }
}

/// The contents of every file, in [`ServerTlsBuilder::paths`] order (`Err` when a file
/// could not be read).
#[derive(PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, Result<Vec<u8>, io::ErrorKind>)>);

impl Snapshot {
    fn read(paths: &[PathBuf]) -> Self {
        Self(
            paths
                .iter()
                .map(|path| (path.clone(), std::fs::read(path).map_err(|e| e.kind())))
                .collect(),
        )
    }

    fn get(&self, path: &Path) -> Result<&[u8], TlsError> {
        let (_, contents) = self
            .0
            .iter()
            .find(|(p, _)| p == path)
            .expect("every path of the settings is read");
        contents.as_deref().map_err(|kind| TlsError::Read {
            path: path.to_owned(),
            source: io::Error::from(*kind),
        })
    }
}

/// Makes a server config of `files`, the contents of the files `settings` names.
fn load(
    settings: &ServerTlsBuilder,
    provider: &Arc<CryptoProvider>,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
    files: &Snapshot,
) -> Result<Loaded, TlsError> {
    let pair = |(cert, key): &(PathBuf, PathBuf)| {
        certs::certified_key(cert, files.get(cert)?, key, files.get(key)?, provider)
    };
    let (default, default_info) = pair(&settings.default)?;
    let mut resolver = BySni {
        default,
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    let mut certificates = vec![default_info.clone()];
    // The default's own names first, so another certificate's wildcard never shadows them.
    resolver.add(&default_info, &resolver.default.clone());
    for files in &settings.more {
        let (key, info) = pair(files)?;
        if info.names.is_empty() {
            return Err(TlsError::NoNames(info.path));
        }
        resolver.add(&info, &key);
        certificates.push(info);
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|error| TlsError::Settings(error.to_string()))?;
    let mut client_verifier = None;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_error = |detail: String| TlsError::ClientCa {
                path: path.clone(),
                detail,
            };
            let roots = certs::root_store(path, files.get(path)?, ca_error)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|error| ca_error(error.to_string()))?;
            client_verifier = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn(settings.http2);
    config.session_storage = Arc::clone(sessions);
    config.ticketer = Arc::clone(ticketer);
    Ok(Loaded {
        config: Arc::new(config),
        certificates,
        verifier: client_verifier,
    })
}

/// Picks the certificate for a client's SNI: an exact name, else a wildcard for its parent
/// domain, else the default.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the domain under the `*.`: `*.example.com` is under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl BySni {
    fn add(&mut self, info: &CertificateInfo, key: &Arc<CertifiedKey>) {
        for name in &info.names {
            let (map, name) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent),
                None => (&mut self.exact, name.as_str()),
            };
            map.entry(name.to_owned())
                .or_insert_with(|| Arc::clone(key));
        }
    }

    fn pick(&self, name: &str) -> &Arc<CertifiedKey> {
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = match hello.server_name() {
            // rustls hands the name over lowercased.
            Some(name) => self.pick(name),
            None => &self.default,
        };
        Some(Arc::clone(key))
    }
}

/// Verifies the client certificate of a resumed session as a new handshake would.
fn verify_again(verifier: &dyn ClientCertVerifier, conn: &ServerConnection) -> io::Result<()> {
    let refused = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("resumed session refused: {why}"),
        )
    };
    let Some((end_entity, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first())
    else {
        return Err(refused("no client certificate".to_owned()));
    };
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map(drop)
        .map_err(|error| refused(error.to_string()))
}

/// What a finished handshake negotiated, for the requests of its connection.
fn session_info(conn: &ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let mut info = TlsInfo::new(version);
    if let Some(name) = conn.server_name() {
        info = info.with_server_name(name);
    }
    if let Some(protocol) = conn.alpn_protocol() {
        info = info.with_alpn(protocol);
    }
    if let Some(chain) = conn.peer_certificates().filter(|chain| !chain.is_empty()) {
        let name = certs::client_name(chain[0].as_ref()).map(String::into_boxed_str);
        let chain: Box<[Bytes]> = chain
            .iter()
            .map(|cert| Bytes::copy_from_slice(cert.as_ref()))
            .collect();
        info = info.with_client_certificate(chain, name);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        // The resolver only hands keys out; any will do, and none is ever used to sign here.
        let provider = provider();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
        Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], key, &provider).unwrap())
    }

    fn info(names: &[&str]) -> CertificateInfo {
        CertificateInfo {
            path: PathBuf::from("x.pem"),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            common_name: None,
            not_after: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let (default, a, wild) = (key(), key(), key());
        let mut sni = BySni {
            default: Arc::clone(&default),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        sni.add(&info(&["a.example.com"]), &a);
        sni.add(&info(&["*.example.com", "a.example.com"]), &wild);
        assert!(Arc::ptr_eq(sni.pick("a.example.com"), &a));
        assert!(Arc::ptr_eq(sni.pick("b.example.com"), &wild));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(sni.pick("x.b.example.com"), &default));
        assert!(Arc::ptr_eq(sni.pick("example.com"), &default));
        assert!(Arc::ptr_eq(sni.pick("other.test"), &default));
    }
}
