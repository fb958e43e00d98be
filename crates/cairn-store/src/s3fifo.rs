//! S3-FIFO eviction, weighted by bytes.
//!
//! Why S3-FIFO rather than LRU: cache traffic here is dominated by scans (a training epoch reads
//! every shard once, a checkpoint load reads every chunk once). Under LRU one scan flushes the hot
//! set. S3-FIFO (Yang et al., SOSP'23) admits new entries into a small FIFO (10% of capacity) and
//! promotes only those hit again while there into the main FIFO, so one-hit wonders leave quickly
//! and the hot set stays. A ghost queue of recently evicted keys sends re-requested keys straight
//! to main. Hits only bump a 2-bit counter: no list moves under a lock on the read path.
//!
//! The policy holds keys and weights only; the tiers keep the values.

use std::borrow::Borrow;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Share of the capacity given to the small (probationary) queue, in percent.
const SMALL_PERCENT: u64 = 10;
/// Highest value of an entry's access counter.
const MAX_FREQ: u8 = 3;
/// Ghost keys kept beyond the number of resident entries.
const GHOST_SLACK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Entry {
    weight: u64,
    freq: u8,
    queue: Queue,
    /// Distinguishes this residency from earlier ones of the same key still queued.
    generation: u64,
}

#[derive(Debug)]
pub struct S3Fifo<K> {
    capacity: u64,
    entries: HashMap<K, Entry>,
    small: VecDeque<(K, u64)>,
    main: VecDeque<(K, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<K>,
    ghost_set: HashSet<K>,
    next_generation: u64,
}

impl<K: Hash + Eq + Clone> S3Fifo<K> {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
            next_generation: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of all resident entries.
    pub fn used(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    /// Records a hit. Takes a borrowed key, so a lookup by `&[u8]` needs no owned copy.
    pub fn touch<Q: Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if let Some(e) = self.entries.get_mut(key) {
            e.freq = (e.freq + 1).min(MAX_FREQ);
        }
    }

    /// Inserts (or re-weighs) `key` and returns the keys evicted to make room. An entry heavier
    /// than the whole capacity is not admitted; it comes back as evicted.
    pub fn insert(&mut self, key: K, weight: u64) -> Vec<K> {
        if weight > self.capacity {
            self.remove(&key);
            return vec![key];
        }
        if let Some(e) = self.entries.get_mut(&key) {
            let old = e.weight;
            e.weight = weight;
            match e.queue {
                Queue::Small => self.small_bytes = self.small_bytes - old + weight,
                Queue::Main => self.main_bytes = self.main_bytes - old + weight,
            }
        } else {
            let queue = if self.ghost_set.remove(&key) { Queue::Main } else { Queue::Small };
            let generation = self.next_generation;
            self.next_generation += 1;
            match queue {
                Queue::Small => {
                    self.small.push_back((key.clone(), generation));
                    self.small_bytes += weight;
                }
                Queue::Main => {
                    self.main.push_back((key.clone(), generation));
                    self.main_bytes += weight;
                }
            }
            self.entries.insert(key.clone(), Entry { weight, freq: 0, queue, generation });
        }
        let mut evicted = Vec::new();
        while self.used() > self.capacity {
            match self.evict_one() {
                Some((k, _)) => evicted.push(k),
                None => break,
            }
        }
        debug_assert!(self.used() <= self.capacity);
        evicted
    }

    /// Changes the weight of a resident `key` in place (its queue and hits stay) and returns the
    /// keys evicted to make room; `None` when `key` is not resident or would not be admitted at
    /// `weight`, and nothing changed.
    pub fn reweigh<Q: Hash + Eq + ?Sized>(&mut self, key: &Q, weight: u64) -> Option<Vec<K>>
    where
        K: Borrow<Q>,
    {
        if weight > self.capacity {
            return None;
        }
        let e = self.entries.get_mut(key)?;
        let old = e.weight;
        e.weight = weight;
        match e.queue {
            Queue::Small => self.small_bytes = self.small_bytes - old + weight,
            Queue::Main => self.main_bytes = self.main_bytes - old + weight,
        }
        let mut evicted = Vec::new();
        while self.used() > self.capacity {
            match self.evict_one() {
                Some((k, _)) => evicted.push(k),
                None => break,
            }
        }
        Some(evicted)
    }

