//! Write-back: writes acknowledged at `local` or `replicated` durability, their background upload
//! to the origin, takeover by a replica holder when the writer is gone, and the sync barrier.
//!
//! A write streams into the journal (`cairn_store::journal`) on the receiving node, is fsync'd,
//! and, at `replicated`, each chunk is pushed to `writeback.replicas - 1` of its owners, which
//! store it durably too. The write is then registered with the owners of the key's metadata (so
//! every node reads it at once, under a pending version whose chunks the owners fetch from the
//! writer) and acknowledged. The uploader sends it to the origin later, with retries and backoff,
//! after asking the key's metadata owner for its turn: uploads of one key go one at a time and an
//! upload older than an acknowledged newer write is dropped, so the last acknowledged write is the
//! last one in the origin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_core::chunk::pending_version;
use cairn_core::cluster::NodeEntry;
use cairn_core::config::WritebackSection;
use cairn_core::{ChunkId, Durability, ObjectVersion};
use cairn_origin::{BodyStream, ObjectAttrs, ObjectInfo, WriteAttrs};
use cairn_store::journal::{DataFile, Journal, Role, Segment, WriteRecord};
use futures::StreamExt;
use http::Method;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::cluster::{ChunkQuery, Cluster, PeerError};
use crate::meta::{MetaKey, PendingWrite, UploadGrant, Uploader};
use crate::metrics::Metrics;
use crate::multipart::StagedPart;
use crate::state::{NodeState, OriginEntry};

/// Replica folders whose record never came are removed after this long.
const UNCOMMITTED_MAX_AGE: Duration = Duration::from_secs(3600);
/// How often a replica holder asks a writer about the writes it holds replicas of.
const WRITER_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Replicas younger than this are not asked about: their write may still be arriving.
const WRITER_CHECK_MIN_AGE: Duration = Duration::from_secs(2);
/// How often every holder of a pending write (its writer and replica holders) announces it to the
/// owners of its key's metadata; owners forget a write not announced for `meta::PENDING_LEASE`.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// Longest a node spends at start-up learning pending writes before it serves requests.
const RECOVERY_MAX: Duration = Duration::from_secs(15);
/// Longest a write-through PUT or a delete waits for a running upload of its key.
const ORIGIN_OP_WAIT: Duration = Duration::from_secs(60);
/// Nodes asked at once for their pending uploads by a sync barrier or status call.
const SUMMARY_FANOUT: usize = 64;
/// How often a deferred upload looks again.
const DEFER_POLL: Duration = Duration::from_millis(50);
/// A sync barrier that asked within this long keeps uploads from being deferred.
const SYNC_INTEREST: Duration = Duration::from_secs(2);
/// Chunks of one write pushed to replica holders at once.
const PUSH_PARALLELISM: usize = 4;
/// Nodes tried past the first choices when a replica holder or metadata owner fails.
const EXTRA_CANDIDATES: usize = 3;
/// Interval at which a sync barrier re-counts pending uploads.
const SYNC_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("request body failed: {0}")]
    Body(io::Error),
    #[error("the node's disk is full: {0}")]
    DiskFull(String),
    #[error("journal write failed: {0}")]
    Io(String),
    #[error("could not place replicas: {0}")]
    Replication(String),
}

fn io_error(context: &str, e: io::Error) -> WriteError {
    if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
        WriteError::DiskFull(format!("{context}: {e}"))
    } else {
        WriteError::Io(format!("{context}: {e}"))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Metadata of a write sent to the owners of its key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteMsg {
    pub origin: String,
    pub bucket: String,
    pub key: String,
    pub wid: String,
    pub ticket: u64,
    /// Register: the pending object's metadata. End of upload: the origin's (none: abandoned).
    pub info: Option<InfoMsg>,
    /// The node uploading the write or running the origin operation.
    #[serde(default)]
    pub node: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InfoMsg {
    pub size: u64,
    pub etag: String,
    pub modified_ns: i64,
    pub content_type: Option<String>,
    #[serde(default)]
    pub attrs: ObjectAttrs,
}

impl InfoMsg {
    fn from_info(i: &ObjectInfo) -> Self {
        Self {
            size: i.size,
            etag: i.etag.clone(),
            modified_ns: i.last_modified.timestamp_nanos_opt().unwrap_or(0),
            content_type: i.content_type.clone(),
            attrs: i.attrs.clone(),
        }
    }

    fn to_info(&self) -> ObjectInfo {
        ObjectInfo {
            size: self.size,
            etag: self.etag.clone(),
            last_modified: chrono::DateTime::from_timestamp_nanos(self.modified_ns),
            content_type: self.content_type.clone(),
            attrs: self.attrs.clone(),
        }
    }
}

impl WriteMsg {
    fn meta_key(&self) -> MetaKey {
        MetaKey { origin: self.origin.clone(), bucket: self.bucket.clone(), key: self.key.clone() }
    }

    fn uploader(&self) -> Uploader {
        Uploader { wid: self.wid.clone(), node: self.node.clone() }
    }

    fn of(rec: &WriteRecord, info: Option<&ObjectInfo>, node: &str) -> Self {
        Self {
            origin: rec.origin.clone(),
            bucket: rec.bucket.clone(),
            key: rec.key.clone(),
            wid: rec.wid.clone(),
            ticket: rec.ticket,
            info: info.map(InfoMsg::from_info),
            node: node.to_owned(),
        }
    }

    /// The registration of a journaled write: its pending version, acknowledged at its ticket.
    fn pending(rec: &WriteRecord, node: &str) -> Self {
        Self::of(rec, Some(&pending_info(rec)), node)
    }
}

/// What readers see of a write until it is in the origin.
fn pending_info(rec: &WriteRecord) -> ObjectInfo {
    ObjectInfo {
        size: rec.size,
        etag: rec.version.clone(),
        last_modified: chrono::DateTime::from_timestamp_nanos(rec.ticket as i64),
        content_type: rec.content_type.clone(),
        attrs: record_attrs(rec),
    }
}

/// The attributes a journaled write keeps for its object.
fn record_attrs(rec: &WriteRecord) -> ObjectAttrs {
    serde_json::from_value(rec.attrs.clone()).unwrap_or_default()
}

/// A writer's answer about writes a replica holder keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeldAnswer {
    /// The writer's incarnation now.
    pub incarnation: String,
    /// The asked writes it still holds (journaled or being written).
    pub held: Vec<String>,
}

/// Pending writes and remembered commits of keys whose metadata a restarted node owns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OwnedState {
    pub register: Vec<WriteMsg>,
    pub committed: Vec<WriteMsg>,
}

/// Pending uploads on one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub node: String,
    /// Writes this node uploads.
    pub objects: u64,
    pub bytes: u64,
    /// Writes this node holds replicas of, until their upload is confirmed.
    #[serde(default)]
    pub replicas: u64,
    pub oldest_age_secs: f64,
    pub dirty_bytes: u64,
    pub last_error: Option<String>,
}

/// Pending uploads across the cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Writes acknowledged up to this ticket are counted.
    pub mark: u64,
    pub objects: u64,
    pub bytes: u64,
    #[serde(default)]
    pub replicas: u64,
    pub nodes: Vec<Summary>,
    pub unreachable: Vec<String>,
    /// Why each unreachable node could not be asked, by node id.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub why: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
pub struct WriteStats {
    pub acked_local: AtomicU64,
    pub acked_replicated: AtomicU64,
    pub bytes_acked: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub upload_retries: AtomicU64,
    /// Bytes of uploaded writes given to the owners of the uploaded version's chunks.
    pub carried_bytes: AtomicU64,
    pub superseded: AtomicU64,
    pub takeovers: AtomicU64,
    pub orphans_dropped: AtomicU64,
    pub throttled: AtomicU64,
}

