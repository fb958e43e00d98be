//! This node's view of the cluster: the map (re-read when its file changes), routing of chunks and
//! object metadata to their owners, suspect peers, and the peer transport client.
//!
//! Peers talk HTTP/1.1 over pooled keep-alive connections (mutual TLS with `tls.peer`), every
//! request signed with a key derived from the cluster's secret (`peer_auth.rs`). A request a peer receives is served there (from its tiers or by its
//! own single-flight origin fetch) and never forwarded again, so two nodes with different map
//! versions cannot bounce a request between them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn_core::cluster::ClusterMap;
use cairn_core::cluster::NodeEntry;
use cairn_core::config::ClusterSection;
use cairn_core::placement::{Placement, key_hash};
use cairn_origin::{Error as OriginError, ErrorKind, ObjectInfo};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::{Mutex, RwLock};

use crate::metrics::Metrics;
use crate::peer_auth::{AUTH_HEADER, PeerKey};
use crate::tls::Tls;

/// The pooled peer client: HTTP/1.1, over TLS when the peer transport uses it.
pub type PeerClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A request body of pieces sent in order, with its exact length (so no chunked encoding).
pub struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl Pieces {
    pub fn new(pieces: Vec<Bytes>) -> Self {
        let left = pieces.iter().map(|p| p.len() as u64).sum();
        Self { pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(), left }
    }
}

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front();
        if let Some(p) = &next {
            self.left -= p.len() as u64;
        }
        std::task::Poll::Ready(next.map(|p| Ok(hyper::body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}
/// Header naming the error code of a failed peer request.
pub const ERROR_HEADER: &str = "x-cairn-error";
/// Nodes tried after the owners before a requester reads the origin itself.
const EXTRA_CANDIDATES: usize = 2;
/// How long an idle pooled connection to a peer is kept for reuse; shorter than the time after
/// which a peer closes an idle connection (`peer::PEER_IDLE_TIMEOUT`), so a request never goes out
/// on a connection the peer is closing.
pub const PEER_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest body buffer reserved up front from a peer's Content-Length.
const MAX_BODY_PREALLOC: u64 = 256 << 20;
/// Successful chunk request durations kept to derive the hedge delay.
const LATENCY_SAMPLES: usize = 256;
/// Samples needed before the hedge delay follows them (until then: `peer_max_wait`).
const LATENCY_MIN_SAMPLES: usize = 16;
/// The hedge delay is this many times the observed 99th percentile...
const HEDGE_FACTOR: u32 = 4;
/// ...and never below this, so ordinary jitter never doubles origin reads.
const HEDGE_MIN: Duration = Duration::from_millis(500);
/// Samples between two computations of the hedge delay.
const HEDGE_RECOMPUTE_EVERY: u64 = 16;
/// Shortest liveness probe timeout.
const PROBE_MIN: Duration = Duration::from_millis(200);

/// Why a peer request failed.
#[derive(Debug)]
pub enum PeerError {
    /// Refused, timed out, unreachable, cut off, or answered with a server error: try the next node.
    Unavailable(String),
    /// The peer answered for the origin (no such key, version changed, ...): do not retry elsewhere.
    Origin(OriginError),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Unavailable(m) => f.write_str(m),
            PeerError::Origin(e) => write!(f, "{:?}: {}", e.kind, e.message),
        }
    }
}

impl PeerError {
    /// The peer answered `507 InsufficientStorage` (a write route: its disk cannot take the
    /// write). It is alive: nothing to mark suspect. [`Cluster::call`] maps that code, and only
    /// that one, to `Origin(Backend)`.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, PeerError::Origin(e) if e.kind == ErrorKind::Backend)
    }
}

/// A chunk owner's answer: the bytes, or holders to fetch them from and the digest to check.
pub enum ChunkAnswer {
    Bytes(Bytes),
    Holders(Vec<String>, u64),
}

