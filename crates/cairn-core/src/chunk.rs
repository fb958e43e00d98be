//! Chunk math and chunk identity.
//!
//! An object is read in fixed-size chunks. A chunk's id hashes the origin, the object's path, the
//! object's version (ETag or version id), the chunk size and the chunk index, so a changed object
//! never shares a chunk with its previous version: the cache cannot serve a mix of two versions.

use std::fmt;
use std::ops::Range;

use xxhash_rust::xxh3::Xxh3;

/// The identity of one version of one object at an origin.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    /// Configured name of the origin the object lives in.
    pub origin: String,
    pub bucket: String,
    pub key: String,
    /// ETag (or version id) as the origin reported it.
    pub version: String,
    pub size: u64,
}

/// Versions of objects written through cairn and not yet in the origin start with this.
pub const PENDING_VERSION_PREFIX: &str = "cairn-w-";

/// The version of a write not yet in the origin: its write id (32 hex digits) and the node that
/// holds all of it, so any node can find its chunks.
pub fn pending_version(wid: &str, writer: &str) -> String {
    format!("{PENDING_VERSION_PREFIX}{wid}-{writer}")
}

/// The write id and writer of a pending version; `None` for an origin's version.
pub fn parse_pending_version(version: &str) -> Option<(&str, &str)> {
    let rest = version.strip_prefix(PENDING_VERSION_PREFIX)?;
    let (wid, writer) = (rest.get(..32)?, rest.get(32..)?.strip_prefix('-')?);
    wid.bytes().all(|b| b.is_ascii_hexdigit()).then_some((wid, writer))
}

/// A 128-bit chunk identifier, stable across processes and platforms.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub u128);

impl ChunkId {
    pub fn new(object: &ObjectVersion, chunk_size: u64, index: u64) -> Self {
        let mut h = Xxh3::new();
        // Length-prefix every field so ("ab","c") and ("a","bc") differ.
        for field in [&object.origin, &object.bucket, &object.key, &object.version] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.update(&object.size.to_le_bytes());
        h.update(&chunk_size.to_le_bytes());
        h.update(&index.to_le_bytes());
        ChunkId(h.digest128())
    }

    /// 32 lowercase hex digits; used as the chunk's file name on disk.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(ChunkId)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({:032x})", self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How an object of a given size is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    pub chunk_size: u64,
    pub object_size: u64,
}

impl ChunkLayout {
    pub fn new(chunk_size: u64, object_size: u64) -> Self {
        debug_assert!(chunk_size > 0, "chunk size must be positive");
        Self { chunk_size, object_size }
    }

    /// Number of chunks; an empty object has none.
    pub fn chunk_count(&self) -> u64 {
        self.object_size.div_ceil(self.chunk_size)
    }

    /// Byte range of chunk `index` within the object.
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        debug_assert!(index < self.chunk_count(), "chunk {index} out of range");
        let start = index * self.chunk_size;
        start..(start + self.chunk_size).min(self.object_size)
    }

    /// Chunks that cover the byte range `range` (end exclusive), with the part of each chunk to
    /// serve, as offsets within that chunk.
    pub fn pieces(&self, range: Range<u64>) -> impl Iterator<Item = (u64, Range<usize>)> + '_ {
        debug_assert!(range.end <= self.object_size);
        let first = range.start / self.chunk_size;
        let last = if range.is_empty() { first } else { (range.end - 1) / self.chunk_size + 1 };
        let range2 = range.clone();
        (first..last).filter(move |_| !range2.is_empty()).map(move |i| {
            let c = self.chunk_range(i);
            let s = range.start.max(c.start) - c.start;
            let e = range.end.min(c.end) - c.start;
            (i, s as usize..e as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_versions_round_trip() {
        let wid = "0123456789abcdef0123456789abcdef";
        for writer in ["", "node-1", "a-b-c"] {
            assert_eq!(parse_pending_version(&pending_version(wid, writer)), Some((wid, writer)));
        }
        assert_eq!(parse_pending_version("\"d41d8cd98f00b204e9800998ecf8427e\""), None);
        assert_eq!(parse_pending_version("cairn-w-short-x"), None);
    }
    use proptest::prelude::*;

    fn obj(version: &str) -> ObjectVersion {
        ObjectVersion { origin: "o".into(), bucket: "b".into(), key: "k".into(), version: version.into(), size: 100 }
    }

    #[test]
    fn id_depends_on_version_and_index() {
        let a = ChunkId::new(&obj("v1"), 8, 0);
        assert_eq!(a, ChunkId::new(&obj("v1"), 8, 0));
        assert_ne!(a, ChunkId::new(&obj("v2"), 8, 0));
        assert_ne!(a, ChunkId::new(&obj("v1"), 8, 1));
        assert_ne!(a, ChunkId::new(&obj("v1"), 16, 0));
        assert_eq!(ChunkId::from_hex(&a.to_hex()), Some(a));
    }

    #[test]
    fn id_fields_are_delimited() {
        let mut x = obj("v");
        x.bucket = "ab".into();
        x.key = "c".into();
        let mut y = obj("v");
        y.bucket = "a".into();
        y.key = "bc".into();
        assert_ne!(ChunkId::new(&x, 8, 0), ChunkId::new(&y, 8, 0));
    }

    #[test]
    fn layout_edges() {
        let l = ChunkLayout::new(10, 25);
        assert_eq!(l.chunk_count(), 3);
        assert_eq!(l.chunk_range(2), 20..25);
        assert_eq!(ChunkLayout::new(10, 0).chunk_count(), 0);
        assert_eq!(ChunkLayout::new(10, 20).chunk_count(), 2);
        let p: Vec<_> = l.pieces(5..21).collect();
        assert_eq!(p, vec![(0, 5..10), (1, 0..10), (2, 0..1)]);
        assert_eq!(l.pieces(3..3).count(), 0);
    }

    proptest! {
        #[test]
        fn pieces_cover_range_exactly(chunk in 1u64..64, size in 0u64..1000, a in 0u64..1000, b in 0u64..1000) {
            let l = ChunkLayout::new(chunk, size);
            let (s, e) = (a.min(b).min(size), a.max(b).min(size));
            let mut pos = s;
            for (i, piece) in l.pieces(s..e) {
                let c = l.chunk_range(i);
                prop_assert!(!piece.is_empty());
                prop_assert_eq!(c.start + piece.start as u64, pos);
                prop_assert!(c.start + piece.end as u64 <= c.end);
                pos = c.start + piece.end as u64;
            }
            prop_assert_eq!(pos, e);
        }
    }
}