pub struct WriteBack {
    pub journal: Arc<Journal>,
    pub stats: WriteStats,
    cfg: WritebackSection,
    node_id: String,
    /// This node's incarnation: changes when the node starts on an empty cache directory.
    pub incarnation: String,
    /// Writes being received here, not yet committed: replica holders asking about them must not
    /// take them for finished.
    in_flight: Mutex<HashSet<String>>,
    last_ticket: Mutex<u64>,
    queue: mpsc::UnboundedSender<String>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    dirty_freed: Notify,
    errors: Mutex<HashMap<String, String>>,
    /// PutObject bodies and multipart completions being written now.
    active_writes: AtomicUsize,
    /// When a sync barrier last counted pending uploads here.
    sync_seen: Mutex<Option<std::time::Instant>>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl WriteBack {
    /// Opens the journal; writes found in it are queued for upload.
    pub fn open(dir: PathBuf, cfg: WritebackSection, node_id: String, incarnation: String) -> io::Result<Self> {
        let (journal, found) = Journal::open(&dir)?;
        let (queue, rx) = mpsc::unbounded_channel();
        let mut last = 0;
        for r in &found {
            last = last.max(r.ticket);
            if matches!(r.role, Role::Writer { .. }) {
                tracing::info!(bucket = %r.bucket, key = %r.key, bytes = r.size, "resuming the upload of a journaled write");
                let _ = queue.send(r.wid.clone());
            }
        }
        Ok(Self {
            journal: Arc::new(journal),
            stats: WriteStats::default(),
            cfg,
            node_id,
            incarnation,
            in_flight: Mutex::new(HashSet::new()),
            last_ticket: Mutex::new(last),
            queue,
            queue_rx: Mutex::new(Some(rx)),
            dirty_freed: Notify::new(),
            errors: Mutex::new(HashMap::new()),
            active_writes: AtomicUsize::new(0),
            sync_seen: Mutex::new(None),
        })
    }

    fn next_ticket(&self) -> u64 {
        let mut last = self.last_ticket.lock();
        *last = (*last + 1).max(now_ns());
        *last
    }

    /// A ticket later than every write acknowledged here so far.
    pub fn mark(&self) -> u64 {
        self.next_ticket()
    }

    /// Takes `n` bytes of the dirty budget, waiting while the node is at its cap. A write whose
    /// own bytes (`own`) are all that is dirty goes on, so one object larger than the cap cannot
    /// wait on itself.
    async fn reserve(&self, n: u64, own: u64) {
        let cap = self.cfg.dirty_max.bytes();
        let mut counted = false;
        loop {
            let freed = self.dirty_freed.notified();
            let d = self.journal.dirty();
            if d + n <= cap || d <= own {
                self.journal.add_dirty(n);
                return;
            }
            if !counted {
                Metrics::add(&self.stats.throttled, 1);
                counted = true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), freed).await;
        }
    }

    /// Whether the upload of a write acknowledged at `ticket` should wait: writes are arriving,
    /// it is younger than `upload_defer`, no sync barrier is waiting, and dirty bytes are below
    /// half their cap. Uploads then get the CPU and disk after the writes, as a page cache's
    /// writeback does.
    fn defer_upload(&self, ticket: u64) -> bool {
        let age = Duration::from_nanos(now_ns().saturating_sub(ticket));
        self.active_writes.load(Ordering::Relaxed) > 0
            && age < self.cfg.upload_defer.0
            && self.sync_seen.lock().is_none_or(|t| t.elapsed() > SYNC_INTEREST)
            && self.journal.dirty() < self.cfg.dirty_max.bytes() / 2
    }

    /// Pending uploads on this node matching the filter, acknowledged up to `upto`.
    pub fn summary(&self, bucket: Option<&str>, prefix: &str, upto: u64) -> Summary {
        let now = now_ns();
        let mut s = Summary { node: self.node_id.clone(), dirty_bytes: self.journal.dirty(), ..Default::default() };
        for r in self.journal.records() {
            if r.ticket > upto || bucket.is_some_and(|b| b != r.bucket) || !r.key.starts_with(prefix) {
                continue;
            }
            match &r.role {
                Role::Writer { .. } => {
                    s.objects += 1;
                    s.bytes += r.size;
                }
                // A replica stands for its write until the upload is confirmed: if the writer
                // lost it, this holder uploads it.
                Role::Replica { .. } => s.replicas += 1,
            }
            s.oldest_age_secs = s.oldest_age_secs.max(now.saturating_sub(r.ticket) as f64 / 1e9);
        }
        s.last_error = self.errors.lock().values().next().cloned();
        s
    }
}

fn new_wid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A write being received: counted in flight while alive; its files are removed unless it was
/// committed.
struct Uncommitted<'a> {
    wb: &'a WriteBack,
    wid: String,
    bytes: u64,
    armed: bool,
}

impl<'a> Uncommitted<'a> {
    fn new(wb: &'a WriteBack, wid: &str, bytes: u64) -> Self {
        wb.in_flight.lock().insert(wid.to_owned());
        Self { wb, wid: wid.to_owned(), bytes, armed: true }
    }
}

impl Drop for Uncommitted<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.wb.journal.discard(&self.wid, self.bytes);
        }
        self.wb.in_flight.lock().remove(&self.wid);
    }
}

