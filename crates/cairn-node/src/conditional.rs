//! Conditional writes (`If-None-Match: *`, `If-Match: "<etag>"` on PutObject, CopyObject and
//! CompleteMultipartUpload), decided at the owner of the key's metadata.
//!
//! A conditional write first claims its key at the first reachable owner of the key's metadata
//! (the node that also holds the key's pending write-back versions). The owner takes the claim
//! and checks the condition against the key's current version — its newest pending write if any,
//! else a fresh HEAD at the origin — as one decision: while a claim is held, other conditional
//! writes of the key wait for it (and answer `409 ConditionalRequestConflict` if it outlives
//! `CLAIM_WAIT`). The writer keeps the claim (renewed every `meta::CLAIM_RENEW`) until its write
//! is in the origin (`origin` durability) or registered as pending with the owners (`local`,
//! `replicated`), so the next conditional write sees it. Of two racing `If-None-Match: *` writes
//! from any nodes, exactly one succeeds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_core::cluster::NodeEntry;
use cairn_origin::ErrorKind;
use http::Method;
use s3s::dto::{ETagCondition, IfMatch, IfNoneMatch};
use s3s::{S3Error, S3ErrorCode, S3Result};
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::meta::{CLAIM_RENEW, MetaKey};
use crate::state::{NodeState, OriginEntry};

/// Longest a conditional write waits for another conditional write of its key to finish.
const CLAIM_WAIT: Duration = Duration::from_secs(60);
/// Nodes tried past the first owner when it cannot be reached.
const EXTRA_DECIDERS: usize = 3;

/// What a conditional write requires of the key's current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// `If-None-Match: *`: the key has no object.
    Absent,
    /// `If-Match: "<etag>"` (or `*`, any object): the key's object has this ETag.
    Match(Option<String>),
}

impl Condition {
    /// The condition of a write request, if any. `If-None-Match` takes only `*` (as in S3); other
    /// values, and both headers at once, are `501 NotImplemented`.
    pub fn of(if_match: Option<&IfMatch>, if_none_match: Option<&IfNoneMatch>) -> S3Result<Option<Self>> {
        match (if_match, if_none_match) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "If-Match and If-None-Match together are not supported on writes",
            )),
            (None, Some(ETagCondition::Any)) => Ok(Some(Self::Absent)),
            (None, Some(ETagCondition::ETag(_))) => {
                Err(S3Error::with_message(S3ErrorCode::NotImplemented, "If-None-Match on a write takes only \"*\""))
            }
            (Some(ETagCondition::Any), None) => Ok(Some(Self::Match(None))),
            (Some(ETagCondition::ETag(e)), None) => Ok(Some(Self::Match(Some(e.value().to_owned())))),
        }
    }

    /// The condition of raw request headers (CopyObject, whose input type lacks them).
    pub fn of_headers(headers: &http::HeaderMap) -> S3Result<Option<Self>> {
        let parse = |name: &str| -> S3Result<Option<ETagCondition>> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => ETagCondition::parse_http_header(v.as_bytes()).map(Some).map_err(|_| {
                    S3Error::with_message(S3ErrorCode::InvalidArgument, format!("{name} is not a valid ETag condition"))
                }),
            }
        };
        Self::of(parse("if-match")?.as_ref(), parse("if-none-match")?.as_ref())
    }
}

/// A claim request, or the renewal of one (`renew`: keep it, do not check again).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimMsg {
    pub origin: String,
    pub bucket: String,
    pub key: String,
    pub id: String,
    pub condition: Condition,
    #[serde(default)]
    pub renew: bool,
}

impl ClaimMsg {
    fn meta_key(&self) -> MetaKey {
        MetaKey { origin: self.origin.clone(), bucket: self.bucket.clone(), key: self.key.clone() }
    }
}

/// The owner's decision on a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The condition holds; the writer holds the key until it releases the claim.
    Go,
    /// Another conditional write of the key holds it.
    Busy,
    /// The condition does not hold (412).
    Failed,
    /// `If-Match` on a key without an object (404).
    Missing,
    /// The current version could not be learned.
    Error { code: String, message: String },
}

