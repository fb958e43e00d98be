//! The node-local tiered chunk store: a RAM tier over a disk tier, both under S3-FIFO eviction.
//!
//! Reads look in RAM, then among chunks queued for disk, then on disk (verifying the checksum; a
//! bad chunk is a miss). A disk hit is promoted to RAM. Inserts go to RAM at once and to disk in
//! the background; a chunk stays findable in the queue until its file is in place, so RAM eviction
//! never loses a chunk on its way to disk. The queue is bounded: past it, a slow disk sheds cache
//! fills instead of piling up memory.
//!
//! The disk tier keeps a reserve of its device free and gives way to writes that must land there
//! (`space.rs`): [`ChunkStore::room`] hands out the [`Room`] that the journal and multipart
//! staging write through.

pub mod direct;
pub mod disk;
pub mod journal;
pub mod ram;
pub mod s3fifo;
pub mod space;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_core::{ChunkId, SpaceReserve};
use parking_lot::Mutex;

pub use disk::{DiskTier, ReadOutcome, WriteOutcome};
pub use ram::RamTier;
pub use space::{Room, is_disk_full};

/// Chunks queued for the disk tier at once; past this, fills skip the disk tier.
pub const MAX_QUEUED_DISK_WRITES: usize = 32;
/// Threads writing cache fills to the disk tier.
const FILL_THREADS: usize = 2;
/// How much nicer than the serving threads the fill threads are: on a busy machine the fills
/// lag (and past the queue's bound are skipped) rather than slow the reads that caused them.
const FILL_NICE: i32 = 10;

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
    /// Cache fills not written to disk: they would have left less than the reserve free.
    pub disk_fills_skipped_for_space: AtomicU64,
    /// Disk chunks evicted to make room for journal writes and staged parts (also counted in
    /// `disk_evictions`).
    pub disk_evictions_for_writes: AtomicU64,
}