/// Streams a PutObject body into the journal and acknowledges it at `durability`; returns the
/// object's (pending) version, answered as its ETag.
#[allow(clippy::too_many_arguments)]
pub async fn write_stream(
    state: &Arc<NodeState>,
    entry: &OriginEntry,
    bucket: &str,
    key: &str,
    mut body: BodyStream,
    content_type: Option<String>,
    attrs: WriteAttrs,
    durability: Durability,
    expected_size: Option<u64>,
) -> Result<String, WriteError> {
    let wb = &state.writeback;
    let journal = wb.journal.clone();
    let wid = new_wid();
    let chunk_size = entry.config.chunk_size.bytes() as usize;
    let copies = state.config.writeback.replicas.saturating_sub(1);
    let mut pusher = match (&state.cluster, expected_size) {
        (Some(cluster), Some(size)) if durability == Durability::Replicated && copies > 0 => Some(Pusher {
            cluster: cluster.clone(),
            version: ObjectVersion {
                origin: entry.origin.name().to_owned(),
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version: pending_version(&wid, &wb.node_id),
                size,
            },
            chunk_size: chunk_size as u64,
            copies,
            permits: Arc::new(Semaphore::new(PUSH_PARALLELISM)),
            tasks: Vec::new(),
        }),
        _ => None,
    };
    let mut index = 0u64;
    let mut guard = Uncommitted::new(wb, &wid, 0);
    let path = {
        let (j, w) = (journal.clone(), wid.clone());
        blocking(move || j.create(&w).map(|d| d.join("data"))).await.map_err(|e| io_error("journal folder", e))?
    };
    let file = {
        let (j, p) = (journal.clone(), path.clone());
        blocking(move || j.create_data(&p)).await.map_err(|e| io_error("journal file", e))?
    };
    let _active = Active::new(&wb.active_writes);
    // One chunk is written while the next is received; received buffers are written as they
    // came (split at chunk boundaries, never copied).
    let mut writing: Option<tokio::task::JoinHandle<io::Result<(DataFile, u64)>>> = None;
    let mut file = Some(file);
    let mut sums = Vec::new();
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut filled = 0usize;
    while let Some(next) = body.next().await {
        let mut b = next.map_err(WriteError::Body)?;
        while !b.is_empty() {
            let take = (chunk_size - filled).min(b.len());
            pieces.push(b.split_to(take));
            filled += take;
            if filled == chunk_size {
                if let Some(p) = pusher.as_mut() {
                    p.push(index, &pieces).await;
                }
                index += 1;
                flush(wb, &mut guard, &mut writing, &mut file, &mut sums, std::mem::take(&mut pieces)).await?;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        if let Some(p) = pusher.as_mut() {
            p.push(index, &pieces).await;
        }
        flush(wb, &mut guard, &mut writing, &mut file, &mut sums, pieces).await?;
    }
    if let Some(w) = writing.take() {
        let (f, sum) = w.await.map_err(|e| WriteError::Io(e.to_string()))?.map_err(|e| io_error("journal write", e))?;
        sums.push(sum);
        file = Some(f);
    }
    if let Some(f) = file {
        blocking(move || f.sync_data()).await.map_err(|e| io_error("journal fsync", e))?;
    }
    let segments = vec![Segment { file: "data".into(), len: guard.bytes }];
    // The body has ended: checksums sent as trailers are in the attributes now.
    let attrs = attrs.lock().clone();
    finish(state, entry, bucket, key, (content_type, attrs), durability, guard, segments, sums, pusher).await
}

async fn flush(
    wb: &WriteBack,
    guard: &mut Uncommitted<'_>,
    writing: &mut Option<tokio::task::JoinHandle<io::Result<(DataFile, u64)>>>,
    file: &mut Option<DataFile>,
    sums: &mut Vec<u64>,
    pieces: Vec<Bytes>,
) -> Result<(), WriteError> {
    let len: usize = pieces.iter().map(Bytes::len).sum();
    wb.reserve(len as u64, guard.bytes).await;
    guard.bytes += len as u64;
    if let Some(w) = writing.take() {
        let (f, sum) = w.await.map_err(|e| WriteError::Io(e.to_string()))?.map_err(|e| io_error("journal write", e))?;
        sums.push(sum);
        *file = Some(f);
    }
    let Some(mut f) = file.take() else { return Err(WriteError::Io("journal file missing".into())) };
    let (room, start) = (wb.journal.room(), guard.bytes - len as u64);
    *writing = Some(tokio::task::spawn_blocking(move || {
        let mut hash = Xxh3::new();
        // Clean cache chunks give way; a retry after ENOSPC rewrites the chunk from its start.
        room.write(len as u64, || f.write_at(start, &pieces, Some(&mut hash)))?;
        if !f.is_direct() {
            start_writeback(f.file(), start, len as u64);
        }
        Ok((f, hash.digest()))
    }));
    Ok(())
}

/// Starts writing `len` bytes at `offset` of `f` to the disk now, without waiting (Linux
/// `POSIX_FADV_DONTNEED` starts the write-back of dirty pages in the range, and drops only pages
/// already clean). A write is then on its way to the disk while the next piece is received, and
/// the fsync that acknowledges it has only the last pieces left to flush, instead of the whole
/// object: the acknowledgement comes at about the disk's speed rather than after receive plus
/// flush. Advice only: a failure changes nothing (the fsync still makes the write durable).
pub fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    if let Err(e) = rustix::fs::fadvise(f, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed) {
        tracing::debug!(error = %e, "fadvise refused; the fsync will flush the range");
    }
}

/// Counts writes in progress on this node while alive.
struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Links the staged parts of a multipart upload into the journal and acknowledges the object.
#[allow(clippy::too_many_arguments)]
pub async fn write_parts(
    state: &Arc<NodeState>,
    entry: &OriginEntry,
    bucket: &str,
    key: &str,
    parts: Vec<StagedPart>,
    content_type: Option<String>,
    attrs: ObjectAttrs,
    durability: Durability,
) -> Result<String, WriteError> {
    let wb = &state.writeback;
    let journal = wb.journal.clone();
    let wid = new_wid();
    let total: u64 = parts.iter().map(|p| p.size).sum();
    let _active = Active::new(&wb.active_writes);
    wb.reserve(total, 0).await;
    let guard = Uncommitted::new(wb, &wid, total);
    let chunk_size = entry.config.chunk_size.bytes();
    let (j, w) = (journal.clone(), wid.clone());
    let (segments, sums) = blocking(move || {
        let dir = j.create(&w)?;
        let mut segments = Vec::with_capacity(parts.len());
        for p in &parts {
            let name = format!("p{:05}", p.number);
            // Linked, not moved: a completion that fails after this leaves the upload whole.
            std::fs::hard_link(&p.path, dir.join(&name))?;
            std::fs::File::open(dir.join(&name))?.sync_data()?;
            segments.push(Segment { file: name, len: p.size });
        }
        let sums = chunk_sums(&dir, &segments, chunk_size)?;
        Ok((segments, sums))
    })
    .await
    .map_err(|e| io_error("journal parts", e))?;
    finish(state, entry, bucket, key, (content_type, attrs), durability, guard, segments, sums, None).await
}

/// xxh3 of each `chunk_size` piece of the concatenated segments.
fn chunk_sums(dir: &std::path::Path, segments: &[Segment], chunk_size: u64) -> io::Result<Vec<u64>> {
    use std::io::Read;
    let mut sums = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut filled = 0usize;
    for s in segments {
        let mut f = std::fs::File::open(dir.join(&s.file))?;
        let mut left = s.len as usize;
        while left > 0 {
            let take = (buf.len() - filled).min(left);
            f.read_exact(&mut buf[filled..filled + take])?;
            filled += take;
            left -= take;
            if filled == buf.len() {
                sums.push(xxh3_64(&buf));
                filled = 0;
            }
        }
    }
    if filled > 0 {
        sums.push(xxh3_64(&buf[..filled]));
    }
    Ok(sums)
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &Arc<NodeState>,
    entry: &OriginEntry,
    bucket: &str,
    key: &str,
    (content_type, attrs): (Option<String>, ObjectAttrs),
    durability: Durability,
    mut guard: Uncommitted<'_>,
    segments: Vec<Segment>,
    sums: Vec<u64>,
    pushed: Option<Pusher>,
) -> Result<String, WriteError> {
    let wb = &state.writeback;
    let size = segments.iter().map(|s| s.len).sum();
    let wid = guard.wid.clone();
    let mut record = WriteRecord {
        wid: wid.clone(),
        origin: entry.origin.name().to_owned(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        size,
        chunk_size: entry.config.chunk_size.bytes(),
        content_type,
        attrs: serde_json::to_value(&attrs).unwrap_or_default(),
        version: pending_version(&wid, &wb.node_id),
        writer: wb.node_id.clone(),
        writer_incarnation: wb.incarnation.clone(),
        durability: durability.to_string(),
        ticket: 0,
        sums,
        holders: Vec::new(),
        role: Role::Writer { segments },
    };
    record.ticket = wb.next_ticket();
    if durability == Durability::Replicated
        && let Some(cluster) = &state.cluster
    {
        let copies = state.config.writeback.replicas.saturating_sub(1);
        let placed = match pushed {
            Some(p) if p.version.size == size => p.finish().await,
            _ => replicate(state, cluster, &record, copies).await,
        };
        let committed = match placed {
            Ok(placed) => commit_replicas(cluster, &mut record, placed).await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            discard_replicas(cluster, &record, copies).await;
            return Err(e);
        }
    }
    let (j, r) = (wb.journal.clone(), record.clone());
    blocking(move || j.commit(r)).await.map_err(|e| io_error("journal commit", e))?;
    guard.armed = false;
    if let Err(e) = meta_broadcast(state, "register", &WriteMsg::pending(&record, &wb.node_id), true).await {
        tracing::warn!(bucket, key, error = %e, "no owner of the key's metadata took the write; other nodes read the previous version until it is uploaded");
    }
    let counter = if durability == Durability::Replicated { &wb.stats.acked_replicated } else { &wb.stats.acked_local };
    Metrics::add(counter, 1);
    Metrics::add(&wb.stats.bytes_acked, size);
    let _ = wb.queue.send(wid);
    Ok(record.version)
}

/// Pushes every chunk to `replicas - 1` nodes of its ranking other than this one, reading them
/// back from the journal; returns where each went. Every push has ended when it returns, failed
/// or not, so [`discard_replicas`] after a failure finds all it has to remove.
async fn replicate(
    state: &Arc<NodeState>,
    cluster: &Arc<Cluster>,
    record: &WriteRecord,
    copies: usize,
) -> Result<Vec<Placed>, WriteError> {
    if copies == 0 {
        return Ok(Vec::new());
    }
    let rec = Arc::new(record.clone());
    let pushed: Vec<Result<Placed, WriteError>> = futures::stream::iter(0..record.chunk_count())
        .map(|index| {
            let (state, cluster, rec) = (state.clone(), cluster.clone(), rec.clone());
            async move {
                let (j, r) = (state.writeback.journal.clone(), rec.clone());
                let data = blocking(move || j.read_chunk(&r, index)).await.map_err(|e| io_error("journal read", e))?;
                push_chunk(&cluster, &rec.wid, rec.chunk_id(index).0 as u64, index, vec![data], copies).await
            }
        })
        .buffer_unordered(PUSH_PARALLELISM)
        .collect()
        .await;
    pushed.into_iter().collect()
}

/// After a replicated write failed: asks every node that may have taken one of its chunks or
/// its replica record (the candidates [`push_chunk`] tries) to drop them, so a refused write
/// leaves nothing behind, and a holder whose disk was full gets its space back at once.
async fn discard_replicas(cluster: &Cluster, record: &WriteRecord, copies: usize) {
    let mut nodes: BTreeMap<String, NodeEntry> = BTreeMap::new();
    for index in 0..record.chunk_count() {
        for node in cluster.ranking(record.chunk_id(index).0 as u64, copies + 1 + EXTRA_CANDIDATES) {
            if node.id != cluster.node_id {
                nodes.entry(node.id.clone()).or_insert(node);
            }
        }
    }
    let query = format!("/wb/release?wid={}", record.wid);
    // At once: a frozen candidate costs the refused write one peer timeout, not one each.
    futures::future::join_all(nodes.values().map(|node| {
        let query = query.clone();
        async move {
            if let Err(e) = cluster.call(node, Method::POST, query, Bytes::new()).await {
                tracing::debug!(node = %node.id, wid = %record.wid, error = ?e, "could not discard replicas of a refused write; its sweep removes them");
            }
        }
    }))
    .await;
}

/// Stores one chunk durably at `copies` nodes of its ranking other than this one; returns them.
async fn push_chunk(
    cluster: &Cluster,
    wid: &str,
    chunk_key: u64,
    index: u64,
    data: Vec<Bytes>,
    copies: usize,
) -> Result<(u64, Vec<String>), WriteError> {
    let query = format!("/wb/chunk?wid={wid}&index={index}");
    let mut holders = Vec::new();
    let mut last_err = String::new();
    let mut full = None;
    for node in cluster.ranking(chunk_key, copies + 1 + EXTRA_CANDIDATES) {
        if holders.len() == copies {
            break;
        }
        if node.id == cluster.node_id {
            continue;
        }
        match cluster.call_pieces(&node, Method::PUT, query.clone(), data.clone()).await {
            Ok(_) => holders.push(node.id.clone()),
            // Alive, with a full disk: not a reason to route reads around it.
            Err(e) if e.is_disk_full() => full = Some(format!("{}: {e:?}", node.id)),
            Err(e) => {
                last_err = format!("{e:?}");
                cluster.mark_suspect(&node.id);
            }
        }
    }
    if holders.len() < copies
        && let Some(m) = full
    {
        return Err(WriteError::DiskFull(format!("chunk {index}: no replica holder had room: {m}")));
    }
    if holders.len() < copies {
        return Err(WriteError::Replication(format!(
            "chunk {index} reached {} of {copies} other nodes: {last_err}",
            holders.len()
        )));
    }
    Ok((index, holders))
}

/// Sends each holder its replica record (the chunks it holds); sets `record.holders`.
async fn commit_replicas(
    cluster: &Cluster,
    record: &mut WriteRecord,
    placed: Vec<(u64, Vec<String>)>,
) -> Result<(), WriteError> {
    let mut by_holder: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (index, holders) in placed {
        for h in holders {
            by_holder.entry(h).or_default().push(index);
        }
    }
    record.holders = by_holder.keys().cloned().collect();
    for (holder, mut chunks) in by_holder {
        chunks.sort_unstable();
        let mut r = record.clone();
        r.role = Role::Replica { chunks };
        let body = Bytes::from(serde_json::to_vec(&r).map_err(|e| WriteError::Io(e.to_string()))?);
        let node = cluster.node(&holder).ok_or_else(|| WriteError::Replication(format!("{holder} left the map")))?;
        cluster.call(&node, Method::POST, "/wb/commit".into(), body).await.map_err(|e| match e.is_disk_full() {
            true => WriteError::DiskFull(format!("replica record at {holder}: {e:?}")),
            false => WriteError::Replication(format!("commit at {holder}: {e:?}")),
        })?;
    }
    Ok(())
}

/// A chunk index and the nodes that stored it.
type Placed = (u64, Vec<String>);

/// Pushes chunks to their replica holders while the body is still arriving (when its size is
/// known up front, since a chunk's id and owners depend on it).
struct Pusher {
    cluster: Arc<Cluster>,
    version: ObjectVersion,
    chunk_size: u64,
    copies: usize,
    permits: Arc<Semaphore>,
    tasks: Vec<tokio::task::JoinHandle<Result<Placed, WriteError>>>,
}

impl Pusher {
    async fn push(&mut self, index: u64, pieces: &[Bytes]) {
        let data: Vec<Bytes> = pieces.to_vec();
        let Ok(permit) = self.permits.clone().acquire_owned().await else { return };
        let cluster = self.cluster.clone();
        let key = cairn_core::ChunkId::new(&self.version, self.chunk_size, index).0 as u64;
        let (wid, copies) = (self.version.version.clone(), self.copies);
        self.tasks.push(tokio::spawn(async move {
            let wid = cairn_core::chunk::parse_pending_version(&wid).map(|(w, _)| w.to_owned()).unwrap_or_default();
            let r = push_chunk(&cluster, &wid, key, index, data, copies).await;
            drop(permit);
            r
        }));
    }

    /// Where each chunk went, once every push has ended (failed or not).
    async fn finish(self) -> Result<Vec<(u64, Vec<String>)>, WriteError> {
        let mut placed = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            placed.push(t.await.map_err(|e| WriteError::Replication(e.to_string())).and_then(|r| r));
        }
        placed.into_iter().collect()
    }
}

/// Sends `op` to the owners of the key's metadata: the first `writeback.replicas` of its ranking
/// (this node handles its own share locally). With `need_one`, keeps going down the ranking until
/// one owner took it.
async fn meta_broadcast(state: &Arc<NodeState>, op: &str, msg: &WriteMsg, need_one: bool) -> Result<(), String> {
    let Some(cluster) = &state.cluster else {
        apply_meta_op(state, op, msg);
        return Ok(());
    };
    let r = state.config.writeback.replicas;
    let body = Bytes::from(serde_json::to_vec(msg).map_err(|e| e.to_string())?);
    let ranking = cluster.ranking(Cluster::meta_key(&msg.origin, &msg.bucket, &msg.key), r + EXTRA_CANDIDATES);
    let mut took = 0;
    let mut last_err = String::from("no node in the map");
    for (i, node) in ranking.iter().enumerate() {
        if i >= r && (took > 0 || !need_one) {
            break;
        }
        if node.id == cluster.node_id {
            apply_meta_op(state, op, msg);
            took += 1;
            continue;
        }
        match cluster.call(node, Method::POST, format!("/wb/{op}"), body.clone()).await {
            Ok(_) => took += 1,
            Err(e) => last_err = format!("{e:?}"),
        }
    }
    if took == 0 { Err(last_err) } else { Ok(()) }
}

/// Asks the owners of the message's key's metadata for the key's turn, with `op` ("begin" for an
/// upload, "begin-op" for an origin operation). Every owner that answers is asked (an owner that
/// was cut off or restarted may not know a newer write the others know); the most cautious
/// answer wins. Go when none answers.
async fn ask_turn(state: &Arc<NodeState>, op: &str, msg: &WriteMsg) -> UploadGrant {
    let local = |state: &NodeState| match op {
        "begin" => state.meta.begin_upload(&msg.meta_key(), &msg.uploader(), msg.ticket),
        _ => state.meta.begin_origin_op(&msg.meta_key(), &msg.uploader()),
    };
    let Some(cluster) = &state.cluster else { return local(state) };
    let Ok(body) = serde_json::to_vec(msg) else { return UploadGrant::Go };
    let r = state.config.writeback.replicas;
    let ranking = cluster.ranking(Cluster::meta_key(&msg.origin, &msg.bucket, &msg.key), r + EXTRA_CANDIDATES);
    let mut answers = Vec::new();
    for (i, node) in ranking.iter().enumerate() {
        if i >= r && !answers.is_empty() {
            break;
        }
        if node.id == cluster.node_id {
            answers.push(local(state));
            continue;
        }
        if let Ok((_, answer)) = cluster.call(node, Method::POST, format!("/wb/{op}"), Bytes::from(body.clone())).await
        {
            answers.push(UploadGrant::parse(&String::from_utf8_lossy(&answer)).unwrap_or(UploadGrant::Go));
        }
    }
    if answers.contains(&UploadGrant::Superseded) {
        UploadGrant::Superseded
    } else if answers.contains(&UploadGrant::Wait) {
        UploadGrant::Wait
    } else {
        UploadGrant::Go
    }
}

async fn begin_upload(state: &Arc<NodeState>, msg: &WriteMsg) -> UploadGrant {
    ask_turn(state, "begin", msg).await
}

/// Applies a metadata-owner operation from this node or a peer; returns the answer's body.
pub fn apply_meta_op(state: &NodeState, op: &str, msg: &WriteMsg) -> Option<String> {
    let key = msg.meta_key();
    match op {
        "register" => {
            let info = msg.info.as_ref()?.to_info();
            state.meta.register(&key, PendingWrite { wid: msg.wid.clone(), ticket: msg.ticket, info });
            Some(String::new())
        }
        "begin" => Some(state.meta.begin_upload(&key, &msg.uploader(), msg.ticket).as_str().to_owned()),
        "begin-op" => Some(state.meta.begin_origin_op(&key, &msg.uploader()).as_str().to_owned()),
        "end" => {
            state.meta.end_upload(&key, &msg.uploader(), msg.ticket, msg.info.as_ref().map(InfoMsg::to_info));
            Some(String::new())
        }
        "committed" => {
            state.meta.committed_write(&key, msg.ticket, Some(&msg.uploader()));
            Some(String::new())
        }
        "release-turn" => {
            state.meta.release_turn(&key, &msg.uploader());
            Some(String::new())
        }
        _ => None,
    }
}

/// The turn of a write-through PUT or a delete at its key's metadata owner.
pub struct OriginTurn {
    msg: WriteMsg,
}

/// Why an origin operation could not take its key's turn.
#[derive(Debug, thiserror::Error)]
#[error("an upload of {bucket}/{key} is still running after {waited:?}; retry the request")]
pub struct TurnBusy {
    pub bucket: String,
    pub key: String,
    pub waited: Duration,
}

/// Takes the key's turn for an operation that goes to the origin now (a write-through PUT, a
/// delete): it waits while an upload of the key runs (so that upload cannot land after it) and
/// supersedes every write acknowledged before it once it ends ([`end_origin_op`]).
pub async fn begin_origin_op(
    state: &Arc<NodeState>,
    entry: &OriginEntry,
    bucket: &str,
    key: &str,
) -> Result<OriginTurn, TurnBusy> {
    take_origin_turn(state, entry.origin.name(), bucket, key).await
}

async fn take_origin_turn(
    state: &Arc<NodeState>,
    origin: &str,
    bucket: &str,
    key: &str,
) -> Result<OriginTurn, TurnBusy> {
    let msg = WriteMsg {
        origin: origin.to_owned(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        wid: format!("op-{}", new_wid()),
        ticket: state.writeback.next_ticket(),
        info: None,
        node: state.writeback.node_id.clone(),
    };
    let cfg = &state.config.writeback;
    let started = tokio::time::Instant::now();
    let mut backoff = cfg.retry_min.0.min(Duration::from_millis(100));
    loop {
        match ask_turn(state, "begin-op", &msg).await {
            UploadGrant::Wait if started.elapsed() < ORIGIN_OP_WAIT => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max.0);
            }
            UploadGrant::Wait => {
                // Owners that granted the turn meanwhile must not keep it for a lease.
                let _ = meta_broadcast(state, "release-turn", &msg, false).await;
                return Err(TurnBusy { bucket: bucket.to_owned(), key: key.to_owned(), waited: started.elapsed() });
            }
            _ => return Ok(OriginTurn { msg }),
        }
    }
}