/// An ETag without quotes or weak marker.
fn bare(s: &str) -> &str {
    s.trim_start_matches("W/").trim_matches('"')
}

/// At the owner: takes the claim and checks the condition against the key's current version.
pub async fn decide(state: &NodeState, msg: &ClaimMsg) -> Verdict {
    let key = msg.meta_key();
    if !state.meta.try_claim(&key, &msg.id) {
        return Verdict::Busy;
    }
    if msg.renew {
        return Verdict::Go;
    }
    let verdict = match current_etag(state, &key).await {
        Err((code, message)) => Verdict::Error { code, message },
        Ok(current) => match (&msg.condition, current) {
            (Condition::Absent, None) => Verdict::Go,
            (Condition::Absent, Some(_)) => Verdict::Failed,
            (Condition::Match(_), None) => Verdict::Missing,
            (Condition::Match(None), Some(_)) => Verdict::Go,
            (Condition::Match(Some(want)), Some((etag, version))) if matches(state, &key, want, &etag, &version) => {
                Verdict::Go
            }
            (Condition::Match(_), Some(_)) => Verdict::Failed,
        },
    };
    if verdict != Verdict::Go {
        state.meta.release_claim(&key, &msg.id);
    }
    verdict
}

/// Whether `want` names the key's current version: its ETag, or the pending version (answered
/// when the write was acknowledged) of the write whose upload made it.
fn matches(state: &NodeState, key: &MetaKey, want: &str, etag: &str, version: &str) -> bool {
    let want = bare(want);
    want == bare(etag)
        || cairn_core::chunk::parse_pending_version(want)
            .is_some_and(|(wid, _)| state.meta.uploaded_as(key, wid, version))
}

/// The key's current ETag (as clients see it) and version as its owner knows them: the newest
/// pending write, else the origin's (asked now, not from the cache). `None`: no object.
async fn current_etag(state: &NodeState, key: &MetaKey) -> Result<Option<(String, String)>, (String, String)> {
    if let Some(p) = state.meta.pending(key) {
        return Ok(Some((p.info.etag.clone(), p.info.etag)));
    }
    let Some(entry) = state.origin_named(&key.origin) else {
        return Err(("InternalError".into(), format!("origin {:?} is not configured here", key.origin)));
    };
    match entry.origin.head(&key.bucket, &key.key).await {
        Ok(info) => Ok(Some((info.client_etag().to_owned(), info.etag))),
        Err(e) if e.kind == ErrorKind::NoSuchKey => Ok(None),
        Err(e) => {
            let code = match e.kind {
                ErrorKind::NoSuchBucket => "NoSuchBucket",
                _ => "ServiceUnavailable",
            };
            Err((code.into(), e.message))
        }
    }
}

/// At the owner: gives back a claim.
pub fn release_at_owner(state: &NodeState, msg: &ClaimMsg) {
    state.meta.release_claim(&msg.meta_key(), &msg.id);
}

/// A key held for a conditional write; give it back with [`Claim::release`] once the write is
/// visible (or failed). Dropped without release (the request went away), it is given back in
/// the background.
pub struct Claim {
    state: Arc<NodeState>,
    msg: ClaimMsg,
    /// The node that decided; `None`: this node.
    decider: Option<NodeEntry>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Claim {
    /// Claims the key for a write under `condition`: waits while another conditional write holds
    /// it; answers 412 when the condition does not hold, 404 for `If-Match` on a missing key.
    pub async fn take(
        state: &Arc<NodeState>,
        entry: &OriginEntry,
        bucket: &str,
        key: &str,
        condition: Condition,
    ) -> S3Result<Self> {
        let msg = ClaimMsg {
            origin: entry.origin.name().to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            id: format!("{:032x}", rand::random::<u128>()),
            condition,
            renew: false,
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let (verdict, decider) = ask(state, &msg, None).await;
            match verdict {
                Verdict::Go => {
                    let renewal = tokio::spawn(renew(state.clone(), msg.clone(), decider.clone()));
                    return Ok(Self { state: state.clone(), msg, decider, renewal, released: false });
                }
                Verdict::Busy if started.elapsed() < CLAIM_WAIT => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Verdict::Busy => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::ConditionalRequestConflict,
                        "A conflicting conditional operation is currently in progress against this resource. \
                         Please try again.",
                    ));
                }
                Verdict::Failed => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::PreconditionFailed,
                        "At least one of the pre-conditions you specified did not hold",
                    ));
                }
                Verdict::Missing => {
                    return Err(S3Error::with_message(S3ErrorCode::NoSuchKey, "The specified key does not exist."));
                }
                Verdict::Error { code, message } => {
                    let code = S3ErrorCode::from_bytes(code.as_bytes()).unwrap_or(S3ErrorCode::ServiceUnavailable);
                    return Err(S3Error::with_message(code, message));
                }
            }
        }
    }

    /// Gives the key back: the write is visible to the owner now, or it failed.
    pub async fn release(mut self) {
        self.released = true;
        self.renewal.abort();
        send_release(&self.state, &self.msg, self.decider.as_ref()).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.released {
            let (state, msg, decider) = (self.state.clone(), self.msg.clone(), self.decider.clone());
            tokio::spawn(async move { send_release(&state, &msg, decider.as_ref()).await });
        }
    }
}

