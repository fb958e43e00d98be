//! Gossip membership in two levels, so that nothing a node does in steady state grows with the
//! cluster:
//!
//! - **Cells** (a zone, or a group of racks; at most a few thousand nodes) run SWIM with
//!   suspicion and refutation (the `foca` crate, which does no I/O) among their own members only:
//!   each node probes one member of its cell per period, whatever the cluster's size.
//! - **The cluster-wide table** ([`table`]) holds one record per member (alive or dead, with its
//!   generation). What a cell's SWIM concludes (up, dead, restarted, left) becomes a record that
//!   spreads to every node by rumor: each node that learns something new pushes it to a few random
//!   members of the whole cluster for a bounded number of rounds (O(log N) rounds to reach all).
//!   Anti-entropy repairs what rumors missed: every few seconds a node sends one digest per cell
//!   to a random member, which answers with the bucket digests of cells that differ; only
//!   differing buckets' records are exchanged.
//!
//! A joining node says hello to its seeds, which answer with its cell's members; the driver
//! fetches the whole table once over the peer transport ([`Membership::snapshot`],
//! [`Membership::learn`]) when the cluster is large. The cluster map is derived from the table
//! ([`map`]).
//!
//! Packets are sealed with a key derived from the cluster secret ([`wire`]).
//!
//! [`Membership`] is a state machine: the caller feeds it packets, foca's timer events, a periodic
//! [`Membership::tick`] and the time, and takes out packets to send, timers to arm and changes.
//! The node drives it over UDP with tokio; `cairn-sim membership` drives the same code over a
//! simulated network.

pub mod identity;
pub mod map;
pub mod table;
pub mod wire;

use std::collections::HashMap;
use std::hash::Hash;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use cairn_core::cluster::ClusterMap;
use foca::{Foca, Notification, PostcardCodec, State, Timer};
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub use identity::{Member, NodeIdentity, cell_key};
pub use map::{MapRules, Standing};
pub use table::{Record, Status, Table};
pub use wire::{Key, Reject};

/// Protocol timing and bounds. The defaults detect a crashed node in about 10 s and keep a node
/// that stalls for 5 s (a long GC pause, a frozen VM) from being declared dead: a suspect has
/// `suspect_to_down_after` to refute.
#[derive(Clone, Debug)]
pub struct Config {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down_after: Duration,
    pub indirect_probes: usize,
    /// How often pending cell updates and cluster-wide rumors are pushed.
    pub gossip_every: Duration,
    /// Members each push goes to.
    pub gossip_fanout: usize,
    /// Pushes of each cell update (foca's piggyback count).
    pub max_transmissions: u8,
    /// Pushes of each cluster-wide rumor.
    pub rumor_transmissions: u8,
    /// Packets of rumors pushed per gossip round at most, each to `gossip_fanout` members: one
    /// while a node has little news, more while a burst (many joins at once) drains, so that
    /// news does not wait in the backlog for tens of rounds.
    pub rumor_packets: usize,
    /// How often a node compares its table with a random member's.
    pub sync_every: Duration,
    /// Dead records are forgotten this long after `remove_after` (kept so that no peer brings
    /// them back as news).
    pub tombstone_for: Duration,
    /// How often a node probes a random member outside its cell, so that a cell whose members
    /// all die at once (a zone outage) is still declared dead by the others.
    pub cross_probe_every: Duration,
    pub max_packet: usize,
    pub map: MapRules,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(1000),
            probe_rtt: Duration::from_millis(400),
            suspect_to_down_after: Duration::from_secs(8),
            indirect_probes: 3,
            gossip_every: Duration::from_millis(200),
            gossip_fanout: 2,
            max_transmissions: 8,
            rumor_transmissions: 8,
            rumor_packets: 4,
            sync_every: Duration::from_secs(5),
            tombstone_for: Duration::from_secs(3600),
            cross_probe_every: Duration::from_secs(5),
            max_packet: 1400,
            map: MapRules::default(),
        }
    }
}

/// Bytes of a SWIM packet before foca's payload: kind and cell.
const SWIM_HEADER: usize = 1 + 8;
const KIND_SWIM: u8 = 0;
const KIND_TABLE: u8 = 1;
/// Rumors kept waiting at most; beyond that the oldest are dropped (anti-entropy recovers them).
const MAX_BACKLOG: usize = 20_000;
/// A record learned through anti-entropy is passed on as a rumor only when this recent.
const FRESH_MS: u64 = 30_000;
/// Cells and buckets repaired per anti-entropy message.
const REPAIR_CELLS: usize = 4;
const REPAIR_BUCKETS: usize = 4;
/// Records of its cell sent to a node that says hello, at most.
const HELLO_RECORDS: usize = 4096;
/// Largest member table accepted from a peer, decompressed (about a million members).
const MAX_SNAPSHOT: usize = 256 << 20;
/// Dead members remembered for contact after a partition heals.
const MAX_DEAD_CONTACTS: usize = 1024;
/// Members whose last packet time is remembered.
const MAX_HEARD: usize = 8192;
/// Members of a suspect's failure domain probed at once, at most (a rack is ~40).
const MAX_DOMAIN_PROBES: usize = 64;
/// Failure domains remembered as checked recently.
const MAX_DOMAINS_CHECKED: usize = 256;

