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
//! flipped bit, a file edited by hand). The index (which chunks exist and their sizes) lives in
//! memory and is rebuilt from the file names and sizes at start-up; contents are verified on
//! every read, never trusted.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_core::ChunkId;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::s3fifo::S3Fifo;

const MAGIC: &[u8; 8] = b"CAIRNCK1";
/// magic, payload length, payload checksum, chunk id.
pub const HEADER_LEN: usize = 8 + 8 + 8 + 16;
const CHUNK_EXT: &str = "chunk";

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Hit(Bytes),
    Miss,
    /// The file existed but failed verification; it has been removed.
    Corrupt,
}

pub struct DiskTier {
    root: PathBuf,
    index: Mutex<S3Fifo<ChunkId>>,
}

impl DiskTier {
    /// Opens (or creates) the tier at `root` and rebuilds its index from the files there.
    pub fn open(root: &Path, capacity: u64) -> io::Result<Self> {
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
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
        let tier = Self { root: root.to_owned(), index: Mutex::new(S3Fifo::new(capacity)) };
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
        Ok(tier)
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

    /// Writes a chunk and returns how many chunks were evicted for it. Blocking.
    pub fn write(&self, id: &ChunkId, data: &[u8]) -> io::Result<usize> {
        let path = self.chunk_path(id);
        let tmp = self.root.join("tmp").join(format!("{}.{}", id.to_hex(), rand_suffix()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            let mut header = [0u8; HEADER_LEN];
            header[..8].copy_from_slice(MAGIC);
            header[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
            header[16..24].copy_from_slice(&xxh3_64(data).to_le_bytes());
            header[24..40].copy_from_slice(&id.0.to_le_bytes());
            f.write_all(&header)?;
            f.write_all(data)?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let evicted = self.index.lock().insert(*id, data.len() as u64);
        for e in &evicted {
            let _ = fs::remove_file(self.chunk_path(e));
        }
        Ok(evicted.iter().filter(|e| *e != id).count())
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
    (&header[..8] == MAGIC && len == payload.len() as u64 && stored_id == id.0 && xxh3_64(payload) == sum)
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

    fn id(n: u128) -> ChunkId {
        ChunkId(n)
    }

    #[test]
    fn write_read_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        {
            let t = DiskTier::open(dir.path(), 1 << 20).expect("open");
            t.write(&id(7), &data).expect("write");
            assert_eq!(t.read(&id(7)).expect("read"), ReadOutcome::Hit(Bytes::from(data.clone())));
            assert_eq!(t.read(&id(8)).expect("read"), ReadOutcome::Miss);
        }
        let t = DiskTier::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(t.len(), 1);
        assert_eq!(t.used(), data.len() as u64);
        assert_eq!(t.read(&id(7)).expect("read"), ReadOutcome::Hit(Bytes::from(data)));
    }

    #[test]
    fn flipped_byte_is_corrupt_then_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20).expect("open");
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
        let t = DiskTier::open(dir.path(), 1 << 20).expect("open");
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
        let t = DiskTier::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(t.read(&id(1)).expect("read"), ReadOutcome::Corrupt);
        assert_eq!(t.read(&id(3)).expect("read"), ReadOutcome::Corrupt);
        assert_eq!(t.read(&id(2)).expect("read"), ReadOutcome::Hit(Bytes::from_static(b"abcdefghij")));
    }

    #[test]
    fn capacity_evicts_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1000).expect("open");
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
        let t = DiskTier::open(dir.path(), 300).expect("reopen");
        assert!(t.used() <= 300);
    }
}
