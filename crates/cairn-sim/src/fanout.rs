//! `cairn-sim fanout`: N nodes read the same object at once (a hot checkpoint or data shard), and
//! the simulator measures how long until every node holds all of it, how many bytes each node
//! sends, and how many bytes the origin serves, for the ways the chunks can spread.
//!
//! Schemes, side by side per cluster size:
//! - (a) every node reads the origin itself: analytic, not simulated. The origin's aggregate
//!   bandwidth is shared by N readers, so the time is `max(N·S / origin, S / link)` plus one
//!   origin first byte; the origin serves N× the object.
//! - (b) owner-only: the chunk's owner (first node of the real `Placement` ranking of the chunk
//!   key) fetches it from the origin once and sends it to every requester (cairn without fan-out).
//! - (p) peer-to-peer: the owner decides with the real `cairn_core::fanout::Tracker` (one per
//!   node, the `FanoutConfig` from the flags, defaults as in the node), and requesters follow its
//!   answers the way `cairn-node`'s reader does.
//! - (c) ideal: `S / link + ceil(log2 N) · C / link` plus one origin first byte (every node's
//!   downlink busy from start to end, plus the depth of a binary tree for the last chunk).
//!
//! What the node does, as simulated: a node reads chunks 0..K in order with `--window` chunks in
//! flight (`buffered(window)`: the window moves when its first chunk is complete). A chunk it owns
//! it fetches from the origin (single flight: one fetch per owner and chunk, joined by everyone
//! waiting for it). Any other chunk it asks the owner for. The owner calls
//! `Tracker::request(chunk, requester, direct, now_ms)`:
//! - `Serve`: the owner takes an upload slot (`--upload-slots`; waiting FIFO if all are taken,
//!   counted as a slot wait), gets the chunk (from the origin if it does not hold it yet), sends
//!   it, and calls `Tracker::sent` when the transfer is complete;
//! - `Redirect(holders)`: the owner answers with the holders once it has the chunk (it needs the
//!   chunk's digest). The requester asks them in order. A holder that holds the chunk sends it if
//!   it has a free upload slot, else answers Busy; a holder still receiving the chunk takes a slot
//!   and sends once its own copy is complete; a holder that neither holds nor receives it answers
//!   NotHeld. On Busy or NotHeld the requester asks the next holder (a reselection); when all
//!   failed it asks the owner again with `direct` set, and the owner calls
//!   `Tracker::forget_holder` for each failed holder before `request(direct = true)`, which serves.
//!
//! Every node keeps what it received until the end. Tracker time is simulated time.
//!
//! Network, flow-level: every node has an uplink and a downlink of `--link-gbit`. A transfer's
//! rate is `min(uplink(src) / uploads of src, downlink(dst) / downloads of dst)`, recomputed for
//! the transfers of src and dst whenever a transfer starts or ends at either (the usual
//! fair-share approximation: it is not max-min fair, a link whose transfers are limited elsewhere
//! leaves its rest unused, so times are slightly pessimistic). Every message (request, answer,
//! Busy, NotHeld) and the last byte of every transfer take `--latency-us` one way. The origin is an
//! endpoint whose `--origin-gbit` is shared by its transfers (each also limited by the owner's
//! downlink), and each fetch starts after a first-byte latency of `--origin-ms`.
//!
//! Not modelled: the node's hedged requests to a second candidate, a holder's 10 s wait limit (runs
//! end well before it), a per-node limit on concurrent origin fetches, CPU and disk.
//!
//! Events come from one binary heap in (time, push order); a transfer whose rate changes gets a
//! new end event and a new version number, and the old event is dropped when it comes up.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use cairn_core::fanout::{Decision, FanoutConfig, Tracker};
use cairn_core::placement::Placement;
use cairn_core::{ChunkId, ObjectVersion};

use crate::placement::{cluster_map, splitmix64, thousands};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

// Targets.
const TARGET_MAX_EGRESS: f64 = 2.0;
const TARGET_TIME_OVER_IDEAL: f64 = 2.0;
const TARGET_ORIGIN: f64 = 1.0;

/// Wall-clock seconds between progress lines on stderr.
const PROGRESS_EVERY_S: f64 = 30.0;

pub struct Options {
    sizes: Vec<usize>,
    object: u64,
    chunk: u64,
    window: usize,
    upload_slots: u32,
    link_gbit: f64,
    origin_gbit: f64,
    origin_ms: f64,
    latency_us: f64,
    seed: u64,
    /// Which simulated schemes run: owner-only, peer-to-peer.
    owner_only: bool,
    p2p: bool,
    fanout: FanoutConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sizes: vec![100, 1_000, 10_000],
            object: 16 * GIB,
            chunk: 8 * MIB,
            window: 8,
            upload_slots: 16,
            link_gbit: 200.0,
            origin_gbit: 100.0,
            origin_ms: 30.0,
            latency_us: 50.0,
            seed: 1,
            owner_only: true,
            p2p: true,
            fanout: FanoutConfig::default(),
        }
    }
}

