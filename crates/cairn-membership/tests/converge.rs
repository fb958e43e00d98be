//! A handful of members on an in-memory network: they form one view from one seed, detect a
//! crash, take a restart back, drop a member that left at once, and ignore packets sealed with
//! another secret.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

use cairn_core::cluster::NodeState;
use cairn_membership::{Config, Membership, NodeIdentity, Outbox};
use foca::Timer;

enum Ev {
    Packet(SocketAddr, Vec<u8>),
    Timer(SocketAddr, Timer<NodeIdentity>),
    Tick(SocketAddr),
}

struct Net {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    nodes: HashMap<SocketAddr, Membership<NodeIdentity>>,
    dead: std::collections::HashSet<SocketAddr>,
    /// Packets between these two groups are lost (a partition).
    cut: Option<(Vec<SocketAddr>, Vec<SocketAddr>)>,
}

fn ident(i: u16, generation: u64) -> NodeIdentity {
    NodeIdentity {
        id: format!("n{i}"),
        gossip: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
        peer: format!("127.0.0.1:{}", 9000 + i),
        zone: "z".into(),
        rack: format!("r{}", i % 2),
        cell: "z".into(),
        weight: 100,
        generation,
        joined: 1,
        leaving: false,
    }
}

impl Net {
    fn empty() -> Self {
        Net {
            now: 1_000_000,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes: HashMap::new(),
            dead: Default::default(),
            cut: None,
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn absorb(&mut self, out: Outbox<NodeIdentity>, from: SocketAddr) {
        for (to, p) in out.sends {
            if let Some((a, b)) = &self.cut
                && ((a.contains(&from) && b.contains(&to.gossip)) || (b.contains(&from) && a.contains(&to.gossip)))
            {
                continue;
            }
            self.push(self.now + 1, Ev::Packet(to.gossip, p));
        }
        for (after, t) in out.timers {
            self.push(self.now + after.as_millis() as u64, Ev::Timer(from, t));
        }
    }

    fn add(&mut self, m: Membership<NodeIdentity>, seed: Option<SocketAddr>) {
        let addr = m.identity().gossip;
        self.dead.remove(&addr);
        self.nodes.insert(addr, m);
        self.push(self.now + 200, Ev::Tick(addr));
        if let Some(s) = seed {
            let mut out = Outbox::default();
            let now = self.now;
            self.nodes.get_mut(&addr).expect("added").join(&[s], now, &mut out);
            self.absorb(out, addr);
        }
    }

    fn run_until(&mut self, until: u64) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(ev) = self.events.remove(&seq) else { continue };
            let (addr, mut out) = (
                match &ev {
                    Ev::Packet(a, _) | Ev::Timer(a, _) | Ev::Tick(a) => *a,
                },
                Outbox::default(),
            );
            if self.dead.contains(&addr) {
                continue;
            }
            let Some(m) = self.nodes.get_mut(&addr) else { continue };
            match ev {
                Ev::Packet(_, p) => {
                    let _ = m.handle_packet(&p, at, &mut out);
                }
                Ev::Timer(_, t) => m.handle_timer(t, at, &mut out),
                Ev::Tick(a) => {
                    m.tick(at, &mut out);
                    self.push(at + 200, Ev::Tick(a));
                }
            }
            self.absorb(out, addr);
        }
        self.now = until;
    }

    fn views(&self) -> Vec<Vec<(String, NodeState)>> {
        let mut v: Vec<(SocketAddr, Vec<(String, NodeState)>)> = self
            .nodes
            .iter()
            .filter(|(a, _)| !self.dead.contains(a))
            .map(|(a, m)| (*a, m.map(self.now).nodes.into_iter().map(|n| (n.id, n.state)).collect()))
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    }
}

fn net(n: u16, secret: &[u8]) -> Net {
    let mut net = Net::empty();
    let seed = ident(0, 1).gossip;
    for i in 0..n {
        let m = Membership::new(ident(i, 1), Config::default(), secret, u64::from(i));
        net.add(m, if i == 0 { None } else { Some(seed) });
    }
    net
}

fn ids(view: &[(String, NodeState)]) -> Vec<&str> {
    view.iter().map(|(i, _)| i.as_str()).collect()
}

#[test]
fn members_form_one_view_detect_a_crash_and_take_a_restart_back() {
    let mut net = net(6, b"secret-one");
    net.run_until(net.now + 10_000);
    for v in net.views() {
        assert_eq!(ids(&v), vec!["n0", "n1", "n2", "n3", "n4", "n5"]);
        assert!(v.iter().all(|(_, s)| *s == NodeState::Up));
    }
    // Crash n3: everyone else marks it down within probe + suspicion + dissemination.
    let a3 = ident(3, 1).gossip;
    net.dead.insert(a3);
    net.run_until(net.now + 15_000);
    for v in net.views() {
        assert_eq!(v.iter().find(|(i, _)| i == "n3").map(|x| x.1), Some(NodeState::Down), "{v:?}");
    }
    // Restart with the same id and a newer generation: back up everywhere, one entry.
    let m = Membership::new(ident(3, 2), Config::default(), b"secret-one", 99);
    net.add(m, Some(ident(1, 1).gossip));
    net.run_until(net.now + 10_000);
    for v in net.views() {
        assert_eq!(ids(&v).len(), 6);
        assert!(v.iter().all(|(_, s)| *s == NodeState::Up), "{v:?}");
    }
}

