//! The status page (`/` on the admin port) and the JSON it reads.
//!
//! - `GET /`: one self-contained HTML page (`page.html`, compiled into the binary: no external
//!   assets, so it works on an air-gapped cluster). It refreshes itself every few seconds.
//! - `GET /v1/node[?id=ID]`: a [`NodeReport`] of this node, or of member `ID` (asked over the
//!   authenticated peer transport, `GET /status`, within [`NODE_TIMEOUT`]).
//! - `GET /v1/pool[?sample=N&nodes=A,B]`: a [`PoolReport`]: member counts by state, zone and rack
//!   from this node's own membership view (no member is asked for them), the members needing
//!   attention first, and [`NodeReport`]s of at most `sample` members (default
//!   [`DEFAULT_SAMPLE`], at most [`MAX_SAMPLE`]), gathered on demand with bounded fan-out
//!   (`fanout.rs`). Nothing polls the members between two calls.

pub mod fanout;
pub mod hot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use cairn_core::cluster::NodeEntry;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::server::{MemberRow, MembersAnswer};
use crate::state::NodeState;

/// The page itself.
pub const PAGE: &str = include_str!("page.html");
/// Members a pool report asks for detail when the call does not say.
pub const DEFAULT_SAMPLE: usize = 8;
/// Members one pool report asks for detail at most, whatever the call says.
pub const MAX_SAMPLE: usize = 32;
/// Members asked at the same time.
pub const FANOUT_CONCURRENCY: usize = 8;
/// How long a member has to answer for the status page.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Members needing attention listed at most (the counts include all of them).
pub const MAX_ATTENTION: usize = 100;
/// Racks listed at most in a pool report (those with members needing attention first).
pub const MAX_RACKS: usize = 200;
/// Hot objects in a node report.
pub const HOT_SHOWN: usize = 10;
/// Preload jobs in a node report (running first).
pub const LOADS_SHOWN: usize = 20;
/// Membership events in a node report.
pub const EVENTS_SHOWN: usize = 20;

/// One node's figures, as the page shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub zone: String,
    pub rack: String,
    /// Peer address (empty without a cluster).
    pub addr: String,
    pub version: String,
    pub uptime_secs: u64,
    pub tiers: Tiers,
    pub chunk_hits_ram: u64,
    pub chunk_hits_disk: u64,
    pub chunk_misses: u64,
    /// Hits over hits and misses since start (null before the first chunk read).
    pub hit_ratio: Option<f64>,
    pub bytes_served: u64,
    pub origin_bytes: u64,
    /// Bytes served that did not come from an origin.
    pub origin_bytes_saved: u64,
    pub origin_errors: u64,
    pub peer_in_bytes: u64,
    pub peer_out_bytes: u64,
    pub pending: Pending,
    pub loads: Vec<crate::load::LoadStatus>,
    pub events: Vec<crate::gossip::MemberEvent>,
    pub hot: Vec<hot::HotObject>,
}

/// Bytes used and capacity of each tier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tiers {
    pub ram_used: u64,
    pub ram_capacity: u64,
    pub disk_used: u64,
    pub disk_capacity: u64,
    pub kv_ram_used: u64,
    pub kv_ram_capacity: u64,
    pub kv_disk_used: u64,
    pub kv_disk_capacity: u64,
}

/// Write-back on one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    /// Writes waiting for their upload.
    pub uploads: u64,
    pub bytes: u64,
    pub dirty_bytes: u64,
    pub dirty_max: u64,
    /// Age of the oldest pending upload (0 when none).
    pub oldest_age_secs: f64,
    pub replicas: u64,
    pub uploaded_total: u64,
    pub last_error: Option<String>,
}

/// Members in each state.
pub type StateCounts = BTreeMap<String, u64>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RackCounts {
    pub zone: String,
    pub rack: String,
    pub states: StateCounts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ZoneCounts {
    pub zone: String,
    pub states: StateCounts,
    pub racks: u64,
}

/// What one member asked for detail answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Detail {
    pub id: String,
    /// Null when the member could not be reached; `error` says why.
    pub report: Option<NodeReport>,
    pub error: Option<String>,
}

/// The pool at a glance, from one node's view.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolReport {
    /// The node that answered.
    pub node: String,
    /// `gossip`, `map`, or `single` (no cluster).
    pub mode: String,
    pub map_version: String,
    pub members: u64,
    pub states: StateCounts,
    pub zones: Vec<ZoneCounts>,
    pub racks: Vec<RackCounts>,
    /// Racks not listed (past [`MAX_RACKS`]).
    pub racks_omitted: u64,
    /// Members not alive/up, the worst first (at most [`MAX_ATTENTION`]).
    pub attention: Vec<MemberRow>,
    pub attention_total: u64,
    /// Members asked for detail, and the most one call asks.
    pub sample_limit: usize,
    pub details: Vec<Detail>,
}

