//! The cluster-wide member table: one record per (cell, node id), grouped into cells and each
//! cell into a fixed number of buckets, each with a digest, so that two nodes find where their
//! tables differ by comparing one digest per cell, then the buckets of a differing cell, and
//! exchange only those buckets' records (anti-entropy), never the whole table.
//!
//! Cells and buckets are shared (`Arc`) and copied on write: an update copies one bucket.
//!
//! Most records a node is sent it holds already (every rumor reaches each node several times),
//! so a lookup is kept to few memory accesses: cells in a sorted vector, and in each bucket the
//! records ordered by their node id's 64-bit hash, found by a binary search over those hashes.

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

/// 64-bit hash of a node id: picks its bucket and finds its record in the bucket.
pub fn id_hash(node_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(node_id.as_bytes(), 0xb0c4)
}

pub fn bucket_of(node_id: &str) -> usize {
    bucket_index(id_hash(node_id))
}

fn bucket_index(id_hash: u64) -> usize {
    (id_hash % BUCKETS as u64) as usize
}

#[derive(Clone, Debug)]
pub struct Bucket<T> {
    /// Sorted by (`id_hash` of the node id, node id).
    pub records: Vec<Record<T>>,
    /// `id_hash` of each record's node id, in the same order (ascending): a lookup searches these
    /// and compares only the id of a record whose hash matches.
    ids: Vec<u64>,
    pub digest: u64,
}

impl<T> Default for Bucket<T> {
    fn default() -> Self {
        Self { records: Vec::new(), ids: Vec::new(), digest: 0 }
    }
}

impl<T: Member> Bucket<T> {
    /// Index of the record whose node id hashes to `h` and is `node_id` (`same` tells, cheaply,
    /// whether a member is that node), or where it would go.
    fn search(&self, h: u64, node_id: &str, same: impl Fn(&T) -> bool) -> Result<usize, usize> {
        debug_assert_eq!(self.ids.len(), self.records.len());
        let mut i = self.ids.partition_point(|&x| x < h);
        // Ids whose hashes collide are ordered by id.
        while i < self.ids.len() && self.ids[i] == h {
            if same(&self.records[i].member) {
                return Ok(i);
            }
            match self.records[i].member.node_id().cmp(node_id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => return Ok(i),
                std::cmp::Ordering::Greater => break,
            }
        }
        Err(i)
    }
}

#[derive(Clone, Debug)]
pub struct Cell<T> {
    pub buckets: Vec<Arc<Bucket<T>>>,
    pub digest: u64,
    pub len: usize,
    /// Dead records (tombstones) in the cell.
    pub dead: usize,
    /// Buckets changed since [`Table::share`] last looked at this cell (one bit each).
    changed: u16,
}

impl<T> Default for Cell<T> {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| Arc::new(Bucket::default())).collect(),
            digest: 0,
            len: 0,
            dead: 0,
            changed: 0,
        }
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
    /// Sorted by cell key.
    cells: Vec<(u64, Arc<Cell<T>>)>,
    len: usize,
    /// Cells changed since the last [`Table::share`], and since the last one that shared cells
    /// (so that sharing looks only at those, not at every cell).
    fresh: Vec<u64>,
    touched: Vec<u64>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self { cells: Vec::new(), len: 0, fresh: Vec::new(), touched: Vec::new() }
    }
}

impl<T> Table<T> {
    fn cell(&self, key: u64) -> Option<&Cell<T>> {
        self.cells.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| &*self.cells[i].1)
    }

    fn touch(&mut self, key: u64) {
        if !self.fresh.contains(&key) {
            self.fresh.push(key);
        }
        if !self.touched.contains(&key) {
            self.touched.push(key);
        }
    }

    /// The cell of `key`, created empty if absent.
    fn cell_mut(&mut self, key: u64) -> &mut Arc<Cell<T>> {
        let i = match self.cells.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => i,
            Err(i) => {
                self.cells.insert(i, (key, Arc::new(Cell::default())));
                i
            }
        };
        &mut self.cells[i].1
    }
}

