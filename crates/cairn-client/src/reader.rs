//! A seekable reader of one object version: reads that follow each other stream through a
//! readahead window ([`crate::ahead::Ahead`]); a read somewhere else fetches just its bytes.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use cairn_core::ChunkLayout;
use futures::StreamExt;

use crate::ahead::Ahead;
use crate::{Client, Error, Frames, Stat};

type FetchFuture = Pin<Box<dyn Future<Output = Result<Frames, io::Error>> + Send + 'static>>;
type Fetch = Box<dyn FnMut(u64, Range<usize>, Option<Frames>) -> FetchFuture + Send + Unpin>;

/// A stream of the object from `at` on.
struct Sequential {
    /// Offset of the first byte of `buf`.
    at: u64,
    /// What is left of the piece being read, in the frames it arrived in.
    buf: VecDeque<Bytes>,
    ahead: Ahead<Fetch, Frames>,
}

/// A reader of one object at the version it was opened at.
pub struct Reader {
    client: Client,
    stat: Stat,
    pos: u64,
    /// Where the last read ended: a read that starts there is sequential and streams.
    last_end: Option<u64>,
    seq: Option<Sequential>,
}

impl Reader {
    pub(crate) fn new(client: Client, stat: Stat) -> Self {
        Self { client, stat, pos: 0, last_end: None, seq: None }
    }

    pub fn stat(&self) -> &Stat {
        &self.stat
    }

    pub fn size(&self) -> u64 {
        self.stat.size
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the position (past the end reads nothing).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    fn start_stream(&mut self) {
        let st = self.stat.clone();
        let layout = ChunkLayout::new(st.chunk_size.max(1), st.size);
        let pieces: Vec<(u64, Range<usize>)> = layout.pieces(self.pos..st.size).collect();
        let cfg = &self.client.inner.cfg.readahead;
        let max = cfg.max_chunks(st.chunk_size).max(1);
        let base = cfg.chunks.max(1).min(max);
        let learned = self.client.inner.learned.clone();
        let window = learned.lock().get(&st.bucket).copied().unwrap_or(base).clamp(base, max);
        let client = self.client.clone();
        let fetch: Fetch = Box::new(move |index, sub, _ready| {
            let (client, st) = (client.clone(), st.clone());
            Box::pin(async move { client.chunk_frames(&st, index, sub).await.map_err(Error::into_io) })
        });
        let ahead = Ahead::new(pieces, None, fetch, window, max, Some((learned, self.stat.bucket.clone())));
        self.seq = Some(Sequential { at: self.pos, buf: VecDeque::new(), ahead });
    }

    /// Up to `max` bytes from the position (fewer only at the end of the object or of a chunk),
    /// without a copy when the read streams.
    pub async fn read_bytes(&mut self, max: usize) -> Result<Bytes, Error> {
        if max == 0 || self.pos >= self.stat.size {
            return Ok(Bytes::new());
        }
        if self.seq.as_ref().is_some_and(|s| s.at != self.pos) {
            self.seq = None;
        }
        if self.seq.is_none() {
            if self.last_end != Some(self.pos) {
                // Not where the last read ended: just these bytes, no readahead.
                let end = self.pos.saturating_add(max as u64).min(self.stat.size);
                let b = self.client.read_at(&self.stat, self.pos..end).await?;
                self.advance(b.len());
                return Ok(b);
            }
            self.start_stream();
        }
        let s = self.seq.as_mut().expect("started above");
        while s.buf.front().is_none_or(Bytes::is_empty) {
            if s.buf.pop_front().is_some() {
                continue;
            }
            match s.ahead.next().await {
                Some(Ok(frames)) => s.buf = frames.into(),
                Some(Err(e)) => {
                    self.seq = None;
                    return Err(Error::from_io(e));
                }
                None => return Ok(Bytes::new()),
            }
        }
        let front = s.buf.front_mut().expect("a frame with bytes");
        let n = max.min(front.len());
        let out = front.split_to(n);
        s.at += n as u64;
        self.advance(n);
        Ok(out)
    }

    /// Fills `buf` from the position (short only at the end of the object); how many bytes.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut at = 0;
        while at < buf.len() {
            let b = self.read_bytes(buf.len() - at).await?;
            if b.is_empty() {
                break;
            }
            buf[at..at + b.len()].copy_from_slice(&b);
            at += b.len();
        }
        Ok(at)
    }

    /// The rest of the object from the position.
    pub async fn read_to_end(&mut self) -> Result<Bytes, Error> {
        let end = self.stat.size;
        if self.pos >= end {
            return Ok(Bytes::new());
        }
        let mut out = bytes::BytesMut::with_capacity((end - self.pos) as usize);
        self.last_end = Some(self.pos);
        loop {
            let b = self.read_bytes(usize::MAX).await?;
            if b.is_empty() {
                return Ok(out.freeze());
            }
            out.extend_from_slice(&b);
        }
    }

    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        self.last_end = Some(self.pos);
    }
}