/// This node's report.
pub fn node_report(state: &NodeState) -> NodeReport {
    let m = &state.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let store = state.reader.store();
    let s = store.stats();
    let (hits_ram, hits_disk, misses) = (get(&s.ram_hits), get(&s.disk_hits), get(&s.misses));
    let reads = hits_ram + hits_disk + misses;
    let served = get(&m.bytes_served);
    let origin = get(&m.origin_bytes);
    let wb = state.writeback.summary(None, "", u64::MAX);
    let cfg = &state.config;
    let (kv_ram_used, kv_disk_used) =
        state.kv.as_ref().map(|k| (k.store.ram_used(), k.store.disk_used())).unwrap_or((0, 0));
    let (zone, rack, addr) = match &state.cluster {
        Some(c) => {
            let me = c.node(&c.node_id);
            (
                cfg.cluster.zone.clone(),
                cfg.cluster.rack.clone(),
                me.map(|n| n.addr).unwrap_or_else(|| cfg.cluster.advertise.clone()),
            )
        }
        None => (cfg.cluster.zone.clone(), cfg.cluster.rack.clone(), String::new()),
    };
    let mut loads = state.loads.list();
    loads.truncate(LOADS_SHOWN);
    let mut events = state.cluster.as_ref().and_then(|c| c.gossip.get()).map(|g| g.recent_events()).unwrap_or_default();
    events.truncate(EVENTS_SHOWN);
    NodeReport {
        node: node_id(state),
        zone,
        rack,
        addr,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started.elapsed().as_secs(),
        tiers: Tiers {
            ram_used: store.ram_used(),
            ram_capacity: cfg.cache.ram_capacity.bytes(),
            disk_used: store.disk_used(),
            disk_capacity: cfg.cache.disk_capacity.bytes(),
            kv_ram_used,
            kv_ram_capacity: if state.kv.is_some() { cfg.kv.ram_capacity.bytes() } else { 0 },
            kv_disk_used,
            kv_disk_capacity: if state.kv.is_some() { cfg.kv.disk_capacity.bytes() } else { 0 },
        },
        chunk_hits_ram: hits_ram,
        chunk_hits_disk: hits_disk,
        chunk_misses: misses,
        hit_ratio: (reads > 0).then(|| (hits_ram + hits_disk) as f64 / reads as f64),
        bytes_served: served,
        origin_bytes: origin,
        origin_bytes_saved: served.saturating_sub(origin),
        origin_errors: get(&m.origin_errors),
        peer_in_bytes: get(&m.peer_ingress_owner) + get(&m.peer_ingress_holder),
        peer_out_bytes: get(&m.peer_egress_owner) + get(&m.peer_egress_near) + get(&m.peer_egress_replica),
        pending: Pending {
            uploads: wb.objects,
            bytes: wb.bytes,
            dirty_bytes: wb.dirty_bytes,
            dirty_max: cfg.writeback.dirty_max.bytes(),
            oldest_age_secs: wb.oldest_age_secs,
            replicas: wb.replicas,
            uploaded_total: get(&state.writeback.stats.uploads),
            last_error: wb.last_error,
        },
        loads,
        events,
        hot: m.hot.top(HOT_SHOWN),
    }
}

fn node_id(state: &NodeState) -> String {
    match &state.cluster {
        Some(c) => c.node_id.clone(),
        None => state.config.cluster.node_id.clone(),
    }
}

/// Asks member `id` for its report over the peer transport.
async fn remote_report(state: &NodeState, entry: NodeEntry) -> Result<NodeReport, String> {
    let cluster = state.cluster.as_ref().ok_or("this node is not in a cluster")?;
    let (_, body) = cluster.call(&entry, Method::GET, "/status".into(), Bytes::new()).await.map_err(|e| match e {
        crate::cluster::PeerError::Unavailable(m) => m,
        crate::cluster::PeerError::Origin(o) => o.to_string(),
    })?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed report from {}: {e}", entry.id))
}

