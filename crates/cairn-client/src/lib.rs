//! The cairn client: what a training job links to read and write through a cairn pool without
//! going through S3 for every byte. The Python package and the FUSE mount are thin adapters over
//! it; the node shares its readahead window ([`ahead`]) and request signing ([`sign`]).
//!
//! - **Routing.** The client learns the member list from the node it is given (`endpoint`) and
//!   keeps it current (every [`Config::refresh`]). With [`Route::Direct`] it computes each chunk's
//!   owners as the nodes do (rendezvous hashing over the same map) and asks the first owner on
//!   its peer port: one hop less than through a node's S3 endpoint. With [`Route::Local`] (or when
//!   the pool's peer ports speak only mutual TLS) every request goes to `endpoint`, whose cache
//!   then serves repeated reads on that host.
//! - **Versions.** An object is read at the version [`Client::stat`] saw; each chunk request names
//!   it, so the bytes of one [`Reader`] never mix two versions of an object.
//! - **Failover and hedging.** An owner that fails is marked suspect for a while and the next
//!   candidate is asked at once; one that has not answered within the hedge delay (derived from
//!   recent chunk times) is left running while the next is asked too. The last resort is the
//!   endpoint node, which routes the request itself.
//! - **Credentials.** A client signs with an S3 access key of the pool (`x-cairn-client`, see
//!   [`sign`]); it never holds the cluster secret. Writes, listings and deletes go through the
//!   endpoint's S3 API with the same key.

pub mod ahead;
pub mod api;
pub mod hedge;
mod reader;
mod s3;
pub mod sign;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_core::placement::Placement;
use cairn_core::{ChunkId, ChunkLayout, ObjectVersion};
use futures::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::{Mutex, RwLock};

pub use api::Stat;
pub use cairn_core::Durability;
pub use reader::Reader;
pub use s3::{ListEntry, Listing, Writer};

use crate::sign::{CLIENT_HEADER, RequestKey, client_header};

/// Candidates asked for a chunk before the endpoint node: the owners and a few more.
const EXTRA_CANDIDATES: usize = 2;
/// How long a node that failed a request is asked last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);
/// Bounds of the hedge delay.
const HEDGE_MIN: Duration = Duration::from_millis(100);
const HEDGE_MAX: Duration = Duration::from_secs(2);
/// How long a client that could reach no member's peer port reads through the endpoint only.
const DIRECT_OFF_FOR: Duration = Duration::from_secs(60);
/// Recent chunk request times the hedge delay is derived from.
const LATENCY_SAMPLES: usize = 64;

/// How a client reaches the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Each chunk from its owner's peer port (one hop).
    Direct,
    /// Everything through the endpoint node (its cache serves this host's repeated reads).
    Local,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "local" => Ok(Self::Local),
            other => Err(format!("invalid route {other:?}: expected \"direct\" or \"local\"")),
        }
    }
}

/// Where the pool is and how to use it.
#[derive(Clone, Debug)]
pub struct Config {
    /// A node's S3 endpoint, e.g. `http://127.0.0.1:9000` (the node on this host).
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub route: Route,
    /// Sequential readers' readahead: the window a [`Reader`] starts with, in chunks, and the
    /// most it may grow to, in bytes.
    pub readahead: ahead::Readahead,
    /// Chunk requests in flight at once for one call (a long range, [`Client::read_ranges`]).
    pub parallel: usize,
    /// Deadline of one request to a node (a chunk, a stat).
    pub timeout: Duration,
    /// How often the member list is asked for again.
    pub refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:9000".into(),
            access_key: "cairn".into(),
            secret_key: "cairn-secret-key".into(),
            region: "us-east-1".into(),
            route: Route::Direct,
            readahead: ahead::Readahead { chunks: 4, max_bytes: 256 << 20 },
            parallel: 16,
            timeout: Duration::from_secs(30),
            refresh: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The defaults, overridden by `CAIRN_ENDPOINT`, `CAIRN_ACCESS_KEY`, `CAIRN_SECRET_KEY`,
    /// `CAIRN_REGION` and `CAIRN_ROUTE` (`direct` or `local`) when set.
    pub fn from_env() -> Result<Self, Error> {
        let mut c = Self::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("CAIRN_ENDPOINT") {
            c.endpoint = v;
        }
        if let Some(v) = var("CAIRN_ACCESS_KEY") {
            c.access_key = v;
        }
        if let Some(v) = var("CAIRN_SECRET_KEY") {
            c.secret_key = v;
        }
        if let Some(v) = var("CAIRN_REGION") {
            c.region = v;
        }
        if let Some(v) = var("CAIRN_ROUTE") {
            c.route = v.parse().map_err(Error::Invalid)?;
        }
        Ok(c)
    }
}

