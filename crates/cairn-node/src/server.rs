//! Listeners: the S3 endpoint and the admin endpoint (`/metrics`, `/healthz`), and the admission
//! control every listener shares (S3, admin, peer, KV).
//!
//! A listener accepts every connection at once and decides afterwards: over its limit, or over the
//! limit for the connection's source address, the connection is closed straight away. Accept never
//! waits for a free slot, because a listener that stops accepting leaves new connections in the
//! kernel's backlog, where legitimate ones wait behind whatever filled it. HTTP connections must
//! send each request head within `limits.header_read_timeout`, counted from the connection's start
//! or the end of the previous response, so a connection that sends nothing does not keep its slot.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_core::config::LimitsSection;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use s3s::service::S3Service;
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Labels, Scrape};
use crate::s3_front::{self, xml_error};
use crate::state::NodeState;

/// Read buffer of a connection; requests whose head does not fit are refused by hyper (431).
const MAX_CONN_BUF: usize = 1 << 20;
/// Accept queue length asked of the kernel for every listener.
const LISTEN_BACKLOG: u32 = 4_096;
/// Pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener has `max` connections open.
    Full,
    /// The connection's source address has `max_per_source` connections open.
    SourceFull,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Connection limits of one listener (or of one stage of it: the peer port's unauthenticated
/// connections have their own): a global count and a count per source address.
pub struct Admission {
    /// Listener name in metrics: `s3`, `admin`, `peer`, `peer_unauthenticated`, `kv`.
    pub name: &'static str,
    max: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    refused_full: AtomicU64,
    refused_source: AtomicU64,
    timed_out: AtomicU64,
}

/// One admitted connection's place in its [`Admission`], given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    pub fn new(name: &'static str, max: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            max,
            max_per_source,
            counts: Mutex::new(Counts::default()),
            refused_full: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `source`, unless the listener or the source is at its limit.
    pub fn try_admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        // IPv4 clients of a dual-stack socket arrive as ::ffff:a.b.c.d; count them as a.b.c.d.
        let source = source.to_canonical();
        let mut c = self.counts.lock();
        if c.total >= self.max {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        let n = c.by_source.get(&source).copied().unwrap_or(0);
        if n >= self.max_per_source {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SourceFull);
        }
        c.by_source.insert(source, n + 1);
        c.total += 1;
        Ok(Slot { admission: self.clone(), source })
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    /// Counts a connection closed because it sent no request head (or no secret) in time.
    pub fn count_timeout(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        debug_assert!(c.total > 0, "a slot was given back twice");
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// The admission control of each of a node's listeners.
pub struct Listeners {
    pub s3: Arc<Admission>,
    pub admin: Arc<Admission>,
    /// Peer connections that passed the secret check.
    pub peer: Arc<Admission>,
    /// Peer connections that have not (yet) sent a request with the secret.
    pub peer_unauthenticated: Arc<Admission>,
    pub kv: Arc<Admission>,
}

impl Listeners {
    pub fn new(limits: &LimitsSection, kv_max_connections: usize) -> Self {
        let per_source = limits.max_connections_per_source;
        Self {
            s3: Admission::new("s3", limits.max_connections, per_source),
            admin: Admission::new("admin", limits.max_connections, per_source),
            peer: Admission::new("peer", limits.max_connections, per_source),
            peer_unauthenticated: Admission::new(
                "peer_unauthenticated",
                limits.max_unauthenticated_connections,
                limits.max_unauthenticated_per_source,
            ),
            kv: Admission::new("kv", kv_max_connections, per_source),
        }
    }

    fn all(&self) -> [&Admission; 5] {
        [&self.s3, &self.admin, &self.peer, &self.peer_unauthenticated, &self.kv]
    }
}

/// Accepts connections on `listener` until the task is aborted. Each one `admission` lets in runs
/// `serve` in a task of its own, holding its slot; the others are handed to `refuse`, which must
/// not wait (it may write a last word the socket takes at once), and closed.
pub async fn accept_loop<F, Fut, R>(listener: TcpListener, admission: Arc<Admission>, refuse: R, serve: F)
where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(&TcpStream, Refusal),
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = admission.name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        match admission.try_admit(peer.ip()) {
            Ok(slot) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peer, slot));
            }
            Err(why) => {
                tracing::debug!(listener = admission.name, %peer, ?why, "connection refused at accept");
                refuse(&stream, why);
            }
        }
    }
}

