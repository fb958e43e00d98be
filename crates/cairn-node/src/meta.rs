//! Object metadata cache with a per-origin revalidation policy.
//!
//! Entries are bounded in number (S3-FIFO, weight 1). Concurrent lookups of one object share one
//! origin request (single-flight), so a thousand readers opening the same checkpoint cost one HEAD.
//!
//! The owner of a key's metadata also keeps the key's writes that are acknowledged but not yet in
//! the origin (`KeyWrites`): lookups answer with the newest of them, and it decides the order in
//! which uploads of one key may reach the origin, so the last acknowledged write is also the last
//! one there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::MetadataPolicy;
use cairn_origin::{Error as OriginError, ObjectInfo, Origin};
use cairn_store::s3fifo::S3Fifo;
use parking_lot::Mutex;

use crate::cluster::{Cluster, PeerError};
use crate::metrics::Metrics;
use crate::singleflight::SingleFlight;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetaKey {
    pub origin: String,
    pub bucket: String,
    pub key: String,
}

#[derive(Clone)]
struct Entry {
    info: ObjectInfo,
    checked: Instant,
}

/// How long an upload holds a key's turn without renewing it; uploaders renew it every
/// `UPLOAD_RENEW` while their PUT runs, so a crashed uploader blocks the key for at most this long.
pub const UPLOAD_LEASE: Duration = Duration::from_secs(45);
/// How often a running upload renews its turn.
pub const UPLOAD_RENEW: Duration = Duration::from_secs(15);
/// A pending write not announced again for this long is forgotten: nobody holds it any more (a
/// `local` write whose writer lost its disk) or its holders cannot be reached. Holders announce
/// every `writeback::ANNOUNCE_EVERY`.
pub const PENDING_LEASE: Duration = Duration::from_secs(30);
/// How long a conditional write holds its key without renewing the claim; writers renew it every
/// `CLAIM_RENEW` while they write, so a crashed writer blocks the key's conditional writes for at
/// most this long.
pub const CLAIM_LEASE: Duration = Duration::from_secs(45);
/// How often a conditional write renews its claim.
pub const CLAIM_RENEW: Duration = Duration::from_secs(15);
/// Keys whose write state is kept; idle ones are forgotten first past this.
const MAX_KEY_WRITES: usize = 1_000_000;
/// A key with no write pending is remembered this long, so a late upload of an older write can
/// still be recognised as superseded.
const KEY_WRITES_IDLE: Duration = Duration::from_secs(600);

/// A write acknowledged and not yet in the origin.
#[derive(Clone, Debug)]
pub struct PendingWrite {
    pub wid: String,
    pub ticket: u64,
    pub info: ObjectInfo,
}

/// Who holds a key's upload turn: a write (or an origin operation) and the node running it, since
/// a writer and the replica holder that took over from it may both try to upload one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploader {
    pub wid: String,
    pub node: String,
}

#[derive(Default)]
struct KeyWrites {
    /// The newest pending write and when a holder last announced it.
    current: Option<(PendingWrite, Instant)>,
    /// Ticket of the newest write known to be in the origin.
    committed: u64,
    uploading: Option<(Uploader, Instant)>,
    /// The conditional write that holds the key while it writes, and when it last renewed.
    claim: Option<(String, Instant)>,
    /// The last write uploaded by way of this owner and the origin's ETag it got: an `If-Match`
    /// naming the write's pending version still matches that version.
    uploaded: Option<(String, String)>,
    touched: Option<Instant>,
}

impl KeyWrites {
    /// The pending write, unless its announcements stopped.
    fn live(&mut self) -> Option<&PendingWrite> {
        if self.current.as_ref().is_some_and(|(_, at)| at.elapsed() > PENDING_LEASE) {
            self.current = None;
        }
        self.current.as_ref().map(|(p, _)| p)
    }
}

/// What a metadata owner knows of one key, sent to a co-owner that restarted.
#[derive(Clone, Debug)]
pub struct KeyState {
    pub key: MetaKey,
    pub committed: u64,
    pub pending: Option<PendingWrite>,
}

/// The answer to an uploader that asks to write a key to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadGrant {
    Go,
    /// Another write of the key is being uploaded; ask again later.
    Wait,
    /// A newer write of the key exists: this one must not reach the origin.
    Superseded,
}

impl UploadGrant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Go => "go",
            Self::Wait => "wait",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "go" => Some(Self::Go),
            "wait" => Some(Self::Wait),
            "superseded" => Some(Self::Superseded),
            _ => None,
        }
    }
}

