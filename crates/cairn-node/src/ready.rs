//! Readiness (`GET /readyz` on the admin port): whether this node should be sent clients.
//!
//! Ready means all of:
//! - the node is not leaving (a SIGTERM turns readiness off first, so load balancers and
//!   Kubernetes Services stop sending clients while pending uploads drain);
//! - in a gossip cluster, it has joined: it knows at least one other live member, or its seeds
//!   resolve to no address but its own (the first node of a pool);
//! - every origin answered its last probe: a HEAD of a key that need not exist, in the exposed
//!   bucket (NoSuchKey counts as an answer), or a listing of buckets in account mode. Probes run in
//!   the background every [`PROBE_EVERY`], so `/readyz` answers at once and a slow origin cannot
//!   pile up probe requests.
//!
//! Liveness (`/healthz`) says only that the process answers; it stays 200 while not ready, so an
//! unreachable origin makes Kubernetes take the node out of its Services, not restart it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_origin::ErrorKind;
use parking_lot::Mutex;

use crate::state::NodeState;

/// Interval between origin probes.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// Longest wait for one probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Key whose HEAD proves the origin answers (it need not exist).
const PROBE_KEY: &str = ".cairn-readiness-probe";

#[derive(Default)]
pub struct Readiness {
    leaving: AtomicBool,
    /// Per origin (in configuration order): `None` until its first probe answered, then the
    /// last outcome.
    origins: Mutex<Vec<Option<Result<(), String>>>>,
}

impl Readiness {
    pub fn set_leaving(&self) {
        self.leaving.store(true, Ordering::Relaxed);
    }

    /// Whether the node is ready, and one line per reason it is not (or "ready").
    pub fn report(&self, state: &NodeState) -> (bool, String) {
        let mut problems = Vec::new();
        if self.leaving.load(Ordering::Relaxed) {
            problems.push("leaving: this node is shutting down".to_owned());
        }
        if let Some(g) = state.cluster.as_ref().and_then(|c| c.gossip.get())
            && let Err(e) = g.joined()
        {
            problems.push(format!("membership: {e}"));
        }
        let probes = self.origins.lock();
        for (i, o) in state.origins.iter().enumerate() {
            match probes.get(i).cloned().flatten() {
                Some(Ok(())) => {}
                Some(Err(e)) => problems.push(format!("origin {}: {e}", o.config.url)),
                None => problems.push(format!("origin {}: not probed yet", o.config.url)),
            }
        }
        if problems.is_empty() { (true, "ready\n".to_owned()) } else { (false, problems.join("\n") + "\n") }
    }

    /// Probes every origin now, then every [`PROBE_EVERY`], for as long as the node runs.
    pub fn spawn_prober(state: &Arc<NodeState>) -> tokio::task::JoinHandle<()> {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut outcomes = Vec::with_capacity(state.origins.len());
                for o in &state.origins {
                    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe(o)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
                    };
                    if let Err(e) = &outcome {
                        tracing::warn!(origin = %o.config.url, error = %e, "origin probe failed: not ready");
                    }
                    outcomes.push(Some(outcome));
                }
                *state.readiness.origins.lock() = outcomes;
            }
        })
    }
}

async fn probe(o: &crate::state::OriginEntry) -> Result<(), String> {
    match &o.config.bucket {
        Some(bucket) => match o.origin.head(bucket, PROBE_KEY).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NoSuchKey => Ok(()),
            Err(e) => Err(e.message),
        },
        None => match o.origin.list_buckets().await {
            Ok(_) => Ok(()),
            // Cloud accounts cannot be listed by design here: nothing to probe without a bucket.
            Err(e) if e.kind == ErrorKind::Unsupported => Ok(()),
            Err(e) => Err(e.message),
        },
    }
}
