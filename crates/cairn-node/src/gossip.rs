//! Gossip membership over UDP: drives `cairn_membership::Membership` with tokio and keeps the
//! cluster's placement on the map derived from it.
//!
//! Gossip uses the peer transport's address on UDP (same port). Seeds are resolved again every
//! `seed_resolve_every`, and every 2 s while this node knows no other member, so a cluster that
//! restarts all at once finds itself again. One INFO line is logged per membership change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_core::config::ClusterSection;
use cairn_membership::{Change, Config as GossipConfig, MapRules, Membership, NodeIdentity, Outbox};
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::cluster::Cluster;

/// How often the derived map is recomputed without a change (removals and weight ramps are timed;
/// a change of members is followed within 100 ms).
const MAP_REFRESH: Duration = Duration::from_secs(5);
/// Seeds are asked this often while no other member is known.
const ALONE_RETRY: Duration = Duration::from_secs(2);
/// Longest wait at start-up for a first answer from the seeds.
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Membership changes kept for the status page (the newest).
pub const RECENT_EVENTS: usize = 64;

type Timer = foca::Timer<NodeIdentity>;

pub struct Gossip {
    membership: Mutex<Membership<NodeIdentity>>,
    socket: Arc<UdpSocket>,
    timers: mpsc::UnboundedSender<(Duration, Timer)>,
    started_ms: u64,
    gossip_addr: SocketAddr,
    /// What the seeds resolved to last time (for readiness).
    seed_addrs: Mutex<Vec<SocketAddr>>,
    /// The last [`RECENT_EVENTS`] membership changes, oldest first.
    events: Mutex<std::collections::VecDeque<MemberEvent>>,
}

/// A membership change as this node saw it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub node: String,
    /// `up`, `dead`, `left`, `leaving`, `restarted` or `rejoined` (this node, declared dead).
    pub event: String,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rules(cfg: &ClusterSection) -> GossipConfig {
    GossipConfig {
        probe_period: cfg.probe_period.0,
        probe_rtt: (cfg.probe_period.0 * 2 / 5).max(Duration::from_millis(50)),
        suspect_to_down_after: cfg.suspect_timeout.0,
        map: MapRules {
            remove_after: cfg.remove_after.0,
            join_ramp: cfg.join_ramp.0,
            ramp_steps: cfg.join_steps.max(1),
        },
        ..GossipConfig::default()
    }
}