pub type MetaResult = Result<ObjectInfo, Arc<OriginError>>;
/// Metadata and how long ago it was checked against the origin.
type FlightResult = Result<(ObjectInfo, Duration), Arc<OriginError>>;

pub struct MetaCache {
    inner: Mutex<Inner>,
    /// Origin lookups; peers' requests join only these (see `ReadThrough`).
    flights: SingleFlight<MetaKey, FlightResult>,
    /// Requests to the owner of a metadata key.
    routed: SingleFlight<MetaKey, FlightResult>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    writes: Mutex<HashMap<MetaKey, KeyWrites>>,
}

struct Inner {
    map: HashMap<MetaKey, Entry>,
    policy: S3Fifo<MetaKey>,
}

impl MetaCache {
    pub fn new(capacity: usize, metrics: Arc<Metrics>, cluster: Option<Arc<Cluster>>) -> Self {
        Self {
            inner: Mutex::new(Inner { map: HashMap::new(), policy: S3Fifo::new(capacity as u64) }),
            flights: SingleFlight::default(),
            routed: SingleFlight::default(),
            metrics,
            cluster,
            writes: Mutex::new(HashMap::new()),
        }
    }

    /// The newest acknowledged write of `key` not yet in the origin, as this node knows it.
    pub fn pending(&self, key: &MetaKey) -> Option<PendingWrite> {
        self.writes.lock().get_mut(key).and_then(|w| w.live().cloned())
    }

    /// Keys with a pending write or a remembered commit, for which `wanted` holds.
    pub fn key_states(&self, wanted: impl Fn(&MetaKey) -> bool) -> Vec<KeyState> {
        let mut writes = self.writes.lock();
        writes
            .iter_mut()
            .filter(|(k, w)| (w.committed > 0 || w.current.is_some()) && wanted(k))
            .map(|(k, w)| KeyState { key: k.clone(), committed: w.committed, pending: w.live().cloned() })
            .collect()
    }

    fn with_writes<T>(&self, key: &MetaKey, f: impl FnOnce(&mut KeyWrites) -> T) -> T {
        let mut writes = self.writes.lock();
        if writes.len() >= MAX_KEY_WRITES && !writes.contains_key(key) {
            writes.retain(|_, w| w.current.is_some() || w.uploading.is_some() || w.claim.is_some());
        }
        let w = writes.entry(key.clone()).or_default();
        w.touched = Some(Instant::now());
        let out = f(w);
        if writes.len().is_multiple_of(1024) {
            writes.retain(|_, w| {
                w.live().is_some()
                    || w.uploading.is_some()
                    || w.claim.is_some()
                    || w.touched.is_some_and(|t| t.elapsed() < KEY_WRITES_IDLE)
            });
        }
        out
    }

    /// Records an acknowledged write, or renews the announcement of one; the newest ticket is
    /// what readers see.
    pub fn register(&self, key: &MetaKey, write: PendingWrite) {
        let newest = self.with_writes(key, |w| {
            let live_ticket = w.live().map(|c| (c.ticket, c.wid.clone()));
            match live_ticket {
                Some((_, wid)) if wid == write.wid => {
                    w.current = Some((write, Instant::now()));
                    false
                }
                Some((t, _)) if write.ticket <= t => false,
                _ if write.ticket <= w.committed => false,
                _ => {
                    w.current = Some((write, Instant::now()));
                    true
                }
            }
        });
        if newest {
            self.remove(key);
        }
    }

    /// Whether `who` may upload its write (acknowledged at `ticket`) now.
    pub fn begin_upload(&self, key: &MetaKey, who: &Uploader, ticket: u64) -> UploadGrant {
        self.with_writes(key, |w| {
            // A write whose ticket is committed is in the origin already (uploaded by another
            // holder of it), or older than a write or delete that is.
            if ticket <= w.committed || w.live().is_some_and(|c| c.ticket > ticket) {
                return UploadGrant::Superseded;
            }
            // The same write from another node (a replica holder that took over from a writer it
            // could not reach) may go too: both send the same bytes.
            if let Some((other, since)) = &w.uploading
                && other.wid != who.wid
                && since.elapsed() < UPLOAD_LEASE
            {
                return UploadGrant::Wait;
            }
            w.uploading = Some((who.clone(), Instant::now()));
            UploadGrant::Go
        })
    }

    /// Takes a key's turn for an operation that goes to the origin at once (a write-through PUT,
    /// a delete) with a ticket newer than every write acknowledged before it: it waits for a
    /// running upload, never for a pending one.
    pub fn begin_origin_op(&self, key: &MetaKey, who: &Uploader) -> UploadGrant {
        self.with_writes(key, |w| {
            if let Some((other, since)) = &w.uploading
                && other != who
                && since.elapsed() < UPLOAD_LEASE
            {
                return UploadGrant::Wait;
            }
            w.uploading = Some((who.clone(), Instant::now()));
            UploadGrant::Go
        })
    }

