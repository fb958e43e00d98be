//! The write-back journal: writes acknowledged before they are in the origin, kept on disk until
//! uploaded (a writer's record) or released by the uploader (a replica's record).
//!
//! Each write is a folder `<root>/<write id>/` holding its data and a `record.json` written last
//! (temporary file, fsync, rename, fsync of the folder): the record is the commit point. A folder
//! without a record is a write that was never acknowledged, and is removed. A writer's data is
//! the object's bytes in one or more segment files (one for a PutObject, the staged parts of a
//! multipart upload); a replica's data is one file per chunk it holds. Every chunk's xxh3 is in
//! the record and verified on every read, so a damaged journal gives an error, never wrong bytes.
//!
//! Journal entries are never evicted: they leave only when their upload is complete. Their bytes
//! are written through the cache's [`Room`], so clean cache chunks give way to them.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use cairn_core::{ChunkId, ObjectVersion};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::direct::{self, ALIGN};
use crate::space::Room;

const RECORD: &str = "record.json";
/// Bytes of a record beyond its chunk checksums (names, version, holders), for making room.
const RECORD_BASE_BYTES: u64 = 4096;
/// Bytes of one chunk checksum in a record.
const RECORD_BYTES_PER_CHUNK: u64 = 24;

/// Device bytes to make room for before committing a record of `chunks` chunks.
pub fn record_bytes(chunks: u64) -> u64 {
    RECORD_BASE_BYTES + chunks * RECORD_BYTES_PER_CHUNK
}

/// What this node holds of a write.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The whole object, in these files in order; this node uploads it.
    Writer { segments: Vec<Segment> },
    /// These chunks, one file each; the writer (or a successor) uploads the object.
    Replica { chunks: Vec<u64> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    /// File name inside the write's folder.
    pub file: String,
    pub len: u64,
}

/// One acknowledged write.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteRecord {
    /// 32 hex digits, unique per write.
    pub wid: String,
    pub origin: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub chunk_size: u64,
    pub content_type: Option<String>,
    /// The object's other attributes (user metadata, checksums, ...) as JSON, for the upload.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub attrs: serde_json::Value,
    /// The object's version until it is in the origin; chunk ids are computed from it.
    pub version: String,
    /// Node that accepted the write ("" on a node outside a cluster).
    pub writer: String,
    /// The writer's incarnation when it accepted the write: a writer restarted on an empty disk
    /// has another one, and what it says about the write means nothing.
    #[serde(default)]
    pub writer_incarnation: String,
    /// "local" or "replicated".
    pub durability: String,
    /// Orders writes of one key (later wins) and sync barriers: nanoseconds since the epoch at
    /// acknowledgement, strictly increasing per node.
    pub ticket: u64,
    /// xxh3 of each chunk.
    pub sums: Vec<u64>,
    /// Nodes other than the writer holding chunks of this write.
    pub holders: Vec<String>,
    pub role: Role,
}

impl WriteRecord {
    pub fn object_version(&self) -> ObjectVersion {
        ObjectVersion {
            origin: self.origin.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            version: self.version.clone(),
            size: self.size,
        }
    }

    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    pub fn chunk_id(&self, index: u64) -> ChunkId {
        ChunkId::new(&self.object_version(), self.chunk_size, index)
    }

    fn chunk_len(&self, index: u64) -> u64 {
        self.chunk_size.min(self.size - index * self.chunk_size)
    }

    /// Bytes of this write held on this node's disk.
    pub fn held_bytes(&self) -> u64 {
        match &self.role {
            Role::Writer { segments } => segments.iter().map(|s| s.len).sum(),
            Role::Replica { chunks } => chunks.iter().map(|&i| self.chunk_len(i)).sum(),
        }
    }

    fn held_chunks(&self) -> Vec<u64> {
        match &self.role {
            Role::Writer { .. } => (0..self.chunk_count()).collect(),
            Role::Replica { chunks } => chunks.clone(),
        }
    }
}

/// True for the 32-hex-digit ids of writes (and nothing that could name another path).
pub fn valid_wid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub struct Journal {
    root: PathBuf,
    records: Mutex<HashMap<String, Arc<WriteRecord>>>,
    chunks: Mutex<HashMap<ChunkId, (String, u64)>>,
    /// Bytes on disk in the journal, committed or being written.
    dirty: AtomicU64,
    /// Origin versions of recently uploaded writes, so a reader that started on a write's pending
    /// version finishes from the origin once the journal entry is gone.
    uploaded: Mutex<(HashMap<String, String>, VecDeque<String>)>,
    /// Makes room on the device for journal bytes (set once the cache is open).
    room: OnceLock<Room>,
    /// False once the journal's filesystem refused an `O_DIRECT` open or write (shared with the
    /// data files being written, so one refusal stops every later attempt).
    direct: Arc<AtomicBool>,
}

