//! Listeners: the S3 endpoint and the admin endpoint (`/metrics`, `/healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::state::NodeState;

/// Read buffer of a connection; requests whose head does not fit are refused by hyper (431).
const MAX_CONN_BUF: usize = 1 << 20;
/// Time a client has to send a request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Wraps the s3s service with checks it does not make itself.
#[derive(Clone)]
struct Front {
    s3: S3Service,
    max_header_bytes: usize,
}

fn xml_error(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = Response::new(s3s::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    resp
}

impl Service<Request<Incoming>> for Front {
    type Response = Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes > self.max_header_bytes {
            let msg =
                format!("your request header section is {header_bytes} bytes; the limit is {}", self.max_header_bytes);
            let resp = xml_error(StatusCode::BAD_REQUEST, "RequestHeaderSectionTooLarge", &msg);
            return Box::pin(async move { Ok(resp) });
        }
        Service::call(&self.s3, req)
    }
}

pub async fn serve_s3(listener: TcpListener, s3: S3Service, state: Arc<NodeState>) {
    let front = Front { s3, max_header_bytes: state.config.limits.max_header_bytes };
    let permits = Arc::new(Semaphore::new(state.config.limits.max_connections));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_CONN_BUF)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), front);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

pub async fn serve_admin(listener: TcpListener, state: Arc<NodeState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let q = crate::cluster::parse_query(req.uri().query());
                    let resp = match (req.method().clone(), path.as_str()) {
                        (_, "/v1/status" | "/v1/pending" | "/v1/sync") => {
                            write_back_admin(&state, req.method(), &path, &q).await
                        }
                        _ => admin(&state, &path),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn admin(state: &NodeState, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => {
            let mut text = state.metrics.render(state.reader.store());
            if let Some(c) = &state.cluster {
                cluster_metrics(&mut text, &c.placement());
            }
            write_back_metrics(&mut text, state);
            if let Some(kv) = &state.kv {
                kv.render_metrics(&mut text);
            }
            (StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /healthz\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    resp
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

fn write_back_metrics(out: &mut String, state: &NodeState) {
    let wb = &state.writeback;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let s = wb.summary(None, "", u64::MAX);
    let mut metric =
        |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| crate::metrics::series(out, kind, name, help, rows);
    metric(
        "cairn_dirty_bytes",
        "gauge",
        "Bytes written here and not yet in the origin (journal).",
        &[("", s.dirty_bytes)],
    );
    metric("cairn_pending_uploads", "gauge", "Writes this node has to upload.", &[("", s.objects)]);
    metric(
        "cairn_replicas_held",
        "gauge",
        "Writes of other nodes this node holds replicas of until their upload is confirmed.",
        &[("", s.replicas)],
    );
    metric(
        "cairn_writes_acked_total",
        "counter",
        "Writes acknowledged before reaching the origin, by durability.",
        &[
            ("durability=\"local\"", get(&wb.stats.acked_local)),
            ("durability=\"replicated\"", get(&wb.stats.acked_replicated)),
        ],
    );
    metric(
        "cairn_write_bytes_acked_total",
        "counter",
        "Bytes of acknowledged write-back writes.",
        &[("", get(&wb.stats.bytes_acked))],
    );
    metric(
        "cairn_uploads_total",
        "counter",
        "Journaled writes uploaded to the origin.",
        &[("", get(&wb.stats.uploads))],
    );
    metric(
        "cairn_upload_bytes_total",
        "counter",
        "Bytes uploaded from the journal.",
        &[("", get(&wb.stats.upload_bytes))],
    );
    metric(
        "cairn_upload_retries_total",
        "counter",
        "Failed upload attempts (retried).",
        &[("", get(&wb.stats.upload_retries))],
    );
    metric(
        "cairn_uploads_superseded_total",
        "counter",
        "Writes not uploaded because a newer write of the key came.",
        &[("", get(&wb.stats.superseded))],
    );
    metric(
        "cairn_takeovers_total",
        "counter",
        "Writes uploaded by this replica holder for a writer that was gone.",
        &[("", get(&wb.stats.takeovers))],
    );
    metric(
        "cairn_write_throttled_total",
        "counter",
        "Writes that waited because dirty bytes were at their cap.",
        &[("", get(&wb.stats.throttled))],
    );
}

fn cluster_metrics(out: &mut String, p: &cairn_core::placement::Placement) {
    use std::fmt::Write;
    let up = p.nodes().iter().filter(|n| n.state == cairn_core::cluster::NodeState::Up).count();
    let _ = writeln!(out, "# HELP cairn_cluster_map_version Version of the cluster map in use.");
    let _ = writeln!(out, "# TYPE cairn_cluster_map_version gauge");
    let _ = writeln!(out, "cairn_cluster_map_version {}", p.version());
    let _ = writeln!(out, "# HELP cairn_cluster_nodes Nodes in the cluster map, by state.");
    let _ = writeln!(out, "# TYPE cairn_cluster_nodes gauge");
    let _ = writeln!(out, "cairn_cluster_nodes{{state=\"up\"}} {up}");
    let _ = writeln!(out, "cairn_cluster_nodes{{state=\"down\"}} {}", p.nodes().len() - up);
}

pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