impl Config {
    fn foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions.max(1)).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.map.remove_after + Duration::from_secs(60)),
            max_packet_size: nz(self.max_packet.saturating_sub(wire::HEADER + SWIM_HEADER)),
            // Off: foca 2.0.0 also sends its "you are down" notice when a suspicion timer expires
            // for a member that has refuted meanwhile (the notice is sent whatever the outcome),
            // which made a node that froze for less than the suspicion timeout rejoin for
            // nothing. A member really declared dead learns it from the table (a dead record
            // about itself) or from foca's piggybacked updates, and rejoins then.
            notify_down_members: false,
            periodic_announce: Some(foca::PeriodicParams { frequency: Duration::from_secs(30), num_members: nz(1) }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: nz(2),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_every,
                num_members: nz(self.gossip_fanout + 1),
            }),
        }
    }
}

/// A membership change, as this node learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T> {
    Up(T),
    Down(T),
    /// The same node under a new identity (restart or rejoin).
    Renamed(T, T),
    /// This node was declared dead and came back under a new generation.
    Rejoined(T),
}

/// Counters since start.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets dropped: not sealed with the cluster secret, stale, malformed, or SWIM of another cell.
    pub rejected: u64,
    /// This node's probes that failed (it then suspects the member).
    pub suspicions: u64,
    /// Members this node saw declared dead or leave.
    pub confirmations: u64,
    /// Suspicions of this node it refuted (its incarnation went up).
    pub refutations: u64,
    /// Records sent in anti-entropy repairs.
    pub repaired_records: u64,
    /// Membership changes this node's SWIM reported (members up, down, renamed).
    pub changes: u64,
}

/// One member as this node sees it.
#[derive(Clone, Debug)]
pub struct MemberView<T> {
    pub identity: T,
    pub standing: Standing,
    /// Cell members: foca's incarnation (0 for other cells).
    pub incarnation: u16,
    /// Unix milliseconds this node last received a packet from it (0: not recently).
    pub heard_ms: u64,
}

/// Work for the driver: packets to send (already sealed), timers to arm, changes to report.
pub struct Outbox<T> {
    pub sends: Vec<(T, Vec<u8>)>,
    pub timers: Vec<(Duration, Timer<T>)>,
    pub changes: Vec<Change<T>>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self { sends: Vec::new(), timers: Vec::new(), changes: Vec::new() }
    }
}

/// Cluster-wide messages.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Member")]
enum TableMsg<T> {
    /// A node joining: answered with its cell's records and a digest offer.
    Hello {
        from: T,
    },
    Rumors {
        records: Vec<Record<T>>,
    },
    /// Anti-entropy offer: one digest per cell.
    Digests {
        from: T,
        cells: Vec<(u64, u64)>,
    },
    /// The bucket digests of a cell whose digest differed.
    Buckets {
        from: T,
        cell: u64,
        digests: Vec<u64>,
    },
    /// A bucket's records; `want`: send yours of it back.
    Records {
        from: T,
        cell: u64,
        bucket: u16,
        records: Vec<Record<T>>,
        want: bool,
    },
    /// Cross-cell liveness probe, answered with `Ack` to `from`.
    Ping {
        from: T,
        nonce: u64,
    },
    Ack {
        from: T,
        nonce: u64,
    },
    /// Asks a member of the sender's cell to ping `target` on the sender's behalf.
    PingReq {
        from: T,
        target: T,
        nonce: u64,
    },
}

pub struct Membership<T: Member>
where
    T::Addr: Hash + Eq + Clone,
{
    foca: Foca<T, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    key: Key,
    cfg: Config,
    rt: Rt<T>,
    rng: StdRng,
    stats: Stats,
    table: Table<T>,
    cell: u64,
    /// Rumors to push and the pushes each has left.
    backlog: std::collections::VecDeque<(Record<T>, u8)>,
    next_forget_ms: u64,
    heard: HashMap<T::Addr, u64>,
    own_incarnation: u16,
    next_sync_ms: u64,
    next_cross_ms: u64,
    /// The cross-cell probe waiting for its ack: target, nonce, when sent.
    cross_probe: Option<(T, u64, u64)>,
    /// Members outside this cell, or probed for their failure domain, whose probes failed:
    /// since when (re-probed every tick).
    cross_suspects: HashMap<String, (T, u64, u64)>,
    /// Members of a suspect's failure domain probed and not answered yet: when sent.
    domain_probes: HashMap<String, (T, u64)>,
    /// Failure domains probed recently: until when they are not probed again.
    domains_checked: HashMap<u64, u64>,
    /// Members recently declared dead (not left): contacted now and then, so that the two sides
    /// of a healed partition find each other again.
    dead: Vec<T>,
    /// Cell members this node's SWIM holds as suspect, and since when (checked every second).
    suspect_since: HashMap<T::Addr, u64>,
    next_suspect_check_ms: u64,
    next_dead_ms: u64,
    /// Bumped whenever the table changed (the map may have).
    epoch: u64,
    /// Packets to seal and send, gathered during one call.
    pending: Vec<(T, Vec<u8>)>,
}