/// Ends an origin operation: done, it supersedes older pending writes of the key at every owner
/// of its metadata; failed, it only gives the turn back.
pub async fn end_origin_op(state: &Arc<NodeState>, turn: OriginTurn, done: bool) {
    let op = if done { "committed" } else { "release-turn" };
    if let Err(e) = meta_broadcast(state, op, &turn.msg, false).await {
        tracing::debug!(bucket = %turn.msg.bucket, key = %turn.msg.key, error = %e, "could not tell the key's owners about an origin operation");
    }
}

/// Where [`turn_at_body_end`] leaves the turn it took (or why it could not take it).
pub type TurnSlot = Arc<Mutex<Option<Result<OriginTurn, TurnBusy>>>>;

/// Wraps a write-through body so that the key's turn (and the ticket that orders the write) is
/// taken once the body has been received whole, just before the origin commits it: a client
/// still sending holds no turn, so a concurrent writer of the key is not kept waiting by it. The
/// origin only makes an object visible at the end of its body, so operations stay ordered. The
/// body fails when the turn cannot be had; either way the outcome is in the slot.
pub fn turn_at_body_end(
    state: &Arc<NodeState>,
    entry: &OriginEntry,
    bucket: &str,
    key: &str,
    body: BodyStream,
) -> (BodyStream, TurnSlot) {
    let slot: TurnSlot = Arc::new(Mutex::new(None));
    let (state, out) = (state.clone(), slot.clone());
    let (origin, bucket, key) = (entry.origin.name().to_owned(), bucket.to_owned(), key.to_owned());
    let end = futures::stream::once(async move {
        let turn = take_origin_turn(&state, &origin, &bucket, &key).await;
        let failed = turn.as_ref().err().map(|busy| io::Error::other(busy.to_string()));
        *out.lock() = Some(turn);
        failed.map(Err)
    })
    .filter_map(std::future::ready);
    (body.chain(end).boxed(), slot)
}