/// For [`accept_loop`]: close without a word (HTTP listeners: a client cannot have sent a request
/// yet, so there is nothing to answer).
pub fn close_silently(_: &TcpStream, _: Refusal) {}

/// The HTTP/1.1 connection settings every listener shares; `head_timeout` bounds the wait for each
/// request head, from the connection's start or the end of the previous response.
pub fn http1(head_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.max_buf_size(MAX_CONN_BUF).timer(TokioTimer::new()).header_read_timeout(head_timeout);
    b
}

/// Records how a connection ended: a request head that did not come in time counts as a timeout.
pub fn connection_ended(admission: &Admission, peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            admission.count_timeout();
        }
        tracing::debug!(listener = admission.name, %peer, error = %e, "connection ended with an error");
    }
}

/// Unread request body bytes a refused request may leave: read and dropped, so the connection
/// stays usable. A longer rest closes the connection after the answer.
const DRAIN_MAX: u64 = 8 << 20;
/// Time given to reading that rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// S3's limit on a presigned URL's `X-Amz-Expires` (seven days).
const MAX_PRESIGNED_EXPIRES: u64 = 604_800;
/// Failed authentications within `AUTH_WARN_WINDOW` that make one WARN line (each one is DEBUG).
const AUTH_WARN_BURST: u64 = 20;
const AUTH_WARN_WINDOW: Duration = Duration::from_secs(60);

/// Wraps the s3s service with checks it does not make itself.
#[derive(Clone)]
struct Front {
    s3: S3Service,
    state: Arc<NodeState>,
    max_header_bytes: usize,
    peer: SocketAddr,
    auth_log: Arc<AuthFailures>,
}

/// Counts failed authentications, so a burst is one WARN line rather than one line each.
#[derive(Default)]
struct AuthFailures {
    window: Mutex<(Option<std::time::Instant>, u64)>,
}

impl AuthFailures {
    fn note(&self, peer: SocketAddr, code: &str) {
        tracing::debug!(%peer, code, "request refused: authentication failed");
        let mut w = self.window.lock();
        let now = std::time::Instant::now();
        if w.0.is_none_or(|start| now.duration_since(start) >= AUTH_WARN_WINDOW) {
            *w = (Some(now), 0);
        }
        w.1 += 1;
        if w.1 == AUTH_WARN_BURST {
            tracing::warn!(%peer, code, window = ?AUTH_WARN_WINDOW, "{AUTH_WARN_BURST} failed authentications in the window");
        }
    }
}

/// A request body that tells whether it was read to its end, and gives the body back to the
/// front when s3s drops it unread, so the rest can be drained.
struct Tracked {
    inner: Option<Incoming>,
    state: Arc<Mutex<BodyState>>,
}

#[derive(Default)]
struct BodyState {
    polled: bool,
    ended: bool,
    returned: Option<Incoming>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return std::task::Poll::Ready(None) };
        let r = std::pin::Pin::new(inner).poll_frame(cx);
        let mut st = self.state.lock();
        st.polled = true;
        if matches!(r, std::task::Poll::Ready(None)) {
            st.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.as_ref().map(hyper::body::Body::size_hint).unwrap_or_default()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut st = self.state.lock();
        if let Some(inner) = self.inner.take()
            && !st.ended
            && !hyper::body::Body::is_end_stream(&inner)
        {
            st.returned = Some(inner);
        }
    }
}

/// Reads and drops the rest of a body, up to `DRAIN_MAX` bytes within `DRAIN_TIMEOUT`; whether
/// it reached the end.
async fn drain(mut body: Incoming) -> bool {
    use http_body_util::BodyExt;
    let read = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_MAX {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read).await.unwrap_or(false)
}

/// `X-Amz-Expires` of a presigned URL over S3's seven days.
fn presigned_expires_too_long(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k == "X-Amz-Expires" && v.parse::<u64>().map_or(v.len() > 6, |n| n > MAX_PRESIGNED_EXPIRES))
    })
}

/// S3's message for a signature mismatch, which s3s leaves out.
const SIGNATURE_MISMATCH: &str =
    "The request signature we calculated does not match the signature you provided. Check your key and signing method.";

