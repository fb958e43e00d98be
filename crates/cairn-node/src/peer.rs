//! The peer transport server: chunk and metadata requests from other nodes, each signed with a key
//! derived from the cluster secret (`peer_auth.rs`) and always served here (from this node's tiers
//! or its own origin fetch), never forwarded. With `tls.peer` the listener speaks only TLS and
//! requires a client certificate of the cluster CA.
//!
//! A new connection counts against a small unauthenticated budget (`limits.max_unauthenticated_*`)
//! until a request passes the signature check; one that does not (TLS handshake included) within
//! `limits.header_read_timeout` is closed, and a refusal (403) closes it too. Authenticated
//! connections may idle in the peers' pools, up to [`PEER_IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_core::{ChunkId, ObjectVersion};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::cluster::{Cluster, DIGEST_HEADER, ERROR_HEADER, HOLDERS_HEADER, error_status, parse_query};
use crate::meta::MetaKey;
use crate::metrics::Metrics;
use crate::peer_auth::AUTH_HEADER;
use crate::reader::{ObjectHandle, OwnerAnswer, UploadGuard};
use crate::server::{Listeners, Slot};
use crate::state::NodeState;
use crate::tls::Acceptor;
use crate::writeback::{self, WriteError, WriteMsg};
use cairn_store::journal::{WriteRecord, valid_wid};

/// Largest chunk a peer may push with `PUT /chunk/<id>`.
const MAX_PUT_CHUNK: usize = cairn_core::config::MAX_CHUNK_SIZE as usize;

type Resp = Response<Full<Bytes>>;

/// A chunk response's upload slot, moved from the response's extensions into its body so it is
/// held until the body is sent (or the connection drops).
#[derive(Clone)]
struct SlotCell(Arc<Mutex<Option<UploadGuard>>>);

fn with_slot(mut r: Resp, guard: UploadGuard) -> Resp {
    r.extensions_mut().insert(SlotCell(Arc::new(Mutex::new(Some(guard)))));
    r
}

/// A peer response body that holds its upload slot, if it has one, until it is dropped.
struct PeerBody {
    inner: Full<Bytes>,
    _slot: Option<UploadGuard>,
}

impl hyper::body::Body for PeerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn into_peer_body(mut r: Resp) -> Response<PeerBody> {
    let slot = r.extensions_mut().remove::<SlotCell>().and_then(|c| c.0.lock().take());
    r.map(|inner| PeerBody { inner, _slot: slot })
}

fn text(status: StatusCode, code: &str, msg: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    if !code.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(code)
    {
        r.headers_mut().insert(ERROR_HEADER, v);
    }
    r
}

fn origin_failure(e: &cairn_origin::Error) -> Resp {
    let (status, code) = error_status(e.kind);
    text(status, code, e.message.clone())
}

/// How long an authenticated peer connection may sit idle (or take to send a request head)
/// before it is closed. Peers keep idle connections pooled for less than this
/// ([`crate::cluster::PEER_POOL_IDLE_TIMEOUT`]), so a pooled request never races the close.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const _: () = assert!(crate::cluster::PEER_POOL_IDLE_TIMEOUT.as_secs() * 2 <= PEER_IDLE_TIMEOUT.as_secs());
const _: () = assert!(cairn_core::config::MAX_HEADER_READ_TIMEOUT.as_secs() < PEER_IDLE_TIMEOUT.as_secs());

/// One peer connection's standing: it holds a slot of the unauthenticated budget until a request
/// passes the signature check, then a slot of the peer listener's.
struct PeerConn {
    source: IpAddr,
    slot: Mutex<Slot>,
    authenticated: AtomicBool,
    on_auth: Notify,
}

impl PeerConn {
    /// Moves the connection to the authenticated budget; false when that is full.
    fn authenticate(&self, listeners: &Listeners) -> bool {
        if self.authenticated.load(Ordering::Acquire) {
            return true;
        }
        match listeners.peer.try_admit(self.source) {
            Ok(slot) => {
                *self.slot.lock() = slot;
                self.authenticated.store(true, Ordering::Release);
                self.on_auth.notify_one();
                true
            }
            Err(_) => false,
        }
    }
}

pub async fn serve_peer(listener: TcpListener, state: Arc<NodeState>, cluster: Arc<Cluster>) {
    let unauthenticated = state.listeners.peer_unauthenticated.clone();
    let tls = Acceptor::new(state.tls.as_ref(), crate::tls::Listener::Peer);
    crate::server::accept_loop(listener, unauthenticated, crate::server::close_silently, move |stream, peer, slot| {
        peer_connection(stream, peer, slot, state.clone(), cluster.clone(), tls.clone())
    })
    .await
}

