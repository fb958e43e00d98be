//! TLS (rustls) for the S3, KV and peer listeners and the peer client, with certificates that
//! rotate without a restart.
//!
//! The node's certificate, its key and the CAs are PEM files (in Kubernetes, a mounted Secret).
//! They are read every `tls.reload_every`; when their content changed and loads (a chain, a key
//! that matches it, CAs that parse), new handshakes use it at once, while connections already
//! open keep the session they have. Content that does not load is logged once and the previous
//! certificate stays. The rustls configs are built once: the certificate resolver and the
//! verifiers they hold read the currently loaded state, so nothing has to be rebuilt on rotation.
//!
//! The peer transport is mutual TLS: both sides present the node certificate and verify the other
//! side's chain against the cluster CA (`tls.ca`). The server name is not checked: pod addresses
//! change and a node certificate need not name them; holding a certificate of the cluster CA is
//! what makes a pool member.
//!
//! One crypto provider, aws-lc-rs (the one object_store's rustls already uses), is installed as
//! the process default once ([`provider`]) and passed explicitly to every config.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_core::config::TlsSection;
use parking_lot::{Mutex, RwLock};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The crypto provider of every TLS config: aws-lc-rs, installed as the process default the first
/// time it is asked for.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::aws_lc_rs::default_provider();
            // Another library may have installed one first; cairn's configs name theirs anyway.
            let _ = p.clone().install_default();
            Arc::new(p)
        })
        .clone()
}

/// The listeners that may run TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    S3,
    Kv,
    Peer,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::S3, Listener::Kv, Listener::Peer];

    fn name(self) -> &'static str {
        match self {
            Listener::S3 => "s3",
            Listener::Kv => "kv",
            Listener::Peer => "peer",
        }
    }
}

/// What the files held when they last loaded.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Checks a peer's server certificate against the cluster CA (`tls.ca`).
    peer_server: Option<Arc<WebPkiServerVerifier>>,
    /// Checks a peer's client certificate against the cluster CA.
    peer_client: Option<Arc<dyn ClientCertVerifier>>,
    /// Checks S3 and KV clients' certificates against `tls.client_ca`.
    client: Option<Arc<dyn ClientCertVerifier>>,
    /// SHA-256 of the leaf certificate, hex: names the certificate in logs and metrics.
    fingerprint: String,
}

type Current = Arc<RwLock<Arc<Loaded>>>;

/// The contents of the configured files, or why one could not be read.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    client_ca: Vec<u8>,
}

impl Files {
    fn paths(cfg: &TlsSection) -> [&str; 4] {
        [&cfg.cert, &cfg.key, &cfg.ca, &cfg.client_ca]
    }

    fn from_parts(mut parts: Vec<Vec<u8>>) -> Self {
        let client_ca = parts.pop().unwrap_or_default();
        let ca = parts.pop().unwrap_or_default();
        let key = parts.pop().unwrap_or_default();
        let cert = parts.pop().unwrap_or_default();
        Self { cert, key, ca, client_ca }
    }

    fn read_blocking(cfg: &TlsSection) -> Result<Self, String> {
        let mut parts = Vec::with_capacity(4);
        for path in Self::paths(cfg) {
            parts.push(if path.is_empty() {
                Vec::new()
            } else {
                std::fs::read(path).map_err(|e| format!("{path}: {e}"))?
            });
        }
        Ok(Self::from_parts(parts))
    }

    async fn read(cfg: &TlsSection) -> Result<Self, String> {
        let mut parts = Vec::with_capacity(4);
        for path in Self::paths(cfg) {
            parts.push(if path.is_empty() {
                Vec::new()
            } else {
                tokio::fs::read(path).await.map_err(|e| format!("{path}: {e}"))?
            });
        }
        Ok(Self::from_parts(parts))
    }

    fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [&self.cert, &self.key, &self.ca, &self.client_ca] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.digest()
    }
}

fn roots(pem: &[u8], what: &str) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{what}: {e}"))?;
        store.add(cert).map_err(|e| format!("{what}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("{what}: no certificate in the file"));
    }
    Ok(Arc::new(store))
}