/// Collects what foca asks for during one call.
struct Rt<T> {
    sends: Vec<(T, Vec<u8>)>,
    timers: Vec<(Duration, Timer<T>)>,
    notes: Vec<Note<T>>,
}

enum Note<T> {
    Up(T),
    Down(T),
    Renamed(T, T),
    Rejoined(T),
    Heard(T),
    Sent(u16),
    ProbeFailed(T),
}

impl<T: Member> foca::Runtime<T> for Rt<T> {
    fn notify(&mut self, n: Notification<'_, T>) {
        let note = match n {
            Notification::MemberUp(m) => Note::Up(m.clone()),
            Notification::MemberDown(m) => Note::Down(m.clone()),
            Notification::Rename(a, b) => Note::Renamed(a.clone(), b.clone()),
            Notification::Rejoin(m) => Note::Rejoined(m.clone()),
            Notification::DataReceived(h) => Note::Heard(h.src.clone()),
            Notification::DataSent(h) => Note::Sent(h.src_incarnation),
            Notification::ProbeFailed(_, m) => Note::ProbeFailed(m.clone()),
            Notification::Active | Notification::Idle | Notification::Defunct => return,
        };
        self.notes.push(note);
    }

    fn send_to(&mut self, to: T, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<T>, after: Duration) {
        self.timers.push((after, event));
    }
}

