//! The disk tier: one file per chunk, checksummed, surviving restarts.
//!
//! Layout under the tier's directory:
//!
//! ```text
//! chunks/<first two hex digits>/<32 hex digits>.chunk   header + bytes
//! tmp/                                                   files being written
//! ```
//!
//! A chunk file is written under `tmp/` and renamed into place, so a crash never leaves a
//! half-written file under its final name; the checksum catches anything else (a torn page, a
//! flipped bit, a file edited by hand).
//!
//! The header fills the file's first [`ALIGN`] bytes, so the payload starts on a block boundary
//! and is written with `O_DIRECT`: a fill costs the serving threads no copy into the page cache
//! (and no later flush of it), and the cache's bytes are not held twice in RAM (tier and page
//! cache). The payload's last partial block, and every write on a filesystem that refuses
//! `O_DIRECT` (tmpfs before Linux 6.6, some network filesystems), goes through the page cache as before. The index (which chunks exist and their sizes) lives in
//! memory and is rebuilt from the file names and sizes at start-up; contents are verified on
//! every read, never trusted.
//!
//! The tier also keeps a reserve of its device free (see `space.rs`): before writing a chunk it
//! evicts its own chunks until the chunk fits above the reserve, or skips the fill when even an
//! empty tier would not make it fit; at start-up it evicts until the reserve is free again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{ChunkId, SpaceReserve};
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::direct;
use crate::s3fifo::S3Fifo;
use crate::space::{Device, ROOM_MARGIN, Statvfs};

const MAGIC: &[u8; 8] = b"CAIRNCK2";
pub use crate::direct::ALIGN;
/// The header (magic, payload length, payload checksum, chunk id) padded to one block.
pub const HEADER_LEN: usize = ALIGN;
const HEADER_USED: usize = 8 + 8 + 8 + 16;
const CHUNK_EXT: &str = "chunk";
/// Names the file layout of the tier's folder; a folder without it (or with another) is emptied
/// at start-up: it is a cache.
const FORMAT_FILE: &str = "format";
const FORMAT: &str = "chunk files v2: header block, payload block-aligned\n";

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Hit(Bytes),
    Miss,
    /// The file existed but failed verification; it has been removed.
    Corrupt,
}

/// What became of a chunk written to the tier.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// On disk; `evicted` other chunks made way for it (capacity or free space).
    Stored { evicted: usize },
    /// Not written: it would have left less than the reserve free even with the tier empty.
    NoSpace,
}

/// Chunks evicted to free space, and the bytes free afterwards.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Freed {
    pub chunks: usize,
    /// Bytes the evicted files took on the device.
    pub bytes: u64,
    /// Free on the device after the eviction, less the cache writes in flight.
    pub avail: u64,
}

pub struct DiskTier {
    root: PathBuf,
    index: Mutex<S3Fifo<ChunkId>>,
    device: Arc<dyn Device>,
    reserve: SpaceReserve,
    /// Bytes of chunk files being written (taken from the free space before they show in it).
    /// Held while deciding what to evict, so concurrent writers never share the same free bytes.
    in_flight: Mutex<u64>,
    /// False once the tier's filesystem refused an `O_DIRECT` open or write.
    direct: std::sync::atomic::AtomicBool,
}