    /// Ends an upload; with `info`, the write is in the origin under that metadata.
    pub fn end_upload(&self, key: &MetaKey, who: &Uploader, ticket: u64, info: Option<ObjectInfo>) {
        let clean = self.with_writes(key, |w| {
            if w.uploading.as_ref().is_some_and(|(u, _)| u == who) {
                w.uploading = None;
            }
            let info = info?;
            w.uploaded = Some((who.wid.clone(), info.etag.clone()));
            w.committed = w.committed.max(ticket);
            if w.live().is_some_and(|c| c.wid == who.wid || c.ticket <= ticket) {
                w.current = None;
            }
            w.current.is_none().then_some(info)
        });
        if let Some(info) = clean {
            self.insert(key.clone(), info);
        }
    }

    /// Records a write that went straight to the origin (or a delete): older pending writes are
    /// superseded; `who`, if it held the key's turn, gives it back.
    pub fn committed_write(&self, key: &MetaKey, ticket: u64, who: Option<&Uploader>) {
        self.with_writes(key, |w| {
            if let Some(who) = who
                && w.uploading.as_ref().is_some_and(|(u, _)| u == who)
            {
                w.uploading = None;
            }
            w.committed = w.committed.max(ticket);
            if w.live().is_some_and(|c| c.ticket <= ticket) {
                w.current = None;
            }
        });
        // What this owner cached of the object is older than the operation.
        self.remove(key);
    }

    /// Takes (or renews) the key's claim for conditional write `id`: false while another
    /// conditional write holds it. Taking and checking are one step under the lock, so of two
    /// writers only one holds the claim.
    pub fn try_claim(&self, key: &MetaKey, id: &str) -> bool {
        self.with_writes(key, |w| {
            if let Some((other, since)) = &w.claim
                && other != id
                && since.elapsed() < CLAIM_LEASE
            {
                return false;
            }
            w.claim = Some((id.to_owned(), Instant::now()));
            true
        })
    }

    /// Whether `pending` (a pending version's write id) is the write whose upload gave the key
    /// its origin ETag `etag`.
    pub fn uploaded_as(&self, key: &MetaKey, wid: &str, etag: &str) -> bool {
        self.writes.lock().get(key).and_then(|w| w.uploaded.as_ref()).is_some_and(|(w, e)| w == wid && e == etag)
    }

    /// Gives back the claim of conditional write `id`, if it still holds it.
    pub fn release_claim(&self, key: &MetaKey, id: &str) {
        self.with_writes(key, |w| {
            if w.claim.as_ref().is_some_and(|(c, _)| c == id) {
                w.claim = None;
            }
        });
    }

    /// Gives back a key's turn without a commit (an origin operation that failed).
    pub fn release_turn(&self, key: &MetaKey, who: &Uploader) {
        self.with_writes(key, |w| {
            if w.uploading.as_ref().is_some_and(|(u, _)| u == who) {
                w.uploading = None;
            }
        });
    }

    /// The object's current metadata under `policy`: in a cluster, as the owner of its metadata
    /// key holds it, so every node agrees on the object's version.
    pub async fn get(&self, origin: &Arc<dyn Origin>, policy: MetadataPolicy, key: MetaKey) -> MetaResult {
        let route =
            self.cluster.as_ref().map(|c| (c.clone(), c.route(Cluster::meta_key(&key.origin, &key.bucket, &key.key))));
        match route {
            Some((cluster, route)) if !route.self_is_owner => {
                // Held here when this node is one of the key's R metadata owners.
                if let Some(p) = self.pending(&key) {
                    return Ok(p.info);
                }
                if let Some(info) = self.fresh(&key, policy).0 {
                    return Ok(info);
                }
                Metrics::add(&self.metrics.metadata_misses, 1);
                let origin = origin.clone();
                let k = key.clone();
                let metrics = self.metrics.clone();
                let (result, _) = self
                    .routed
                    .run(key.clone(), move || async move {
                        for node in &route.candidates {
                            if node.id == cluster.node_id {
                                break;
                            }
                            match cluster.get_meta(node, &k.origin, &k.bucket, &k.key).await {
                                Ok((info, age)) => return Ok((info, age)),
                                Err(PeerError::Origin(e)) => return Err(Arc::new(e)),
                                Err(PeerError::Unavailable(m)) => {
                                    tracing::warn!(peer = %node.id, error = %m, "peer failed a metadata request; trying the next node");
                                    cluster.mark_suspect(&node.id);
                                }
                            }
                        }
                        origin_lookup(&origin, &metrics, &k, None).await.map(|i| (i, Duration::ZERO))
                    })
                    .await;
                self.settle(key, result)
            }
            _ => self.get_local(origin, policy, key).await,
        }
    }

