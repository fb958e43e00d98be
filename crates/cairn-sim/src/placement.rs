//! `cairn-sim placement`: cairn's `Placement` against a Ketama ring (200 virtual nodes per node)
//! and a Maglev table, at 1,000 to 100,000 nodes in three zones with racks of 40, with equal weights
//! (or, with `--weights mixed`, weights from 50 to 200: Ketama and Maglev ignore them).
//!
//! For each structure it reports the build time, the time of a 3-owner lookup (averaged over many
//! random keys, structure already built), the structure's heap bytes, the chunk-count imbalance of
//! first owners (max/mean) and how many chunks move when one node goes down, relative to the
//! minimum (the chunks that node owned). Ketama and Maglev lose the node (rebuilt without it);
//! cairn marks it down in the map. Everything runs on one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cairn_core::cluster::{ClusterMap, NodeEntry, NodeState};
use cairn_core::placement::Placement;

use crate::reference::{Ketama, Maglev, prime_at_least};

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
const RACK_SIZE: usize = 40;
const REPLICAS: usize = 3;
const KETAMA_VNODES: u64 = 200;
/// Chunks per node for the imbalance and movement columns.
const CHUNKS_PER_NODE: u64 = 1_000;
/// At 100,000 nodes, 1,000 chunks per node would be 100M lookups per pass: use fewer.
const CHUNKS_PER_NODE_LARGE: u64 = 100;
const LARGE_CLUSTER: usize = 100_000;
/// Maglev's table is the smallest prime ≥ this many entries per node (the paper's M ≥ 100·N), at
/// every size: it builds in under 2 s at 100,000 nodes, so there is no need to shrink it there.
const MAGLEV_ENTRIES_PER_NODE: u64 = 100;
const LOOKUP_SEED: u64 = 0x6c6f_6f6b_7570_0001;
const CHUNK_SEED: u64 = 0x6368_756e_6b73_0001;

// Targets at 100,000 nodes.
const TARGET_LOOKUP_NS: f64 = 2_000.0;
const TARGET_MEMORY_BYTES: usize = 10_000_000;

pub struct Options {
    sizes: Vec<usize>,
    lookups: usize,
    /// Node weights from 50 to 200 instead of all 100.
    mixed_weights: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options { sizes: vec![1_000, 10_000, 100_000], lookups: 500_000, mixed_weights: false };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--sizes" => {
                    options.sizes = value
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|e| format!("bad size {s:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                }
                "--weights" => {
                    options.mixed_weights = match value.as_str() {
                        "equal" => false,
                        "mixed" => true,
                        _ => return Err(format!("--weights is equal or mixed, not {value:?}")),
                    }
                }
                "--lookups" => options.lookups = value.parse().map_err(|e| format!("bad --lookups {value:?}: {e}"))?,
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        if options.sizes.iter().any(|&n| n < REPLICAS + 1) {
            return Err(format!("every size must be at least {}", REPLICAS + 1));
        }
        Ok(options)
    }
}

/// What the benchmark needs from a placement structure.
trait Scheme {
    /// The first `r` owners of `key`, into `out`.
    fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>);
    /// Heap bytes of the lookup structure.
    fn memory_bytes(&self) -> usize;
    /// Heap bytes with everything the structure owns, if that is more.
    fn total_memory_bytes(&self) -> Option<usize> {
        None
    }
    /// Whether it gives nodes shares proportional to their weights (else equal shares).
    fn weighted(&self) -> bool {
        false
    }
}

impl Scheme for Placement {
    fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>) {
        self.ranking(key, r, out);
    }
    fn memory_bytes(&self) -> usize {
        self.lookup_memory_bytes()
    }
    fn total_memory_bytes(&self) -> Option<usize> {
        Some(Placement::memory_bytes(self))
    }
    fn weighted(&self) -> bool {
        true
    }
}

impl Scheme for Ketama {
    fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>) {
        Ketama::owners(self, key, r, out);
    }
    fn memory_bytes(&self) -> usize {
        Ketama::memory_bytes(self)
    }
}