/// What went wrong, in one line that names the cause.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("s3://{bucket}/{key} does not exist")]
    NoSuchKey { bucket: String, key: String },
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("the object changed while it was read: {0}")]
    VersionChanged(String),
    #[error("cannot reach the node at {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error("{code}: {message}")]
    Server { status: u16, code: String, message: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether another node may answer where this one did not.
    fn retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NoSuchKey { .. } | Self::NoSuchBucket(_))
    }

    fn into_io(self) -> std::io::Error {
        let kind = match &self {
            Self::NoSuchKey { .. } | Self::NoSuchBucket(_) => std::io::ErrorKind::NotFound,
            Self::AccessDenied(_) => std::io::ErrorKind::PermissionDenied,
            Self::Invalid(_) => std::io::ErrorKind::InvalidInput,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }

    fn from_io(e: std::io::Error) -> Self {
        let text = e.to_string();
        match e.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => Self::Server { status: 500, code: "Internal".into(), message: text },
        }
    }
}

/// The members a client routes by.
struct View {
    placement: Option<Placement>,
    replicas: usize,
    fetched: Instant,
}

struct Inner {
    cfg: Config,
    endpoint: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    key: RequestKey,
    view: RwLock<Arc<View>>,
    refreshing: AtomicBool,
    suspects: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<std::collections::VecDeque<Duration>>,
    learned: Arc<Mutex<HashMap<String, usize>>>,
    s3: s3::Stores,
    /// Until when chunks are read through the endpoint because no peer port could be reached.
    direct_off_until: Mutex<Option<Instant>>,
}

/// A handle on the pool; cheap to clone, safe to share between threads and tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// One range of one object, for [`Client::read_ranges`].
#[derive(Clone, Debug)]
pub struct RangeRequest {
    pub bucket: String,
    pub key: String,
    pub offset: u64,
    /// `None`: to the end of the object.
    pub length: Option<u64>,
}