/// `16GiB`, `8MiB`, `512KiB`, `1G`, `4096`: bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("bad unit in {s:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} overflows"))
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("bad {flag} {v:?}: {e}"));
            let real = |v: &str| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(format!("bad {flag} {v:?}: a number ≥ 0")),
            };
            match flag.as_str() {
                "--sizes" => {
                    o.sizes = value
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|e| format!("bad size {s:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                }
                "--object" => o.object = parse_bytes(value)?,
                "--chunk" => o.chunk = parse_bytes(value)?,
                "--window" => o.window = num(value)? as usize,
                "--upload-slots" => o.upload_slots = num(value)? as u32,
                "--link-gbit" => o.link_gbit = real(value)?,
                "--origin-gbit" => o.origin_gbit = real(value)?,
                "--origin-ms" => o.origin_ms = real(value)?,
                "--latency-us" => o.latency_us = real(value)?,
                "--seed" => o.seed = num(value)?,
                "--schemes" => {
                    o.owner_only = false;
                    o.p2p = false;
                    for s in value.split(',') {
                        match s.trim() {
                            "b" | "owner" => o.owner_only = true,
                            "p" | "p2p" => o.p2p = true,
                            _ => return Err(format!("--schemes lists b (owner-only) and p (p2p), not {s:?}")),
                        }
                    }
                }
                "--direct-budget" => o.fanout.direct_budget = num(value)? as u32,
                "--max-children" => o.fanout.max_children = num(value)? as u32,
                "--holders-per-answer" => o.fanout.holders_per_answer = num(value)? as usize,
                "--holders-per-chunk" => o.fanout.holders_per_chunk = num(value)? as usize,
                "--holder-ttl-ms" => o.fanout.holder_ttl_ms = num(value)?,
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        if o.sizes.iter().any(|&n| n < 2) {
            return Err("every size must be at least 2".into());
        }
        if o.chunk == 0 || o.object == 0 {
            return Err("--object and --chunk must be positive".into());
        }
        if o.object.div_ceil(o.chunk) > u64::from(u32::MAX / 2) {
            return Err("too many chunks (--object / --chunk)".into());
        }
        if o.window == 0 || o.upload_slots == 0 || o.link_gbit <= 0.0 || o.origin_gbit <= 0.0 {
            return Err("--window, --upload-slots, --link-gbit and --origin-gbit must be positive".into());
        }
        if o.fanout.holders_per_answer == 0 || o.fanout.max_children == 0 {
            return Err("--holders-per-answer and --max-children must be positive".into());
        }
        Ok(o)
    }

    fn chunks(&self) -> u32 {
        self.object.div_ceil(self.chunk) as u32
    }

    /// Bytes per nanosecond of a link of `gbit`.
    fn bytes_per_ns(gbit: f64) -> f64 {
        gbit / 8.0
    }

    fn latency_ns(&self) -> u64 {
        (self.latency_us * 1e3).round() as u64
    }

    fn origin_ns(&self) -> u64 {
        (self.origin_ms * 1e6).round() as u64
    }

    /// Seconds for `bytes` at `gbit`.
    fn secs(bytes: f64, gbit: f64) -> f64 {
        bytes * 8.0 / (gbit * 1e9)
    }

    /// Scheme (c).
    fn ideal_s(&self, n: usize) -> f64 {
        let depth = (n as f64).log2().ceil();
        Self::secs(self.object as f64, self.link_gbit)
            + depth * Self::secs(self.chunk.min(self.object) as f64, self.link_gbit)
            + self.origin_ms / 1e3
    }

    /// Scheme (a).
    fn every_node_reads_origin_s(&self, n: usize) -> f64 {
        let s = self.object as f64;
        Self::secs(n as f64 * s, self.origin_gbit).max(Self::secs(s, self.link_gbit)) + self.origin_ms / 1e3
    }
}

// -------------------------------------------------------------------------------------------
// The simulator

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The owner always sends (no tracker).
    OwnerOnly,
    /// The owner decides with the real tracker.
    P2p,
}

/// What a node knows of a chunk.
const NOT_HELD: u8 = 0;
/// Asked for (a requester) or being fetched from the origin (its owner).
const RECEIVING: u8 = 1;
const HELD: u8 = 2;

#[derive(Clone, Copy, Debug)]
enum Ev {
    /// A node starts reading the object.
    Start(u32),
    /// A request reaches the chunk's owner.
    AtOwner(u32),
    /// The owner's list of holders reaches the requester.
    Holders(u32),
    /// A request reaches the holder `holders[next]`.
    AtHolder(u32),
    /// Busy or NotHeld reaches the requester.
    Refused(u32),
    /// The last byte of a transfer reaches the requester.
    Delivered(u32),
    /// The origin starts sending chunk `.1` to its owner `.0`.
    OriginFirstByte(u32, u32),
    /// A transfer (flow, version) ends, unless its rate changed since.
    FlowEnd(u32, u32),
}