impl Service<Request<Incoming>> for Front {
    type Response = Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let id = s3_front::new_request_id();
        let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        let refusal = if header_bytes > self.max_header_bytes {
            let msg =
                format!("your request header section is {header_bytes} bytes; the limit is {}", self.max_header_bytes);
            Some(xml_error(StatusCode::BAD_REQUEST, "RequestHeaderSectionTooLarge", &msg))
        } else if presigned_expires_too_long(req.uri()) {
            let msg = format!("X-Amz-Expires must be less than a week (in seconds) that is; {MAX_PRESIGNED_EXPIRES}");
            Some(xml_error(StatusCode::BAD_REQUEST, "AuthorizationQueryParametersError", &msg))
        } else {
            None
        };
        if refusal.is_none() && req.uri().path().starts_with(crate::client_api::PREFIX) {
            let state = self.state.clone();
            return Box::pin(async move {
                let a = crate::client_api::handle(&state, req.method(), req.uri(), req.headers()).await;
                Ok(a.into_response())
            });
        }
        s3_front::amz_date_from_date(req.headers_mut());
        let expects_continue =
            req.headers().get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let state = Arc::new(Mutex::new(BodyState::default()));
        let method = req.method().clone();
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, s3s::Body::http_body(Tracked { inner: Some(body), state: state.clone() }));
        let (s3, peer, auth_log) = (self.s3.clone(), self.peer, self.auth_log.clone());
        Box::pin(async move {
            let mut resp = match refusal {
                Some(r) => {
                    drop(req);
                    r
                }
                None => match s3_front::with_known_length(req).await {
                    Ok(req) => s3.call(req).await?,
                    Err(refused) => refused,
                },
            };
            // s3s answers HeadObject with 200 whatever the operation says; a HEAD of a range or a
            // part is a 206, as its GET.
            if method == http::Method::HEAD
                && resp.status() == StatusCode::OK
                && resp.headers().contains_key(http::header::CONTENT_RANGE)
            {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            }
            let status = resp.status();
            if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                resp = note_auth_failure(resp, peer, &auth_log);
            } else if status.is_server_error() {
                tracing::warn!(%peer, %status, "S3 request failed");
            } else if status.is_client_error() {
                tracing::debug!(%peer, %status, "S3 request refused");
            }
            // The body s3s did not read: with `Expect: 100-continue` and nothing read, the client
            // was never told to send it and may or may not; otherwise drain a bounded rest. When
            // the connection's next bytes cannot be known to start a request, close it.
            let (unread, polled) = {
                let mut st = state.lock();
                (st.returned.take(), st.polled)
            };
            if let Some(body) = unread {
                let keep = (polled || !expects_continue) && drain(body).await;
                if !keep {
                    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
            }
            Ok(s3_front::with_request_id(resp, &id))
        })
    }
}

/// Logs a refused authentication at DEBUG (bursts at WARN) and gives a signature mismatch S3's
/// message.
fn note_auth_failure(resp: Response<s3s::Body>, peer: SocketAddr, log: &AuthFailures) -> Response<s3s::Body> {
    let Some(body) = resp.body().bytes() else {
        log.note(peer, "");
        return resp;
    };
    let text = String::from_utf8_lossy(&body);
    let code = text.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()).unwrap_or("").to_owned();
    log.note(peer, &code);
    if code == "SignatureDoesNotMatch" && !text.contains("<Message>") {
        let mut out = xml_error(resp.status(), &code, SIGNATURE_MISMATCH);
        for (k, v) in resp.headers() {
            if k != http::header::CONTENT_LENGTH && k != http::header::CONTENT_TYPE {
                out.headers_mut().insert(k.clone(), v.clone());
            }
        }
        return out;
    }
    resp
}

pub async fn serve_s3(listener: TcpListener, s3: S3Service, state: Arc<NodeState>) {
    let auth_log = Arc::new(AuthFailures::default());
    let admission = state.listeners.s3.clone();
    let head_timeout = state.config.limits.header_read_timeout.0;
    let tls = crate::tls::Acceptor::new(state.tls.as_ref(), crate::tls::Listener::S3);
    accept_loop(listener, admission.clone(), close_silently, move |stream, peer, slot| {
        let front = Front {
            s3: s3.clone(),
            state: state.clone(),
            max_header_bytes: state.config.limits.max_header_bytes,
            peer,
            auth_log: auth_log.clone(),
        };
        let metrics = state.metrics.clone();
        let admission = admission.clone();
        let tls = tls.clone();
        async move {
            // The handshake, like a request head, must come within the header read timeout.
            let Some(stream) = tls.accept(stream, peer, head_timeout).await else { return };
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let result = http1(head_timeout).serve_connection(TokioIo::new(stream), front).await;
            connection_ended(&admission, peer, result);
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        }
    })
    .await
}