/// Serves one peer connection; closes it when its TLS handshake and a signed request do not come
/// within `limits.header_read_timeout` of its opening.
async fn peer_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    state: Arc<NodeState>,
    cluster: Arc<Cluster>,
    tls: Acceptor,
) {
    let conn = Arc::new(PeerConn {
        source: peer.ip(),
        slot: Mutex::new(slot),
        authenticated: AtomicBool::new(false),
        on_auth: Notify::new(),
    });
    let auth_deadline = tokio::time::sleep(state.config.limits.header_read_timeout.0);
    tokio::pin!(auth_deadline);
    let stream = tokio::select! {
        r = tls.handshake(stream) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer TLS handshake failed");
                return;
            }
        },
        _ = &mut auth_deadline => {
            state.listeners.peer_unauthenticated.count_timeout();
            return;
        }
    };
    let svc = {
        let (state, conn) = (state.clone(), conn.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (state, cluster, conn) = (state.clone(), cluster.clone(), conn.clone());
            async move { Ok::<_, Infallible>(into_peer_body(handle(&state, &cluster, &conn, req).await)) }
        })
    };
    let http = crate::server::http1(PEER_IDLE_TIMEOUT).serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(http);
    let result = tokio::select! {
        r = &mut http => r,
        _ = conn.on_auth.notified() => http.await,
        _ = &mut auth_deadline => {
            // Dropping the connection closes it, whatever it was doing.
            state.listeners.peer_unauthenticated.count_timeout();
            return;
        }
    };
    let admission = if conn.authenticated.load(Ordering::Acquire) {
        &state.listeners.peer
    } else {
        &state.listeners.peer_unauthenticated
    };
    crate::server::connection_ended(admission, peer, result);
}