/// Header of an owner's hand-off answer (303): the holders to ask, in order.
pub const HOLDERS_HEADER: &str = "x-cairn-holders";
/// Header of an owner's hand-off answer: xxh3-64 of the chunk, hex.
pub const DIGEST_HEADER: &str = "x-cairn-digest";

/// Identifies one chunk of one object version for a peer.
pub struct ChunkQuery<'a> {
    pub origin: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub version: &'a str,
    pub size: u64,
    pub chunk_size: u64,
    pub index: u64,
}

impl<'a> ChunkQuery<'a> {
    /// Chunk `index` of object version `v` cut in `chunk_size` pieces.
    pub fn new(v: &'a cairn_core::ObjectVersion, chunk_size: u64, index: u64) -> Self {
        Self { origin: &v.origin, bucket: &v.bucket, key: &v.key, version: &v.version, size: v.size, chunk_size, index }
    }
}

pub struct Cluster {
    pub node_id: String,
    cfg: ClusterSection,
    /// The map file (map mode); `None` when membership comes from gossip.
    map_path: Option<PathBuf>,
    /// Gossip membership (gossip mode), set once it runs.
    pub gossip: std::sync::OnceLock<Arc<crate::gossip::Gossip>>,
    map_mtime: Mutex<Option<SystemTime>>,
    placement: RwLock<Arc<Placement>>,
    client: PeerClient<Pieces>,
    /// Signs peer requests; derived from the cluster secret, which never leaves the node.
    key: PeerKey,
    /// TLS state when the peer transport runs mutual TLS (`tls.peer`).
    tls: Option<Arc<Tls>>,
    suspects: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
    /// Recent successful chunk request durations, newest last.
    latencies: Mutex<std::collections::VecDeque<Duration>>,
    /// The hedge delay derived from `latencies`, in nanoseconds (0: not enough samples yet);
    /// recomputed every `HEDGE_RECOMPUTE_EVERY` samples so a chunk request only reads it.
    hedge_nanos: AtomicU64,
    /// Successful chunk requests observed.
    observed: AtomicU64,
}

/// Where a key's requests go: its candidates in ranking order and whether this node owns it.
pub struct Route {
    pub candidates: Vec<NodeEntry>,
    pub self_is_owner: bool,
}

impl Cluster {
    pub fn load(cfg: &ClusterSection, metrics: Arc<Metrics>, tls: Option<Arc<Tls>>) -> Result<Self, String> {
        let tls = tls.filter(|t| t.on(crate::tls::Listener::Peer));
        let (map_path, map, mtime) = if cfg.gossip() {
            // Until gossip says otherwise, the cluster is this node.
            let me = NodeEntry {
                id: cfg.node_id.clone(),
                addr: advertised_peer_addr(cfg)?,
                zone: cfg.zone.clone(),
                rack: cfg.rack.clone(),
                weight: cfg.weight,
                state: cairn_core::cluster::NodeState::Up,
            };
            (
                None,
                ClusterMap { version: cairn_membership::map::digest(std::slice::from_ref(&me)), nodes: vec![me] },
                None,
            )
        } else {
            let map_path = PathBuf::from(&cfg.map);
            let (map, mtime) = read_map(&map_path)?;
            if map.node(&cfg.node_id).is_none() {
                tracing::warn!(node = %cfg.node_id, "this node is not in the cluster map; it will only route requests");
            }
            (Some(map_path), map, Some(mtime))
        };
        let client = peer_client(cfg, tls.as_deref())?;
        Ok(Self {
            node_id: cfg.node_id.clone(),
            cfg: cfg.clone(),
            map_path,
            gossip: std::sync::OnceLock::new(),
            map_mtime: Mutex::new(mtime),
            placement: RwLock::new(Arc::new(Placement::new(&map))),
            client,
            key: PeerKey::from_secret(cfg.secret.as_bytes()),
            tls,
            suspects: Mutex::new(HashMap::new()),
            metrics,
            latencies: Mutex::new(std::collections::VecDeque::with_capacity(LATENCY_SAMPLES)),
            hedge_nanos: AtomicU64::new(0),
            observed: AtomicU64::new(0),
        })
    }