/// Starts the uploader and the replica watcher.
pub fn spawn(state: &Arc<NodeState>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(rx) = state.writeback.queue_rx.lock().take() {
        tasks.push(tokio::spawn(upload_loop(state.clone(), rx)));
    }
    tasks.push(tokio::spawn(replica_watch(state.clone())));
    tasks.push(tokio::spawn(announce_loop(state.clone())));
    tasks
}

async fn upload_loop(state: Arc<NodeState>, mut rx: mpsc::UnboundedReceiver<String>) {
    let permits = Arc::new(Semaphore::new(state.config.writeback.upload_concurrency));
    while let Some(wid) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let state = state.clone();
        tokio::spawn(async move {
            upload(&state, &wid).await;
            drop(permit);
        });
    }
}

/// Uploads one journaled write, retrying until the origin takes it or a newer write of the key
/// supersedes it; then releases the replicas and the journal entry.
async fn upload(state: &Arc<NodeState>, wid: &str) {
    let wb = &state.writeback;
    let Some(rec) = wb.journal.record(wid) else { return };
    let Some(entry) = state.origin_named(&rec.origin) else {
        tracing::error!(origin = %rec.origin, key = %rec.key, "journaled write names an origin no longer configured; kept");
        wb.errors.lock().insert(wid.to_owned(), format!("origin {:?} is not configured", rec.origin));
        return;
    };
    let cfg = &state.config.writeback;
    while wb.defer_upload(rec.ticket) {
        tokio::time::sleep(DEFER_POLL).await;
    }
    let msg = WriteMsg::of(&rec, None, &wb.node_id);
    let mut backoff = cfg.retry_min.0;
    loop {
        match begin_upload(state, &msg).await {
            UploadGrant::Go => break,
            UploadGrant::Wait => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max.0);
            }
            UploadGrant::Superseded => return abandon(state, &rec, &msg).await,
        }
    }
    let mut backoff = cfg.retry_min.0;
    let (info, ours) = loop {
        let body = journal_body(wb.journal.clone(), rec.clone());
        let attrs = Arc::new(Mutex::new(record_attrs(&rec)));
        let put = entry.origin.put(&rec.bucket, &rec.key, body, rec.content_type.clone(), attrs);
        match renewing_turn(state, &msg, put).await {
            Ok(put) => {
                Metrics::add(&state.metrics.origin_put, 1);
                let info = match entry.origin.head(&rec.bucket, &rec.key).await {
                    Ok(info) if info.size == rec.size => info,
                    _ => ObjectInfo {
                        size: rec.size,
                        etag: put.etag.clone().unwrap_or_else(|| rec.version.clone()),
                        last_modified: chrono::Utc::now(),
                        content_type: rec.content_type.clone(),
                        attrs: record_attrs(&rec),
                    },
                };
                break (info, put.etag);
            }
            Err(e) => {
                Metrics::add(&wb.stats.upload_retries, 1);
                Metrics::add(&state.metrics.origin_errors, 1);
                tracing::warn!(bucket = %rec.bucket, key = %rec.key, error = %e, retry_in = ?backoff, "upload to the origin failed; will retry");
                wb.errors.lock().insert(wid.to_owned(), format!("{}/{}: {}", rec.bucket, rec.key, e.message));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max.0);
                // A newer write of the key may have come meanwhile: then this one is not uploaded.
                if begin_upload(state, &msg).await == UploadGrant::Superseded {
                    return abandon(state, &rec, &msg).await;
                }
            }
        }
    };
    Metrics::add(&wb.stats.uploads, 1);
    Metrics::add(&wb.stats.upload_bytes, rec.size);
    wb.journal.note_uploaded(&rec.wid, &info.etag);
    // Only when the origin's current version is the one this PUT made (not a later writer's):
    // the ETag the PUT answered is the version's (or, on a folder origin, the MD5 recorded with
    // the file as cairn wrote it).
    let same = ours.as_deref().is_some_and(|e| e == info.etag || e == info.client_etag());
    if same && rec.chunk_size == entry.config.chunk_size.bytes() {
        carry_over(state, &rec, &info).await;
    }
    let _ = meta_broadcast(state, "end", &WriteMsg::of(&rec, Some(&info), &wb.node_id), false).await;
    release(state, &rec).await;
    tracing::debug!(bucket = %rec.bucket, key = %rec.key, bytes = rec.size, "uploaded");
}

/// Chunk transfers to new owners running at once while a write's chunks are carried over.
const CARRY_PARALLEL: usize = 4;

/// Gives the chunks of an uploaded write to the owners of the same chunks under the version the
/// origin now has, so reading the object back (a checkpoint restored after a restart) is served
/// by the cluster instead of the origin. The bytes come from this node's journal, each checked
/// against its checksum, and are the bytes the origin received. Best effort: a chunk that cannot
/// be carried is fetched from the origin by its first reader.
/// Candidates a carried chunk is offered to before it is left to the origin.
const CARRY_CANDIDATES: usize = 3;