/// A refusal that also closes the connection, so a client without the key keeps no slot.
fn refuse_and_close(status: StatusCode, code: &str, msg: &str) -> Resp {
    let mut r = text(status, code, msg);
    r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

async fn handle(state: &Arc<NodeState>, cluster: &Cluster, conn: &PeerConn, req: Request<Incoming>) -> Resp {
    if req.uri().path().starts_with(crate::client_api::PREFIX) {
        // A smart client's request, signed with its own access key: served like a peer's once
        // the signature verifies, refused and closed otherwise.
        let grant = match crate::client_api::check(state, req.method(), req.uri(), req.headers(), false) {
            Ok(g) => g,
            Err(refusal) => {
                let mut r: Resp = refusal.into_response();
                r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                return r;
            }
        };
        if !conn.authenticate(&state.listeners) {
            return refuse_and_close(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "peer connection limit reached (limits.max_connections, max_connections_per_source)\n",
            );
        }
        return crate::client_api::serve(state, grant, req.method(), req.uri()).await.into_response();
    }
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let signature = req.headers().get(AUTH_HEADER).map(|v| v.as_bytes());
    let now = crate::peer_auth::now_ms();
    if let Err(why) = cluster.key().verify(req.method().as_str(), path_and_query, signature, now) {
        Metrics::add(&state.metrics.peer_refused, 1);
        tracing::debug!(source = %conn.source, ?why, "peer request refused");
        let msg = format!("peer request refused ({why:?}): sign it with the cluster key ({AUTH_HEADER})\n");
        return refuse_and_close(StatusCode::FORBIDDEN, "Forbidden", &msg);
    }
    if !conn.authenticate(&state.listeners) {
        return refuse_and_close(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "peer connection limit reached (limits.max_connections, max_connections_per_source)\n",
        );
    }
    Metrics::add(&state.metrics.peer_served, 1);
    let q = parse_query(req.uri().query());
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/chunk") => get_chunk(state, &q).await,
        (Method::POST, "/chunk") => carried_chunk(state, &q, req).await,
        (Method::GET, "/meta") => get_meta(state, &q).await,
        (Method::GET, "/status") => json(&crate::status::node_report(state)),
        (Method::POST, "/invalidate") => {
            let Some(key) = meta_key(&q) else {
                return text(StatusCode::BAD_REQUEST, "BadRequest", "missing parameters");
            };
            state.meta.remove(&key);
            text(StatusCode::NO_CONTENT, "", "")
        }
        (Method::PUT, p) if p.starts_with("/chunk/") => put_chunk(state, &p["/chunk/".len()..], req).await,
        (Method::PUT, "/wb/chunk") => wb_chunk(state, &q, req).await,
        (Method::POST, "/wb/commit") => wb_commit(state, req).await,
        (Method::POST, "/wb/release") => match q.get("wid").filter(|w| valid_wid(w)) {
            Some(wid) => {
                writeback::release_replica(state, wid).await;
                text(StatusCode::NO_CONTENT, "", "")
            }
            None => text(StatusCode::BAD_REQUEST, "BadRequest", "wid must be 32 hex digits"),
        },
        (Method::POST, "/wb/held") => match json_body::<Vec<String>>(req).await {
            Ok(wids) => json(&writeback::held(state, &wids)),
            Err(r) => r,
        },
        (Method::POST, "/wb/announce") => match json_body::<Vec<WriteMsg>>(req).await {
            Ok(msgs) => {
                writeback::apply_announce(state, &msgs);
                text(StatusCode::NO_CONTENT, "", "")
            }
            Err(r) => r,
        },
        (Method::GET, "/wb/owned") => match q.get("node") {
            Some(node) => json(&writeback::owned_state(state, node)),
            None => text(StatusCode::BAD_REQUEST, "BadRequest", "node is required"),
        },
        (Method::GET, "/wb/pending") => {
            let upto = q.get("upto").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
            let s = writeback::wb_summary_local(state, q.get("bucket").map(String::as_str), prefix, upto);
            text(StatusCode::OK, "", serde_json::to_string(&s).unwrap_or_default())
        }
        (Method::POST, "/wb/claim") => match json_body::<crate::conditional::ClaimMsg>(req).await {
            Ok(msg) => json(&crate::conditional::decide(state, &msg).await),
            Err(r) => r,
        },
        (Method::POST, "/wb/unclaim") => match json_body::<crate::conditional::ClaimMsg>(req).await {
            Ok(msg) => {
                crate::conditional::release_at_owner(state, &msg);
                text(StatusCode::NO_CONTENT, "", "")
            }
            Err(r) => r,
        },
        (Method::POST, p) if p.starts_with("/wb/") => wb_meta(state, &p["/wb/".len()..], req).await,
        (Method::POST, "/kv") => match &state.kv {
            Some(kv) => crate::kv_route::serve_peer(kv, req).await,
            None => text(StatusCode::NOT_FOUND, "NotFound", "this node has no KV endpoint"),
        },
        (Method::GET, "/healthz") => text(StatusCode::OK, "", "ok\n"),
        (Method::GET, "/members") => match cluster.gossip.get() {
            Some(g) => {
                let mut r = Response::new(Full::new(Bytes::from(g.snapshot())));
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
                r
            }
            None => text(StatusCode::NOT_FOUND, "NotFound", "this node uses a map file, not gossip"),
        },
        _ => text(StatusCode::NOT_FOUND, "NotFound", format!("no peer route {path}")),
    }
}

fn meta_key(q: &HashMap<String, String>) -> Option<MetaKey> {
    Some(MetaKey { origin: q.get("origin")?.clone(), bucket: q.get("bucket")?.clone(), key: q.get("key")?.clone() })
}

