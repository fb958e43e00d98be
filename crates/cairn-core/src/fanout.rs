//! Peer-to-peer fan-out of hot chunks: the decision a chunk's owner takes for each request.
//!
//! The owner of a chunk is its tracker. It remembers, per chunk, the nodes that asked it for the
//! chunk recently (they hold a copy, or are about to). While the owner is already sending the
//! chunk to someone (or has sent it `direct_budget` times within `holder_ttl`), a new request is
//! answered with a few of those holders instead of the bytes, least loaded first, and the
//! requester is recorded as a holder in turn. Copies spread as a tree whose fan-out is bounded by
//! `max_children`, so no node sends more than a few copies of a chunk however many nodes ask,
//! and the owner reads the origin once.
//!
//! A requester asks the holders it was given in turn (a holder that is still receiving the chunk
//! answers once it has it), verifies the bytes against the owner's digest, and comes back to the
//! owner with `direct` set when none could serve it; a holder that failed or sent wrong bytes is
//! reported and forgotten. Requests are never forwarded: a holder serves from what it holds or
//! is receiving, or says it does not.
//!
//! This module is pure (time comes in as milliseconds), so the simulator (`cairn-sim fanout`)
//! drives the same decisions as the node.

use std::collections::HashMap;

/// Tuning of the tracker.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// Copies of one chunk the owner sends itself within `holder_ttl_ms` before handing
    /// requesters to holders.
    pub direct_budget: u32,
    /// Requesters handed to one holder within `holder_ttl_ms`.
    pub max_children: u32,
    /// Holders named in one answer (the requester tries them in order).
    pub holders_per_answer: usize,
    /// Holders remembered per chunk (enough to keep a herd of thousands breadth-first).
    pub holders_per_chunk: usize,
    /// Holders remembered over all chunks (the tracker's memory bound).
    pub max_holders: usize,
    /// How long a holder is believed to keep its copy.
    pub holder_ttl_ms: u64,
    /// Chunks tracked at once (least recently requested forgotten first).
    pub tracked_chunks: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            direct_budget: 1,
            max_children: 2,
            holders_per_answer: 3,
            holders_per_chunk: 1024,
            max_holders: 1 << 20,
            holder_ttl_ms: 30_000,
            tracked_chunks: 65_536,
        }
    }
}

/// What the owner does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<N> {
    /// Send the bytes (call [`Tracker::sent`] when done).
    Serve,
    /// Answer with these holders instead, in the order to try them.
    Redirect(Vec<N>),
}

#[derive(Clone, Debug)]
struct Holder<N> {
    node: N,
    since_ms: u64,
    children: u32,
}

#[derive(Debug)]
struct Track<N> {
    holders: Vec<Holder<N>>,
    /// Copies the owner is sending right now.
    sending: u32,
    /// When the owner sent its recent direct copies (within the ttl).
    direct_ms: Vec<u64>,
    last_ms: u64,
    /// The owner's digest of the chunk, once known.
    digest: Option<u64>,
}

impl<N> Track<N> {
    fn new(now_ms: u64) -> Self {
        Self { holders: Vec::new(), sending: 0, direct_ms: Vec::new(), last_ms: now_ms, digest: None }
    }
}

/// The owner's per-chunk record of recent holders. `K` identifies a chunk, `N` a node.
pub struct Tracker<K, N> {
    cfg: FanoutConfig,
    chunks: HashMap<K, Track<N>>,
    /// Holders over all chunks.
    holders: usize,
}

impl<K: std::hash::Hash + Eq + Clone, N: Clone + PartialEq> Tracker<K, N> {
    pub fn new(cfg: FanoutConfig) -> Self {
        Self { cfg, chunks: HashMap::new(), holders: 0 }
    }

    pub fn config(&self) -> &FanoutConfig {
        &self.cfg
    }