    /// Entries waiting in the two queues, stale ones included (for tests of their bound).
    pub fn queued(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Forgets `key`; returns whether it was resident.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        match self.entries.remove(key) {
            Some(e) => {
                match e.queue {
                    Queue::Small => self.small_bytes -= e.weight,
                    Queue::Main => self.main_bytes -= e.weight,
                }
                true
            }
            None => false,
        }
    }

    /// Evicts until at most `target` bytes are resident; returns the evicted keys.
    pub fn shrink_to(&mut self, target: u64) -> Vec<K> {
        let mut out = Vec::new();
        while self.used() > target {
            match self.evict_one() {
                Some((k, _)) => out.push(k),
                None => break,
            }
        }
        out
    }

    /// Evicts the next victim in S3-FIFO order; returns it with its weight.
    pub fn evict_next(&mut self) -> Option<(K, u64)> {
        self.evict_one()
    }

    fn evict_one(&mut self) -> Option<(K, u64)> {
        loop {
            // A share of what is resident: a disk tier held below its capacity by free space
            // still keeps its probation queue small, so hot entries in main outlive a scan.
            let small_target = self.capacity.min(self.used()) * SMALL_PERCENT / 100;
            let from_small = self.small_bytes > small_target || self.main_bytes == 0;
            if from_small {
                let (key, generation) = self.small.pop_front()?;
                let MapEntry::Occupied(mut slot) = self.entries.entry(key.clone()) else { continue };
                let e = slot.get_mut();
                if e.generation != generation || e.queue != Queue::Small {
                    continue;
                }
                if e.freq > 0 {
                    // Hit while on probation: promote.
                    e.freq = 0;
                    e.queue = Queue::Main;
                    self.small_bytes -= e.weight;
                    self.main_bytes += e.weight;
                    self.main.push_back((key, generation));
                    continue;
                }
                let e = slot.remove();
                self.small_bytes -= e.weight;
                self.remember_ghost(key.clone());
                return Some((key, e.weight));
            }
            let (key, generation) = self.main.pop_front()?;
            let MapEntry::Occupied(mut slot) = self.entries.entry(key.clone()) else { continue };
            let e = slot.get_mut();
            if e.generation != generation || e.queue != Queue::Main {
                continue;
            }
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((key, generation));
                continue;
            }
            let e = slot.remove();
            self.main_bytes -= e.weight;
            return Some((key, e.weight));
        }
    }