    pub fn placement(&self) -> Arc<Placement> {
        self.placement.read().clone()
    }

    /// The peer transport's TLS state, when it runs TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_deref()
    }

    /// The key peer requests are signed with.
    pub fn key(&self) -> &PeerKey {
        &self.key
    }

    /// The URL of `path_and_query` at the peer at `addr`.
    pub fn peer_url(&self, addr: &str, path_and_query: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}{path_and_query}")
    }

    /// The `x-cairn-auth` header value for a request sent now.
    pub fn sign(&self, method: &Method, path_and_query: &str) -> String {
        self.key.sign(method.as_str(), path_and_query, crate::peer_auth::now_ms())
    }

    pub fn config(&self) -> &ClusterSection {
        &self.cfg
    }

    /// Adopts a map derived from membership, when it differs from the one in use.
    pub fn adopt(&self, map: &ClusterMap) -> bool {
        if self.placement.read().version() == map.version {
            return false;
        }
        let up = map.nodes.iter().filter(|n| n.state == cairn_core::cluster::NodeState::Up).count();
        *self.placement.write() = Arc::new(Placement::new(map));
        tracing::info!(
            digest = format_args!("{:016x}", map.version),
            nodes = map.nodes.len(),
            up,
            "adopted the map derived from membership"
        );
        true
    }

    /// Re-reads the map file if it changed; adopts it if its version is newer.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.map_path else { return Ok(false) };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
        if *self.map_mtime.lock() == Some(mtime) {
            return Ok(false);
        }
        let (map, mtime) = read_map(path)?;
        *self.map_mtime.lock() = Some(mtime);
        let current = self.placement.read().version();
        if map.version <= current {
            tracing::warn!(current, offered = map.version, "cluster map file changed without a newer version; ignored");
            return Ok(false);
        }
        *self.placement.write() = Arc::new(Placement::new(&map));
        tracing::info!(version = map.version, nodes = map.nodes.len(), "adopted cluster map");
        Ok(true)
    }

    /// Polls the map file until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.cfg.map_poll.0);
            loop {
                tick.tick().await;
                if let Err(e) = this.reload() {
                    tracing::warn!(path = %this.cfg.map, error = %e, "cannot read the cluster map; keeping the current one");
                }
            }
        })
    }

    /// The candidates for `key`: its R owners, then a few more nodes of its ranking; healthy
    /// nodes before suspect ones, each group in ranking order.
    pub fn route(&self, key: u64) -> Route {
        self.route_with(key, self.cfg.replicas)
    }

    /// As [`Cluster::route`], for a keyspace with its own number of owners `r` (the KV keyspace).
    pub fn route_with(&self, key: u64, r: usize) -> Route {
        let placement = self.placement();
        let mut idx = Vec::with_capacity(r + EXTRA_CANDIDATES);
        placement.ranking(key, r + EXTRA_CANDIDATES, &mut idx);
        let nodes = placement.nodes();
        let self_is_owner = idx.iter().take(r).any(|&i| nodes[i].id == self.node_id);
        let now = Instant::now();
        let mut suspects = self.suspects.lock();
        suspects.retain(|_, until| *until > now);
        let (healthy, suspect): (Vec<&NodeEntry>, Vec<&NodeEntry>) =
            idx.iter().map(|&i| &nodes[i]).partition(|n| !suspects.contains_key(&n.id));
        let candidates = healthy.into_iter().chain(suspect).cloned().collect();
        Route { candidates, self_is_owner }
    }

    /// Records how long a successful chunk request took; every `HEDGE_RECOMPUTE_EVERY` samples
    /// the hedge delay is derived again from the recent ones.
    pub fn observe(&self, took: Duration) {
        let mut samples: Vec<Duration> = {
            let mut l = self.latencies.lock();
            if l.len() == LATENCY_SAMPLES {
                l.pop_front();
            }
            l.push_back(took);
            let seen = self.observed.fetch_add(1, Ordering::Relaxed) + 1;
            if l.len() < LATENCY_MIN_SAMPLES || !seen.is_multiple_of(HEDGE_RECOMPUTE_EVERY) {
                return;
            }
            l.iter().copied().collect()
        };
        samples.sort_unstable();
        let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
        let delay = (p99 * HEDGE_FACTOR).clamp(HEDGE_MIN, self.cfg.peer_max_wait.0.max(HEDGE_MIN));
        self.hedge_nanos.store(delay.as_nanos() as u64, Ordering::Relaxed);
    }

    /// How long a chunk request may run before the next candidate is asked too: a multiple of
    /// what peers usually take (their 99th percentile), within `HEDGE_MIN..peer_max_wait`;
    /// `peer_max_wait` until enough requests were observed.
    pub fn hedge_delay(&self) -> Duration {
        match self.hedge_nanos.load(Ordering::Relaxed) {
            0 => self.cfg.peer_max_wait.0.max(HEDGE_MIN),
            n => Duration::from_nanos(n),
        }
    }

    /// Whether the peer's process answers: a `GET /healthz` on a fresh connection (with its TLS
    /// handshake, when the transport has one), within half of `peer_timeout`. A frozen process
    /// (SIGSTOP) still completes TCP handshakes from the kernel's backlog, so a connect alone
    /// proves nothing.
    pub async fn probe(&self, node: &NodeEntry) -> bool {
        let timeout = (self.cfg.peer_timeout.0 / 2).max(PROBE_MIN);
        let ask = async {
            let tcp = tokio::net::TcpStream::connect(&node.addr).await.ok()?;
            let req = format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\n{AUTH_HEADER}: {}\r\nConnection: close\r\n\r\n",
                node.addr,
                self.sign(&Method::GET, "/healthz")
            );
            match &self.tls {
                None => probe_over(tcp, &req).await,
                Some(tls) => {
                    let name = crate::tls::server_name(&node.addr).ok()?;
                    let connector = tokio_rustls::TlsConnector::from(tls.peer_client_config());
                    probe_over(connector.connect(name, tcp).await.ok()?, &req).await
                }
            }
        };
        let ok = matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)));
        if !ok {
            Metrics::add(&self.metrics.peer_probes_failed, 1);
        }
        ok
    }

    pub fn mark_suspect(&self, id: &str) {
        Metrics::add(&self.metrics.peer_failovers, 1);
        self.suspects.lock().insert(id.to_owned(), Instant::now() + self.cfg.suspect_for.0);
    }

    pub fn meta_key(origin: &str, bucket: &str, key: &str) -> u64 {
        key_hash(format!("{origin}\0{bucket}\0{key}").as_bytes())
    }

    /// The map's entry for node `id`.
    pub fn node(&self, id: &str) -> Option<NodeEntry> {
        let p = self.placement();
        p.index_of(id).map(|i| p.nodes()[i].clone())
    }

    /// True when the map marks node `id` down or no longer lists it.
    pub fn is_down(&self, id: &str) -> bool {
        self.node(id).is_none_or(|n| n.state != cairn_core::cluster::NodeState::Up)
    }

    /// Every node the map lists as up.
    pub fn up_nodes(&self) -> Vec<NodeEntry> {
        self.placement().nodes().iter().filter(|n| n.state == cairn_core::cluster::NodeState::Up).cloned().collect()
    }

    /// Ranking of `key`: up to `n` nodes, in placement order (down nodes skipped).
    pub fn ranking(&self, key: u64, n: usize) -> Vec<NodeEntry> {
        let p = self.placement();
        let mut idx = Vec::with_capacity(n);
        p.ranking(key, n, &mut idx);
        idx.into_iter().map(|i| p.nodes()[i].clone()).collect()
    }

    /// One peer request with a body (empty for most); the answer's head and body.
    pub async fn call(
        &self,
        node: &NodeEntry,
        method: Method,
        path_and_query: String,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), PeerError> {
        self.call_pieces(node, method, path_and_query, vec![body]).await
    }

    /// [`Cluster::call`] with a body sent as the pieces it is in (a chunk as it was received),
    /// never gathered into one buffer.
    pub async fn call_pieces(
        &self,
        node: &NodeEntry,
        method: Method,
        path_and_query: String,
        body: Vec<Bytes>,
    ) -> Result<(http::response::Parts, Bytes), PeerError> {
        let unavailable = |m: String| PeerError::Unavailable(format!("peer {} ({}): {m}", node.id, node.addr));
        let req = Request::builder()
            .uri(self.peer_url(&node.addr, &path_and_query))
            .header(AUTH_HEADER, self.sign(&method, &path_and_query))
            .method(method)
            .body(Pieces::new(body))
            .map_err(|e| unavailable(e.to_string()))?;
        Metrics::add(&self.metrics.peer_requests, 1);
        // A peer that is slow to answer (busy, or waiting on its origin fetch) is still the owner:
        // while its process answers a probe it is alive, and asking another node would only
        // fetch the chunk from the origin a second time (chunk reads hedge after a delay of
        // their own, see `reader::hedged`). A peer that cannot be reached, or whose process is
        // frozen, fails that probe and the next node is asked.
        let request = self.client.request(req);
        tokio::pin!(request);
        let started = Instant::now();
        let resp = loop {
            match tokio::time::timeout(self.cfg.peer_timeout.0, &mut request).await {
                Ok(r) => break r.map_err(|e| unavailable(e.to_string()))?,
                Err(_) if started.elapsed() >= self.cfg.peer_max_wait.0 => {
                    return Err(unavailable(format!("no answer in {:?}", started.elapsed())));
                }
                Err(_) => {
                    if !self.probe(node).await {
                        return Err(unavailable("no answer, and its process does not answer a probe".into()));
                    }
                    Metrics::add(&self.metrics.peer_slow, 1);
                }
            }
        };
        let (parts, body) = resp.into_parts();
        let expected = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // The body may take long under load; it only fails when it stalls (no bytes for twice
        // `peer_timeout`), breaks, or outlasts `peer_max_wait`.
        let mut body = body;
        let mut buf = bytes::BytesMut::with_capacity(expected.min(MAX_BODY_PREALLOC) as usize);
        let stall = self.cfg.peer_timeout.0 * 2;
        loop {
            if started.elapsed() >= self.cfg.peer_max_wait.0 {
                return Err(unavailable("response body outlasted peer_max_wait".into()));
            }
            match tokio::time::timeout(stall, body.frame()).await {
                Err(_) => return Err(unavailable("response body stalled".into())),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(unavailable(format!("response body failed: {e}"))),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
            }
        }
        let body = buf.freeze();
        if parts.status == StatusCode::SEE_OTHER {
            return Ok((parts, body));
        }
        if parts.status.is_success() {
            if body.len() as u64 != expected {
                return Err(unavailable(format!("short body: {} of {expected} bytes", body.len())));
            }
            return Ok((parts, body));
        }
        let code = parts.headers.get(ERROR_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let message = String::from_utf8_lossy(&body).into_owned();
        let kind = match code.as_str() {
            "NoSuchKey" => Some(ErrorKind::NoSuchKey),
            "NoSuchBucket" => Some(ErrorKind::NoSuchBucket),
            "VersionChanged" => Some(ErrorKind::VersionChanged),
            "InsufficientStorage" => Some(ErrorKind::Backend),
            _ => None,
        };
        match kind {
            Some(kind) => Err(PeerError::Origin(OriginError::new(kind, message))),
            None => Err(unavailable(format!("{}: {message}", parts.status))),
        }
    }

    pub async fn get_chunk(&self, node: &NodeEntry, q: &ChunkQuery<'_>) -> Result<Bytes, PeerError> {
        self.chunk_request(node, q, false).await
    }

    /// A chunk the peer holds (tiers or journal), never fetched by it: for replicas of pending
    /// writes whose writer cannot serve them.
    pub async fn get_held_chunk(&self, node: &NodeEntry, q: &ChunkQuery<'_>) -> Result<Bytes, PeerError> {
        self.chunk_request(node, q, true).await
    }

    /// A chunk from its owner, which may hand this node to holders instead (`direct`: this node
    /// tried them, `bad` failed; the owner then sends it).
    pub async fn get_chunk_from_owner(
        &self,
        node: &NodeEntry,
        q: &ChunkQuery<'_>,
        direct: bool,
        bad: &[&str],
    ) -> Result<ChunkAnswer, PeerError> {
        let mut extra = vec![("from", self.node_id.clone())];
        if direct {
            extra.push(("direct", "1".into()));
        }
        if !bad.is_empty() {
            extra.push(("bad", bad.join(",")));
        }
        let (parts, body) = self.call(node, Method::GET, chunk_path(q, &extra), Bytes::new()).await?;
        if parts.status != StatusCode::SEE_OTHER {
            Metrics::add(&self.metrics.peer_bytes, body.len() as u64);
            return Ok(ChunkAnswer::Bytes(body));
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let holders: Vec<String> =
            header(HOLDERS_HEADER).split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        match u64::from_str_radix(header(DIGEST_HEADER), 16) {
            Ok(digest) if !holders.is_empty() => Ok(ChunkAnswer::Holders(holders, digest)),
            _ => Err(PeerError::Unavailable(format!("peer {}: malformed hand-off", node.id))),
        }
    }

    /// A chunk a holder was named for by its owner: what it holds or is receiving, never
    /// fetched by it.
    pub async fn get_from_holder(&self, node: &NodeEntry, q: &ChunkQuery<'_>) -> Result<Bytes, PeerError> {
        let extra = [("held", "1".to_owned()), ("wait", "1".to_owned())];
        let (_, body) = self.call(node, Method::GET, chunk_path(q, &extra), Bytes::new()).await?;
        Metrics::add(&self.metrics.peer_bytes, body.len() as u64);
        Ok(body)
    }

    /// Has `node` fetch chunk `q` into its tiers without sending it back: as its owner (from the
    /// origin unless it holds it), or with `keep` as a copy of its own on disk (fetched through
    /// the owner).
    pub async fn warm_chunk(&self, node: &NodeEntry, q: &ChunkQuery<'_>, keep: bool) -> Result<(), PeerError> {
        let extra = [(if keep { "keep" } else { "warm" }, "1".to_owned())];
        self.call(node, Method::GET, chunk_path(q, &extra), Bytes::new()).await.map(|_| ())
    }

    /// Gives `node`, the owner of chunk `q`, the chunk's bytes (checked there against `sum`, their
    /// xxh3) to keep in its tiers.
    pub async fn put_chunk(
        &self,
        node: &NodeEntry,
        q: &ChunkQuery<'_>,
        body: Bytes,
        sum: u64,
    ) -> Result<(), PeerError> {
        let extra = [("sum", format!("{sum:016x}"))];
        self.call(node, Method::POST, chunk_path(q, &extra), body).await.map(|_| ())
    }

    async fn chunk_request(&self, node: &NodeEntry, q: &ChunkQuery<'_>, held: bool) -> Result<Bytes, PeerError> {
        let extra = if held { vec![("held", "1".to_owned())] } else { Vec::new() };
        let (_, body) = self.call(node, Method::GET, chunk_path(q, &extra), Bytes::new()).await?;
        Metrics::add(&self.metrics.peer_bytes, body.len() as u64);
        Ok(body)
    }

    /// The object's metadata as the owner holds it, and how long ago the owner checked it.
    pub async fn get_meta(
        &self,
        node: &NodeEntry,
        origin: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Duration), PeerError> {
        let query = meta_query(origin, bucket, key);
        let (parts, body) = self.call(node, Method::GET, format!("/meta?{query}"), Bytes::new()).await?;
        let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bad = || PeerError::Unavailable(format!("peer {}: malformed metadata response", node.id));
        let size = h("x-cairn-size").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let etag = h("x-cairn-etag").ok_or_else(bad)?;
        let nanos: i64 = h("x-cairn-last-modified").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let age_ms: u64 = h("x-cairn-age-ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        let info = ObjectInfo {
            size,
            etag,
            last_modified: chrono::DateTime::from_timestamp_nanos(nanos),
            content_type: h("x-cairn-content-type"),
            // The attributes come as JSON in the body (none from an older peer).
            attrs: serde_json::from_slice(&body).unwrap_or_default(),
        };
        Ok((info, Duration::from_millis(age_ms)))
    }

    pub async fn invalidate(&self, node: &NodeEntry, origin: &str, bucket: &str, key: &str) -> Result<(), PeerError> {
        let query = meta_query(origin, bucket, key);
        self.call(node, Method::POST, format!("/invalidate?{query}"), Bytes::new()).await.map(|_| ())
    }
}

/// The peer path of chunk `q`, with `extra` query pairs first.
fn chunk_path(q: &ChunkQuery<'_>, extra: &[(&str, String)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in extra {
        query.append_pair(k, v);
    }
    query
        .append_pair("origin", q.origin)
        .append_pair("bucket", q.bucket)
        .append_pair("key", q.key)
        .append_pair("version", q.version)
        .append_pair("size", &q.size.to_string())
        .append_pair("chunk_size", &q.chunk_size.to_string())
        .append_pair("index", &q.index.to_string());
    format!("/chunk?{}", query.finish())
}

