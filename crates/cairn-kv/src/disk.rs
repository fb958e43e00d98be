//! Files of the KV disk tier: one checksummed file per stored value.
//!
//! ```text
//! <root>/<seq % 256 as two hex digits>/<seq>.kv   header + key + value
//! ```
//!
//! Files are named by a sequence number, never by the key, so an old copy of a key being
//! written while the key is replaced or deleted can never overwrite the newer one; the store's
//! in-memory index says which file holds a key's current value. The tier does not survive a
//! restart (the KV keyspace is a cache with no origin), so the directory is emptied when it is
//! opened. Every read checks magic, lengths, the key and an xxh3 checksum: a bad file is a miss.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 8] = b"CAIRNKV1";
/// magic, value length, value checksum, key length.
pub const HEADER_LEN: usize = 8 + 8 + 8 + 4;

pub struct DiskFiles {
    root: PathBuf,
}

impl DiskFiles {
    /// Opens the tier at `root`, removing whatever an earlier run left there.
    pub fn open(root: &Path) -> io::Result<Self> {
        if root.exists() {
            fs::remove_dir_all(root)?;
        }
        fs::create_dir_all(root)?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn path(&self, seq: u64) -> PathBuf {
        self.root.join(format!("{:02x}", seq & 0xff)).join(format!("{seq}.kv"))
    }

    /// Writes a value under `seq`. Blocking.
    pub fn write(&self, seq: u64, key: &[u8], value: &[u8]) -> io::Result<()> {
        let path = self.path(seq);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut header = Vec::with_capacity(HEADER_LEN + key.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(value.len() as u64).to_le_bytes());
        header.extend_from_slice(&xxh3_64(value).to_le_bytes());
        header.extend_from_slice(&(key.len() as u32).to_le_bytes());
        header.extend_from_slice(key);
        let mut f = File::create(&path)?;
        f.write_all(&header)?;
        f.write_all(value)?;
        Ok(())
    }

    /// Reads and verifies the value stored under `seq` for `key`; `None` if missing or bad (a bad
    /// file is removed). Blocking.
    pub fn read(&self, seq: u64, key: &[u8]) -> io::Result<Option<Bytes>> {
        let path = self.path(seq);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len() as usize;
        let mut buf = Vec::with_capacity(len);
        f.read_to_end(&mut buf)?;
        match verify(&buf, key) {
            Some(start) => Ok(Some(Bytes::from(buf).split_off(start))),
            None => {
                tracing::warn!(path = %path.display(), "KV disk file failed verification; dropped");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Removes a value's file. Blocking.
    pub fn remove(&self, seq: u64) {
        let _ = fs::remove_file(self.path(seq));
    }
}

/// Checks a file's header, key and checksum; returns where the value starts.
fn verify(buf: &[u8], key: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| buf.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    let value_len = word(8)? as usize;
    let sum = word(16)?;
    let key_len = u32::from_le_bytes(buf.get(24..28)?.try_into().ok()?) as usize;
    let start = HEADER_LEN + key_len;
    if buf.len() != start.checked_add(value_len)? || buf.get(HEADER_LEN..start)? != key {
        return None;
    }
    (xxh3_64(&buf[start..]) == sum).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = DiskFiles::open(&dir.path().join("kv")).expect("open");
        files.write(7, b"key", b"value bytes").expect("write");
        assert_eq!(files.read(7, b"key").expect("read"), Some(Bytes::from_static(b"value bytes")));
        // Another key under the same file number is not this key's value.
        assert_eq!(files.read(7, b"other").expect("read"), None);
        files.write(8, b"key", b"value bytes").expect("write");
        let mut raw = fs::read(files.path(8)).expect("raw");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(files.path(8), raw).expect("write");
        assert_eq!(files.read(8, b"key").expect("read"), None);
        assert!(!files.path(8).exists());
        assert_eq!(files.read(9, b"key").expect("read"), None);
    }

    #[test]
    fn open_discards_an_earlier_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("kv");
        DiskFiles::open(&root).expect("open").write(1, b"k", b"v").expect("write");
        let files = DiskFiles::open(&root).expect("reopen");
        assert_eq!(files.read(1, b"k").expect("read"), None);
    }
}