/// A write's data file being written: with `O_DIRECT` (see [`crate::direct`]) where the journal's
/// filesystem takes it, so acknowledging a write costs no copy into the page cache and the fsync
/// has only the last partial block to flush.
pub struct DataFile {
    file: File,
    direct: bool,
    /// The journal's flag: cleared when a write is refused.
    journal_direct: Arc<AtomicBool>,
}

impl DataFile {
    /// Writes `pieces` at `offset`, feeding each byte to `hash` if given (reset first, so a retry
    /// of the same range starts it over).
    pub fn write_at<B: AsRef<[u8]>>(
        &mut self,
        offset: u64,
        pieces: &[B],
        mut hash: Option<&mut Xxh3>,
    ) -> io::Result<()> {
        if let Some(h) = hash.as_deref_mut() {
            h.reset();
        }
        if self.direct && offset.is_multiple_of(ALIGN as u64) {
            match direct::write_at(&self.file, offset, pieces, hash.as_deref_mut()) {
                Ok(()) => return Ok(()),
                Err(e) if direct::refused(&e) => {
                    if self.journal_direct.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "the journal's filesystem refuses O_DIRECT writes: they go through the page cache"
                        );
                    }
                    if let Some(h) = hash.as_deref_mut() {
                        h.reset();
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if self.direct {
            direct::buffered(&self.file)?;
            self.direct = false;
        }
        direct::write_buffered_at(&self.file, offset, pieces, hash)
    }

    /// Whether writes bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Uploaded writes whose origin version is remembered.
const UPLOADED_REMEMBERED: usize = 100_000;

impl Journal {
    /// Opens the journal, removing folders of writes that were never committed; returns the
    /// committed records.
    pub fn open(root: &Path) -> io::Result<(Self, Vec<WriteRecord>)> {
        fs::create_dir_all(root)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let record = fs::read(path.join(RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice::<WriteRecord>(&b).ok())
                .filter(|r| r.wid == name && valid_wid(&name));
            match record {
                Some(r) => found.push(r),
                None => {
                    tracing::info!(path = %path.display(), "removing a write that was never acknowledged");
                    let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                }
            }
        }
        let journal = Self {
            root: root.to_owned(),
            records: Mutex::new(HashMap::new()),
            chunks: Mutex::new(HashMap::new()),
            dirty: AtomicU64::new(0),
            uploaded: Mutex::new((HashMap::new(), VecDeque::new())),
            room: OnceLock::new(),
            direct: Arc::new(AtomicBool::new(true)),
        };
        for r in &found {
            journal.dirty.fetch_add(r.held_bytes(), Ordering::Relaxed);
            journal.index(r.clone());
        }
        found.sort_by_key(|r| r.ticket);
        Ok((journal, found))
    }

    /// Sets the room-maker journal writes go through; the first call wins.
    pub fn set_room(&self, room: Room) {
        let _ = self.room.set(room);
    }

    /// The room-maker for bytes written into the journal (one that checks nothing if unset).
    pub fn room(&self) -> Room {
        self.room.get().cloned().unwrap_or_else(Room::unchecked)
    }

    /// The record first, then its chunks: a chunk found always has its record. (`records` and
    /// `chunks` are locked one at a time, never one inside the other: `remove` takes them in the
    /// other order, and two threads holding one each would wait for ever.)
    fn index(&self, record: WriteRecord) {
        let record = Arc::new(record);
        self.records.lock().insert(record.wid.clone(), record.clone());
        let mut chunks = self.chunks.lock();
        for i in record.held_chunks() {
            chunks.insert(record.chunk_id(i), (record.wid.clone(), i));
        }
    }

    pub fn dir(&self, wid: &str) -> PathBuf {
        debug_assert!(valid_wid(wid));
        self.root.join(wid)
    }

    /// Creates the folder of a new write.
    pub fn create(&self, wid: &str) -> io::Result<PathBuf> {
        let dir = self.dir(wid);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Creates a data file of a write (`O_DIRECT` where the filesystem takes it).
    pub fn create_data(&self, path: &Path) -> io::Result<DataFile> {
        if self.direct.load(Ordering::Relaxed) {
            match direct::create(path) {
                Ok(file) => return Ok(DataFile { file, direct: true, journal_direct: self.direct.clone() }),
                Err(e) if direct::refused(&e) => {
                    tracing::info!(dir = %self.root.display(), "the journal's filesystem refuses O_DIRECT: writes go through the page cache");
                    self.direct.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(DataFile { file: File::create(path)?, direct: false, journal_direct: self.direct.clone() })
    }

    /// Makes the write durable and visible: syncs its folder and writes its record.
    pub fn commit(&self, record: WriteRecord) -> io::Result<()> {
        let dir = self.dir(&record.wid);
        let tmp = dir.join("record.json.tmp");
        let body = serde_json::to_vec(&record).map_err(io::Error::other)?;
        let written = self.room().write(body.len() as u64, || {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, dir.join(RECORD))?;
        File::open(&dir)?.sync_all()?;
        File::open(&self.root)?.sync_all()?;
        self.index(record);
        Ok(())
    }

    /// Stores one chunk of a replicated write, durably, before its record exists (the caller
    /// has counted its bytes as dirty).
    pub fn write_replica_chunk<B: AsRef<[u8]>>(&self, wid: &str, index: u64, data: &[B]) -> io::Result<()> {
        let dir = self.create(wid)?;
        let path = dir.join(format!("c{index}"));
        let tmp = dir.join(format!("c{index}.tmp"));
        let len: usize = data.iter().map(|d| d.as_ref().len()).sum();
        let written = self.room().write(len as u64, || {
            let mut f = self.create_data(&tmp)?;
            f.write_at(0, data, None)?;
            f.sync_data()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path)
    }

    pub fn record(&self, wid: &str) -> Option<Arc<WriteRecord>> {
        self.records.lock().get(wid).cloned()
    }

    pub fn records(&self) -> Vec<Arc<WriteRecord>> {
        self.records.lock().values().cloned().collect()
    }

    /// The committed write holding this chunk, if any.
    pub fn find(&self, id: ChunkId) -> Option<(Arc<WriteRecord>, u64)> {
        let (wid, index) = self.chunks.lock().get(&id).cloned()?;
        Some((self.record(&wid)?, index))
    }

    /// One chunk of a committed write, verified against its checksum.
    pub fn read_chunk(&self, record: &WriteRecord, index: u64) -> io::Result<Bytes> {
        let len = record.chunk_len(index) as usize;
        let dir = self.dir(&record.wid);
        let mut buf = BytesMut::zeroed(len);
        match &record.role {
            Role::Replica { .. } => {
                File::open(dir.join(format!("c{index}")))?.read_exact(&mut buf)?;
            }
            Role::Writer { segments } => {
                let mut offset = index * record.chunk_size;
                let mut filled = 0usize;
                for s in segments {
                    if filled == len {
                        break;
                    }
                    if offset >= s.len {
                        offset -= s.len;
                        continue;
                    }
                    let take = ((s.len - offset) as usize).min(len - filled);
                    let mut f = File::open(dir.join(&s.file))?;
                    f.seek(SeekFrom::Start(offset))?;
                    f.read_exact(&mut buf[filled..filled + take])?;
                    filled += take;
                    offset = 0;
                }
                if filled != len {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "journal segments are short"));
                }
            }
        }
        let want = record.sums.get(index as usize).copied();
        if want != Some(xxh3_64(&buf)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {index} of write {} fails its checksum", record.wid),
            ));
        }
        Ok(buf.freeze())
    }

    /// Forgets a write and deletes its files (uploaded, released, or never acknowledged).
    pub fn remove(&self, wid: &str) {
        // Its own statement: the `records` guard is dropped before `chunks` is locked.
        let removed = self.records.lock().remove(wid);
        if let Some(r) = removed {
            let mut chunks = self.chunks.lock();
            for i in r.held_chunks() {
                chunks.remove(&r.chunk_id(i));
            }
            self.sub_dirty(r.held_bytes());
        }
        let _ = fs::remove_dir_all(self.dir(wid));
    }

    /// Remembers that write `wid` is in the origin as version `etag`.
    pub fn note_uploaded(&self, wid: &str, etag: &str) {
        let mut g = self.uploaded.lock();
        let (map, order) = &mut *g;
        if map.insert(wid.to_owned(), etag.to_owned()).is_none() {
            order.push_back(wid.to_owned());
        }
        while order.len() > UPLOADED_REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The origin version write `wid` was uploaded as, if remembered.
    pub fn uploaded_as(&self, wid: &str) -> Option<String> {
        self.uploaded.lock().0.get(wid).cloned()
    }

    /// Drops an uncommitted write's files, returning the bytes they held to the dirty budget.
    pub fn discard(&self, wid: &str, bytes: u64) {
        let _ = fs::remove_dir_all(self.dir(wid));
        self.sub_dirty(bytes);
    }

    /// Removes replica folders whose record never came (their writer failed before
    /// acknowledging); returns how many.
    /// Removes the folder of a write that has no record (its chunks arrived, its commit never
    /// will), and its bytes from the dirty count.
    pub fn remove_uncommitted(&self, wid: &str) {
        if self.records.lock().contains_key(wid) {
            return;
        }
        let dir = self.dir(wid);
        let bytes = dir_bytes(&dir);
        if fs::remove_dir_all(&dir).is_ok() {
            self.sub_dirty(bytes);
        }
    }

    pub fn sweep_uncommitted(&self, older_than: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_wid(&name) || self.records.lock().contains_key(&name) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > older_than);
            if old {
                let bytes = dir_bytes(&entry.path());
                if fs::remove_dir_all(entry.path()).is_ok() {
                    self.sub_dirty(bytes);
                    removed += 1;
                }
            }
        }
        removed
    }

    pub fn add_dirty(&self, n: u64) {
        self.dirty.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub_dirty(&self, n: u64) {
        let _ = self.dirty.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
    }

    pub fn dirty(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir).map(|es| es.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &Path, wid: &str, data: &[u8], chunk_size: u64) -> WriteRecord {
        fs::write(dir.join("data"), data).expect("journal test step");
        let sums = data.chunks(chunk_size as usize).map(xxh3_64).collect();
        WriteRecord {
            wid: wid.into(),
            origin: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            size: data.len() as u64,
            chunk_size,
            content_type: None,
            attrs: serde_json::Value::Null,
            version: "v".into(),
            writer: String::new(),
            writer_incarnation: String::new(),
            durability: "local".into(),
            ticket: 1,
            sums,
            holders: vec![],
            role: Role::Writer { segments: vec![Segment { file: "data".into(), len: data.len() as u64 }] },
        }
    }

    #[test]
    fn indexing_and_removing_at_once_never_deadlock() {
        // Writes committed while others are released, on many threads: before `index` and
        // `remove` took their two locks one at a time (in opposite orders), this hung within a
        // few thousand rounds, as it hung a node under the crash test.
        let tmp = tempfile::tempdir().expect("journal test step");
        let j = Arc::new(Journal::open(tmp.path()).expect("journal test step").0);
        let template = record(tmp.path(), &"a".repeat(32), &[7u8; 4096], 1024);
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..4u32 {
            let (j, template, done) = (j.clone(), template.clone(), done.clone());
            std::thread::spawn(move || {
                for n in 0..20_000u32 {
                    let wid = format!("{t:08x}{n:024x}");
                    j.index(WriteRecord { wid: wid.clone(), ..template.clone() });
                    j.remove(&format!("{t:08x}{:024x}", n.saturating_sub(1)));
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            finished.recv_timeout(std::time::Duration::from_secs(60)).expect("the journal's locks deadlocked");
        }
    }

    #[test]
    fn committed_writes_survive_reopen_and_uncommitted_do_not() {
        let tmp = tempfile::tempdir().expect("journal test step");
        let root = tmp.path().join("j");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let wid = "0123456789abcdef0123456789abcdef";
        {
            let (j, found) = Journal::open(&root).expect("journal test step");
            assert!(found.is_empty());
            let dir = j.create(wid).expect("journal test step");
            let r = record(&dir, wid, &data, 4096);
            j.commit(r).expect("journal test step");
            j.create("ffffffffffffffffffffffffffffffff").expect("journal test step");
        }
        let (j, found) = Journal::open(&root).expect("journal test step");
        assert_eq!(found.len(), 1);
        assert!(!root.join("ffffffffffffffffffffffffffffffff").exists());
        let r = j.record(wid).expect("journal test step");
        for i in 0..3 {
            let b = j.read_chunk(&r, i).expect("journal test step");
            let end = ((i + 1) * 4096).min(10_000) as usize;
            assert_eq!(&b[..], &data[(i * 4096) as usize..end]);
        }
        assert_eq!(j.find(r.chunk_id(2)).map(|(_, i)| i), Some(2));
        assert_eq!(j.dirty(), 10_000);
        j.remove(wid);
        assert_eq!(j.dirty(), 0);
        assert!(j.find(r.chunk_id(2)).is_none());
    }

    #[test]
    fn segments_split_across_chunks_and_corruption_is_an_error() {
        let tmp = tempfile::tempdir().expect("journal test step");
        let (j, _) = Journal::open(tmp.path()).expect("journal test step");
        let wid = "00000000000000000000000000000001";
        let dir = j.create(wid).expect("journal test step");
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut r = record(&dir, wid, &data, 4096);
        fs::write(dir.join("p1"), &data[..3000]).expect("journal test step");
        fs::write(dir.join("p2"), &data[3000..]).expect("journal test step");
        r.role = Role::Writer {
            segments: vec![Segment { file: "p1".into(), len: 3000 }, Segment { file: "p2".into(), len: 6000 }],
        };
        j.commit(r.clone()).expect("journal test step");
        assert_eq!(&j.read_chunk(&r, 0).expect("journal test step")[..], &data[..4096]);
        assert_eq!(&j.read_chunk(&r, 2).expect("journal test step")[..], &data[8192..]);
        let mut bad = data[3000..].to_vec();
        bad[100] ^= 1;
        fs::write(dir.join("p2"), &bad).expect("journal test step");
        assert_eq!(j.read_chunk(&r, 0).expect_err("corrupt chunk").kind(), io::ErrorKind::InvalidData);
    }

    /// A data file written chunk by chunk as the write path does (pieces cut anywhere, the last
    /// chunk partial), on the test folder's filesystem and on tmpfs (which takes `O_DIRECT` from
    /// Linux 6.6 on and refuses it before, when the journal falls back to the page cache), reads
    /// back exactly after a reopen, with the checksums computed on the way.
    #[test]
    fn data_files_read_back_exactly_with_and_without_o_direct() {
        let shm = std::path::Path::new("/dev/shm");
        let mut roots = vec![tempfile::tempdir().expect("journal test step")];
        if shm.is_dir() {
            roots.push(tempfile::tempdir_in(shm).expect("journal test step"));
        }
        // 64 KiB chunks stay block-aligned; 10,000-byte chunks put the second chunk at an
        // unaligned offset, where the file turns to buffered writes for the rest.
        for (tmp, chunk) in roots.iter().flat_map(|t| [(t, 64 * 1024u64), (t, 10_000)]) {
            let root = tmp.path().join(format!("j{chunk}"));
            let data: Vec<u8> = (0..(3 * chunk as usize + 5_000)).map(|i| (i * 13 % 251) as u8).collect();
            let wid = "abcdef0123456789abcdef0123456789";
            let (direct, sums) = {
                let (j, _) = Journal::open(&root).expect("journal test step");
                let dir = j.create(wid).expect("journal test step");
                let mut f = j.create_data(&dir.join("data")).expect("journal test step");
                let direct = f.is_direct();
                let mut sums = Vec::new();
                for (i, c) in data.chunks(chunk as usize).enumerate() {
                    let pieces: Vec<&[u8]> = c.chunks(7_777).collect();
                    let mut h = Xxh3::new();
                    f.write_at(i as u64 * chunk, &pieces, Some(&mut h)).expect("journal test step");
                    sums.push(h.digest());
                }
                // An unaligned chunk size leaves the file buffered after its first chunk.
                assert_eq!(f.is_direct(), direct && chunk.is_multiple_of(ALIGN as u64));
                f.sync_data().expect("journal test step");
                let mut r = record(&dir, wid, &[], chunk);
                r.size = data.len() as u64;
                r.sums = sums.clone();
                r.role = Role::Writer { segments: vec![Segment { file: "data".into(), len: data.len() as u64 }] };
                // `record` wrote an empty data file: write ours again, as the write path does.
                let mut f = j.create_data(&dir.join("data")).expect("journal test step");
                for (i, c) in data.chunks(chunk as usize).enumerate() {
                    f.write_at(i as u64 * chunk, &[c], None).expect("journal test step");
                }
                f.sync_data().expect("journal test step");
                j.commit(r).expect("journal test step");
                j.write_replica_chunk(wid, 9, &[&data[..10], &data[10..5_000]]).expect("journal test step");
                (direct, sums)
            };
            let expected: Vec<u64> = data.chunks(chunk as usize).map(xxh3_64).collect();
            assert_eq!(sums, expected, "checksums computed while writing");
            let (j, found) = Journal::open(&root).expect("journal test step");
            assert_eq!(found.len(), 1);
            let r = j.record(wid).expect("journal test step");
            let mut back = Vec::new();
            for i in 0..r.chunk_count() {
                back.extend_from_slice(&j.read_chunk(&r, i).expect("journal test step"));
            }
            assert!(back == data, "data read back differs (O_DIRECT: {direct})");
            let replica = fs::read(root.join(wid).join("c9")).expect("journal test step");
            assert!(replica[..] == data[..5_000], "replica chunk differs");
        }
    }

    #[test]
    fn wids_are_checked() {
        assert!(valid_wid("0123456789abcdef0123456789abcdef"));
        assert!(!valid_wid("../../../../etc/passwd00000000000"));
        assert!(!valid_wid("0123456789ABCDEF0123456789abcdef"));
    }
}
