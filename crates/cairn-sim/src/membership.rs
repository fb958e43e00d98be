//! `cairn-sim membership`: the real `cairn_membership::Membership` (SWIM via foca, sealed packets,
//! the derived cluster map) driven over a simulated network in one process.
//!
//! The network is a discrete-event loop (a priority queue of packets and timers, in microseconds)
//! with per-packet latency and jitter, packet loss, partitions (nodes in different groups cannot
//! reach each other) and stalls (a stalled node handles nothing until it resumes; packets and
//! timers due meanwhile are kept and handled when it resumes, like a SIGSTOPped process whose
//! socket buffer keeps them). Crashed nodes drop everything.
//!
//! Members use a compact identity ([`SimId`]: index, generation, join second, leaving flag;
//! 16 bytes) whose node id, zone and rack come from the index: racks of 40 consecutive indices,
//! rack `r` in zone `r % 3`. Its gossip address is its index.
//!
//! Scenarios, run one after the other on one cluster per size:
//! 1. form: N nodes start over `--spread` seconds and join through 3 seeds (`Membership::join`,
//!    gossip only); time until every node has N-1 active members;
//! 2. steady state: packets and bytes sent per node per second over `--steady` seconds;
//! 3. crash: `--crash` random nodes stop; time until each live node has seen each of them down;
//! 4. false positives: (a) `--loss-test` loss for 60 s, (b) 3 nodes stalled 5 s each; live nodes
//!    declared down by anyone, suspicions and refutations;
//! 5. `min(1000, N/2)` nodes join at once (each through the seeds plus a snapshot of a seed's
//!    members, `Membership::learn`); convergence time; keys moved in one node's map per ramp step;
//! 6. a rack of 40 dies at once; time until all live nodes see all 40 down; keys moved;
//! 7. memory: process RSS delta over the formed cluster divided by N.
//!
//! "Seen down" is taken from the `Change::Down` a node's `Outbox` reports (foca's Down, which the
//! map derives as `down`); at the end of scenarios 3 and 6 the derived map of a sample of live
//! nodes is checked to show the victims as down.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use cairn_core::cluster::{ClusterMap, NodeEntry, NodeState};
use cairn_core::placement::Placement;
use cairn_membership::{Change, Config, Member, Membership, Outbox, Stats};
use foca::Timer;
use serde::{Deserialize, Serialize};

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
const RACK_SIZE: u32 = 40;
/// Unix milliseconds at simulated time zero.
const BASE_MS: u64 = 1_700_000_000_000;
const SECRET: &[u8] = b"cairn-sim membership secret";
const SEEDS: [u32; 3] = [0, 1, 2];
const KEYS: u64 = 200_000;

// ---------------------------------------------------------------------------------------------
// Compact identity

/// A member of the simulated cluster: 16 bytes instead of `NodeIdentity`'s ~100 plus strings.
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

static NAMES: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// The node id of index `idx` ("n000123"), leaked once and shared by all simulations.
fn name(idx: u32) -> &'static str {
    let i = idx as usize;
    if let Some(n) = NAMES.read().unwrap_or_else(|e| e.into_inner()).get(i) {
        return n;
    }
    let mut names = NAMES.write().unwrap_or_else(|e| e.into_inner());
    while names.len() <= i {
        let s: &'static str = Box::leak(format!("n{:06}", names.len()).into_boxed_str());
        names.push(s);
    }
    names[i]
}

fn rack_of(idx: u32) -> u32 {
    idx / RACK_SIZE
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
        let rack = rack_of(self.idx);
        NodeEntry {
            id: name(self.idx).to_string(),
            addr: format!("10.{}.{}.{}:7100", self.idx >> 16, (self.idx >> 8) & 0xff, self.idx & 0xff),
            zone: ZONES[(rack % 3) as usize].to_string(),
            rack: format!("r{rack}"),
            weight: 100,
            state: NodeState::Up,
        }
    }

    fn joined_ms(&self) -> u64 {
        if self.joined_s == 0 { 0 } else { BASE_MS + u64::from(self.joined_s) * 1000 }
    }
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

