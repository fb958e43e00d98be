//! The node-local KV store: a RAM tier that spills to a disk tier, each with its own capacity and
//! S3-FIFO eviction, TTLs, and short leases that keep a key readable after EXISTS found it.
//!
//! Where a key's current value is, in the order lookups check:
//!
//! 1. `ram`: in memory (possibly also on disk, when it was promoted from there: `on_disk`);
//! 2. `spilling`: evicted from RAM, being written to disk, still served from memory;
//! 3. `disk`: in a file of the disk tier;
//! 4. `held`: evicted from both tiers while leased; kept until the lease ends.
//!
//! A SET removes every older copy before the new one becomes visible, and a value is inserted
//! only once it is complete, so a read returns exactly the bytes of one SET or a miss. Disk files
//! are named by sequence number: a spill that finishes after its key was replaced or deleted
//! notices (its `spilling` entry is gone or newer) and removes its own file.
//!
//! Why spill on eviction rather than write every SET through to disk: writes are as frequent as
//! reads in the KV workload and values are large; writing only what leaves RAM halves the disk
//! traffic when the working set fits in RAM and costs nothing extra when it does not.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_store::s3fifo::S3Fifo;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::disk::DiskFiles;

/// Values smaller than this are copied out of the connection's buffer when stored, so they do not
/// keep the rest of that buffer alive.
const COPY_BELOW: usize = 64 << 10;
/// Bytes waiting to be spilled to disk at most, as a share (1/n) of the RAM capacity; past it an
/// evicted value is dropped instead.
const SPILL_SHARE: u64 = 4;
/// Bytes of evicted-but-leased values held in memory at most, as a share (1/n) of the RAM capacity.
const HELD_SHARE: u64 = 4;
/// Disk writes running at once.
const PARALLEL_SPILLS: usize = 2;
/// Disk hits after which a value is copied back into RAM.
const PROMOTE_AFTER_HITS: u8 = 2;
/// How often expired leases are swept.
const SWEEP_EVERY_MS: u64 = 100;

pub struct KvStoreConfig {
    pub ram_capacity: u64,
    /// 0 disables the disk tier.
    pub disk_capacity: u64,
    /// Directory of the disk tier (emptied when the store opens).
    pub dir: PathBuf,
    /// How long an EXISTS hit protects a key from eviction.
    pub lease: Duration,
}

/// Counters, read by the node's metrics.
#[derive(Debug, Default)]
pub struct KvStats {
    pub ram_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub ram_evictions: AtomicU64,
    pub disk_evictions: AtomicU64,
    /// Values evicted with no copy left (RAM eviction with a full spill queue, or no disk tier).
    pub dropped: AtomicU64,
    pub lease_pins: AtomicU64,
    pub expired: AtomicU64,
    pub corrupt: AtomicU64,
    pub spilled: AtomicU64,
    pub disk_write_errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    /// NX
    IfAbsent,
    /// XX
    IfPresent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOptions {
    pub condition: SetCondition,
    /// Time to live; `None` clears any TTL unless `keep_ttl`.
    pub ttl: Option<Duration>,
    pub keep_ttl: bool,
}

impl Default for SetOptions {
    fn default() -> Self {
        Self { condition: SetCondition::Always, ttl: None, keep_ttl: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    /// NX/XX did not hold.
    NotStored,
}

/// When EXPIRE may change a key's time to live (Redis's NX, XX, GT, LT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpireCondition {
    #[default]
    Always,
    /// NX: only a key with no TTL.
    IfNone,
    /// XX: only a key with a TTL.
    IfSome,
    /// GT: only to a later expiry (no TTL counts as infinite, so never).
    IfLater,
    /// LT: only to an earlier expiry (no TTL counts as infinite, so always).
    IfEarlier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Missing,
    Persistent,
    Millis(u64),
}

struct Slot {
    value: Bytes,
    expires: Option<u64>,
    lease_until: u64,
    /// The disk file holding the same value, when this copy was promoted from disk.
    on_disk: Option<u64>,
}

struct Spill {
    seq: u64,
    value: Bytes,
    expires: Option<u64>,
    lease_until: u64,
}

struct DiskMeta {
    seq: u64,
    len: u64,
    expires: Option<u64>,
    lease_until: u64,
    /// Disk hits so far; a value is promoted back to RAM on its second, so one-off reads of a
    /// large working set do not churn the RAM tier.
    hits: u8,
}

enum HeldValue {
    Ram(Bytes),
    Disk { seq: u64, len: u64 },
}

struct Held {
    value: HeldValue,
    expires: Option<u64>,
    until: u64,
}

impl Held {
    fn len(&self) -> u64 {
        match &self.value {
            HeldValue::Ram(b) => b.len() as u64,
            HeldValue::Disk { len, .. } => *len,
        }
    }
}

/// Work decided under the lock and done after it is released.
enum Action {
    Spill { key: Bytes, seq: u64, value: Bytes },
    RemoveFile(u64),
}

struct Inner {
    ram: HashMap<Bytes, Slot>,
    ram_policy: S3Fifo<Bytes>,
    spilling: HashMap<Bytes, Spill>,
    spill_bytes: u64,
    disk: HashMap<Bytes, DiskMeta>,
    disk_policy: S3Fifo<Bytes>,
    held: HashMap<Bytes, Held>,
    held_bytes: u64,
    next_seq: u64,
    next_sweep: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    files: Option<DiskFiles>,
    spill_permits: Semaphore,
    stats: KvStats,
    epoch: Instant,
    lease_ms: u64,
    spill_cap: u64,
    held_cap: u64,
}

/// Where a lookup found a key.
enum Found {
    Value(Bytes, bool),
    File(u64),
}

#[derive(Clone)]
pub struct KvStore {
    shared: Arc<Shared>,
}

/// Where a key sorts in a SCAN: a hash of its name, never 0 (the cursor that starts a scan).
pub fn scan_position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key).max(1)
}

