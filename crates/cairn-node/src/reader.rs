//! Chunked read-through: cache lookup, single-flight origin fetch, readahead, streaming.
//!
//! Every origin fetch is a range GET pinned to the object's version (`If-Match`), so a chunk stored
//! under a version's chunk id holds bytes of that version and no other.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_core::fanout::{Decision, FanoutConfig, Tracker};
use cairn_core::{ChunkId, ChunkLayout, ObjectVersion};
use cairn_origin::{Error as OriginError, Origin};
use cairn_store::ChunkStore;
use cairn_store::journal::Journal;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use cairn_client::ahead::Ahead;
pub use cairn_client::ahead::Readahead;

use crate::cluster::{ChunkAnswer, ChunkQuery, Cluster, PeerError};
use crate::metrics::Metrics;
use crate::singleflight::SingleFlight;

/// Nodes of a chunk's ranking asked for a replica of a pending write when its writer cannot
/// serve it (the replica holders are among the first ones).
const REPLICA_CANDIDATES: usize = 6;
/// Objects whose access pattern is tracked for sequential readahead at once.
const MAX_TRACKED_READERS: usize = 10_000;

pub type ChunkResult = Result<Bytes, Arc<OriginError>>;

/// How long a holder asked for a chunk it is still receiving waits for it.
const HOLDER_WAIT: Duration = Duration::from_secs(10);

/// The chunk trackers of the chunks this node owns (see `cairn_core::fanout`).
type ChunkTracker = Arc<Mutex<Tracker<ChunkId, String>>>;

/// Held while a chunk body goes to a peer: an upload slot, and for an owner's own copy the
/// tracker's count of copies in flight.
pub struct UploadGuard {
    _permit: OwnedSemaphorePermit,
    sending: Option<(ChunkTracker, ChunkId)>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some((tracker, id)) = self.sending.take() {
            tracker.lock().sent(&id);
        }
    }
}

/// What a chunk's owner answers a peer.
pub enum OwnerAnswer {
    Bytes(Bytes, UploadGuard),
    /// Fetch it from these holders, checking it against the digest.
    Holders(Vec<String>, u64),
}

/// One version of one object, ready to be read.
pub struct ObjectHandle {
    pub origin: Arc<dyn Origin>,
    pub version: ObjectVersion,
    pub chunk_size: u64,
}

impl ObjectHandle {
    pub fn layout(&self) -> ChunkLayout {
        ChunkLayout::new(self.chunk_size, self.version.size)
    }

    pub fn chunk_id(&self, index: u64) -> ChunkId {
        ChunkId::new(&self.version, self.chunk_size, index)
    }
}

pub struct ReadThrough {
    store: Arc<ChunkStore>,
    /// Origin fetches. Requests from peers join these only, never `routed`, so two nodes whose
    /// maps disagree cannot wait on each other.
    flights: SingleFlight<ChunkId, ChunkResult>,
    /// Requests to other nodes.
    routed: SingleFlight<ChunkId, ChunkResult>,
    fetch_permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    readahead: Readahead,
    /// The readahead window (in chunks) sequential readers of each bucket's origin ended with:
    /// where the next reader of that origin starts.
    learned: Arc<Mutex<HashMap<String, usize>>>,
    /// Last chunk read per object version, to recognise sequential readers.
    last_read: Mutex<HashMap<ObjectVersion, u64>>,
    cluster: Option<Arc<Cluster>>,
    /// Writes not yet in the origin; their chunks are served from here.
    journal: Arc<Journal>,
    /// Peer-to-peer fan-out of the chunks this node owns (`None`: owners always send).
    tracker: Option<ChunkTracker>,
    /// Chunk bodies sent to peers at once (`cluster.upload_slots`).
    upload_slots: Arc<Semaphore>,
    started: Instant,
}