async fn get_chunk(state: &NodeState, q: &HashMap<String, String>) -> Resp {
    let parse = || -> Option<(MetaKey, String, u64, u64, u64)> {
        Some((
            meta_key(q)?,
            q.get("version")?.clone(),
            q.get("size")?.parse().ok()?,
            q.get("chunk_size")?.parse().ok()?,
            q.get("index")?.parse().ok()?,
        ))
    };
    let Some((k, version, size, chunk_size, index)) = parse() else {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "missing or malformed chunk parameters");
    };
    let Some(entry) = state.origin_named(&k.origin) else {
        return text(StatusCode::NOT_FOUND, "NoSuchOrigin", format!("no origin named {:?}", k.origin));
    };
    if chunk_size == 0 || index >= size.div_ceil(chunk_size) {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "chunk index outside the object");
    }
    let handle = ObjectHandle {
        origin: entry.origin.clone(),
        version: ObjectVersion { origin: k.origin, bucket: k.bucket, key: k.key, version, size },
        chunk_size,
    };
    let flag = |name: &str| q.get(name).is_some_and(|v| v == "1");
    // Preloading: into this node's tiers, nothing sent back.
    if flag("warm") || flag("keep") {
        let r = if flag("keep") {
            state.reader.keep_chunk(&handle, index).await
        } else {
            state.reader.local_chunk(&handle, index).await.map(|_| ())
        };
        return match r {
            Ok(()) => text(StatusCode::NO_CONTENT, "", ""),
            Err(e) => origin_failure(&e),
        };
    }
    if flag("held") && flag("wait") {
        // Handed here by the chunk's owner: what this node holds or is receiving.
        return match state.reader.holder_chunk(&handle, index).await {
            Ok(Some((b, slot))) => with_slot(Response::new(Full::new(b)), slot),
            Ok(None) => text(StatusCode::NOT_FOUND, "NotHeld", "this node does not hold the chunk"),
            Err(()) => text(StatusCode::SERVICE_UNAVAILABLE, "Busy", "every upload slot of this node is taken"),
        };
    }
    // Asked of a replica holder: served from what this node holds, never fetched.
    if flag("held") {
        return match state.reader.held_chunk(&handle, index).await {
            Some(b) => {
                Metrics::add(&state.metrics.peer_egress_replica, b.len() as u64);
                Response::new(Full::new(b))
            }
            None => text(StatusCode::NOT_FOUND, "NotHeld", "this node does not hold the chunk"),
        };
    }
    let bad: Vec<&str> = q.get("bad").map(|b| b.split(',').collect()).unwrap_or_default();
    let from = q.get("from").map(String::as_str);
    match state.reader.owner_chunk(&handle, index, from, flag("direct"), &bad).await {
        Ok(OwnerAnswer::Bytes(b, slot)) => with_slot(Response::new(Full::new(b)), slot),
        Ok(OwnerAnswer::Holders(holders, digest)) => {
            let mut r = text(StatusCode::SEE_OTHER, "", "");
            let h = r.headers_mut();
            if let Ok(v) = http::HeaderValue::from_str(&holders.join(",")) {
                h.insert(HOLDERS_HEADER, v);
            }
            h.insert(
                DIGEST_HEADER,
                http::HeaderValue::from_str(&format!("{digest:016x}")).expect("hex is a header value"),
            );
            r
        }
        Err(e) => origin_failure(&e),
    }
}

/// A chunk of an object version this node owns, pushed by the node that uploaded the same bytes
/// to the origin (see `writeback::carry_over`): checked against its xxh3 and kept in the tiers.
async fn carried_chunk(state: &NodeState, q: &HashMap<String, String>, req: Request<Incoming>) -> Resp {
    let parse = || -> Option<(MetaKey, String, u64, u64, u64, u64)> {
        Some((
            meta_key(q)?,
            q.get("version")?.clone(),
            q.get("size")?.parse().ok()?,
            q.get("chunk_size")?.parse().ok()?,
            q.get("index")?.parse().ok()?,
            u64::from_str_radix(q.get("sum")?, 16).ok()?,
        ))
    };
    let Some((k, version, size, chunk_size, index, sum)) = parse() else {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "missing or malformed chunk parameters");
    };
    if state.origin_named(&k.origin).is_none() {
        return text(StatusCode::NOT_FOUND, "NoSuchOrigin", format!("no origin named {:?}", k.origin));
    }
    if chunk_size == 0 || chunk_size > MAX_PUT_CHUNK as u64 || index >= size.div_ceil(chunk_size) {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "chunk index outside the object");
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_PUT_CHUNK).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, "BadRequest", format!("chunk body refused: {e}")),
    };
    let v = ObjectVersion { origin: k.origin, bucket: k.bucket, key: k.key, version, size };
    let want = cairn_core::ChunkLayout::new(chunk_size, size).chunk_range(index);
    if body.len() as u64 != want.end - want.start || xxhash_rust::xxh3::xxh3_64(&body) != sum {
        return text(StatusCode::BAD_REQUEST, "BadDigest", "the chunk's length or checksum does not match");
    }
    // Kept on disk before answering: the sender paces itself on the answers.
    match state.reader.store().insert_and_persist(cairn_core::ChunkId::new(&v, chunk_size, index), body).await {
        Ok(()) => text(StatusCode::NO_CONTENT, "", ""),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("disk tier: {e}")),
    }
}