async fn carry_over(state: &Arc<NodeState>, rec: &Arc<WriteRecord>, info: &ObjectInfo) {
    let v = ObjectVersion { version: info.etag.clone(), ..rec.object_version() };
    let carried = futures::stream::iter(0..rec.chunk_count())
        .map(|index| {
            let (state, rec, v) = (state.clone(), rec.clone(), v.clone());
            async move {
                let (j, r) = (state.writeback.journal.clone(), rec.clone());
                let b = match blocking(move || j.read_chunk(&r, index)).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!(key = %rec.key, index, error = %e, "chunk not carried over: not readable here");
                        return 0;
                    }
                };
                let id = ChunkId::new(&v, rec.chunk_size, index);
                let owner = state.cluster.as_ref().map(|c| (c, c.route(id.0 as u64)));
                match owner {
                    Some((cluster, route)) if !route.self_is_owner => {
                        // Healthy candidates first: a peer that fails a push is marked suspect (so
                        // a frozen owner costs one peer timeout, not one per chunk) and the chunk
                        // goes to the next candidate, which its readers ask next.
                        let q = ChunkQuery::new(&v, rec.chunk_size, index);
                        let sum = rec.sums.get(index as usize).copied().unwrap_or_default();
                        let len = b.len() as u64;
                        for node in route.candidates.iter().take(CARRY_CANDIDATES) {
                            if node.id == cluster.node_id {
                                return match state.reader.store().insert_and_persist(id, b).await {
                                    Ok(()) => len,
                                    Err(_) => 0,
                                };
                            }
                            match cluster.put_chunk(node, &q, b.clone(), sum).await {
                                Ok(()) => return len,
                                Err(PeerError::Unavailable(e)) => {
                                    tracing::debug!(peer = %node.id, key = %rec.key, index, error = %e, "chunk not carried to this peer; trying the next");
                                    cluster.mark_suspect(&node.id);
                                }
                                Err(e) => {
                                    tracing::debug!(peer = %node.id, key = %rec.key, index, error = ?e, "chunk not carried over");
                                    return 0;
                                }
                            }
                        }
                        0
                    }
                    _ => {
                        let len = b.len() as u64;
                        match state.reader.store().insert_and_persist(id, b).await {
                            Ok(()) => len,
                            Err(e) => {
                                tracing::debug!(key = %rec.key, index, error = %e, "chunk not carried over");
                                0
                            }
                        }
                    }
                }
            }
        })
        .buffer_unordered(CARRY_PARALLEL)
        .fold(0u64, |acc, n| async move { acc + n })
        .await;
    Metrics::add(&state.writeback.stats.carried_bytes, carried);
    tracing::debug!(bucket = %rec.bucket, key = %rec.key, bytes = carried, version = %info.etag, "chunks carried over to the uploaded version");
}

/// Runs `work` (an upload's PUT) while renewing the key's upload turn, so a long upload keeps its
/// turn and a crashed uploader loses it after `meta::UPLOAD_LEASE`.
async fn renewing_turn<T>(state: &Arc<NodeState>, msg: &WriteMsg, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(crate::meta::UPLOAD_RENEW);
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let _ = begin_upload(state, msg).await;
            }
        }
    }
}

/// Drops a write that a newer acknowledged write of its key superseded, without uploading it.
async fn abandon(state: &Arc<NodeState>, rec: &WriteRecord, msg: &WriteMsg) {
    tracing::info!(bucket = %rec.bucket, key = %rec.key, "a newer write of the key was acknowledged; this one is not uploaded");
    Metrics::add(&state.writeback.stats.superseded, 1);
    let _ = meta_broadcast(state, "end", msg, false).await;
    release(state, rec).await;
}

/// Drops a finished write here and at its replica holders.
async fn release(state: &Arc<NodeState>, rec: &WriteRecord) {
    if let Some(cluster) = &state.cluster {
        let mut others: Vec<&String> = rec.holders.iter().collect();
        others.push(&rec.writer);
        for id in others {
            if *id == cluster.node_id {
                continue;
            }
            let Some(node) = cluster.node(id) else { continue };
            if let Err(e) =
                cluster.call(&node, Method::POST, format!("/wb/release?wid={}", rec.wid), Bytes::new()).await
            {
                tracing::debug!(peer = %id, error = ?e, "could not release a replica; its holder drops it when it finds the write superseded");
            }
        }
    }
    let (j, wid) = (state.writeback.journal.clone(), rec.wid.clone());
    let _ = tokio::task::spawn_blocking(move || j.remove(&wid)).await;
    state.writeback.errors.lock().remove(&rec.wid);
    state.writeback.dirty_freed.notify_waiters();
}

/// The object's bytes from the journal, chunk by chunk, each verified against its checksum.
fn journal_body(journal: Arc<Journal>, rec: Arc<WriteRecord>) -> BodyStream {
    futures::stream::iter(0..rec.chunk_count())
        .map(move |index| {
            let (j, r) = (journal.clone(), rec.clone());
            async move { blocking(move || j.read_chunk(&r, index)).await }
        })
        .buffered(2)
        .boxed()
}

/// Replica holders: stores a pushed chunk (before the write's record arrives).
pub async fn store_replica_chunk(state: &NodeState, wid: &str, index: u64, data: Vec<Bytes>) -> Result<(), WriteError> {
    let wb = &state.writeback;
    let n = data.iter().map(Bytes::len).sum::<usize>() as u64;
    wb.reserve(n, 0).await;
    let (j, w) = (wb.journal.clone(), wid.to_owned());
    let r = blocking(move || j.write_replica_chunk(&w, index, &data)).await;
    if r.is_err() {
        wb.journal.sub_dirty(n);
    }
    r.map_err(|e| io_error("replica chunk", e))
}

/// Replica holders: commits a replica record.
pub async fn commit_replica(state: &NodeState, record: WriteRecord) -> Result<(), WriteError> {
    if !matches!(record.role, Role::Replica { .. }) {
        return Err(WriteError::Io("a pushed record must be a replica's".into()));
    }
    let j = state.writeback.journal.clone();
    blocking(move || j.commit(record)).await.map_err(|e| io_error("replica commit", e))
}

/// Replica holders: the write is in the origin (or superseded), or its replication failed and it
/// was never acknowledged (then only the chunks that came before a record that never will).
pub async fn release_replica(state: &NodeState, wid: &str) {
    let j = state.writeback.journal.clone();
    let w = wid.to_owned();
    match j.record(wid) {
        Some(r) if matches!(r.role, Role::Replica { .. }) => {
            let _ = tokio::task::spawn_blocking(move || j.remove(&w)).await;
        }
        Some(_) => return,
        None => {
            let _ = tokio::task::spawn_blocking(move || j.remove_uncommitted(&w)).await;
        }
    }
    state.writeback.dirty_freed.notify_waiters();
}

/// Writers: which of `wids` this node still holds, and its incarnation.
pub fn held(state: &NodeState, wids: &[String]) -> HeldAnswer {
    let wb = &state.writeback;
    let in_flight = wb.in_flight.lock();
    let held = wids.iter().filter(|w| in_flight.contains(*w) || wb.journal.record(w).is_some()).cloned().collect();
    HeldAnswer { incarnation: wb.incarnation.clone(), held }
}

/// What a replica holder learned about a write from its writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterSays {
    /// The writer holds it and will upload it.
    Holds,
    /// The writer (same incarnation) no longer has it: uploaded or superseded, and the release
    /// did not reach this holder.
    Finished,
    /// The writer restarted without its disk: the write is this holder's to upload.
    Lost,
    /// The writer is marked down, or did not answer.
    Unreachable,
}