impl Gossip {
    /// Binds the gossip socket, joins through the seeds and keeps `cluster`'s map derived from
    /// membership. `joined_ms`: when this node's cache directory was created.
    pub async fn start(
        cluster: Arc<Cluster>,
        joined_ms: u64,
    ) -> Result<(Arc<Self>, Vec<tokio::task::JoinHandle<()>>), String> {
        let cfg = cluster.config().clone();
        let peer = crate::cluster::advertised_peer_addr(&cfg)?;
        let gossip_addr: SocketAddr = tokio::net::lookup_host(&peer)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("cluster: cannot resolve this node's advertised address {peer}"))?;
        let bind: SocketAddr = match cfg.peer_listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => gossip_addr,
        };
        let socket = Arc::new(UdpSocket::bind(bind).await.map_err(|e| format!("gossip: bind udp {bind}: {e}"))?);
        let started_ms = now_ms();
        let me = NodeIdentity {
            id: cfg.node_id.clone(),
            gossip: gossip_addr,
            peer,
            zone: cfg.zone.clone(),
            rack: cfg.rack.clone(),
            cell: if cfg.cell.is_empty() { cfg.zone.clone() } else { cfg.cell.clone() },
            weight: cfg.weight,
            generation: started_ms,
            joined: joined_ms,
            leaving: false,
        };
        let seed: u64 = rand::random();
        let membership = Membership::new(me, rules(&cfg), cfg.secret.as_bytes(), seed);
        let (timers, timer_rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            membership: Mutex::new(membership),
            socket,
            timers,
            started_ms,
            gossip_addr,
            seed_addrs: Mutex::new(Vec::new()),
            events: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_EVENTS)),
        });
        let mut tasks = vec![
            tokio::spawn(this.clone().receive()),
            tokio::spawn(this.clone().fire_timers(timer_rx)),
            tokio::spawn(this.clone().tick()),
        ];
        // Learn the cluster before serving: the whole table from a seed at once, then hello.
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let seed_addrs = resolve(&cfg.seeds).await;
        let others = seed_addrs.iter().any(|a| *a != gossip_addr);
        *this.seed_addrs.lock() = seed_addrs;
        while others && !this.fetch_snapshot(&cluster, &cfg).await && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tasks.push(tokio::spawn(this.clone().seek_seeds(cluster.clone(), cfg.clone())));
        tasks.push(tokio::spawn(this.clone().follow_map(cluster.clone())));
        cluster.adopt(&this.map());
        tasks.shrink_to_fit();
        Ok((this, tasks))
    }

    /// Whether this node has joined: it knows another live member, or no seed resolves to an
    /// address but its own (the first node of a pool). The error says why not.
    pub fn joined(&self) -> Result<(), String> {
        {
            let m = self.membership.lock();
            if m.cell_active() > 0 || m.active() > 0 {
                return Ok(());
            }
        }
        let others = self.seed_addrs.lock().iter().filter(|a| **a != self.gossip_addr).count();
        match others {
            0 => Ok(()),
            n => Err(format!("no other member reached yet ({n} other seed address(es) known)")),
        }
    }

    /// The member table, encoded, for a joining node (`GET /members` on the peer port).
    pub fn snapshot(&self) -> Vec<u8> {
        self.membership.lock().snapshot_bytes()
    }

    /// Learns the member table from the first seed that gives it; false when none did.
    async fn fetch_snapshot(&self, cluster: &Cluster, cfg: &ClusterSection) -> bool {
        let me = crate::cluster::advertised_peer_addr(cfg).unwrap_or_default();
        for seed in resolve(&cfg.seeds).await {
            if seed.to_string() == me || seed == self.gossip_addr {
                continue;
            }
            let node = cairn_core::cluster::NodeEntry {
                id: format!("seed {seed}"),
                addr: seed.to_string(),
                zone: String::new(),
                rack: String::new(),
                weight: 1,
                state: cairn_core::cluster::NodeState::Up,
            };
            match cluster.call(&node, http::Method::GET, "/members".into(), bytes::Bytes::new()).await {
                Ok((parts, body)) if parts.status.is_success() => {
                    let mut out = Outbox::default();
                    let r = self.membership.lock().learn_bytes(&body, now_ms(), &mut out);
                    self.dispatch(out).await;
                    match r {
                        Ok(n) => {
                            tracing::info!(%seed, members = n, "learned the member table from a seed");
                            return true;
                        }
                        Err(_) => tracing::warn!(%seed, "a seed sent a member table that does not decode"),
                    }
                }
                Ok((parts, _)) => tracing::debug!(%seed, status = %parts.status, "seed gave no member table"),
                Err(e) => tracing::debug!(%seed, error = ?e, "seed unreachable"),
            }
        }
        false
    }

    pub fn map(&self) -> cairn_core::cluster::ClusterMap {
        self.membership.lock().map(now_ms())
    }

    pub fn members(&self) -> (NodeIdentity, Vec<cairn_membership::MemberView<NodeIdentity>>) {
        let m = self.membership.lock();
        (m.identity().clone(), m.members())
    }

    /// Members by state (alive, suspect, dead, left), this node included.
    pub fn counts(&self) -> [u64; 4] {
        self.membership.lock().counts()
    }

    pub fn stats(&self) -> cairn_membership::Stats {
        self.membership.lock().stats().clone()
    }

    /// The recent membership changes, newest first.
    pub fn recent_events(&self) -> Vec<MemberEvent> {
        self.events.lock().iter().rev().cloned().collect()
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Leaves the cluster on purpose: the others drop this node from their maps at once.
    pub async fn leave(&self) {
        let mut out = Outbox::default();
        self.membership.lock().leave(now_ms(), &mut out);
        self.dispatch(out).await;
        // The leave rides on the next rounds too: give them a moment.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    async fn dispatch(&self, out: Outbox<NodeIdentity>) {
        for change in out.changes {
            let (node, event) = log_change(&change);
            let mut events = self.events.lock();
            if events.len() == RECENT_EVENTS {
                events.pop_front();
            }
            events.push_back(MemberEvent { at_ms: now_ms(), node, event: event.to_owned() });
        }
        for t in out.timers {
            let _ = self.timers.send(t);
        }
        for (to, packet) in out.sends {
            if let Err(e) = self.socket.send_to(&packet, to.gossip).await {
                tracing::debug!(to = %to.gossip, error = %e, "gossip send failed");
            }
        }
    }

    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let mut out = Outbox::default();
            let r = self.membership.lock().handle_packet(&buf[..n], now_ms(), &mut out);
            if let Err(e) = r {
                tracing::debug!(%from, reason = ?e, "gossip packet rejected");
            }
            self.dispatch(out).await;
        }
    }

    async fn fire_timers(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(Duration, Timer)>) {
        let (fire_tx, mut fire_rx) = mpsc::unbounded_channel::<Timer>();
        loop {
            tokio::select! {
                Some((after, timer)) = rx.recv() => {
                    let tx = fire_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(timer);
                    });
                }
                Some(timer) = fire_rx.recv() => {
                    let mut out = Outbox::default();
                    self.membership.lock().handle_timer(timer, now_ms(), &mut out);
                    self.dispatch(out).await;
                }
                else => return,
            }
        }
    }

    /// Says hello to the seeds at start, again every `seed_resolve_every` (names resolved anew),
    /// and every 2 s while no other member is known (with a fresh table fetch), so that a
    /// cluster restarted all at once, or a partition's two sides, find each other again.
    async fn seek_seeds(self: Arc<Self>, cluster: Arc<Cluster>, cfg: ClusterSection) {
        let mut last_full = None::<tokio::time::Instant>;
        loop {
            let alone = self.membership.lock().active() == 0;
            let due = last_full.is_none_or(|t| t.elapsed() >= cfg.seed_resolve_every.0);
            if alone || due {
                if alone && last_full.is_some() {
                    self.fetch_snapshot(&cluster, &cfg).await;
                }
                let addrs = resolve(&cfg.seeds).await;
                self.seed_addrs.lock().clone_from(&addrs);
                let mut out = Outbox::default();
                self.membership.lock().join(&addrs, now_ms(), &mut out);
                self.dispatch(out).await;
                last_full = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(ALONE_RETRY).await;
        }
    }

    /// Rumors and anti-entropy, every `gossip_every`.
    async fn tick(self: Arc<Self>) {
        let every = self.membership.lock().config().gossip_every;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut out = Outbox::default();
            self.membership.lock().tick(now_ms(), &mut out);
            self.dispatch(out).await;
        }
    }

    async fn follow_map(self: Arc<Self>, cluster: Arc<Cluster>) {
        let mut seen_epoch = 0;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let epoch = self.membership.lock().epoch();
            if epoch != seen_epoch || last.elapsed() >= MAP_REFRESH {
                seen_epoch = epoch;
                last = tokio::time::Instant::now();
                cluster.adopt(&self.map());
            }
        }
    }
}