async fn get_meta(state: &NodeState, q: &HashMap<String, String>) -> Resp {
    let Some(k) = meta_key(q) else { return text(StatusCode::BAD_REQUEST, "BadRequest", "missing parameters") };
    let Some(entry) = state.origin_named(&k.origin) else {
        return text(StatusCode::NOT_FOUND, "NoSuchOrigin", format!("no origin named {:?}", k.origin));
    };
    match state.meta.get_local(&entry.origin, entry.config.metadata, k.clone()).await {
        Ok(info) => {
            let age = state.meta.age(&k).unwrap_or_default();
            let mut r = text(StatusCode::OK, "", serde_json::to_string(&info.attrs).unwrap_or_default());
            let h = r.headers_mut();
            let mut set = |name: &'static str, v: String| {
                if let Ok(v) = http::HeaderValue::from_str(&v) {
                    h.insert(name, v);
                }
            };
            set("x-cairn-size", info.size.to_string());
            set("x-cairn-etag", info.etag.clone());
            set("x-cairn-last-modified", info.last_modified.timestamp_nanos_opt().unwrap_or(0).to_string());
            set("x-cairn-age-ms", age.as_millis().to_string());
            if let Some(ct) = &info.content_type {
                set("x-cairn-content-type", ct.clone());
            }
            r
        }
        Err(e) => origin_failure(&e),
    }
}

async fn put_chunk(state: &NodeState, hex: &str, req: Request<Incoming>) -> Resp {
    let Some(id) = ChunkId::from_hex(hex) else {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "chunk id must be 32 hex digits");
    };
    let limited = http_body_util::Limited::new(req.into_body(), MAX_PUT_CHUNK);
    match limited.collect().await {
        Ok(body) => {
            state.reader.store().insert(id, body.to_bytes());
            text(StatusCode::NO_CONTENT, "", "")
        }
        Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, "BadRequest", format!("chunk body refused: {e}")),
    }
}

/// Largest write-back control message (a record lists a checksum per chunk).
const MAX_WB_MESSAGE: usize = 16 << 20;

fn json<T: serde::Serialize>(v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => Response::new(Full::new(Bytes::from(b))),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = small_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, "BadRequest", format!("malformed body: {e}")))
}

async fn small_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match http_body_util::Limited::new(req.into_body(), MAX_WB_MESSAGE).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(text(StatusCode::PAYLOAD_TOO_LARGE, "BadRequest", format!("body refused: {e}"))),
    }
}

fn write_failure(e: &WriteError) -> Resp {
    match e {
        WriteError::DiskFull(m) => text(StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage", m.clone()),
        other => text(StatusCode::INTERNAL_SERVER_ERROR, "WriteFailed", other.to_string()),
    }
}

/// A chunk of a replicated write, stored durably before the write's record comes.
async fn wb_chunk(state: &NodeState, q: &HashMap<String, String>, req: Request<Incoming>) -> Resp {
    let wid = q.get("wid").filter(|w| valid_wid(w)).cloned();
    let index = q.get("index").and_then(|i| i.parse::<u64>().ok());
    let (Some(wid), Some(index)) = (wid, index) else {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "wid (32 hex digits) and index are required");
    };
    // The frames as they came: the journal writes them through its aligned buffer, so gathering
    // them into one buffer first would be a copy for nothing.
    let mut body = req.into_body();
    let (mut pieces, mut len) = (Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => f.into_data().unwrap_or_default(),
            Err(e) => return text(StatusCode::BAD_REQUEST, "BadRequest", format!("chunk body failed: {e}")),
        };
        len += data.len();
        if len > MAX_PUT_CHUNK {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "BadRequest", "chunk body refused: length limit exceeded");
        }
        pieces.push(data);
    }
    match writeback::store_replica_chunk(state, &wid, index, pieces).await {
        Ok(()) => text(StatusCode::NO_CONTENT, "", ""),
        Err(e) => write_failure(&e),
    }
}

async fn wb_commit(state: &NodeState, req: Request<Incoming>) -> Resp {
    let body = match small_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let record: WriteRecord = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, "BadRequest", format!("malformed record: {e}")),
    };
    if !valid_wid(&record.wid) || record.chunk_size == 0 {
        return text(StatusCode::BAD_REQUEST, "BadRequest", "malformed record");
    }
    match writeback::commit_replica(state, record).await {
        Ok(()) => text(StatusCode::NO_CONTENT, "", ""),
        Err(e) => write_failure(&e),
    }
}

/// Operations on the write state a metadata owner keeps: register, begin, end, committed.
async fn wb_meta(state: &NodeState, op: &str, req: Request<Incoming>) -> Resp {
    let body = match small_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg: WriteMsg = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, "BadRequest", format!("malformed message: {e}")),
    };
    match writeback::apply_meta_op(state, op, &msg) {
        Some(answer) => text(StatusCode::OK, "", answer),
        None => text(StatusCode::BAD_REQUEST, "BadRequest", format!("unknown or incomplete operation {op:?}")),
    }
}