fn load(cfg: &TlsSection, files: &Files, provider: &Arc<CryptoProvider>) -> Result<Loaded, String> {
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cfg.cert))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("tls.cert {}: no certificate in the file", cfg.cert));
    };
    let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| format!("tls.key {}: {e}", cfg.key))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("tls.key {} does not go with tls.cert {}: {e}", cfg.key, cfg.cert))?;
    let (mut peer_server, mut peer_client, mut client) = (None, None, None);
    if cfg.peer {
        let ca = roots(&files.ca, &format!("tls.ca {}", cfg.ca))?;
        peer_server = Some(
            WebPkiServerVerifier::builder_with_provider(ca.clone(), provider.clone())
                .build()
                .map_err(|e| format!("tls.ca {}: {e}", cfg.ca))?,
        );
        peer_client = Some(
            WebPkiClientVerifier::builder_with_provider(ca, provider.clone())
                .build()
                .map_err(|e| format!("tls.ca {}: {e}", cfg.ca))?,
        );
    }
    if !cfg.client_ca.is_empty() {
        let ca = roots(&files.client_ca, &format!("tls.client_ca {}", cfg.client_ca))?;
        client = Some(
            WebPkiClientVerifier::builder_with_provider(ca, provider.clone())
                .build()
                .map_err(|e| format!("tls.client_ca {}: {e}", cfg.client_ca))?,
        );
    }
    Ok(Loaded { key: Arc::new(key), peer_server, peer_client, client, fingerprint })
}

/// This node's TLS state: the loaded files, the rustls configs of each side, and counters.
pub struct Tls {
    cfg: TlsSection,
    provider: Arc<CryptoProvider>,
    current: Current,
    /// Digest of the file contents last tried, loaded or not (a bad file is reported once).
    tried: Mutex<u64>,
    clients: Arc<ServerConfig>,
    peer_server: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    handshake_failures: [AtomicU64; 3],
}

impl Tls {
    /// Loads the configured files; an error names the file that did not load.
    pub fn new(cfg: &TlsSection) -> Result<Arc<Self>, String> {
        let provider = provider();
        let files = Files::read_blocking(cfg)?;
        let loaded = load(cfg, &files, &provider)?;
        let fingerprint = loaded.fingerprint.clone();
        let current: Current = Arc::new(RwLock::new(Arc::new(loaded)));
        let resolver = Arc::new(Resolver(current.clone()));
        let versions = |e: rustls::Error| format!("TLS protocol versions: {e}");
        let client_auth: Arc<dyn ClientCertVerifier> = if cfg.client_ca.is_empty() {
            WebPkiClientVerifier::no_client_auth()
        } else {
            Arc::new(Verifier { current: current.clone(), provider: provider.clone(), kind: Kind::Client })
        };
        let clients = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_client_cert_verifier(client_auth)
            .with_cert_resolver(resolver.clone());
        let peer_auth = Arc::new(Verifier { current: current.clone(), provider: provider.clone(), kind: Kind::Peer });
        let peer_server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_client_cert_verifier(peer_auth.clone())
            .with_cert_resolver(resolver.clone());
        let peer_client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .dangerous()
            .with_custom_certificate_verifier(peer_auth)
            .with_client_cert_resolver(resolver);
        tracing::info!(cert = %cfg.cert, %fingerprint, s3 = cfg.s3, kv = cfg.kv, peer = cfg.peer, "TLS certificate loaded");
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            provider,
            current,
            tried: Mutex::new(files.digest()),
            clients: Arc::new(clients),
            peer_server: Arc::new(peer_server),
            peer_client: Arc::new(peer_client),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            handshake_failures: Default::default(),
        }))
    }

    pub fn config(&self) -> &TlsSection {
        &self.cfg
    }

    /// Whether `listener` runs TLS.
    pub fn on(&self, listener: Listener) -> bool {
        match listener {
            Listener::S3 => self.cfg.s3,
            Listener::Kv => self.cfg.kv,
            Listener::Peer => self.cfg.peer,
        }
    }

    /// The client side of the peer transport (mutual TLS against the cluster CA).
    pub fn peer_client_config(&self) -> Arc<ClientConfig> {
        self.peer_client.clone()
    }

    /// Reads the files again and swaps in what they hold when it changed and loads.
    pub async fn reload(&self) {
        let (digest, files) = match Files::read(&self.cfg).await {
            Ok(f) => (f.digest(), Ok(f)),
            Err(e) => (xxhash_rust::xxh3::xxh3_64(e.as_bytes()), Err(e)),
        };
        {
            let mut tried = self.tried.lock();
            if *tried == digest {
                return;
            }
            *tried = digest;
        }
        match files.and_then(|f| load(&self.cfg, &f, &self.provider)) {
            Ok(loaded) => {
                let fingerprint = loaded.fingerprint.clone();
                *self.current.write() = Arc::new(loaded);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.cfg.cert, %fingerprint, "TLS files changed: new handshakes use the new certificate");
            }
            Err(e) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                let fingerprint = self.current.read().fingerprint.clone();
                tracing::error!(error = %e, %fingerprint, "TLS files changed but do not load; keeping the certificate in use");
            }
        }
    }

    /// Polls the files every `tls.reload_every` until the task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.cfg.reload_every.0);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                this.reload().await;
            }
        })
    }

    pub fn collect_metrics(&self, out: &mut crate::metrics::Scrape) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.counters(
            "cairn_tls_reloads_total",
            "Changes of the TLS files: loaded (ok) or refused, the previous certificate kept (error).",
            "result",
            &[("ok", get(&self.reloads)), ("error", get(&self.reload_errors))],
        );
        let rows: Vec<(&str, u64)> =
            Listener::ALL.iter().zip(&self.handshake_failures).map(|(l, c)| (l.name(), get(c))).collect();
        out.counters(
            "cairn_tls_handshake_failures_total",
            "Incoming TLS handshakes that failed or timed out (on the peer port: also certificates not of the cluster CA).",
            "listener",
            &rows,
        );
        out.gauge_family(
            "cairn_tls_certificate_info",
            "The certificate new handshakes use: SHA-256 of its leaf.",
            vec![(vec![("fingerprint", self.current.read().fingerprint.clone())], 1u64.into())],
        );
    }
}

