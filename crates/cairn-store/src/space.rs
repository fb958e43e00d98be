//! Free space on the cache's device.
//!
//! The disk tier is a cache: whatever `disk_capacity` says, it leaves a reserve of the device free
//! (`cache.free_space_reserve`, a share or a byte size, like JuiceFS's `free-space-ratio`), and it
//! gives way to data that must land on the same device: write-back journal entries and staged
//! multipart parts. Those writes go through a [`Room`], which evicts clean cache chunks (S3-FIFO
//! order) until the bytes about to be written fit, and on `ENOSPC` makes room once more and
//! retries once. They may use the reserve: it keeps the cache from filling the disk, not the
//! journal.
//!
//! Free space comes from `statvfs` on the device (behind the [`Device`] trait, so the unit tests
//! can model a small disk). It is asked once per disk-tier write or `Room` call, never on reads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::StoreStats;
use crate::disk::DiskTier;

/// Free space asked for beyond the bytes about to be written, for what comes with them (a
/// journal record, directory blocks, a filesystem's rounding).
pub const ROOM_MARGIN: u64 = 1 << 20;

/// The size of a device and what is free on it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// Free to this process (`f_bavail`).
    pub avail: u64,
    /// Allocation unit; files take whole blocks.
    pub block: u64,
}

/// Where a tier's free space comes from.
pub trait Device: Send + Sync {
    fn space(&self) -> io::Result<Space>;
}

/// The device holding a path, measured with `statvfs`.
pub struct Statvfs {
    path: PathBuf,
}

impl Statvfs {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned() }
    }
}

impl Device for Statvfs {
    fn space(&self) -> io::Result<Space> {
        let s = nix::sys::statvfs::statvfs(&self.path)
            .map_err(|e| io::Error::other(format!("statvfs of {} failed: {e}", self.path.display())))?;
        let unit = s.fragment_size().max(1);
        Ok(Space { total: s.blocks() * unit, avail: s.blocks_available() * unit, block: unit })
    }
}

/// Whether an I/O error means the device is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(nix::libc::ENOSPC)
}

/// Makes room on the cache's device for writes that must land (journal entries, staged parts) by
/// evicting clean disk-tier chunks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Room {
    device: Option<Arc<dyn Device>>,
    /// The disk tier, when it lives on the same device.
    disk: Option<Arc<DiskTier>>,
    stats: Option<Arc<StoreStats>>,
}

impl Room {
    pub(crate) fn new(device: Arc<dyn Device>, disk: Option<Arc<DiskTier>>, stats: Arc<StoreStats>) -> Self {
        Self { device: Some(device), disk, stats: Some(stats) }
    }

    /// A room that checks nothing (a journal opened without a cache, in tests).
    pub fn unchecked() -> Self {
        Self::default()
    }

    /// Evicts clean cache chunks until `bytes` (plus [`ROOM_MARGIN`]) are free; fails with
    /// `StorageFull` when fewer than `bytes` are free even then. Blocking.
    pub fn make(&self, bytes: u64) -> io::Result<()> {
        let Some(device) = &self.device else { return Ok(()) };
        let avail = match &self.disk {
            Some(disk) => {
                let freed = disk.make_room(bytes)?;
                if let Some(stats) = &self.stats
                    && freed.chunks > 0
                {
                    stats.disk_evictions.fetch_add(freed.chunks as u64, Ordering::Relaxed);
                    stats.disk_evictions_for_writes.fetch_add(freed.chunks as u64, Ordering::Relaxed);
                    tracing::debug!(
                        chunks = freed.chunks,
                        bytes = freed.bytes,
                        "evicted cache chunks to make room for a write"
                    );
                }
                freed.avail
            }
            None => device.space()?.avail,
        };
        if avail < bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{bytes} bytes needed but only {avail} free on the cache device with no clean cache data left to evict"
                ),
            ));
        }
        Ok(())
    }

    /// Makes room for `bytes`, runs `write`, and if the device is full after all, makes room again
    /// and runs `write` once more. `write` must be safe to repeat (it rewrites the same bytes at
    /// the same place). Blocking.
    pub fn write<T>(&self, bytes: u64, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        self.make(bytes)?;
        match write() {
            Err(e) if is_disk_full(&e) && self.device.is_some() => {
                tracing::debug!(bytes, "the device filled during a write; making room and retrying once");
                self.make(bytes)?;
                write()
            }
            r => r,
        }
    }

    /// [`Room::make`] on a blocking thread.
    pub async fn make_async(&self, bytes: u64) -> io::Result<()> {
        let room = self.clone();
        tokio::task::spawn_blocking(move || room.make(bytes)).await.map_err(io::Error::other)?
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::fs;
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// Block size of the modelled device.
    pub const BLOCK: u64 = 4096;

    /// A small device whose used bytes are the files under `root` (rounded up to blocks) plus
    /// `other` bytes written by someone else (a journal, another program).
    pub struct FakeDevice {
        pub total: u64,
        pub root: PathBuf,
        pub other: AtomicU64,
    }

    impl FakeDevice {
        pub fn new(root: &Path, total: u64) -> Arc<Self> {
            Arc::new(Self { total, root: root.to_owned(), other: AtomicU64::new(0) })
        }

        pub fn used(&self) -> u64 {
            fn walk(p: &Path) -> u64 {
                let Ok(entries) = fs::read_dir(p) else { return 0 };
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len().div_ceil(BLOCK) * BLOCK,
                        Err(_) => 0,
                    })
                    .sum()
            }
            walk(&self.root) + self.other.load(Ordering::Relaxed)
        }

        pub fn avail(&self) -> u64 {
            self.total.saturating_sub(self.used())
        }
    }

    impl Device for FakeDevice {
        fn space(&self) -> io::Result<Space> {
            Ok(Space { total: self.total, avail: self.avail(), block: BLOCK })
        }
    }
}