impl Scheme for Maglev {
    fn owners(&self, key: u64, r: usize, out: &mut Vec<usize>) {
        Maglev::owners(self, key, r, out);
    }
    fn memory_bytes(&self) -> usize {
        Maglev::memory_bytes(self)
    }
}

struct Row {
    nodes: usize,
    name: String,
    build: Duration,
    lookup_ns: f64,
    memory: usize,
    memory_total: Option<usize>,
    chunks_per_node: u64,
    max_over_mean: f64,
    moved: u64,
    minimum: u64,
    /// Every moved chunk was on the lost node.
    only_lost_node: bool,
}

pub fn run(options: &Options) {
    let started = Instant::now();
    let cpu_before = CpuSample::now();
    let lookup_keys: Vec<u64> = (0..options.lookups as u64).map(|i| splitmix64(LOOKUP_SEED.wrapping_add(i))).collect();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &n in &options.sizes {
        let map = cluster_map(n, options.mixed_weights);
        let chunks_per_node = if n >= LARGE_CLUSTER { CHUNKS_PER_NODE_LARGE } else { CHUNKS_PER_NODE };
        // Node indices are positions in the id-sorted node list, for all three structures.
        let mut sorted = map.nodes.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let weights: Vec<u32> = sorted.iter().map(|e| e.weight).collect();
        let setup = Setup { nodes: n, chunks_per_node, lost: n / 2, lookup_keys: &lookup_keys, weights: &weights };
        let ids: Vec<(u32, &str)> = sorted.iter().enumerate().map(|(i, e)| (i as u32, e.id.as_str())).collect();
        let without_lost = |lost: Option<usize>| ids.iter().copied().filter(move |&(i, _)| Some(i as usize) != lost);

        rows.push(setup.measure("cairn (straw2, zone/group/rack/node)", |lost| {
            let mut map = map.clone();
            if let Some(lost) = lost {
                map.nodes.iter_mut().filter(|e| e.id == sorted[lost].id).for_each(|e| e.state = NodeState::Down);
            }
            Placement::new(&map)
        }));
        eprintln!("[{:>6.1} s] {n} nodes: cairn done", started.elapsed().as_secs_f64());

        let name = format!("Ketama ring, {KETAMA_VNODES} vnodes/node");
        rows.push(setup.measure(&name, |lost| Ketama::new(without_lost(lost), KETAMA_VNODES)));
        eprintln!("[{:>6.1} s] {n} nodes: Ketama done", started.elapsed().as_secs_f64());

        let per_node = MAGLEV_ENTRIES_PER_NODE;
        let size = prime_at_least(per_node * n as u64);
        let name = format!("Maglev, M = {} ({per_node}×N)", thousands(size));
        rows.push(setup.measure(&name, |lost| Maglev::new(without_lost(lost), size)));
        eprintln!("[{:>6.1} s] {n} nodes: Maglev done", started.elapsed().as_secs_f64());

        if chunks_per_node != CHUNKS_PER_NODE {
            notes.push(format!(
                "At {} nodes the chunks/node, max/mean and moved columns use {chunks_per_node} chunks per node \
                 ({} lookups per pass) instead of {}: 1,000 per node would be 100M lookups per pass. With fewer \
                 chunks per node max/mean is larger for every structure (sampling noise: a Poisson count of mean \
                 {chunks_per_node} has a standard deviation of {:.0}%).",
                thousands(n as u64),
                thousands(chunks_per_node * n as u64),
                thousands(CHUNKS_PER_NODE),
                100.0 / (chunks_per_node as f64).sqrt(),
            ));
        }
    }

    print_tables(&rows, options, &notes);
    println!();
    let wall = started.elapsed().as_secs_f64();
    print!("Wall time: {wall:.0} s, on one thread.");
    if let (Some(a), Some(b)) = (cpu_before, CpuSample::now()) {
        let others = (b.busy - a.busy).saturating_sub(b.own - a.own) as f64 / CpuSample::TICKS_PER_SECOND / wall;
        print!(" Other processes used about {others:.2} cores during the run (0 = the machine was otherwise idle).");
    }
    println!();
}