impl StoreStats {
    /// Counts what a disk-tier fill did: chunks it evicted, or a fill skipped for space.
    fn count_fill(&self, outcome: WriteOutcome) {
        match outcome {
            WriteOutcome::Stored { evicted } => {
                self.disk_evictions.fetch_add(evicted as u64, Ordering::Relaxed);
            }
            WriteOutcome::NoSpace => {
                self.disk_fills_skipped_for_space.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct ChunkStore {
    ram: RamTier,
    disk: Option<Arc<DiskTier>>,
    /// To the fill threads: chunks to write to the disk tier.
    fills: Option<std::sync::mpsc::Sender<(ChunkId, Bytes)>>,
    /// Chunks queued for the disk tier, readable until their file is in place.
    queued: Arc<Mutex<HashMap<ChunkId, Bytes>>>,
    stats: Arc<StoreStats>,
}

/// Starts the threads that write queued cache fills to `disk`, each removing a chunk from
/// `queued` once its file is in place (or the write failed). They end when the store is dropped.
fn spawn_fillers(
    disk: Arc<DiskTier>,
    queued: Arc<Mutex<HashMap<ChunkId, Bytes>>>,
    stats: Arc<StoreStats>,
) -> std::sync::mpsc::Sender<(ChunkId, Bytes)> {
    let (tx, rx) = std::sync::mpsc::channel::<(ChunkId, Bytes)>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..FILL_THREADS {
        let (rx, disk, queued, stats) = (rx.clone(), disk.clone(), queued.clone(), stats.clone());
        let spawned = std::thread::Builder::new().name("cairn-disk-fill".into()).spawn(move || {
            // Linux nice values are per thread: only the fill threads yield.
            let _ = rustix::process::nice(FILL_NICE);
            loop {
                let next = rx.lock().recv();
                let Ok((id, data)) = next else { return };
                match disk.write(&id, &data) {
                    Ok(outcome) => stats.count_fill(outcome),
                    Err(e) => {
                        stats.disk_write_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(chunk = %id, error = %e, "disk tier write failed");
                    }
                }
                queued.lock().remove(&id);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a disk fill thread");
        }
    }
    tx
}

impl ChunkStore {
    /// Opens the store; `disk_capacity` 0 disables the disk tier, which keeps `reserve` of its
    /// device free.
    pub fn open(dir: &Path, ram_capacity: u64, disk_capacity: u64, reserve: SpaceReserve) -> io::Result<Self> {
        let disk = if disk_capacity > 0 { Some(DiskTier::open(dir, disk_capacity, reserve)?) } else { None };
        Ok(Self::with_disk(ram_capacity, disk))
    }

    /// A store over an opened disk tier (or none).
    pub fn with_disk(ram_capacity: u64, disk: Option<DiskTier>) -> Self {
        let disk = disk.map(Arc::new);
        let queued = Arc::new(Mutex::new(HashMap::new()));
        let stats = Arc::new(StoreStats::default());
        let fills = disk.as_ref().map(|d| spawn_fillers(d.clone(), queued.clone(), stats.clone()));
        Self { ram: RamTier::new(ram_capacity), disk, fills, queued, stats }
    }

    /// The room-maker for writes into `dir` (journal entries, staged parts): it evicts disk-tier
    /// chunks when `dir` is on the tier's device.
    pub fn room(&self, dir: &Path) -> Room {
        use std::os::unix::fs::MetadataExt;
        let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let disk = self.disk.clone().filter(|d| {
            let (a, b) = (device(dir), device(d.root()));
            // When either cannot be looked at, evicting is the safer guess.
            a.is_none() || b.is_none() || a == b
        });
        Room::new(Arc::new(space::Statvfs::new(dir)), disk, self.stats.clone())
    }

    /// The disk tier's device: bytes kept free for everything else, and bytes free now.
    pub fn disk_reserve_and_free(&self) -> Option<(u64, u64)> {
        self.disk.as_ref().and_then(|d| d.reserve_and_free().ok())
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
        if self.disk.is_none() {
            return;
        }
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
        if let Some(fills) = &self.fills
            && fills.send((id, data)).is_err()
        {
            self.queued.lock().remove(&id);
        }
    }

    /// Writes a chunk to disk and waits for it (used by tests and preloading).
    pub async fn insert_and_persist(&self, id: ChunkId, data: Bytes) -> io::Result<()> {
        self.insert_ram(id, data.clone());
        if let Some(disk) = self.disk.clone() {
            let outcome =
                tokio::task::spawn_blocking(move || disk.write(&id, &data)).await.map_err(io::Error::other)??;
            self.stats.count_fill(outcome);
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
    use crate::space::testing::FakeDevice;
    use cairn_core::ByteSize;

    const NO_RESERVE: SpaceReserve = SpaceReserve::Bytes(ByteSize(0));

    #[tokio::test]
    async fn tiers_and_promotion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ChunkStore::open(dir.path(), 1000, 10_000, NO_RESERVE).expect("open");
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
            let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20, NO_RESERVE).expect("open");
            s.insert_and_persist(ChunkId(9), Bytes::from_static(b"persisted")).await.expect("persist");
        }
        let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20, NO_RESERVE).expect("reopen");
        assert_eq!(s.get(ChunkId(9)).await, Some((Bytes::from_static(b"persisted"), Tier::Disk)));
    }

    #[tokio::test]
    async fn corrupt_disk_chunk_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20, NO_RESERVE).expect("open");
            s.insert_and_persist(ChunkId(5), Bytes::from(vec![7u8; 4096])).await.expect("persist");
            let path = s.disk().expect("disk").chunk_path(&ChunkId(5));
            let mut raw = std::fs::read(&path).expect("read");
            raw[disk::HEADER_LEN + 100] ^= 1;
            std::fs::write(&path, raw).expect("write");
        }
        let s = ChunkStore::open(dir.path(), 1 << 20, 1 << 20, NO_RESERVE).expect("reopen");
        assert_eq!(s.get(ChunkId(5)).await, None);
        assert_eq!(s.stats().corrupt_chunks.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn room_for_writes_evicts_clean_chunks_and_refuses_past_the_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = dir.path().join("store");
        let dev = FakeDevice::new(dir.path(), 4 << 20);
        let disk = DiskTier::open_on(&store_dir, 1 << 30, SpaceReserve::percent(10), dev.clone()).expect("open");
        let s = ChunkStore::with_disk(1 << 20, Some(disk));
        for n in 0..80u128 {
            s.insert_and_persist(ChunkId(n), Bytes::from(vec![n as u8; 60 << 10])).await.expect("persist");
        }
        let filled = s.disk_used();
        assert!(dev.avail() >= SpaceReserve::percent(10).bytes_of(dev.total));
        assert!(s.stats().disk_evictions.load(Ordering::Relaxed) > 0);
        // The journal wants 2 MiB: clean chunks give way.
        let room = Room::new(dev.clone(), s.disk().cloned(), s.stats().clone());
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).expect("mkdir");
        room.write(2 << 20, || std::fs::write(journal.join("a"), vec![1u8; 2 << 20])).expect("room for 2 MiB");
        assert!(s.disk_used() < filled);
        let for_writes = s.stats().disk_evictions_for_writes.load(Ordering::Relaxed);
        assert!(for_writes > 0);
        // A fill now finds the journal in the reserve and evicts its own chunks to stay above it.
        s.insert_and_persist(ChunkId(1000), Bytes::from(vec![9u8; 60 << 10])).await.expect("persist");
        assert!(dev.avail() >= SpaceReserve::percent(10).bytes_of(dev.total));
        // More than the device can give: refused up front, with every clean chunk gone.
        let err = room.make(3 << 20).expect_err("no room");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("bytes needed"), "{err}");
        assert_eq!(s.disk_used(), 0);
        // With the journal grown into the reserve and nothing left to evict, a fill is skipped.
        std::fs::write(journal.join("b"), vec![2u8; 1700 << 10]).expect("journal");
        s.insert_and_persist(ChunkId(1001), Bytes::from(vec![9u8; 60 << 10])).await.expect("persist");
        assert_eq!(s.stats().disk_fills_skipped_for_space.load(Ordering::Relaxed), 1);
        assert!(s.get(ChunkId(1001)).await.is_some(), "a skipped fill is still served from RAM");
    }

    #[test]
    fn room_retries_once_after_the_device_fills() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = FakeDevice::new(dir.path(), 4 << 20);
        let room = Room::new(dev, None, Arc::new(StoreStats::default()));
        let mut calls = 0;
        let r = room.write(1024, || {
            calls += 1;
            if calls == 1 { Err(io::Error::from_raw_os_error(nix::libc::ENOSPC)) } else { Ok(calls) }
        });
        assert_eq!(r.expect("second try"), 2);
        let mut calls = 0;
        let r: io::Result<()> = room.write(1024, || {
            calls += 1;
            Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
        });
        assert!(is_disk_full(&r.expect_err("full twice")));
        assert_eq!(calls, 2);
        assert!(Room::unchecked().write(u64::MAX, || Ok(())).is_ok());
    }
}
