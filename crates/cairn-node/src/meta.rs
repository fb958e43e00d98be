//! Object metadata cache with a per-origin revalidation policy.
//!
//! Entries are bounded in number (S3-FIFO, weight 1). Concurrent lookups of one object share one
//! origin request (single-flight), so a thousand readers opening the same checkpoint cost one HEAD.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cairn_core::MetadataPolicy;
use cairn_origin::{Error as OriginError, ObjectInfo, Origin};
use cairn_store::s3fifo::S3Fifo;
use parking_lot::Mutex;

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

pub struct MetaCache {
    inner: Mutex<Inner>,
    flights: SingleFlight<MetaKey, MetaResult>,
    metrics: Arc<Metrics>,
}

struct Inner {
    map: HashMap<MetaKey, Entry>,
    policy: S3Fifo<MetaKey>,
}

impl MetaCache {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::new(Inner { map: HashMap::new(), policy: S3Fifo::new(capacity as u64) }),
            flights: SingleFlight::default(),
            metrics,
        }
    }

    /// The object's current metadata under `policy`.
    pub async fn get(&self, origin: &Arc<dyn Origin>, policy: MetadataPolicy, key: MetaKey) -> MetaResult {
        let cached = {
            let mut g = self.inner.lock();
            let e = g.map.get(&key).cloned();
            if e.is_some() {
                g.policy.touch(&key);
            }
            e
        };
        if let Some(e) = &cached {
            let fresh = match policy {
                MetadataPolicy::Immutable => true,
                MetadataPolicy::Ttl(ttl) => e.checked.elapsed() < ttl,
                MetadataPolicy::Always => false,
            };
            if fresh {
                Metrics::add(&self.metrics.metadata_hits, 1);
                return Ok(e.info.clone());
            }
        }
        Metrics::add(&self.metrics.metadata_misses, 1);
        let origin = origin.clone();
        let metrics = self.metrics.clone();
        let k = key.clone();
        let previous = cached.map(|e| e.info);
        let (result, _) = self
            .flights
            .run(key.clone(), move || async move {
                let r = match &previous {
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
            })
            .await;
        match &result {
            Ok(info) => self.insert(key, info.clone()),
            Err(_) => {
                self.remove(&key);
            }
        }
        result
    }

    pub fn insert(&self, key: MetaKey, info: ObjectInfo) {
        let mut g = self.inner.lock();
        for evicted in g.policy.insert(key.clone(), 1) {
            g.map.remove(&evicted);
        }
        g.map.insert(key, Entry { info, checked: Instant::now() });
    }

    /// Forgets an object's metadata; returns what was cached.
    pub fn remove(&self, key: &MetaKey) -> Option<ObjectInfo> {
        let mut g = self.inner.lock();
        g.policy.remove(key);
        g.map.remove(key).map(|e| e.info)
    }
}