impl DiskTier {
    /// Opens (or creates) the tier at `root` and rebuilds its index from the files there; keeps
    /// `reserve` of the device holding `root` free.
    pub fn open(root: &Path, capacity: u64, reserve: SpaceReserve) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Self::open_on(root, capacity, reserve, Arc::new(Statvfs::new(root)))
    }

    /// As [`DiskTier::open`], measuring free space on `device`.
    pub fn open_on(root: &Path, capacity: u64, reserve: SpaceReserve, device: Arc<dyn Device>) -> io::Result<Self> {
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        let format = root.join(FORMAT_FILE);
        fs::create_dir_all(root)?;
        if fs::read_to_string(&format).ok().as_deref() != Some(FORMAT) {
            if chunks.exists() {
                tracing::info!(dir = %root.display(), "disk tier written in an older layout: emptied");
                fs::remove_dir_all(&chunks)?;
            }
            fs::write(&format, FORMAT)?;
        }
        fs::create_dir_all(&chunks)?;
        // Leftovers of writes cut short by a crash.
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let mut found = Vec::new();
        for shard in fs::read_dir(&chunks)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let path = f.path();
                let id = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|_| path.extension().is_some_and(|e| e == CHUNK_EXT))
                    .and_then(ChunkId::from_hex);
                let meta = f.metadata()?;
                match id {
                    Some(id) if meta.len() >= HEADER_LEN as u64 => {
                        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((mtime, id, meta.len() - HEADER_LEN as u64));
                    }
                    _ => {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        // Oldest first, so the FIFO order approximates the order they were cached in.
        found.sort();
        let tier = Self {
            root: root.to_owned(),
            index: Mutex::new(S3Fifo::new(capacity)),
            device,
            reserve,
            in_flight: Mutex::new(0),
            direct: std::sync::atomic::AtomicBool::new(true),
        };
        let mut evicted = Vec::new();
        {
            let mut index = tier.index.lock();
            for (_, id, len) in found {
                evicted.extend(index.insert(id, len));
            }
        }
        for id in evicted {
            let _ = fs::remove_file(tier.chunk_path(&id));
        }
        // A restart gives back what the device lacks of its reserve (the journal may have grown
        // into it, or another program).
        let freed = tier.free_up_to(0)?;
        if freed.chunks > 0 {
            tracing::info!(
                chunks = freed.chunks,
                bytes = freed.bytes,
                "evicted disk-tier chunks at start-up: the device had less than the free-space reserve"
            );
        }
        Ok(tier)
    }

    /// Bytes the device keeps free for everything but the tier, and what is free now.
    pub fn reserve_and_free(&self) -> io::Result<(u64, u64)> {
        let s = self.device.space()?;
        Ok((self.reserve.bytes_of(s.total), s.avail))
    }

    /// Device bytes a chunk file of `payload` bytes takes.
    fn file_cost(payload: u64, block: u64) -> u64 {
        (payload + HEADER_LEN as u64).div_ceil(block) * block
    }

    /// Evicts until the reserve plus `need` bytes are free (with `need` 0: until the reserve is).
    /// Call with nothing else locked.
    fn free_up_to(&self, need: u64) -> io::Result<Freed> {
        let in_flight = self.in_flight.lock();
        let s = self.device.space()?;
        let avail = s.avail.saturating_sub(*in_flight);
        let deficit = (self.reserve.bytes_of(s.total) + need).saturating_sub(avail);
        let freed = self.evict_bytes(deficit, s.block);
        Ok(Freed { avail: avail + freed.bytes, ..freed })
    }

    /// Evicts chunks in S3-FIFO order until their files add up to `bytes` (or none are left) and
    /// removes their files. Call with `in_flight` locked, so no writer counts the same bytes.
    fn evict_bytes(&self, bytes: u64, block: u64) -> Freed {
        let mut victims = Vec::new();
        let mut freed = 0;
        if bytes > 0 {
            let mut index = self.index.lock();
            while freed < bytes {
                let Some((id, weight)) = index.evict_next() else { break };
                freed += Self::file_cost(weight, block);
                victims.push(id);
            }
        }
        for id in &victims {
            let _ = fs::remove_file(self.chunk_path(id));
        }
        Freed { chunks: victims.len(), bytes: freed, avail: 0 }
    }

    /// Evicts chunks until `bytes` plus [`ROOM_MARGIN`] are free on the device, for a write that
    /// must land (the reserve does not count: such writes may use it). Blocking.
    pub fn make_room(&self, bytes: u64) -> io::Result<Freed> {
        let in_flight = self.in_flight.lock();
        let s = self.device.space()?;
        let avail = s.avail.saturating_sub(*in_flight);
        let deficit = (bytes + ROOM_MARGIN).saturating_sub(avail);
        let freed = self.evict_bytes(deficit, s.block);
        Ok(Freed { avail: avail + freed.bytes, ..freed })
    }

    /// Takes the device bytes of a chunk write from the free space, evicting chunks so that the
    /// reserve stays free; `None` when even an empty tier would not leave it free.
    fn claim(&self, id: &ChunkId, payload: u64) -> io::Result<Option<(u64, usize)>> {
        let mut in_flight = self.in_flight.lock();
        let s = self.device.space()?;
        let cost = Self::file_cost(payload, s.block);
        let avail = s.avail.saturating_sub(*in_flight);
        let deficit = (self.reserve.bytes_of(s.total) + cost).saturating_sub(avail);
        let mut evicted = 0;
        if deficit > 0 {
            let evictable = {
                let index = self.index.lock();
                let own = if index.contains(id) { 1 } else { 0 };
                // Every file takes at least its header; rounding is not counted, so this errs low.
                index.used() + (index.len() - own) as u64 * HEADER_LEN as u64
            };
            if evictable < deficit {
                return Ok(None);
            }
            evicted = self.evict_bytes(deficit, s.block).chunks;
        }
        *in_flight += cost;
        Ok(Some((cost, evicted)))
    }

    /// Whether fills are written with `O_DIRECT` (false once the filesystem refused it).
    pub fn direct_io(&self) -> bool {
        self.direct.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The tier's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("chunks").join(&hex[..2]).join(format!("{hex}.{CHUNK_EXT}"))
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.lock().contains(id)
    }

    pub fn used(&self) -> u64 {
        self.index.lock().used()
    }

    pub fn len(&self) -> usize {
        self.index.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads and verifies a chunk. Blocking: call from a blocking thread.
    pub fn read(&self, id: &ChunkId) -> io::Result<ReadOutcome> {
        if !self.contains(id) {
            return Ok(ReadOutcome::Miss);
        }
        let path = self.chunk_path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.lock().remove(id);
                return Ok(ReadOutcome::Miss);
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len() as usize;
        let mut buf = Vec::with_capacity(len);
        file.read_to_end(&mut buf)?;
        match verify(id, &buf) {
            Some(payload) => {
                self.index.lock().touch(id);
                let mut bytes = Bytes::from(buf);
                Ok(ReadOutcome::Hit(bytes.split_off(payload)))
            }
            None => {
                tracing::warn!(chunk = %id, path = %path.display(), "chunk failed verification; removed");
                self.remove(id);
                Ok(ReadOutcome::Corrupt)
            }
        }
    }

    /// Writes a chunk, evicting others for capacity and for the free-space reserve. Blocking.
    pub fn write(&self, id: &ChunkId, data: &[u8]) -> io::Result<WriteOutcome> {
        let Some((cost, evicted_for_space)) = self.claim(id, data.len() as u64)? else {
            return Ok(WriteOutcome::NoSpace);
        };
        let written = self.write_file(id, data);
        *self.in_flight.lock() -= cost;
        written?;
        let evicted = self.index.lock().insert(*id, data.len() as u64);
        for e in &evicted {
            let _ = fs::remove_file(self.chunk_path(e));
        }
        Ok(WriteOutcome::Stored { evicted: evicted_for_space + evicted.iter().filter(|e| *e != id).count() })
    }

    fn write_file(&self, id: &ChunkId, data: &[u8]) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let path = self.chunk_path(id);
        let tmp = self.root.join("tmp").join(format!("{}.{}", id.to_hex(), rand_suffix()));
        let mut header = [0u8; HEADER_USED];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[16..24].copy_from_slice(&xxh3_64(data).to_le_bytes());
        header[24..40].copy_from_slice(&id.0.to_le_bytes());
        let result = (|| {
            let mut written = false;
            if self.direct.load(Ordering::Relaxed) {
                match direct::write_file_with_header(&tmp, &header, data) {
                    Ok(()) => written = true,
                    // The filesystem does not do O_DIRECT (or not with these alignments).
                    Err(e) if direct::refused(&e) => {
                        tracing::info!(dir = %self.root.display(), "the disk tier's filesystem refuses O_DIRECT: fills go through the page cache");
                        self.direct.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !written {
                let mut f = File::create(&tmp)?;
                let mut block = vec![0u8; HEADER_LEN];
                block[..HEADER_USED].copy_from_slice(&header);
                f.write_all(&block)?;
                f.write_all(data)?;
            }
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a chunk from the index and the disk. Blocking.
    pub fn remove(&self, id: &ChunkId) {
        self.index.lock().remove(id);
        let _ = fs::remove_file(self.chunk_path(id));
    }
}

/// Returns the payload offset if the file holds exactly chunk `id` with a matching checksum.
fn verify(id: &ChunkId, buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    let payload = &buf[HEADER_LEN..];
    let len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let stored_id = u128::from_le_bytes(header[24..40].try_into().ok()?);
    // The header block's padding is zeros: a flipped bit anywhere in the file is caught.
    let padding_clean = header[HEADER_USED..].iter().all(|b| *b == 0);
    (&header[..8] == MAGIC
        && padding_clean
        && len == payload.len() as u64
        && stored_id == id.0
        && xxh3_64(payload) == sum)
        .then_some(HEADER_LEN)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::BOUNCE;
    use crate::space::testing::{BLOCK, FakeDevice};
    use cairn_core::ByteSize;
    use std::sync::atomic::Ordering;

    const NO_RESERVE: SpaceReserve = SpaceReserve::Bytes(ByteSize(0));

    fn id(n: u128) -> ChunkId {
        ChunkId(n)
    }

    #[test]
    fn write_read_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        {
            let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("open");
            assert_eq!(t.write(&id(7), &data).expect("write"), WriteOutcome::Stored { evicted: 0 });
            assert_eq!(t.read(&id(7)).expect("read"), ReadOutcome::Hit(Bytes::from(data.clone())));
            assert_eq!(t.read(&id(8)).expect("read"), ReadOutcome::Miss);
        }
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("reopen");
        assert_eq!(t.len(), 1);
        assert_eq!(t.used(), data.len() as u64);
        assert_eq!(t.read(&id(7)).expect("read"), ReadOutcome::Hit(Bytes::from(data)));
    }

    #[test]
    fn payloads_of_any_length_and_alignment_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 64 << 20, NO_RESERVE).expect("open");
        let backing = Bytes::from((0..(3u32 << 20)).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let aligned = backing.as_ptr().align_offset(ALIGN);
        let lens = [1, ALIGN - 1, ALIGN, ALIGN + 1, BOUNCE - 1, BOUNCE + ALIGN, (2 << 20) + 3];
        let mut n = 0u128;
        for len in lens {
            // Block-aligned in memory (written as it is) and one byte past (through the bounce).
            for skew in [aligned, aligned + 1] {
                n += 1;
                let data = backing.slice(skew..skew + len);
                t.write(&id(n), &data).expect("write");
                assert_eq!(t.read(&id(n)).expect("read"), ReadOutcome::Hit(data), "len {len} skew {skew}");
                assert_eq!(fs::metadata(t.chunk_path(&id(n))).expect("stat").len(), (HEADER_LEN + len) as u64);
            }
        }
        // This is on a filesystem that takes O_DIRECT (the tests' temporary folder), unless the
        // folder is a tmpfs of a kernel before 6.6: then every write went through the page cache.
        let tmpfs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs");
        // tmpfs takes O_DIRECT from Linux 6.6 on; every other local filesystem of a test folder does.
        assert!(t.direct_io() || tmpfs);
    }

    #[test]
    fn a_tier_in_the_older_layout_is_emptied_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("chunks").join("00");
        fs::create_dir_all(&old).expect("mkdir");
        fs::write(old.join(format!("{}.chunk", id(1).to_hex())), vec![0u8; 10_000]).expect("old file");
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("open");
        assert_eq!(t.len(), 0);
        assert!(!old.exists());
        t.write(&id(2), b"new").expect("write");
        drop(t);
        assert_eq!(DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("reopen").len(), 1);
    }

    #[test]
    fn a_flipped_byte_in_the_header_padding_is_corrupt_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("open");
        t.write(&id(1), b"hello chunk").expect("write");
        let path = t.chunk_path(&id(1));
        let mut raw = fs::read(&path).expect("raw");
        raw[HEADER_LEN / 2] ^= 0x01;
        fs::write(&path, raw).expect("flip");
        assert_eq!(t.read(&id(1)).expect("read"), ReadOutcome::Corrupt);
    }

    #[test]
    fn flipped_byte_is_corrupt_then_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("open");
        t.write(&id(1), b"hello chunk").expect("write");
        let path = t.chunk_path(&id(1));
        let mut raw = fs::read(&path).expect("raw");
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        fs::write(&path, raw).expect("flip");
        assert_eq!(t.read(&id(1)).expect("read"), ReadOutcome::Corrupt);
        assert!(!path.exists());
        assert_eq!(t.read(&id(1)).expect("read"), ReadOutcome::Miss);
    }

    #[test]
    fn truncated_and_misnamed_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("open");
        t.write(&id(1), b"0123456789").expect("write");
        t.write(&id(2), b"abcdefghij").expect("write");
        // Truncate chunk 1; copy chunk 2's file over chunk 3's name.
        let p1 = t.chunk_path(&id(1));
        let raw = fs::read(&p1).expect("raw");
        fs::write(&p1, &raw[..raw.len() - 3]).expect("truncate");
        let p3 = t.chunk_path(&id(3));
        fs::create_dir_all(p3.parent().expect("parent")).expect("mkdir");
        fs::copy(t.chunk_path(&id(2)), &p3).expect("copy");
        drop(t);
        let t = DiskTier::open(dir.path(), 1 << 20, NO_RESERVE).expect("reopen");
        assert_eq!(t.read(&id(1)).expect("read"), ReadOutcome::Corrupt);
        assert_eq!(t.read(&id(3)).expect("read"), ReadOutcome::Corrupt);
        assert_eq!(t.read(&id(2)).expect("read"), ReadOutcome::Hit(Bytes::from_static(b"abcdefghij")));
    }

    #[test]
    fn capacity_evicts_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1000, NO_RESERVE).expect("open");
        for n in 0..20 {
            t.write(&id(n), &[n as u8; 100]).expect("write");
        }
        assert!(t.used() <= 1000);
        let files = fs::read_dir(dir.path().join("chunks"))
            .expect("dir")
            .flat_map(|d| fs::read_dir(d.expect("entry").path()).expect("shard"))
            .count();
        assert_eq!(files, t.len());
        // A smaller capacity at restart evicts down to it.
        drop(t);
        let t = DiskTier::open(dir.path(), 300, NO_RESERVE).expect("reopen");
        assert!(t.used() <= 300);
    }

    /// A chunk of `n` KiB whose bytes name it.
    fn chunk(n: u128, kib: usize) -> Vec<u8> {
        vec![n as u8; kib << 10]
    }

    #[test]
    fn fills_never_leave_less_than_the_reserve_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A 1 MiB device keeping 10% free, under a tier told it may use 1 GiB.
        let dev = FakeDevice::new(dir.path(), 1 << 20);
        let reserve = SpaceReserve::percent(10);
        let t = DiskTier::open_on(dir.path(), 1 << 30, reserve, dev.clone()).expect("open");
        let mut stored = 0;
        for n in 0..40 {
            match t.write(&id(n), &chunk(n, 60)).expect("write") {
                WriteOutcome::Stored { .. } => stored += 1,
                WriteOutcome::NoSpace => panic!("chunk {n} was skipped though older chunks could go"),
            }
            assert!(dev.avail() >= reserve.bytes_of(dev.total), "chunk {n} left {} bytes free", dev.avail());
        }
        assert_eq!(stored, 40);
        // The tier holds what fits above the reserve: most of 900 KiB, in 64 KiB files.
        assert!((12..=14).contains(&t.len()), "{} chunks held", t.len());
        // The newest chunks stayed (FIFO), the oldest went.
        assert!(t.contains(&id(39)) && !t.contains(&id(0)));
        assert_eq!(t.read(&id(39)).expect("read"), ReadOutcome::Hit(Bytes::from(chunk(39, 60))));
    }

    #[test]
    fn a_fill_that_cannot_fit_is_skipped_without_evicting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = FakeDevice::new(dir.path(), 1 << 20);
        let t = DiskTier::open_on(dir.path(), 1 << 30, SpaceReserve::percent(10), dev.clone()).expect("open");
        t.write(&id(1), &chunk(1, 100)).expect("write");
        // Someone else (the journal) takes most of the device: evicting chunk 1 would not make
        // room for 300 KiB above the reserve, so nothing is evicted and the fill is skipped.
        dev.other.store(700 << 10, Ordering::Relaxed);
        assert_eq!(t.write(&id(2), &chunk(2, 300)).expect("write"), WriteOutcome::NoSpace);
        assert!(t.contains(&id(1)) && !t.contains(&id(2)));
        assert!(!t.chunk_path(&id(2)).exists());
        // A smaller chunk fits once chunk 1 gives way.
        assert_eq!(t.write(&id(3), &chunk(3, 150)).expect("write"), WriteOutcome::Stored { evicted: 1 });
        assert!(!t.contains(&id(1)) && !t.chunk_path(&id(1)).exists());
    }

    #[test]
    fn make_room_evicts_cold_chunks_first_and_ignores_the_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = FakeDevice::new(dir.path(), 4 << 20);
        let t = DiskTier::open_on(dir.path(), 1 << 30, SpaceReserve::percent(10), dev.clone()).expect("open");
        for n in 0..60 {
            t.write(&id(n), &chunk(n, 60)).expect("write");
            if n < 5 {
                // Chunks read again while on probation are promoted: a scan does not flush them.
                t.read(&id(n)).expect("read");
            }
        }
        let before = t.len();
        let free = dev.avail();
        assert!(free >= SpaceReserve::percent(10).bytes_of(dev.total));
        // Room for 1.5 MiB of journal: the reserve may be used, so only the difference is evicted.
        let want = 3 << 19;
        let freed = t.make_room(want).expect("make room");
        assert!(dev.avail() >= want + ROOM_MARGIN, "{} free", dev.avail());
        assert!(freed.avail >= want + ROOM_MARGIN);
        assert_eq!(t.len(), before - freed.chunks);
        let needed = (want + ROOM_MARGIN - free).div_ceil(64 << 10) as usize;
        assert!(freed.chunks >= needed && freed.chunks <= needed + 1, "{} evicted, {needed} needed", freed.chunks);
        assert!((0..5).all(|n| t.contains(&id(n))), "hot chunks were evicted before cold ones");
        // Asking for more than the device holds empties the tier and says how little is free.
        let freed = t.make_room(8 << 20).expect("make room");
        assert!(t.is_empty());
        assert!(freed.avail < 8 << 20);
        assert_eq!(freed.avail, dev.avail());
    }

    #[test]
    fn restart_gives_space_back_to_the_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = FakeDevice::new(dir.path(), 2 << 20);
        let reserve = SpaceReserve::Bytes(ByteSize(256 << 10));
        {
            let t = DiskTier::open_on(dir.path(), 1 << 30, reserve, dev.clone()).expect("open");
            for n in 0..40 {
                t.write(&id(n), &chunk(n, 60)).expect("write");
            }
            assert!(dev.avail() >= 256 << 10 && dev.avail() < (256 + 2 * 64) << 10);
        }
        // While the node was down the journal grew by 128 KiB into the reserve.
        dev.other.store(128 << 10, Ordering::Relaxed);
        assert!(dev.avail() < 256 << 10);
        let t = DiskTier::open_on(dir.path(), 1 << 30, reserve, dev.clone()).expect("reopen");
        assert!(dev.avail() >= 256 << 10, "{} free after the restart", dev.avail());
        assert!(dev.avail() < (256 + 2 * 64) << 10, "evicted more than needed: {} free", dev.avail());
        // What is left is still served.
        let last = (0..40).rev().find(|n| t.contains(&id(*n))).expect("chunks left");
        assert_eq!(t.read(&id(last)).expect("read"), ReadOutcome::Hit(Bytes::from(chunk(last, 60))));
        assert_eq!(BLOCK, 4096);
    }
}