/// `GET /v1/node?id=ID`: this node's report, or member `ID`'s.
pub async fn node_answer(state: &Arc<NodeState>, id: Option<&str>) -> Result<NodeReport, (u16, String)> {
    let me = node_id(state);
    let Some(id) = id.filter(|i| !i.is_empty() && *i != me) else {
        return Ok(node_report(state));
    };
    let Some(cluster) = &state.cluster else {
        return Err((404, format!("no member {id:?}: this node is not in a cluster")));
    };
    let answer = crate::server::member_rows(cluster);
    let Some(row) = answer.members.iter().find(|r| r.id == id) else {
        return Err((404, format!("no member {id:?} in this node's view")));
    };
    let entry = entry_of(row);
    let answers =
        fanout::gather(vec![entry], 1, 1, NODE_TIMEOUT, |e| async move { remote_report(state, e).await }).await;
    match answers.into_iter().next().map(|(_, a)| a) {
        Some(fanout::Answer::Ok(r)) => Ok(r),
        Some(fanout::Answer::Failed(e)) => Err((502, format!("{id} cannot be reached: {e}"))),
        Some(fanout::Answer::TimedOut(t)) => Err((504, format!("{id} did not answer within {t:?}"))),
        None => Err((502, format!("{id} was not asked"))),
    }
}

fn entry_of(row: &MemberRow) -> NodeEntry {
    NodeEntry {
        id: row.id.clone(),
        addr: row.addr.clone(),
        zone: row.zone.clone(),
        rack: row.rack.clone(),
        weight: row.weight,
        state: cairn_core::cluster::NodeState::Up,
    }
}

/// How urgently a member in `state` needs a look (lower first); alive and up members are fine.
fn urgency(state: &str) -> Option<u8> {
    match state {
        "dead" | "down" => Some(0),
        "suspect" => Some(1),
        "left" => Some(2),
        _ => None,
    }
}

/// `GET /v1/pool`: the pool from this node's view, with details of at most `sample` members
/// (those named in `named` first).
pub async fn pool_answer(state: &Arc<NodeState>, sample: usize, named: &[String]) -> PoolReport {
    let sample = sample.min(MAX_SAMPLE);
    let me = node_id(state);
    let Some(cluster) = &state.cluster else {
        let report = node_report(state);
        return PoolReport {
            node: me.clone(),
            mode: "single".into(),
            members: 1,
            states: BTreeMap::from([("alive".to_owned(), 1)]),
            zones: vec![ZoneCounts {
                zone: report.zone.clone(),
                states: BTreeMap::from([("alive".into(), 1)]),
                racks: 1,
            }],
            racks: vec![RackCounts {
                zone: report.zone.clone(),
                rack: report.rack.clone(),
                states: BTreeMap::from([("alive".into(), 1)]),
            }],
            sample_limit: sample,
            details: vec![Detail { id: me, report: Some(report), error: None }],
            ..Default::default()
        };
    };
    let answer = crate::server::member_rows(cluster);
    let mut report = summarize(&answer);
    report.sample_limit = sample;

    // Details: this node itself without a call, then the named, the ones needing attention and a
    // random few, asked in parallel with a deadline each.
    let mut others: Vec<String> = answer.members.iter().filter(|r| !r.this_node).map(|r| r.id.clone()).collect();
    {
        use rand::seq::SliceRandom;
        others.shuffle(&mut rand::rng());
    }
    let attention: Vec<String> = report.attention.iter().map(|r| r.id.clone()).collect();
    let named: Vec<String> = named.iter().filter(|n| **n != me).cloned().collect();
    let picked = fanout::pick(&named, &attention, &others, sample.saturating_sub(1));
    let by_id: BTreeMap<&str, &MemberRow> = answer.members.iter().map(|r| (r.id.as_str(), r)).collect();
    let targets: Vec<NodeEntry> = picked.iter().filter_map(|id| by_id.get(id.as_str()).map(|r| entry_of(r))).collect();
    let answers =
        fanout::gather(
            targets,
            sample,
            FANOUT_CONCURRENCY,
            NODE_TIMEOUT,
            |e| async move { remote_report(state, e).await },
        )
        .await;
    if sample > 0 {
        report.details.push(Detail { id: me, report: Some(node_report(state)), error: None });
    }
    for (entry, a) in answers {
        let (report_of, error) = match a {
            fanout::Answer::Ok(r) => (Some(r), None),
            fanout::Answer::Failed(e) => (None, Some(e)),
            fanout::Answer::TimedOut(t) => (None, Some(format!("no answer within {t:?}"))),
        };
        report.details.push(Detail { id: entry.id, report: report_of, error });
    }
    report
}

