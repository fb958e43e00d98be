//! Part boundaries of objects completed as multipart uploads through this node, so GetObject and
//! HeadObject can answer `partNumber` as S3 does.
//!
//! One small file per key under `<cache dir>/part-layouts/`, named by a hash of origin, bucket
//! and key, holding the version (ETag) the completion answered, the object's size and its part
//! sizes; at most `LAYOUTS_MAX` of them (the oldest are forgotten first). A layout applies while
//! the object is that version; a version written by this node's write-back (`cairn-w-...`) keeps
//! its layout once uploaded, while the size is the same and the key was not written again
//! through this node. Other writes of the key through this node forget it.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// Layouts kept at most.
pub const LAYOUTS_MAX: usize = 100_000;

#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    etag: String,
    size: u64,
    parts: Vec<u64>,
}

pub struct PartLayouts {
    dir: PathBuf,
    /// File names, oldest first.
    names: Mutex<VecDeque<String>>,
}

impl PartLayouts {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            found.push((e.metadata()?.modified().unwrap_or(SystemTime::UNIX_EPOCH), name));
        }
        found.sort();
        Ok(Self { dir, names: Mutex::new(found.into_iter().map(|(_, n)| n).collect()) })
    }

    fn name(origin: &str, bucket: &str, key: &str) -> String {
        format!("{:032x}", xxh3_128(format!("{origin}\0{bucket}\0{key}").as_bytes()))
    }

    /// Records the parts of the version `etag` of a key.
    pub async fn record(&self, origin: &str, bucket: &str, key: &str, etag: &str, parts: Vec<u64>) -> io::Result<()> {
        let name = Self::name(origin, bucket, key);
        let layout = Layout { etag: etag.to_owned(), size: parts.iter().sum(), parts };
        let body = serde_json::to_vec(&layout).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{name}.tmp"));
        tokio::fs::write(&tmp, body).await?;
        tokio::fs::rename(&tmp, self.dir.join(&name)).await?;
        let evicted = {
            let mut names = self.names.lock();
            names.retain(|n| *n != name);
            names.push_back(name);
            let over = names.len().saturating_sub(LAYOUTS_MAX);
            names.drain(..over).collect::<Vec<_>>()
        };
        for n in evicted {
            let _ = tokio::fs::remove_file(self.dir.join(n)).await;
        }
        Ok(())
    }

    /// Forgets a key's layout (it was written again, or deleted).
    pub async fn forget(&self, origin: &str, bucket: &str, key: &str) {
        let name = Self::name(origin, bucket, key);
        let known = {
            let mut names = self.names.lock();
            let before = names.len();
            names.retain(|n| *n != name);
            names.len() != before
        };
        if known {
            let _ = tokio::fs::remove_file(self.dir.join(name)).await;
        }
    }

    /// The part sizes of the object at version `etag` and `size`, when this node completed it.
    pub async fn get(&self, origin: &str, bucket: &str, key: &str, etag: &str, size: u64) -> Option<Vec<u64>> {
        let name = Self::name(origin, bucket, key);
        if !self.names.lock().contains(&name) {
            return None;
        }
        let text = tokio::fs::read(self.dir.join(name)).await.ok()?;
        let layout: Layout = serde_json::from_slice(&text).ok()?;
        use cairn_core::chunk::PENDING_VERSION_PREFIX as PENDING;
        let same = layout.etag == etag || (layout.etag.starts_with(PENDING) && !etag.starts_with(PENDING));
        (same && layout.size == size).then_some(layout.parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn layouts_follow_the_version_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let l = PartLayouts::open(dir.path().join("pl")).expect("open");
        l.record("o", "b", "k", "e1", vec![5, 3]).await.expect("record");
        assert_eq!(l.get("o", "b", "k", "e1", 8).await, Some(vec![5, 3]));
        assert_eq!(l.get("o", "b", "k", "e2", 8).await, None);
        assert_eq!(l.get("o", "b", "k", "e1", 9).await, None);
        assert_eq!(l.get("o", "b", "other", "e1", 8).await, None);
        // A pending version's layout holds after its upload changes the ETag, at the same size.
        l.record("o", "b", "p", "cairn-w-1-n", vec![4, 4]).await.expect("record");
        assert_eq!(l.get("o", "b", "p", "originetag", 8).await, Some(vec![4, 4]));
        assert_eq!(l.get("o", "b", "p", "cairn-w-2-n", 8).await, None);
        l.forget("o", "b", "p").await;
        assert_eq!(l.get("o", "b", "p", "originetag", 8).await, None);
        drop(l);
        let l = PartLayouts::open(dir.path().join("pl")).expect("open");
        assert_eq!(l.get("o", "b", "k", "e1", 8).await, Some(vec![5, 3]));
    }
}
