//! Asking candidates in turn for one thing (a chunk), the way both the node and the client do:
//! a candidate that fails is dropped and the next asked at once; one that has not answered
//! within the hedge delay is left running while the next is asked too, and the first answer
//! wins. So one frozen or stalled node delays a read by about the hedge delay, not until it is
//! declared dead.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// What a failed ask means.
pub enum Verdict<E> {
    /// The answer would be the same anywhere (the object is gone, access denied): stop.
    Final(E),
    /// This candidate could not answer (unreachable, overloaded): ask the next.
    Next(E),
}

/// Asks `candidates` in order. `delay` is asked for the hedge delay each time one is needed;
/// `judge` sees every failure (to mark the candidate suspect, to log) and says whether to go on;
/// `hedging` sees each candidate asked because an earlier one was slow. The answer, who gave it
/// and how long it took; `Err(None)` when there was nobody to ask, `Err(Some(e))` with the last
/// failure otherwise.
pub async fn ask_in_turn<N: Clone, T, E, Fut>(
    candidates: impl IntoIterator<Item = N>,
    delay: impl Fn() -> Duration,
    ask: impl Fn(N) -> Fut,
    judge: impl Fn(&N, E) -> Verdict<E>,
    hedging: impl Fn(&N),
) -> Result<(T, N, Duration), Option<E>>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut next = candidates.into_iter().peekable();
    let mut running = FuturesUnordered::new();
    let start = |node: N| {
        let fut = ask(node.clone());
        async move {
            let started = Instant::now();
            let r = fut.await;
            (node, started.elapsed(), r)
        }
    };
    if let Some(n) = next.next() {
        running.push(start(n));
    }
    let mut last = None;
    loop {
        if running.is_empty() {
            return Err(last);
        }
        // While someone is left to ask, a request slower than the hedge delay starts the next
        // one; then the running requests are waited for (each bounded by its own deadline).
        let done = if next.peek().is_some() {
            tokio::select! {
                done = running.next() => done,
                _ = tokio::time::sleep(delay()) => {
                    if let Some(n) = next.next() {
                        hedging(&n);
                        running.push(start(n));
                    }
                    continue;
                }
            }
        } else {
            running.next().await
        };
        let Some((node, took, r)) = done else { continue };
        match r {
            Ok(v) => return Ok((v, node, took)),
            Err(e) => match judge(&node, e) {
                Verdict::Final(e) => return Err(Some(e)),
                Verdict::Next(e) => {
                    last = Some(e);
                    if let Some(n) = next.next() {
                        running.push(start(n));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(node: u32) -> Result<u32, String> {
        match node {
            // Frozen: answers after a minute.
            0 => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(0)
            }
            1 => Err("refused".into()),
            2 => Err("gone".into()),
            n => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(n)
            }
        }
    }

    fn judge(_: &u32, e: String) -> Verdict<String> {
        if e == "gone" { Verdict::Final(e) } else { Verdict::Next(e) }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_candidate_costs_one_hedge_delay_and_a_failed_one_nothing() {
        let t = tokio::time::Instant::now();
        let hedges = std::sync::atomic::AtomicU32::new(0);
        let r = ask_in_turn(
            [0u32, 1, 3],
            || Duration::from_millis(200),
            ask,
            judge,
            |_| {
                hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        )
        .await;
        let (v, node, _) = r.expect("answered");
        assert_eq!((v, node), (3, 3));
        assert_eq!(hedges.load(std::sync::atomic::Ordering::Relaxed), 1, "only the frozen one was hedged");
        assert!(t.elapsed() < Duration::from_millis(250), "took {:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_stops_and_no_candidate_is_none() {
        let r = ask_in_turn([1u32, 2, 3], || Duration::from_secs(1), ask, judge, |_| {}).await;
        assert_eq!(r.err(), Some(Some("gone".to_owned())));
        let r = ask_in_turn(Vec::<u32>::new(), || Duration::from_secs(1), ask, judge, |_| {}).await;
        assert_eq!(r.err(), Some(None));
        let r = ask_in_turn([1u32], || Duration::from_secs(1), ask, judge, |_| {}).await;
        assert_eq!(r.err(), Some(Some("refused".to_owned())));
    }
}
