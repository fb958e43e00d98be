//! Chunked read-through: cache lookup, single-flight origin fetch, readahead, streaming.
//!
//! Every origin fetch is a range GET pinned to the object's version (`If-Match`), so a chunk stored
//! under a version's chunk id holds bytes of that version and no other.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{ChunkId, ChunkLayout, ObjectVersion};
use cairn_origin::{Error as OriginError, Origin};
use cairn_store::ChunkStore;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::singleflight::SingleFlight;

/// Objects whose access pattern is tracked for sequential readahead at once.
const MAX_TRACKED_READERS: usize = 10_000;

pub type ChunkResult = Result<Bytes, Arc<OriginError>>;

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
    flights: SingleFlight<ChunkId, ChunkResult>,
    fetch_permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    readahead: usize,
    /// Last chunk read per object version, to recognise sequential readers.
    last_read: Mutex<HashMap<ObjectVersion, u64>>,
}

impl ReadThrough {
    pub fn new(store: Arc<ChunkStore>, metrics: Arc<Metrics>, readahead: usize, max_fetches: usize) -> Self {
        Self {
            store,
            flights: SingleFlight::default(),
            fetch_permits: Arc::new(Semaphore::new(max_fetches)),
            metrics,
            readahead,
            last_read: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// One chunk: from the cache, or fetched once however many ask at the same time.
    pub async fn chunk(&self, obj: &ObjectHandle, index: u64) -> ChunkResult {
        let id = obj.chunk_id(index);
        if let Some((b, _)) = self.store.get(id).await {
            return Ok(b);
        }
        self.fetch(obj, index, id).await
    }

    async fn fetch(&self, obj: &ObjectHandle, index: u64, id: ChunkId) -> ChunkResult {
        let store = self.store.clone();
        let permits = self.fetch_permits.clone();
        let metrics = self.metrics.clone();
        let origin = obj.origin.clone();
        let v = obj.version.clone();
        let range = obj.layout().chunk_range(index);
        let (result, waited) = self
            .flights
            .run(id, move || async move {
                // Filled between our miss and our turn as leader.
                if let Some(b) = store.peek_ram(id) {
                    return Ok(b);
                }
                let _permit = permits.acquire_owned().await;
                Metrics::add(&metrics.origin_get_range, 1);
                match origin.get_range(&v.bucket, &v.key, range, &v.version).await {
                    Ok(b) => {
                        Metrics::add(&metrics.origin_bytes, b.len() as u64);
                        store.insert(id, b.clone());
                        Ok(b)
                    }
                    Err(e) => {
                        Metrics::add(&metrics.origin_errors, 1);
                        tracing::debug!(chunk = %id, error = %e, "origin chunk fetch failed");
                        Err(Arc::new(e))
                    }
                }
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
                let _ = this.fetch(&obj, index, id).await;
            });
        }
    }

    /// Records a read of chunks `first..=last`; if it continues the previous read of the same
    /// object, fetches the next `readahead` chunks in the background.
    pub fn note_read(self: &Arc<Self>, obj: &Arc<ObjectHandle>, first: u64, last: u64) {
        if self.readahead == 0 {
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
            self.prefetch(obj, last + 1..last + 1 + self.readahead as u64);
        }
    }

    /// The bytes of `range` (validated against the object's size) as a stream, keeping up to
    /// `readahead` chunk fetches in flight. `first` is the already-fetched first chunk, if any.
    pub fn stream(
        self: &Arc<Self>,
        obj: Arc<ObjectHandle>,
        range: Range<u64>,
        first: Option<Bytes>,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let pieces: Vec<(u64, Range<usize>)> = obj.layout().pieces(range).collect();
        let this = self.clone();
        let mut first = first;
        let window = self.readahead.max(1);
        futures::stream::iter(pieces.into_iter().enumerate())
            .map(move |(n, (index, sub))| {
                let this = this.clone();
                let obj = obj.clone();
                let ready = if n == 0 { first.take() } else { None };
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
                    Ok(chunk.slice(sub))
                }
            })
            .buffered(window)
    }
}
