//! The client routes (`/_cairn/v1/...`, wire types in [`cairn_client::api`]), served on the S3
//! listener and on the peer listener. A smart client learns the member list here, asks any node
//! for an object's version and layout, and then asks each chunk's owner for it directly (one hop
//! less than through a node's S3 endpoint). Requests are signed with a key derived from one of
//! the configured S3 access keys (`x-cairn-client`), never with the cluster secret; a key marked
//! `read_only` may read but not `sync`.
//!
//! A chunk request is served as the node serves its own reads (from its tiers, from the chunk's
//! owner, or from the origin pinned to the named version), so a client with an older member list
//! still gets the right bytes, at the cost of a hop.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_client::api::{ErrorBody, Members, Stat};
use cairn_client::sign::{CLIENT_HEADER, RequestKey, client_claim};
use cairn_core::ObjectVersion;
use http::{HeaderMap, Method, StatusCode};

use crate::cluster::{error_status, parse_query};
use crate::meta::MetaKey;
use crate::metrics::Metrics;
use crate::reader::ObjectHandle;
use crate::state::NodeState;

pub use cairn_client::api::PREFIX;

/// A client route's answer, turned into each listener's response type by the caller.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Answer {
    fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Self {
        Self { status, content_type: "application/json", body: Bytes::from(serde_json::to_vec(v).unwrap_or_default()) }
    }

    fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, &ErrorBody { code: code.to_owned(), message: message.into() })
    }

    pub fn into_response<B: From<Bytes>>(self) -> http::Response<B> {
        let mut r = http::Response::new(B::from(self.body));
        *r.status_mut() = self.status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(self.content_type));
        r
    }
}

/// What a verified client may do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Grant {
    Read,
    ReadWrite,
}

