//! The RAM tier: chunk bytes in memory under S3-FIFO, bounded by bytes.

use bytes::Bytes;
use cairn_core::ChunkId;
use parking_lot::Mutex;
use std::collections::HashMap;

use crate::s3fifo::S3Fifo;

pub struct RamTier {
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<ChunkId, Bytes>,
    policy: S3Fifo<ChunkId>,
}

impl RamTier {
    pub fn new(capacity: u64) -> Self {
        Self { inner: Mutex::new(Inner { map: HashMap::new(), policy: S3Fifo::new(capacity) }) }
    }

    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut g = self.inner.lock();
        let v = g.map.get(id).cloned()?;
        g.policy.touch(id);
        Some(v)
    }

    /// Looks a chunk up without counting it as a hit.
    pub fn peek(&self, id: &ChunkId) -> Option<Bytes> {
        self.inner.lock().map.get(id).cloned()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().map.contains_key(id)
    }

    /// Inserts a chunk; returns how many chunks were evicted for it.
    pub fn insert(&self, id: ChunkId, data: Bytes) -> usize {
        let mut g = self.inner.lock();
        let evicted = g.policy.insert(id, data.len() as u64);
        g.map.insert(id, data);
        for e in &evicted {
            g.map.remove(e);
        }
        debug_assert_eq!(g.map.len(), g.policy.len());
        evicted.iter().filter(|e| **e != id).count()
    }

    pub fn remove(&self, id: &ChunkId) {
        let mut g = self.inner.lock();
        g.map.remove(id);
        g.policy.remove(id);
    }

    pub fn used(&self) -> u64 {
        self.inner.lock().policy.used()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