pub async fn serve_admin(listener: TcpListener, state: Arc<NodeState>) {
    let admission = state.listeners.admin.clone();
    let head_timeout = state.config.limits.header_read_timeout.0;
    accept_loop(listener, admission.clone(), close_silently, move |stream, peer, slot| {
        let state = state.clone();
        let admission = admission.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let q = crate::cluster::parse_query(req.uri().query());
                    let resp = match (req.method().clone(), path.as_str()) {
                        (_, "/v1/status" | "/v1/pending" | "/v1/sync") => {
                            write_back_admin(&state, req.method(), &path, &q).await
                        }
                        (_, p) if p == "/v1/load" || p == "/v1/loads" || p.starts_with("/v1/loads/") => {
                            load_admin(&state, req).await
                        }
                        (Method::GET, "/v1/node" | "/v1/pool") => status_admin(&state, &path, &q).await,
                        _ => admin(&state, &path),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let result = http1(head_timeout).serve_connection(TokioIo::new(stream), svc).await;
            connection_ended(&admission, peer, result);
            drop(slot);
        }
    })
    .await
}

/// Connections open, refused and timed out on each listener.
fn listener_metrics(out: &mut Scrape, listeners: &Listeners) {
    let all = listeners.all();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let open: Vec<(&str, u64)> = all.iter().map(|a| (a.name, a.open() as u64)).collect();
    let mut refused: Vec<(Labels, u64)> = Vec::new();
    for a in &all {
        for (reason, n) in [("limit", get(&a.refused_full)), ("source_limit", get(&a.refused_source))] {
            refused.push((vec![("listener", a.name.to_owned()), ("reason", reason.to_owned())], n));
        }
    }
    let timed_out: Vec<(&str, u64)> = all.iter().map(|a| (a.name, get(&a.timed_out))).collect();
    out.gauges("cairn_listener_connections", "Connections holding a slot, by listener.", "listener", &open);
    out.counter_family(
        "cairn_connections_refused_total",
        "Connections closed at accept: the listener (limit) or their source address (source_limit) was at its limit.",
        refused,
    );
    out.counters(
        "cairn_connections_timed_out_total",
        "Connections closed because no request head (on the peer port: no request with the secret) came in time.",
        "listener",
        &timed_out,
    );
}

/// Every series of `/metrics`, encoded.
fn metrics_text(state: &NodeState) -> String {
    let mut out = Scrape::default();
    state.metrics.collect(state.reader.store(), &mut out);
    let cfg = &state.config;
    out.gauges(
        "cairn_cache_capacity_bytes",
        "Capacity of each tier (cache.ram_capacity, cache.disk_capacity).",
        "tier",
        &[("ram", cfg.cache.ram_capacity.bytes()), ("disk", cfg.cache.disk_capacity.bytes())],
    );
    if let Some(c) = &state.cluster {
        cluster_metrics(&mut out, &c.placement());
        if let Some(g) = c.gossip.get() {
            gossip_metrics(&mut out, g);
        }
    }
    write_back_metrics(&mut out, state);
    listener_metrics(&mut out, &state.listeners);
    if let Some(kv) = &state.kv {
        kv.collect_metrics(&mut out, cfg.kv.ram_capacity.bytes(), cfg.kv.disk_capacity.bytes());
    }
    if let Some(tls) = &state.tls {
        tls.collect_metrics(&mut out);
    }
    out.render()
}