/// CPU time from `/proc` (Linux only), to tell whether the machine was busy during the run.
#[derive(Clone, Copy)]
struct CpuSample {
    /// Busy ticks of the whole machine.
    busy: u64,
    /// Ticks of this process.
    own: u64,
}

impl CpuSample {
    /// `USER_HZ`, 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;

    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|t| t.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        let busy = ticks.iter().take(8).enumerate().filter(|&(i, _)| i != 3 && i != 4).map(|(_, t)| t).sum();
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After the command name (which may hold spaces): utime and stime are the 12th and 13th.
        let fields: Vec<&str> = own_stat.rsplit_once(')')?.1.split_whitespace().collect();
        let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(CpuSample { busy, own })
    }
}

struct Setup<'a> {
    nodes: usize,
    chunks_per_node: u64,
    /// Index (in id order) of the node that goes down.
    lost: usize,
    lookup_keys: &'a [u64],
    /// Node weights, in id order.
    weights: &'a [u32],
}

impl Setup<'_> {
    /// Builds the structure (timed), times 3-owner lookups, counts first owners of the chunks, then
    /// builds it again without the lost node (`build(Some(lost))`) and counts the chunks that moved.
    fn measure<S: Scheme>(&self, name: &str, build: impl Fn(Option<usize>) -> S) -> Row {
        let t = Instant::now();
        let structure = build(None);
        let build_time = t.elapsed();
        let mut out = Vec::with_capacity(REPLICAS);
        let lookup_ns = time_per_key(self.lookup_keys, |k| {
            structure.owners(k, REPLICAS, &mut out);
            black_box(&out);
        });
        let chunks = self.chunks_per_node * self.nodes as u64;
        let before = first_owners(&structure, chunks, &mut out);
        let (memory, memory_total) = (structure.memory_bytes(), structure.total_memory_bytes());
        let weighted = structure.weighted();
        drop(structure);
        let after = first_owners(&build(Some(self.lost)), chunks, &mut out);

        let mut counts = vec![0u64; self.nodes];
        for &o in &before {
            counts[o as usize] += 1;
        }
        // The most loaded node relative to its share: by weight if the structure honours weights.
        let total_weight: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let max_over_mean = counts
            .iter()
            .zip(self.weights)
            .map(|(&count, &w)| {
                let share = if weighted { f64::from(w) / total_weight as f64 } else { 1.0 / self.nodes as f64 };
                count as f64 / (chunks as f64 * share)
            })
            .fold(0.0, f64::max);
        let lost = self.lost as u32;
        let minimum = before.iter().filter(|&&o| o == lost).count() as u64;
        let mut moved = 0;
        let mut only_lost_node = true;
        for (&b, &a) in before.iter().zip(&after) {
            if a != b {
                moved += 1;
                only_lost_node &= b == lost;
            }
        }
        Row {
            nodes: self.nodes,
            name: name.to_string(),
            build: build_time,
            lookup_ns,
            memory,
            memory_total,
            chunks_per_node: self.chunks_per_node,
            max_over_mean,
            moved,
            minimum,
            only_lost_node,
        }
    }
}