impl Client {
    /// A client of the pool `cfg.endpoint` belongs to; asks it for the member list at once, so
    /// a wrong address or key fails here, in one line.
    pub async fn connect(cfg: Config) -> Result<Self, Error> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_owned();
        if !endpoint.starts_with("http://") {
            return Err(Error::Invalid(format!(
                "endpoint {endpoint:?}: expected http://HOST:PORT (a node's S3 endpoint)"
            )));
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(5))));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(50))
            .build(http);
        let inner = Inner {
            key: RequestKey::client(cfg.secret_key.as_bytes()),
            s3: s3::Stores::new(&cfg, &endpoint),
            endpoint,
            http,
            view: RwLock::new(Arc::new(View { placement: None, replicas: 1, fetched: Instant::now() })),
            refreshing: AtomicBool::new(false),
            suspects: Mutex::new(HashMap::new()),
            latencies: Mutex::new(std::collections::VecDeque::new()),
            learned: Arc::new(Mutex::new(HashMap::new())),
            direct_off_until: Mutex::new(None),
            cfg,
        };
        let client = Self { inner: Arc::new(inner) };
        client.refresh().await?;
        Ok(client)
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Members this client routes to directly (0: everything goes through the endpoint).
    pub fn direct_members(&self) -> usize {
        self.inner.view.read().placement.as_ref().map_or(0, |p| p.nodes().len())
    }

    /// Asks for the member list now (the endpoint, or while it is down any member).
    pub async fn refresh(&self) -> Result<(), Error> {
        let (_, body) = self.call_any(Method::GET, "/_cairn/v1/members", None).await?;
        let m: api::Members = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("the node's member list is malformed: {e}")))?;
        let direct = self.inner.cfg.route == Route::Direct && !m.peer_tls && !m.map.nodes.is_empty();
        let view = View {
            placement: direct.then(|| Placement::new(&m.map)),
            replicas: m.replicas.max(1),
            fetched: Instant::now(),
        };
        *self.inner.view.write() = Arc::new(view);
        Ok(())
    }

    /// The member list, asked for again in the background when it is older than `refresh`.
    fn view(&self) -> Arc<View> {
        let v = self.inner.view.read().clone();
        if v.fetched.elapsed() >= self.inner.cfg.refresh && !self.inner.refreshing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.refresh().await {
                    tracing::debug!(error = %e, "member list refresh failed; keeping the old one");
                }
                this.inner.refreshing.store(false, Ordering::Release);
            });
        }
        v
    }

    /// One signed request to a node (`base` is `http://host:port`); the body of a 2xx answer,
    /// else the error it names.
    async fn call(
        &self,
        base: &str,
        method: Method,
        path_and_query: &str,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let (status, frames) = self.call_frames(base, method, path_and_query, timeout).await?;
        Ok((status, concat(frames)))
    }

    /// As [`Client::call`], the body as the connection delivered it (not gathered into one
    /// buffer: a reader copies each frame once, straight to where it goes).
    async fn call_frames(
        &self,
        base: &str,
        method: Method,
        path_and_query: &str,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Frames), Error> {
        let now = sign::now_ms();
        let auth = client_header(&self.inner.key, &self.inner.cfg.access_key, method.as_str(), path_and_query, now);
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path_and_query}"))
            .header(CLIENT_HEADER, auth)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let unreachable = |why: String| Error::Unreachable { addr: base.to_owned(), why };
        let work = async {
            let resp = self.inner.http.request(req).await.map_err(|e| unreachable(connect_cause(&e)))?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut frames = Frames::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|e| unreachable(e.to_string()))?.into_data() {
                    frames.push(data);
                }
            }
            Ok::<_, Error>((status, frames))
        };
        let (status, body) = match timeout.or(Some(self.inner.cfg.timeout)).filter(|t| !t.is_zero()) {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| unreachable(format!("no answer within {}", humantime_short(t))))??,
            None => work.await?,
        };
        if status.is_success() {
            return Ok((status, body));
        }
        let body = concat(body);
        let e: api::ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| api::ErrorBody {
            code: status.canonical_reason().unwrap_or("Error").replace(' ', ""),
            message: String::from_utf8_lossy(&body).trim().to_owned(),
        });
        Err(match e.code.as_str() {
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "RequestTimeTooSkewed" => {
                Error::AccessDenied(format!("{} ({})", e.message, e.code))
            }
            "VersionChanged" | "PreconditionFailed" => Error::VersionChanged(e.message),
            _ => Error::Server { status: status.as_u16(), code: e.code, message: e.message },
        })
    }

    /// Asks the endpoint node; while it cannot be reached (restarting, say), the members this
    /// client routes to directly, in turn.
    async fn call_any(
        &self,
        method: Method,
        pq: &str,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let first = self.call(&self.inner.endpoint, method.clone(), pq, timeout).await;
        let Err(e) = first else { return first };
        if !e.retryable() {
            return Err(e);
        }
        let others: Vec<String> = {
            let v = self.inner.view.read();
            v.placement
                .as_ref()
                .map(|p| p.nodes().iter().map(|n| format!("http://{}", n.addr)).collect())
                .unwrap_or_default()
        };
        for base in others {
            match self.call(&base, method.clone(), pq, timeout).await {
                Err(e2) if e2.retryable() => continue,
                r => return r,
            }
        }
        Err(e)
    }

    /// The current version, size and layout of an object.
    pub async fn stat(&self, bucket: &str, key: &str) -> Result<Stat, Error> {
        let q = query(&[("bucket", bucket), ("key", key)]);
        let r = self.call_any(Method::GET, &format!("/_cairn/v1/stat?{q}"), None).await;
        let body = r.map_err(|e| name_missing(e, bucket, key))?.1;
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(format!("the node's answer is malformed: {e}")))
    }

    /// Bytes `sub` (offsets within the chunk) of chunk `index` of `st`, from its owner (or the
    /// endpoint node).
    pub async fn chunk(&self, st: &Stat, index: u64, sub: Range<usize>) -> Result<Bytes, Error> {
        Ok(concat(self.chunk_frames(st, index, sub).await?))
    }

    /// As [`Client::chunk`], in the frames the connection delivered.
    pub async fn chunk_frames(&self, st: &Stat, index: u64, sub: Range<usize>) -> Result<Frames, Error> {
        let layout = ChunkLayout::new(st.chunk_size.max(1), st.size);
        if st.chunk_size == 0 || index >= layout.chunk_count() {
            return Err(Error::Invalid(format!("chunk {index} is outside s3://{}/{}", st.bucket, st.key)));
        }
        let len = (layout.chunk_range(index).end - layout.chunk_range(index).start) as usize;
        let sub = sub.start.min(len)..sub.end.min(len);
        let (size, cs, idx, start, end) = (
            st.size.to_string(),
            st.chunk_size.to_string(),
            index.to_string(),
            sub.start.to_string(),
            sub.end.to_string(),
        );
        let mut params = vec![
            ("origin", st.origin.as_str()),
            ("bucket", st.bucket.as_str()),
            ("key", st.key.as_str()),
            ("version", st.version.as_str()),
            ("size", size.as_str()),
            ("chunk_size", cs.as_str()),
            ("index", idx.as_str()),
        ];
        if sub != (0..len) {
            params.push(("start", start.as_str()));
            params.push(("end", end.as_str()));
        }
        let pq = format!("/_cairn/v1/chunk?{}", query(&params));
        let view = self.view();
        let candidates = match &view.placement {
            Some(p) if !self.direct_is_off() => {
                let v = ObjectVersion {
                    origin: st.origin.clone(),
                    bucket: st.bucket.clone(),
                    key: st.key.clone(),
                    version: st.version.clone(),
                    size: st.size,
                };
                let id = ChunkId::new(&v, st.chunk_size, index);
                self.candidates(p, id.0 as u64, view.replicas + EXTRA_CANDIDATES)
            }
            _ => Vec::new(),
        };
        let body = self.hedged(&candidates, &pq).await.map_err(|e| name_missing(e, &st.bucket, &st.key))?;
        let got: usize = body.iter().map(Bytes::len).sum();
        if got != sub.len() {
            return Err(Error::Server {
                status: 502,
                code: "ShortChunk".into(),
                message: format!(
                    "chunk {index} of s3://{}/{}: {} bytes, expected {}",
                    st.bucket,
                    st.key,
                    body.len(),
                    sub.len()
                ),
            });
        }
        Ok(body)
    }

    /// The ranking of `key`, healthy nodes first, as `http://addr` bases.
    fn candidates(&self, p: &Placement, key: u64, n: usize) -> Vec<(String, String)> {
        let mut idx = Vec::with_capacity(n);
        p.ranking(key, n, &mut idx);
        let now = Instant::now();
        let mut suspects = self.inner.suspects.lock();
        suspects.retain(|_, until| *until > now);
        let (healthy, suspect): (Vec<_>, Vec<_>) =
            idx.iter().map(|&i| &p.nodes()[i]).partition(|n| !suspects.contains_key(&n.id));
        healthy.into_iter().chain(suspect).map(|n| (n.id.clone(), format!("http://{}", n.addr))).collect()
    }

    fn hedge_delay(&self) -> Duration {
        let l = self.inner.latencies.lock();
        if l.len() < 8 {
            return HEDGE_MAX;
        }
        let mut v: Vec<Duration> = l.iter().copied().collect();
        v.sort_unstable();
        (v[v.len() * 9 / 10] * 3).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    fn observe(&self, took: Duration) {
        let mut l = self.inner.latencies.lock();
        if l.len() == LATENCY_SAMPLES {
            l.pop_front();
        }
        l.push_back(took);
    }

    /// Asks `candidates` in order (hedging a slow one, skipping a failed one), then the endpoint.
    async fn hedged(&self, candidates: &[(String, String)], pq: &str) -> Result<Frames, Error> {
        let endpoint = (String::new(), self.inner.endpoint.clone());
        let unreachable = std::sync::atomic::AtomicUsize::new(0);
        let asked = hedge::ask_in_turn(
            candidates.iter().cloned().chain(std::iter::once(endpoint)),
            || self.hedge_delay(),
            |(_, base): (String, String)| async move { self.call_frames(&base, Method::GET, pq, None).await },
            |c: &(String, String), e: Error| {
                let id = &c.0;
                if !e.retryable() {
                    return hedge::Verdict::Final(e);
                }
                tracing::debug!(node = %id, error = %e, "chunk request failed; asking the next node");
                if !id.is_empty() {
                    self.inner.suspects.lock().insert(id.clone(), Instant::now() + SUSPECT_FOR);
                    if matches!(e, Error::Unreachable { .. }) {
                        unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                hedge::Verdict::Next(e)
            },
            |_: &(String, String)| {},
        )
        .await;
        match asked {
            Ok(((_, body), (id, _), took)) => {
                if id.is_empty() && !candidates.is_empty() && unreachable.load(Ordering::Relaxed) == candidates.len() {
                    // Every member's peer port failed to connect and the endpoint answered: this
                    // host cannot reach the peer network (or only through mutual TLS).
                    self.direct_off();
                } else {
                    self.observe(took);
                }
                Ok(body)
            }
            Err(e) => Err(e.unwrap_or_else(|| Error::Invalid("no node to ask".into()))),
        }
    }

    /// Stops routing to owners for [`DIRECT_OFF_FOR`]: everything goes through the endpoint.
    fn direct_off(&self) {
        let mut until = self.inner.direct_off_until.lock();
        if until.is_none_or(|u| u < Instant::now()) {
            tracing::warn!(
                "no member's peer port could be reached; reading through {} for {} s",
                self.inner.endpoint,
                DIRECT_OFF_FOR.as_secs()
            );
        }
        *until = Some(Instant::now() + DIRECT_OFF_FOR);
    }

    fn direct_is_off(&self) -> bool {
        self.inner.direct_off_until.lock().is_some_and(|u| u > Instant::now())
    }

    /// Bytes `range` of `st` (clamped to the object), its chunks fetched in parallel.
    pub async fn read_at(&self, st: &Stat, range: Range<u64>) -> Result<Bytes, Error> {
        let range = range.start.min(st.size)..range.end.min(st.size);
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let layout = ChunkLayout::new(st.chunk_size.max(1), st.size);
        let pieces: Vec<(u64, Range<usize>)> = layout.pieces(range.clone()).collect();
        if pieces.len() == 1 {
            let (i, sub) = pieces[0].clone();
            return self.chunk(st, i, sub).await;
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut parts = futures::stream::iter(pieces.into_iter().map(|(i, sub)| self.chunk_frames(st, i, sub)))
            .buffered(self.inner.cfg.parallel.max(1));
        while let Some(frames) = parts.try_next().await? {
            for f in frames {
                out.extend_from_slice(&f);
            }
        }
        Ok(out.freeze())
    }

    /// Copies bytes of `st` from `offset` into `buf` (no more than the object has); how many.
    pub async fn read_into(&self, st: &Stat, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let end = offset.saturating_add(buf.len() as u64).min(st.size);
        if offset >= end {
            return Ok(0);
        }
        let layout = ChunkLayout::new(st.chunk_size.max(1), st.size);
        let mut at = 0usize;
        let mut parts = futures::stream::iter(layout.pieces(offset..end).map(|(i, sub)| self.chunk_frames(st, i, sub)))
            .buffered(self.inner.cfg.parallel.max(1));
        while let Some(frames) = parts.try_next().await? {
            for f in frames {
                buf[at..at + f.len()].copy_from_slice(&f);
                at += f.len();
            }
        }
        Ok(at)
    }

    /// Bytes `offset..offset + length` of an object at its current version.
    pub async fn read_range(&self, bucket: &str, key: &str, offset: u64, length: Option<u64>) -> Result<Bytes, Error> {
        let st = self.stat(bucket, key).await?;
        let end = length.map_or(st.size, |l| offset.saturating_add(l));
        match self.read_at(&st, offset..end).await {
            // Replaced between the stat and the read: once more at the new version.
            Err(Error::VersionChanged(_)) => {
                let st = self.stat(bucket, key).await?;
                let end = length.map_or(st.size, |l| offset.saturating_add(l));
                self.read_at(&st, offset..end).await
            }
            r => r,
        }
    }

    /// A whole object.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, Error> {
        self.read_range(bucket, key, 0, None).await
    }

    /// Many ranges of many objects, fetched in parallel (each object asked for its version
    /// once); the answers in the order asked.
    pub async fn read_ranges(&self, reqs: &[RangeRequest]) -> Result<Vec<Bytes>, Error> {
        let mut objects: Vec<(&str, &str)> = reqs.iter().map(|r| (r.bucket.as_str(), r.key.as_str())).collect();
        objects.sort_unstable();
        objects.dedup();
        let stats: HashMap<(&str, &str), Stat> = futures::stream::iter(
            objects.into_iter().map(|(b, k)| async move { Ok::<_, Error>(((b, k), self.stat(b, k).await?)) }),
        )
        .buffer_unordered(self.inner.cfg.parallel.max(1))
        .try_collect()
        .await?;
        futures::stream::iter(reqs.iter().map(|r| {
            let st = &stats[&(r.bucket.as_str(), r.key.as_str())];
            let end = r.length.map_or(st.size, |l| r.offset.saturating_add(l));
            self.read_at(st, r.offset..end)
        }))
        .buffered(self.inner.cfg.parallel.max(1))
        .try_collect()
        .await
    }

    /// A seekable reader of an object at its current version, with readahead for sequential
    /// reads.
    pub async fn open(&self, bucket: &str, key: &str) -> Result<Reader, Error> {
        Ok(Reader::new(self.clone(), self.stat(bucket, key).await?))
    }

    /// A reader of a version already known (from [`Client::stat`]).
    pub fn open_stat(&self, st: Stat) -> Reader {
        Reader::new(self.clone(), st)
    }

    /// Waits until every write under `bucket`/`prefix` acknowledged before the call is in the
    /// origin; `Err` when `timeout` passes first.
    pub async fn sync(&self, bucket: &str, prefix: &str, timeout: Option<Duration>) -> Result<(), Error> {
        let t = timeout.map(|t| format!("{}ms", t.as_millis()));
        let mut params = vec![("bucket", bucket), ("prefix", prefix)];
        if let Some(t) = &t {
            params.push(("timeout", t.as_str()));
        }
        let pq = format!("/_cairn/v1/sync?{}", query(&params));
        // The node answers when done (or at `timeout`): no request deadline of our own.
        let wait = timeout.map_or(Duration::ZERO, |t| t + Duration::from_secs(30));
        match self.call_any(Method::POST, &pq, Some(wait)).await {
            Ok(_) => Ok(()),
            Err(Error::Server { status: 504, .. }) => Err(Error::Server {
                status: 504,
                code: "Timeout".into(),
                message: format!("writes under s3://{bucket}/{prefix} are not all in the origin yet"),
            }),
            Err(e) => Err(name_missing(e, bucket, "")),
        }
    }
}

/// A body in the pieces the connection delivered (slices of its read buffer, not copied).
pub type Frames = Vec<Bytes>;

/// One buffer of `frames` (no copy when there is one frame).
fn concat(mut frames: Frames) -> Bytes {
    if frames.len() <= 1 {
        return frames.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for f in frames {
        out.extend_from_slice(&f);
    }
    out.freeze()
}

/// Names the object or bucket in a not-found answer.
fn name_missing(e: Error, bucket: &str, key: &str) -> Error {
    match e {
        Error::Server { code, .. } if code == "NoSuchKey" => {
            Error::NoSuchKey { bucket: bucket.into(), key: key.into() }
        }
        Error::Server { code, .. } if code == "NoSuchBucket" => Error::NoSuchBucket(bucket.into()),
        e => e,
    }
}

fn query(params: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The innermost cause of a connection failure ("connection refused"), not the chain.
fn connect_cause(e: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let s = cause.to_string();
    match s.split_once(" (os error") {
        Some((head, _)) => head.to_lowercase(),
        None => s,
    }
}

fn humantime_short(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}
