//! The two reference placements the benchmark measures cairn against, implemented here so that all
//! three see the same keys, nodes and measurement loop: a Ketama consistent-hash ring and a Maglev
//! lookup table. Node indices are positions in the id-sorted node list, as in cairn's `Placement`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Ketama: every node puts `vnodes` points on a 64-bit ring (xxh3 of its id, seeded by the point's
/// number, where libketama uses MD5); a key belongs to the first points clockwise from its hash.
pub struct Ketama {
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ketama {
    /// `nodes`: (index, id) of every node on the ring.
    pub fn new<'a>(nodes: impl Iterator<Item = (u32, &'a str)>, vnodes: u64) -> Self {
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (index, id) in nodes {
            ring.extend((0..vnodes).map(|v| (xxh3_64_with_seed(id.as_bytes(), v), index)));
        }
        ring.sort_unstable();
        Ketama { points: ring.iter().map(|p| p.0).collect(), owners: ring.iter().map(|p| p.1).collect() }
    }

    /// The first `r` distinct nodes clockwise from `key`.
    pub fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>) {
        out.clear();
        let len = self.points.len();
        let mut at = self.points.partition_point(|&p| p < key);
        for _ in 0..len {
            if at == len {
                at = 0;
            }
            let node = self.owners[at] as usize;
            if !out.contains(&node) {
                out.push(node);
                if out.len() == r {
                    return;
                }
            }
            at += 1;
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.points.capacity() * 8 + self.owners.capacity() * 4
    }
}

/// Maglev (Eisenbud et al., NSDI 2016): every node walks its own permutation of a prime-sized table
/// (offset and skip from two hashes of its id) and the nodes take turns claiming their next free
/// entry until the table is full. A key belongs to `table[key mod M]`; further owners are the next
/// distinct entries forward.
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new<'a>(nodes: impl Iterator<Item = (u32, &'a str)>, size: u64) -> Self {
        let mut walkers: Vec<(u32, u64, u64)> = nodes
            .map(|(index, id)| {
                let offset = xxh3_64_with_seed(id.as_bytes(), 0x6d61_676c_6576_0001) % size;
                let skip = xxh3_64_with_seed(id.as_bytes(), 0x6d61_676c_6576_0002) % (size - 1) + 1;
                (index, offset, skip)
            })
            .collect();
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (index, position, skip) in &mut walkers {
                while table[*position as usize] != u32::MAX {
                    *position += *skip;
                    if *position >= size {
                        *position -= size;
                    }
                }
                table[*position as usize] = *index;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    pub fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>) {
        out.clear();
        let len = self.table.len();
        let mut at = (key % len as u64) as usize;
        for _ in 0..len {
            let node = self.table[at] as usize;
            if !out.contains(&node) {
                out.push(node);
                if out.len() == r {
                    return;
                }
            }
            at += 1;
            if at == len {
                at = 0;
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.table.capacity() * 4
    }
}

/// The smallest prime `>= n`.
pub fn prime_at_least(n: u64) -> u64 {
    (n.max(2)..).find(|&c| is_prime(c)).unwrap_or(n)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}