impl ReadThrough {
    pub fn new(
        store: Arc<ChunkStore>,
        metrics: Arc<Metrics>,
        readahead: Readahead,
        max_fetches: usize,
        cluster: Option<Arc<Cluster>>,
        journal: Arc<Journal>,
    ) -> Self {
        let fanout = cluster.as_ref().is_some_and(|c| c.config().fanout);
        let slots = cluster.as_ref().map_or(16, |c| c.config().upload_slots);
        Self {
            store,
            flights: SingleFlight::default(),
            routed: SingleFlight::default(),
            fetch_permits: Arc::new(Semaphore::new(max_fetches)),
            metrics,
            readahead,
            learned: Arc::new(Mutex::new(HashMap::new())),
            last_read: Mutex::new(HashMap::new()),
            cluster,
            journal,
            tracker: fanout.then(|| Arc::new(Mutex::new(Tracker::new(FanoutConfig::default())))),
            upload_slots: Arc::new(Semaphore::new(slots)),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// An upload slot, waited for (an owner must answer its requesters).
    async fn upload_slot(&self) -> OwnedSemaphorePermit {
        match self.upload_slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                Metrics::add(&self.metrics.upload_slot_waits, 1);
                self.upload_slots.clone().acquire_owned().await.expect("the semaphore is never closed")
            }
        }
    }

    /// A chunk requested by peer `from` of this node as its owner: its bytes, or (when this node
    /// is already sending it and others fetched it recently) holders to fetch it from. `direct`:
    /// the requester tried the holders it was given (`bad` failed it) and must be served.
    pub async fn owner_chunk(
        &self,
        obj: &ObjectHandle,
        index: u64,
        from: Option<&str>,
        direct: bool,
        bad: &[&str],
    ) -> Result<OwnerAnswer, Arc<OriginError>> {
        let id = obj.chunk_id(index);
        let decision = match (&self.tracker, from) {
            (Some(tracker), Some(from)) => {
                let mut t = tracker.lock();
                for b in bad {
                    t.forget_holder(&id, &(*b).to_owned());
                }
                Some(t.request(&id, &from.to_owned(), direct, self.now_ms()))
            }
            _ => None,
        };
        match decision {
            Some(Decision::Redirect(holders)) => {
                let tracker = self.tracker.as_ref().expect("a decision comes from the tracker");
                let known = tracker.lock().digest(&id);
                let digest = match known {
                    Some(d) => d,
                    None => {
                        let b = self.local_chunk(obj, index).await?;
                        let d = cairn_core::fanout::digest(&b);
                        tracker.lock().set_digest(&id, d);
                        d
                    }
                };
                Metrics::add(&self.metrics.p2p_handoffs, 1);
                Ok(OwnerAnswer::Holders(holders, digest))
            }
            Some(Decision::Serve) => {
                let tracker = self.tracker.clone().expect("a decision comes from the tracker");
                // Counted as sending from the decision on, so the requesters behind this one are
                // handed to holders while the chunk is fetched and sent.
                let guard_sending = Some((tracker.clone(), id));
                let permit = self.upload_slot().await;
                let guard = UploadGuard { _permit: permit, sending: guard_sending };
                // The digest is computed only when a requester is handed to holders: a chunk
                // read by one node never pays for hashing it.
                let b = self.local_chunk(obj, index).await?;
                Metrics::add(&self.metrics.peer_egress_owner, b.len() as u64);
                Ok(OwnerAnswer::Bytes(b, guard))
            }
            None => {
                let permit = self.upload_slot().await;
                let b = self.local_chunk(obj, index).await?;
                Metrics::add(&self.metrics.peer_egress_owner, b.len() as u64);
                Ok(OwnerAnswer::Bytes(b, UploadGuard { _permit: permit, sending: None }))
            }
        }
    }

    /// A chunk a peer was handed to this node for: what it holds, or is receiving (waited for),
    /// never fetched. `Err(())` when all upload slots are taken (the peer asks someone else).
    pub async fn holder_chunk(&self, obj: &ObjectHandle, index: u64) -> Result<Option<(Bytes, UploadGuard)>, ()> {
        let permit = self.upload_slots.clone().try_acquire_owned().map_err(|_| ())?;
        let id = obj.chunk_id(index);
        let held = match self.held_chunk(obj, index).await {
            Some(b) => Some(b),
            None => match self.routed.join(&id) {
                Some(receiving) => match tokio::time::timeout(HOLDER_WAIT, receiving).await {
                    Ok(Ok(b)) => Some(b),
                    _ => None,
                },
                None => None,
            },
        };
        Ok(held.map(|b| {
            Metrics::add(&self.metrics.peer_egress_near, b.len() as u64);
            (b, UploadGuard { _permit: permit, sending: None })
        }))
    }

