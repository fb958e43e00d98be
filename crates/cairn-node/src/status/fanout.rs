//! Asking a bounded number of members at once, each within a deadline: how the status page
//! gathers figures from other nodes on demand. Nothing here polls: one call asks at most `limit`
//! members, `concurrency` at a time, and a member that does not answer in `timeout` is reported
//! as unreachable rather than waited for.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;

/// What one member answered, or why it did not.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<R> {
    Ok(R),
    Failed(String),
    TimedOut(Duration),
}

/// Asks the first `limit` of `targets` with `ask`, at most `concurrency` at a time, each given
/// `timeout`. The answers come back in the order of `targets`; targets past `limit` are not asked.
pub async fn gather<T, R, F, Fut>(
    targets: Vec<T>,
    limit: usize,
    concurrency: usize,
    timeout: Duration,
    ask: F,
) -> Vec<(T, Answer<R>)>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, String>>,
{
    let asks = targets.into_iter().take(limit).map(|t| {
        let fut = ask(t.clone());
        async move {
            let answer = match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(r)) => Answer::Ok(r),
                Ok(Err(e)) => Answer::Failed(e),
                Err(_) => Answer::TimedOut(timeout),
            };
            (t, answer)
        }
    });
    futures::stream::iter(asks).buffered(concurrency.max(1)).collect().await
}

/// The members to ask for detail: those named first (the nodes a page links to), then the ones
/// that need attention, then the rest in `order` (a shuffle, so that repeated calls see
/// different members); each once, at most `limit` in all.
pub fn pick(named: &[String], attention: &[String], rest: &[String], limit: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(limit);
    for id in named.iter().chain(attention).chain(rest) {
        if out.len() == limit {
            break;
        }
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn asks_at_most_limit_members_in_order() {
        let asked = Arc::new(AtomicUsize::new(0));
        let targets: Vec<u32> = (0..100).collect();
        let a = asked.clone();
        let answers = gather(targets, 5, 2, Duration::from_secs(1), move |t| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Ok::<u32, String>(t * 10)
            }
        })
        .await;
        assert_eq!(asked.load(Ordering::SeqCst), 5);
        let got: Vec<(u32, Answer<u32>)> = answers;
        assert_eq!(got, (0..5).map(|t| (t, Answer::Ok(t * 10))).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn never_more_than_concurrency_in_flight() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (now.clone(), peak.clone());
        let answers = gather((0..20).collect::<Vec<u32>>(), 20, 3, Duration::from_secs(5), move |_| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(inflight, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        })
        .await;
        assert_eq!(answers.len(), 20);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_silent_member_times_out_and_the_others_still_answer() {
        let started = std::time::Instant::now();
        let answers = gather(vec!["up", "frozen", "broken"], 10, 10, Duration::from_millis(300), |t| async move {
            match t {
                "frozen" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(0)
                }
                "broken" => Err("connection refused".to_string()),
                _ => Ok(1),
            }
        })
        .await;
        assert_eq!(
            answers,
            vec![
                ("up", Answer::Ok(1)),
                ("frozen", Answer::TimedOut(Duration::from_millis(300))),
                ("broken", Answer::Failed("connection refused".into())),
            ]
        );
        assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    }

    #[test]
    fn pick_takes_named_then_attention_then_the_rest_once_each() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let picked = pick(&s(&["n7"]), &s(&["n3", "n7"]), &s(&["n1", "n3", "n2", "n4"]), 4);
        assert_eq!(picked, s(&["n7", "n3", "n1", "n2"]));
        assert_eq!(pick(&[], &[], &s(&["a", "b"]), 0), Vec::<String>::new());
    }
}