impl<T: Member> Table<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Merges a copy of `rec` if it is news; returns whether the table changed.
    pub fn merge(&mut self, rec: &Record<T>) -> Merged {
        let cell_key = rec.member.cell();
        let node_id = rec.member.node_id();
        let h = id_hash(node_id);
        let b = bucket_index(h);
        let found = self.cell(cell_key).map(|c| {
            let bucket = &c.buckets[b];
            bucket.search(h, node_id, |m| m.same_node(&rec.member)).map(|i| (i, bucket.records[i].rank()))
        });
        if let Some(Ok((_, old))) = found {
            // Of two equal records the one this node had first stands (nodes may differ on its
            // time by the time news takes to spread; it only times removal from the map).
            if rec.rank() <= old {
                return Merged::Same;
            }
        }
        self.touch(cell_key);
        let cell = Arc::make_mut(self.cell_mut(cell_key));
        cell.changed |= 1 << b;
        let bucket = Arc::make_mut(&mut cell.buckets[b]);
        let new = rec.hash();
        match found {
            Some(Ok((i, _))) => {
                let old = bucket.records[i].hash();
                bucket.digest = bucket.digest.wrapping_sub(old).wrapping_add(new);
                cell.digest = cell.digest.wrapping_sub(old).wrapping_add(new);
                cell.dead -= usize::from(bucket.records[i].status == Status::Dead);
                cell.dead += usize::from(rec.status == Status::Dead);
                bucket.records[i] = rec.clone();
            }
            Some(Err(_)) | None => {
                // A new cell's bucket is empty.
                let i = match found {
                    Some(Err(i)) => i,
                    _ => 0,
                };
                bucket.digest = bucket.digest.wrapping_add(new);
                cell.digest = cell.digest.wrapping_add(new);
                cell.dead += usize::from(rec.status == Status::Dead);
                bucket.records.insert(i, rec.clone());
                bucket.ids.insert(i, h);
                cell.len += 1;
                self.len += 1;
            }
        }
        Merged::Changed
    }

    /// The record of `node_id` in `cell`.
    pub fn get(&self, cell: u64, node_id: &str) -> Option<&Record<T>> {
        let h = id_hash(node_id);
        let bucket = &self.cell(cell)?.buckets[bucket_index(h)];
        bucket.search(h, node_id, |m| m.node_id() == node_id).ok().map(|i| &bucket.records[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record<T>> {
        self.cells.iter().flat_map(|(_, c)| c.buckets.iter().flat_map(|b| b.records.iter()))
    }

    pub fn cell_records(&self, cell: u64) -> impl Iterator<Item = &Record<T>> {
        self.cell(cell).into_iter().flat_map(|c| c.buckets.iter().flat_map(|b| b.records.iter()))
    }

    /// One digest per cell, in cell order.
    pub fn digests(&self) -> Vec<(u64, u64)> {
        self.cells.iter().map(|(k, c)| (*k, c.digest)).collect()
    }

    pub fn cell_digest(&self, cell: u64) -> u64 {
        self.cell(cell).map_or(0, |c| c.digest)
    }

    pub fn bucket_digests(&self, cell: u64) -> Vec<u64> {
        match self.cell(cell) {
            Some(c) => c.buckets.iter().map(|b| b.digest).collect(),
            None => vec![0; BUCKETS],
        }
    }

    pub fn bucket(&self, cell: u64, b: usize) -> &[Record<T>] {
        self.cell(cell).and_then(|c| c.buckets.get(b)).map_or(&[], |b| &b.records)
    }

    /// The `i`-th record in table order (for uniform random choice).
    pub fn nth(&self, mut i: usize) -> Option<&Record<T>> {
        for (_, c) in &self.cells {
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
        let mut touched = Vec::new();
        for (key, cell) in self.cells.iter_mut() {
            // Only cells holding tombstones are looked through.
            if cell.dead == 0
                || !cell
                    .buckets
                    .iter()
                    .any(|b| b.records.iter().any(|r| r.status == Status::Dead && r.changed_ms < before_ms))
            {
                continue;
            }
            touched.push(*key);
            let cell = Arc::make_mut(cell);
            for (i, b) in cell.buckets.iter_mut().enumerate() {
                if !b.records.iter().any(|r| r.status == Status::Dead && r.changed_ms < before_ms) {
                    continue;
                }
                cell.changed |= 1 << i;
                let b = Arc::make_mut(b);
                let (mut records, mut ids) = (Vec::with_capacity(b.records.len()), Vec::with_capacity(b.ids.len()));
                for (r, h) in b.records.drain(..).zip(b.ids.drain(..)) {
                    if r.status == Status::Dead && r.changed_ms < before_ms {
                        b.digest = b.digest.wrapping_sub(r.hash());
                        cell.digest = cell.digest.wrapping_sub(r.hash());
                        dropped += 1;
                    } else {
                        records.push(r);
                        ids.push(h);
                    }
                }
                (b.records, b.ids) = (records, ids);
            }
            cell.len = cell.buckets.iter().map(|b| b.records.len()).sum();
            cell.dead = cell.buckets.iter().flat_map(|b| b.records.iter()).filter(|r| r.status == Status::Dead).count();
        }
        self.len -= dropped;
        for key in touched {
            self.touch(key);
        }
        dropped
    }

    /// Replaces shared parts by equal ones (the simulator shares identical cells and buckets
    /// among its nodes this way; a node has no use for it): each bucket by `intern_bucket`'s,
    /// then, with `cells_too`, each cell by `intern_cell`'s. With `all_cells` every cell is
    /// looked at; otherwise only those changed since the last share (since the last one with
    /// `cells_too`, when sharing cells), and in them only the buckets changed since.
    pub fn share(
        &mut self,
        all_cells: bool,
        cells_too: bool,
        mut intern_bucket: impl FnMut(u64, usize, &Arc<Bucket<T>>) -> Option<Arc<Bucket<T>>>,
        mut intern_cell: impl FnMut(u64, &Arc<Cell<T>>) -> Option<Arc<Cell<T>>>,
    ) {
        let keys: Vec<u64> = if all_cells {
            self.cells.iter().map(|(k, _)| *k).collect()
        } else if cells_too {
            self.fresh.clear();
            std::mem::take(&mut self.touched)
        } else {
            std::mem::take(&mut self.fresh)
        };
        if all_cells {
            self.fresh.clear();
            self.touched.clear();
        }
        for k in keys {
            let Ok(i) = self.cells.binary_search_by_key(&k, |(k, _)| *k) else { continue };
            let cell = &mut self.cells[i].1;
            if let Some(c) = Arc::get_mut(cell) {
                let changed = std::mem::take(&mut c.changed);
                for (i, b) in c.buckets.iter_mut().enumerate() {
                    if (all_cells || changed & (1 << i) != 0)
                        && let Some(s) = intern_bucket(k, i, b).filter(|s| !Arc::ptr_eq(s, b))
                    {
                        *b = s;
                    }
                }
                if cells_too && let Some(s) = intern_cell(k, cell).filter(|s| !Arc::ptr_eq(s, cell)) {
                    *cell = s;
                }
                continue;
            }
            if !all_cells {
                continue;
            }
            // A cell held by other tables too is copied only if a bucket of it is replaced.
            let replace: Vec<(usize, Arc<Bucket<T>>)> = cell
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| intern_bucket(k, i, b).filter(|s| !Arc::ptr_eq(s, b)).map(|s| (i, s)))
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
            .iter()
            .map(|(_, c)| {
                std::mem::size_of::<Cell<T>>()
                    + c.buckets
                        .iter()
                        .map(|b| {
                            std::mem::size_of::<Bucket<T>>()
                                + b.records.capacity() * std::mem::size_of::<Record<T>>()
                                + b.ids.capacity() * std::mem::size_of::<u64>()
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::identity::{NodeIdentity, cell_key};

    fn ident(i: u32, cell: u8, generation: u64, leaving: bool) -> NodeIdentity {
        NodeIdentity {
            id: format!("n{i}"),
            gossip: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
            peer: format!("127.0.0.1:{}", 9000 + i),
            zone: "z".into(),
            rack: "r".into(),
            cell: format!("c{cell}"),
            weight: 100,
            generation,
            joined: 1,
            leaving,
        }
    }

    /// What a table holds, by (cell, node id): the newer generation wins, then `Dead` over
    /// `Alive`; of two equal ones the first stays.
    type Model = BTreeMap<(u64, String), Record<NodeIdentity>>;

    fn model_merge(m: &mut Model, r: &Record<NodeIdentity>) -> Merged {
        let key = (r.member.cell(), r.member.id.clone());
        match m.get(&key) {
            Some(old) if (r.member.generation, r.status) <= (old.member.generation, old.status) => Merged::Same,
            _ => {
                m.insert(key, r.clone());
                Merged::Changed
            }
        }
    }

    fn check(t: &Table<NodeIdentity>, m: &Model) {
        assert_eq!(t.len(), m.len());
        for ((cell, id), r) in m {
            assert_eq!(t.get(*cell, id), Some(r));
        }
        assert_eq!(t.get(cell_key("c0"), "absent"), None);
        // Records in (cell, bucket, id hash, node id) order; digests are the sums of the records'
        // hashes.
        let mut expected: Vec<&Record<NodeIdentity>> = m.values().collect();
        expected
            .sort_by_key(|r| (r.member.cell(), bucket_of(&r.member.id), id_hash(&r.member.id), r.member.id.clone()));
        assert_eq!(t.iter().collect::<Vec<_>>(), expected);
        for (cell, digest) in t.digests() {
            let recs: Vec<&Record<NodeIdentity>> =
                expected.iter().copied().filter(|r| r.member.cell() == cell).collect();
            assert_eq!(digest, recs.iter().fold(0u64, |d, r| d.wrapping_add(r.hash())));
            let buckets = t.bucket_digests(cell);
            for (b, d) in buckets.iter().enumerate() {
                let sum =
                    recs.iter().filter(|r| bucket_of(&r.member.id) == b).fold(0u64, |d, r| d.wrapping_add(r.hash()));
                assert_eq!(*d, sum);
                assert_eq!(t.bucket(cell, b).len(), recs.iter().filter(|r| bucket_of(&r.member.id) == b).count());
            }
        }
    }

    proptest! {
        /// The table and a plain map of the same records agree after any merges and tombstone
        /// drops, and a copy of the table is not changed by merges into the original.
        #[test]
        fn the_table_agrees_with_a_plain_map_of_its_records(
            ops in proptest::collection::vec((0u32..40, 0u8..3, 1u64..5, any::<bool>(), any::<bool>(), 0u64..100, 0u8..20), 1..200),
        ) {
            let mut t = Table::default();
            let mut m = Model::new();
            let mut copy: Option<(Table<NodeIdentity>, Model)> = None;
            for (i, cell, generation, dead, leaving, at, op) in ops {
                if op == 0 {
                    let dropped = t.forget_dead(at);
                    let before = m.len();
                    m.retain(|_, r| !(r.status == Status::Dead && r.changed_ms < at));
                    prop_assert_eq!(dropped, before - m.len());
                } else {
                    let status = if dead { Status::Dead } else { Status::Alive };
                    let r = Record { member: ident(i, cell, generation, leaving), status, changed_ms: at };
                    prop_assert_eq!(t.merge(&r), model_merge(&mut m, &r));
                }
                if op == 1 && copy.is_none() {
                    copy = Some((t.clone(), m.clone()));
                }
                check(&t, &m);
            }
            if let Some((t2, m2)) = copy {
                check(&t2, &m2);
            }
        }
    }
}