    fn remember_ghost(&mut self, key: K) {
        if self.ghost_set.insert(key.clone()) {
            self.ghost.push_back(key);
        }
        let cap = self.entries.len() + GHOST_SLACK;
        while self.ghost.len() > cap {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
        // Stale queue slots of removed keys are dropped lazily; bound them too.
        if self.small.len() + self.main.len() > 4 * self.entries.len() + GHOST_SLACK {
            let entries = &self.entries;
            self.small.retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g && e.queue == Queue::Small));
            self.main.retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g && e.queue == Queue::Main));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reweigh_changes_an_entry_in_place() {
        let mut p = S3Fifo::new(100);
        assert!(p.insert(1u8, 40).is_empty());
        assert!(p.insert(2u8, 40).is_empty());
        assert_eq!(p.reweigh(&1, 10), Some(Vec::new()));
        assert_eq!(p.used(), 50);
        assert_eq!(p.queued(), 2);
        // Past the capacity, it evicts as an insert does.
        let evicted = p.reweigh(&1, 70).unwrap_or_default();
        assert!(!evicted.is_empty());
        assert!(p.used() <= 100);
        // Not resident, or heavier than the whole capacity: nothing changes.
        assert_eq!(p.reweigh(&3, 10), None);
        let before = p.used();
        assert_eq!(p.reweigh(&2, 101), None);
        assert_eq!(p.used(), before);
    }
    use proptest::prelude::*;

    #[test]
    fn scan_does_not_flush_hot_set() {
        let mut c = S3Fifo::new(100);
        for k in 0..50u32 {
            c.insert(k, 1);
        }
        for _ in 0..3 {
            for k in 0..50u32 {
                c.touch(&k);
            }
        }
        // A one-pass scan of 1,000 cold keys.
        for k in 1000..2000u32 {
            c.insert(k, 1);
        }
        let hot_left = (0..50u32).filter(|k| c.contains(k)).count();
        assert!(hot_left >= 45, "only {hot_left} of 50 hot keys survived a scan");
    }

    #[test]
    fn evicting_below_capacity_keeps_the_hot_set() {
        // Far below its capacity (a disk tier held back by free space), eviction still takes
        // one-hit entries before hot ones.
        let mut c = S3Fifo::new(1_000_000);
        for k in 0..100u32 {
            c.insert(k, 1);
            if k < 10 {
                c.touch(&k);
            }
        }
        let victims: Vec<u32> = (0..50)
            .filter_map(|_| c.evict_next())
            .map(|(k, w)| {
                assert_eq!(w, 1);
                k
            })
            .collect();
        assert_eq!(victims.len(), 50);
        assert!((0..10u32).all(|k| c.contains(&k)), "hot keys were evicted: {victims:?}");
    }

    #[test]
    fn ghost_hit_goes_to_main() {
        let mut c = S3Fifo::new(10);
        c.insert(1u32, 1);
        for k in 100..120u32 {
            c.insert(k, 1);
        }
        assert!(!c.contains(&1));
        c.insert(1, 1);
        assert_eq!(c.entries[&1].queue, Queue::Main);
    }

    #[test]
    fn oversized_is_refused() {
        let mut c = S3Fifo::new(10);
        c.insert(1u32, 5);
        assert_eq!(c.insert(2, 11), vec![2]);
        assert!(c.contains(&1));
        assert_eq!(c.used(), 5);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u64),
        Touch(u8),
        Remove(u8),
        Shrink(u64),
        EvictNext,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40, 1u64..30).prop_map(|(k, w)| Op::Insert(k, w)),
            (0u8..40).prop_map(Op::Touch),
            (0u8..40).prop_map(Op::Remove),
            (0u64..200).prop_map(Op::Shrink),
            Just(Op::EvictNext),
        ]
    }

    proptest! {
        /// Reference model: a map of resident keys to weights. The policy may choose any victims,
        /// but its accounting must match the model exactly and never exceed the capacity.
        #[test]
        fn agrees_with_model(cap in 1u64..200, ops in proptest::collection::vec(op(), 1..300)) {
            let mut c = S3Fifo::new(cap);
            let mut model: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, w) => {
                        model.insert(k, w);
                        for e in c.insert(k, w) {
                            prop_assert!(model.remove(&e).is_some(), "evicted {e} not resident");
                        }
                    }
                    Op::Touch(k) => c.touch(&k),
                    Op::Remove(k) => prop_assert_eq!(c.remove(&k), model.remove(&k).is_some()),
                    Op::Shrink(t) => {
                        for e in c.shrink_to(t) {
                            prop_assert!(model.remove(&e).is_some());
                        }
                        prop_assert!(c.used() <= t);
                    }
                    Op::EvictNext => match c.evict_next() {
                        Some((k, w)) => prop_assert_eq!(model.remove(&k), Some(w)),
                        None => prop_assert!(model.is_empty()),
                    },
                }
                prop_assert!(c.used() <= cap);
                prop_assert_eq!(c.used(), model.values().sum::<u64>());
                prop_assert_eq!(c.len(), model.len());
                for k in model.keys() {
                    prop_assert!(c.contains(k));
                }
            }
        }
    }
}