struct Event {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        // Earliest first out of a max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One chunk request of one node, from its first message to the owner until the bytes arrive.
struct Req {
    node: u32,
    chunk: u32,
    direct: bool,
    /// The owner's last answer; the first `next` of them failed.
    holders: Vec<u32>,
    next: usize,
}

#[derive(Clone, Copy, Debug)]
enum FlowKind {
    /// The origin to the chunk's owner.
    Origin { owner: u32, chunk: u32 },
    /// The owner to a requester.
    Serve { req: u32 },
    /// A holder to a requester.
    Holder { req: u32 },
}

struct Flow {
    src: u32,
    dst: u32,
    /// Positions in `ups[src]` and `downs[dst]`.
    src_pos: u32,
    dst_pos: u32,
    bytes: u64,
    remaining: f64,
    /// Bytes per ns, since `at`.
    rate: f64,
    at: u64,
    version: u32,
    kind: FlowKind,
}

/// What waits for a node to hold a chunk.
#[derive(Clone, Copy, Debug)]
enum Waiter {
    /// The owner has a slot for this request and sends once it holds the chunk.
    Serve(u32),
    /// The owner answers with holders once it holds the chunk (its digest).
    Redirect(u32),
    /// A holder took a slot for this request and sends once its own copy is complete.
    HolderSend(u32),
}

/// Counters and per-node results of one run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub nodes: usize,
    pub object: u64,
    /// Simulated seconds at which each node held the whole object.
    pub done_s: Vec<f64>,
    /// Bytes each node sent to peers, and of those, as the chunk's owner.
    pub egress: Vec<u64>,
    pub egress_owner: Vec<u64>,
    /// Holder sends to a requester that had been told to try another holder first (not charged
    /// to this holder's `max_children`).
    pub fallback_sends: u64,
    pub origin_bytes: u64,
    pub origin_fetches: u64,
    pub handoffs: u64,
    pub reselections: u64,
    pub busy: u64,
    pub not_held: u64,
    pub directs: u64,
    pub slot_waits: u64,
    pub transfers: u64,
    pub events: u64,
    pub wall_s: f64,
    /// Every node held every chunk at the end.
    pub complete: bool,
    /// Chunks each node owns.
    pub owned: Vec<u32>,
}

impl Outcome {
    fn sorted_done(&self) -> Vec<f64> {
        let mut d = self.done_s.clone();
        d.sort_by(f64::total_cmp);
        d
    }