/// Watches a set of victims: when each live node first saw each of them down.
struct Watch {
    slot: HashMap<u32, usize>,
    start_us: u64,
    /// [victim slot][observer] = µs after start, or u64::MAX.
    seen: Vec<Vec<u64>>,
    missing: usize,
}

pub struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Ev>,
    pub nodes: Vec<Option<Membership<SimId>>>,
    dead: Vec<bool>,
    stalled_until: Vec<u64>,
    group: Vec<u8>,
    pub net: NetConfig,
    cfg: Config,
    rng: u64,
    watch: Option<Watch>,
    /// Down changes about members that were not crashed (any generation ≥ 1).
    pub false_downs: u64,
    pub falsely_downed: HashSet<u32>,
    pub packets_dropped: u64,
}

impl Sim {
    pub fn new(capacity: usize, net: NetConfig, cfg: Config, seed: u64) -> Self {
        Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: (0..capacity).map(|_| None).collect(),
            dead: vec![false; capacity],
            stalled_until: vec![0; capacity],
            group: vec![0; capacity],
            net,
            cfg,
            rng: seed | 1,
            watch: None,
            false_downs: 0,
            falsely_downed: HashSet::new(),
            packets_dropped: 0,
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
        self.seq += 1;
        self.queue.push(Ev { at, seq: self.seq, node, kind });
    }

    fn absorb(&mut self, from: u32, out: Outbox<SimId>) {
        for (to, p) in out.sends {
            let t = to.idx as usize;
            if t >= self.nodes.len() || self.group[t] != self.group[from as usize] {
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
                    && w.seen[s][from as usize] == u64::MAX
                {
                    w.seen[s][from as usize] = self.now - w.start_us;
                    w.missing -= 1;
                }
                if !self.dead[m.idx as usize] {
                    self.false_downs += 1;
                    self.falsely_downed.insert(m.idx);
                }
            }
        }
    }

