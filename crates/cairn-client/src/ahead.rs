//! A sequential reader's readahead: the chunk fetches of one read, started ahead of the reader
//! in a window that adapts to how far the source is (see [`Ahead`]). The node's S3 reads and the
//! client's readers use the same window.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;

/// Where a read reports the window it ended with: the per-origin map and its bucket's key.
pub type Learned = (Arc<Mutex<HashMap<String, usize>>>, String);

/// The chunk fetches of one read, in order, started ahead of the reader.
///
/// A fixed window that keeps loopback busy starves a reader of a distant origin: with 30 ms to
/// the first byte and 60 MB/s per connection, 8 fetches of 8 MiB deliver ~390 MB/s however fast
/// the reader is. So the window grows by half each time the reader finds the next chunk not
/// there yet (it waits on a fetch), up to `cache.readahead_max`, and never grows for a reader
/// that is slower than its fetches. The window a read ends with is remembered for its origin, so
/// the next reader starts there. Each fetch runs as a task of its own, so it makes progress
/// whether or not the reader is polling (a fetch only polled when the reader asks would not be
/// ahead of it); the tasks still running when the read ends are aborted. The first piece, when
/// the caller already holds its chunk (`first`, a hit), is polled in the reader's own task and
/// becomes a task only if it cannot finish at once: a small ranged hit costs no task, no wake-up
/// of another thread and no context switch, which were more than its own work.
pub struct Ahead<F, T = Bytes> {
    pieces: std::iter::Enumerate<std::vec::IntoIter<(u64, Range<usize>)>>,
    first: Option<T>,
    fetch: F,
    inflight: std::collections::VecDeque<Fetch<T>>,
    window: usize,
    max: usize,
    /// The piece the reader last had to wait for (grows the window once per piece).
    waited_on: Option<usize>,
    /// Pieces handed to the reader so far.
    taken: usize,
    learned: Option<Learned>,
}

impl<F, Fut, T> Ahead<F, T>
where
    F: FnMut(u64, Range<usize>, Option<T>) -> Fut,
    Fut: Future<Output = Result<T, io::Error>> + Send + 'static,
    T: Send + 'static,
{
    pub fn new(
        pieces: Vec<(u64, Range<usize>)>,
        first: Option<T>,
        fetch: F,
        window: usize,
        max: usize,
        learned: Option<Learned>,
    ) -> Self {
        Self {
            pieces: pieces.into_iter().enumerate(),
            first,
            fetch,
            inflight: std::collections::VecDeque::new(),
            window,
            max,
            waited_on: None,
            taken: 0,
            learned,
        }
    }

    fn fill(&mut self, cx: &mut std::task::Context<'_>) {
        while self.inflight.len() < self.window {
            let Some((n, (index, sub))) = self.pieces.next() else { return };
            let ready = if n == 0 { self.first.take() } else { None };
            let inline = ready.is_some();
            let mut fetch = Box::pin((self.fetch)(index, sub, ready));
            if !inline {
                self.inflight.push_back(Fetch::Task(tokio::spawn(fetch)));
                continue;
            }
            // A stale registration of the reader's waker, left by this poll when the fetch then
            // moves to its task, costs at most one spurious wake-up of the reader.
            self.inflight.push_back(match fetch.as_mut().poll(cx) {
                std::task::Poll::Ready(done) => Fetch::Done(Some(done)),
                std::task::Poll::Pending => Fetch::Task(tokio::spawn(fetch)),
            });
        }
    }
}

/// One fetch of the window: finished when it was first polled, or running as a task.
enum Fetch<T> {
    Done(Option<Result<T, io::Error>>),
    Task(tokio::task::JoinHandle<Result<T, io::Error>>),
}

impl<T> Fetch<T> {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<T, io::Error>> {
        match self {
            Self::Done(done) => {
                std::task::Poll::Ready(done.take().unwrap_or_else(|| Err(io::Error::other("chunk fetch taken twice"))))
            }
            Self::Task(task) => std::pin::Pin::new(task)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|e| Err(io::Error::other(format!("chunk fetch task: {e}"))))),
        }
    }
}