/// Every address the seeds resolve to, sorted, without repeats.
async fn resolve(seeds: &[String]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for s in seeds {
        match tokio::net::lookup_host(s.as_str()).await {
            Ok(found) => addrs.extend(found),
            Err(e) => tracing::debug!(seed = %s, error = %e, "cannot resolve a seed"),
        }
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Logs a change; answers the node and what happened to it, as [`MemberEvent`] names it.
fn log_change(c: &Change<NodeIdentity>) -> (String, &'static str) {
    match c {
        Change::Up(m) => {
            tracing::info!(node = %m.id, addr = %m.peer, zone = %m.zone, rack = %m.rack, generation = m.generation, "member up");
            (m.id.clone(), "up")
        }
        Change::Down(m) if m.leaving => {
            tracing::info!(node = %m.id, addr = %m.peer, "member left");
            (m.id.clone(), "left")
        }
        Change::Down(m) => {
            tracing::info!(node = %m.id, addr = %m.peer, "member declared dead");
            (m.id.clone(), "dead")
        }
        Change::Renamed(a, b) if b.leaving => {
            tracing::info!(node = %b.id, from = a.generation, "member leaving");
            (b.id.clone(), "leaving")
        }
        Change::Renamed(a, b) => {
            tracing::info!(node = %b.id, addr = %b.peer, from = a.generation, to = b.generation, "member restarted");
            (b.id.clone(), "restarted")
        }
        Change::Rejoined(m) => {
            tracing::warn!(node = %m.id, generation = m.generation, "this node was declared dead and rejoined");
            (m.id.clone(), "rejoined")
        }
    }
}