    pub fn p50_s(&self) -> f64 {
        let d = self.sorted_done();
        d.get(d.len() / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn max_s(&self) -> f64 {
        self.done_s.iter().copied().fold(0.0, f64::max)
    }

    pub fn max_egress(&self) -> f64 {
        self.egress.iter().copied().max().unwrap_or(0) as f64 / self.object as f64
    }

    pub fn mean_egress(&self) -> f64 {
        self.egress.iter().sum::<u64>() as f64 / self.egress.len().max(1) as f64 / self.object as f64
    }

    pub fn origin(&self) -> f64 {
        self.origin_bytes as f64 / self.object as f64
    }
}

pub struct Sim {
    mode: Mode,
    n: u32,
    k: u32,
    chunk: u64,
    object: u64,
    window: u32,
    slots: u32,
    link: f64,
    origin_bw: f64,
    latency: u64,
    origin_latency: u64,

    now: u64,
    seq: u64,
    heap: BinaryHeap<Event>,

    /// First owner of each chunk.
    owner: Vec<u32>,
    /// `state[node * k + chunk]`.
    state: Vec<u8>,
    /// Per node: first chunk not yet held, next chunk to ask for.
    lo: Vec<u32>,
    next: Vec<u32>,
    reading: Vec<bool>,
    done_at: Vec<u64>,
    trackers: Vec<Tracker<u32, u32>>,
    used_slots: Vec<u32>,
    slot_queue: Vec<VecDeque<u32>>,
    waiters: HashMap<u64, Vec<Waiter>>,

    reqs: Vec<Req>,
    free_reqs: Vec<u32>,
    flows: Vec<Flow>,
    free_flows: Vec<u32>,
    /// Flows out of each endpoint (index n is the origin) and into each node.
    ups: Vec<Vec<u32>>,
    downs: Vec<Vec<u32>>,
    /// Endpoints whose flows need new rates (see [`Sim::mark`]).
    dirty: Vec<(u32, bool)>,
    dirty_up: Vec<bool>,
    dirty_down: Vec<bool>,

    out: Outcome,
}

impl Sim {
    /// `owner[c]`: the first node of chunk c's ranking.
    pub fn new(mode: Mode, o: &Options, n: usize, owner: Vec<u32>, seed: u64) -> Self {
        let k = o.chunks();
        debug_assert_eq!(owner.len(), k as usize);
        let nodes = n;
        let mut owned = vec![0u32; nodes];
        for &w in &owner {
            owned[w as usize] += 1;
        }
        let mut sim = Sim {
            mode,
            n: n as u32,
            k,
            chunk: o.chunk,
            object: o.object,
            window: o.window as u32,
            slots: o.upload_slots,
            link: Options::bytes_per_ns(o.link_gbit),
            origin_bw: Options::bytes_per_ns(o.origin_gbit),
            latency: o.latency_ns(),
            origin_latency: o.origin_ns(),
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            owner,
            state: vec![NOT_HELD; nodes * k as usize],
            lo: vec![0; nodes],
            next: vec![0; nodes],
            reading: vec![false; nodes],
            done_at: vec![0; nodes],
            trackers: if mode == Mode::P2p {
                (0..nodes).map(|_| Tracker::new(o.fanout.clone())).collect()
            } else {
                Vec::new()
            },
            used_slots: vec![0; nodes],
            slot_queue: (0..nodes).map(|_| VecDeque::new()).collect(),
            waiters: HashMap::new(),
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            flows: Vec::new(),
            free_flows: Vec::new(),
            ups: (0..=nodes).map(|_| Vec::new()).collect(),
            downs: (0..nodes).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
            dirty_up: vec![false; nodes + 1],
            dirty_down: vec![false; nodes],
            out: Outcome {
                nodes,
                object: o.object,
                egress: vec![0; nodes],
                egress_owner: vec![0; nodes],
                owned,
                ..Default::default()
            },
        };
        // Every node starts at time 0, in an order drawn from the seed (ties go in push order).
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut r = seed;
        for i in (1..order.len()).rev() {
            r = splitmix64(r);
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        for node in order {
            sim.push(0, Ev::Start(node));
        }
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Event { at, seq: self.seq, ev });
    }

    fn after_latency(&mut self, ev: Ev) {
        self.push(self.now + self.latency, ev);
    }

    fn idx(&self, node: u32, chunk: u32) -> usize {
        node as usize * self.k as usize + chunk as usize
    }

    fn key(node: u32, chunk: u32) -> u64 {
        (u64::from(node) << 32) | u64::from(chunk)
    }

    fn chunk_bytes(&self, chunk: u32) -> u64 {
        self.chunk.min(self.object - u64::from(chunk) * self.chunk)
    }

    fn now_ms(&self) -> u64 {
        self.now / 1_000_000
    }

    pub fn run(mut self) -> Outcome {
        let wall = Instant::now();
        let mut report_at = PROGRESS_EVERY_S;
        while let Some(Event { at, ev, .. }) = self.heap.pop() {
            debug_assert!(at >= self.now);
            self.now = at;
            self.out.events += 1;
            if self.out.events.is_multiple_of(1 << 20) && wall.elapsed().as_secs_f64() >= report_at {
                report_at += PROGRESS_EVERY_S;
                let done = self.lo.iter().map(|&l| u64::from(l)).sum::<u64>();
                eprintln!(
                    "    {:.0} s wall: {:.3} s simulated, {:.1}% of (node, chunk) pairs held, {} events",
                    wall.elapsed().as_secs_f64(),
                    self.now as f64 / 1e9,
                    100.0 * done as f64 / (u64::from(self.n) * u64::from(self.k)) as f64,
                    thousands(self.out.events)
                );
            }
            match ev {
                Ev::Start(node) => {
                    self.reading[node as usize] = true;
                    self.advance(node);
                }
                Ev::AtOwner(req) => self.at_owner(req),
                Ev::Holders(req) => self.try_holder(req),
                Ev::AtHolder(req) => self.at_holder(req),
                Ev::Refused(req) => {
                    self.out.reselections += 1;
                    self.reqs[req as usize].next += 1;
                    self.try_holder(req);
                }
                Ev::Delivered(req) => {
                    let (node, chunk) = (self.reqs[req as usize].node, self.reqs[req as usize].chunk);
                    self.reqs[req as usize].holders = Vec::new();
                    self.free_reqs.push(req);
                    self.complete(node, chunk);
                }
                Ev::OriginFirstByte(owner, chunk) => {
                    let bytes = self.chunk_bytes(chunk);
                    self.start_flow(self.n, owner, bytes, FlowKind::Origin { owner, chunk });
                }
                Ev::FlowEnd(flow, version) => {
                    if self.flows[flow as usize].version == version {
                        self.end_flow(flow);
                    }
                }
            }
            self.rerate_marked();
        }
        self.out.wall_s = wall.elapsed().as_secs_f64();
        self.out.done_s = self.done_at.iter().map(|&t| t as f64 / 1e9).collect();
        self.out.complete = self.state.iter().all(|&s| s == HELD) && self.lo.iter().all(|&l| l == self.k);
        self.out
    }

    /// Asks for the chunks the node's window allows.
    fn advance(&mut self, node: u32) {
        let i = node as usize;
        if !self.reading[i] {
            return;
        }
        loop {
            while self.lo[i] < self.k && self.state[self.idx(node, self.lo[i])] == HELD {
                self.lo[i] += 1;
            }
            if self.lo[i] == self.k {
                if self.done_at[i] == 0 {
                    self.done_at[i] = self.now.max(1);
                }
                return;
            }
            let c = self.next[i];
            if c >= self.k || c >= self.lo[i] + self.window {
                return;
            }
            self.next[i] += 1;
            self.ask(node, c);
        }
    }

    fn ask(&mut self, node: u32, chunk: u32) {
        let s = self.idx(node, chunk);
        if self.owner[chunk as usize] == node {
            // Own chunk: the shared origin fetch (maybe already done or under way for a peer).
            self.ensure_fetch(node, chunk);
            return;
        }
        debug_assert_eq!(self.state[s], NOT_HELD);
        self.state[s] = RECEIVING;
        let req = Req { node, chunk, direct: false, holders: Vec::new(), next: 0 };
        let id = match self.free_reqs.pop() {
            Some(id) => {
                self.reqs[id as usize] = req;
                id
            }
            None => {
                self.reqs.push(req);
                (self.reqs.len() - 1) as u32
            }
        };
        self.after_latency(Ev::AtOwner(id));
    }

    fn ensure_fetch(&mut self, owner: u32, chunk: u32) {
        let s = self.idx(owner, chunk);
        if self.state[s] == NOT_HELD {
            self.state[s] = RECEIVING;
            self.out.origin_fetches += 1;
            self.push(self.now + self.origin_latency, Ev::OriginFirstByte(owner, chunk));
        }
    }

    fn at_owner(&mut self, req: u32) {
        let (node, chunk, direct) = {
            let r = &self.reqs[req as usize];
            (r.node, r.chunk, r.direct)
        };
        let owner = self.owner[chunk as usize];
        let decision = match self.mode {
            Mode::OwnerOnly => Decision::Serve,
            Mode::P2p => {
                let now_ms = self.now_ms();
                let failed = std::mem::take(&mut self.reqs[req as usize].holders);
                let t = &mut self.trackers[owner as usize];
                if direct {
                    for h in &failed {
                        t.forget_holder(&chunk, h);
                    }
                }
                t.request(&chunk, &node, direct, now_ms)
            }
        };
        match decision {
            Decision::Serve => {
                if self.used_slots[owner as usize] < self.slots {
                    self.used_slots[owner as usize] += 1;
                    self.serve(owner, req);
                } else {
                    self.out.slot_waits += 1;
                    self.slot_queue[owner as usize].push_back(req);
                }
            }
            Decision::Redirect(holders) => {
                self.out.handoffs += 1;
                let r = &mut self.reqs[req as usize];
                r.holders = holders;
                r.next = 0;
                if self.state[self.idx(owner, chunk)] == HELD {
                    self.after_latency(Ev::Holders(req));
                } else {
                    self.ensure_fetch(owner, chunk);
                    self.waiters.entry(Self::key(owner, chunk)).or_default().push(Waiter::Redirect(req));
                }
            }
        }
    }

    /// The owner has an upload slot for `req`: sends once it holds the chunk.
    fn serve(&mut self, owner: u32, req: u32) {
        let (node, chunk) = (self.reqs[req as usize].node, self.reqs[req as usize].chunk);
        if self.state[self.idx(owner, chunk)] == HELD {
            let bytes = self.chunk_bytes(chunk);
            self.start_flow(owner, node, bytes, FlowKind::Serve { req });
        } else {
            self.ensure_fetch(owner, chunk);
            self.waiters.entry(Self::key(owner, chunk)).or_default().push(Waiter::Serve(req));
        }
    }

    /// The requester asks its next holder, or the owner directly when none is left.
    fn try_holder(&mut self, req: u32) {
        let r = &mut self.reqs[req as usize];
        if r.next < r.holders.len() {
            self.after_latency(Ev::AtHolder(req));
        } else {
            r.direct = true;
            self.out.directs += 1;
            self.after_latency(Ev::AtOwner(req));
        }
    }

    fn at_holder(&mut self, req: u32) {
        let (node, chunk, holder) = {
            let r = &self.reqs[req as usize];
            (r.node, r.chunk, r.holders[r.next])
        };
        let st = self.state[self.idx(holder, chunk)];
        if st == NOT_HELD {
            self.out.not_held += 1;
            self.after_latency(Ev::Refused(req));
            return;
        }
        if self.used_slots[holder as usize] >= self.slots {
            self.out.busy += 1;
            self.after_latency(Ev::Refused(req));
            return;
        }
        self.used_slots[holder as usize] += 1;
        if st == HELD {
            let bytes = self.chunk_bytes(chunk);
            self.start_flow(holder, node, bytes, FlowKind::Holder { req });
        } else {
            self.waiters.entry(Self::key(holder, chunk)).or_default().push(Waiter::HolderSend(req));
        }
    }

    /// `node` now holds `chunk`.
    fn complete(&mut self, node: u32, chunk: u32) {
        let s = self.idx(node, chunk);
        debug_assert_eq!(self.state[s], RECEIVING);
        self.state[s] = HELD;
        if let Some(ws) = self.waiters.remove(&Self::key(node, chunk)) {
            let bytes = self.chunk_bytes(chunk);
            for w in ws {
                match w {
                    Waiter::Serve(req) => {
                        let to = self.reqs[req as usize].node;
                        self.start_flow(node, to, bytes, FlowKind::Serve { req });
                    }
                    Waiter::Redirect(req) => self.after_latency(Ev::Holders(req)),
                    Waiter::HolderSend(req) => {
                        let to = self.reqs[req as usize].node;
                        self.start_flow(node, to, bytes, FlowKind::Holder { req });
                    }
                }
            }
        }
        self.advance(node);
    }

    fn release_slot(&mut self, node: u32) {
        match self.slot_queue[node as usize].pop_front() {
            Some(req) => self.serve(node, req),
            None => self.used_slots[node as usize] -= 1,
        }
    }

    // ---- flows

    fn start_flow(&mut self, src: u32, dst: u32, bytes: u64, kind: FlowKind) {
        if src < self.n {
            self.out.egress[src as usize] += bytes;
            self.out.transfers += 1;
            match kind {
                FlowKind::Serve { .. } => self.out.egress_owner[src as usize] += bytes,
                FlowKind::Holder { req } if self.reqs[req as usize].next > 0 => self.out.fallback_sends += 1,
                _ => {}
            }
        }
        let flow = Flow {
            src,
            dst,
            src_pos: self.ups[src as usize].len() as u32,
            dst_pos: self.downs[dst as usize].len() as u32,
            bytes,
            remaining: bytes as f64,
            rate: 0.0,
            at: self.now,
            version: 0,
            kind,
        };
        let id = match self.free_flows.pop() {
            Some(id) => {
                let version = self.flows[id as usize].version + 1;
                self.flows[id as usize] = Flow { version, ..flow };
                id
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.ups[src as usize].push(id);
        self.downs[dst as usize].push(id);
        self.mark(src, true);
        self.mark(dst, false);
    }

    /// Endpoint `e`'s flows (out of it if `up`) need new rates at the end of this event: a flow
    /// ending and the next starting at one instant cost one pass, not two.
    fn mark(&mut self, e: u32, up: bool) {
        let flag = if up { &mut self.dirty_up[e as usize] } else { &mut self.dirty_down[e as usize] };
        if !*flag {
            *flag = true;
            self.dirty.push((e, up));
        }
    }

    fn rerate_marked(&mut self) {
        while let Some((e, up)) = self.dirty.pop() {
            if up {
                self.dirty_up[e as usize] = false;
            } else {
                self.dirty_down[e as usize] = false;
            }
            self.rerate(e, up);
        }
    }

    fn end_flow(&mut self, id: u32) {
        let (src, dst, src_pos, dst_pos, kind, bytes) = {
            let f = &mut self.flows[id as usize];
            // Old end events of this slot are stale from here on.
            f.version += 1;
            (f.src, f.dst, f.src_pos as usize, f.dst_pos as usize, f.kind, f.bytes)
        };
        let ups = &mut self.ups[src as usize];
        ups.swap_remove(src_pos);
        if let Some(&moved) = ups.get(src_pos) {
            self.flows[moved as usize].src_pos = src_pos as u32;
        }
        let downs = &mut self.downs[dst as usize];
        downs.swap_remove(dst_pos);
        if let Some(&moved) = downs.get(dst_pos) {
            self.flows[moved as usize].dst_pos = dst_pos as u32;
        }
        self.free_flows.push(id);
        self.mark(src, true);
        self.mark(dst, false);
        match kind {
            FlowKind::Origin { owner, chunk } => {
                self.out.origin_bytes += bytes;
                self.complete(owner, chunk);
            }
            FlowKind::Serve { req } => {
                let chunk = self.reqs[req as usize].chunk;
                if self.mode == Mode::P2p {
                    self.trackers[src as usize].sent(&chunk);
                }
                self.release_slot(src);
                self.after_latency(Ev::Delivered(req));
            }
            FlowKind::Holder { req } => {
                self.release_slot(src);
                self.after_latency(Ev::Delivered(req));
            }
        }
    }

    /// Recomputes the rates of the flows out of (`up`) or into endpoint `e`.
    fn rerate(&mut self, e: u32, up: bool) {
        let list = if up { &self.ups[e as usize] } else { &self.downs[e as usize] };
        for i in 0..list.len() {
            let id = if up { self.ups[e as usize][i] } else { self.downs[e as usize][i] };
            let f = &self.flows[id as usize];
            let src_bw = if f.src == self.n { self.origin_bw } else { self.link };
            let rate = (src_bw / self.ups[f.src as usize].len() as f64)
                .min(self.link / self.downs[f.dst as usize].len() as f64);
            if rate == f.rate {
                continue;
            }
            let now = self.now;
            let f = &mut self.flows[id as usize];
            f.remaining = (f.remaining - f.rate * (now - f.at) as f64).max(0.0);
            f.at = now;
            f.rate = rate;
            f.version += 1;
            let end = now + (f.remaining / rate).ceil() as u64;
            let version = f.version;
            self.push(end, Ev::FlowEnd(id, version));
        }
    }
}

// -------------------------------------------------------------------------------------------
// Running and reporting

/// The first owner of each chunk of the object, by the real placement of `n` nodes.
fn owners(o: &Options, n: usize) -> Vec<u32> {
    let placement = Placement::new(&cluster_map(n, false));
    let object = ObjectVersion {
        origin: "s3".into(),
        bucket: "models".into(),
        key: format!("checkpoint-{}.safetensors", o.seed),
        version: format!("\"{:016x}\"", splitmix64(o.seed)),
        size: o.object,
    };
    let mut out = Vec::with_capacity(1);
    (0..u64::from(o.chunks()))
        .map(|i| {
            // The node routes a chunk by the low 64 bits of its id.
            placement.ranking(ChunkId::new(&object, o.chunk, i).0 as u64, 1, &mut out);
            out[0] as u32
        })
        .collect()
}

pub fn simulate(mode: Mode, o: &Options, n: usize) -> Outcome {
    let owner = owners(o, n);
    Sim::new(mode, o, n, owner, o.seed).run()
}

fn peak_rss_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib >> 10)
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

pub fn run(o: &Options) {
    let started = Instant::now();
    let k = o.chunks();
    println!(
        "## Fan-out: N nodes read one {} object at once ({} chunks of {}), window {}, {} upload slots",
        bytes_label(o.object),
        thousands(u64::from(k)),
        bytes_label(o.chunk),
        o.window,
        o.upload_slots
    );
    println!();
    println!(
        "Links {} Gbit/s up and down per node, origin {} Gbit/s aggregate with {} ms to first byte, \
         {} µs per message. Tracker: direct_budget {}, max_children {}, holders_per_answer {}, \
         holders_per_chunk {}, holder_ttl_ms {}. Seed {}.",
        o.link_gbit,
        o.origin_gbit,
        o.origin_ms,
        o.latency_us,
        o.fanout.direct_budget,
        o.fanout.max_children,
        o.fanout.holders_per_answer,
        o.fanout.holders_per_chunk,
        o.fanout.holder_ttl_ms,
        o.seed
    );
    for &n in &o.sizes {
        let ideal = o.ideal_s(n);
        let once = Options::secs(o.object as f64, o.origin_gbit) + o.origin_ms / 1e3;
        println!();
        println!("### {} nodes", thousands(n as u64));
        println!();
        println!(
            "| scheme | all hold all: p50 / max | max / mean egress per node | origin bytes | max / ideal | handoffs | reselections | slot waits | sim wall |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut targets = Vec::new();
        let a = o.every_node_reads_origin_s(n);
        println!(
            "| (a) every node reads the origin (analytic) | {a:.3} s / {a:.3} s | 0.00× / 0.00× | {:.2}× | {:.2}× | — | — | — | — |",
            n as f64,
            a / ideal
        );
        targets.push(("(a) every node reads the origin", 0.0, a / ideal, n as f64));
        let mut runs = Vec::new();
        if o.owner_only {
            runs.push(("(b) owner-only", Mode::OwnerOnly));
        }
        if o.p2p {
            runs.push(("(p) p2p, real Tracker", Mode::P2p));
        }
        for (label, mode) in runs {
            eprintln!("[{:>6.1} s] {n} nodes: {label} ...", started.elapsed().as_secs_f64());
            let r = simulate(mode, o, n);
            eprintln!(
                "[{:>6.1} s] {n} nodes: {label} done: {} events, {} transfers, {:.1} s, peak RSS {} MiB",
                started.elapsed().as_secs_f64(),
                thousands(r.events),
                thousands(r.transfers),
                r.wall_s,
                peak_rss_mib().unwrap_or(0)
            );
            let max = r.max_s();
            println!(
                "| {label}{} | {:.3} s / {max:.3} s | {:.2}× / {:.2}× | {:.2}× | {:.2}× | {} | {} | {} | {:.1} s |",
                if r.complete { "" } else { " (INCOMPLETE)" },
                r.p50_s(),
                r.max_egress(),
                r.mean_egress(),
                r.origin(),
                max / ideal,
                thousands(r.handoffs),
                thousands(r.reselections),
                thousands(r.slot_waits),
                r.wall_s,
            );
            if mode == Mode::P2p {
                println!(
                    "|   … of which | reselections: {} Busy, {} NotHeld; {} direct retries | | | | | | | |",
                    thousands(r.busy),
                    thousands(r.not_held),
                    thousands(r.directs)
                );
                let top = (0..r.nodes).max_by_key(|&i| r.egress[i]).unwrap_or(0);
                let holder = r.egress[top] - r.egress_owner[top];
                println!(
                    "|   … busiest sender | {:.2}× as owner of {} chunks, {:.2}× as holder; {} holder sends over all nodes went to a requester whose first holder had failed | | | | | | | |",
                    r.egress_owner[top] as f64 / o.object as f64,
                    r.owned[top],
                    holder as f64 / o.object as f64,
                    thousands(r.fallback_sends)
                );
            }
            if mode == Mode::OwnerOnly {
                println!(
                    "|   … owner-only egress | the busiest owner owns {} of {} chunks (mean {:.2}) and sends each to the {} others | | | | | | | |",
                    r.owned.iter().max().copied().unwrap_or(0),
                    thousands(u64::from(k)),
                    f64::from(k) / r.nodes as f64,
                    thousands(r.nodes as u64 - 1)
                );
            }
            targets.push((label, r.max_egress(), max / ideal, r.origin()));
        }
        println!(
            "| (c) ideal: S/link + ceil(log2 N)·C/link + first byte | {ideal:.3} s | 1.00× | 1.00× | 1.00× | — | — | — | — |"
        );
        println!();
        println!(
            "Any scheme that reads the origin once finishes after S / origin + first byte = {once:.3} s \
             ({:.2}× ideal).",
            once / ideal
        );
        println!();
        println!(
            "| targets at {} nodes | max egress ≤ {TARGET_MAX_EGRESS}× object | completion ≤ {TARGET_TIME_OVER_IDEAL}× ideal | origin bytes = {TARGET_ORIGIN:.2}× |",
            thousands(n as u64)
        );
        println!("|---|---|---|---|");
        for (label, egress, ratio, origin) in targets {
            println!(
                "| {label} | {} ({egress:.2}×) | {} ({ratio:.2}×) | {} ({origin:.2}×) |",
                pass(egress <= TARGET_MAX_EGRESS),
                pass(ratio <= TARGET_TIME_OVER_IDEAL),
                pass((origin - TARGET_ORIGIN).abs() < 0.005)
            );
        }
    }
    println!();
    println!(
        "Wall time {:.0} s on one thread; peak RSS (VmHWM) {} MiB.",
        started.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("?".into(), |m| m.to_string())
    );
}

fn bytes_label(b: u64) -> String {
    if b.is_multiple_of(GIB) {
        format!("{} GiB", b / GIB)
    } else if b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(n: usize) -> Options {
        Options { sizes: vec![n], object: 64 * MIB, chunk: MIB, ..Default::default() }
    }

    fn check_common(r: &Outcome, o: &Options) {
        assert!(r.complete, "every node holds every chunk");
        assert_eq!(r.origin_bytes, o.object, "the origin serves the object once");
        assert_eq!(r.origin_fetches, u64::from(o.chunks()));
        assert!(r.done_s.iter().all(|&t| t > 0.0));
        // Every node but the owner receives every chunk once.
        let received = (r.nodes as u64 - 1) * o.object;
        assert_eq!(r.egress.iter().sum::<u64>(), received);
    }

    #[test]
    fn owner_only_sends_every_copy_from_the_owner() {
        let o = small(20);
        let r = simulate(Mode::OwnerOnly, &o, 20);
        check_common(&r, &o);
        for (node, &owned) in r.owned.iter().enumerate() {
            assert_eq!(r.egress[node], (r.nodes as u64 - 1) * u64::from(owned) * o.chunk, "node {node}");
        }
        let most = u64::from(*r.owned.iter().max().expect("nodes"));
        assert_eq!(r.max_egress(), ((r.nodes as u64 - 1) * most * o.chunk) as f64 / o.object as f64);
        assert_eq!(r.handoffs, 0);
    }

    #[test]
    fn p2p_spreads_copies_and_reads_the_origin_once() {
        let o = small(50);
        let r = simulate(Mode::P2p, &o, 50);
        check_common(&r, &o);
        assert!(r.handoffs > 0, "the owner hands requesters to holders");
        let owner_only = simulate(Mode::OwnerOnly, &o, 50);
        assert!(r.max_egress() < owner_only.max_egress());
    }

    #[test]
    fn a_lone_pair_takes_the_link_time() {
        // Two nodes, one chunk: the reader waits for the owner's origin fetch, then one transfer.
        let o = Options { object: 8 * MIB, chunk: 8 * MIB, ..small(2) };
        let r = simulate(Mode::P2p, &o, 2);
        check_common(&r, &o);
        let link = Options::secs((8 * MIB) as f64, o.link_gbit);
        let origin = Options::secs((8 * MIB) as f64, o.origin_gbit);
        // The owner starts its own fetch at 0; the request arrives meanwhile; the last byte takes
        // one latency.
        let expect = o.origin_ms / 1e3 + origin + link + o.latency_us / 1e6;
        assert!((r.max_s() - expect).abs() < 1e-6, "{} vs {expect}", r.max_s());
    }
}
