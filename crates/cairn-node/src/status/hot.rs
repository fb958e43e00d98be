//! The hottest objects by bytes served, in fixed memory: the space-saving algorithm (Metwally,
//! Agrawal, El Abbadi, 2005) over object keys.
//!
//! The tracker keeps at most [`HOT_OBJECTS`] counters. A key it does not track takes the place of
//! the smallest counter and inherits its count as its possible overcount (`error`), so every
//! object that served more than `total / capacity` bytes is in the table, and each entry's bytes
//! are within `error` of the truth. The status page shows it; `/metrics` does not (its labels
//! would grow with keys).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Counters the tracker keeps: the number of objects it can tell apart.
pub const HOT_OBJECTS: usize = 64;

/// Longest key tracked as it is; longer ones are cut (so the table's memory stays fixed).
pub const HOT_KEY_MAX: usize = 256;

/// One tracked object as the status page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotObject {
    pub bucket: String,
    pub key: String,
    /// Bytes counted for it (at most `error` more than it really served).
    pub bytes: u64,
    /// How much of `bytes` may belong to objects it replaced.
    pub error: u64,
}

/// A space-saving top-K over (bucket, key), weighted by bytes.
pub struct HotObjects {
    inner: Mutex<Table>,
}

struct Table {
    capacity: usize,
    entries: Vec<HotObject>,
    index: HashMap<(String, String), usize>,
}

impl Default for HotObjects {
    fn default() -> Self {
        Self::new(HOT_OBJECTS)
    }
}

impl HotObjects {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Mutex::new(Table {
                capacity,
                entries: Vec::with_capacity(capacity),
                index: HashMap::with_capacity(capacity),
            }),
        }
    }

    /// Counts `bytes` served of `bucket/key`.
    pub fn record(&self, bucket: &str, key: &str, bytes: u64) {
        let key = truncate(key, HOT_KEY_MAX);
        let mut t = self.inner.lock();
        if let Some(&i) = t.index.get(&(bucket.to_owned(), key.to_owned())) {
            t.entries[i].bytes = t.entries[i].bytes.saturating_add(bytes);
            return;
        }
        if t.entries.len() < t.capacity {
            let i = t.entries.len();
            t.entries.push(HotObject { bucket: bucket.to_owned(), key: key.to_owned(), bytes, error: 0 });
            t.index.insert((bucket.to_owned(), key.to_owned()), i);
            return;
        }
        let Some((i, min)) = t.entries.iter().enumerate().min_by_key(|(_, e)| e.bytes).map(|(i, e)| (i, e.bytes))
        else {
            return;
        };
        let old = std::mem::replace(
            &mut t.entries[i],
            HotObject { bucket: bucket.to_owned(), key: key.to_owned(), bytes: min.saturating_add(bytes), error: min },
        );
        t.index.remove(&(old.bucket, old.key));
        t.index.insert((bucket.to_owned(), key.to_owned()), i);
        debug_assert_eq!(t.index.len(), t.entries.len());
    }

    /// The `n` objects with the most bytes, most first.
    pub fn top(&self, n: usize) -> Vec<HotObject> {
        let mut all = self.inner.lock().entries.clone();
        all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_while_under_capacity() {
        let h = HotObjects::new(4);
        h.record("b", "x", 10);
        h.record("b", "y", 30);
        h.record("b", "x", 5);
        h.record("c", "x", 1);
        let top = h.top(10);
        let got: Vec<(&str, &str, u64, u64)> =
            top.iter().map(|e| (e.bucket.as_str(), e.key.as_str(), e.bytes, e.error)).collect();
        assert_eq!(got, vec![("b", "y", 30, 0), ("b", "x", 15, 0), ("c", "x", 1, 0)]);
        assert_eq!(h.top(1).len(), 1);
    }

    #[test]
    fn a_newcomer_replaces_the_smallest_and_inherits_its_count_as_error() {
        let h = HotObjects::new(2);
        h.record("b", "big", 100);
        h.record("b", "small", 3);
        h.record("b", "new", 5);
        let top = h.top(2);
        assert_eq!(top[0], HotObject { bucket: "b".into(), key: "big".into(), bytes: 100, error: 0 });
        assert_eq!(top[1], HotObject { bucket: "b".into(), key: "new".into(), bytes: 8, error: 3 });
    }

    #[test]
    fn heavy_hitters_survive_a_long_tail_in_fixed_memory() {
        let h = HotObjects::new(16);
        let mut served = 0u64;
        for round in 0..200u64 {
            for hot in 0..3 {
                h.record("data", &format!("hot-{hot}"), 1 << 20);
                served += 1 << 20;
            }
            for cold in 0..50 {
                h.record("data", &format!("cold-{round}-{cold}"), 4096);
                served += 4096;
            }
        }
        assert_eq!(h.inner.lock().entries.len(), 16);
        assert_eq!(h.inner.lock().index.len(), 16);
        let top = h.top(3);
        let mut keys: Vec<&str> = top.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, vec!["hot-0", "hot-1", "hot-2"]);
        for e in &top {
            // Never under the truth, and over it by at most `error`, which space-saving bounds by
            // total / capacity.
            assert!(e.bytes >= 200 << 20);
            assert!(e.bytes - e.error <= 200 << 20);
            assert!(e.error <= served / 16);
        }
    }

    #[test]
    fn long_keys_are_cut_at_a_char_boundary() {
        let h = HotObjects::new(2);
        let key = "é".repeat(HOT_KEY_MAX);
        h.record("b", &key, 1);
        let top = h.top(1);
        assert!(top[0].key.len() <= HOT_KEY_MAX);
        assert!(key.starts_with(&top[0].key));
    }
}
