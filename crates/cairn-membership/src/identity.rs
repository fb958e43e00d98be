//! Who a member is, as gossip carries it.

use std::net::SocketAddr;

use cairn_core::cluster::{NodeEntry, NodeState};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// What the membership core needs of an identity. The node uses [`NodeIdentity`]; the
/// simulator uses a compact one so that 100,000 member lists fit in one process.
pub trait Member: foca::Identity + Serialize + DeserializeOwned + std::hash::Hash {
    /// The node id placement hashes (stable across restarts).
    fn node_id(&self) -> &str;
    /// Whether `other` has the same node id (an identity may answer without comparing strings).
    fn same_node(&self, other: &Self) -> bool {
        self.node_id() == other.node_id()
    }
    /// The cell this member runs failure detection in (a hash of its name).
    fn cell(&self) -> u64;
    /// Bumped on every start and rejoin: between two identities of one node, the higher wins.
    fn generation(&self) -> u64;
    /// Left the cluster on purpose (graceful leave): removed from the map at once when down.
    fn leaving(&self) -> bool;
    /// This identity, marked as leaving, with a higher generation.
    fn as_leaving(&self) -> Self;
    /// Stand-in for a seed known only by its address (announces are accepted by address).
    fn placeholder(addr: Self::Addr) -> Self;
    /// The cluster-map entry of this member (state filled in by the caller).
    fn entry(&self) -> NodeEntry;
    /// Unix milliseconds at which this member's cache first joined (its data-moving ramp starts
    /// there; a restart with its disk keeps it, a fresh disk starts a new ramp).
    fn joined_ms(&self) -> u64;
    /// Key of the failure domain (rack) this member shares with the members likely to fail with
    /// it (one power feed, one top-of-rack switch); `None` when unknown.
    fn domain(&self) -> Option<u64>;
}

/// A cairn node on the gossip wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: String,
    /// Gossip (UDP) address; also what seeds are known by.
    pub gossip: SocketAddr,
    /// Peer transport address (`host:port`).
    pub peer: String,
    pub zone: String,
    pub rack: String,
    /// Failure-detection cell (by default the zone).
    pub cell: String,
    pub weight: u32,
    /// Unix milliseconds when the node started, bumped by one on each rejoin.
    pub generation: u64,
    /// Unix milliseconds when this node's cache directory first joined.
    pub joined: u64,
    pub leaving: bool,
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { generation: self.generation + 1, leaving: false, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.leaving) > (adversary.generation, adversary.leaving)
    }
}

impl Member for NodeIdentity {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn cell(&self) -> u64 {
        cell_key(&self.cell)
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn leaving(&self) -> bool {
        self.leaving
    }

    fn as_leaving(&self) -> Self {
        Self { generation: self.generation + 1, leaving: true, ..self.clone() }
    }

    fn placeholder(addr: SocketAddr) -> Self {
        Self {
            id: String::new(),
            gossip: addr,
            peer: String::new(),
            zone: String::new(),
            rack: String::new(),
            cell: String::new(),
            weight: 0,
            generation: 0,
            joined: 0,
            leaving: false,
        }
    }

    fn entry(&self) -> NodeEntry {
        NodeEntry {
            id: self.id.clone(),
            addr: self.peer.clone(),
            zone: self.zone.clone(),
            rack: self.rack.clone(),
            weight: self.weight,
            state: NodeState::Up,
        }
    }

    fn joined_ms(&self) -> u64 {
        self.joined
    }

    fn domain(&self) -> Option<u64> {
        if self.rack.is_empty() {
            return None;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x4ac4);
        h.update(self.zone.as_bytes());
        h.update(&[0]);
        h.update(self.rack.as_bytes());
        Some(h.digest())
    }
}

/// The key of a cell name.
pub fn cell_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), 0xce11)
}
