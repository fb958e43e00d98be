//! Single-flight: concurrent requests for one key share one execution.
//!
//! The first caller (the leader) spawns the work as its own task, so a leader whose client goes
//! away does not cancel the fetch the others are waiting on. Later callers wait on the same
//! shared result. The entry is removed when the work completes.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self { inflight: self.inflight.clone() }
    }
}

impl<K, V> Default for SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self { inflight: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run is already in flight; returns the result and whether
    /// this call waited on someone else's run.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (fut, waited) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(f) => (f.clone(), true),
                None => {
                    let inflight = self.inflight.clone();
                    let k = key.clone();
                    let fut = work();
                    let handle = tokio::spawn(async move {
                        let v = fut.await;
                        inflight.lock().remove(&k);
                        v
                    });
                    let shared = async move {
                        match handle.await {
                            Ok(v) => v,
                            // The task only ends without a value if it panicked.
                            Err(e) => std::panic::resume_unwind(e.into_panic()),
                        }
                    }
                    .boxed()
                    .shared();
                    map.insert(key, shared.clone());
                    (shared, false)
                }
            }
        };
        (fut.await, waited)
    }

    /// The result of the run in flight for `key`, if there is one, without starting any.
    pub fn join(&self, key: &K) -> Option<impl Future<Output = V> + use<K, V>> {
        self.inflight.lock().get(key).cloned()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_run_once() {
        let sf: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let sf = sf.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                sf.run(7, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    42
                })
                .await
            }));
        }
        let mut waited = 0;
        for t in tasks {
            let (v, w) = t.await.expect("task");
            assert_eq!(v, 42);
            waited += w as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(waited, 49);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn leader_cancelled_work_continues() {
        let sf: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::default());
        let leader = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run(1, || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    5
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        leader.abort();
        let (v, waited) = sf.run(1, || async { 6 }).await;
        assert_eq!((v, waited), (5, true));
    }
}