async fn send_release(state: &Arc<NodeState>, msg: &ClaimMsg, decider: Option<&NodeEntry>) {
    match (decider, &state.cluster) {
        (Some(node), Some(cluster)) => {
            let Ok(body) = serde_json::to_vec(msg) else { return };
            if let Err(e) = cluster.call(node, Method::POST, "/wb/unclaim".into(), Bytes::from(body)).await {
                tracing::warn!(peer = %node.id, key = %msg.key, error = ?e, "could not release a conditional write's claim; it lapses by itself");
            }
        }
        _ => release_at_owner(state, msg),
    }
}

/// Renews the claim at its decider while the write runs.
async fn renew(state: Arc<NodeState>, msg: ClaimMsg, decider: Option<NodeEntry>) {
    let msg = ClaimMsg { renew: true, ..msg };
    loop {
        tokio::time::sleep(CLAIM_RENEW).await;
        let (verdict, _) = ask(&state, &msg, Some(decider.as_ref())).await;
        if verdict != Verdict::Go {
            tracing::warn!(bucket = %msg.bucket, key = %msg.key, ?verdict, "a conditional write lost its claim while writing");
        }
    }
}

/// Asks the key's first reachable metadata owner (or `only`, when given: `Some(None)` is this
/// node) to decide; returns the verdict and the node that gave it (`None`: this node).
async fn ask(state: &Arc<NodeState>, msg: &ClaimMsg, only: Option<Option<&NodeEntry>>) -> (Verdict, Option<NodeEntry>) {
    let Some(cluster) = &state.cluster else { return (decide(state, msg).await, None) };
    let candidates = match only {
        Some(None) => return (decide(state, msg).await, None),
        Some(Some(node)) => vec![node.clone()],
        None => {
            let route = cluster.route(Cluster::meta_key(&msg.origin, &msg.bucket, &msg.key));
            route.candidates.into_iter().take(1 + EXTRA_DECIDERS).collect()
        }
    };
    let Ok(body) = serde_json::to_vec(msg) else {
        return (Verdict::Error { code: "InternalError".into(), message: "claim not serialisable".into() }, None);
    };
    let mut last = String::from("no node in the map");
    for node in candidates {
        if node.id == cluster.node_id {
            return (decide(state, msg).await, None);
        }
        match cluster.call(&node, Method::POST, "/wb/claim".into(), Bytes::from(body.clone())).await {
            Ok((_, answer)) => match serde_json::from_slice::<Verdict>(&answer) {
                Ok(v) => return (v, Some(node)),
                Err(e) => last = format!("{}: malformed answer: {e}", node.id),
            },
            Err(e) => {
                last = format!("{}: {e:?}", node.id);
                cluster.mark_suspect(&node.id);
            }
        }
    }
    (
        Verdict::Error {
            code: "ServiceUnavailable".into(),
            message: format!("no owner of the key's metadata could decide the conditional write: {last}"),
        },
        None,
    )
}
