//! `cairn-sim membership`: the real `cairn_membership::Membership` (SWIM via foca within cells,
//! the cluster-wide table spread by rumors and repaired by anti-entropy, sealed packets, the
//! derived cluster map) driven over a simulated network in one process.
//!
//! The network is a discrete-event loop (packets, foca timers and each node's periodic
//! `Membership::tick` every `Config::gossip_every`, in microseconds, taken in (time, push order)
//! from a [`Queue`]) with per-packet
//! latency and jitter, packet loss and stalls (a stalled node handles nothing until it resumes;
//! packets and timers due meanwhile are kept and handled when it resumes, like a SIGSTOPped
//! process whose socket buffer keeps them). Crashed nodes drop everything.
//!
//! Members use a compact identity ([`SimId`]: index, generation, join second, leaving flag;
//! 16 bytes) whose node id, rack and cell come from the index: racks of 40 consecutive indices,
//! racks dealt round-robin to `ceil(N / --cell-size)` cells (so nodes that join later land in the
//! existing cells), zone = cell. `--cell-size 0` puts every node in one cell (a flat SWIM pool:
//! the reference the cells are compared against). Its gossip address is its index.
//!
//! What is modelled rather than simulated packet by packet:
//! - the snapshot a joiner fetches once over HTTP (`Membership::snapshot` / `learn`) is one
//!   direct transfer: the joiner's table becomes a copy of the seed's table (plus its own record),
//!   which is what `learn` yields on a fresh node (its own cell's members reach its SWIM through
//!   the seeds' answer to its hello); its bytes are counted as the postcard-encoded size of the
//!   seed's snapshot (computed exactly for a sample of joiners);
//! - nodes holding equal table buckets share one copy (`Table::share` with an interner keyed by
//!   (cell, bucket index, bucket digest)), done every simulated second for the nodes whose table
//!   changed; it is what lets 100,000 full tables fit in one process. The digest covers node id,
//!   generation, status and leaving, not `changed_ms`, which nodes stamp with their own clocks:
//!   converged nodes' buckets are equal but for those times, so sharing makes a node adopt the
//!   interned copy's `changed_ms` (counted in the report as "replaced records"). `changed_ms`
//!   only decides which of two equal records' time is kept, whether a record learned through
//!   anti-entropy is re-spread (younger than 30 s) and when a dead member is removed from the map
//!   (10 min) and forgotten.
//!
//! Scenarios, run one after the other on one cluster per size:
//! 1. form: N nodes start over `--spread` seconds, each says hello to 3 seeds and takes a seed's
//!    snapshot; time until every node's table holds exactly the true member set (length and every
//!    cell digest equal to the digests computed from the simulator's ground truth). With
//!    `--form preformed` every node starts with the full table instead (a cluster that has formed,
//!    as after a restart of all nodes with their snapshots): forming a large cluster from nothing
//!    costs every node O(N) rumored records, O(N²) in one process;
//! 2. steady state: packets and bytes sent per node per second over `--steady` seconds;
//! 3. crash: `--crash` random nodes stop; time until each live node's table shows each of them
//!    `Dead` (from the `Change::Down` a cell member reports, exact; for other cells, from the
//!    node's table record, checked every 250 ms);
//! 4. false positives: (a) `--loss-test` loss for `--loss-secs`, (b) 3 nodes stalled 5 s each;
//!    live nodes declared down by anyone (a `Change::Down`, or a `Dead` record of a live node in a
//!    sample of tables), suspicions and refutations;
//! 5. a rack of 40 dies at once; time until all live nodes' tables show all 40 dead; keys moved;
//! 6. `min(1000, N/2)` nodes join at once (hello + a seed's snapshot), into the existing cells;
//!    convergence; keys moved in one node's map per ramp step;
//! 7. memory: process RSS growth while forming, and the table's bytes with and without sharing.
//!
//! At the end of scenarios 3 and 5 the derived map (`Membership::map`) of a sample of live nodes is
//! checked to show the victims as down.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering as AtOrd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cairn_core::cluster::{ClusterMap, NodeEntry, NodeState};
use cairn_core::placement::Placement;
use cairn_membership::table::{BUCKETS, Bucket, Cell};
use cairn_membership::{Change, Config, Member, Membership, NodeIdentity, Outbox, Record, Stats, Status, Table};
use foca::Timer;
use serde::{Deserialize, Serialize};

/// Unix milliseconds at simulated time zero.
const BASE_MS: u64 = 1_700_000_000_000;
const SECRET: &[u8] = b"cairn-sim membership secret";
const SEEDS: [u32; 3] = [0, 1, 2];
const KEYS: u64 = 200_000;
/// How often the watchers check tables (simulated µs).
const CHECK_US: u64 = 250_000;
/// How often tables are shared (simulated µs).
const SHARE_US: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Compact identity and layout

/// Nodes per rack and number of cells (racks are dealt round-robin to cells).
static RACK_SIZE: AtomicU32 = AtomicU32::new(40);
static CELLS: AtomicU32 = AtomicU32::new(1);

/// Sets the layout for the identities that follow.
pub fn set_layout(rack_size: u32, cells: u32) {
    RACK_SIZE.store(rack_size.max(1), AtOrd::Relaxed);
    CELLS.store(cells.max(1), AtOrd::Relaxed);
}

fn rack_of(idx: u32) -> u32 {
    idx / RACK_SIZE.load(AtOrd::Relaxed)
}

fn cell_of(idx: u32) -> u64 {
    u64::from(rack_of(idx) % CELLS.load(AtOrd::Relaxed))
}

/// A member of the simulated cluster: 16 bytes instead of `NodeIdentity`'s ~180 plus strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SimId {
    idx: u32,
    /// 0 only for a placeholder (a seed known by address).
    generation: u32,
    /// Simulated second at which this node's cache joined (0: an original member, no ramp).
    joined_s: u32,
    leaving: bool,
}

impl SimId {
    fn new(idx: u32, joined_s: u32) -> Self {
        Self { idx, generation: 1, joined_s, leaving: false }
    }
}

static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();

/// Creates the node ids of indices below `n` (once per process; later calls cannot grow it).
fn init_names(n: usize) {
    NAMES.get_or_init(|| (0..n).map(|i| &*Box::leak(format!("n{i:06}").into_boxed_str())).collect());
}

/// The node id of index `idx` ("n000123").
fn name(idx: u32) -> &'static str {
    NAMES.get().and_then(|v| v.get(idx as usize)).copied().expect("node ids created for this index")
}

impl foca::Identity for SimId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(Self { generation: self.generation + 1, leaving: false, ..*self })
    }

    fn addr(&self) -> u32 {
        self.idx
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.leaving) > (adversary.generation, adversary.leaving)
    }
}

impl Member for SimId {
    fn node_id(&self) -> &str {
        if self.generation == 0 { "" } else { name(self.idx) }
    }

    fn same_node(&self, other: &Self) -> bool {
        // Ids come from indices; a placeholder's is empty.
        match (self.generation, other.generation) {
            (0, 0) => true,
            (0, _) | (_, 0) => false,
            _ => self.idx == other.idx,
        }
    }

    fn cell(&self) -> u64 {
        cell_of(self.idx)
    }

    fn generation(&self) -> u64 {
        u64::from(self.generation)
    }

    fn leaving(&self) -> bool {
        self.leaving
    }

    fn as_leaving(&self) -> Self {
        Self { generation: self.generation + 1, leaving: true, ..*self }
    }

    fn placeholder(addr: u32) -> Self {
        Self { idx: addr, generation: 0, joined_s: 0, leaving: false }
    }

    fn entry(&self) -> NodeEntry {
        NodeEntry {
            id: name(self.idx).to_string(),
            addr: format!("10.{}.{}.{}:7100", self.idx >> 16, (self.idx >> 8) & 0xff, self.idx & 0xff),
            zone: format!("cell-{}", cell_of(self.idx)),
            rack: format!("r{}", rack_of(self.idx)),
            weight: 100,
            state: NodeState::Up,
        }
    }

    fn joined_ms(&self) -> u64 {
        if self.joined_s == 0 { 0 } else { BASE_MS + u64::from(self.joined_s) * 1000 }
    }

    fn domain(&self) -> Option<u64> {
        Some(u64::from(rack_of(self.idx)))
    }
}

/// Bytes of an unsigned varint (postcard's encoding of integers wider than a byte).
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Postcard-encoded size of a snapshot (`Vec<Record<SimId>>`): length, then per record the
/// identity's fields, the status variant and `changed_ms`.
fn snapshot_bytes(records: &[Record<SimId>]) -> usize {
    varint_len(records.len() as u64)
        + records
            .iter()
            .map(|r| {
                let m = &r.member;
                varint_len(m.idx.into())
                    + varint_len(m.generation.into())
                    + varint_len(m.joined_s.into())
                    + 1
                    + 1
                    + varint_len(r.changed_ms)
            })
            .sum::<usize>()
}