/// Hands out the currently loaded certificate, as a server and as a peer client.
struct Resolver(Current);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cairn TLS certificate resolver")
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Peers, both ways, against the cluster CA.
    Peer,
    /// S3 and KV clients, against `tls.client_ca`.
    Client,
}

/// Verifies the other side's certificate with the verifiers of the currently loaded CA.
struct Verifier {
    current: Current,
    provider: Arc<CryptoProvider>,
    kind: Kind,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cairn TLS certificate verifier")
    }
}

impl Verifier {
    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let loaded = self.current.read();
        let v = match self.kind {
            Kind::Peer => loaded.peer_client.clone(),
            Kind::Client => loaded.client.clone(),
        };
        v.ok_or_else(|| rustls::Error::General("no CA loaded to verify this certificate".into()))
    }

    fn tls12(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> SignatureResult {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn tls13(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> SignatureResult {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

type SignatureResult = Result<HandshakeSignatureValid, rustls::Error>;

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA can change under the config; clients send the one certificate they have anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.client_verifier()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> SignatureResult {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> SignatureResult {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self
            .current
            .read()
            .peer_server
            .clone()
            .ok_or_else(|| rustls::Error::General("no cluster CA loaded".into()))?;
        // The chain is checked before the name: a name mismatch means the chain is of the cluster CA.
        match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> SignatureResult {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> SignatureResult {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server name a peer is dialled with, from its `host:port` address.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("peer address {addr}: {e}"))
}

/// How one listener turns accepted TCP connections into streams: plain, or a TLS handshake.
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<Tls>)>,
    listener: Listener,
}

impl Acceptor {
    /// The acceptor of `listener`: TLS when `tls` turns it on, else plain TCP.
    pub fn new(tls: Option<&Arc<Tls>>, listener: Listener) -> Self {
        let tls = tls.filter(|t| t.on(listener)).map(|t| {
            let config = if listener == Listener::Peer { t.peer_server.clone() } else { t.clients.clone() };
            (tokio_rustls::TlsAcceptor::from(config), t.clone())
        });
        Self { tls, listener }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake (none for plain TCP). The caller bounds its time.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<Stream> {
        let Some((acceptor, tls)) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        match acceptor.accept(tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) => {
                self.count_failure(tls);
                Err(e)
            }
        }
    }

    fn count_failure(&self, tls: &Tls) {
        let i = Listener::ALL.iter().position(|l| *l == self.listener).unwrap_or(0);
        tls.handshake_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// [`Acceptor::handshake`] within `timeout`; a failure is logged (debug) and counted.
    pub async fn accept(&self, tcp: TcpStream, peer: std::net::SocketAddr, timeout: Duration) -> Option<Stream> {
        match tokio::time::timeout(timeout, self.handshake(tcp)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(listener = self.listener.name(), %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                if let Some((_, tls)) = &self.tls {
                    self.count_failure(tls);
                }
                tracing::debug!(listener = self.listener.name(), %peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// An accepted connection: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_peer_addresses() {
        assert_eq!(server_name("10.0.0.1:9100"), Ok(ServerName::try_from("10.0.0.1").expect("ip")));
        assert_eq!(server_name("[::1]:9100"), Ok(ServerName::try_from("::1").expect("ip")));
        assert_eq!(server_name("cairn-0.cairn.svc:9100"), Ok(ServerName::try_from("cairn-0.cairn.svc").expect("dns")));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn missing_or_mismatched_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let cfg = TlsSection {
            cert: garbage.display().to_string(),
            key: garbage.display().to_string(),
            s3: true,
            ..TlsSection::default()
        };
        let err = Tls::new(&cfg).err().expect("garbage does not load");
        assert!(err.contains("tls.cert") && err.contains("garbage.pem"), "{err}");
        let missing = TlsSection { cert: dir.path().join("nope").display().to_string(), ..cfg };
        let err = Tls::new(&missing).err().expect("a missing file does not load");
        assert!(err.contains("nope"), "{err}");
    }
}