fn admin(state: &NodeState, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (StatusCode::OK, crate::metrics::CONTENT_TYPE, metrics_text(state)),
        "/" => (StatusCode::OK, "text/html; charset=utf-8", crate::status::PAGE.to_owned()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (ready, text) = state.readiness.report(state);
            (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, "text/plain", text)
        }
        "/v1/members" => match &state.cluster {
            Some(c) => (StatusCode::OK, "application/json", members_json(c)),
            None => (StatusCode::NOT_FOUND, "application/json", "{\"error\":\"this node is not in a cluster\"}".into()),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /, /metrics, /healthz or /readyz\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    resp
}

/// `POST /v1/load` (a JSON `LoadSpec`): starts a preload, or answers the running job with the same
/// spec (202 with its status). `GET /v1/loads`: every job this node knows. `GET /v1/loads/<id>`:
/// one. `DELETE /v1/loads/<id>`: cancels it.
async fn load_admin(state: &Arc<NodeState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    let error = |status: StatusCode, msg: &str| json(status, serde_json::json!({ "error": msg }).to_string());
    let path = req.uri().path().to_owned();
    let id = path.strip_prefix("/v1/loads/");
    match (req.method().as_str(), id) {
        ("POST", None) if path == "/v1/load" => {
            let body =
                match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), 64 << 20)).await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body refused: {e}")),
                };
            let spec: crate::load::LoadSpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed load: {e}")),
            };
            match state.loads.start(state, spec).await {
                Ok(s) => json(StatusCode::ACCEPTED, serde_json::to_string(&s).unwrap_or_default()),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        ("GET", None) if path == "/v1/loads" => {
            json(StatusCode::OK, serde_json::to_string(&state.loads.list()).unwrap_or_default())
        }
        ("GET", Some(id)) => match state.loads.get(id) {
            Some(s) => json(StatusCode::OK, serde_json::to_string(&s).unwrap_or_default()),
            None => error(StatusCode::NOT_FOUND, &format!("no load {id:?} on this node")),
        },
        ("DELETE", Some(id)) => {
            if state.loads.cancel(id) {
                json(StatusCode::OK, serde_json::to_string(&state.loads.get(id)).unwrap_or_default())
            } else {
                error(StatusCode::NOT_FOUND, &format!("no load {id:?} on this node"))
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /v1/load, GET /v1/loads, GET /v1/loads/<id> or DELETE /v1/loads/<id>",
        ),
    }
}

/// `GET /v1/status`: pending uploads per node. `GET /v1/pending?bucket=&prefix=[&upto=]`: the
/// same under a prefix, with the mark to pass back as `upto`. `POST /v1/sync?bucket=&prefix=
/// [&timeout=30s]`: waits until everything written under the prefix before the call is in the
/// origin (504 with what is left when the timeout passes first).
async fn write_back_admin(
    state: &Arc<NodeState>,
    method: &http::Method,
    path: &str,
    q: &std::collections::HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let bucket = q.get("bucket").map(String::as_str).filter(|b| !b.is_empty());
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    let to_json = |s: &crate::writeback::ClusterSummary| serde_json::to_string(s).unwrap_or_default();
    match (method.as_str(), path) {
        ("GET", "/v1/status") => {
            json(StatusCode::OK, to_json(&crate::writeback::cluster_summary(state, None, "", None).await))
        }
        ("GET", "/v1/pending") => {
            let upto = q.get("upto").and_then(|v| v.parse().ok());
            json(StatusCode::OK, to_json(&crate::writeback::cluster_summary(state, bucket, prefix, upto).await))
        }
        ("POST", "/v1/sync") => {
            let timeout = match q.get("timeout").map(|t| humantime::parse_duration(t)) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => return json(StatusCode::BAD_REQUEST, format!("{{\"error\":\"bad timeout: {e}\"}}")),
            };
            let (done, s) = crate::writeback::sync(state, bucket, prefix, timeout).await;
            json(if done { StatusCode::OK } else { StatusCode::GATEWAY_TIMEOUT }, to_json(&s))
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            "{\"error\":\"use GET /v1/status, GET /v1/pending or POST /v1/sync\"}".into(),
        ),
    }
}