fn expired(expires: Option<u64>, now: u64) -> bool {
    expires.is_some_and(|e| e <= now)
}

impl KvStore {
    pub fn open(cfg: KvStoreConfig) -> io::Result<Self> {
        let files = if cfg.disk_capacity > 0 { Some(DiskFiles::open(&cfg.dir)?) } else { None };
        let inner = Inner {
            ram: HashMap::new(),
            ram_policy: S3Fifo::new(cfg.ram_capacity),
            spilling: HashMap::new(),
            spill_bytes: 0,
            disk: HashMap::new(),
            disk_policy: S3Fifo::new(cfg.disk_capacity),
            held: HashMap::new(),
            held_bytes: 0,
            next_seq: 1,
            next_sweep: 0,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                files,
                spill_permits: Semaphore::new(PARALLEL_SPILLS),
                stats: KvStats::default(),
                epoch: Instant::now(),
                lease_ms: cfg.lease.as_millis() as u64,
                spill_cap: cfg.ram_capacity / SPILL_SHARE,
                held_cap: cfg.ram_capacity / HELD_SHARE,
            }),
        })
    }

    pub fn stats(&self) -> &KvStats {
        &self.shared.stats
    }

    fn now(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The value of `key`, or `None` (missing, expired, or its disk copy failed verification).
    pub async fn get(&self, key: &[u8]) -> Option<Bytes> {
        let now = self.now();
        let found = {
            let mut g = self.shared.inner.lock();
            let found = self.locate(&mut g, key, now, false);
            if let Some(Found::Value(_, true)) = &found {
                g.ram_policy.touch(key);
            }
            found
        };
        match found {
            Some(Found::Value(v, _)) => {
                self.count(&self.shared.stats.ram_hits);
                Some(v)
            }
            Some(Found::File(seq)) => self.read_file(key, seq).await,
            None => {
                self.count(&self.shared.stats.misses);
                None
            }
        }
    }

    async fn read_file(&self, key: &[u8], seq: u64) -> Option<Bytes> {
        let shared = self.shared.clone();
        let owned = Bytes::copy_from_slice(key);
        let k = owned.clone();
        let read = tokio::task::spawn_blocking(move || shared.files.as_ref().map(|f| f.read(seq, &k))).await;
        let value = match read {
            Ok(Some(Ok(v))) => v,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "KV disk read failed; treating it as a miss");
                None
            }
            _ => None,
        };
        let Some(value) = value else {
            self.count(&self.shared.stats.corrupt);
            self.count(&self.shared.stats.misses);
            let mut g = self.shared.inner.lock();
            if g.disk.get(&owned).is_some_and(|m| m.seq == seq) {
                g.disk.remove(&owned);
                g.disk_policy.remove(&owned);
            }
            return None;
        };
        self.count(&self.shared.stats.disk_hits);
        let actions = {
            let mut g = self.shared.inner.lock();
            g.disk_policy.touch(&owned);
            let current = g.disk.get_mut(&owned).filter(|m| m.seq == seq).and_then(|m| {
                m.hits = m.hits.saturating_add(1);
                (m.hits >= PROMOTE_AFTER_HITS).then_some((m.expires, m.lease_until))
            });
            match current {
                Some((expires, lease_until)) if !g.ram.contains_key(&owned) => {
                    let slot = Slot { value: value.clone(), expires, lease_until, on_disk: Some(seq) };
                    self.insert_ram(&mut g, owned, slot)
                }
                _ => Vec::new(),
            }
        };
        self.run(actions);
        Some(value)
    }

    /// Finds the current copy of `key`, dropping it if expired; `pin` extends its lease.
    fn locate(&self, g: &mut Inner, key: &[u8], now: u64, pin: bool) -> Option<Found> {
        let lease = now + self.shared.lease_ms;
        if let Some(s) = g.ram.get_mut(key) {
            if !expired(s.expires, now) {
                if pin {
                    s.lease_until = lease;
                }
                return Some(Found::Value(s.value.clone(), true));
            }
        } else if let Some(s) = g.spilling.get_mut(key) {
            if !expired(s.expires, now) {
                if pin {
                    s.lease_until = lease;
                }
                return Some(Found::Value(s.value.clone(), false));
            }
        } else if let Some(m) = g.disk.get_mut(key) {
            if !expired(m.expires, now) {
                if pin {
                    m.lease_until = lease;
                }
                return Some(Found::File(m.seq));
            }
        } else if let Some(h) = g.held.get_mut(key) {
            if !expired(h.expires, now) && h.until > now {
                if pin {
                    h.until = h.until.max(lease);
                }
                return Some(match &h.value {
                    HeldValue::Ram(b) => Found::Value(b.clone(), false),
                    HeldValue::Disk { seq, .. } => Found::File(*seq),
                });
            }
        } else {
            return None;
        }
        // Found, but expired (or its hold ended).
        self.count(&self.shared.stats.expired);
        let actions = self.remove_locked(g, key);
        self.run(actions);
        None
    }

    /// Whether `key` exists; a hit is leased (kept through eviction) for the configured time.
    pub fn exists_and_pin(&self, key: &[u8]) -> bool {
        self.count_and_pin(std::slice::from_ref(&key)) == 1
    }

    /// How many of `keys` exist (a key named twice counts twice, as in Redis); hits are leased.
    /// One lock and one clock read for the whole batch: LMCache asks for up to 128 keys at once.
    pub fn count_and_pin<K: AsRef<[u8]>>(&self, keys: &[K]) -> usize {
        let now = self.now();
        let mut g = self.shared.inner.lock();
        let hits = keys.iter().filter(|k| self.locate(&mut g, k.as_ref(), now, true).is_some()).count();
        self.shared.stats.lease_pins.fetch_add(hits as u64, Ordering::Relaxed);
        hits
    }

    /// Stores `value` under `key` subject to `opts`.
    pub fn set(&self, key: Bytes, value: Bytes, opts: SetOptions) -> SetOutcome {
        let now = self.now();
        let value = if value.len() < COPY_BELOW { Bytes::copy_from_slice(&value) } else { value };
        let mut actions = Vec::new();
        {
            let mut g = self.shared.inner.lock();
            let current = self.current_expiry(&mut g, &key, now);
            let allowed = match opts.condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => current.is_none(),
                SetCondition::IfPresent => current.is_some(),
            };
            if !allowed {
                return SetOutcome::NotStored;
            }
            // A zero TTL (an EXAT/PXAT already past) stores a key that is already expired.
            let expires = if opts.keep_ttl {
                current.flatten()
            } else {
                opts.ttl.map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            };
            let slot = Slot { value, expires, lease_until: 0, on_disk: None };
            match self.replace_in_ram(&mut g, &key, slot) {
                Ok(done) => actions.extend(done),
                Err(slot) => {
                    actions.extend(self.remove_locked(&mut g, &key));
                    // The key is copied out of the connection's buffer, which it would keep alive.
                    actions.extend(self.insert_ram(&mut g, Bytes::copy_from_slice(&key), slot));
                }
            }
            if now >= g.next_sweep {
                g.next_sweep = now + SWEEP_EVERY_MS;
                actions.extend(self.sweep_held(&mut g, now));
            }
        }
        self.run(actions);
        SetOutcome::Stored
    }

    /// `Some(expiry)` when `key` exists (expiry `None` = no TTL).
    fn current_expiry(&self, g: &mut Inner, key: &[u8], now: u64) -> Option<Option<u64>> {
        // The common case in one lookup: a live value in RAM.
        if let Some(s) = g.ram.get(key)
            && !expired(s.expires, now)
        {
            return Some(s.expires);
        }
        self.locate(g, key, now, false)?;
        let e = if let Some(s) = g.ram.get(key) {
            s.expires
        } else if let Some(s) = g.spilling.get(key) {
            s.expires
        } else if let Some(m) = g.disk.get(key) {
            m.expires
        } else {
            g.held.get(key).and_then(|h| h.expires)
        };
        Some(e)
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &[u8]) -> bool {
        let now = self.now();
        let (existed, actions) = {
            let mut g = self.shared.inner.lock();
            let existed = self.locate(&mut g, key, now, false).is_some();
            (existed, self.remove_locked(&mut g, key))
        };
        self.run(actions);
        existed
    }

    pub fn ttl(&self, key: &[u8]) -> Ttl {
        let now = self.now();
        let mut g = self.shared.inner.lock();
        match self.current_expiry(&mut g, key, now) {
            None => Ttl::Missing,
            Some(None) => Ttl::Persistent,
            Some(Some(e)) => Ttl::Millis(e.saturating_sub(now)),
        }
    }

    /// Sets a key's time to live; a non-positive one deletes the key. Whether the key exists.
    pub fn expire(&self, key: &[u8], ttl_ms: i64) -> bool {
        self.expire_if(key, ttl_ms, ExpireCondition::Always)
    }

    /// Sets a key's time to live to `ttl_ms` from now if `cond` holds; at or below zero the key is
    /// deleted. Whether it was changed (0 or 1 in Redis's reply).
    pub fn expire_if(&self, key: &[u8], ttl_ms: i64, cond: ExpireCondition) -> bool {
        let now = self.now();
        let actions = {
            let mut g = self.shared.inner.lock();
            let Some(current) = self.current_expiry(&mut g, key, now) else { return false };
            let when = i128::from(now) + i128::from(ttl_ms);
            let allowed = match (cond, current) {
                (ExpireCondition::Always, _) => true,
                (ExpireCondition::IfNone, c) => c.is_none(),
                (ExpireCondition::IfSome, c) => c.is_some(),
                (ExpireCondition::IfLater, Some(c)) => when > i128::from(c),
                (ExpireCondition::IfLater, None) => false,
                (ExpireCondition::IfEarlier, Some(c)) => when < i128::from(c),
                (ExpireCondition::IfEarlier, None) => true,
            };
            if !allowed {
                return false;
            }
            if ttl_ms <= 0 {
                self.remove_locked(&mut g, key)
            } else {
                Self::set_expiry_locked(&mut g, key, Some(now.saturating_add(ttl_ms as u64)));
                Vec::new()
            }
        };
        self.run(actions);
        true
    }

    /// Removes a key's time to live; whether it had one.
    pub fn persist(&self, key: &[u8]) -> bool {
        let now = self.now();
        let mut g = self.shared.inner.lock();
        if !matches!(self.current_expiry(&mut g, key, now), Some(Some(_))) {
            return false;
        }
        Self::set_expiry_locked(&mut g, key, None);
        true
    }

    fn set_expiry_locked(g: &mut Inner, key: &[u8], e: Option<u64>) {
        if let Some(s) = g.ram.get_mut(key) {
            s.expires = e;
        }
        if let Some(s) = g.spilling.get_mut(key) {
            s.expires = e;
        }
        if let Some(m) = g.disk.get_mut(key) {
            m.expires = e;
        }
        if let Some(h) = g.held.get_mut(key) {
            h.expires = e;
        }
    }

    /// The value of `key`, deleted in the same step (GETDEL).
    pub async fn take(&self, key: &[u8]) -> Option<Bytes> {
        let v = self.get(key).await?;
        self.delete(key);
        Some(v)
    }

    /// How many of `keys` exist (TOUCH: counted as EXISTS does, marked as used, not leased).
    pub fn touch<K: AsRef<[u8]>>(&self, keys: &[K]) -> usize {
        let now = self.now();
        let mut g = self.shared.inner.lock();
        let mut n = 0;
        for k in keys {
            if let Some(found) = self.locate(&mut g, k.as_ref(), now, false) {
                n += 1;
                if let Found::Value(_, true) = found {
                    g.ram_policy.touch(k.as_ref());
                }
            }
        }
        n
    }

    /// One step of SCAN: up to about `count` live keys whose scan position is at or after
    /// `cursor`, in position order, and the cursor of the next step (0 when done). A key's position
    /// is a hash of its name, so a key present for the whole iteration is returned at least once
    /// whatever else is added or removed meanwhile. Costs a pass over the node's keys.
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
        let now = self.now();
        let mut found: Vec<(u64, Bytes)> = {
            let g = self.shared.inner.lock();
            let live = |e: Option<u64>| !expired(e, now);
            let ram = g.ram.iter().filter(|(_, s)| live(s.expires)).map(|(k, _)| k);
            let spilling = g.spilling.iter().filter(|(_, s)| live(s.expires)).map(|(k, _)| k);
            let disk = g.disk.iter().filter(|(_, m)| live(m.expires)).map(|(k, _)| k);
            let held = g.held.iter().filter(|(_, h)| live(h.expires) && h.until > now).map(|(k, _)| k);
            ram.chain(spilling)
                .chain(disk)
                .chain(held)
                .map(|k| (scan_position(k), k))
                .filter(|(p, _)| *p >= cursor)
                .map(|(p, k)| (p, k.clone()))
                .collect()
        };
        found.sort_unstable();
        found.dedup();
        let count = count.max(1);
        if found.len() <= count {
            return (0, found.into_iter().map(|(_, k)| k).collect());
        }
        // Never split keys of one position between two steps.
        let mut end = count;
        while end < found.len() && found[end].0 == found[end - 1].0 {
            end += 1;
        }
        let next = found.get(end).map_or(0, |(p, _)| *p);
        found.truncate(end);
        (next, found.into_iter().map(|(_, k)| k).collect())
    }

    /// Removes every key (FLUSHALL); how many there were.
    pub fn clear(&self) -> usize {
        let (n, actions) = {
            let mut g = self.shared.inner.lock();
            let keys: std::collections::HashSet<Bytes> =
                g.ram.keys().chain(g.spilling.keys()).chain(g.disk.keys()).chain(g.held.keys()).cloned().collect();
            let mut actions = Vec::new();
            for k in &keys {
                actions.extend(self.remove_locked(&mut g, k));
            }
            (keys.len(), actions)
        };
        self.run(actions);
        n
    }

    /// Length of the value, without reading it.
    pub fn strlen(&self, key: &[u8]) -> Option<u64> {
        let now = self.now();
        let mut g = self.shared.inner.lock();
        self.locate(&mut g, key, now, false)?;
        if let Some(s) = g.ram.get(key) {
            Some(s.value.len() as u64)
        } else if let Some(s) = g.spilling.get(key) {
            Some(s.value.len() as u64)
        } else if let Some(m) = g.disk.get(key) {
            Some(m.len)
        } else {
            g.held.get(key).map(Held::len)
        }
    }

    /// Keys held (expired keys not yet noticed included).
    pub fn len(&self) -> usize {
        let g = self.shared.inner.lock();
        let others = g.spilling.keys().chain(g.disk.keys()).chain(g.held.keys());
        let mut extra = std::collections::HashSet::new();
        for k in others {
            if !g.ram.contains_key(k) {
                extra.insert(k.clone());
            }
        }
        g.ram.len() + extra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ram_used(&self) -> u64 {
        let g = self.shared.inner.lock();
        g.ram_policy.used() + g.spill_bytes + g.held_bytes
    }

    pub fn disk_used(&self) -> u64 {
        self.shared.inner.lock().disk_policy.used()
    }

    /// Waits until no value is on its way to disk (for tests).
    pub async fn flush(&self) {
        while !self.shared.inner.lock().spilling.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Removes every copy of `key`; returns the files to delete.
    fn remove_locked(&self, g: &mut Inner, key: &[u8]) -> Vec<Action> {
        if g.ram.remove(key).is_some() {
            g.ram_policy.remove(key);
        }
        self.remove_below_ram(g, key)
    }

    /// Removes every copy of `key` outside the RAM tier; files to delete. Tiers that are empty
    /// (no disk tier, nothing spilling or held: the usual case) cost no lookup.
    fn remove_below_ram(&self, g: &mut Inner, key: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        if g.spilling.is_empty() && g.disk.is_empty() && g.held.is_empty() {
            return actions;
        }
        if let Some(s) = g.spilling.remove(key) {
            // The spill task sees its entry gone and removes its own file.
            g.spill_bytes -= s.value.len() as u64;
        }
        if let Some(m) = g.disk.remove(key) {
            g.disk_policy.remove(key);
            actions.push(Action::RemoveFile(m.seq));
        }
        if let Some(h) = g.held.remove(key) {
            g.held_bytes -= h.len();
            if let HeldValue::Disk { seq, .. } = h.value {
                actions.push(Action::RemoveFile(seq));
            }
        }
        actions
    }

    /// A SET of a key RAM already holds: the value replaced in its slot and its eviction entry
    /// re-weighed, in two lookups, rather than removed and queued again (which left a stale queue
    /// entry behind per overwrite). Gives the slot back when the key is not in RAM or the new
    /// value is heavier than the whole tier.
    fn replace_in_ram(&self, g: &mut Inner, key: &[u8], slot: Slot) -> Result<Vec<Action>, Slot> {
        let weight = (slot.value.len() + key.len()) as u64;
        if weight > g.ram_policy.capacity() {
            return Err(slot);
        }
        let Some(current) = g.ram.get_mut(key) else { return Err(slot) };
        *current = slot;
        let victims = g.ram_policy.reweigh(key, weight);
        debug_assert!(victims.is_some(), "a key in the RAM tier has an entry in its policy");
        let victims = victims.unwrap_or_default();
        // A copy promoted from disk (or any other tier's copy) is of the old value.
        let mut actions = self.remove_below_ram(g, key);
        actions.extend(self.ram_victims(g, victims));
        Ok(actions)
    }

    fn insert_ram(&self, g: &mut Inner, key: Bytes, slot: Slot) -> Vec<Action> {
        let weight = (slot.value.len() + key.len()) as u64;
        g.ram.insert(key.clone(), slot);
        let victims = g.ram_policy.insert(key, weight);
        self.ram_victims(g, victims)
    }

    /// Moves keys the RAM policy evicted out of the RAM tier: spilled, held, or dropped.
    fn ram_victims(&self, g: &mut Inner, victims: Vec<Bytes>) -> Vec<Action> {
        if victims.is_empty() {
            return Vec::new();
        }
        let now = self.now();
        let mut actions = Vec::new();
        for v in victims {
            let Some(slot) = g.ram.remove(&v) else { continue };
            self.count(&self.shared.stats.ram_evictions);
            if expired(slot.expires, now) {
                continue;
            }
            if slot.on_disk.is_some_and(|seq| g.disk.get(&v).is_some_and(|m| m.seq == seq)) {
                continue;
            }
            let len = slot.value.len() as u64;
            if self.shared.files.is_some() && g.spill_bytes + len <= self.shared.spill_cap {
                let seq = g.next_seq;
                g.next_seq += 1;
                g.spill_bytes += len;
                let spill =
                    Spill { seq, value: slot.value.clone(), expires: slot.expires, lease_until: slot.lease_until };
                g.spilling.insert(v.clone(), spill);
                actions.push(Action::Spill { key: v, seq, value: slot.value });
            } else if slot.lease_until > now && g.held_bytes + len <= self.shared.held_cap {
                g.held_bytes += len;
                let held = Held { value: HeldValue::Ram(slot.value), expires: slot.expires, until: slot.lease_until };
                g.held.insert(v, held);
            } else {
                self.count(&self.shared.stats.dropped);
            }
        }
        actions
    }

    /// Records a finished spill in the disk index; returns files to delete.
    fn spilled(&self, key: Bytes, seq: u64, ok: bool) -> Vec<Action> {
        let mut g = self.shared.inner.lock();
        let current = g.spilling.get(&key).is_some_and(|s| s.seq == seq);
        if !current {
            return vec![Action::RemoveFile(seq)];
        }
        let Some(spill) = g.spilling.remove(&key) else { return Vec::new() };
        let len = spill.value.len() as u64;
        g.spill_bytes -= len;
        if !ok {
            self.count(&self.shared.stats.dropped);
            return vec![Action::RemoveFile(seq)];
        }
        self.count(&self.shared.stats.spilled);
        g.disk.insert(
            key.clone(),
            DiskMeta { seq, len, expires: spill.expires, lease_until: spill.lease_until, hits: 0 },
        );
        let victims = g.disk_policy.insert(key.clone(), len + key.len() as u64);
        let now = self.now();
        let mut actions = Vec::new();
        for v in victims {
            let Some(m) = g.disk.remove(&v) else { continue };
            self.count(&self.shared.stats.disk_evictions);
            if m.lease_until > now && !expired(m.expires, now) && !g.held.contains_key(&v) {
                let held = Held {
                    value: HeldValue::Disk { seq: m.seq, len: m.len },
                    expires: m.expires,
                    until: m.lease_until,
                };
                g.held.insert(v, held);
            } else {
                actions.push(Action::RemoveFile(m.seq));
            }
        }
        actions
    }

    fn sweep_held(&self, g: &mut Inner, now: u64) -> Vec<Action> {
        if g.held.is_empty() {
            return Vec::new();
        }
        let done: Vec<Bytes> =
            g.held.iter().filter(|(_, h)| h.until <= now || expired(h.expires, now)).map(|(k, _)| k.clone()).collect();
        let mut actions = Vec::new();
        for k in done {
            if let Some(h) = g.held.remove(&k) {
                g.held_bytes -= h.len();
                if let HeldValue::Disk { seq, .. } = h.value {
                    actions.push(Action::RemoveFile(seq));
                }
            }
        }
        actions
    }

    fn run(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::RemoveFile(seq) => {
                    let shared = self.shared.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Some(f) = &shared.files {
                            f.remove(seq);
                        }
                    });
                }
                Action::Spill { key, seq, value } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let ok = match this.shared.spill_permits.acquire().await {
                            Ok(_permit) => {
                                let shared = this.shared.clone();
                                let k = key.clone();
                                let written = tokio::task::spawn_blocking(move || {
                                    shared.files.as_ref().map(|f| f.write(seq, &k, &value))
                                })
                                .await;
                                match written {
                                    Ok(Some(Ok(()))) => true,
                                    other => {
                                        this.count(&this.shared.stats.disk_write_errors);
                                        tracing::warn!(result = ?other.map(|r| r.map(|r| r.err())), "KV spill to disk failed");
                                        false
                                    }
                                }
                            }
                            Err(_) => false,
                        };
                        let actions = this.spilled(key, seq, ok);
                        this.run(actions);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(ram: u64, disk: u64, dir: &std::path::Path) -> KvStore {
        KvStore::open(KvStoreConfig {
            ram_capacity: ram,
            disk_capacity: disk,
            dir: dir.join("kv"),
            lease: Duration::from_millis(300),
        })
        .expect("open")
    }

    fn val(n: usize, seed: u8) -> Bytes {
        Bytes::from((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
    }

    #[tokio::test]
    async fn set_get_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1 << 20, 0, dir.path());
        assert_eq!(s.set("k".into(), val(10, 1), SetOptions::default()), SetOutcome::Stored);
        assert_eq!(s.get(b"k").await, Some(val(10, 1)));
        assert!(s.exists_and_pin(b"k"));
        assert_eq!(s.strlen(b"k"), Some(10));
        assert!(s.delete(b"k"));
        assert!(!s.delete(b"k"));
        assert_eq!(s.get(b"k").await, None);
    }

    #[tokio::test]
    async fn overwrites_replace_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1 << 20, 0, dir.path());
        for i in 0..1000u32 {
            let len = 10 + (i as usize % 7);
            assert_eq!(s.set("k".into(), val(len, i as u8), SetOptions::default()), SetOutcome::Stored);
            assert_eq!(s.get(b"k").await, Some(val(len, i as u8)));
            assert_eq!(s.ram_used(), (len + 1) as u64);
        }
        // One queue entry for the key however often it was overwritten.
        assert_eq!(s.shared.inner.lock().ram_policy.queued(), 1);
        // An overwrite clears the TTL unless told to keep it, and ends a lease.
        assert!(s.expire(b"k", 60_000));
        s.set("k".into(), val(3, 0), SetOptions::default());
        assert_eq!(s.ttl(b"k"), Ttl::Persistent);
        let ttl = SetOptions { ttl: Some(Duration::from_secs(60)), ..Default::default() };
        s.set("k".into(), val(3, 1), ttl);
        s.set("k".into(), val(3, 2), SetOptions { keep_ttl: true, ..Default::default() });
        assert!(matches!(s.ttl(b"k"), Ttl::Millis(ms) if ms > 50_000));
        assert_eq!(s.get(b"k").await, Some(val(3, 2)));
    }

    #[tokio::test]
    async fn an_overwrite_heavier_than_ram_evicts_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1000, 0, dir.path());
        s.set("k".into(), val(10, 1), SetOptions::default());
        s.set("k".into(), val(2000, 2), SetOptions::default());
        assert_eq!(s.get(b"k").await, None);
        assert_eq!(s.ram_used(), 0);
    }

    #[tokio::test]
    async fn nx_xx_and_ttls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1 << 20, 0, dir.path());
        let nx = SetOptions { condition: SetCondition::IfAbsent, ..Default::default() };
        let xx = SetOptions { condition: SetCondition::IfPresent, ..Default::default() };
        assert_eq!(s.set("a".into(), val(1, 0), xx), SetOutcome::NotStored);
        assert_eq!(s.set("a".into(), val(1, 0), nx), SetOutcome::Stored);
        assert_eq!(s.set("a".into(), val(1, 1), nx), SetOutcome::NotStored);
        assert_eq!(s.ttl(b"a"), Ttl::Persistent);
        assert!(s.expire(b"a", 60_000));
        assert!(matches!(s.ttl(b"a"), Ttl::Millis(ms) if ms > 59_000));
        let keep = SetOptions { keep_ttl: true, ..Default::default() };
        s.set("a".into(), val(1, 2), keep);
        assert!(matches!(s.ttl(b"a"), Ttl::Millis(_)));
        s.set("a".into(), val(1, 3), SetOptions::default());
        assert_eq!(s.ttl(b"a"), Ttl::Persistent);
        let short = SetOptions { ttl: Some(Duration::from_millis(20)), ..Default::default() };
        s.set("b".into(), val(1, 0), short);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.get(b"b").await, None);
        assert_eq!(s.ttl(b"b"), Ttl::Missing);
        assert!(!s.expire(b"b", 10));
        assert!(s.expire(b"a", 0));
        assert_eq!(s.ttl(b"a"), Ttl::Missing);
    }

    #[tokio::test]
    async fn eviction_spills_to_disk_and_promotes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(10_000, 100_000, dir.path());
        for i in 0..20u8 {
            s.set(format!("k{i}").into(), val(1000, i), SetOptions::default());
            s.flush().await;
        }
        assert!(s.ram_used() <= 10_000 + 10_000 / SPILL_SHARE);
        for i in 0..20u8 {
            let got = s.get(format!("k{i}").as_bytes()).await;
            assert!(got == Some(val(1000, i)), "k{i}");
            // Promotion evicts others; let their spills finish so none is shed.
            s.flush().await;
        }
        assert!(s.stats().disk_hits.load(Ordering::Relaxed) > 0);
        assert_eq!(s.len(), 20);
        // A replaced key never shows its old bytes, wherever the old copy was.
        for i in 0..20u8 {
            s.set(format!("k{i}").into(), val(1000, i + 100), SetOptions::default());
        }
        s.flush().await;
        for i in 0..20u8 {
            if let Some(v) = s.get(format!("k{i}").as_bytes()).await {
                assert!(v == val(1000, i + 100), "k{i} shows an old value");
            }
        }
    }

    #[tokio::test]
    async fn a_lease_keeps_an_evicted_key_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(10_000, 0, dir.path());
        s.set("pinned".into(), val(2000, 9), SetOptions::default());
        assert!(s.exists_and_pin(b"pinned"));
        for i in 0..10u8 {
            s.set(format!("other{i}").into(), val(2000, i), SetOptions::default());
        }
        assert!(s.get(b"pinned").await == Some(val(2000, 9)), "evicted while leased");
        tokio::time::sleep(Duration::from_millis(350)).await;
        s.set("late".into(), val(10, 0), SetOptions::default());
        assert!(s.get(b"pinned").await.is_none(), "held after its lease");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8, usize),
        SetNx(u8, u8),
        Get(u8),
        Exists(u8),
        Delete(u8),
        Flush,
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..12u8, any::<u8>(), 1..4000usize).prop_map(|(k, s, n)| Op::Set(k, s, n)),
            (0..12u8, any::<u8>()).prop_map(|(k, s)| Op::SetNx(k, s)),
            (0..12u8).prop_map(Op::Get),
            (0..12u8).prop_map(Op::Exists),
            (0..12u8).prop_map(Op::Delete),
            Just(Op::Flush),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The store against a map: with eviction (small tiers) a read may miss, but what it
        /// returns is always the last value set for that key, and a deleted key stays gone.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec(arb_op(), 1..120), disk in proptest::bool::ANY) {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let s = open(12_000, if disk { 30_000 } else { 0 }, dir.path());
                let mut model: HashMap<u8, Bytes> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Set(k, seed, n) => {
                            s.set(Bytes::from(vec![k]), val(n, seed), SetOptions::default());
                            model.insert(k, val(n, seed));
                        }
                        Op::SetNx(k, seed) => {
                            let nx = SetOptions { condition: SetCondition::IfAbsent, ..Default::default() };
                            if s.set(Bytes::from(vec![k]), val(100, seed), nx) == SetOutcome::Stored {
                                model.insert(k, val(100, seed));
                            }
                        }
                        Op::Get(k) => {
                            if let Some(v) = s.get(&[k]).await {
                                assert!(model.get(&k) == Some(&v), "key {k}: wrong or deleted value");
                            }
                        }
                        Op::Exists(k) => {
                            if s.exists_and_pin(&[k]) {
                                assert!(model.contains_key(&k), "key {k} exists after delete");
                            }
                        }
                        Op::Delete(k) => {
                            s.delete(&[k]);
                            model.remove(&k);
                        }
                        Op::Flush => s.flush().await,
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn expire_conditions_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1 << 20, 0, dir.path());
        s.set("k".into(), val(1, 0), SetOptions::default());
        assert!(!s.expire_if(b"k", 10_000, ExpireCondition::IfSome));
        assert!(!s.expire_if(b"k", 10_000, ExpireCondition::IfLater), "no TTL counts as infinite");
        assert!(s.expire_if(b"k", 10_000, ExpireCondition::IfNone));
        assert!(!s.expire_if(b"k", 20_000, ExpireCondition::IfNone));
        assert!(s.expire_if(b"k", 20_000, ExpireCondition::IfLater));
        assert!(!s.expire_if(b"k", 30_000, ExpireCondition::IfEarlier));
        assert!(s.expire_if(b"k", 5_000, ExpireCondition::IfEarlier));
        assert!(matches!(s.ttl(b"k"), Ttl::Millis(ms) if ms <= 5_000));
        assert!(s.persist(b"k"));
        assert!(!s.persist(b"k"));
        assert_eq!(s.ttl(b"k"), Ttl::Persistent);
        assert!(s.expire_if(b"k", -1, ExpireCondition::IfEarlier), "LT always holds for no TTL");
        assert_eq!(s.ttl(b"k"), Ttl::Missing);
        assert!(!s.expire_if(b"k", 1_000, ExpireCondition::Always));
        // A TTL of zero stores a key that is already gone.
        s.set("z".into(), val(1, 0), SetOptions { ttl: Some(Duration::ZERO), ..Default::default() });
        assert_eq!(s.get(b"z").await, None);
    }

    #[tokio::test]
    async fn scan_returns_every_key_once_whatever_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(1 << 22, 0, dir.path());
        for i in 0..500 {
            s.set(format!("k{i}").into(), val(10, 0), SetOptions::default());
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut steps = 0;
        loop {
            let (next, keys) = s.scan(cursor, 37);
            assert!(keys.len() <= 40);
            for k in keys {
                assert!(seen.insert(k.clone()) || !k.starts_with(b"k"), "returned twice: {k:?}");
            }
            // Keys added and removed meanwhile do not disturb the others.
            s.set(format!("new{steps}").into(), val(10, 0), SetOptions::default());
            s.delete(format!("new{}", steps.max(1) - 1).as_bytes());
            steps += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!((0..500).all(|i| seen.contains(format!("k{i}").as_bytes())));
        assert_eq!(s.clear(), 501);
        assert_eq!(s.scan(0, 10), (0, Vec::new()));
    }

    #[tokio::test]
    async fn deleted_while_spilling_stays_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(10_000, 100_000, dir.path());
        s.set("a".into(), val(6000, 1), SetOptions::default());
        s.set("b".into(), val(6000, 2), SetOptions::default());
        s.delete(b"a");
        s.flush().await;
        assert_eq!(s.get(b"a").await, None);
        assert_eq!(s.get(b"b").await, Some(val(6000, 2)));
    }
}