/// Counts by state, zone and rack, and the members needing attention, from a member list.
pub fn summarize(answer: &MembersAnswer) -> PoolReport {
    let mut out = PoolReport {
        node: answer.node.clone(),
        mode: answer.mode.clone(),
        map_version: answer.map_version.clone(),
        ..Default::default()
    };
    // The newest generation of each id only (rows are sorted by id, newest generation first).
    let mut seen = std::collections::HashSet::new();
    let mut zones: BTreeMap<&str, (StateCounts, std::collections::BTreeSet<&str>)> = BTreeMap::new();
    let mut racks: BTreeMap<(&str, &str), StateCounts> = BTreeMap::new();
    let mut attention: Vec<&MemberRow> = Vec::new();
    for r in &answer.members {
        if !seen.insert(r.id.as_str()) {
            continue;
        }
        out.members += 1;
        *out.states.entry(r.state.clone()).or_default() += 1;
        let z = zones.entry(r.zone.as_str()).or_default();
        *z.0.entry(r.state.clone()).or_default() += 1;
        z.1.insert(r.rack.as_str());
        *racks.entry((r.zone.as_str(), r.rack.as_str())).or_default().entry(r.state.clone()).or_default() += 1;
        if urgency(&r.state).is_some() {
            attention.push(r);
        }
    }
    attention.sort_by_key(|r| (urgency(&r.state), r.heard_ms_ago.map(std::cmp::Reverse), r.id.clone()));
    out.attention_total = attention.len() as u64;
    out.attention = attention.into_iter().take(MAX_ATTENTION).cloned().collect();
    out.zones = zones
        .into_iter()
        .map(|(zone, (states, r))| ZoneCounts { zone: zone.to_owned(), states, racks: r.len() as u64 })
        .collect();
    let needs = |s: &StateCounts| s.iter().filter(|(k, _)| urgency(k).is_some()).map(|(_, n)| *n).sum::<u64>();
    let mut racks: Vec<RackCounts> = racks
        .into_iter()
        .map(|((zone, rack), states)| RackCounts { zone: zone.to_owned(), rack: rack.to_owned(), states })
        .collect();
    racks.sort_by(|a, b| needs(&b.states).cmp(&needs(&a.states)).then(a.zone.cmp(&b.zone)).then(a.rack.cmp(&b.rack)));
    out.racks_omitted = racks.len().saturating_sub(MAX_RACKS) as u64;
    racks.truncate(MAX_RACKS);
    out.racks = racks;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: &str, zone: &str, rack: &str, generation: u64) -> MemberRow {
        MemberRow {
            id: id.into(),
            state: state.into(),
            map: "up".into(),
            addr: format!("{id}:1"),
            zone: zone.into(),
            rack: rack.into(),
            weight: 100,
            incarnation: 0,
            generation,
            heard_ms_ago: None,
            this_node: id == "n0",
        }
    }

    #[test]
    fn counts_by_state_zone_and_rack_with_attention_first() {
        let answer = MembersAnswer {
            node: "n0".into(),
            mode: "gossip".into(),
            map_version: "0".into(),
            members: vec![
                row("n0", "alive", "z1", "r1", 1),
                row("n1", "suspect", "z1", "r1", 1),
                row("n2", "alive", "z1", "r2", 2),
                row("n2", "dead", "z1", "r2", 1), // an older generation: not counted
                row("n3", "dead", "z2", "r9", 1),
                row("n4", "left", "z2", "r9", 1),
            ],
        };
        let p = summarize(&answer);
        assert_eq!(p.members, 5);
        assert_eq!(
            p.states,
            BTreeMap::from([("alive".into(), 2), ("dead".into(), 1), ("left".into(), 1), ("suspect".into(), 1)])
        );
        let ids: Vec<&str> = p.attention.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["n3", "n1", "n4"]);
        assert_eq!(p.attention_total, 3);
        assert_eq!(p.zones.len(), 2);
        assert_eq!(p.zones[0].racks, 2);
        let racks: Vec<(&str, &str)> = p.racks.iter().map(|r| (r.zone.as_str(), r.rack.as_str())).collect();
        assert_eq!(racks, vec![("z2", "r9"), ("z1", "r1"), ("z1", "r2")]);
    }

    #[test]
    fn racks_listed_are_bounded() {
        let members: Vec<MemberRow> =
            (0..MAX_RACKS + 50).map(|i| row(&format!("n{i}"), "alive", "z", &format!("r{i}"), 1)).collect();
        let answer = MembersAnswer { node: "n0".into(), mode: "gossip".into(), map_version: "0".into(), members };
        let p = summarize(&answer);
        assert_eq!(p.racks.len(), MAX_RACKS);
        assert_eq!(p.racks_omitted, 50);
        assert_eq!(p.members, (MAX_RACKS + 50) as u64);
    }
}