fn write_back_metrics(out: &mut Scrape, state: &NodeState) {
    let wb = &state.writeback;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let s = wb.summary(None, "", u64::MAX);
    out.gauge("cairn_dirty_bytes", "Bytes written here and not yet in the origin (journal).", s.dirty_bytes);
    out.gauge(
        "cairn_dirty_limit_bytes",
        "Dirty bytes at which writes slow to the upload rate (writeback.dirty_max).",
        state.config.writeback.dirty_max.bytes(),
    );
    out.gauge("cairn_pending_uploads", "Writes this node has to upload.", s.objects);
    out.gauge(
        "cairn_oldest_pending_upload_age_seconds",
        "Age of the oldest write this node has still to upload (0 when none).",
        s.oldest_age_secs,
    );
    out.gauge(
        "cairn_replicas_held",
        "Writes of other nodes this node holds replicas of until their upload is confirmed.",
        s.replicas,
    );
    out.counters(
        "cairn_writes_acked_total",
        "Writes acknowledged before reaching the origin, by durability.",
        "durability",
        &[("local", get(&wb.stats.acked_local)), ("replicated", get(&wb.stats.acked_replicated))],
    );
    out.counter(
        "cairn_write_bytes_acked_total",
        "Bytes of acknowledged write-back writes.",
        get(&wb.stats.bytes_acked),
    );
    out.counter("cairn_uploads_total", "Journaled writes uploaded to the origin.", get(&wb.stats.uploads));
    out.counter("cairn_upload_bytes_total", "Bytes uploaded from the journal.", get(&wb.stats.upload_bytes));
    out.counter(
        "cairn_upload_carried_bytes_total",
        "Bytes of uploaded writes kept in the cluster under the version the origin gave them.",
        get(&wb.stats.carried_bytes),
    );
    out.counter("cairn_upload_retries_total", "Failed upload attempts (retried).", get(&wb.stats.upload_retries));
    out.counter(
        "cairn_uploads_superseded_total",
        "Writes not uploaded because a newer write of the key came.",
        get(&wb.stats.superseded),
    );
    out.counter(
        "cairn_takeovers_total",
        "Writes uploaded by this replica holder for a writer that was gone.",
        get(&wb.stats.takeovers),
    );
    out.counter(
        "cairn_replicas_orphaned_total",
        "Replicas dropped during a takeover because chunks were missing and another holder did not hold the write (never acknowledged, already uploaded, or lost with that holder's disk too).",
        get(&wb.stats.orphans_dropped),
    );
    out.counter(
        "cairn_write_throttled_total",
        "Writes that waited because dirty bytes were at their cap.",
        get(&wb.stats.throttled),
    );
}

/// `GET /v1/members`: the members this node knows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MembersAnswer {
    pub node: String,
    /// `gossip` or `map`.
    pub mode: String,
    /// The map in use: its version (map file) or digest (gossip), hex.
    pub map_version: String,
    pub members: Vec<MemberRow>,
}

/// One member as `GET /v1/members` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberRow {
    pub id: String,
    /// `alive`, `suspect`, `dead` or `left` (gossip); `up` or `down` (map file).
    pub state: String,
    /// The state the derived map gives it: `up`, `down`, or `removed`.
    pub map: String,
    pub addr: String,
    pub zone: String,
    pub rack: String,
    pub weight: u32,
    pub incarnation: u16,
    pub generation: u64,
    /// Milliseconds since this node last received gossip from it (null: not recently).
    pub heard_ms_ago: Option<u64>,
    pub this_node: bool,
}

fn members_json(c: &crate::cluster::Cluster) -> String {
    serde_json::to_string(&member_rows(c)).unwrap_or_default()
}

/// The members this node knows, sorted by id (newest generation first).
pub fn member_rows(c: &crate::cluster::Cluster) -> MembersAnswer {
    use cairn_core::cluster::NodeState;
    let p = c.placement();
    let map_state = |id: &str| match p.index_of(id).map(|i| p.nodes()[i].state) {
        Some(NodeState::Up) => "up",
        Some(NodeState::Down) => "down",
        None => "removed",
    };
    let mut rows = Vec::new();
    let mode;
    if let Some(g) = c.gossip.get() {
        mode = "gossip";
        let now = crate::gossip::now_ms();
        let (me, members) = g.members();
        rows.push(MemberRow {
            id: me.id.clone(),
            state: "alive".into(),
            map: map_state(&me.id).into(),
            addr: me.peer.clone(),
            zone: me.zone.clone(),
            rack: me.rack.clone(),
            weight: me.weight,
            incarnation: 0,
            generation: me.generation,
            heard_ms_ago: Some(0),
            this_node: true,
        });
        for m in members {
            let i = &m.identity;
            if i.id.is_empty() {
                continue;
            }
            let state = match m.standing {
                cairn_membership::Standing::Alive => "alive",
                cairn_membership::Standing::Suspect => "suspect",
                cairn_membership::Standing::Down { .. } if i.leaving => "left",
                cairn_membership::Standing::Down { .. } => "dead",
            };
            rows.push(MemberRow {
                id: i.id.clone(),
                state: state.into(),
                map: map_state(&i.id).into(),
                addr: i.peer.clone(),
                zone: i.zone.clone(),
                rack: i.rack.clone(),
                weight: i.weight,
                incarnation: m.incarnation,
                generation: i.generation,
                heard_ms_ago: (m.heard_ms > 0).then(|| now.saturating_sub(m.heard_ms)),
                this_node: false,
            });
        }
    } else {
        mode = "map";
        for n in p.nodes() {
            rows.push(MemberRow {
                id: n.id.clone(),
                state: if n.state == NodeState::Up { "up" } else { "down" }.into(),
                map: map_state(&n.id).into(),
                addr: n.addr.clone(),
                zone: n.zone.clone(),
                rack: n.rack.clone(),
                weight: n.weight,
                incarnation: 0,
                generation: 0,
                heard_ms_ago: None,
                this_node: n.id == c.node_id,
            });
        }
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id).then(b.generation.cmp(&a.generation)));
    MembersAnswer {
        node: c.node_id.clone(),
        mode: mode.into(),
        map_version: format!("{:016x}", p.version()),
        members: rows,
    }
}