/// What `Membership::learn(snapshot)` does on a fresh node, without merging the snapshot record
/// by record: the node's own cell's records are learned (which tells its SWIM about them), then
/// its table becomes a copy of `table` (sharing its cells) plus its own record.
fn adopt(m: &mut Membership<SimId>, mut table: Table<SimId>, now_ms: u64, out: &mut Outbox<SimId>) {
    let me = *m.identity();
    table.merge(&Record { member: me, status: Status::Alive, changed_ms: now_ms });
    // The table first, as `learn` of the whole snapshot would leave it; then `learn` of nothing
    // more, which hands the cell's members in the table to the node's SWIM (the records
    // themselves would be no news to the table: merging them again only costs lookups).
    *m.table_mut() = table;
    m.learn(Vec::new(), now_ms, out);
}

// ---------------------------------------------------------------------------------------------
// Network

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub latency_us: u64,
    pub jitter_us: u64,
    pub loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self { latency_us: 500, jitter_us: 200, loss: 0.0 }
    }
}

enum Kind {
    Packet(Vec<u8>),
    Timer(Timer<SimId>),
    Tick,
}

struct Ev {
    at: u64,
    seq: u64,
    node: u32,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap, the earliest event must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: events come out in (time, push order) exactly as from one binary heap, but
/// the heap only ever holds the events of one 64 µs slot. Events due within the next ~2 s wait in
/// a ring of per-slot lists (a push is an append); later ones (suspicion and removal timers) in a
/// heap of their own, moved to the ring as their slot comes within reach. With a million events
/// queued at 100,000 nodes, one heap's pop was a third of the simulator's time.
struct Queue {
    seq: u64,
    /// The slot whose events are in `current`: every event of an earlier slot has been popped.
    cursor: u64,
    current: BinaryHeap<Ev>,
    /// Slot `s` for `cursor < s < cursor + RING` at `s % RING`.
    ring: Vec<Vec<Ev>>,
    in_ring: usize,
    /// Events of slot `cursor + RING` and later.
    far: BinaryHeap<Ev>,
}

/// log2 of a slot's width in µs, and the slots in the ring (2.1 s).
const SLOT_SHIFT: u32 = 6;
const RING: u64 = 1 << 15;

impl Queue {
    fn new() -> Self {
        Self {
            seq: 0,
            cursor: 0,
            current: BinaryHeap::new(),
            ring: (0..RING).map(|_| Vec::new()).collect(),
            in_ring: 0,
            far: BinaryHeap::new(),
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.in_ring + self.far.len()
    }

    fn push(&mut self, at: u64, node: u32, kind: Kind) {
        self.seq += 1;
        self.place(Ev { at, seq: self.seq, node, kind });
    }

    fn place(&mut self, ev: Ev) {
        let slot = ev.at >> SLOT_SHIFT;
        if slot <= self.cursor {
            self.current.push(ev);
        } else if slot < self.cursor + RING {
            self.ring[(slot % RING) as usize].push(ev);
            self.in_ring += 1;
        } else {
            self.far.push(ev);
        }
    }

    /// The time of the next event.
    fn peek_at(&mut self) -> Option<u64> {
        while self.current.is_empty() {
            if !self.advance() {
                return None;
            }
        }
        self.current.peek().map(|e| e.at)
    }

    fn pop(&mut self) -> Option<Ev> {
        self.peek_at()?;
        self.current.pop()
    }

    /// Moves the cursor to the next slot (`current` is empty); false when no event is left.
    fn advance(&mut self) -> bool {
        if self.in_ring == 0 {
            let Some(next) = self.far.peek().map(|e| e.at >> SLOT_SHIFT) else { return false };
            // Nothing in reach: jump to just before the next far event's slot.
            self.cursor = self.cursor.max(next - 1);
        }
        self.cursor += 1;
        while self.far.peek().is_some_and(|e| e.at >> SLOT_SHIFT < self.cursor + RING) {
            let Some(ev) = self.far.pop() else { break };
            self.place(ev);
        }
        let i = (self.cursor % RING) as usize;
        let taken = std::mem::take(&mut self.ring[i]);
        self.in_ring -= taken.len();
        self.current = BinaryHeap::from(taken);
        true
    }
}

/// One watched victim: when each live node first held it `Dead`.
struct Victim {
    id: SimId,
    /// µs after the watch started, per observer, or u64::MAX.
    seen: Vec<u64>,
    /// Live observers that have not seen it yet (compacted at each check).
    unseen: Vec<u32>,
    /// Observers in the victim's cell (they learn it from their SWIM).
    same_cell: Vec<bool>,
}

struct Watch {
    start_us: u64,
    /// Per node, its table's epoch at the last check: a table that has not changed since cannot
    /// have come to hold a victim dead, and is not looked up again.
    checked_epoch: Vec<u64>,
    victims: Vec<Victim>,
    slot: HashMap<u32, usize>,
}

/// What the simulator shares tables with (see the module doc).
#[derive(Default)]
struct Interner {
    /// One bucket per (cell, bucket index, digest).
    buckets: HashMap<(u64, usize, u64), Arc<Bucket<SimId>>>,
    /// The bucket last interned per (cell, bucket index), at `cell * BUCKETS + bucket`: most
    /// buckets a node holds are this one already, found without hashing.
    last: Vec<Option<Arc<Bucket<SimId>>>>,
    /// Whole tables by (length, cell digests), with the share pass that interned them: a node
    /// whose table is equal takes a clone (sharing every cell, not only the buckets).
    tables: HashMap<u64, (Table<SimId>, u64)>,
    /// One cell per (cell, digest), interned by the per-second pass: a node that holds its own
    /// copy of a cell (copied on write) takes the interned one once their buckets are the same.
    cells: CellInterner,
}

/// Interned cells by (cell, digest).
type CellInterner = HashMap<(u64, u64), Arc<Cell<SimId>>>;

/// Key of a table for the table interner: its length and cell digests (cells `0..cells`).
fn table_key(t: &Table<SimId>, cells: u32) -> u64 {
    let mut h = (t.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for c in 0..u64::from(cells) {
        h = (h.rotate_left(23) ^ t.cell_digest(c)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    h
}

/// Replaces each bucket of `t` by the interned one of equal (cell, index, digest), or interns it.
/// A bucket already shared costs one pointer comparison. Unless `all_cells`, only the cells `t`
/// holds alone (changed since they were last shared) are looked at. With `cells`, each cell `t`
/// holds alone is then replaced by the interned cell of equal (cell, digest) and buckets, or
/// interned.
fn share_buckets(
    t: &mut Table<SimId>,
    all_cells: bool,
    buckets: &mut HashMap<(u64, usize, u64), Arc<Bucket<SimId>>>,
    last: &mut [Option<Arc<Bucket<SimId>>>],
    mut cells: Option<&mut CellInterner>,
    retimed: &mut u64,
) {
    let cells_too = cells.is_some();
    let intern_cell = |k: u64, cell: &Arc<Cell<SimId>>| {
        let cells = cells.as_deref_mut()?;
        match cells.get(&(k, cell.digest)) {
            Some(s) if s.len == cell.len && s.buckets.iter().zip(&cell.buckets).all(|(a, b)| Arc::ptr_eq(a, b)) => {
                Some(s.clone())
            }
            _ => {
                cells.insert((k, cell.digest), cell.clone());
                None
            }
        }
    };
    t.share(
        all_cells,
        cells_too,
        |cell, b, arc| {
            let slot = last.get_mut(cell as usize * BUCKETS + b)?;
            if let Some(s) = slot.as_ref() {
                if Arc::ptr_eq(s, arc) {
                    return None;
                }
                if s.digest == arc.digest {
                    *retimed += 1;
                    return Some(s.clone());
                }
            }
            let s = buckets.entry((cell, b, arc.digest)).or_insert_with(|| arc.clone()).clone();
            *slot = Some(s.clone());
            if Arc::ptr_eq(&s, arc) {
                return None;
            }
            *retimed += 1;
            Some(s)
        },
        intern_cell,
    );
}

fn same_table(a: &Table<SimId>, b: &Table<SimId>, cells: u32) -> bool {
    a.len() == b.len() && (0..u64::from(cells)).all(|c| a.cell_digest(c) == b.cell_digest(c))
}

pub struct Sim {
    now: u64,
    queue: Queue,
    pub nodes: Vec<Option<Membership<SimId>>>,
    dead: Vec<bool>,
    stalled_until: Vec<u64>,
    pub net: NetConfig,
    cfg: Config,
    rng: u64,
    watch: Option<Watch>,
    /// Down changes about members that were not crashed.
    pub false_downs: u64,
    pub falsely_downed: HashSet<u32>,
    pub packets_dropped: u64,
    interner: Interner,
    /// Per node, the table epoch when its buckets were last shared (after every event that
    /// changed its table), and when the per-second pass last looked at it.
    shared_epoch: Vec<u64>,
    passed_epoch: Vec<u64>,
    next_share_us: u64,
    share_passes: u64,
    /// Buckets replaced by an interned one with the same digest (the records may differ in
    /// `changed_ms`, which the digest does not cover), and tables replaced by an equal one.
    pub retimed: u64,
    pub tables_taken: u64,
    /// Snapshots transferred, and their postcard bytes (sampled: sum over the sample, count).
    pub snapshots: u64,
    snapshot_sample: (u64, u64),
    /// Wall time spent in sharing and in checks (profiling counters).
    pub wall_share: Duration,
    pub wall_check: Duration,
    pub events: u64,
}

impl Sim {
    pub fn new(capacity: usize, net: NetConfig, cfg: Config, seed: u64) -> Self {
        Self {
            now: 0,
            queue: Queue::new(),
            nodes: (0..capacity).map(|_| None).collect(),
            dead: vec![false; capacity],
            stalled_until: vec![0; capacity],
            net,
            cfg,
            rng: seed | 1,
            watch: None,
            false_downs: 0,
            falsely_downed: HashSet::new(),
            packets_dropped: 0,
            interner: Interner {
                last: vec![None; CELLS.load(AtOrd::Relaxed) as usize * BUCKETS],
                ..Default::default()
            },
            shared_epoch: vec![0; capacity],
            passed_epoch: vec![0; capacity],
            next_share_us: SHARE_US,
            share_passes: 0,
            retimed: 0,
            tables_taken: 0,
            snapshots: 0,
            snapshot_sample: (0, 0),
            wall_share: Duration::ZERO,
            wall_check: Duration::ZERO,
            events: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn rand_f64(&mut self) -> f64 {
        (self.rand() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn now_ms(&self) -> u64 {
        BASE_MS + self.now / 1000
    }

    pub fn now_s(&self) -> f64 {
        self.now as f64 / 1e6
    }

    fn push(&mut self, at: u64, node: u32, kind: Kind) {
        self.queue.push(at, node, kind);
    }

    fn absorb(&mut self, from: u32, out: Outbox<SimId>) {
        for (to, p) in out.sends {
            let t = to.idx as usize;
            if t >= self.nodes.len() {
                self.packets_dropped += 1;
                continue;
            }
            if self.net.loss > 0.0 && self.rand_f64() < self.net.loss {
                self.packets_dropped += 1;
                continue;
            }
            let j = self.net.jitter_us;
            let delay = if j == 0 { self.net.latency_us } else { self.net.latency_us + self.rand() % (2 * j + 1) - j };
            self.push(self.now + delay.max(1), to.idx, Kind::Packet(p));
        }
        for (after, t) in out.timers {
            self.push(self.now + after.as_micros() as u64, from, Kind::Timer(t));
        }
        for c in out.changes {
            if let Change::Down(m) = c {
                if m.generation == 0 {
                    continue;
                }
                if let Some(w) = &mut self.watch
                    && let Some(&s) = w.slot.get(&m.idx)
                {
                    let v = &mut w.victims[s];
                    if v.seen[from as usize] == u64::MAX && m.generation >= v.id.generation {
                        v.seen[from as usize] = self.now - w.start_us;
                    }
                }
                if !self.dead[m.idx as usize] {
                    self.false_downs += 1;
                    self.falsely_downed.insert(m.idx);
                }
            }
        }
    }

    /// Starts node `id`: hello to the seeds (none for the first seed) and, if given, the snapshot
    /// of that seed's table, modelled as one transfer.
    pub fn start(&mut self, id: SimId, snapshot_from: Option<u32>) {
        let i = id.idx as usize;
        let mut m = Membership::new(id, self.cfg.clone(), SECRET, 0x5eed ^ u64::from(id.idx));
        let mut out = Outbox::default();
        let now = self.now_ms();
        let seeds: Vec<u32> =
            SEEDS.iter().copied().filter(|&s| s != id.idx && self.nodes[s as usize].is_some()).collect();
        m.join(&seeds, now, &mut out);
        if let Some(s) = snapshot_from.filter(|&s| s != id.idx)
            && let Some(seed) = self.nodes[s as usize].as_ref()
        {
            let sample_every = (self.nodes.len() as u64 / 200).max(1);
            if self.snapshots.is_multiple_of(sample_every) {
                self.snapshot_sample.0 += snapshot_bytes(&seed.snapshot()) as u64;
                self.snapshot_sample.1 += 1;
            }
            self.snapshots += 1;
            let table = seed.table().clone();
            adopt(&mut m, table, now, &mut out);
        }
        self.nodes[i] = Some(m);
        self.dead[i] = false;
        self.shared_epoch[i] = 0;
        self.passed_epoch[i] = 0;
        self.absorb(id.idx, out);
        let phase = self.rand() % (self.cfg.gossip_every.as_micros() as u64).max(1);
        self.push(self.now + phase, id.idx, Kind::Tick);
    }

    /// Starts node `id` as a member of a formed cluster ("preformed" forming): its table is
    /// `table` (every member, itself included) and its SWIM knows its cell's members. It says no
    /// hello: a hello tells the seeds about a node they do not know and fetches its cell's
    /// members, and in a formed cluster everyone knows everyone already.
    pub fn start_preformed(&mut self, id: SimId, table: &Table<SimId>) {
        let i = id.idx as usize;
        let mut m = Membership::new(id, self.cfg.clone(), SECRET, 0x5eed ^ u64::from(id.idx));
        let mut out = Outbox::default();
        let now = self.now_ms();
        if self.snapshot_sample.1 == 0 {
            let all: Vec<Record<SimId>> = table.iter().cloned().collect();
            self.snapshot_sample = (snapshot_bytes(&all) as u64, 1);
        }
        adopt(&mut m, table.clone(), now, &mut out);
        self.snapshots += 1;
        self.nodes[i] = Some(m);
        self.dead[i] = false;
        self.shared_epoch[i] = 0;
        self.passed_epoch[i] = 0;
        self.absorb(id.idx, out);
        let phase = self.rand() % (self.cfg.gossip_every.as_micros() as u64).max(1);
        self.push(self.now + phase, id.idx, Kind::Tick);
    }

    /// Mean postcard bytes of a snapshot (over the sampled ones).
    pub fn snapshot_mean_bytes(&self) -> f64 {
        self.snapshot_sample.0 as f64 / self.snapshot_sample.1.max(1) as f64
    }

    pub fn crash(&mut self, idx: u32) {
        self.dead[idx as usize] = true;
    }

    pub fn stall(&mut self, idx: u32, for_us: u64) {
        self.stalled_until[idx as usize] = self.now + for_us;
    }

    pub fn live(&self) -> impl Iterator<Item = (u32, &Membership<SimId>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.dead[*i])
            .filter_map(|(i, m)| m.as_ref().map(|m| (i as u32, m)))
    }

    fn live_count(&self) -> usize {
        self.live().count()
    }

    /// Handles every event due up to `until_us`.
    fn run_events(&mut self, until_us: u64) {
        let tick_us = self.cfg.gossip_every.as_micros() as u64;
        while let Some(at) = self.queue.peek_at() {
            if at > until_us {
                break;
            }
            let Some(ev) = self.queue.pop() else { break };
            self.now = ev.at;
            let i = ev.node as usize;
            if self.dead[i] {
                continue;
            }
            if self.stalled_until[i] > ev.at {
                let resume = self.stalled_until[i];
                self.push(resume, ev.node, ev.kind);
                continue;
            }
            self.events += 1;
            let now_ms = self.now_ms();
            let Some(m) = self.nodes[i].as_mut() else { continue };
            let mut out = Outbox::default();
            let mut requeue = false;
            match ev.kind {
                Kind::Packet(p) => {
                    let _ = m.handle_packet(&p, now_ms, &mut out);
                }
                Kind::Timer(t) => m.handle_timer(t, now_ms, &mut out),
                Kind::Tick => {
                    m.tick(now_ms, &mut out);
                    requeue = true;
                }
            }
            // The buckets this event copied (on write) are shared again at once: otherwise, while
            // news spreads (1,000 joins into 100,000 tables), every node would hold its own copy
            // of every bucket that changed since the last pass.
            if m.epoch() != self.shared_epoch[i] {
                self.shared_epoch[i] = m.epoch();
                let t = Instant::now();
                let Interner { buckets, last, .. } = &mut self.interner;
                share_buckets(m.table_mut(), false, buckets, last, None, &mut self.retimed);
                self.wall_share += t.elapsed();
            }
            if requeue {
                self.push(ev.at + tick_us, ev.node, Kind::Tick);
            }
            self.absorb(ev.node, out);
        }
        self.now = self.now.max(until_us);
    }

    /// Advances simulated time in steps of 250 ms, checking the watch after each and sharing
    /// tables every simulated second.
    pub fn run_until(&mut self, until_us: u64) {
        while self.now < until_us {
            let next = (self.now / CHECK_US + 1) * CHECK_US;
            self.run_events(next.min(until_us));
            if self.now.is_multiple_of(CHECK_US) {
                self.check_watch();
            }
            if self.now >= self.next_share_us {
                self.next_share_us = self.now + SHARE_US;
                self.share_all(false);
            }
        }
    }

    /// Shares equal tables and buckets among nodes (those whose table changed since the last
    /// pass, or all with `full`): a node whose table equals one interned within the last few
    /// passes takes a clone of it; otherwise each of its buckets is replaced by the interned one
    /// of equal (cell, index, digest), or interned. Nothing is allocated for a bucket already
    /// shared.
    fn share_all(&mut self, full: bool) {
        let t = Instant::now();
        let cells = CELLS.load(AtOrd::Relaxed);
        let Interner { buckets, last, tables, cells: cell_interner } = &mut self.interner;
        let pass = self.share_passes;
        let retimed = &mut self.retimed;
        let mut tables_taken = 0u64;
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            let Some(m) = slot else { continue };
            let e = m.epoch();
            if !full && self.passed_epoch[i] == e {
                continue;
            }
            self.passed_epoch[i] = e;
            self.shared_epoch[i] = e;
            let key = table_key(m.table(), cells);
            if let Some((rep, _)) = tables.get(&key)
                && same_table(rep, m.table(), cells)
            {
                *m.table_mut() = rep.clone();
                tables_taken += 1;
                continue;
            }
            share_buckets(m.table_mut(), full, buckets, last, Some(cell_interner), retimed);
            tables.insert(key, (m.table().clone(), pass));
        }
        self.tables_taken += tables_taken;
        self.share_passes += 1;
        // Tables interned more than 3 passes ago are dropped (nodes converge within a few).
        tables.retain(|_, (_, p)| *p + 3 > pass);
        if full || self.share_passes.is_multiple_of(10) {
            // Drop buckets no node holds any more (the interner's own references aside).
            buckets.retain(|(c, b, _), a| {
                let in_last =
                    last.get(*c as usize * BUCKETS + *b).and_then(|s| s.as_ref()).is_some_and(|s| Arc::ptr_eq(s, a));
                Arc::strong_count(a) > 1 + usize::from(in_last)
            });
            cell_interner.retain(|_, c| Arc::strong_count(c) > 1);
        }
        self.wall_share += t.elapsed();
    }

    fn watch(&mut self, victims: &[u32]) {
        let n = self.nodes.len();
        let observers: Vec<u32> = self.live().map(|(i, _)| i).filter(|i| !victims.contains(i)).collect();
        let victims: Vec<Victim> = victims
            .iter()
            .map(|&v| {
                let id = *self.nodes[v as usize].as_ref().expect("victim started").identity();
                let mut same_cell = vec![false; n];
                for &o in &observers {
                    same_cell[o as usize] = cell_of(o) == cell_of(v);
                }
                Victim { id, seen: vec![u64::MAX; n], unseen: observers.clone(), same_cell }
            })
            .collect();
        self.watch = Some(Watch {
            start_us: self.now,
            checked_epoch: vec![0; n],
            slot: victims.iter().enumerate().map(|(s, v)| (v.id.idx, s)).collect(),
            victims,
        });
    }

    /// Marks observers whose table now holds a victim `Dead` (a lookup per observer not yet seeing
    /// it whose table changed since the last check).
    fn check_watch(&mut self) {
        let t = Instant::now();
        let Some(w) = &mut self.watch else { return };
        let elapsed = self.now - w.start_us;
        let mut changed = vec![false; self.nodes.len()];
        for (i, m) in self.nodes.iter().enumerate() {
            if let Some(m) = m
                && m.epoch() != w.checked_epoch[i]
            {
                w.checked_epoch[i] = m.epoch();
                changed[i] = true;
            }
        }
        for v in &mut w.victims {
            let (cell, id) = (v.id.cell(), name(v.id.idx));
            let gen_ = v.id.generation();
            v.unseen.retain(|&o| {
                let o = o as usize;
                if self.dead[o] {
                    return false;
                }
                if v.seen[o] != u64::MAX {
                    return false;
                }
                if !changed[o] {
                    return true;
                }
                let Some(m) = self.nodes[o].as_ref() else { return false };
                let down =
                    m.table().get(cell, id).is_some_and(|r| r.status == Status::Dead && r.member.generation() >= gen_);
                if down {
                    v.seen[o] = elapsed;
                }
                !down
            });
        }
        self.wall_check += t.elapsed();
    }

    fn watch_missing(&self) -> usize {
        self.watch.as_ref().map_or(0, |w| w.victims.iter().map(|v| v.unseen.len()).sum())
    }

    /// Per (live observer, victim): seconds until seen `Dead` (all, same cell, other cells), and
    /// the count of pairs not seen.
    fn watch_result(&mut self) -> WatchResult {
        let mut r = WatchResult::default();
        let Some(w) = self.watch.take() else { return r };
        for v in &w.victims {
            let (mut first, mut last) = (f64::INFINITY, 0f64);
            for (o, &s) in v.seen.iter().enumerate() {
                if s != u64::MAX && !self.dead[o] {
                    first = first.min(s as f64 / 1e6);
                    last = last.max(s as f64 / 1e6);
                }
            }
            r.per_victim.push((v.id.idx, first, last));
            for (o, &s) in v.seen.iter().enumerate() {
                if self.dead[o] || self.nodes[o].is_none() || o as u32 == v.id.idx {
                    continue;
                }
                if s == u64::MAX {
                    if v.unseen.contains(&(o as u32)) {
                        r.missing += 1;
                    }
                    continue;
                }
                let t = s as f64 / 1e6;
                r.all.push(t);
                if v.same_cell[o] { r.cell.push(t) } else { r.other.push(t) }
            }
        }
        for x in [&mut r.all, &mut r.cell, &mut r.other] {
            x.sort_by(f64::total_cmp);
        }
        r
    }

    fn stats_sum(&self) -> Stats {
        let mut s = Stats::default();
        for (_, m) in self.live() {
            let x = m.stats();
            s.packets_out += x.packets_out;
            s.bytes_out += x.bytes_out;
            s.suspicions += x.suspicions;
            s.refutations += x.refutations;
            s.confirmations += x.confirmations;
            s.rejected += x.rejected;
            s.repaired_records += x.repaired_records;
        }
        s
    }

    /// The true table: its length and one digest per cell, from the simulator's ground truth
    /// (every node ever started, `Dead` if crashed, under its current identity).
    fn truth(&self) -> (usize, Vec<(u64, u64)>) {
        let mut cells: HashMap<u64, u64> = HashMap::new();
        let mut len = 0;
        for (i, m) in self.nodes.iter().enumerate() {
            let Some(m) = m else { continue };
            let rec = Record {
                member: *m.identity(),
                status: if self.dead[i] { Status::Dead } else { Status::Alive },
                changed_ms: 0,
            };
            let d = cells.entry(rec.member.cell()).or_default();
            *d = d.wrapping_add(rec.hash());
            len += 1;
        }
        (len, cells.into_iter().collect())
    }

    /// How many live nodes hold exactly the true table, and how many live nodes there are.
    fn converged(&self) -> (usize, usize) {
        let (len, cells) = self.truth();
        let (mut ok, mut live) = (0, 0);
        for (_, m) in self.live() {
            live += 1;
            let t = m.table();
            if t.len() == len && cells.iter().all(|(c, d)| t.cell_digest(*c) == *d) {
                ok += 1;
            }
        }
        (ok, live)
    }

    /// Live nodes that a sample of live tables (every `step`-th) holds `Dead`.
    fn dead_in_tables(&self, step: usize) -> HashSet<u32> {
        let mut out = HashSet::new();
        for (_, m) in self.live().step_by(step.max(1)) {
            for r in m.table().iter() {
                if r.status == Status::Dead && !self.dead[r.member.idx as usize] {
                    out.insert(r.member.idx);
                }
            }
        }
        out
    }

    /// Table memory: bytes of the distinct shared buckets, and per node (over a sample of
    /// `sample` nodes) what is not shared, its cell/bucket overhead, and its table as if unshared.
    fn table_memory(&mut self, sample: usize) -> TableMemory {
        self.share_all(true);
        let rec = size_of::<Record<SimId>>();
        let arc_bucket = 16 + size_of::<Bucket<SimId>>();
        let mut shared_ptrs: HashSet<usize> = HashSet::new();
        let mut shared_bytes = 0usize;
        let mut distinct = 0usize;
        for b in self.interner.buckets.values() {
            if shared_ptrs.insert(b.records.as_ptr() as usize) {
                distinct += 1;
                shared_bytes += arc_bucket + b.records.capacity() * rec;
            }
        }
        // Per cell a node holds: the Arc<Cell> allocation, its Vec of bucket pointers and a BTreeMap
        // slot (key + value pointer, ~1.5x for node slack).
        let per_cell = 16 + size_of::<Cell<SimId>>() + BUCKETS * size_of::<Arc<Bucket<SimId>>>() + 24;
        let live: Vec<u32> = self.live().map(|(i, _)| i).collect();
        let step = (live.len() / sample.max(1)).max(1);
        let (mut own, mut overhead, mut unshared, mut k) = (0usize, 0usize, 0usize, 0usize);
        for &i in live.iter().step_by(step) {
            let Some(m) = self.nodes[i as usize].as_ref() else { continue };
            let t = m.table();
            for (cell, _) in t.digests() {
                overhead += per_cell;
                for b in 0..BUCKETS {
                    let s = t.bucket(cell, b);
                    if !s.is_empty() && !shared_ptrs.contains(&(s.as_ptr() as usize)) {
                        own += arc_bucket + size_of_val(s);
                    }
                }
            }
            unshared += t.memory_bytes();
            k += 1;
        }
        let k = k.max(1) as f64;
        TableMemory {
            distinct_buckets: distinct,
            shared_bytes,
            own_per_node: own as f64 / k,
            overhead_per_node: overhead as f64 / k,
            unshared_per_node: unshared as f64 / k,
            records: self.nodes[0].as_ref().map_or(0, |m| m.table().len()),
        }
    }
}

#[derive(Default)]
struct WatchResult {
    /// Per victim: seconds until the first live node held it dead, and until the last did.
    per_victim: Vec<(u32, f64, f64)>,
    all: Vec<f64>,
    cell: Vec<f64>,
    other: Vec<f64>,
    missing: usize,
}

#[derive(Default, Clone)]
pub struct TableMemory {
    distinct_buckets: usize,
    shared_bytes: usize,
    own_per_node: f64,
    overhead_per_node: f64,
    unshared_per_node: f64,
    records: usize,
}

// ---------------------------------------------------------------------------------------------
// Options and scenarios

pub struct Options {
    pub sizes: Vec<usize>,
    pub cell_size: usize,
    pub latency_us: u64,
    pub jitter_us: u64,
    pub loss: f64,
    pub spread_s: u64,
    pub steady_s: u64,
    pub crash: usize,
    pub loss_test: f64,
    pub loss_s: u64,
    /// Wall-clock seconds a convergence phase may take before it is reported as not converged.
    pub budget_s: u64,
    pub seed: u64,
    /// Forming: every node takes a seed's snapshot as it starts (`snapshot`), or every node starts
    /// with the full table of all N (`preformed`: a cluster that formed already, e.g. restarted).
    pub preformed: bool,
    /// Scenarios 2–6 to run (forming always runs); all by default.
    pub only: Vec<u32>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            sizes: vec![1_000, 10_000, 100_000],
            cell_size: 1_000,
            latency_us: 500,
            jitter_us: 200,
            loss: 0.0,
            spread_s: 5,
            steady_s: 30,
            crash: 3,
            loss_test: 0.01,
            loss_s: 60,
            budget_s: 240,
            seed: 1,
            preformed: false,
            only: vec![2, 3, 4, 5, 6],
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("bad {flag} {v:?}: {e}"));
            let frac = |v: &str| v.parse::<f64>().map_err(|e| format!("bad {flag} {v:?}: {e}"));
            match flag.as_str() {
                "--sizes" => {
                    o.sizes = value
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|e| format!("bad size {s:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                }
                "--cell-size" => o.cell_size = num(value)? as usize,
                "--latency-us" => o.latency_us = num(value)?,
                "--jitter-us" => o.jitter_us = num(value)?,
                "--loss" => o.loss = frac(value)?,
                "--spread" => o.spread_s = num(value)?,
                "--steady" => o.steady_s = num(value)?,
                "--crash" => o.crash = num(value)? as usize,
                "--loss-test" => o.loss_test = frac(value)?,
                "--loss-secs" => o.loss_s = num(value)?,
                "--budget" => o.budget_s = num(value)?,
                "--seed" => o.seed = num(value)?,
                "--only" => {
                    o.only = value
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|e| format!("bad scenario {s:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                    if o.only.iter().any(|k| !(2..=6).contains(k)) {
                        return Err("--only takes scenarios 2 to 6 (forming always runs)".into());
                    }
                }
                "--form" => {
                    o.preformed = match value.as_str() {
                        "snapshot" => false,
                        "preformed" => true,
                        _ => return Err(format!("--form is snapshot or preformed, not {value:?}")),
                    }
                }
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        if o.sizes.iter().any(|&n| n < 100) {
            return Err("every size must be at least 100 (racks of 40, seeds, crashes)".into());
        }
        if o.jitter_us > o.latency_us {
            return Err("--jitter-us must not exceed --latency-us".into());
        }
        Ok(o)
    }

    fn runs(&self, scenario: u32) -> bool {
        self.only.contains(&scenario)
    }

    /// Cells for `n` nodes: `ceil(n / cell_size)`, or one (flat) with `--cell-size 0`.
    fn cells(&self, n: usize) -> u32 {
        if self.cell_size == 0 { 1 } else { n.div_ceil(self.cell_size).max(1) as u32 }
    }
}

/// One size's results.
#[derive(Default)]
pub struct Report {
    pub n: usize,
    pub cells: u32,
    pub form_s: Option<f64>,
    pub form_99: Option<f64>,
    pub form_note: String,
    pub snapshot_bytes: f64,
    pub pps_mean: f64,
    pub pps_max: f64,
    pub bps_mean: f64,
    pub bps_max: f64,
    pub crash: Option<(String, bool)>,
    pub loss_false: (u64, usize, usize, u64, u64),
    pub stall_false: (u64, usize, usize, u64, u64),
    pub join: Option<JoinReport>,
    pub rack: Option<RackReport>,
    pub rss_per_node: Option<f64>,
    pub mem: TableMemory,
    pub peak_rss: Option<u64>,
    pub wall_s: f64,
    /// Label, simulated seconds, wall seconds, CPU seconds of this process.
    pub phases: Vec<(String, f64, f64, f64)>,
    pub notes: Vec<String>,
}

pub struct JoinReport {
    pub joiners: usize,
    pub converge_s: Option<f64>,
    /// (label, moved, minimum) per ramp step, then the total.
    pub steps: Vec<(String, u64, u64)>,
}

pub struct RackReport {
    pub converge: String,
    pub moved: u64,
    pub minimum: u64,
    pub only_rack_keys: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn dist(x: &[f64]) -> String {
    if x.is_empty() {
        return "—".into();
    }
    format!("p50 {:.1} s, p99 {:.1} s, max {:.1} s", pct(x, 0.5), pct(x, 0.99), x[x.len() - 1])
}

fn describe(w: &WatchResult) -> String {
    format!(
        "all: {}{}; own cell: {}; other cells: {}",
        dist(&w.all),
        if w.missing > 0 { format!(", {} pairs never", w.missing) } else { String::new() },
        dist(&w.cell),
        dist(&w.other)
    )
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process (the machine is shared: wall time depends on the
/// load, CPU time much less).
fn cpu_s() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn key_of(i: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
}

/// First owner (r = 1) of each sampled key, as a node id.
fn owners(map: &ClusterMap) -> Vec<String> {
    let p = Placement::new(map);
    let mut out = Vec::with_capacity(1);
    (0..KEYS)
        .map(|k| {
            p.ranking(key_of(k), 1, &mut out);
            out.first().map(|&i| p.nodes()[i].id.clone()).unwrap_or_default()
        })
        .collect()
}

/// Runs until `done` or `max_sim_us` of simulated time or the wall budget; returns the simulated
/// seconds it took, if done.
fn run_until_done(
    sim: &mut Sim,
    label: &str,
    max_sim_us: u64,
    budget: Duration,
    mut done: impl FnMut(&mut Sim) -> (bool, String),
) -> Option<f64> {
    let start = sim.now;
    let wall = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (ok, progress) = done(sim);
        if ok {
            return Some((sim.now - start) as f64 / 1e6);
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {label}: +{:.1} s simulated, {progress}, {:.0} s wall, {} events queued, RSS {} MiB",
                (sim.now - start) as f64 / 1e6,
                wall.elapsed().as_secs_f64(),
                sim.queue.len(),
                rss_bytes().unwrap_or(0) >> 20
            );
            last_print = Instant::now();
        }
        if sim.now - start >= max_sim_us || wall.elapsed() > budget {
            eprintln!("  {label}: gave up after +{:.1} s simulated ({progress})", (sim.now - start) as f64 / 1e6);
            return None;
        }
        let next = sim.now + CHECK_US;
        sim.run_until(next);
    }
}

fn shuffle_pick(sim: &mut Sim, from: &[u32], k: usize) -> Vec<u32> {
    let mut v = from.to_vec();
    for i in (1..v.len()).rev() {
        let j = (sim.rand() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

/// Whether the derived map of up to 20 live nodes shows every victim down.
fn check_down_in_maps(sim: &Sim, victims: &[u32]) -> bool {
    let now = sim.now_ms();
    let names: HashSet<&str> = victims.iter().map(|&v| name(v)).collect();
    let step = (sim.live_count() / 20).max(1);
    sim.live().step_by(step).all(|(_, m)| {
        let map = m.map(now);
        let down = map.nodes.iter().filter(|e| names.contains(e.id.as_str()) && e.state == NodeState::Down).count();
        down == names.len()
    })
}

struct Phase {
    wall: Instant,
    cpu_s: f64,
    sim_us: u64,
    events: u64,
}

fn phase_start(sim: &Sim) -> Phase {
    Phase { wall: Instant::now(), cpu_s: cpu_s(), sim_us: sim.now, events: sim.events }
}

fn phase_end(sim: &Sim, r: &mut Report, label: &str, p: Phase) {
    let wall = p.wall.elapsed().as_secs_f64();
    let simulated = (sim.now - p.sim_us) as f64 / 1e6;
    let cpu = cpu_s() - p.cpu_s;
    eprintln!(
        "[{}] {label}: {simulated:.1} s simulated in {wall:.1} s wall ({cpu:.1} s CPU), {} events, RSS {} MiB",
        r.n,
        sim.events - p.events,
        rss_bytes().unwrap_or(0) >> 20
    );
    r.phases.push((label.to_string(), simulated, wall, cpu));
}

pub fn run_size(n: usize, o: &Options) -> Report {
    let wall = Instant::now();
    let budget = Duration::from_secs(o.budget_s);
    let joiners = (n / 2).min(1_000);
    let capacity = n + joiners;
    let cells = o.cells(n);
    set_layout(40, cells);
    let net = NetConfig { latency_us: o.latency_us, jitter_us: o.jitter_us, loss: o.loss };
    let mut r = Report { n, cells, ..Default::default() };
    let rss0 = rss_bytes();
    let mut sim = Sim::new(capacity, net, Config::default(), o.seed ^ (n as u64) << 20);
    eprintln!(
        "[{n}] 1. form: {n} nodes in {cells} cells, {}",
        if o.preformed {
            "preformed (all start at once with the full table)".to_string()
        } else {
            format!("start over {} s, hello to seeds {SEEDS:?} + a seed's snapshot", o.spread_s)
        }
    );

    // 1. Form.
    let p = phase_start(&sim);
    // A preformed cluster is running already: all its nodes start at once (staggered starts
    // would have the early ones probe, across cells, members not started yet, and declare them
    // dead: a start-up artefact, not a property of a formed cluster).
    let spread_us = if o.preformed { 0 } else { o.spread_s * 1_000_000 };
    let full = o.preformed.then(|| {
        let mut t = Table::default();
        for i in 0..n as u32 {
            t.merge(&Record { member: SimId::new(i, 0), status: Status::Alive, changed_ms: BASE_MS });
        }
        t
    });
    for i in 0..n as u32 {
        let at = spread_us * u64::from(i) / n as u64;
        if at > sim.now {
            sim.run_until(at);
        }
        match &full {
            Some(t) => sim.start_preformed(SimId::new(i, 0), t),
            None => sim.start(SimId::new(i, 0), Some(SEEDS[i as usize % SEEDS.len()])),
        }
    }
    drop(full);
    let mut at99 = None;
    let formed_at = run_until_done(&mut sim, "form", 180_000_000, budget, |s| {
        let (c, live) = s.converged();
        if at99.is_none() && c * 100 >= live * 99 {
            at99 = Some(s.now_s());
        }
        (c == live, format!("{c}/{live} nodes hold the true table"))
    });
    r.form_99 = at99;
    r.form_s = formed_at.map(|_| sim.now_s());
    r.snapshot_bytes = sim.snapshot_mean_bytes();
    r.form_note = format!(
        "{}from the first start; starts spread over {} s; {} snapshots of mean {:.0} B; 99% held it at {}",
        if o.preformed {
            "PREFORMED: every node started at once with the full table of all N and its cell's members in its SWIM, no hellos; "
        } else {
            ""
        },
        if o.preformed { 0 } else { o.spread_s },
        sim.snapshots,
        r.snapshot_bytes,
        opt(r.form_99)
    );
    phase_end(&sim, &mut r, "1. form", p);
    if formed_at.is_none() {
        // Give the nodes that still miss records a converged node's table, so that the later
        // scenarios start from a formed cluster.
        let (len, cells_t) = sim.truth();
        let good = sim
            .live()
            .find(|(_, m)| m.table().len() == len && cells_t.iter().all(|(c, d)| m.table().cell_digest(*c) == *d))
            .map(|(i, _)| i);
        let laggards: Vec<u32> = sim
            .live()
            .filter(|(_, m)| !(m.table().len() == len && cells_t.iter().all(|(c, d)| m.table().cell_digest(*c) == *d)))
            .map(|(i, _)| i)
            .collect();
        if let Some(g) = good {
            let t = sim.nodes[g as usize].as_ref().map(|m| m.table().clone()).expect("good node");
            let now = sim.now_ms();
            for &i in &laggards {
                if let Some(m) = sim.nodes[i as usize].as_mut() {
                    let me = *m.identity();
                    let mut t = t.clone();
                    t.merge(&Record { member: me, status: Status::Alive, changed_ms: now });
                    *m.table_mut() = t;
                }
            }
        }
        sim.run_until(sim.now + 1_000_000);
        let (c, live) = sim.converged();
        r.notes.push(format!(
            "form: not every node held the true table within 180 s simulated / {} s wall; the {} that did not were then given a converged node's table{} (after which {c}/{live} held it)",
            o.budget_s,
            laggards.len(),
            if good.is_none() { " — none had converged, so nothing was given" } else { "" }
        ));
    }
    if let (Some(a), Some(b)) = (rss0, rss_bytes()) {
        r.rss_per_node = Some(b.saturating_sub(a) as f64 / n as f64);
    }
    r.mem = sim.table_memory(1000);
    eprintln!("[{n}] formed at {:.1} s simulated, {:.0} s wall", sim.now_s(), wall.elapsed().as_secs_f64());
    // 2. Steady state: let the join backlog drain, then measure.
    let p = phase_start(&sim);
    sim.run_until(sim.now + 15_000_000);
    if o.runs(2) {
        let before: Vec<(u64, u64)> = (0..n)
            .map(|i| sim.nodes[i].as_ref().map(|m| (m.stats().packets_out, m.stats().bytes_out)).unwrap_or((0, 0)))
            .collect();
        eprintln!("[{n}] 2. steady state over {} s", o.steady_s);
        sim.run_until(sim.now + o.steady_s * 1_000_000);
        let secs = o.steady_s.max(1) as f64;
        let rates: Vec<(f64, f64)> = (0..n)
            .filter_map(|i| sim.nodes[i].as_ref().map(|m| (i, m)))
            .map(|(i, m)| {
                ((m.stats().packets_out - before[i].0) as f64 / secs, (m.stats().bytes_out - before[i].1) as f64 / secs)
            })
            .collect();
        r.pps_mean = rates.iter().map(|x| x.0).sum::<f64>() / rates.len() as f64;
        r.pps_max = rates.iter().map(|x| x.0).fold(0.0, f64::max);
        r.bps_mean = rates.iter().map(|x| x.1).sum::<f64>() / rates.len() as f64;
        r.bps_max = rates.iter().map(|x| x.1).fold(0.0, f64::max);
        eprintln!(
            "[{n}] 2. steady result: {:.1} packets/s mean, {:.0} max; {:.0} B/s mean, {:.0} max",
            r.pps_mean, r.pps_max, r.bps_mean, r.bps_max
        );
        phase_end(&sim, &mut r, "2. steady", p);
    }

    if o.runs(3) {
        // 3. Crash.
        let p = phase_start(&sim);
        let candidates: Vec<u32> = (SEEDS.len() as u32..n as u32).collect();
        let victims = shuffle_pick(&mut sim, &candidates, o.crash);
        eprintln!("[{n}] 3. crash {victims:?}");
        sim.false_downs = 0;
        sim.falsely_downed.clear();
        sim.watch(&victims);
        for &v in &victims {
            sim.crash(v);
        }
        run_until_done(&mut sim, "crash", 120_000_000, budget, |s| {
            let m = s.watch_missing();
            (m == 0, format!("{m} (node, victim) pairs left"))
        });
        let w = sim.watch_result();
        r.crash = Some((describe(&w), check_down_in_maps(&sim, &victims)));
        // Each result goes to stderr as soon as it is known: a long run stopped early keeps them.
        eprintln!("[{n}] 3. crash result: {}", describe(&w));
        if sim.false_downs > 0 {
            r.notes.push(format!("crash phase: {} live nodes declared down by someone", sim.falsely_downed.len()));
        }
        sim.run_until(sim.now + 5_000_000);
        phase_end(&sim, &mut r, "3. crash", p);
    }

    if o.runs(4) {
        // 4a. Loss.
        let p = phase_start(&sim);
        eprintln!("[{n}] 4a. {:.1}% loss for {} s", o.loss_test * 100.0, o.loss_s);
        let s0 = sim.stats_sum();
        sim.false_downs = 0;
        sim.falsely_downed.clear();
        let saved_loss = sim.net.loss;
        sim.net.loss = o.loss_test;
        sim.run_until(sim.now + o.loss_s * 1_000_000);
        sim.net.loss = saved_loss;
        sim.run_until(sim.now + 15_000_000);
        let s1 = sim.stats_sum();
        let sample = (sim.live_count() / 200).max(1);
        let in_tables = sim.dead_in_tables(sample).len();
        r.loss_false = (
            sim.false_downs,
            sim.falsely_downed.len(),
            in_tables,
            s1.suspicions - s0.suspicions,
            s1.refutations - s0.refutations,
        );
        eprintln!(
            "[{n}] 4a. loss result (down notices, nodes, dead in tables, suspicions, refutations): {:?}",
            r.loss_false
        );
        phase_end(&sim, &mut r, "4a. loss", p);
    }

    if o.runs(4) {
        // 4b. Stalls.
        let p = phase_start(&sim);
        let s1 = sim.stats_sum();
        let sample = (sim.live_count() / 200).max(1);
        let live: Vec<u32> = sim.live().map(|(i, _)| i).filter(|i| !SEEDS.contains(i)).collect();
        let stalled = shuffle_pick(&mut sim, &live, 3);
        eprintln!("[{n}] 4b. stall {stalled:?} for 5 s each");
        sim.false_downs = 0;
        sim.falsely_downed.clear();
        for &s in &stalled {
            sim.stall(s, 5_000_000);
        }
        sim.run_until(sim.now + 30_000_000);
        let s2 = sim.stats_sum();
        let in_tables = sim.dead_in_tables(sample).len();
        r.stall_false = (
            sim.false_downs,
            sim.falsely_downed.len(),
            in_tables,
            s2.suspicions - s1.suspicions,
            s2.refutations - s1.refutations,
        );
        eprintln!(
            "[{n}] 4b. stall result (down notices, nodes, dead in tables, suspicions, refutations): {:?}",
            r.stall_false
        );
        phase_end(&sim, &mut r, "4b. stall", p);
    }

    if o.runs(5) {
        // 5. A rack of 40 dies (before the joins, so that the ramp does not move keys meanwhile).
        let p = phase_start(&sim);
        r.rack = Some(rack_scenario(&mut sim, n, budget, &mut r.notes));
        phase_end(&sim, &mut r, "5. rack", p);
    }

    if o.runs(6) {
        // 6. Joins.
        let p = phase_start(&sim);
        r.join = Some(join_scenario(&mut sim, n, joiners, budget, &mut r.notes));
        phase_end(&sim, &mut r, "6. join", p);
    }

    r.peak_rss = proc_status_kib("VmHWM:").map(|k| k * 1024);
    r.notes.push(format!(
        "profile: {} events; wall in table sharing {:.1} s, in watch checks {:.1} s; {} packets dropped; {} tables replaced by an equal interned one and {} buckets by an interned one of equal digest (records possibly differing in changed_ms only)",
        sim.events,
        sim.wall_share.as_secs_f64(),
        sim.wall_check.as_secs_f64(),
        sim.packets_dropped,
        sim.tables_taken,
        sim.retimed
    ));
    r.wall_s = wall.elapsed().as_secs_f64();
    r
}

fn rack_scenario(sim: &mut Sim, n: usize, budget: Duration, notes: &mut Vec<String>) -> RackReport {
    // The last rack with no seed and no node already dead or stalled.
    let rs = RACK_SIZE.load(AtOrd::Relaxed);
    let racks = n as u32 / rs;
    let rack = (1..racks)
        .rev()
        .find(|&k| {
            (k * rs..(k + 1) * rs)
                .all(|i| !sim.dead[i as usize] && !SEEDS.contains(&i) && sim.stalled_until[i as usize] == 0)
        })
        .unwrap_or(racks.saturating_sub(1));
    let victims: Vec<u32> = (rack * rs..(rack + 1) * rs).filter(|&i| !sim.dead[i as usize]).collect();
    let observer = 1u32;
    eprintln!("[{n}] 5. rack r{rack} ({} nodes, cell {}) dies", victims.len(), cell_of(rack * rs));
    let before = sim.nodes[observer as usize].as_ref().map(|m| m.map(sim.now_ms()));
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    sim.watch(&victims);
    for &v in &victims {
        sim.crash(v);
    }
    let conv = run_until_done(sim, "rack", 120_000_000, budget, |s| {
        let m = s.watch_missing();
        (m == 0, format!("{m} (node, victim) pairs left"))
    });
    let w = sim.watch_result();
    let mut slowest = w.per_victim.clone();
    slowest.sort_by(|a, b| b.2.total_cmp(&a.2));
    let slowest: Vec<String> =
        slowest.iter().take(5).map(|(v, f, l)| format!("n{v}: first {f:.1} s, all {l:.1} s")).collect();
    eprintln!("[{n}] 5. slowest victims (first node to hold it dead, all live nodes): {}", slowest.join("; "));
    if sim.false_downs > 0 {
        notes.push(format!("rack phase: {} live nodes declared down by someone", sim.falsely_downed.len()));
    }
    if !check_down_in_maps(sim, &victims) {
        notes.push("rack phase: a sampled node's derived map does not show all 40 down".into());
    }
    let after = sim.nodes[observer as usize].as_ref().map(|m| m.map(sim.now_ms()));
    let (mut moved, mut minimum, mut only) = (0, 0, true);
    if let (Some(b), Some(a)) = (before, after) {
        let ob = owners(&b);
        let oa = owners(&a);
        let names: HashSet<&str> = victims.iter().map(|&v| name(v)).collect();
        for (x, y) in ob.iter().zip(&oa) {
            let was = names.contains(x.as_str());
            minimum += u64::from(was);
            if x != y {
                moved += 1;
                only &= was;
            }
        }
    }
    let converge = format!("{}{}", if conv.is_none() { "NOT converged; " } else { "" }, describe(&w));
    eprintln!("[{n}] 5. rack result: {converge}; keys moved {moved} (minimum {minimum}, only the rack's keys: {only})");
    RackReport { converge, moved, minimum, only_rack_keys: only }
}

fn join_scenario(sim: &mut Sim, n: usize, joiners: usize, budget: Duration, notes: &mut Vec<String>) -> JoinReport {
    let observer = 1u32;
    let t0_ms = sim.now_ms();
    let before = sim.nodes[observer as usize].as_ref().map(|m| m.map(t0_ms));
    // Join on a whole second so every joiner has the same ramp instants.
    let join_s = sim.now / 1_000_000 + 1;
    sim.run_until(join_s * 1_000_000);
    eprintln!("[{n}] 6. {joiners} nodes join at once (hello to the seeds + a seed's snapshot)");
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    for j in 0..joiners as u32 {
        let idx = n as u32 + j;
        sim.start(SimId::new(idx, join_s as u32), Some(SEEDS[(j % 3) as usize]));
    }
    let t_start = sim.now;
    let mut at99 = None;
    let conv = run_until_done(sim, "join", 120_000_000, budget, |s| {
        let (c, live) = s.converged();
        if at99.is_none() && c * 100 >= live * 99 {
            at99 = Some((s.now - t_start) as f64 / 1e6);
        }
        (c == live, format!("{c}/{live} nodes hold the true table"))
    });
    notes.push(format!("join: 99% of the live nodes held the true table at {}", opt(at99)));
    if sim.false_downs > 0 {
        notes.push(format!("join phase: {} live nodes declared down by someone", sim.falsely_downed.len()));
    }
    let mut steps = Vec::new();
    let Some(m) = sim.nodes[observer as usize].as_ref() else { return JoinReport { joiners, converge_s: conv, steps } };
    let Some(before) = before else { return JoinReport { joiners, converge_s: conv, steps } };
    // The observer's view is settled: evaluate its map at each ramp instant.
    let rules = sim.cfg.map.clone();
    let ramp_ms = rules.join_ramp.as_millis() as u64;
    let k = u64::from(rules.ramp_steps.max(1));
    let joined_ms = BASE_MS + join_s * 1000;
    let joiner_share = |map: &ClusterMap| {
        let up = map.nodes.iter().filter(|e| e.state == NodeState::Up);
        let (mut j, mut all) = (0u64, 0u64);
        for e in up {
            all += u64::from(e.weight);
            if e.id.as_str() >= name(n as u32) {
                j += u64::from(e.weight);
            }
        }
        j as f64 / all.max(1) as f64
    };
    let mut prev = before;
    let mut prev_owners = owners(&prev);
    let first = owners(&prev);
    let mut maps = Vec::new();
    for s in 0..k {
        let at = (joined_ms + s * ramp_ms / k).max(sim.now_ms());
        maps.push((format!("step {}/{k} (+{} s)", s + 1, (at - joined_ms) / 1000), m.map(at)));
    }
    maps.push(("ramp done".into(), m.map(joined_ms + ramp_ms)));
    for (label, map) in maps {
        let o = owners(&map);
        let moved = prev_owners.iter().zip(&o).filter(|(a, b)| a != b).count() as u64;
        let min = ((joiner_share(&map) - joiner_share(&prev)).max(0.0) * KEYS as f64).round() as u64;
        steps.push((label, moved, min));
        prev = map;
        prev_owners = o;
    }
    let total = first.iter().zip(&prev_owners).filter(|(a, b)| a != b).count() as u64;
    let min_total = (joiner_share(&prev) * KEYS as f64).round() as u64;
    steps.push(("before → ramp done".into(), total, min_total));
    JoinReport { joiners, converge_s: conv, steps }
}

pub fn run(o: &Options) {
    init_names(o.sizes.iter().map(|&n| n + (n / 2).min(1_000)).max().unwrap_or(0) + 1);
    let mut reports = Vec::new();
    for &n in &o.sizes {
        let r = run_size(n, o);
        eprintln!("[{n}] done in {:.0} s wall", r.wall_s);
        print_one(&r, o);
        reports.push(r);
    }
    print_memory(&reports, o);
}

fn opt(x: Option<f64>) -> String {
    x.map_or("not converged".into(), |v| format!("{v:.1} s"))
}

fn print_one(r: &Report, o: &Options) {
    let n = r.n;
    let layout = if r.cells == 1 {
        "one cell (flat SWIM pool)".to_string()
    } else {
        format!("{} cells of ~{}", r.cells, n / r.cells as usize)
    };
    println!(
        "\n### {n} nodes, {layout} (simulated in full; wall {:.0} s, peak RSS {} MiB)\n",
        r.wall_s,
        r.peak_rss.unwrap_or(0) >> 20
    );
    println!("| scenario | result |");
    println!("|---|---|");
    println!("| 1. form: every node holds all {n} | {} ({}) |", opt(r.form_s), r.form_note);
    println!(
        "| 2. steady state, sent per node | {:.1} packets/s mean, {:.0} max; {:.0} B/s mean, {:.0} max |",
        r.pps_mean, r.pps_max, r.bps_mean, r.bps_max
    );
    if let Some((d, maps)) = &r.crash {
        println!(
            "| 3. crash of {}: until each live node holds each one dead | {d}; derived maps checked: {} |",
            o.crash,
            if *maps { "down" } else { "NOT all down" }
        );
    }
    let (d, nodes, tab, sus, refu) = r.loss_false;
    println!(
        "| 4a. {:.0}% loss {} s: live nodes declared dead | {nodes} ({d} down notices; {tab} dead in sampled tables); {sus} suspicions, {refu} refutations |",
        o.loss_test * 100.0,
        o.loss_s
    );
    let (d, nodes, tab, sus, refu) = r.stall_false;
    println!(
        "| 4b. 3 nodes stalled 5 s: declared dead | {nodes} ({d} down notices; {tab} dead in sampled tables); {sus} suspicions, {refu} refutations |"
    );
    if let Some(k) = &r.rack {
        println!("| 5. rack of 40 dies: all live hold all 40 dead | {} |", k.converge);
        println!(
            "| 5. keys moved (of {KEYS}, r=1) | {} (minimum {}, only the rack's keys: {}) |",
            k.moved,
            k.minimum,
            if k.only_rack_keys { "yes" } else { "no" }
        );
    }
    if let Some(j) = &r.join {
        println!("| 6. {} join at once: every node holds all | {} |", j.joiners, opt(j.converge_s));
        for (label, moved, min) in &j.steps {
            println!(
                "| 6. keys moved, {label} (of {KEYS}, r=1) | {moved} (minimum {min}, ratio {:.2}) |",
                *moved as f64 / (*min).max(1) as f64
            );
        }
    }
    if let Some(b) = r.rss_per_node {
        println!("| 7. memory: RSS growth while forming / N | {:.1} KiB per node |", b / 1024.0);
    }
    let m = &r.mem;
    println!(
        "| 7. table, one node, unshared (`Table::memory_bytes`) | {:.0} KiB ({} records) |",
        m.unshared_per_node / 1024.0,
        m.records
    );
    println!(
        "| 7. tables, shared: distinct buckets / N + own buckets + cell overhead | {:.0} B + {:.0} B + {:.0} B = {:.1} KiB per node ({} distinct buckets, {:.1} MiB) |",
        m.shared_bytes as f64 / n as f64,
        m.own_per_node,
        m.overhead_per_node,
        (m.shared_bytes as f64 / n as f64 + m.own_per_node + m.overhead_per_node) / 1024.0,
        m.distinct_buckets,
        m.shared_bytes as f64 / (1 << 20) as f64
    );
    for (label, s, w, c) in &r.phases {
        println!("| wall | {label}: {s:.1} s simulated in {w:.1} s (CPU {c:.1} s) |");
    }
    for note in &r.notes {
        println!("| note | {note} |");
    }
}

fn print_memory(reports: &[Report], o: &Options) {
    let rec_sim = size_of::<Record<SimId>>();
    let rec_real = size_of::<Record<NodeIdentity>>();
    // Heap strings of a NodeIdentity: id, peer, zone, rack, cell of ~20 bytes, each a 32-byte malloc block.
    let strings = 5 * 32;
    // Each record's node-id hash, kept next to it in its bucket (`table::id_hash`).
    let id_hash = size_of::<u64>();
    let per_record_real = rec_real + strings + id_hash;
    let cells = 100;
    let per_cell = 16 + size_of::<Cell<NodeIdentity>>() + BUCKETS * (8 + 16 + size_of::<Bucket<NodeIdentity>>()) + 24;
    let cell_size = if o.cell_size == 0 { 1000 } else { o.cell_size };
    let foca_member = size_of::<foca::Member<NodeIdentity>>() + strings;
    // `heard`: SocketAddr -> u64 in a hashbrown map at ~7/8 load, at most 8192 entries.
    let heard = (size_of::<std::net::SocketAddr>() + 8 + 1) * 8 / 7;
    let table = 100_000 * per_record_real + cells * per_cell;
    let swim = cell_size * foca_member;
    let heard_max = 8192 * heard;
    println!("\n### Memory per node for the member list\n");
    println!("| | bytes |");
    println!("|---|---|");
    println!("| Record<SimId> (simulated identity) | {rec_sim} |");
    println!("| Record<NodeIdentity> (real identity) | {rec_real} |");
    println!("| + 5 heap strings of ~20 B (id, peer, zone, rack, cell) | {strings} |");
    println!("| + the node id's hash in its bucket | {id_hash} |");
    println!("| real identity, per table record | {per_record_real} |");
    for r in reports {
        let m = &r.mem;
        println!(
            "| measured at N={}: one node's table unshared / records | {:.0} |",
            r.n,
            m.unshared_per_node / m.records.max(1) as f64
        );
    }
    println!(
        "| EXTRAPOLATED, not simulated: one node at 100,000 members, real identity: table ({} cells) | {:.1} MiB |",
        cells,
        table as f64 / (1 << 20) as f64
    );
    println!(
        "| + its cell's SWIM list ({cell_size} × foca::Member<NodeIdentity> + strings, {foca_member} B) | {:.2} MiB |",
        swim as f64 / (1 << 20) as f64
    );
    println!("| + `heard` (at most 8,192 × {heard} B) | {:.2} MiB |", heard_max as f64 / (1 << 20) as f64);
    println!("| = total | {:.1} MiB |", (table + swim + heard_max) as f64 / (1 << 20) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 nodes in 3 cells form, one crashes under 1% loss: every live node's table holds it dead
    /// within 15 simulated seconds and no live node is declared dead.
    #[test]
    fn a_crash_is_seen_by_all_within_15_s_under_loss_without_false_downs() {
        let n = 50u32;
        // Racks of 10 dealt to 3 cells: cells of 20, 20 and 10.
        set_layout(10, 3);
        init_names(64);
        let mut sim = Sim::new(n as usize, NetConfig { loss: 0.01, ..Default::default() }, Config::default(), 7);
        for i in 0..n {
            sim.run_until(u64::from(i) * 40_000);
            sim.start(SimId::new(i, 0), Some(SEEDS[i as usize % 3]));
        }
        let cells: HashSet<u64> = (0..n).map(cell_of).collect();
        assert_eq!(cells.len(), 3);
        let formed = run_until_done(&mut sim, "form", 60_000_000, Duration::from_secs(60), |s| {
            let (c, live) = s.converged();
            (c == live, String::new())
        });
        assert!(formed.is_some(), "50 nodes did not form in 60 s");
        sim.run_until(sim.now + 10_000_000);
        sim.false_downs = 0;
        let victim = 17;
        sim.watch(&[victim]);
        sim.crash(victim);
        sim.run_until(sim.now + 15_000_000);
        assert_eq!(sim.watch_missing(), 0, "live nodes whose table does not hold the crashed node dead after 15 s");
        let w = sim.watch_result();
        assert_eq!(w.all.len(), n as usize - 1);
        assert!(w.all.iter().all(|&t| t <= 15.0));
        assert!(!w.cell.is_empty() && !w.other.is_empty());
        for (_, m) in sim.live() {
            let r = m.table().get(cell_of(victim), name(victim)).expect("victim's record");
            assert_eq!(r.status, Status::Dead);
        }
        assert!(check_down_in_maps(&sim, &[victim]));
        // And longer under loss: nobody alive is declared dead.
        sim.run_until(sim.now + 30_000_000);
        assert_eq!(sim.false_downs, 0, "live nodes declared down: {:?}", sim.falsely_downed);
        assert!(sim.dead_in_tables(1).is_empty());
    }
}
