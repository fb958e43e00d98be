//! Object metadata cache with a per-origin revalidation policy.
//!
//! Entries are bounded in number (S3-FIFO, weight 1). Concurrent lookups of one object share one
//! origin request (single-flight), so a thousand readers opening the same checkpoint cost one HEAD.

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
        }
    }

    /// The object's current metadata under `policy`: in a cluster, as the owner of its metadata
    /// key holds it, so every node agrees on the object's version.
    pub async fn get(&self, origin: &Arc<dyn Origin>, policy: MetadataPolicy, key: MetaKey) -> MetaResult {
        let route =
            self.cluster.as_ref().map(|c| (c.clone(), c.route(Cluster::meta_key(&key.origin, &key.bucket, &key.key))));
        match route {
            Some((cluster, route)) if !route.self_is_owner => {
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