#[test]
fn a_member_that_leaves_is_removed_at_once() {
    let mut net = net(4, b"secret-one");
    net.run_until(net.now + 8_000);
    let a2 = ident(2, 1).gossip;
    let mut out = Outbox::default();
    let now = net.now;
    net.nodes.get_mut(&a2).expect("n2").leave(now, &mut out);
    net.absorb(out, a2);
    net.run_until(net.now + 100);
    net.dead.insert(a2);
    net.run_until(net.now + 3_000);
    for v in net.views() {
        assert_eq!(ids(&v), vec!["n0", "n1", "n3"], "{v:?}");
    }
}

#[test]
fn a_member_without_the_secret_cannot_join() {
    let mut net = net(3, b"secret-one");
    net.run_until(net.now + 5_000);
    let intruder = Membership::new(ident(7, 1), Config::default(), b"not-the-secret", 7);
    net.add(intruder, Some(ident(0, 1).gossip));
    net.run_until(net.now + 10_000);
    for (a, m) in &net.nodes {
        let names = ids(&m.map(net.now).nodes.iter().map(|n| (n.id.clone(), n.state)).collect::<Vec<_>>())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if *a == ident(7, 1).gossip {
            assert_eq!(names, vec!["n7"]);
        } else {
            assert_eq!(names, vec!["n0", "n1", "n2"]);
            assert!(m.stats().rejected > 0 || m.identity().id != "n0");
        }
    }
}

#[test]
fn cells_detect_their_own_failures_and_every_cell_learns_them() {
    let mut net = Net::empty();
    let seed = ident(0, 1).gossip;
    for i in 0..12u16 {
        let mut id = ident(i, 1);
        id.cell = format!("cell-{}", i % 3);
        id.zone = id.cell.clone();
        let m = Membership::new(id, Config::default(), b"secret-one", u64::from(i));
        net.add(m, if i == 0 { None } else { Some(seed) });
    }
    net.run_until(net.now + 20_000);
    for v in net.views() {
        assert_eq!(ids(&v).len(), 12, "{v:?}");
        assert!(v.iter().all(|(_, s)| *s == NodeState::Up), "{v:?}");
    }
    // Each node's SWIM runs in its cell only: 3 other members.
    for m in net.nodes.values() {
        assert_eq!(m.cell_active(), 3, "{}", m.identity().id);
    }
    let a5 = ident(5, 1).gossip;
    net.dead.insert(a5);
    net.run_until(net.now + 20_000);
    for v in net.views() {
        assert_eq!(v.iter().find(|(i, _)| i == "n5").map(|x| x.1), Some(NodeState::Down), "{v:?}");
        assert_eq!(v.iter().filter(|(_, s)| *s == NodeState::Down).count(), 1, "{v:?}");
    }
    for (a, m) in net.nodes.iter().filter(|(a, _)| !net.dead.contains(a)) {
        assert_eq!(m.counts(), [11, 0, 1, 0], "{a}");
    }
    // Every node derives the same map.
    let digests: std::collections::HashSet<u64> =
        net.nodes.iter().filter(|(a, _)| !net.dead.contains(a)).map(|(_, m)| m.map(net.now).version).collect();
    assert_eq!(digests.len(), 1);
}

#[test]
fn a_rack_that_loses_power_is_declared_dead_together() {
    let mut net = Net::empty();
    let seed = ident(0, 1).gossip;
    for i in 0..30u16 {
        let mut id = ident(i, 1);
        id.rack = format!("r{}", i / 10);
        let m = Membership::new(id, Config::default(), b"secret-one", u64::from(i));
        net.add(m, if i == 0 { None } else { Some(seed) });
    }
    net.run_until(net.now + 30_000);
    for i in 20..30u16 {
        net.dead.insert(ident(i, 1).gossip);
    }
    // SWIM's round-robin reaches the last of the ten seconds after the first; the first failed
    // probe has its rack-mates probed at once, so all ten are declared within about one
    // suspicion timeout (8 s) and two probe periods.
    net.run_until(net.now + 11_500);
    for v in net.views() {
        let down = v.iter().filter(|(_, s)| *s == NodeState::Down).count();
        assert_eq!(down, 10, "{v:?}");
    }
}

