//! The node-local tiered chunk store: a RAM tier over a disk tier, both under S3-FIFO eviction.
//!
//! Reads look in RAM, then among chunks queued for disk, then on disk (verifying the checksum; a
//! bad chunk is a miss). A disk hit is promoted to RAM. Inserts go to RAM at once and to disk in
//! the background; a chunk stays findable in the queue until its file is in place, so RAM eviction
//! never loses a chunk on its way to disk. The queue is bounded: past it, a slow disk sheds cache
//! fills instead of piling up memory.

pub mod disk;
pub mod journal;
pub mod ram;
pub mod s3fifo;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_core::ChunkId;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

pub use disk::{DiskTier, ReadOutcome};
pub use ram::RamTier;

/// Chunks queued for the disk tier at once; past this, fills skip the disk tier.
pub const MAX_QUEUED_DISK_WRITES: usize = 64;
/// Disk writes running at once.
pub const MAX_PARALLEL_DISK_WRITES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Ram,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Ram => "ram",
            Tier::Disk => "disk",
        }
    }
}

/// Counters of the store, read by the node's metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub ram_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub ram_evictions: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub corrupt_chunks: AtomicU64,
    pub disk_write_errors: AtomicU64,
    pub disk_writes_skipped: AtomicU64,
}

pub struct ChunkStore {
    ram: RamTier,
    disk: Option<Arc<DiskTier>>,
    disk_writes: Arc<Semaphore>,
    /// Chunks queued for the disk tier, readable until their file is in place.
    queued: Arc<Mutex<HashMap<ChunkId, Bytes>>>,
    stats: Arc<StoreStats>,
}

impl ChunkStore {
    /// Opens the store; `disk_capacity` 0 disables the disk tier.
    pub fn open(dir: &Path, ram_capacity: u64, disk_capacity: u64) -> io::Result<Self> {
        let disk = if disk_capacity > 0 { Some(Arc::new(DiskTier::open(dir, disk_capacity)?)) } else { None };
        Ok(Self {
            ram: RamTier::new(ram_capacity),
            disk,
            disk_writes: Arc::new(Semaphore::new(MAX_PARALLEL_DISK_WRITES)),
            queued: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(StoreStats::default()),
        })
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    pub fn ram_used(&self) -> u64 {
        self.ram.used()
    }

    pub fn disk_used(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.used())
    }

    /// Whether a tier holds the chunk (without reading or verifying it).
    pub fn contains(&self, id: ChunkId) -> bool {
        self.ram.contains(&id)
            || self.queued.lock().contains_key(&id)
            || self.disk.as_ref().is_some_and(|d| d.contains(&id))
    }

    /// The chunk if it is in RAM, without counting a hit or a miss.
    pub fn peek_ram(&self, id: ChunkId) -> Option<Bytes> {
        self.ram.peek(&id)
    }