    /// The object's metadata from this node's cache or the origin, never from a peer.
    pub async fn get_local(&self, origin: &Arc<dyn Origin>, policy: MetadataPolicy, key: MetaKey) -> MetaResult {
        if let Some(p) = self.pending(&key) {
            Metrics::add(&self.metrics.metadata_hits, 1);
            return Ok(p.info);
        }
        let (fresh, cached) = self.fresh(&key, policy);
        if let Some(info) = fresh {
            return Ok(info);
        }
        Metrics::add(&self.metrics.metadata_misses, 1);
        let origin = origin.clone();
        let metrics = self.metrics.clone();
        let k = key.clone();
        let (result, _) = self
            .flights
            .run(key.clone(), move || async move {
                origin_lookup(&origin, &metrics, &k, cached.as_ref()).await.map(|i| (i, Duration::ZERO))
            })
            .await;
        self.settle(key, result)
    }

    /// How long ago this node checked the object's metadata, if it holds it.
    pub fn age(&self, key: &MetaKey) -> Option<Duration> {
        self.inner.lock().map.get(key).map(|e| e.checked.elapsed())
    }

    /// The cached entry if it is fresh under `policy` (counted as a hit), and the cached entry
    /// either way.
    fn fresh(&self, key: &MetaKey, policy: MetadataPolicy) -> (Option<ObjectInfo>, Option<ObjectInfo>) {
        let cached = {
            let mut g = self.inner.lock();
            let e = g.map.get(key).cloned();
            if e.is_some() {
                g.policy.touch(key);
            }
            e
        };
        let Some(e) = cached else { return (None, None) };
        let fresh = match policy {
            MetadataPolicy::Immutable => true,
            MetadataPolicy::Ttl(ttl) => e.checked.elapsed() < ttl,
            MetadataPolicy::Always => false,
        };
        if fresh {
            Metrics::add(&self.metrics.metadata_hits, 1);
            (Some(e.info.clone()), Some(e.info))
        } else {
            (None, Some(e.info))
        }
    }

    fn settle(&self, key: MetaKey, result: FlightResult) -> MetaResult {
        match result {
            // A write not yet in the origin is asked for at its owner each time: its version
            // changes when the upload completes.
            Ok((info, _)) if info.etag.starts_with(cairn_core::chunk::PENDING_VERSION_PREFIX) => Ok(info),
            Ok((info, age)) => {
                let checked = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                self.insert_checked(key, info.clone(), checked);
                Ok(info)
            }
            Err(e) => {
                self.remove(&key);
                Err(e)
            }
        }
    }

    pub fn insert(&self, key: MetaKey, info: ObjectInfo) {
        self.insert_checked(key, info, Instant::now());
    }

    fn insert_checked(&self, key: MetaKey, info: ObjectInfo, checked: Instant) {
        let mut g = self.inner.lock();
        for evicted in g.policy.insert(key.clone(), 1) {
            g.map.remove(&evicted);
        }
        g.map.insert(key, Entry { info, checked });
    }

    /// Forgets an object's metadata; returns what was cached.
    pub fn remove(&self, key: &MetaKey) -> Option<ObjectInfo> {
        let mut g = self.inner.lock();
        g.policy.remove(key);
        g.map.remove(key).map(|e| e.info)
    }
}

/// HEAD (or a conditional HEAD against `previous`) at the origin.
async fn origin_lookup(
    origin: &Arc<dyn Origin>,
    metrics: &Metrics,
    k: &MetaKey,
    previous: Option<&ObjectInfo>,
) -> MetaResult {
    let r = match previous {
        Some(prev) => {
            Metrics::add(&metrics.origin_revalidate, 1);
            origin.revalidate(&k.bucket, &k.key, &prev.etag).await.map(|changed| match changed {
                Some(new) => {
                    Metrics::add(&metrics.version_changes, 1);
                    new
                }
                None => prev.clone(),
            })
        }
        None => {
            Metrics::add(&metrics.origin_head, 1);
            origin.head(&k.bucket, &k.key).await
        }
    };
    if r.is_err() {
        Metrics::add(&metrics.origin_errors, 1);
    }
    r.map_err(Arc::new)
}
