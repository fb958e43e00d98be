//! Gossip membership: SWIM with suspicion and refutation (the `foca` crate, which does no I/O),
//! packets authenticated with a key derived from the cluster secret, and the cluster map derived
//! from the member list ([`map`]).
//!
//! [`Membership`] is a state machine: the caller feeds it packets, timer events and the time, and
//! takes out packets to send, timers to arm and membership changes. The node drives it over UDP
//! with tokio; `cairn-sim membership` drives the same code over a simulated network.

pub mod identity;
pub mod map;
pub mod wire;

use std::collections::HashMap;
use std::hash::Hash;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use cairn_core::cluster::ClusterMap;
use foca::{Foca, Notification, PostcardCodec, State, Timer};
use rand010::SeedableRng;
use rand010::rngs::StdRng;

pub use identity::{Member, NodeIdentity};
pub use map::{MapRules, Standing};
pub use wire::{Key, Reject};

/// Protocol timing. The defaults detect a crashed node in a few seconds and keep a node that
/// stalls for 5 s (a long GC pause, a frozen VM) from being declared dead: a suspect has
/// `suspect_to_down_after` to refute.
#[derive(Clone, Debug)]
pub struct Config {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down_after: Duration,
    pub indirect_probes: usize,
    /// How often this node pushes pending updates to `gossip_fanout` random members.
    pub gossip_every: Duration,
    pub gossip_fanout: usize,
    /// Times each update is piggybacked before it is dropped from the backlog.
    pub max_transmissions: u8,
    /// How often down members are contacted again (heals partitions).
    pub announce_down_every: Duration,
    /// How often a random member is asked for members this node may not know.
    pub announce_every: Duration,
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
            gossip_fanout: 3,
            max_transmissions: 12,
            announce_down_every: Duration::from_secs(10),
            announce_every: Duration::from_secs(30),
            max_packet: 1400,
            map: MapRules::default(),
        }
    }
}

impl Config {
    fn foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions.max(1)).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            // Forgotten a little after the map drops them, so the map decides removal.
            remove_down_after: Some(self.map.remove_after + Duration::from_secs(60)),
            max_packet_size: nz(self.max_packet.saturating_sub(wire::HEADER)),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams { frequency: self.announce_every, num_members: nz(1) }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_down_every,
                num_members: nz(2),
            }),
            periodic_gossip: Some(foca::PeriodicParams { frequency: self.gossip_every, num_members: nz(self.gossip_fanout) }),
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
    /// This node was declared down by the others and rejoined under a new generation.
    Rejoined(T),
}

/// Counters since start.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets dropped: forged or unauthenticated, stale, malformed.
    pub rejected: u64,
    /// Probes of this node that failed (it then suspects the member).
    pub suspicions: u64,
    /// Members this node saw declared down.
    pub confirmations: u64,
    /// Suspicions of this node that it refuted (its incarnation went up).
    pub refutations: u64,
}

/// One member as this node sees it.
#[derive(Clone, Debug)]
pub struct MemberView<T> {
    pub identity: T,
    pub standing: Standing,
    pub incarnation: u16,
    /// Unix milliseconds this node last received a packet from it (0: never directly).
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

pub struct Membership<T: Member>
where
    T::Addr: Hash + Eq + Clone,
{
    foca: Foca<T, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    key: Key,
    cfg: Config,
    rt: Rt<T>,
    stats: Stats,
    down_since: HashMap<T::Addr, u64>,
    heard: HashMap<T::Addr, u64>,
    own_incarnation: u16,
    /// Bumped whenever the derived map may have changed.
    epoch: u64,
}

/// Collects what foca asks for during one call.
struct Rt<T> {
    now_ms: u64,
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
    ProbeFailed,
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
            Notification::ProbeFailed(..) => Note::ProbeFailed,
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
        let foca = Foca::new(me, cfg.foca(), StdRng::seed_from_u64(rng_seed), PostcardCodec);
        Self {
            foca,
            key: Key::from_secret(secret),
            cfg,
            rt: Rt { now_ms: 0, sends: Vec::new(), timers: Vec::new(), notes: Vec::new() },
            stats: Stats::default(),
            down_since: HashMap::new(),
            heard: HashMap::new(),
            own_incarnation: 0,
            epoch: 1,
        }
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