    /// Looks a chunk up in RAM, then on disk.
    pub async fn get(&self, id: ChunkId) -> Option<(Bytes, Tier)> {
        if let Some(b) = self.ram.get(&id) {
            self.stats.ram_hits.fetch_add(1, Ordering::Relaxed);
            return Some((b, Tier::Ram));
        }
        let queued = self.queued.lock().get(&id).cloned();
        if let Some(b) = queued {
            self.stats.ram_hits.fetch_add(1, Ordering::Relaxed);
            self.insert_ram(id, b.clone());
            return Some((b, Tier::Ram));
        }
        if let Some(disk) = &self.disk
            && disk.contains(&id)
        {
            let d = disk.clone();
            let outcome = tokio::task::spawn_blocking(move || d.read(&id)).await;
            match outcome {
                Ok(Ok(ReadOutcome::Hit(b))) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    self.insert_ram(id, b.clone());
                    return Some((b, Tier::Disk));
                }
                Ok(Ok(ReadOutcome::Corrupt)) => {
                    self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(ReadOutcome::Miss)) => {}
                Ok(Err(e)) => tracing::warn!(chunk = %id, error = %e, "disk tier read failed; treating as a miss"),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "disk tier read task failed"),
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Caches a chunk: in RAM now, on disk in the background.
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        self.insert_ram(id, data.clone());
        let Some(disk) = self.disk.clone() else { return };
        {
            let mut q = self.queued.lock();
            if q.contains_key(&id) {
                return;
            }
            if q.len() >= MAX_QUEUED_DISK_WRITES {
                self.stats.disk_writes_skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.insert(id, data.clone());
        }
        let stats = self.stats.clone();
        let queued = self.queued.clone();
        let permits = self.disk_writes.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let written = tokio::task::spawn_blocking(move || disk.write(&id, &data)).await;
            match written {
                Ok(Ok(n)) => {
                    stats.disk_evictions.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    stats.disk_write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(chunk = %id, error = %e, "disk tier write failed");
                }
                Err(e) => {
                    stats.disk_write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(chunk = %id, error = %e, "disk tier write task failed");
                }
            }
            queued.lock().remove(&id);
        });
    }

    /// Writes a chunk to disk and waits for it (used by tests and preloading).
    pub async fn insert_and_persist(&self, id: ChunkId, data: Bytes) -> io::Result<()> {
        self.insert_ram(id, data.clone());
        if let Some(disk) = self.disk.clone() {
            let n = tokio::task::spawn_blocking(move || disk.write(&id, &data)).await.map_err(io::Error::other)??;
            self.stats.disk_evictions.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits until the disk write queue is empty.
    pub async fn flush(&self) {
        while !self.queued.lock().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Drops a chunk from both tiers; the disk file is removed in the background.
    pub fn remove(&self, id: ChunkId) {
        self.ram.remove(&id);
        self.queued.lock().remove(&id);
        if let Some(d) = self.disk.clone()
            && d.contains(&id)
        {
            tokio::task::spawn_blocking(move || d.remove(&id));
        }
    }

    /// Caches a chunk in RAM only (near copies of chunks other nodes own).
    pub fn insert_ram(&self, id: ChunkId, data: Bytes) {
        let n = self.ram.insert(id, data);
        self.stats.ram_evictions.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tiers_and_promotion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ChunkStore::open(dir.path(), 1000, 10_000).expect("open");
        s.insert(ChunkId(1), Bytes::from(vec![1u8; 600]));
        s.flush().await;
        assert!(s.peek_ram(ChunkId(1)).is_some());
        // Pushes chunk 1 (never hit, so still on probation) out of RAM; it stays on disk.
        s.insert(ChunkId(2), Bytes::from(vec![2u8; 600]));
        s.flush().await;
        let (b, tier) = s.get(ChunkId(1)).await.expect("on disk");
        assert_eq!(tier, Tier::Disk);
        assert_eq!(b, Bytes::from(vec![1u8; 600]));
        assert_eq!(s.get(ChunkId(1)).await.map(|x| x.1), Some(Tier::Ram));
        assert_eq!(s.get(ChunkId(3)).await, None);
        assert_eq!(s.stats().misses.load(Ordering::Relaxed), 1);
        assert!(s.stats().ram_evictions.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn restart_serves_disk_hits() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20).expect("open");
            s.insert_and_persist(ChunkId(9), Bytes::from_static(b"persisted")).await.expect("persist");
        }
        let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(s.get(ChunkId(9)).await, Some((Bytes::from_static(b"persisted"), Tier::Disk)));
    }

    #[tokio::test]
    async fn corrupt_disk_chunk_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20).expect("open");
            s.insert_and_persist(ChunkId(5), Bytes::from(vec![7u8; 4096])).await.expect("persist");
            let path = s.disk().expect("disk").chunk_path(&ChunkId(5));
            let mut raw = std::fs::read(&path).expect("read");
            raw[disk::HEADER_LEN + 100] ^= 1;
            std::fs::write(&path, raw).expect("write");
        }
        let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(s.get(ChunkId(5)).await, None);
        assert_eq!(s.stats().corrupt_chunks.load(Ordering::Relaxed), 1);
    }
}