/// Checks a client request's signature against the configured access keys. `Err` is the refusal
/// to send (403, as S3 answers a bad signature).
fn authorize(
    state: &NodeState,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    anonymous_ok: bool,
) -> Result<Grant, Answer> {
    let auth = &state.config.auth;
    let Some(header) = headers.get(CLIENT_HEADER) else {
        if auth.allow_anonymous && anonymous_ok {
            return Ok(Grant::ReadWrite);
        }
        return Err(Answer::error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("client requests must be signed with an access key ({CLIENT_HEADER})"),
        ));
    };
    let forged =
        || Answer::error(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", "the request's signature does not verify");
    let Some((access, rest)) = client_claim(header.as_bytes()) else { return Err(forged()) };
    let Some(k) = auth.keys.iter().find(|k| k.access_key == access) else {
        return Err(Answer::error(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    let key = RequestKey::client(k.secret_key.as_bytes());
    match key.verify(method.as_str(), path_and_query, Some(rest), crate::peer_auth::now_ms()) {
        Ok(()) => Ok(if k.read_only { Grant::Read } else { Grant::ReadWrite }),
        Err(crate::peer_auth::Refusal::Stale) => Err(Answer::error(
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "the request's clock stamp is too far from the node's clock",
        )),
        Err(_) => Err(forged()),
    }
}

/// Answers a request whose path starts with [`PREFIX`].
/// Unsigned requests are served only when `auth.allow_anonymous` is set (as S3 requests are).
pub async fn handle(state: &Arc<NodeState>, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Answer {
    match check(state, method, uri, headers, true) {
        Ok(grant) => serve(state, grant, method, uri).await,
        Err(refusal) => refusal,
    }
}

/// Verifies a client request's signature: what it may do, or the refusal to send. The peer
/// listener passes `anonymous_ok = false`: an unsigned connection never takes one of its
/// authenticated slots, whatever `auth.allow_anonymous` says for S3.
pub fn check(
    state: &NodeState,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    anonymous_ok: bool,
) -> Result<Grant, Answer> {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    authorize(state, method, path_and_query, headers, anonymous_ok)
        .inspect_err(|_| Metrics::add(&state.metrics.client_refused, 1))
}

/// Serves a verified client request.
pub async fn serve(state: &Arc<NodeState>, grant: Grant, method: &Method, uri: &http::Uri) -> Answer {
    let q = parse_query(uri.query());
    match (method, uri.path()) {
        (&Method::GET, "/_cairn/v1/members") => Answer::json(StatusCode::OK, &members(state)),
        (&Method::GET, "/_cairn/v1/stat") => stat(state, &q).await,
        (&Method::GET, "/_cairn/v1/chunk") => chunk(state, &q).await,
        (&Method::POST, "/_cairn/v1/sync") if grant == Grant::ReadWrite => sync(state, &q).await,
        (&Method::POST, "/_cairn/v1/sync") => {
            Answer::error(StatusCode::FORBIDDEN, "AccessDenied", "this access key may only read")
        }
        _ => Answer::error(
            StatusCode::NOT_FOUND,
            "NoSuchRoute",
            "client routes: GET /_cairn/v1/members, GET /_cairn/v1/stat, GET /_cairn/v1/chunk, POST /_cairn/v1/sync",
        ),
    }
}

fn members(state: &NodeState) -> Members {
    let node = state.config.cluster.node_id.clone();
    let Some(cluster) = &state.cluster else { return Members { node, ..Members::default() } };
    let p = cluster.placement();
    Members {
        node,
        replicas: state.config.cluster.replicas,
        map: cairn_core::cluster::ClusterMap { version: p.version(), nodes: p.nodes().to_vec() },
        peer_tls: cluster.tls().is_some(),
    }
}

fn origin_answer(e: &cairn_origin::Error) -> Answer {
    let (status, code) = error_status(e.kind);
    Answer::error(status, code, e.message.clone())
}

fn bucket_missing(bucket: &str) -> Answer {
    Answer::error(StatusCode::NOT_FOUND, "NoSuchBucket", format!("bucket {bucket:?} does not exist"))
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Answer> {
    q.get(name)
        .map(String::as_str)
        .ok_or_else(|| Answer::error(StatusCode::BAD_REQUEST, "InvalidArgument", format!("missing parameter {name:?}")))
}

async fn stat(state: &NodeState, q: &HashMap<String, String>) -> Answer {
    let (bucket, key) = match (param(q, "bucket"), param(q, "key")) {
        (Ok(b), Ok(k)) => (b, k),
        (Err(a), _) | (_, Err(a)) => return a,
    };
    if let Err(e) = cairn_core::key::validate_key(key) {
        return Answer::error(StatusCode::BAD_REQUEST, "InvalidArgument", e.to_string());
    }
    let Some(entry) = state.origin_for(bucket) else { return bucket_missing(bucket) };
    let mk = MetaKey { origin: entry.origin.name().to_owned(), bucket: bucket.to_owned(), key: key.to_owned() };
    match state.meta.get(&entry.origin, entry.config.metadata, mk).await {
        Ok(info) => Answer::json(
            StatusCode::OK,
            &Stat {
                origin: entry.origin.name().to_owned(),
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version: info.etag.clone(),
                size: info.size,
                chunk_size: entry.config.chunk_size.bytes(),
                etag: info.client_etag().trim_start_matches("W/").trim_matches('"').to_owned(),
                last_modified: info.last_modified.to_rfc3339(),
                content_type: info.content_type.clone(),
            },
        ),
        Err(e) => origin_answer(&e),
    }
}

async fn chunk(state: &NodeState, q: &HashMap<String, String>) -> Answer {
    let parse = || -> Option<(&str, &str, &str, &str, u64, u64, u64)> {
        Some((
            q.get("origin")?,
            q.get("bucket")?,
            q.get("key")?,
            q.get("version")?,
            q.get("size")?.parse().ok()?,
            q.get("chunk_size")?.parse().ok()?,
            q.get("index")?.parse().ok()?,
        ))
    };
    let Some((origin, bucket, key, version, size, chunk_size, index)) = parse() else {
        return Answer::error(StatusCode::BAD_REQUEST, "InvalidArgument", "missing or malformed chunk parameters");
    };
    let Some(entry) = state.origin_named(origin) else {
        return Answer::error(StatusCode::NOT_FOUND, "NoSuchOrigin", format!("no origin named {origin:?}"));
    };
    if state.origin_for(bucket).is_none_or(|e| e.origin.name() != origin) {
        return bucket_missing(bucket);
    }
    if chunk_size != entry.config.chunk_size.bytes() {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("origin {origin:?} is cut into chunks of {} bytes", entry.config.chunk_size.bytes()),
        );
    }
    if index >= size.div_ceil(chunk_size) {
        return Answer::error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", "chunk index outside the object");
    }
    let handle = ObjectHandle {
        origin: entry.origin.clone(),
        version: ObjectVersion {
            origin: origin.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version: version.to_owned(),
            size,
        },
        chunk_size,
    };
    let sub = match (q.get("start").map(|v| v.parse::<usize>()), q.get("end").map(|v| v.parse::<usize>())) {
        (None, None) => None,
        (Some(Ok(s)), Some(Ok(e))) if s <= e => Some(s..e),
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "start and end must be offsets, start <= end",
            );
        }
    };
    match state.reader.chunk(&handle, index).await {
        Ok(b) => {
            let b = match sub {
                None => b,
                Some(r) if r.end <= b.len() => b.slice(r),
                Some(_) => {
                    return Answer::error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "InvalidRange",
                        "end is past the chunk's end",
                    );
                }
            };
            Metrics::add(&state.metrics.bytes_served, b.len() as u64);
            Metrics::add(&state.metrics.client_chunks, 1);
            state.metrics.hot.record(bucket, key, b.len() as u64);
            Answer { status: StatusCode::OK, content_type: "application/octet-stream", body: b }
        }
        Err(e) => origin_answer(&e),
    }
}

async fn sync(state: &Arc<NodeState>, q: &HashMap<String, String>) -> Answer {
    let bucket = match param(q, "bucket") {
        Ok(b) => b,
        Err(a) => return a,
    };
    if state.origin_for(bucket).is_none() {
        return bucket_missing(bucket);
    }
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let timeout = match q.get("timeout").map(|t| humantime::parse_duration(t)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return Answer::error(StatusCode::BAD_REQUEST, "InvalidArgument", format!("bad timeout: {e}")),
    };
    let (done, summary) = crate::writeback::sync(state, Some(bucket), prefix, timeout).await;
    Answer::json(if done { StatusCode::OK } else { StatusCode::GATEWAY_TIMEOUT }, &summary)
}