    /// Changes whenever the derived map may have changed (joins, downs, renames, time-based
    /// removals and ramps are the caller's to re-derive periodically).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members known (this node excluded), active or not.
    pub fn len(&self) -> usize {
        self.foca.iter_membership_state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn active(&self) -> usize {
        self.foca.num_members()
    }

    /// Asks the members at `seeds` (known by address only) to let this node in.
    pub fn join(&mut self, seeds: &[T::Addr], now_ms: u64, out: &mut Outbox<T>) {
        self.rt.now_ms = now_ms;
        let me = self.foca.identity().addr();
        for s in seeds {
            if *s != me {
                let _ = self.foca.announce(T::placeholder(s.clone()), &mut self.rt);
            }
        }
        self.flush(out);
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
        self.rt.now_ms = now_ms;
        let r = self.foca.handle_data(payload, &mut self.rt);
        if r.is_err() {
            self.stats.rejected += 1;
        }
        self.flush(out);
        Ok(())
    }

    pub fn handle_timer(&mut self, timer: Timer<T>, now_ms: u64, out: &mut Outbox<T>) {
        self.rt.now_ms = now_ms;
        let _ = self.foca.handle_timer(timer, &mut self.rt);
        self.flush(out);
    }

    /// Leaves on purpose: the others remove this node from their maps at once, instead of
    /// keeping it `down` for `remove_after`.
    pub fn leave(&mut self, now_ms: u64, out: &mut Outbox<T>) {
        self.rt.now_ms = now_ms;
        let leaving = self.foca.identity().as_leaving();
        let _ = self.foca.change_identity(leaving, &mut self.rt);
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.flush(out);
    }

    /// Adds members learned out of band (a snapshot from a peer when joining a large cluster).
    pub fn learn(&mut self, members: Vec<foca::Member<T>>, now_ms: u64, out: &mut Outbox<T>) {
        self.rt.now_ms = now_ms;
        let me = self.foca.identity().clone();
        let _ = self.foca.apply_many(members.into_iter().filter(|m| m.id().addr() != me.addr()), false, &mut self.rt);
        self.flush(out);
    }

    /// The active members, for a joining node to learn at once.
    pub fn snapshot(&self) -> Vec<foca::Member<T>> {
        let mut all: Vec<foca::Member<T>> = self.foca.iter_members().cloned().collect();
        all.push(foca::Member::alive(self.foca.identity().clone()));
        all
    }

    pub fn members(&self) -> Vec<MemberView<T>> {
        self.foca
            .iter_membership_state()
            .map(|m| MemberView {
                identity: m.id().clone(),
                standing: self.standing(m),
                incarnation: m.incarnation(),
                heard_ms: self.heard.get(&m.id().addr()).copied().unwrap_or(0),
            })
            .collect()
    }

    fn standing(&self, m: &foca::Member<T>) -> Standing {
        match m.state() {
            State::Alive => Standing::Alive,
            State::Suspect => Standing::Suspect,
            State::Down => Standing::Down { since_ms: self.down_since.get(&m.id().addr()).copied().unwrap_or(0) },
        }
    }

    /// The cluster map this view derives, this node included.
    pub fn map(&self, now_ms: u64) -> ClusterMap {
        let me = self.foca.identity();
        let others = self.foca.iter_membership_state().map(|m| (m.id(), self.standing(m)));
        map::derive(std::iter::once((me, Standing::Alive)).chain(others), now_ms, &self.cfg.map)
    }

    fn flush(&mut self, out: &mut Outbox<T>) {
        let now = self.rt.now_ms;
        for note in self.rt.notes.drain(..) {
            match note {
                Note::Up(m) => {
                    self.down_since.remove(&m.addr());
                    self.epoch += 1;
                    out.changes.push(Change::Up(m));
                }
                Note::Down(m) => {
                    self.down_since.insert(m.addr(), now);
                    self.stats.confirmations += 1;
                    self.epoch += 1;
                    out.changes.push(Change::Down(m));
                }
                Note::Renamed(a, b) => {
                    self.epoch += 1;
                    out.changes.push(Change::Renamed(a, b));
                }
                Note::Rejoined(m) => {
                    self.epoch += 1;
                    out.changes.push(Change::Rejoined(m));
                }
                Note::Heard(m) => {
                    self.heard.insert(m.addr(), now);
                }
                Note::Sent(inc) => {
                    if inc > self.own_incarnation {
                        self.stats.refutations += u64::from(inc - self.own_incarnation);
                        self.own_incarnation = inc;
                    }
                }
                Note::ProbeFailed => self.stats.suspicions += 1,
            }
        }
        for (to, payload) in self.rt.sends.drain(..) {
            let packet = self.key.seal(now, &payload);
            self.stats.packets_out += 1;
            self.stats.bytes_out += packet.len() as u64;
            out.sends.push((to, packet));
        }
        out.timers.append(&mut self.rt.timers);
    }

    /// Forgets "last heard" entries of members no longer known (bounded by the member count).
    pub fn prune(&mut self) {
        if self.heard.len() > 2 * self.len() + 16 {
            let known: std::collections::HashSet<T::Addr> =
                self.foca.iter_membership_state().map(|m| m.id().addr()).collect();
            self.heard.retain(|a, _| known.contains(a));
            self.down_since.retain(|a, _| known.contains(a));
        }
    }
}