pub fn meta_query(origin: &str, bucket: &str, key: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("origin", origin)
        .append_pair("bucket", bucket)
        .append_pair("key", key)
        .finish()
}

/// The peer address other nodes reach this node at.
pub fn advertised_peer_addr(cfg: &ClusterSection) -> Result<String, String> {
    let a = if cfg.advertise.is_empty() { &cfg.peer_listen } else { &cfg.advertise };
    match a.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() => Err(format!(
            "cluster.peer_listen {a} is a wildcard address: set cluster.advertise to the address peers reach this node at"
        )),
        _ => Ok(a.clone()),
    }
}

fn read_map(path: &std::path::Path) -> Result<(ClusterMap, SystemTime), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cluster map {}: {e}", path.display()))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cluster map {}: {e}", path.display()))?;
    let map = ClusterMap::from_toml_str(&text).map_err(|e| format!("cluster map {}: {e}", path.display()))?;
    Ok((map, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// Sends a raw probe request on `s` and tells whether the answer is a 200.
async fn probe_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, req: &str) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req.as_bytes()).await.ok()?;
    s.flush().await.ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.ok()?;
    Some(head.starts_with(b"HTTP/1.1 200"))
}

/// A pooled keep-alive HTTP/1.1 client for peer requests with body type `B`: mutual TLS against
/// the cluster CA when `tls` is given (https only), plain HTTP otherwise.
pub fn peer_client<B>(cfg: &ClusterSection, tls: Option<&Tls>) -> Result<PeerClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.peer_timeout.0));
    http.enforce_http(false);
    let connector = match tls {
        Some(t) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*t.peer_client_config()).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http),
        None => {
            // Never used for a handshake: plain peers are dialled with http:// URLs.
            let unused = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS protocol versions: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(unused)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        }
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.peer_pool_idle)
        .pool_idle_timeout(PEER_POOL_IDLE_TIMEOUT)
        .build(connector))
}

/// Query parameters of a peer request.
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// Constant-time comparison of secrets (passwords, signatures).
pub use cairn_client::sign::secret_matches;

pub fn error_status(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::NoSuchKey => (StatusCode::NOT_FOUND, "NoSuchKey"),
        ErrorKind::NoSuchBucket => (StatusCode::NOT_FOUND, "NoSuchBucket"),
        ErrorKind::VersionChanged => (StatusCode::PRECONDITION_FAILED, "VersionChanged"),
        ErrorKind::InvalidKey => (StatusCode::BAD_REQUEST, "InvalidKey"),
        _ => (StatusCode::BAD_GATEWAY, "OriginError"),
    }
}