    /// Chunks tracked now.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn track(&mut self, chunk: &K, now_ms: u64) -> &mut Track<N> {
        if !self.chunks.contains_key(chunk)
            && (self.chunks.len() >= self.cfg.tracked_chunks || self.holders >= self.cfg.max_holders)
        {
            self.forget_oldest();
        }
        let t = self.chunks.entry(chunk.clone()).or_insert_with(|| Track::new(now_ms));
        t.last_ms = now_ms;
        let ttl = self.cfg.holder_ttl_ms;
        let before = t.holders.len();
        t.holders.retain(|h| now_ms.saturating_sub(h.since_ms) < ttl);
        t.direct_ms.retain(|&s| now_ms.saturating_sub(s) < ttl);
        self.holders -= before - t.holders.len();
        self.chunks.get_mut(chunk).expect("just inserted")
    }

    /// Drops the least recently requested eighth of the tracked chunks (amortised: one scan
    /// per many insertions).
    fn forget_oldest(&mut self) {
        let mut ages: Vec<u64> = self.chunks.values().map(|t| t.last_ms).collect();
        let drop = (ages.len() / 8).max(1);
        let (_, cut, _) = ages.select_nth_unstable(drop - 1);
        let cut = *cut;
        let mut left = drop;
        let mut forgotten = 0;
        self.chunks.retain(|_, t| {
            if left > 0 && t.last_ms <= cut && t.sending == 0 {
                left -= 1;
                forgotten += t.holders.len();
                false
            } else {
                true
            }
        });
        self.holders -= forgotten;
    }

    /// Decides what to do with `requester`'s request for `chunk`. `direct` is set by a requester
    /// that could not get the chunk from the holders it was given: it is always served.
    pub fn request(&mut self, chunk: &K, requester: &N, direct: bool, now_ms: u64) -> Decision<N> {
        let cfg = self.cfg.clone();
        let mut removed = 0;
        let t = self.track(chunk, now_ms);
        let before = t.holders.len();
        t.holders.retain(|h| &h.node != requester);
        removed += before - t.holders.len();
        let busy = t.sending > 0 || t.direct_ms.len() as u32 >= cfg.direct_budget;
        // Holders are kept in the order they came (the longest-standing first: the most likely to
        // have the whole chunk), and one is dropped once it has its `max_children`, so the first
        // few are the ones to name: filling them in turn keeps the tree breadth-first (depth
        // log(max_children) of the requesters) rather than a chain, in constant time.
        let named: Vec<usize> = if direct || !busy {
            Vec::new()
        } else {
            (0..t.holders.len())
                .filter(|&i| t.holders[i].children < cfg.max_children)
                .take(cfg.holders_per_answer)
                .collect()
        };
        let decision = if named.is_empty() {
            t.sending += 1;
            t.direct_ms.push(now_ms);
            Decision::Serve
        } else {
            let answer = named.iter().map(|&i| t.holders[i].node.clone()).collect();
            // Only the first is charged: the others are fallbacks.
            let first = named[0];
            t.holders[first].children += 1;
            if t.holders[first].children >= cfg.max_children {
                t.holders.remove(first);
                removed += 1;
            }
            Decision::Redirect(answer)
        };
        if t.holders.len() >= cfg.holders_per_chunk {
            // The oldest goes.
            t.holders.remove(0);
            removed += 1;
        }
        t.holders.push(Holder { node: requester.clone(), since_ms: now_ms, children: 0 });
        self.holders = self.holders + 1 - removed;
        decision
    }

    /// The owner finished sending a copy it decided to [`Serve`](Decision::Serve).
    pub fn sent(&mut self, chunk: &K) {
        if let Some(t) = self.chunks.get_mut(chunk) {
            t.sending = t.sending.saturating_sub(1);
        }
    }

    /// `node` failed to serve `chunk` (gone, busy or wrong bytes): it is not handed out again.
    pub fn forget_holder(&mut self, chunk: &K, node: &N) {
        if let Some(t) = self.chunks.get_mut(chunk) {
            let before = t.holders.len();
            t.holders.retain(|h| &h.node != node);
            self.holders -= before - t.holders.len();
        }
    }

    pub fn digest(&self, chunk: &K) -> Option<u64> {
        self.chunks.get(chunk).and_then(|t| t.digest)
    }

    pub fn set_digest(&mut self, chunk: &K, digest: u64) {
        if let Some(t) = self.chunks.get_mut(chunk) {
            t.digest = Some(digest);
        }
    }

    /// Holders recorded for `chunk` (for status and tests).
    pub fn holders(&self, chunk: &K) -> Vec<N> {
        self.chunks.get(chunk).map(|t| t.holders.iter().map(|h| h.node.clone()).collect()).unwrap_or_default()
    }
}