fn print_tables(rows: &[Row], options: &Options, notes: &[String]) {
    println!(
        "## Placement: cairn vs Ketama vs Maglev ({REPLICAS} owners, 3 zones, racks of {RACK_SIZE}, {})",
        if options.mixed_weights { "weights 50 to 200 (cairn only honours them)" } else { "equal weights" }
    );
    println!();
    println!(
        "Lookup: mean over {} random keys, {REPLICAS} owners each, structure already built. Chunks: first owner \
         of random chunk keys; max/mean is the most loaded node's count over its share (its weight's share \
         for cairn, an equal share for Ketama and Maglev, which have no weights). Moved: chunks whose first \
         owner changed when node N/2 went down (cairn: marked down; Ketama, Maglev: removed), over the \
         minimum (the chunks it owned).",
        thousands(options.lookups as u64)
    );
    println!();
    println!(
        "| nodes | structure | build | lookup, {REPLICAS} owners | memory | chunks/node | max/mean | moved / minimum |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let memory = match r.memory_total {
            Some(total) => format!("{} (+ node list: {})", megabytes(r.memory), megabytes(total)),
            None => megabytes(r.memory),
        };
        println!(
            "| {} | {} | {} | {:.0} ns | {} | {} | {:.3} | {} / {} = {:.2}×{} |",
            thousands(r.nodes as u64),
            r.name,
            duration(r.build),
            r.lookup_ns,
            memory,
            thousands(r.chunks_per_node),
            r.max_over_mean,
            thousands(r.moved),
            thousands(r.minimum),
            r.moved as f64 / r.minimum.max(1) as f64,
            if r.only_lost_node { "" } else { " (some not from the lost node)" },
        );
    }
    println!();
    for note in notes {
        println!("{note}");
    }

    let Some(cairn) = rows.iter().filter(|r| r.name.starts_with("cairn")).max_by_key(|r| r.nodes) else {
        return;
    };
    println!();
    println!("### Targets for cairn at {} nodes", thousands(cairn.nodes as u64));
    println!();
    if cairn.nodes != LARGE_CLUSTER {
        println!(
            "(The targets are set at {} nodes; this run's largest size is smaller.)",
            thousands(LARGE_CLUSTER as u64)
        );
        println!();
    }
    println!("| target | measured | result |");
    println!("|---|---|---|");
    let met = |ok: bool| if ok { "met" } else { "not met" };
    println!(
        "| lookup of {REPLICAS} owners ≤ 2 µs | {:.0} ns | {} |",
        cairn.lookup_ns,
        met(cairn.lookup_ns <= TARGET_LOOKUP_NS)
    );
    let total = cairn.memory_total.unwrap_or(cairn.memory);
    println!(
        "| structure ≤ 10 MB | {} lookup structure; {} with the owned copy of the node list | {} (lookup structure){} |",
        megabytes(cairn.memory),
        megabytes(total),
        met(cairn.memory <= TARGET_MEMORY_BYTES),
        if total > TARGET_MEMORY_BYTES { "; not met with the node list" } else { "" },
    );
    let exact = cairn.moved == cairn.minimum && cairn.only_lost_node;
    println!(
        "| movement when a node goes down = 1.00× the minimum | {} / {} = {:.2}× | {} |",
        thousands(cairn.moved),
        thousands(cairn.minimum),
        cairn.moved as f64 / cairn.minimum.max(1) as f64,
        met(exact)
    );
}

/// `n` nodes, split evenly over three zones, filled into racks of 40 in id order; weight 100, or
/// 50 to 200 spread pseudo-randomly.
pub(crate) fn cluster_map(n: usize, mixed_weights: bool) -> ClusterMap {
    let mut nodes = Vec::with_capacity(n);
    for (z, zone) in ZONES.iter().enumerate() {
        let in_zone = n / ZONES.len() + usize::from(z < n % ZONES.len());
        for j in 0..in_zone {
            let i = nodes.len();
            nodes.push(NodeEntry {
                id: format!("node-{i:06}"),
                addr: format!("10.{}.{}.{}:9100", z, (j / 250) % 250, j % 250 + 1),
                zone: zone.to_string(),
                rack: format!("{zone}-rack-{:04}", j / RACK_SIZE),
                weight: if mixed_weights { 50 + (i as u32 * 7_919) % 151 } else { 100 },
                state: NodeState::Up,
            });
        }
    }
    ClusterMap { version: 1, nodes }
}

fn time_per_key(keys: &[u64], mut lookup: impl FnMut(u64)) -> f64 {
    // Warm up caches and branch predictors on a tenth of the keys.
    for &k in &keys[..keys.len() / 10] {
        lookup(black_box(k));
    }
    let t = Instant::now();
    for &k in keys {
        lookup(black_box(k));
    }
    t.elapsed().as_nanos() as f64 / keys.len() as f64
}

fn first_owners(structure: &impl Scheme, chunks: u64, out: &mut Vec<usize>) -> Vec<u32> {
    (0..chunks)
        .map(|i| {
            structure.owners(splitmix64(CHUNK_SEED.wrapping_add(i)), 1, out);
            out.first().map_or(u32::MAX, |&o| o as u32)
        })
        .collect()
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn megabytes(bytes: usize) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn duration(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
