//! The cluster-wide member table: one record per (cell, node id), grouped into cells and each
//! cell into a fixed number of buckets, each with a digest, so that two nodes find where their
//! tables differ by comparing one digest per cell, then the buckets of a differing cell, and
//! exchange only those buckets' records (anti-entropy), never the whole table.
//!
//! Cells and buckets are shared (`Arc`) and copied on write: an update copies one bucket.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::Member;

/// Buckets per cell.
pub const BUCKETS: usize = 16;

/// A member's state in the cluster-wide table. Suspicion stays inside a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Alive,
    Dead,
}

/// What one node says about a member. Between two records of one (cell, node id), the newer
/// generation wins, then `Dead` over `Alive`; of two equal ones, the one a node had first stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<T> {
    pub member: T,
    pub status: Status,
    /// Unix milliseconds when the first node to report this state saw it.
    pub changed_ms: u64,
}

impl<T: Member> Record<T> {
    fn rank(&self) -> (u64, Status) {
        (self.member.generation(), self.status)
    }

    /// Hash of what the digest covers (not `changed_ms`, which nodes may disagree on).
    pub fn hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.member.node_id().as_bytes());
        h.update(&self.member.generation().to_le_bytes());
        h.update(&[self.status as u8, self.member.leaving() as u8]);
        h.digest()
    }
}

pub fn bucket_of(node_id: &str) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(node_id.as_bytes(), 0xb0c4) % BUCKETS as u64) as usize
}

#[derive(Clone, Debug)]
pub struct Bucket<T> {
    /// Sorted by node id.
    pub records: Vec<Record<T>>,
    pub digest: u64,
}

impl<T> Default for Bucket<T> {
    fn default() -> Self {
        Self { records: Vec::new(), digest: 0 }
    }
}

#[derive(Clone, Debug)]
pub struct Cell<T> {
    pub buckets: Vec<Arc<Bucket<T>>>,
    pub digest: u64,
    pub len: usize,
    /// Dead records (tombstones) in the cell.
    pub dead: usize,
}

impl<T> Default for Cell<T> {
    fn default() -> Self {
        Self { buckets: (0..BUCKETS).map(|_| Arc::new(Bucket::default())).collect(), digest: 0, len: 0, dead: 0 }
    }
}

/// What merging a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// Nothing new.
    Same,
    /// The record replaced an older one or was new.
    Changed,
}

#[derive(Clone, Debug)]
pub struct Table<T> {
    cells: BTreeMap<u64, Arc<Cell<T>>>,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self { cells: BTreeMap::new(), len: 0 }
    }
}