fn gossip_metrics(out: &mut Scrape, g: &crate::gossip::Gossip) {
    let s = g.stats();
    let by_state = g.counts();
    let states = ["alive", "suspect", "dead", "left"];
    let rows: Vec<(&str, u64)> = states.iter().copied().zip(by_state).collect();
    out.gauges("cairn_members", "Members this node knows, by gossip state (itself included).", "state", &rows);
    out.counter("cairn_gossip_packets_sent_total", "Gossip packets sent.", s.packets_out);
    out.counter("cairn_gossip_bytes_sent_total", "Gossip bytes sent.", s.bytes_out);
    out.counter("cairn_gossip_packets_received_total", "Gossip packets received.", s.packets_in);
    out.counter("cairn_gossip_bytes_received_total", "Gossip bytes received.", s.bytes_in);
    out.counter(
        "cairn_gossip_rejected_total",
        "Gossip packets dropped: not sealed with the cluster secret, stale, or malformed.",
        s.rejected,
    );
    out.counter(
        "cairn_gossip_suspicions_total",
        "Probes by this node that failed, making it suspect the member.",
        s.suspicions,
    );
    out.counter("cairn_gossip_confirmations_total", "Members this node saw declared dead (or leave).", s.confirmations);
    out.counter("cairn_gossip_refutations_total", "Suspicions of this node it refuted.", s.refutations);
}

fn cluster_metrics(out: &mut Scrape, p: &cairn_core::placement::Placement) {
    let up = p.nodes().iter().filter(|n| n.state == cairn_core::cluster::NodeState::Up).count() as u64;
    out.gauge(
        "cairn_cluster_map_version",
        "Version of the cluster map in use (a map file's version, or the gossip digest).",
        p.version(),
    );
    out.gauge_family(
        "cairn_cluster_map_info",
        "The map in use: its version or digest, exactly (hex).",
        vec![(vec![("version", format!("{:016x}", p.version()))], 1u64.into())],
    );
    out.gauges(
        "cairn_cluster_nodes",
        "Nodes in the cluster map, by state.",
        "state",
        &[("up", up), ("down", p.nodes().len() as u64 - up)],
    );
}

/// `GET /v1/node[?id=]` and `GET /v1/pool[?sample=&nodes=a,b]` (the status page's data).
async fn status_admin(
    state: &Arc<NodeState>,
    path: &str,
    q: &std::collections::HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        r
    };
    if path == "/v1/pool" {
        let sample = q.get("sample").and_then(|s| s.parse().ok()).unwrap_or(crate::status::DEFAULT_SAMPLE);
        let named: Vec<String> = q
            .get("nodes")
            .map(|n| {
                n.split(',').filter(|s| !s.is_empty()).take(crate::status::MAX_SAMPLE).map(str::to_owned).collect()
            })
            .unwrap_or_default();
        let report = crate::status::pool_answer(state, sample, &named).await;
        return json(StatusCode::OK, serde_json::to_string(&report).unwrap_or_default());
    }
    match crate::status::node_answer(state, q.get("id").map(String::as_str)).await {
        Ok(r) => json(StatusCode::OK, serde_json::to_string(&r).unwrap_or_default()),
        Err((code, msg)) => json(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            serde_json::json!({ "error": msg }).to_string(),
        ),
    }
}

/// Binds a listener with a long accept queue ([`LISTEN_BACKLOG`], capped by the kernel's
/// `somaxconn`), so a burst of connections is accepted rather than dropped and retried seconds
/// later.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => {
                let local = l.local_addr()?;
                return Ok((l, local));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "address resolved to nothing")))
}