impl<F, Fut, T> Stream for Ahead<F, T>
where
    F: FnMut(u64, Range<usize>, Option<T>) -> Fut + Unpin,
    Fut: Future<Output = Result<T, io::Error>> + Send + 'static,
    T: Send + Unpin + 'static,
{
    type Item = Result<T, io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        this.fill(cx);
        let Some(front) = this.inflight.front_mut() else { return Poll::Ready(None) };
        match front.poll(cx) {
            Poll::Ready(done) => {
                this.inflight.pop_front();
                this.taken += 1;
                this.fill(cx);
                Poll::Ready(Some(done))
            }
            Poll::Pending => {
                // The reader waits for piece `taken`. The first piece always waits (nothing was
                // ahead of it); later ones mean the fetches are slower than the reader.
                if this.taken > 0 && this.waited_on != Some(this.taken) && this.window < this.max {
                    this.waited_on = Some(this.taken);
                    this.window = (this.window + this.window.div_ceil(2)).min(this.max);
                    this.fill(cx);
                }
                Poll::Pending
            }
        }
    }
}

impl<F, T> Drop for Ahead<F, T> {
    fn drop(&mut self) {
        for fetch in &self.inflight {
            if let Fetch::Task(task) = fetch {
                task.abort();
            }
        }
        // Only reads long enough to have tested the window teach the next reader: the window it
        // grew to, or a quarter less when it never had to wait (the origin got faster, or the
        // readers slower).
        if self.taken > self.window
            && let Some((learned, bucket)) = self.learned.take()
        {
            let keep = if self.waited_on.is_some() { self.window } else { self.window - self.window / 4 };
            learned.lock().insert(bucket, keep);
        }
    }
}

/// Bounds of a sequential reader's readahead.
#[derive(Clone, Copy, Debug)]
pub struct Readahead {
    /// The window a reader starts with, in chunks (`cache.readahead_chunks`; 0: no readahead
    /// across requests, one fetch at a time within one).
    pub chunks: usize,
    /// The most one reader's window may hold, in bytes (`cache.readahead_max`).
    pub max_bytes: u64,
}

impl Readahead {
    pub fn max_chunks(&self, chunk_size: u64) -> usize {
        (self.max_bytes / chunk_size.max(1)).max(1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    /// Reads `n` pieces whose fetches take `fetch_ms`, the reader spending `read_ms` on each;
    /// returns the largest window the read used and the window it taught its origin.
    async fn read(n: u64, fetch_ms: u64, read_ms: u64, window: usize, max: usize) -> (usize, usize) {
        let learned = Arc::new(Mutex::new(HashMap::new()));
        let fetch = move |index: u64, _sub: Range<usize>, _ready: Option<Bytes>| async move {
            tokio::time::sleep(Duration::from_millis(fetch_ms)).await;
            Ok(Bytes::from(index.to_le_bytes().to_vec()))
        };
        let pieces = (0..n).map(|i| (i, 0..8)).collect();
        let mut ahead = Ahead::new(pieces, None, fetch, window, max, Some((learned.clone(), "b".to_owned())));
        let (mut expect, mut widest) = (0u64, 0usize);
        while let Some(piece) = ahead.next().await {
            assert_eq!(piece.expect("fetched"), Bytes::from(expect.to_le_bytes().to_vec()), "pieces come in order");
            expect += 1;
            widest = widest.max(ahead.window);
            assert!(ahead.inflight.len() <= ahead.window, "never more fetches than the window");
            tokio::time::sleep(Duration::from_millis(read_ms)).await;
        }
        assert_eq!(expect, n);
        drop(ahead);
        let taught = learned.lock().get("b").copied().unwrap_or(0);
        (widest, taught)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_faster_than_its_fetches_deepens_the_window_up_to_the_bound() {
        // 170 ms per fetch (30 ms to the first byte, 8 MiB at 60 MB/s), a reader taking 5 ms.
        let (widest, taught) = read(200, 170, 5, 8, 32).await;
        assert_eq!(widest, 32, "the window grows to its bound");
        assert_eq!(taught, 32, "and the origin's next reader starts there");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_slower_than_its_fetches_keeps_the_starting_window() {
        let (widest, taught) = read(100, 5, 50, 8, 32).await;
        assert_eq!(widest, 8, "the window of a reader that never waited does not grow");
        assert_eq!(taught, 6, "a window never waited on shrinks by a quarter for the next reader");
    }
}