/// The digest a holder's bytes are checked against (xxh3-64 of the chunk).
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker<u32, u32> {
        Tracker::new(FanoutConfig::default())
    }

    #[test]
    fn a_lone_request_is_served() {
        let mut t = tracker();
        assert_eq!(t.request(&7, &1, false, 0), Decision::Serve);
        t.sent(&7);
        // Within the ttl the owner has spent its direct budget: the next goes to the holder.
        assert_eq!(t.request(&7, &2, false, 10), Decision::Redirect(vec![1]));
        // After the ttl the owner serves again (its holders are forgotten).
        assert_eq!(t.request(&7, &3, false, 40_000), Decision::Serve);
    }

    #[test]
    fn a_herd_forms_a_tree_with_bounded_fanout() {
        let mut t = tracker();
        let n = 1000u32;
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut served = 0;
        for r in 1..=n {
            match t.request(&0, &r, false, r as u64) {
                Decision::Serve => served += 1,
                Decision::Redirect(h) => {
                    assert!(!h.is_empty() && h.len() <= 3 && !h.contains(&r));
                    parent.insert(r, h[0]);
                }
            }
        }
        assert_eq!(served, 1, "the owner sends one copy while it is busy");
        let mut children: HashMap<u32, u32> = HashMap::new();
        for p in parent.values() {
            *children.entry(*p).or_default() += 1;
        }
        assert!(children.values().all(|&c| c <= 2), "{children:?}");
        // Depth stays logarithmic: parents are always earlier requesters.
        let depth = |mut r: u32| {
            let mut d = 0;
            while let Some(&p) = parent.get(&r) {
                assert!(p < r);
                r = p;
                d += 1;
            }
            d
        };
        assert!((1..=n).map(depth).max().is_some_and(|d| d <= 12));
    }

    #[test]
    fn direct_requests_and_bad_holders() {
        let mut t = tracker();
        assert_eq!(t.request(&0, &1, false, 0), Decision::Serve);
        assert_eq!(t.request(&0, &2, false, 1), Decision::Redirect(vec![1]));
        t.forget_holder(&0, &1);
        assert_eq!(t.request(&0, &3, false, 2), Decision::Redirect(vec![2]));
        assert_eq!(t.request(&0, &4, true, 3), Decision::Serve);
        assert_eq!(t.holders(&0), vec![2, 3, 4]);
    }

    #[test]
    fn tracked_chunks_are_bounded() {
        let mut t: Tracker<u32, u32> = Tracker::new(FanoutConfig { tracked_chunks: 100, ..Default::default() });
        for c in 0..1000 {
            t.request(&c, &1, false, c as u64);
            t.sent(&c);
        }
        assert!(t.len() <= 100);
        // The newest are kept.
        assert_eq!(t.holders(&999), vec![1]);
        let mut t: Tracker<u32, u32> =
            Tracker::new(FanoutConfig { max_holders: 500, holders_per_chunk: 50, ..Default::default() });
        for c in 0..100 {
            for r in 0..60 {
                if t.request(&c, &r, false, 0) == Decision::Serve {
                    t.sent(&c);
                }
            }
        }
        let total: usize = (0..100).map(|c| t.holders(&c).len()).sum();
        assert!(total <= 550, "{total}");
        assert_eq!(total, t.holders, "the running count agrees");
    }
}