impl<T: Member> Table<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Merges one record; returns whether the table changed.
    pub fn merge(&mut self, rec: Record<T>) -> Merged {
        let cell_key = rec.member.cell();
        let b = bucket_of(rec.member.node_id());
        let found = self.get(cell_key, rec.member.node_id()).map(|e| e.rank());
        if let Some(old) = found {
            // Of two equal records the one this node had first stands (nodes may differ on its
            // time by the time news takes to spread; it only times removal from the map).
            if rec.rank() <= old {
                return Merged::Same;
            }
        }
        let cell = Arc::make_mut(self.cells.entry(cell_key).or_default());
        let bucket = Arc::make_mut(&mut cell.buckets[b]);
        let h = rec.hash();
        match bucket.records.binary_search_by(|r| r.member.node_id().cmp(rec.member.node_id())) {
            Ok(i) => {
                let old = bucket.records[i].hash();
                bucket.digest = bucket.digest.wrapping_sub(old).wrapping_add(h);
                cell.digest = cell.digest.wrapping_sub(old).wrapping_add(h);
                cell.dead -= usize::from(bucket.records[i].status == Status::Dead);
                cell.dead += usize::from(rec.status == Status::Dead);
                bucket.records[i] = rec;
            }
            Err(i) => {
                bucket.digest = bucket.digest.wrapping_add(h);
                cell.digest = cell.digest.wrapping_add(h);
                cell.dead += usize::from(rec.status == Status::Dead);
                bucket.records.insert(i, rec);
                cell.len += 1;
                self.len += 1;
            }
        }
        Merged::Changed
    }

    /// The record of `node_id` in `cell`.
    pub fn get(&self, cell: u64, node_id: &str) -> Option<&Record<T>> {
        let bucket = &self.cells.get(&cell)?.buckets[bucket_of(node_id)];
        bucket.records.binary_search_by(|r| r.member.node_id().cmp(node_id)).ok().map(|i| &bucket.records[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record<T>> {
        self.cells.values().flat_map(|c| c.buckets.iter().flat_map(|b| b.records.iter()))
    }

    pub fn cell_records(&self, cell: u64) -> impl Iterator<Item = &Record<T>> {
        self.cells.get(&cell).into_iter().flat_map(|c| c.buckets.iter().flat_map(|b| b.records.iter()))
    }

    /// One digest per cell, in cell order.
    pub fn digests(&self) -> Vec<(u64, u64)> {
        self.cells.iter().map(|(k, c)| (*k, c.digest)).collect()
    }

    pub fn cell_digest(&self, cell: u64) -> u64 {
        self.cells.get(&cell).map_or(0, |c| c.digest)
    }

    pub fn bucket_digests(&self, cell: u64) -> Vec<u64> {
        match self.cells.get(&cell) {
            Some(c) => c.buckets.iter().map(|b| b.digest).collect(),
            None => vec![0; BUCKETS],
        }
    }

    pub fn bucket(&self, cell: u64, b: usize) -> &[Record<T>] {
        self.cells.get(&cell).and_then(|c| c.buckets.get(b)).map_or(&[], |b| &b.records)
    }

    /// The `i`-th record in table order (for uniform random choice).
    pub fn nth(&self, mut i: usize) -> Option<&Record<T>> {
        for c in self.cells.values() {
            if i >= c.len {
                i -= c.len;
                continue;
            }
            for b in &c.buckets {
                if i < b.records.len() {
                    return b.records.get(i);
                }
                i -= b.records.len();
            }
        }
        None
    }

    /// Drops `Dead` records changed before `before_ms` (tombstones kept long enough that no peer
    /// still sends them back as news).
    pub fn forget_dead(&mut self, before_ms: u64) -> usize {
        let mut dropped = 0;
        for cell in self.cells.values_mut() {
            // Only cells holding tombstones are looked through.
            if cell.dead == 0
                || !cell
                    .buckets
                    .iter()
                    .any(|b| b.records.iter().any(|r| r.status == Status::Dead && r.changed_ms < before_ms))
            {
                continue;
            }
            let cell = Arc::make_mut(cell);
            for b in &mut cell.buckets {
                if !b.records.iter().any(|r| r.status == Status::Dead && r.changed_ms < before_ms) {
                    continue;
                }
                let b = Arc::make_mut(b);
                b.records.retain(|r| {
                    let keep = !(r.status == Status::Dead && r.changed_ms < before_ms);
                    if !keep {
                        b.digest = b.digest.wrapping_sub(r.hash());
                        cell.digest = cell.digest.wrapping_sub(r.hash());
                        dropped += 1;
                    }
                    keep
                });
            }
            cell.len = cell.buckets.iter().map(|b| b.records.len()).sum();
            cell.dead = cell.buckets.iter().flat_map(|b| b.records.iter()).filter(|r| r.status == Status::Dead).count();
        }
        self.len -= dropped;
        dropped
    }

    /// Replaces shared parts by equal ones from `intern` (the simulator shares identical cells and
    /// buckets among its nodes this way; a node has no use for it).
    pub fn share(&mut self, mut intern: impl FnMut(u64, usize, &Arc<Bucket<T>>) -> Option<Arc<Bucket<T>>>) {
        for (k, cell) in self.cells.iter_mut() {
            let replace: Vec<(usize, Arc<Bucket<T>>)> = cell
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| intern(*k, i, b).filter(|s| !Arc::ptr_eq(s, b)).map(|s| (i, s)))
                .collect();
            if replace.is_empty() {
                continue;
            }
            let cell = Arc::make_mut(cell);
            for (i, s) in replace {
                cell.buckets[i] = s;
            }
        }
    }

    /// Approximate heap bytes held (shared parts counted in full).
    pub fn memory_bytes(&self) -> usize {
        self.cells
            .values()
            .map(|c| {
                std::mem::size_of::<Cell<T>>()
                    + c.buckets
                        .iter()
                        .map(|b| {
                            std::mem::size_of::<Bucket<T>>() + b.records.capacity() * std::mem::size_of::<Record<T>>()
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}