    /// Starts node `idx` and has it join through the seeds (none for the first seed).
    pub fn start(&mut self, id: SimId, snapshot_from: Option<u32>) {
        let i = id.idx as usize;
        let mut m = Membership::new(id, self.cfg.clone(), SECRET, 0x5eed ^ u64::from(id.idx));
        let mut out = Outbox::default();
        let now = self.now_ms();
        let seeds: Vec<u32> = SEEDS.iter().copied().filter(|&s| s != id.idx && self.nodes[s as usize].is_some()).collect();
        if !seeds.is_empty() {
            m.join(&seeds, now, &mut out);
        } else {
            // Alone: announcing to nobody still arms foca's periodic timers once it has members;
            // the first seed just waits to be announced to.
            m.join(&[], now, &mut out);
        }
        if let Some(s) = snapshot_from
            && let Some(seed) = self.nodes[s as usize].as_ref()
        {
            let snap = seed.snapshot();
            m.learn(snap, now, &mut out);
        }
        self.nodes[i] = Some(m);
        self.dead[i] = false;
        self.absorb(id.idx, out);
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

    pub fn run_until(&mut self, until_us: u64) {
        while let Some(top) = self.queue.peek() {
            if top.at > until_us {
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
            let now_ms = self.now_ms();
            let Some(m) = self.nodes[i].as_mut() else { continue };
            let mut out = Outbox::default();
            match ev.kind {
                Kind::Packet(p) => {
                    let _ = m.handle_packet(&p, now_ms, &mut out);
                }
                Kind::Timer(t) => m.handle_timer(t, now_ms, &mut out),
            }
            self.absorb(ev.node, out);
        }
        self.now = self.now.max(until_us);
    }

    fn watch(&mut self, victims: &[u32]) {
        let n = self.nodes.len();
        let live = self.live().filter(|(i, _)| !victims.contains(i)).count();
        self.watch = Some(Watch {
            slot: victims.iter().enumerate().map(|(s, &v)| (v, s)).collect(),
            start_us: self.now,
            seen: victims.iter().map(|_| vec![u64::MAX; n]).collect(),
            missing: victims.len() * live,
        });
    }

    /// Per (live observer, victim): seconds until seen down (missing ones excluded), and the count
    /// of pairs not seen.
    fn watch_result(&mut self) -> (Vec<f64>, usize) {
        let Some(w) = self.watch.take() else { return (Vec::new(), 0) };
        let mut times = Vec::new();
        let mut missing = 0;
        for (i, m) in self.nodes.iter().enumerate() {
            if m.is_none() || self.dead[i] {
                continue;
            }
            for s in &w.seen {
                if s[i] == u64::MAX {
                    missing += 1;
                } else {
                    times.push(s[i] as f64 / 1e6);
                }
            }
        }
        times.sort_by(f64::total_cmp);
        (times, missing)
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
        }
        s
    }

    /// Whether every live node has all other live nodes active, and how many do.
    fn converged(&self, expected_active: usize) -> (bool, usize) {
        let ok = self.live().filter(|(_, m)| m.active() >= expected_active).count();
        (ok == self.live().count(), ok)
    }
}

// ---------------------------------------------------------------------------------------------
// Options and scenarios

pub struct Options {
    pub sizes: Vec<usize>,
    pub latency_us: u64,
    pub jitter_us: u64,
    pub loss: f64,
    pub spread_s: u64,
    pub steady_s: u64,
    pub crash: usize,
    pub loss_test: f64,
    /// Wall-clock seconds a convergence phase may take before it is reported as not converged.
    pub budget_s: u64,
    pub seed: u64,
    /// Forming joins also learn a seed's snapshot (`Membership::learn`), not only gossip.
    pub form_snapshot: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            sizes: vec![1_000, 10_000],
            latency_us: 500,
            jitter_us: 200,
            loss: 0.0,
            spread_s: 5,
            steady_s: 30,
            crash: 3,
            loss_test: 0.01,
            budget_s: 240,
            seed: 1,
            form_snapshot: true,
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
                "--latency-us" => o.latency_us = num(value)?,
                "--jitter-us" => o.jitter_us = num(value)?,
                "--loss" => o.loss = frac(value)?,
                "--spread" => o.spread_s = num(value)?,
                "--steady" => o.steady_s = num(value)?,
                "--crash" => o.crash = num(value)? as usize,
                "--loss-test" => o.loss_test = frac(value)?,
                "--budget" => o.budget_s = num(value)?,
                "--seed" => o.seed = num(value)?,
                "--form" => {
                    o.form_snapshot = match value.as_str() {
                        "snapshot" => true,
                        "gossip" => false,
                        _ => return Err(format!("--form is snapshot or gossip, not {value:?}")),
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
}

/// One size's results.
#[derive(Default)]
pub struct Report {
    pub n: usize,
    pub form_s: Option<f64>,
    pub form_note: String,
    pub form_99: Option<f64>,
    pub pps_mean: f64,
    pub pps_max: f64,
    pub bps_mean: f64,
    pub bps_max: f64,
    pub crash: Option<(f64, f64, f64, usize)>,
    pub crash_map_ok: bool,
    pub loss_false: (u64, usize, u64, u64),
    pub stall_false: (u64, usize, u64, u64),
    pub join: Option<JoinReport>,
    pub rack: Option<RackReport>,
    pub rss_per_node: Option<f64>,
    pub wall_s: f64,
    pub notes: Vec<String>,
}

pub struct JoinReport {
    pub joiners: usize,
    pub converge_s: Option<f64>,
    /// (label, moved, minimum) per ramp step, then the total.
    pub steps: Vec<(String, u64, u64)>,
}

pub struct RackReport {
    pub converge: Option<(f64, f64, f64)>,
    pub missing: usize,
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

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
    mut done: impl FnMut(&Sim) -> (bool, String),
) -> Option<f64> {
    let start = sim.now;
    let wall = Instant::now();
    let step = 250_000;
    let mut last_print = Instant::now();
    loop {
        let (ok, progress) = done(sim);
        if ok {
            return Some((sim.now - start) as f64 / 1e6);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {label}: +{:.1} s simulated, {progress}, {:.0} s wall",
                (sim.now - start) as f64 / 1e6,
                wall.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if sim.now - start >= max_sim_us || wall.elapsed() > budget {
            eprintln!("  {label}: gave up after +{:.1} s simulated ({progress})", (sim.now - start) as f64 / 1e6);
            return None;
        }
        let next = sim.now + step;
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

pub fn run_size(n: usize, o: &Options) -> Report {
    let wall = Instant::now();
    let budget = Duration::from_secs(o.budget_s);
    let joiners = (n / 2).min(1_000);
    let capacity = n + joiners;
    let net = NetConfig { latency_us: o.latency_us, jitter_us: o.jitter_us, loss: o.loss };
    let mut r = Report { n, ..Default::default() };
    let rss0 = rss_bytes();
    let mut sim = Sim::new(capacity, net, Config::default(), o.seed ^ (n as u64) << 20);
    eprintln!("[{n}] 1. form: {n} nodes start over {} s, join through seeds {:?}", o.spread_s, SEEDS);

    // 1. Form.
    let spread_us = o.spread_s * 1_000_000;
    for i in 0..n as u32 {
        let at = spread_us * u64::from(i) / n as u64;
        sim.run_until(at);
        let snap = o.form_snapshot.then_some(SEEDS[i as usize % SEEDS.len()]).filter(|&s| s < i);
        sim.start(SimId::new(i, 0), snap);
    }
    let mut at99 = None;
    let t_start = sim.now;
    let formed_at = run_until_done(&mut sim, "form", 120_000_000, budget, |s| {
        let (ok, c) = s.converged(n - 1);
        if at99.is_none() && c * 100 >= n * 99 {
            at99 = Some((s.now - t_start) as f64 / 1e6 + o.spread_s as f64);
        }
        let min = s.live().map(|(_, m)| m.active()).min().unwrap_or(0);
        (ok, format!("{c}/{n} nodes see all, fewest seen {min}"))
    });
    r.form_99 = at99;
    r.form_s = formed_at.map(|t| t + o.spread_s as f64);
    r.form_note = format!(
        "from the first start; starts spread over {} s; join = {}; 99% of nodes saw all at {}",
        o.spread_s,
        if o.form_snapshot { "seeds + snapshot of a seed (Membership::learn)" } else { "seeds only, gossip" },
        opt(r.form_99)
    );
    if let (Some(a), Some(b)) = (rss0, rss_bytes()) {
        r.rss_per_node = Some(b.saturating_sub(a) as f64 / n as f64);
    }
    if formed_at.is_none() {
        // Top up the nodes that still miss members with a seed's snapshot, so that the later
        // scenarios start from a formed cluster.
        let laggards: Vec<u32> = sim.live().filter(|(_, m)| m.active() < n - 1).map(|(i, _)| i).collect();
        let snap = sim.nodes[0].as_ref().map(|m| m.snapshot()).unwrap_or_default();
        let now = sim.now_ms();
        for &i in &laggards {
            let mut out = Outbox::default();
            if let Some(m) = sim.nodes[i as usize].as_mut() {
                m.learn(snap.clone(), now, &mut out);
            }
            sim.absorb(i, out);
        }
        sim.run_until(sim.now + 1_000_000);
        let (ok, c) = sim.converged(n - 1);
        r.notes.push(format!(
            "form: not every node saw all {n} within 120 s simulated ({} s wall budget); the {} that did not then learned seed 0's snapshot (after which {c}/{n} saw all{})",
            o.budget_s,
            laggards.len(),
            if ok { "" } else { ": later scenarios start from a partly formed cluster" }
        ));
    }
    eprintln!("[{n}] formed at {:.1} s simulated, {:.0} s wall", sim.now_s(), wall.elapsed().as_secs_f64());

    // 2. Steady state: let the join backlog drain, then measure.
    sim.run_until(sim.now + 15_000_000);
    let before: Vec<(u64, u64)> =
        (0..n).map(|i| sim.nodes[i].as_ref().map(|m| (m.stats().packets_out, m.stats().bytes_out)).unwrap_or((0, 0))).collect();
    eprintln!("[{n}] 2. steady state over {} s", o.steady_s);
    sim.run_until(sim.now + o.steady_s * 1_000_000);
    let secs = o.steady_s.max(1) as f64;
    let rates: Vec<(f64, f64)> = (0..n)
        .filter_map(|i| sim.nodes[i].as_ref().map(|m| (i, m)))
        .map(|(i, m)| ((m.stats().packets_out - before[i].0) as f64 / secs, (m.stats().bytes_out - before[i].1) as f64 / secs))
        .collect();
    r.pps_mean = rates.iter().map(|x| x.0).sum::<f64>() / rates.len() as f64;
    r.pps_max = rates.iter().map(|x| x.0).fold(0.0, f64::max);
    r.bps_mean = rates.iter().map(|x| x.1).sum::<f64>() / rates.len() as f64;
    r.bps_max = rates.iter().map(|x| x.1).fold(0.0, f64::max);

    // 3. Crash.
    let candidates: Vec<u32> = (SEEDS.len() as u32..n as u32).collect();
    let victims = shuffle_pick(&mut sim, &candidates, o.crash);
    eprintln!("[{n}] 3. crash {victims:?}");
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    sim.watch(&victims);
    for &v in &victims {
        sim.crash(v);
    }
    let conv = run_until_done(&mut sim, "crash", 120_000_000, budget, |s| {
        let m = s.watch.as_ref().map_or(0, |w| w.missing);
        (m == 0, format!("{m} (node, victim) pairs left"))
    });
    let (times, missing) = sim.watch_result();
    if conv.is_some() || !times.is_empty() {
        r.crash = Some((pct(&times, 0.5), pct(&times, 0.99), times.last().copied().unwrap_or(f64::NAN), missing));
    }
    r.crash_map_ok = check_down_in_maps(&sim, &victims);
    if sim.false_downs > 0 {
        r.notes.push(format!("crash phase: {} live nodes declared down by someone", sim.falsely_downed.len()));
    }
    sim.run_until(sim.now + 5_000_000);

    // 4a. Loss.
    eprintln!("[{n}] 4a. {:.1}% loss for 60 s", o.loss_test * 100.0);
    let s0 = sim.stats_sum();
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    let saved_loss = sim.net.loss;
    sim.net.loss = o.loss_test;
    sim.run_until(sim.now + 60_000_000);
    sim.net.loss = saved_loss;
    sim.run_until(sim.now + 15_000_000);
    let s1 = sim.stats_sum();
    r.loss_false = (sim.false_downs, sim.falsely_downed.len(), s1.suspicions - s0.suspicions, s1.refutations - s0.refutations);

    // 4b. Stalls.
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
    r.stall_false = (sim.false_downs, sim.falsely_downed.len(), s2.suspicions - s1.suspicions, s2.refutations - s1.refutations);

    // 6. A rack of 40 dies (before the joins, so that the ramp does not move keys meanwhile).
    r.rack = Some(rack_scenario(&mut sim, n, budget, &mut r.notes));

    // 5. Joins.
    r.join = Some(join_scenario(&mut sim, n, joiners, budget, &mut r.notes));

    r.wall_s = wall.elapsed().as_secs_f64();
    r
}

/// Whether the derived map of up to 20 live nodes shows every victim down.
fn check_down_in_maps(sim: &Sim, victims: &[u32]) -> bool {
    let now = sim.now_ms();
    let names: HashSet<&str> = victims.iter().map(|&v| name(v)).collect();
    let step = (sim.live().count() / 20).max(1);
    sim.live().step_by(step).all(|(_, m)| {
        let map = m.map(now);
        let down = map.nodes.iter().filter(|e| names.contains(e.id.as_str()) && e.state == NodeState::Down).count();
        down == names.len()
    })
}

fn rack_scenario(sim: &mut Sim, n: usize, budget: Duration, notes: &mut Vec<String>) -> RackReport {
    // The first rack with no seed and no node already dead or stalled.
    let racks = n as u32 / RACK_SIZE;
    let rack = (1..racks)
        .rev()
        .find(|&k| (k * RACK_SIZE..(k + 1) * RACK_SIZE).all(|i| !sim.dead[i as usize] && !SEEDS.contains(&i)))
        .unwrap_or(racks.saturating_sub(1));
    let victims: Vec<u32> = (rack * RACK_SIZE..(rack + 1) * RACK_SIZE).filter(|&i| !sim.dead[i as usize]).collect();
    let observer = 1u32;
    eprintln!("[{n}] 6. rack r{rack} ({} nodes) dies", victims.len());
    let before = sim.nodes[observer as usize].as_ref().map(|m| m.map(sim.now_ms()));
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    sim.watch(&victims);
    for &v in &victims {
        sim.crash(v);
    }
    let conv = run_until_done(sim, "rack", 120_000_000, budget, |s| {
        let m = s.watch.as_ref().map_or(0, |w| w.missing);
        (m == 0, format!("{m} (node, victim) pairs left"))
    });
    let (times, missing) = sim.watch_result();
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
    let converge = conv.map(|_| (pct(&times, 0.5), pct(&times, 0.99), times.last().copied().unwrap_or(f64::NAN)));
    RackReport { converge, missing, moved, minimum, only_rack_keys: only }
}

fn join_scenario(sim: &mut Sim, n: usize, joiners: usize, budget: Duration, notes: &mut Vec<String>) -> JoinReport {
    let observer = 1u32;
    let t0_ms = sim.now_ms();
    let before = sim.nodes[observer as usize].as_ref().map(|m| m.map(t0_ms));
    // Join on a whole second so every joiner has the same ramp instants.
    let join_s = sim.now / 1_000_000 + 1;
    sim.run_until(join_s * 1_000_000);
    eprintln!("[{n}] 5. {joiners} nodes join at once (seeds + snapshot of seed 0)");
    sim.false_downs = 0;
    sim.falsely_downed.clear();
    for j in 0..joiners as u32 {
        let idx = n as u32 + j;
        sim.start(SimId::new(idx, join_s as u32), Some(SEEDS[(j % 3) as usize]));
    }
    let live_total = sim.live().count();
    let t_start = sim.now;
    let mut at99 = None;
    let conv = run_until_done(sim, "join", 120_000_000, budget, |s| {
        let (ok, c) = s.converged(live_total - 1);
        if at99.is_none() && c * 100 >= live_total * 99 {
            at99 = Some((s.now - t_start) as f64 / 1e6);
        }
        (ok, format!("{c}/{live_total} nodes see all"))
    });
    notes.push(format!("join: 99% of the {live_total} live nodes saw all at {}", opt(at99)));
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
    let mut reports = Vec::new();
    for &n in &o.sizes {
        let r = run_size(n, o);
        eprintln!("[{n}] done in {:.0} s wall", r.wall_s);
        print_one(&r);
        reports.push(r);
    }
    print_memory(&reports);
}

fn opt(x: Option<f64>) -> String {
    x.map_or("not converged".into(), |v| format!("{v:.1} s"))
}

fn print_one(r: &Report) {
    let n = r.n;
    println!("\n### {n} nodes (simulated in full; wall {:.0} s)\n", r.wall_s);
    println!("| scenario | result |");
    println!("|---|---|");
    println!("| 1. form: every node sees all {n} | {} ({}) |", opt(r.form_s), r.form_note);
    println!(
        "| 2. steady state, sent per node | {:.1} packets/s mean, {:.0} max; {:.0} B/s mean, {:.0} max |",
        r.pps_mean, r.pps_max, r.bps_mean, r.bps_max
    );
    match r.crash {
        Some((p50, p99, max, missing)) => println!(
            "| 3. crash: until each live node sees each crashed node down | p50 {p50:.1} s, p99 {p99:.1} s, max {max:.1} s{}; derived maps checked: {} |",
            if missing > 0 { format!(", {missing} pairs never") } else { String::new() },
            if r.crash_map_ok { "down" } else { "NOT all down" }
        ),
        None => println!("| 3. crash | not converged |"),
    }
    let (d, nodes, sus, refu) = r.loss_false;
    println!("| 4a. 1% loss 60 s: live nodes declared down | {nodes} ({d} down notices); {sus} suspicions, {refu} refutations |");
    let (d, nodes, sus, refu) = r.stall_false;
    println!("| 4b. 3 nodes stalled 5 s: declared down | {nodes} ({d} down notices); {sus} suspicions, {refu} refutations |");
    if let Some(j) = &r.join {
        println!("| 5. {} join at once: every node sees all | {} |", j.joiners, opt(j.converge_s));
        for (label, moved, min) in &j.steps {
            println!(
                "| 5. keys moved, {label} (of {KEYS}, r=1) | {moved} (minimum {min}, ratio {:.2}) |",
                *moved as f64 / (*min).max(1) as f64
            );
        }
    }
    if let Some(k) = &r.rack {
        let c = k.converge.map_or("not converged".into(), |(p50, p99, max)| format!("p50 {p50:.1} s, p99 {p99:.1} s, max {max:.1} s"));
        println!("| 6. rack of 40 dies: all live see all 40 down | {c}{} |", if k.missing > 0 { format!(", {} pairs never", k.missing) } else { String::new() });
        println!(
            "| 6. keys moved (of {KEYS}, r=1) | {} (minimum {}, only the rack's keys: {}) |",
            k.moved, k.minimum, if k.only_rack_keys { "yes" } else { "no" }
        );
    }
    if let Some(b) = r.rss_per_node {
        println!("| 7. memory: RSS growth while forming / N | {:.0} KiB per node ({:.0} B per member entry) |", b / 1024.0, b / n as f64);
    }
    for note in &r.notes {
        println!("| note | {note} |");
    }
}

fn print_memory(reports: &[Report]) {
    let m_sim = size_of::<foca::Member<SimId>>();
    let m_real = size_of::<foca::Member<cairn_membership::NodeIdentity>>();
    // Heap strings of a NodeIdentity: id, peer, zone, rack of ~20 bytes, each a 32-byte malloc block.
    let strings = 4 * 32;
    // `heard` (and, for down members, `down_since`): SocketAddr -> u64 in a hashbrown map at ~7/8 load.
    let heard = (size_of::<std::net::SocketAddr>() + 8 + 1) * 8 / 7;
    let per_entry_real = m_real + strings + heard;
    println!("\n### Memory per node for the member list\n");
    println!("| | bytes |");
    println!("|---|---|");
    println!("| foca::Member<SimId> (simulated identity) | {m_sim} |");
    println!("| foca::Member<NodeIdentity> (real identity) | {m_real} |");
    println!("| + 4 heap strings of ~20 B (id, peer, zone, rack) | {strings} |");
    println!("| + `heard` map entry (SocketAddr → u64) | {heard} |");
    println!("| real identity, per member entry (computed) | {per_entry_real} |");
    for r in reports {
        if let Some(b) = r.rss_per_node {
            println!("| measured at N={}: RSS growth / N / N (simulated identity, everything) | {:.0} |", r.n, b / r.n as f64);
        }
    }
    let ext = 100_000f64 * per_entry_real as f64;
    println!(
        "| EXTRAPOLATED, not simulated: one node's member list at 100,000 members, real identity | {:.1} MiB |",
        ext / (1024.0 * 1024.0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 nodes form, one crashes under 1% loss: every live node sees it down within 15 simulated
    /// seconds and no live node is declared down.
    #[test]
    fn a_crash_is_seen_by_all_within_15_s_under_loss_without_false_downs() {
        let n = 50u32;
        let mut sim = Sim::new(n as usize, NetConfig { loss: 0.01, ..Default::default() }, Config::default(), 7);
        for i in 0..n {
            sim.run_until(u64::from(i) * 40_000);
            sim.start(SimId::new(i, 0), None);
        }
        let formed = run_until_done(&mut sim, "form", 60_000_000, Duration::from_secs(60), |s| (s.converged(n as usize - 1).0, String::new()));
        assert!(formed.is_some(), "50 nodes did not form in 60 s");
        sim.run_until(sim.now + 10_000_000);
        sim.false_downs = 0;
        let victim = 17;
        sim.watch(&[victim]);
        sim.crash(victim);
        sim.run_until(sim.now + 15_000_000);
        let (times, missing) = sim.watch_result();
        assert_eq!(missing, 0, "live nodes that did not see the crash within 15 s (seen: {times:?})");
        assert!(times.iter().all(|&t| t <= 15.0));
        assert!(check_down_in_maps(&sim, &[victim]));
        // And longer under loss: nobody alive is declared down.
        sim.run_until(sim.now + 30_000_000);
        assert_eq!(sim.false_downs, 0, "live nodes declared down: {:?}", sim.falsely_downed);
    }
}