impl<T: Member> Membership<T>
where
    T::Addr: Hash + Eq + Clone,
{
    pub fn new(me: T, cfg: Config, secret: &[u8], rng_seed: u64) -> Self {
        let cell = me.cell();
        let foca = Foca::new(me.clone(), cfg.foca(), StdRng::seed_from_u64(rng_seed), PostcardCodec);
        let mut m = Self {
            foca,
            key: Key::from_secret(secret),
            cfg,
            rt: Rt { sends: Vec::new(), timers: Vec::new(), notes: Vec::new() },
            rng: StdRng::seed_from_u64(rng_seed ^ 0x9e37_79b9_7f4a_7c15),
            stats: Stats::default(),
            table: Table::default(),
            cell,
            backlog: std::collections::VecDeque::new(),
            next_forget_ms: 0,
            heard: HashMap::new(),
            own_incarnation: 0,
            next_sync_ms: 0,
            next_cross_ms: 0,
            cross_probe: None,
            cross_suspects: HashMap::new(),
            domain_probes: HashMap::new(),
            domains_checked: HashMap::new(),
            dead: Vec::new(),
            suspect_since: HashMap::new(),
            next_suspect_check_ms: 0,
            next_dead_ms: 0,
            epoch: 1,
            pending: Vec::new(),
        };
        m.table.merge(&Record { member: me, status: Status::Alive, changed_ms: 0 });
        m
    }

    pub fn identity(&self) -> &T {
        self.foca.identity()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn table(&self) -> &Table<T> {
        &self.table
    }

    /// Sim hook: lets the simulator share identical buckets among its nodes.
    pub fn table_mut(&mut self) -> &mut Table<T> {
        &mut self.table
    }

    /// Changes whenever the table changed (time-based removals and ramps are the caller's to
    /// re-derive periodically).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Alive members known cluster-wide, this node excluded.
    pub fn active(&self) -> usize {
        self.table.iter().filter(|r| r.status == Status::Alive && !self.is_me(&r.member)).count()
    }

    /// Alive members of this node's cell as its SWIM sees them.
    pub fn cell_active(&self) -> usize {
        self.foca.num_members()
    }

    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn is_me(&self, m: &T) -> bool {
        m.same_node(self.foca.identity()) && m.cell() == self.cell
    }

    /// Says hello to the members at `seeds` (known by address only).
    pub fn join(&mut self, seeds: &[T::Addr], now_ms: u64, out: &mut Outbox<T>) {
        let me = self.foca.identity().clone();
        for s in seeds {
            if *s != me.addr() {
                self.send_table(T::placeholder(s.clone()), &TableMsg::Hello { from: me.clone() });
            }
        }
        self.flush(now_ms, out);
    }

    /// Handles one packet off the wire.
    pub fn handle_packet(&mut self, packet: &[u8], now_ms: u64, out: &mut Outbox<T>) -> Result<(), Reject> {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        let payload = match self.key.open(now_ms, packet) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected += 1;
                return Err(e);
            }
        };
        let ok = match payload.split_first() {
            Some((&KIND_SWIM, rest)) if rest.len() >= 8 => {
                let mut cell = [0u8; 8];
                cell.copy_from_slice(&rest[..8]);
                u64::from_le_bytes(cell) == self.cell && self.foca.handle_data(&rest[8..], &mut self.rt).is_ok()
            }
            Some((&KIND_TABLE, rest)) => match postcard::from_bytes::<TableMsg<T>>(rest) {
                Ok(msg) => {
                    self.handle_table(msg, now_ms);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            self.stats.rejected += 1;
        }
        self.flush(now_ms, out);
        if ok { Ok(()) } else { Err(Reject::Malformed) }
    }

    pub fn handle_timer(&mut self, timer: Timer<T>, now_ms: u64, out: &mut Outbox<T>) {
        let _ = self.foca.handle_timer(timer, &mut self.rt);
        self.flush(now_ms, out);
    }

    /// Periodic work (every `gossip_every`): pushes rumors, starts anti-entropy when due, probes
    /// a member of another cell.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outbox<T>) {
        self.cross_cell(now_ms);
        if now_ms >= self.next_suspect_check_ms {
            self.next_suspect_check_ms = now_ms + 1000;
            self.clear_stale_suspicions(now_ms);
        }
        if !self.backlog.is_empty() {
            self.push_rumors();
        }
        if now_ms >= self.next_dead_ms {
            self.next_dead_ms = now_ms + 2 * self.cfg.sync_every.as_millis() as u64;
            let remove_ms = self.cfg.map.remove_after.as_millis() as u64;
            let table = &self.table;
            self.dead.retain(|m| {
                table.get(m.cell(), m.node_id()).is_some_and(|r| {
                    r.status == Status::Dead && r.member == *m && now_ms.saturating_sub(r.changed_ms) < remove_ms
                })
            });
            if !self.dead.is_empty() {
                let m = self.dead[self.rng.random_range(0..self.dead.len())].clone();
                self.send_digests(m);
            }
        }
        if now_ms >= self.next_sync_ms {
            let jitter = self.rng.random_range(0..=self.cfg.sync_every.as_millis() as u64 / 4);
            self.next_sync_ms = now_ms + self.cfg.sync_every.as_millis() as u64 + jitter;
            if let Some(peer) = self.random_member() {
                self.send_digests(peer);
            }
        }
        if now_ms >= self.next_forget_ms {
            self.next_forget_ms = now_ms + 60_000;
            let forget = self.cfg.map.remove_after + self.cfg.tombstone_for;
            if self.table.forget_dead(now_ms.saturating_sub(forget.as_millis() as u64)) > 0 {
                self.epoch += 1;
            }
        }
        self.flush(now_ms, out);
    }

    /// Leaves on purpose: the others remove this node from their maps at once, instead of
    /// keeping it `down` for `remove_after`.
    pub fn leave(&mut self, now_ms: u64, out: &mut Outbox<T>) {
        let leaving = self.foca.identity().as_leaving();
        let _ = self.foca.change_identity(leaving.clone(), &mut self.rt);
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.learn_record(Record { member: leaving, status: Status::Dead, changed_ms: now_ms }, true);
        // Push the news at once, beyond the cell too.
        self.push_rumors();
        self.push_rumors();
        self.flush(now_ms, out);
    }

    /// The whole table, for a joining node to learn at once (over the peer transport).
    pub fn snapshot(&self) -> Vec<Record<T>> {
        self.table.iter().cloned().collect()
    }

    /// Records learned out of band (a snapshot from a peer when joining a large cluster).
    pub fn learn(&mut self, records: Vec<Record<T>>, now_ms: u64, out: &mut Outbox<T>) {
        for r in records {
            self.learn_hearsay(r, false, now_ms);
        }
        // This node's SWIM probes its cell's members, whether or not the table knew them.
        let me = self.foca.identity().addr();
        let cell: Vec<foca::Member<T>> = self
            .table
            .cell_records(self.cell)
            .filter(|r| r.status == Status::Alive && r.member.addr() != me)
            .map(|r| foca::Member::alive(r.member.clone()))
            .collect();
        let _ = self.foca.apply_many(cell.into_iter(), false, &mut self.rt);
        self.flush(now_ms, out);
    }

    /// [`Membership::snapshot`], encoded (postcard) and compressed (LZ4; zones, racks and cells
    /// repeat from record to record).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        lz4_flex::compress_prepend_size(&postcard::to_allocvec(&self.snapshot()).unwrap_or_default())
    }

    /// [`Membership::learn`] from [`Membership::snapshot_bytes`]; the number of records.
    pub fn learn_bytes(&mut self, bytes: &[u8], now_ms: u64, out: &mut Outbox<T>) -> Result<usize, Reject> {
        // The size prefix is checked before anything is allocated for it.
        let size = bytes.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if size.is_none_or(|n| n > MAX_SNAPSHOT) {
            return Err(Reject::Malformed);
        }
        let raw = lz4_flex::decompress_size_prepended(bytes).map_err(|_| Reject::Malformed)?;
        let records: Vec<Record<T>> = postcard::from_bytes(&raw).map_err(|_| Reject::Malformed)?;
        let n = records.len();
        self.learn(records, now_ms, out);
        Ok(n)
    }

    /// Members by state, this node included: alive, suspect (in this node's cell), dead, left.
    /// Counts without copying the table.
    pub fn counts(&self) -> [u64; 4] {
        let suspects = self.foca.iter_membership_state().filter(|m| m.state() == State::Suspect).count() as u64;
        let mut c = [0u64; 4];
        for r in self.table.iter().filter(|r| !r.member.node_id().is_empty()) {
            c[match (r.status, r.member.leaving()) {
                (Status::Alive, _) => 0,
                (Status::Dead, false) => 2,
                (Status::Dead, true) => 3,
            }] += 1;
        }
        c[0] = c[0].saturating_sub(suspects);
        c[1] = suspects;
        c
    }

    pub fn members(&self) -> Vec<MemberView<T>> {
        let suspects: HashMap<&str, u16> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().node_id(), m.incarnation()))
            .collect();
        let incarnations: HashMap<&str, u16> =
            self.foca.iter_membership_state().map(|m| (m.id().node_id(), m.incarnation())).collect();
        self.table
            .iter()
            .filter(|r| !self.is_me(&r.member))
            .map(|r| MemberView {
                identity: r.member.clone(),
                standing: match r.status {
                    Status::Alive if r.member.cell() == self.cell && suspects.contains_key(r.member.node_id()) => {
                        Standing::Suspect
                    }
                    Status::Alive => Standing::Alive,
                    Status::Dead => Standing::Down { since_ms: r.changed_ms },
                },
                incarnation: if r.member.cell() == self.cell {
                    incarnations.get(r.member.node_id()).copied().unwrap_or(0)
                } else {
                    0
                },
                heard_ms: self.heard.get(&r.member.addr()).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The cluster map this view derives, this node included.
    pub fn map(&self, now_ms: u64) -> ClusterMap {
        map::derive(
            self.table.iter().map(|r| {
                let s = match r.status {
                    Status::Alive => Standing::Alive,
                    Status::Dead => Standing::Down { since_ms: r.changed_ms },
                };
                (&r.member, s)
            }),
            now_ms,
            &self.cfg.map,
        )
    }

    // -----------------------------------------------------------------------------------------

    fn random_member(&mut self) -> Option<T> {
        self.random_member_where(|_| true)
    }

    /// A random alive member other than this node that `pick` accepts (a few tries).
    fn random_member_where(&mut self, pick: impl Fn(&T) -> bool) -> Option<T> {
        let n = self.table.len();
        for _ in 0..8 {
            if n == 0 {
                return None;
            }
            let r = self.table.nth(self.rng.random_range(0..n))?;
            if r.status == Status::Alive && !self.is_me(&r.member) && pick(&r.member) {
                return Some(r.member.clone());
            }
        }
        None
    }

    /// A record another node passed on. A death is not taken on hearsay for a member this node
    /// heard from itself within the suspicion timeout: after a partition heals, the side that was
    /// cut off passes on its verdicts about the others, which would otherwise flap their owners'
    /// keys away for the moment it takes them to refute.
    fn learn_hearsay(&mut self, rec: Record<T>, spread: bool, now_ms: u64) -> bool {
        if rec.status == Status::Dead
            && !rec.member.leaving()
            && self
                .heard
                .get(&rec.member.addr())
                .is_some_and(|&h| now_ms.saturating_sub(h) < self.cfg.suspect_to_down_after.as_millis() as u64)
            && self
                .table
                .get(rec.member.cell(), rec.member.node_id())
                .is_some_and(|r| r.status == Status::Alive && r.member == rec.member)
        {
            return false;
        }
        self.learn_record(rec, spread)
    }

    /// Merges a record; on news, tells this node's SWIM (same cell) and queues it as a rumor.
    fn learn_record(&mut self, rec: Record<T>, spread: bool) -> bool {
        let me = self.foca.identity();
        if rec.member.same_node(me) && rec.member.cell() == self.cell {
            // About this node: a death at its generation or later is refuted with a new one.
            if rec.status == Status::Dead
                && !me.leaving()
                && rec.member.generation() >= me.generation()
                && let Some(renewed) = foca::Identity::renew(&rec.member)
            {
                let _ = self.foca.change_identity(renewed.clone(), &mut self.rt);
                self.rt.notes.push(Note::Rejoined(renewed));
            }
            return false;
        }
        // Most records a node is sent it holds already: nothing is copied for those.
        if self.table.merge(&rec) == table::Merged::Same {
            return false;
        }
        self.epoch += 1;
        let (cell, status) = (rec.member.cell(), rec.status);
        if cell == self.cell && status == Status::Alive && rec.member.addr() != self.foca.identity().addr() {
            let _ = self.foca.apply_many(std::iter::once(foca::Member::alive(rec.member.clone())), false, &mut self.rt);
        }
        if status == Status::Dead && !rec.member.leaving() && self.dead.len() < MAX_DEAD_CONTACTS {
            self.dead.push(rec.member.clone());
        }
        if spread {
            if self.backlog.len() >= MAX_BACKLOG {
                self.backlog.pop_front();
            }
            self.backlog.push_back((rec, self.cfg.rumor_transmissions.max(1)));
        }
        true
    }

    fn handle_table(&mut self, msg: TableMsg<T>, now_ms: u64) {
        match msg {
            TableMsg::Hello { from } => {
                self.note_heard(&from, now_ms);
                self.learn_record(Record { member: from.clone(), status: Status::Alive, changed_ms: now_ms }, true);
                let records: Vec<Record<T>> =
                    self.table.cell_records(from.cell()).take(HELLO_RECORDS).cloned().collect();
                self.send_records(&from, from.cell(), 0, records, false);
                self.send_digests(from);
            }
            TableMsg::Rumors { records } => {
                for r in records {
                    self.learn_hearsay(r, true, now_ms);
                }
            }
            TableMsg::Digests { from, cells } => {
                self.note_heard(&from, now_ms);
                let me = self.foca.identity().clone();
                let differing: Vec<u64> = cells
                    .iter()
                    .filter(|(c, d)| self.table.cell_digest(*c) != *d)
                    .map(|(c, _)| *c)
                    .take(REPAIR_CELLS)
                    .collect();
                for cell in differing {
                    let digests = self.table.bucket_digests(cell);
                    self.send_table(from.clone(), &TableMsg::Buckets { from: me.clone(), cell, digests });
                }
            }
            TableMsg::Buckets { from, cell, digests } => {
                self.note_heard(&from, now_ms);
                let mine = self.table.bucket_digests(cell);
                let differing: Vec<usize> =
                    (0..table::BUCKETS).filter(|&b| digests.get(b) != mine.get(b)).take(REPAIR_BUCKETS).collect();
                for b in differing {
                    let records = self.table.bucket(cell, b).to_vec();
                    self.send_records(&from, cell, b as u16, records, true);
                }
            }
            TableMsg::Records { from, cell, bucket, records, want } => {
                self.note_heard(&from, now_ms);
                for r in records {
                    let fresh = now_ms.saturating_sub(r.changed_ms) < FRESH_MS;
                    self.learn_hearsay(r, fresh, now_ms);
                }
                if want {
                    let mine = self.table.bucket(cell, bucket as usize).to_vec();
                    self.send_records(&from, cell, bucket, mine, false);
                }
            }
            TableMsg::Ping { from, nonce } => {
                self.note_heard(&from, now_ms);
                let me = self.foca.identity().clone();
                self.send_table(from, &TableMsg::Ack { from: me, nonce });
            }
            TableMsg::Ack { from, nonce } => {
                self.note_heard(&from, now_ms);
                if self.cross_probe.as_ref().is_some_and(|(_, n, _)| *n == nonce) {
                    self.cross_probe = None;
                }
                self.cross_suspects.remove(from.node_id());
                self.domain_probes.remove(from.node_id());
            }
            TableMsg::PingReq { from, target, nonce } => {
                if from.cell() == self.cell {
                    self.send_table(target, &TableMsg::Ping { from, nonce });
                }
            }
        }
    }

    /// Cross-cell probing: SWIM runs inside cells, so a cell that dies whole would have no one
    /// left to declare its members dead. Each node probes a random member of another cell every
    /// `cross_probe_every`; when a probe and two indirect ones (through members of this node's
    /// cell) stay unanswered for a probe period, the member is suspected, probed again every
    /// tick, and declared dead after `suspect_to_down_after` without an answer. A member wrongly
    /// declared (a partition between zones) refutes with a new generation once it hears of it.
    fn cross_cell(&mut self, now_ms: u64) {
        let me = self.foca.identity().clone();
        let period = self.cfg.probe_period.as_millis() as u64;
        if let Some((target, nonce, sent)) = self.cross_probe.clone()
            && now_ms >= sent + period
        {
            self.cross_probe = None;
            self.check_domain(&target, now_ms);
            self.cross_suspects.entry(target.node_id().to_owned()).or_insert((target, now_ms, nonce));
        }
        if !self.domain_probes.is_empty() {
            let unanswered: Vec<String> = self
                .domain_probes
                .iter()
                .filter(|(_, (_, sent))| now_ms >= sent + period)
                .map(|(k, _)| k.clone())
                .collect();
            for id in unanswered {
                if let Some((target, _)) = self.domain_probes.remove(&id) {
                    let nonce = self.rng.random::<u64>();
                    self.cross_suspects.entry(id).or_insert((target, now_ms, nonce));
                }
            }
        }
        let suspect_ms = self.cfg.suspect_to_down_after.as_millis() as u64;
        let mut declare = Vec::new();
        let suspects: Vec<(String, T, u64, u64)> =
            self.cross_suspects.iter().map(|(k, (t, since, n))| (k.clone(), t.clone(), *since, *n)).collect();
        for (id, target, since, nonce) in suspects {
            let current = self.table.get(target.cell(), &id).map(|r| (r.status, r.member.generation()));
            if current != Some((Status::Alive, target.generation())) {
                // Declared dead by its cell meanwhile, or restarted.
                self.cross_suspects.remove(&id);
                continue;
            }
            if now_ms >= since + suspect_ms {
                self.cross_suspects.remove(&id);
                declare.push(target);
                continue;
            }
            self.send_table(target, &TableMsg::Ping { from: me.clone(), nonce });
        }
        for target in declare {
            self.stats.confirmations += 1;
            self.learn_record(Record { member: target, status: Status::Dead, changed_ms: now_ms }, true);
        }
        if now_ms < self.next_cross_ms || self.cross_probe.is_some() {
            return;
        }
        let jitter = self.rng.random_range(0..=self.cfg.cross_probe_every.as_millis() as u64 / 4);
        self.next_cross_ms = now_ms + self.cfg.cross_probe_every.as_millis() as u64 + jitter;
        let mine = self.cell;
        let Some(target) = self.random_member_where(|m| m.cell() != mine) else { return };
        let nonce = self.rng.random::<u64>();
        self.send_table(target.clone(), &TableMsg::Ping { from: me.clone(), nonce });
        for _ in 0..2 {
            if let Some(relay) = self.random_member_where(|m| m.cell() == mine) {
                self.send_table(relay, &TableMsg::PingReq { from: me.clone(), target: target.clone(), nonce });
            }
        }
        self.cross_probe = Some((target, nonce, now_ms));
    }

    /// Racks fail whole (a power feed, a top-of-rack switch): when this node's probe of a member
    /// fails, it probes the members of the same failure domain at once, directly and through two
    /// members of its cell, instead of waiting for SWIM's round-robin to reach each of them (with
    /// a rack of 40 down in a cell, the last of them is first probed seconds after the first).
    /// One that does not answer within a probe period is suspected and handled like a member of
    /// another cell whose probe failed: probed again every tick, declared dead after
    /// `suspect_to_down_after` without an answer. A stalled or slow member answers meanwhile and
    /// is not declared, exactly as with SWIM's own suspicion.
    fn check_domain(&mut self, suspect: &T, now_ms: u64) {
        let Some(domain) = suspect.domain() else { return };
        if self.domains_checked.get(&domain).is_some_and(|&until| now_ms < until) {
            return;
        }
        if self.domains_checked.len() >= MAX_DOMAINS_CHECKED {
            self.domains_checked.retain(|_, until| *until > now_ms);
            if self.domains_checked.len() >= MAX_DOMAINS_CHECKED {
                return;
            }
        }
        self.domains_checked.insert(domain, now_ms + self.cfg.suspect_to_down_after.as_millis() as u64);
        let room = MAX_DOMAIN_PROBES.saturating_sub(self.domain_probes.len());
        let mates: Vec<T> = self
            .table
            .cell_records(suspect.cell())
            .filter(|r| {
                let id = r.member.node_id();
                r.status == Status::Alive
                    && r.member.domain() == Some(domain)
                    && id != suspect.node_id()
                    && !self.is_me(&r.member)
                    && !self.domain_probes.contains_key(id)
                    && !self.cross_suspects.contains_key(id)
            })
            .take(room)
            .map(|r| r.member.clone())
            .collect();
        let me = self.foca.identity().clone();
        let mine = self.cell;
        for target in mates {
            let nonce = self.rng.random::<u64>();
            self.send_table(target.clone(), &TableMsg::Ping { from: me.clone(), nonce });
            for _ in 0..2 {
                if let Some(relay) = self.random_member_where(|m| m.cell() == mine && m.node_id() != target.node_id()) {
                    self.send_table(relay, &TableMsg::PingReq { from: me.clone(), target: target.clone(), nonce });
                }
            }
            self.domain_probes.insert(target.node_id().to_owned(), (target, now_ms));
        }
    }

    /// A suspicion foca can no longer settle: when this node changes identity (it rejoined), foca
    /// drops its pending timers, so a member it suspected stays suspect with no timer to declare
    /// it dead, and the member, whose own news of it was sent out already, never refutes. A member
    /// suspected here for longer than the suspicion timeout that this node has heard from within
    /// two probe periods is alive: the suspicion is cleared here (locally: a higher incarnation of
    /// it, not spread). One that is not heard from is left to the others, whose verdict reaches
    /// this node's table.
    fn clear_stale_suspicions(&mut self, now_ms: u64) {
        let suspects: Vec<(T, u16)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.suspect_since.retain(|a, _| suspects.iter().any(|(m, _)| m.addr() == *a));
        let (stale_ms, recent_ms) = (
            (self.cfg.suspect_to_down_after + 2 * self.cfg.probe_period).as_millis() as u64,
            (2 * self.cfg.probe_period).as_millis() as u64,
        );
        for (m, incarnation) in suspects {
            let since = *self.suspect_since.entry(m.addr()).or_insert(now_ms);
            let heard = self.heard.get(&m.addr()).is_some_and(|&h| now_ms.saturating_sub(h) < recent_ms);
            if now_ms.saturating_sub(since) >= stale_ms && heard {
                self.suspect_since.remove(&m.addr());
                let alive = foca::Member::new(m, incarnation.wrapping_add(1), State::Alive);
                let _ = self.foca.apply_many(std::iter::once(alive), false, &mut self.rt);
            }
        }
    }

    /// One digest per cell (16 bytes each), in as many packets as they need.
    fn send_digests(&mut self, to: T) {
        let from = self.foca.identity().clone();
        let digests = self.table.digests();
        let per_packet = (self.cfg.max_packet.saturating_sub(wire::HEADER + 1 + 8 + postcard_len(&from)) / 18).max(1);
        for part in digests.chunks(per_packet) {
            self.send_table(to.clone(), &TableMsg::Digests { from: from.clone(), cells: part.to_vec() });
        }
    }

    fn note_heard(&mut self, from: &T, now_ms: u64) {
        if self.heard.len() >= MAX_HEARD && !self.heard.contains_key(&from.addr()) {
            self.heard.clear();
        }
        self.heard.insert(from.addr(), now_ms);
    }

    /// Sends records in as many packets as they need (an empty list still goes, with `want`).
    fn send_records(&mut self, to: &T, cell: u64, bucket: u16, records: Vec<Record<T>>, want: bool) {
        let me = self.foca.identity().clone();
        let room = self.cfg.max_packet.saturating_sub(wire::HEADER + 1 + 16 + postcard_len(&me)).max(200);
        let mut part: Vec<Record<T>> = Vec::new();
        let mut size = 0;
        let total = records.len();
        for (i, r) in records.into_iter().enumerate() {
            let n = postcard_len(&r);
            if !part.is_empty() && size + n > room {
                let batch = std::mem::take(&mut part);
                self.stats.repaired_records += batch.len() as u64;
                self.send_table(
                    to.clone(),
                    &TableMsg::Records { from: me.clone(), cell, bucket, records: batch, want: false },
                );
                size = 0;
            }
            size += n;
            part.push(r);
            if i + 1 == total {
                break;
            }
        }
        self.stats.repaired_records += part.len() as u64;
        self.send_table(to.clone(), &TableMsg::Records { from: me, cell, bucket, records: part, want });
    }

    /// Pushes waiting rumors, as many as fit `rumor_packets` packets, each packet to
    /// `gossip_fanout` random members.
    fn push_rumors(&mut self) {
        let room = self.cfg.max_packet.saturating_sub(wire::HEADER + 1 + 8);
        let most = self.cfg.rumor_packets.max(1);
        let mut packets: Vec<Vec<Record<T>>> = vec![Vec::new()];
        let mut size = 0;
        let mut pushed = 0;
        for (r, left) in self.backlog.iter_mut() {
            let n = postcard_len(r);
            if size + n > room {
                if packets.len() == most || packets.last().is_none_or(Vec::is_empty) {
                    break;
                }
                packets.push(Vec::new());
                size = 0;
            }
            size += n;
            if let Some(p) = packets.last_mut() {
                p.push(r.clone());
            }
            *left -= 1;
            pushed += 1;
        }
        // Only the rumors just pushed can have run out of pushes: the rest of the backlog (up to
        // `MAX_BACKLOG`) is not looked through.
        if pushed == 0 {
            return;
        }
        let kept: Vec<(Record<T>, u8)> = self.backlog.drain(..pushed).filter(|(_, left)| *left > 0).collect();
        for r in kept.into_iter().rev() {
            self.backlog.push_front(r);
        }
        for records in packets {
            // Encoded once for all the members it goes to.
            let Some(payload) = table_payload(&TableMsg::Rumors { records }, self.cfg.max_packet) else { continue };
            for _ in 0..self.cfg.gossip_fanout.max(1) {
                if let Some(to) = self.random_member() {
                    self.pending.push((to, payload.clone()));
                }
            }
        }
    }

    fn send_table(&mut self, to: T, msg: &TableMsg<T>) {
        if let Some(payload) = table_payload(msg, self.cfg.max_packet) {
            self.pending.push((to, payload));
        }
    }

    fn flush(&mut self, now: u64, out: &mut Outbox<T>) {
        let notes = std::mem::take(&mut self.rt.notes);
        for note in notes {
            if matches!(note, Note::Up(_) | Note::Down(_) | Note::Renamed(..)) {
                self.stats.changes += 1;
            }
            match note {
                Note::Up(m) => {
                    self.learn_record(Record { member: m.clone(), status: Status::Alive, changed_ms: now }, true);
                    out.changes.push(Change::Up(m));
                }
                Note::Down(m) => {
                    self.stats.confirmations += 1;
                    self.learn_record(Record { member: m.clone(), status: Status::Dead, changed_ms: now }, true);
                    out.changes.push(Change::Down(m));
                }
                Note::Renamed(a, b) => {
                    let status = if b.leaving() { Status::Dead } else { Status::Alive };
                    self.learn_record(Record { member: b.clone(), status, changed_ms: now }, true);
                    out.changes.push(Change::Renamed(a, b));
                }
                Note::Rejoined(m) => {
                    // This node under a new generation: its own record, spread.
                    let rec = Record { member: m.clone(), status: Status::Alive, changed_ms: now };
                    if self.table.merge(&rec) == table::Merged::Changed {
                        self.epoch += 1;
                        self.backlog.push_back((rec, self.cfg.rumor_transmissions.max(1)));
                    }
                    out.changes.push(Change::Rejoined(m));
                }
                Note::Heard(m) => self.note_heard(&m, now),
                Note::Sent(inc) => {
                    if inc > self.own_incarnation {
                        self.stats.refutations += u64::from(inc - self.own_incarnation);
                        self.own_incarnation = inc;
                    }
                }
                Note::ProbeFailed(m) => {
                    self.stats.suspicions += 1;
                    self.check_domain(&m, now);
                }
            }
        }
        let cell = self.cell.to_le_bytes();
        for (to, data) in self.rt.sends.drain(..) {
            let mut payload = Vec::with_capacity(SWIM_HEADER + data.len());
            payload.push(KIND_SWIM);
            payload.extend_from_slice(&cell);
            payload.extend_from_slice(&data);
            self.pending.push((to, payload));
        }
        for (to, payload) in self.pending.drain(..) {
            let packet = self.key.seal(now, &payload);
            self.stats.packets_out += 1;
            self.stats.bytes_out += packet.len() as u64;
            out.sends.push((to, packet));
        }
        out.timers.append(&mut self.rt.timers);
    }
}

/// `msg` encoded after its kind byte, in a buffer sized for a packet (no regrowth while encoding).
fn table_payload<T: Member>(msg: &TableMsg<T>, max_packet: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(max_packet);
    buf.push(KIND_TABLE);
    postcard::to_extend(msg, buf).ok()
}

fn postcard_len<S: Serialize>(v: &S) -> usize {
    postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default()).unwrap_or(64)
}