    /// The chunk from the write-back journal, if a write this node holds has it.
    async fn journaled(&self, id: ChunkId) -> Option<Bytes> {
        journaled(&self.journal, &self.store, id).await
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// One chunk: from this node's tiers, else from its owner (in a cluster), else from the origin;
    /// fetched once however many readers of this node ask at the same time.
    pub async fn chunk(&self, obj: &ObjectHandle, index: u64) -> ChunkResult {
        let id = obj.chunk_id(index);
        if let Some((b, _)) = self.store.get(id).await {
            return Ok(b);
        }
        if let Some(b) = self.journaled(id).await {
            return Ok(b);
        }
        match &self.cluster {
            Some(cluster) => {
                let route = cluster.route(id.0 as u64);
                if route.self_is_owner {
                    self.fetch(obj, index, id).await
                } else {
                    self.fetch_routed(obj, index, id, cluster.clone(), route.candidates).await
                }
            }
            None => self.fetch(obj, index, id).await,
        }
    }

    /// A chunk a peer asked for: served from this node's tiers or its own origin fetch, whoever
    /// owns it under this node's view; never forwarded again.
    pub async fn local_chunk(&self, obj: &ObjectHandle, index: u64) -> ChunkResult {
        let id = obj.chunk_id(index);
        if let Some((b, _)) = self.store.get(id).await {
            return Ok(b);
        }
        if let Some(b) = self.journaled(id).await {
            return Ok(b);
        }
        self.fetch(obj, index, id).await
    }

    /// A chunk fetched as a read would (through its owner) and kept in this node's tiers, disk
    /// included: a preloaded replica (`cairn load --replicate`).
    pub async fn keep_chunk(&self, obj: &ObjectHandle, index: u64) -> Result<(), Arc<OriginError>> {
        let id = obj.chunk_id(index);
        if self.store.contains(id) && self.store.peek_ram(id).is_none() {
            return Ok(());
        }
        let b = self.chunk(obj, index).await?;
        self.store.insert(id, b);
        Ok(())
    }

    /// A chunk this node holds (tiers or journal), without fetching it from anywhere.
    pub async fn held_chunk(&self, obj: &ObjectHandle, index: u64) -> Option<Bytes> {
        let id = obj.chunk_id(index);
        if let Some((b, _)) = self.store.get(id).await {
            return Some(b);
        }
        self.journaled(id).await
    }

    fn origin_fetch_job(&self, obj: &ObjectHandle, index: u64, id: ChunkId) -> OriginFetch {
        OriginFetch {
            store: self.store.clone(),
            permits: self.fetch_permits.clone(),
            metrics: self.metrics.clone(),
            origin: obj.origin.clone(),
            version: obj.version.clone(),
            range: obj.layout().chunk_range(index),
            id,
            chunk_size: obj.chunk_size,
            index,
            cluster: self.cluster.clone(),
            journal: self.journal.clone(),
        }
    }

    async fn fetch(&self, obj: &ObjectHandle, index: u64, id: ChunkId) -> ChunkResult {
        let job = self.origin_fetch_job(obj, index, id);
        let (result, waited) = self.flights.run(id, move || job.run()).await;
        if waited {
            Metrics::add(&self.metrics.singleflight_waits, 1);
        }
        result
    }

    /// Asks the chunk's candidates in turn; a candidate that is down, cut off or failing is marked
    /// suspect and the next one is asked at once. With none left, reads the origin itself.
    async fn fetch_routed(
        &self,
        obj: &ObjectHandle,
        index: u64,
        id: ChunkId,
        cluster: Arc<Cluster>,
        candidates: Vec<cairn_core::cluster::NodeEntry>,
    ) -> ChunkResult {
        let job = self.origin_fetch_job(obj, index, id);
        let chunk_size = obj.chunk_size;
        let flights = self.flights.clone();
        let metrics = self.metrics.clone();
        let (result, waited) = self
            .routed
            .run(id, move || async move {
                let q = ChunkQuery::new(&job.version, chunk_size, index);
                let peers: Vec<_> = candidates.iter().take_while(|n| n.id != cluster.node_id).collect();
                let asked =
                    hedged(&cluster, &metrics, &peers, id, |node| cluster.get_chunk_from_owner(node, &q, false, &[]))
                        .await;
                let got = match asked {
                    Some(Ok((ChunkAnswer::Bytes(b), _))) => {
                        Metrics::add(&metrics.peer_ingress_owner, b.len() as u64);
                        Some(Ok(b))
                    }
                    Some(Ok((ChunkAnswer::Holders(holders, digest), owner))) => {
                        match from_holders(&cluster, &metrics, owner, &q, holders, digest).await {
                            Ok(b) => Some(Ok(b)),
                            Err(PeerError::Origin(e)) => Some(Err(e)),
                            Err(PeerError::Unavailable(m)) => {
                                tracing::warn!(chunk = %id, error = %m, "neither holders nor owner served the chunk");
                                None
                            }
                        }
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                };
                match got {
                    Some(Ok(b)) => {
                        // A near copy in RAM only: the owner keeps the durable one.
                        job.store.insert_ram(id, b.clone());
                        return Ok(b);
                    }
                    Some(Err(e)) => return Err(Arc::new(e)),
                    None => {}
                }
                flights.run(id, move || job.run()).await.0
            })
            .await;
        if waited {
            Metrics::add(&self.metrics.singleflight_waits, 1);
        }
        result
    }

    /// Starts background fetches of the chunks in `indices` that no tier holds.
    pub fn prefetch(self: &Arc<Self>, obj: &Arc<ObjectHandle>, indices: Range<u64>) {
        let end = indices.end.min(obj.layout().chunk_count());
        for index in indices.start..end {
            let id = obj.chunk_id(index);
            if self.store.contains(id) {
                continue;
            }
            Metrics::add(&self.metrics.readahead_chunks, 1);
            let this = self.clone();
            let obj = obj.clone();
            tokio::spawn(async move {
                let _ = this.chunk(&obj, index).await;
            });
        }
    }

    /// Records a read of chunks `first..=last`; if it continues the previous read of the same
    /// object, fetches the next `readahead` chunks in the background.
    pub fn note_read(self: &Arc<Self>, obj: &Arc<ObjectHandle>, first: u64, last: u64) {
        if self.readahead.chunks == 0 {
            return;
        }
        let sequential = {
            let mut map = self.last_read.lock();
            if map.len() >= MAX_TRACKED_READERS {
                map.clear();
            }
            let prev = map.insert(obj.version.clone(), last);
            prev.is_some_and(|p| first == p || first == p + 1)
        };
        if sequential {
            let window = self.start_window(obj);
            self.prefetch(obj, last + 1..last + 1 + window as u64);
        }
    }

    /// The window a sequential reader of `obj` starts with: what the last reader of its origin
    /// ended with, at least `readahead_chunks`.
    fn start_window(&self, obj: &ObjectHandle) -> usize {
        let base = self.readahead.chunks.max(1);
        let learned = self.learned.lock().get(&obj.version.bucket).copied().unwrap_or(base);
        learned.clamp(base, self.readahead.max_chunks(obj.chunk_size).max(base))
    }

    /// The bytes of `range` (validated against the object's size) as a stream, with chunk
    /// fetches started ahead of the reader (see [`Ahead`]). `first` is the already-fetched first
    /// chunk, if any.
    pub fn stream(
        self: &Arc<Self>,
        obj: Arc<ObjectHandle>,
        range: Range<u64>,
        first: Option<Bytes>,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let pieces: Vec<(u64, Range<usize>)> = obj.layout().pieces(range).collect();
        let window = self.start_window(&obj);
        let max = self.readahead.max_chunks(obj.chunk_size).max(window);
        let learned = (self.learned.clone(), obj.version.bucket.clone());
        let this = self.clone();
        let fetch = move |index: u64, sub: Range<usize>, ready: Option<Bytes>| {
            let this = this.clone();
            let obj = obj.clone();
            async move {
                let chunk = match ready {
                    Some(b) => b,
                    None => this.chunk(&obj, index).await.map_err(|e| io::Error::other(e.to_string()))?,
                };
                if chunk.len() < sub.end {
                    return Err(io::Error::other(format!(
                        "chunk {index} of {}/{} is {} bytes, expected at least {}",
                        obj.version.bucket,
                        obj.version.key,
                        chunk.len(),
                        sub.end
                    )));
                }
                Metrics::add(&this.metrics.bytes_served, sub.len() as u64);
                this.metrics.hot.record(&obj.version.bucket, &obj.version.key, sub.len() as u64);
                Ok(chunk.slice(sub))
            }
        };
        Ahead::new(pieces, first, fetch, window, max, Some(learned))
    }
}

/// Chunk `q` from the holders its owner handed this node to (in turn, each answer checked
/// against the owner's digest), or from the owner again (`direct`) when none of them could serve
/// it. Not hedged to other nodes: they would read the origin a second time.
async fn from_holders(
    cluster: &Cluster,
    metrics: &Metrics,
    owner: &cairn_core::cluster::NodeEntry,
    q: &ChunkQuery<'_>,
    holders: Vec<String>,
    digest: u64,
) -> Result<Bytes, PeerError> {
    let mut failed: Vec<String> = Vec::new();
    for holder in holders {
        if holder == cluster.node_id {
            continue;
        }
        let Some(entry) = cluster.node(&holder) else { continue };
        match cluster.get_from_holder(&entry, q).await {
            Ok(b) if cairn_core::fanout::digest(&b) == digest => {
                Metrics::add(&metrics.peer_ingress_holder, b.len() as u64);
                return Ok(b);
            }
            Ok(_) => {
                Metrics::add(&metrics.p2p_bad_copies, 1);
                tracing::warn!(%holder, index = q.index, key = q.key, "a holder sent bytes that do not match the owner's digest");
            }
            Err(e) => tracing::debug!(%holder, error = ?e, "holder could not serve the chunk"),
        }
        Metrics::add(&metrics.p2p_reselections, 1);
        failed.push(holder);
    }
    let bad: Vec<&str> = failed.iter().map(String::as_str).collect();
    match cluster.get_chunk_from_owner(owner, q, true, &bad).await? {
        ChunkAnswer::Bytes(b) => {
            Metrics::add(&metrics.peer_ingress_owner, b.len() as u64);
            Ok(b)
        }
        ChunkAnswer::Holders(..) => {
            Err(PeerError::Unavailable(format!("owner {} did not serve a direct request", owner.id)))
        }
    }
}

/// Asks `peers` for a chunk in ranking order ([`cairn_client::hedge::ask_in_turn`]): a peer that
/// fails is marked suspect and the next is asked at once; one that has not answered within the
/// cluster's hedge delay (derived from how long peers usually take) is left running while the
/// next one is asked too. `None`: no peer answered (the caller reads the origin).
async fn hedged<'a, T, F, Fut>(
    cluster: &Cluster,
    metrics: &Metrics,
    peers: &[&'a cairn_core::cluster::NodeEntry],
    id: ChunkId,
    ask: F,
) -> Option<Result<(T, &'a cairn_core::cluster::NodeEntry), OriginError>>
where
    F: Fn(&'a cairn_core::cluster::NodeEntry) -> Fut,
    Fut: std::future::Future<Output = Result<T, PeerError>> + Send,
    T: Send,
{
    use cairn_client::hedge::{Verdict, ask_in_turn};
    // Boxed: the unboxed future's type trips the compiler's `Send` check across the generic race.
    let ask = |node: &'a cairn_core::cluster::NodeEntry| -> futures::future::BoxFuture<'_, Result<T, PeerError>> {
        Box::pin(ask(node))
    };
    let asked = ask_in_turn(
        peers.to_vec(),
        || cluster.hedge_delay(),
        ask,
        |node: &&'a cairn_core::cluster::NodeEntry, e: PeerError| match e {
            PeerError::Origin(e) => Verdict::Final(PeerError::Origin(e)),
            PeerError::Unavailable(m) => {
                tracing::warn!(peer = %node.id, error = %m, chunk = %id, "peer failed; trying the next node");
                cluster.mark_suspect(&node.id);
                Verdict::Next(PeerError::Unavailable(m))
            }
        },
        |node: &&'a cairn_core::cluster::NodeEntry| {
            Metrics::add(&metrics.peer_hedges, 1);
            tracing::debug!(peer = %node.id, chunk = %id, "a peer is slow; asking the next node too");
        },
    )
    .await;
    match asked {
        Ok((b, node, took)) => {
            cluster.observe(took);
            Some(Ok((b, node)))
        }
        Err(Some(PeerError::Origin(e))) => Some(Err(e)),
        Err(_) => None,
    }
}

/// One origin range GET of one chunk, pinned to the object's version, stored on success.
struct OriginFetch {
    store: Arc<ChunkStore>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    origin: Arc<dyn Origin>,
    version: ObjectVersion,
    range: Range<u64>,
    id: ChunkId,
    chunk_size: u64,
    index: u64,
    cluster: Option<Arc<Cluster>>,
    journal: Arc<Journal>,
}

/// Reads a journaled chunk (verified) and keeps a copy in RAM for the next reader.
async fn journaled(journal: &Arc<Journal>, store: &ChunkStore, id: ChunkId) -> Option<Bytes> {
    let (record, index) = journal.find(id)?;
    let j = journal.clone();
    match tokio::task::spawn_blocking(move || j.read_chunk(&record, index)).await {
        Ok(Ok(b)) => {
            store.insert_ram(id, b.clone());
            Some(b)
        }
        // Uploaded and removed since it was found: the caller reads it from the origin.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(Err(e)) => {
            tracing::error!(chunk = %id, error = %e, "journaled chunk unreadable");
            None
        }
        Err(_) => None,
    }
}

impl OriginFetch {
    /// A chunk of a write not yet in the origin comes from its writer, which holds all of it.
    async fn fetch_from_writer(self, writer: &str) -> ChunkResult {
        let gone = OriginError::new(
            cairn_origin::ErrorKind::VersionChanged,
            format!("write {} is no longer pending here", self.version.version),
        );
        let Some(cluster) = &self.cluster else { return Err(Arc::new(gone)) };
        let q = ChunkQuery::new(&self.version, self.chunk_size, self.index);
        let mut from_writer = gone;
        if cluster.node_id != writer {
            from_writer = match cluster.node(writer) {
                None => OriginError::new(
                    cairn_origin::ErrorKind::Backend,
                    format!("writer {writer} of a pending object is not in the map"),
                ),
                Some(node) => match cluster.get_chunk(&node, &q).await {
                    Ok(b) => {
                        self.store.insert(self.id, b.clone());
                        return Ok(b);
                    }
                    Err(PeerError::Origin(e)) => e,
                    Err(PeerError::Unavailable(m)) => OriginError::new(cairn_origin::ErrorKind::Backend, m),
                },
            };
        }
        // The writer is gone or lost the write: its replica holders (the chunk's first nodes
        // other than the writer) hold it; asked for what they hold only, never to fetch it.
        for holder in cluster.ranking(self.id.0 as u64, REPLICA_CANDIDATES) {
            if holder.id == writer || holder.id == cluster.node_id {
                continue;
            }
            if let Ok(b) = cluster.get_held_chunk(&holder, &q).await {
                self.store.insert(self.id, b.clone());
                return Ok(b);
            }
        }
        Err(Arc::new(from_writer))
    }

    async fn run(self) -> ChunkResult {
        // Filled between our miss and our turn as leader.
        if let Some(b) = self.store.peek_ram(self.id) {
            return Ok(b);
        }
        let mut if_match = self.version.version.clone();
        if let Some((wid, writer)) = cairn_core::chunk::parse_pending_version(&self.version.version) {
            // Uploaded by this node: the same bytes are in the origin under the version the
            // upload produced.
            match self.journal.uploaded_as(wid) {
                Some(etag) => if_match = etag,
                None => {
                    let writer = writer.to_owned();
                    return self.fetch_from_writer(&writer).await;
                }
            }
        }
        let _permit = self.permits.acquire_owned().await;
        Metrics::add(&self.metrics.origin_get_range, 1);
        let v = &self.version;
        match self.origin.get_range(&v.bucket, &v.key, self.range.clone(), &if_match).await {
            Ok(b) => {
                Metrics::add(&self.metrics.origin_bytes, b.len() as u64);
                self.store.insert(self.id, b.clone());
                Ok(b)
            }
            Err(e) => {
                Metrics::add(&self.metrics.origin_errors, 1);
                tracing::debug!(chunk = %self.id, error = %e, "origin chunk fetch failed");
                Err(Arc::new(e))
            }
        }
    }
}