/// Asks each writer once about every replica this node holds for it.
async fn ask_writers(cluster: &Cluster, recs: &[Arc<WriteRecord>]) -> HashMap<String, WriterSays> {
    let mut by_writer: HashMap<&str, Vec<&WriteRecord>> = HashMap::new();
    for r in recs {
        by_writer.entry(r.writer.as_str()).or_default().push(r);
    }
    let asks = by_writer.into_iter().map(|(writer, recs)| async move {
        let unreachable = || recs.iter().map(|r| (r.wid.clone(), WriterSays::Unreachable)).collect::<Vec<_>>();
        let node = match cluster.node(writer) {
            Some(n) if !cluster.is_down(writer) => n,
            _ => return unreachable(),
        };
        let wids: Vec<&str> = recs.iter().map(|r| r.wid.as_str()).collect();
        let Ok(body) = serde_json::to_vec(&wids) else { return unreachable() };
        let answer = match cluster.call(&node, Method::POST, "/wb/held".into(), Bytes::from(body)).await {
            Ok((_, b)) => serde_json::from_slice::<HeldAnswer>(&b).ok(),
            Err(_) => None,
        };
        let Some(answer) = answer else { return unreachable() };
        recs.iter()
            .map(|r| {
                let says = if !r.writer_incarnation.is_empty() && r.writer_incarnation != answer.incarnation {
                    WriterSays::Lost
                } else if answer.held.contains(&r.wid) {
                    WriterSays::Holds
                } else {
                    WriterSays::Finished
                };
                (r.wid.clone(), says)
            })
            .collect()
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// Watches replicas: releases those whose upload the writer finished, and uploads from here
/// those whose writer lost them (restarted on an empty disk), is marked down, or stayed
/// unreachable for `takeover_after`, when this node is the first live holder; sweeps replica
/// folders that were never committed.
async fn replica_watch(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(WRITER_CHECK_EVERY);
    let mut sweeps = 0u64;
    let mut unreachable_since: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        tick.tick().await;
        sweeps += 1;
        if sweeps.is_multiple_of(300) {
            let j = state.writeback.journal.clone();
            let _ = tokio::task::spawn_blocking(move || j.sweep_uncommitted(UNCOMMITTED_MAX_AGE)).await;
        }
        let Some(cluster) = state.cluster.clone() else { continue };
        let recs: Vec<Arc<WriteRecord>> = state
            .writeback
            .journal
            .records()
            .into_iter()
            .filter(|r| matches!(r.role, Role::Replica { .. }) && r.writer != cluster.node_id)
            .filter(|r| Duration::from_nanos(now_ns().saturating_sub(r.ticket)) >= WRITER_CHECK_MIN_AGE)
            .collect();
        unreachable_since.retain(|wid, _| recs.iter().any(|r| r.wid == *wid));
        if recs.is_empty() {
            continue;
        }
        let said = ask_writers(&cluster, &recs).await;
        let now = tokio::time::Instant::now();
        for rec in &recs {
            match said.get(&rec.wid).copied().unwrap_or(WriterSays::Unreachable) {
                WriterSays::Holds => {
                    unreachable_since.remove(&rec.wid);
                    continue;
                }
                WriterSays::Finished => {
                    release_replica(&state, &rec.wid).await;
                    continue;
                }
                WriterSays::Lost => {}
                WriterSays::Unreachable => {
                    let since = *unreachable_since.entry(rec.wid.clone()).or_insert(now);
                    if !cluster.is_down(&rec.writer)
                        && now.duration_since(since) < state.config.writeback.takeover_after.0
                    {
                        continue;
                    }
                }
            }
            if successor(&cluster, rec).await.as_deref() != Some(cluster.node_id.as_str()) {
                continue;
            }
            if let Err(e) = take_over(&state, &cluster, rec).await {
                tracing::warn!(key = %rec.key, error = %e, "could not take over a write whose writer is gone; will retry");
            }
        }
    }
}

/// The holder that uploads a write whose writer is gone: the first one in the record's order
/// that answers and still holds the write. A holder that answers without it (its disk was lost
/// too, or it released the write) is passed over: waiting for it would hold the write forever.
async fn successor(cluster: &Cluster, rec: &WriteRecord) -> Option<String> {
    for h in &rec.holders {
        if *h == cluster.node_id || holds(cluster, h, &rec.wid).await == Some(true) {
            return Some(h.clone());
        }
    }
    None
}

/// Whether holder `id` still holds write `wid`; `None` when it is down or does not answer.
async fn holds(cluster: &Cluster, id: &str, wid: &str) -> Option<bool> {
    let node = cluster.node(id).filter(|_| !cluster.is_down(id))?;
    let body = Bytes::from(serde_json::to_vec(&[wid]).ok()?);
    let (_, b) = cluster.call(&node, Method::POST, "/wb/held".into(), body).await.ok()?;
    serde_json::from_slice::<HeldAnswer>(&b).ok().map(|a| a.held.iter().any(|w| w == wid))
}

/// Gathers the chunks this node lacks from the other holders, turns the replica into a writer's
/// record and queues its upload.
async fn take_over(state: &Arc<NodeState>, cluster: &Arc<Cluster>, rec: &WriteRecord) -> Result<(), String> {
    let Role::Replica { chunks: held } = &rec.role else { return Ok(()) };
    tracing::warn!(writer = %rec.writer, bucket = %rec.bucket, key = %rec.key, "the writer is gone; uploading its write from this replica");
    let journal = state.writeback.journal.clone();
    let dir = journal.dir(&rec.wid);
    let mut segments = Vec::new();
    let v: ObjectVersion = rec.object_version();
    for index in 0..rec.chunk_count() {
        let len = rec.chunk_size.min(rec.size - index * rec.chunk_size);
        if held.contains(&index) {
            segments.push(Segment { file: format!("c{index}"), len });
            continue;
        }
        let q = ChunkQuery::new(&v, rec.chunk_size, index);
        let mut got = None;
        for id in rec.holders.iter().filter(|h| **h != cluster.node_id) {
            let Some(node) = cluster.node(id) else { continue };
            match cluster.get_held_chunk(&node, &q).await {
                Ok(b) if rec.sums.get(index as usize) == Some(&xxh3_64(&b)) => {
                    got = Some(b);
                    break;
                }
                Ok(_) => tracing::warn!(peer = %id, index, "a holder sent a chunk that fails its checksum"),
                Err(PeerError::Unavailable(m) | PeerError::Origin(cairn_origin::Error { message: m, .. })) => {
                    tracing::debug!(peer = %id, index, error = %m, "holder could not send a chunk")
                }
            }
        }
        let Some(data) = got else {
            if let Some(h) = holder_without(cluster, rec).await {
                // Acknowledgement follows the commit at every holder, so a holder without the
                // record means the write was never acknowledged (its writer died between
                // commits), or it was uploaded and released, or it was lost with `h`'s disk too.
                tracing::warn!(bucket = %rec.bucket, key = %rec.key, holder = %h, "dropping a replica: another holder of the write does not hold it (never acknowledged, already uploaded, or lost with that holder's disk)");
                Metrics::add(&state.writeback.stats.orphans_dropped, 1);
                release_replica(state, &rec.wid).await;
                return Ok(());
            }
            return Err(format!("no live holder has chunk {index}"));
        };
        let name = format!("t{index}");
        let path = dir.join(&name);
        let (n, room) = (data.len() as u64, journal.room());
        blocking(move || {
            room.write(n, || {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&data)?;
                f.sync_data()
            })
        })
        .await
        .map_err(|e| e.to_string())?;
        journal.add_dirty(n);
        segments.push(Segment { file: name, len });
    }
    let mut record = rec.clone();
    record.role = Role::Writer { segments };
    record.holders.retain(|h| *h != cluster.node_id);
    record.holders.push(rec.writer.clone());
    let j = journal.clone();
    blocking(move || j.commit(record)).await.map_err(|e| e.to_string())?;
    Metrics::add(&state.writeback.stats.takeovers, 1);
    let _ = state.writeback.queue.send(rec.wid.clone());
    Ok(())
}

/// A graceful exit: this node's pending uploads get up to `grace` (less the time kept to hand
/// over) to reach the origin; each write still pending that no other node holds is then copied
/// to replica holders, which upload it once this node is gone from the map. A write that cannot
/// be handed over stays in this node's journal and is uploaded when it starts again.
pub async fn drain(state: &Arc<NodeState>, grace: Duration) {
    let started = tokio::time::Instant::now();
    let reserve = grace / 3;
    loop {
        let pending = state.writeback.summary(None, "", u64::MAX).objects;
        if pending == 0 {
            tracing::info!(took = ?started.elapsed(), "every pending upload reached the origin");
            return;
        }
        if started.elapsed() + reserve >= grace {
            tracing::warn!(pending, "uploads did not finish within the drain timeout; handing them over");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(cluster) = state.cluster.clone() else {
        tracing::warn!("no cluster to hand pending writes to; they are uploaded when this node starts again");
        return;
    };
    let copies = state.config.writeback.replicas.saturating_sub(1).max(1);
    let journal = state.writeback.journal.clone();
    for rec in journal.records() {
        if !matches!(rec.role, Role::Writer { .. }) || !rec.holders.is_empty() {
            continue;
        }
        let mut r = (*rec).clone();
        let handed = match tokio::time::timeout(grace.saturating_sub(started.elapsed()), async {
            let placed = replicate(state, &cluster, &r, copies).await?;
            commit_replicas(&cluster, &mut r, placed).await
        })
        .await
        {
            Ok(Ok(())) => {
                let j = journal.clone();
                let holders = r.holders.clone();
                blocking(move || j.commit(r)).await.map(|_| holders).map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => Err("the drain timeout passed".into()),
        };
        match handed {
            Ok(holders) => tracing::info!(bucket = %rec.bucket, key = %rec.key, ?holders, "pending write handed over"),
            Err(e) => {
                tracing::warn!(bucket = %rec.bucket, key = %rec.key, error = %e, "could not hand over a pending write; it stays here and is uploaded when this node starts again")
            }
        }
    }
}

/// A holder of `rec` (other than this node) that answers and does not hold the write.
async fn holder_without(cluster: &Cluster, rec: &WriteRecord) -> Option<String> {
    for id in rec.holders.iter().filter(|h| **h != cluster.node_id) {
        if holds(cluster, id, &rec.wid).await == Some(false) {
            return Some(id.clone());
        }
    }
    None
}

/// Announces every write this node holds (as writer or replica holder) to the owners of its key's
/// metadata, one request per owner. Owners renew what they know and learn what they lost.
async fn announce(state: &Arc<NodeState>) {
    let node_id = state.writeback.node_id.clone();
    let records = state.writeback.journal.records();
    let Some(cluster) = &state.cluster else {
        for r in &records {
            apply_meta_op(state, "register", &WriteMsg::pending(r, &node_id));
        }
        return;
    };
    let r = state.config.writeback.replicas;
    let mut by_owner: HashMap<String, (cairn_core::cluster::NodeEntry, Vec<WriteMsg>)> = HashMap::new();
    for rec in &records {
        let msg = WriteMsg::pending(rec, &node_id);
        for owner in cluster.ranking(Cluster::meta_key(&rec.origin, &rec.bucket, &rec.key), r) {
            if owner.id == cluster.node_id {
                apply_meta_op(state, "register", &msg);
            } else {
                by_owner.entry(owner.id.clone()).or_insert_with(|| (owner, Vec::new())).1.push(msg.clone());
            }
        }
    }
    let permits = Semaphore::new(SUMMARY_FANOUT);
    let sends = by_owner.into_values().map(|(owner, msgs)| {
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await;
            let Ok(body) = serde_json::to_vec(&msgs) else { return };
            if let Err(e) = cluster.call(&owner, Method::POST, "/wb/announce".into(), Bytes::from(body)).await {
                tracing::debug!(peer = %owner.id, error = ?e, "could not announce pending writes");
            }
        }
    });
    futures::future::join_all(sends).await;
}

/// Owners: registers announced writes.
pub fn apply_announce(state: &NodeState, msgs: &[WriteMsg]) {
    for m in msgs {
        apply_meta_op(state, "register", m);
    }
}

/// Peers: what this node knows that `node` needs as an owner of keys' metadata (after its
/// restart): the writes this node holds and the key states it keeps, for keys `node` owns.
pub fn owned_state(state: &NodeState, node: &str) -> OwnedState {
    let mut out = OwnedState::default();
    let Some(cluster) = &state.cluster else { return out };
    let r = state.config.writeback.replicas;
    let owns = |origin: &str, bucket: &str, key: &str| {
        cluster.ranking(Cluster::meta_key(origin, bucket, key), r).iter().any(|n| n.id == node)
    };
    for rec in state.writeback.journal.records() {
        if owns(&rec.origin, &rec.bucket, &rec.key) {
            out.register.push(WriteMsg::pending(&rec, &state.writeback.node_id));
        }
    }
    for ks in state.meta.key_states(|k| owns(&k.origin, &k.bucket, &k.key)) {
        let base = WriteMsg {
            origin: ks.key.origin.clone(),
            bucket: ks.key.bucket.clone(),
            key: ks.key.key.clone(),
            wid: String::new(),
            ticket: ks.committed,
            info: None,
            node: String::new(),
        };
        if ks.committed > 0 {
            out.committed.push(base.clone());
        }
        if let Some(p) = ks.pending {
            out.register.push(WriteMsg {
                wid: p.wid,
                ticket: p.ticket,
                info: Some(InfoMsg::from_info(&p.info)),
                ..base
            });
        }
    }
    out
}

/// Start-up, before the node serves requests: registers the writes of its own journal with the
/// owners of their keys' metadata (itself included), and learns from every peer the pending
/// writes and commits of the keys whose metadata it owns, so reads after a restart see every
/// acknowledged write.
pub async fn recover(state: &Arc<NodeState>) {
    let started = tokio::time::Instant::now();
    let learn = async {
        announce(state).await;
        let Some(cluster) = &state.cluster else { return 0 };
        let permits = Semaphore::new(SUMMARY_FANOUT);
        let asks = cluster.up_nodes().into_iter().filter(|n| n.id != cluster.node_id).map(|node| {
            let permits = &permits;
            async move {
                let _permit = permits.acquire().await;
                let path = format!(
                    "/wb/owned?node={}",
                    url::form_urlencoded::byte_serialize(cluster.node_id.as_bytes()).collect::<String>()
                );
                match cluster.call(&node, Method::GET, path, Bytes::new()).await {
                    Ok((_, body)) => serde_json::from_slice::<OwnedState>(&body).ok(),
                    Err(_) => None,
                }
            }
        });
        let mut learned = 0;
        for owned in futures::future::join_all(asks).await.into_iter().flatten() {
            for m in &owned.committed {
                state.meta.committed_write(&m.meta_key(), m.ticket, None);
            }
            learned += owned.register.len();
            apply_announce(state, &owned.register);
        }
        learned
    };
    match tokio::time::timeout(RECOVERY_MAX, learn).await {
        Ok(n) => {
            tracing::info!(pending_learned = n, own = state.writeback.journal.records().len(), took = ?started.elapsed(), "pending writes registered")
        }
        Err(_) => {
            tracing::warn!("learning pending writes from peers took longer than {RECOVERY_MAX:?}; serving anyway")
        }
    }
}

async fn announce_loop(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        announce(&state).await;
    }
}

/// Pending uploads under `bucket`/`prefix` acknowledged up to `mark`, on every node of the map
/// that is up (or this node alone).
pub async fn cluster_summary(
    state: &Arc<NodeState>,
    bucket: Option<&str>,
    prefix: &str,
    mark: Option<u64>,
) -> ClusterSummary {
    let wb = &state.writeback;
    let mark = mark.unwrap_or_else(|| wb.mark());
    let mut out = ClusterSummary { mark, ..Default::default() };
    let nodes: Vec<NodeEntry> = state.cluster.as_ref().map(|c| c.up_nodes()).unwrap_or_default();
    let permits = Semaphore::new(SUMMARY_FANOUT);
    let asks = nodes.iter().map(|node| {
        let state = state.clone();
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await;
            let cluster = state.cluster.as_ref()?;
            if node.id == cluster.node_id {
                return Some(Ok(wb_summary_local(&state, bucket, prefix, mark)));
            }
            let query = {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("prefix", prefix).append_pair("upto", &mark.to_string());
                if let Some(b) = bucket {
                    q.append_pair("bucket", b);
                }
                q.finish()
            };
            let r = cluster.call(node, Method::GET, format!("/wb/pending?{query}"), Bytes::new()).await;
            Some(match r {
                Ok((_, body)) => serde_json::from_slice::<Summary>(&body)
                    .map_err(|e| (node.id.clone(), format!("unreadable summary: {e}"))),
                Err(e) => Err((node.id.clone(), e.to_string())),
            })
        }
    });
    let answers = futures::future::join_all(asks).await;
    if state.cluster.is_none() {
        out.nodes.push(wb_summary_local(state, bucket, prefix, mark));
    }
    for a in answers.into_iter().flatten() {
        match a {
            Ok(s) => out.nodes.push(s),
            Err((id, why)) => {
                out.unreachable.push(id.clone());
                out.why.insert(id, why);
            }
        }
    }
    out.objects = out.nodes.iter().map(|n| n.objects).sum();
    out.bytes = out.nodes.iter().map(|n| n.bytes).sum();
    out.replicas = out.nodes.iter().map(|n| n.replicas).sum();
    out
}

pub fn wb_summary_local(state: &NodeState, bucket: Option<&str>, prefix: &str, upto: u64) -> Summary {
    *state.writeback.sync_seen.lock() = Some(std::time::Instant::now());
    state.writeback.summary(bucket, prefix, upto)
}

/// Waits until every write under `bucket`/`prefix` acknowledged before the call is in the origin
/// (on every reachable node; nodes the map marks down are left to their replica holders).
pub async fn sync(
    state: &Arc<NodeState>,
    bucket: Option<&str>,
    prefix: &str,
    timeout: Option<Duration>,
) -> (bool, ClusterSummary) {
    let mark = state.writeback.mark();
    let started = tokio::time::Instant::now();
    let mut told: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        let s = cluster_summary(state, bucket, prefix, Some(mark)).await;
        if s.objects == 0 && s.replicas == 0 && s.unreachable.is_empty() {
            return (true, s);
        }
        for (id, why) in &s.why {
            if told.get(id) != Some(why) {
                tracing::warn!(node = %id, %why, "sync: a node cannot be asked what it still holds");
                told.insert(id.clone(), why.clone());
            }
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return (false, s);
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}
