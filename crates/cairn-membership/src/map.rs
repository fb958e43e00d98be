//! The cluster map derived from the member list: placement stays a pure function of it.
//!
//! - alive or suspected: `up` (a suspect keeps its chunks; requesters fail over as with any
//!   unreachable owner);
//! - confirmed dead: `down` (skipped in each key's ranking: exactly its keys move, within its rack);
//! - dead for longer than `remove_after`, or left on purpose: removed;
//! - a member whose cache joined less than `join_ramp` ago takes its share in `ramp_steps` equal
//!   steps of weight, each at a wall-clock instant every node computes alike, so a scale-up of
//!   many nodes moves data gradually instead of all at once.
//!
//! Two nodes holding the same member records derive the same map, whatever order the records came
//! in; several identities of one node id resolve to the newest generation.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_core::cluster::{ClusterMap, NodeEntry, NodeState};

use crate::identity::Member;

/// How a member stands in one node's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Alive,
    Suspect,
    /// Declared down at this unix millisecond (as first learned here).
    Down {
        since_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct MapRules {
    pub remove_after: Duration,
    pub join_ramp: Duration,
    pub ramp_steps: u32,
}

impl Default for MapRules {
    fn default() -> Self {
        Self { remove_after: Duration::from_secs(600), join_ramp: Duration::from_secs(120), ramp_steps: 4 }
    }
}

/// The weight a member has `now_ms`, given when its cache joined.
pub fn ramped_weight(weight: u32, joined_ms: u64, now_ms: u64, rules: &MapRules) -> u32 {
    let ramp = rules.join_ramp.as_millis() as u64;
    let steps = u64::from(rules.ramp_steps.max(1));
    let age = now_ms.saturating_sub(joined_ms);
    if ramp == 0 || age >= ramp || joined_ms == 0 {
        return weight;
    }
    let step = age * steps / ramp + 1;
    ((u64::from(weight) * step / steps) as u32).max(1)
}

/// Derives the map from member records. `version` is a digest of the entries, so two nodes with
/// the same map report the same version.
pub fn derive<'a, T: Member + 'a>(
    members: impl IntoIterator<Item = (&'a T, Standing)>,
    now_ms: u64,
    rules: &MapRules,
) -> ClusterMap {
    // Per node id, the record that wins: newest generation, then active over down.
    let mut best: BTreeMap<&str, (&T, Standing)> = BTreeMap::new();
    for (m, s) in members {
        if m.node_id().is_empty() {
            continue;
        }
        // A total order, so that duplicates resolve the same whatever order they came in.
        let rank = |m: &T, s: Standing| (m.generation(), !matches!(s, Standing::Down { .. }), m.leaving(), s);
        match best.get(m.node_id()) {
            Some((b, bs)) if rank(b, *bs) >= rank(m, s) => {}
            _ => {
                best.insert(m.node_id(), (m, s));
            }
        }
    }
    let remove_ms = rules.remove_after.as_millis() as u64;
    let mut nodes: Vec<NodeEntry> = Vec::with_capacity(best.len());
    for (m, s) in best.into_values() {
        let mut e = m.entry();
        e.weight = ramped_weight(e.weight.max(1), m.joined_ms(), now_ms, rules);
        match s {
            Standing::Alive | Standing::Suspect => e.state = NodeState::Up,
            Standing::Down { since_ms } => {
                if m.leaving() || now_ms.saturating_sub(since_ms) >= remove_ms {
                    continue;
                }
                e.state = NodeState::Down;
            }
        }
        nodes.push(e);
    }
    ClusterMap { version: digest(&nodes), nodes }
}

/// A digest of sorted entries (never 0, so it reads as a version).
pub fn digest(nodes: &[NodeEntry]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for n in nodes {
        for part in [n.id.as_str(), n.addr.as_str(), n.zone.as_str(), n.rack.as_str()] {
            h.update(part.as_bytes());
            h.update(&[0xff]);
        }
        h.update(&n.weight.to_le_bytes());
        h.update(&[matches!(n.state, NodeState::Down) as u8]);
    }
    h.digest().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeIdentity;
    use proptest::prelude::*;

    fn ident(i: u32, generation: u64, leaving: bool) -> NodeIdentity {
        NodeIdentity {
            id: format!("n{i}"),
            gossip: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
            peer: format!("127.0.0.1:{}", 9000 + i),
            zone: "z".into(),
            rack: format!("r{}", i % 3),
            cell: "z".into(),
            weight: 100,
            generation,
            joined: 1,
            leaving,
        }
    }

    #[test]
    fn states_map_as_documented() {
        let rules = MapRules::default();
        let now = 10_000_000;
        let recs = [
            (ident(0, 5, false), Standing::Alive),
            (ident(1, 5, false), Standing::Suspect),
            (ident(2, 5, false), Standing::Down { since_ms: now - 1000 }),
            (ident(3, 5, false), Standing::Down { since_ms: now - rules.remove_after.as_millis() as u64 }),
            (ident(4, 6, true), Standing::Down { since_ms: now }),
        ];
        let m = derive(recs.iter().map(|(i, s)| (i, *s)), now, &rules);
        let states: Vec<(&str, NodeState)> = m.nodes.iter().map(|n| (n.id.as_str(), n.state)).collect();
        assert_eq!(states, vec![("n0", NodeState::Up), ("n1", NodeState::Up), ("n2", NodeState::Down)]);
    }

    #[test]
    fn newest_generation_wins_and_a_restart_replaces_a_down_record() {
        let rules = MapRules::default();
        let old = ident(1, 5, false);
        let mut new = ident(1, 9, false);
        new.peer = "127.0.0.9:1".into();
        let recs = [(&old, Standing::Down { since_ms: 1 }), (&new, Standing::Alive)];
        let m = derive(recs.iter().copied(), 2, &rules);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!((m.nodes[0].addr.as_str(), m.nodes[0].state), ("127.0.0.9:1", NodeState::Up));
        let m2 = derive(recs.iter().rev().copied(), 2, &rules);
        assert_eq!(m, m2);
    }

    #[test]
    fn a_new_cache_ramps_its_weight_in_steps() {
        let rules = MapRules { join_ramp: Duration::from_secs(100), ramp_steps: 4, ..Default::default() };
        let w: Vec<u32> = [0u64, 24_999, 25_000, 50_000, 99_999, 100_000]
            .iter()
            .map(|age| ramped_weight(100, 1_000, 1_000 + age, &rules))
            .collect();
        assert_eq!(w, vec![25, 25, 50, 75, 100, 100]);
    }

    proptest! {
        #[test]
        fn any_order_of_the_same_records_derives_the_same_map(
            recs in proptest::collection::vec((0u32..12, 1u64..6, 0u8..4, any::<bool>()), 1..40),
            seed in any::<u64>(),
        ) {
            let rules = MapRules { remove_after: Duration::from_secs(50), ..Default::default() };
            let now = 100_000u64;
            let items: Vec<(NodeIdentity, Standing)> = recs.iter().map(|&(i, g, s, leaving)| {
                let st = match s { 0 => Standing::Alive, 1 => Standing::Suspect, 2 => Standing::Down { since_ms: now - 10_000 }, _ => Standing::Down { since_ms: now - 60_000 } };
                (ident(i, g, leaving), st)
            }).collect();
            let a = derive(items.iter().map(|(i, s)| (i, *s)), now, &rules);
            let mut shuffled: Vec<&(NodeIdentity, Standing)> = items.iter().collect();
            let mut x = seed;
            for k in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(k, (x >> 33) as usize % (k + 1));
            }
            let b = derive(shuffled.into_iter().map(|(i, s)| (i, *s)), now, &rules);
            prop_assert_eq!(a, b);
        }
    }
}