#[test]
fn a_cell_that_dies_whole_is_declared_dead_by_the_other_cells() {
    let mut net = Net::empty();
    let seed = ident(0, 1).gossip;
    for i in 0..9u16 {
        let mut id = ident(i, 1);
        id.cell = format!("cell-{}", i % 3);
        let m = Membership::new(id, Config::default(), b"secret-one", u64::from(i));
        net.add(m, if i == 0 { None } else { Some(seed) });
    }
    net.run_until(net.now + 20_000);
    // cell-2 (n2, n5, n8) loses power.
    for i in [2u16, 5, 8] {
        net.dead.insert(ident(i, 1).gossip);
    }
    net.run_until(net.now + 40_000);
    for v in net.views() {
        let down: Vec<&str> = v.iter().filter(|(_, s)| *s == NodeState::Down).map(|(i, _)| i.as_str()).collect();
        assert_eq!(down, vec!["n2", "n5", "n8"], "{v:?}");
    }
}

#[test]
fn two_cells_cut_apart_serve_on_and_become_one_view_again_when_healed() {
    let mut net = Net::empty();
    let seed = ident(0, 1).gossip;
    let mut sides = (Vec::new(), Vec::new());
    for i in 0..8u16 {
        let mut id = ident(i, 1);
        id.cell = format!("cell-{}", i % 2);
        if i % 2 == 0 {
            sides.0.push(id.gossip)
        } else {
            sides.1.push(id.gossip)
        }
        let m = Membership::new(id, Config::default(), b"secret-one", u64::from(i));
        net.add(m, if i == 0 { None } else { Some(seed) });
    }
    net.run_until(net.now + 15_000);
    net.cut = Some(sides);
    net.run_until(net.now + 30_000);
    // Each side declared the other dead; each still has itself up.
    for (a, m) in &net.nodes {
        let map = m.map(net.now);
        let up = map.nodes.iter().filter(|n| n.state == NodeState::Up).count();
        assert_eq!(up, 4, "{a}: {:?}", map.nodes);
    }
    net.cut = None;
    net.run_until(net.now + 40_000);
    for v in net.views() {
        assert_eq!(ids(&v).len(), 8, "{v:?}");
        assert!(v.iter().all(|(_, s)| *s == NodeState::Up), "{v:?}");
    }
    let digests: std::collections::HashSet<u64> = net.nodes.values().map(|m| m.map(net.now).version).collect();
    assert_eq!(digests.len(), 1);
}

#[test]
fn a_snapshot_round_trips_compressed_and_a_bad_one_is_refused() {
    let mut net = net(5, b"secret-one");
    net.run_until(net.now + 8_000);
    let a0 = ident(0, 1).gossip;
    let snap = net.nodes[&a0].snapshot_bytes();
    let raw = postcard_len(&net.nodes[&a0].snapshot());
    assert!(snap.len() < raw, "compressed {} >= raw {raw}", snap.len());
    let mut fresh = Membership::new(ident(9, 1), Config::default(), b"secret-one", 9);
    let mut out = Outbox::default();
    assert_eq!(fresh.learn_bytes(&snap, net.now, &mut out), Ok(5));
    assert_eq!(fresh.map(net.now).nodes.len(), 6);
    let mut huge = snap.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(fresh.learn_bytes(&huge, net.now, &mut out).is_err());
    assert!(fresh.learn_bytes(&snap[..snap.len() / 2], net.now, &mut out).is_err());
}

fn postcard_len<S: serde::Serialize>(v: &S) -> usize {
    postcard::to_allocvec(v).expect("encodes").len()
}

/// Bytes of the member table a joiner fetches, for 10,000 members with realistic names
/// (printed; `cargo test --release -p cairn-membership --test converge -- --nocapture snapshot_size`).
#[test]
fn snapshot_size_at_ten_thousand_members() {
    let mut m = Membership::new(ident(0, 1), Config::default(), b"secret-one", 1);
    let records: Vec<cairn_membership::Record<NodeIdentity>> = (1..10_000u32)
        .map(|i| cairn_membership::Record {
            member: NodeIdentity {
                id: format!("aks-gpu-{:05}-vmss{:06}", i / 100, i),
                gossip: format!("10.{}.{}.{}:9100", i >> 16, (i >> 8) & 255, i & 255).parse().expect("addr"),
                peer: format!("10.{}.{}.{}:9100", i >> 16, (i >> 8) & 255, i & 255),
                zone: format!("eastus2-{}", i % 3 + 1),
                rack: format!("rack-{:04}", i / 40),
                cell: format!("eastus2-{}", i % 3 + 1),
                weight: 100,
                generation: 1_790_000_000_000 + u64::from(i) * 7,
                joined: 1_780_000_000_000 + u64::from(i) * 13,
                leaving: false,
            },
            status: cairn_membership::Status::Alive,
            changed_ms: 1_790_000_000_000 + u64::from(i),
        })
        .collect();
    let mut out = Outbox::default();
    m.learn(records, 1_790_000_100_000, &mut out);
    let raw = postcard_len(&m.snapshot());
    let packed = m.snapshot_bytes().len();
    println!(
        "10,000 members: {raw} bytes encoded, {packed} compressed ({:.0} / {:.0} per member)",
        raw as f64 / 1e4,
        packed as f64 / 1e4
    );
    assert!(packed < raw);
}
