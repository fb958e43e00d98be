//! The cluster map: a versioned description of the nodes (id, peer address, zone, rack, weight,
//! state). Placement is a pure function of it; the order its entries come in does not matter.
//!
//! ```toml
//! version = 7
//! [[node]]
//! id = "gpu-0042"
//! addr = "10.1.4.42:9100"   # peer address
//! zone = "eastus-1"
//! rack = "r17"
//! weight = 100               # relative capacity
//! state = "up"               # or "down"
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Up,
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: String,
    /// Peer transport address (`host:port`).
    pub addr: String,
    #[serde(default = "default_domain")]
    pub zone: String,
    #[serde(default = "default_domain")]
    pub rack: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
}

fn default_domain() -> String {
    "default".into()
}

fn default_weight() -> u32 {
    100
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterMap {
    pub version: u64,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

impl ClusterMap {
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let map: ClusterMap = toml::from_str(s)?;
        map.validate()?;
        Ok(map)
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for n in &self.nodes {
            if n.id.is_empty() || !ids.insert(n.id.as_str()) {
                return Err(ConfigError::Invalid(format!("cluster map: node id {:?} is empty or repeated", n.id)));
            }
            if n.weight == 0 {
                return Err(ConfigError::Invalid(format!("cluster map: node {:?} has weight 0", n.id)));
            }
            if n.addr.is_empty() {
                return Err(ConfigError::Invalid(format!("cluster map: node {:?} has no addr", n.id)));
            }
        }
        Ok(())
    }

    pub fn node(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let m = ClusterMap::from_toml_str(
            "version = 3\n[[node]]\nid = \"a\"\naddr = \"127.0.0.1:1\"\n[[node]]\nid = \"b\"\naddr = \"127.0.0.2:1\"\nzone = \"z2\"\nrack = \"r9\"\nweight = 50\nstate = \"down\"\n",
        )
        .expect("parses");
        assert_eq!(m.version, 3);
        assert_eq!(m.nodes[0].weight, 100);
        assert_eq!(m.nodes[0].zone, "default");
        assert_eq!(m.nodes[1].state, NodeState::Down);
        assert_eq!(ClusterMap::from_toml_str(&m.to_toml_string()).expect("round trip"), m);
        assert!(
            ClusterMap::from_toml_str(
                "version = 1\n[[node]]\nid = \"a\"\naddr = \"x\"\n[[node]]\nid = \"a\"\naddr = \"y\"\n"
            )
            .is_err()
        );
        assert!(ClusterMap::from_toml_str("version = 1\n[[node]]\nid = \"a\"\naddr = \"x\"\nweight = 0\n").is_err());
    }
}
