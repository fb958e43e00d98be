//! Prometheus metrics, rendered in the text exposition format.
//!
//! Counters are plain atomics bumped on the data path; the store's own counters are read when
//! `/metrics` is scraped. Latency histograms are per S3 operation with fixed buckets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_store::ChunkStore;
use parking_lot::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Heap figures from the process's allocator (see the binary's global allocator).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocatorStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in pages the allocator has handed out (live allocations plus their rounding).
    pub active: u64,
    /// Bytes of the allocator's memory that are resident (what it adds to RSS).
    pub resident: u64,
    /// Bytes mapped and kept for reuse but returned to the OS (not resident).
    pub retained: u64,
}

/// Reads [`AllocatorStats`]; set once by the binary, absent in tests and other embeddings.
static ALLOCATOR_STATS: OnceLock<fn() -> Option<AllocatorStats>> = OnceLock::new();

/// Makes `/metrics` report the allocator's figures as `cairn_allocator_bytes{kind}`.
pub fn set_allocator_stats(read: fn() -> Option<AllocatorStats>) {
    let _ = ALLOCATOR_STATS.set(read);
}

#[derive(Default)]
pub struct Metrics {
    pub bytes_served: AtomicU64,
    pub origin_bytes: AtomicU64,
    pub origin_errors: AtomicU64,
    pub origin_get_range: AtomicU64,
    pub origin_head: AtomicU64,
    pub origin_revalidate: AtomicU64,
    pub origin_put: AtomicU64,
    pub origin_delete: AtomicU64,
    pub origin_list: AtomicU64,
    pub singleflight_waits: AtomicU64,
    pub readahead_chunks: AtomicU64,
    pub metadata_hits: AtomicU64,
    pub metadata_misses: AtomicU64,
    pub version_changes: AtomicU64,
    pub connections_open: AtomicU64,
    pub peer_requests: AtomicU64,
    pub peer_bytes: AtomicU64,
    pub peer_failovers: AtomicU64,
    pub peer_served: AtomicU64,
    pub peer_refused: AtomicU64,
    pub peer_slow: AtomicU64,
    pub peer_hedges: AtomicU64,
    pub peer_probes_failed: AtomicU64,
    /// Chunk bytes sent to peers as the chunk's owner.
    pub peer_egress_owner: AtomicU64,
    /// Chunk bytes sent to peers as a holder an owner handed them to (a near-cache copy).
    pub peer_egress_near: AtomicU64,
    /// Chunk bytes sent to peers from replicas of pending writes.
    pub peer_egress_replica: AtomicU64,
    pub peer_ingress_owner: AtomicU64,
    pub peer_ingress_holder: AtomicU64,
    pub p2p_handoffs: AtomicU64,
    pub p2p_reselections: AtomicU64,
    pub p2p_bad_copies: AtomicU64,
    pub upload_slot_waits: AtomicU64,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn observe(&self, op: &'static str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.latency.lock();
        let h = m.entry(op).or_default();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn error(&self, op: &'static str, code: &str) {
        *self.errors.lock().entry((op, code.to_owned())).or_default() += 1;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, store: &ChunkStore) -> String {
        let mut out = String::with_capacity(8192);
        let s = store.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "cairn_chunk_hits_total",
            "Chunk reads served from the cache, by tier.",
            &[("tier=\"ram\"", get(&s.ram_hits)), ("tier=\"disk\"", get(&s.disk_hits))],
        );
        counter(&mut out, "cairn_chunk_misses_total", "Chunk reads found in no tier.", &[("", get(&s.misses))]);
        counter(
            &mut out,
            "cairn_evictions_total",
            "Chunks evicted, by tier.",
            &[("tier=\"ram\"", get(&s.ram_evictions)), ("tier=\"disk\"", get(&s.disk_evictions))],
        );
        counter(
            &mut out,
            "cairn_corrupt_chunks_total",
            "Disk chunks that failed their checksum and were refetched.",
            &[("", get(&s.corrupt_chunks))],
        );
        counter(
            &mut out,
            "cairn_disk_write_errors_total",
            "Failed writes to the disk tier.",
            &[("", get(&s.disk_write_errors))],
        );
        counter(
            &mut out,
            "cairn_disk_writes_skipped_total",
            "Cache fills not written to disk because its queue was full.",
            &[("", get(&s.disk_writes_skipped))],
        );
        counter(
            &mut out,
            "cairn_disk_fills_skipped_for_space_total",
            "Cache fills not written to disk: they would have left less than the free-space reserve.",
            &[("", get(&s.disk_fills_skipped_for_space))],
        );
        counter(
            &mut out,
            "cairn_disk_evictions_for_writes_total",
            "Disk-tier chunks evicted to make room for write-back journal entries and staged parts.",
            &[("", get(&s.disk_evictions_for_writes))],
        );
        if let Some((reserve, free)) = store.disk_reserve_and_free() {
            gauge(
                &mut out,
                "cairn_disk_free_bytes",
                "Bytes free on the disk tier's device, and the reserve the tier leaves free.",
                &[("kind=\"free\"", free), ("kind=\"reserve\"", reserve)],
            );
        }
        gauge(
            &mut out,
            "cairn_cache_bytes",
            "Bytes held, by tier.",
            &[("tier=\"ram\"", store.ram_used()), ("tier=\"disk\"", store.disk_used())],
        );
        counter(
            &mut out,
            "cairn_bytes_served_total",
            "Object bytes sent to clients.",
            &[("", get(&self.bytes_served))],
        );
        counter(&mut out, "cairn_origin_bytes_total", "Bytes read from origins.", &[("", get(&self.origin_bytes))]);
        counter(
            &mut out,
            "cairn_origin_requests_total",
            "Requests sent to origins, by operation.",
            &[
                ("op=\"get_range\"", get(&self.origin_get_range)),
                ("op=\"head\"", get(&self.origin_head)),
                ("op=\"revalidate\"", get(&self.origin_revalidate)),
                ("op=\"put\"", get(&self.origin_put)),
                ("op=\"delete\"", get(&self.origin_delete)),
                ("op=\"list\"", get(&self.origin_list)),
            ],
        );
        counter(
            &mut out,
            "cairn_origin_errors_total",
            "Origin requests that failed.",
            &[("", get(&self.origin_errors))],
        );
        counter(
            &mut out,
            "cairn_singleflight_waits_total",
            "Chunk misses that waited on a fetch already in flight.",
            &[("", get(&self.singleflight_waits))],
        );
        counter(
            &mut out,
            "cairn_readahead_chunks_total",
            "Chunks fetched ahead of sequential readers.",
            &[("", get(&self.readahead_chunks))],
        );
        counter(
            &mut out,
            "cairn_metadata_lookups_total",
            "Object metadata lookups, by result.",
            &[("result=\"hit\"", get(&self.metadata_hits)), ("result=\"miss\"", get(&self.metadata_misses))],
        );
        counter(
            &mut out,
            "cairn_version_changes_total",
            "Objects found changed at the origin.",
            &[("", get(&self.version_changes))],
        );
        gauge(&mut out, "cairn_connections_open", "Client connections open.", &[("", get(&self.connections_open))]);
        counter(&mut out, "cairn_peer_requests_total", "Requests sent to peers.", &[("", get(&self.peer_requests))]);
        counter(&mut out, "cairn_peer_bytes_total", "Chunk bytes received from peers.", &[("", get(&self.peer_bytes))]);
        counter(
            &mut out,
            "cairn_peer_failovers_total",
            "Peers that failed a request and were marked suspect.",
            &[("", get(&self.peer_failovers))],
        );
        counter(
            &mut out,
            "cairn_peer_hedges_total",
            "Chunk requests also sent to the next node because the first was slower than the hedge delay.",
            &[("", get(&self.peer_hedges))],
        );
        counter(
            &mut out,
            "cairn_peer_egress_bytes_total",
            "Chunk bytes sent to peers, by this node's role: the chunk's owner, a holder of a near-cache copy an owner handed the peer to, or a replica holder of a pending write.",
            &[
                ("role=\"owner\"", get(&self.peer_egress_owner)),
                ("role=\"near\"", get(&self.peer_egress_near)),
                ("role=\"replica\"", get(&self.peer_egress_replica)),
            ],
        );
        counter(
            &mut out,
            "cairn_peer_ingress_bytes_total",
            "Chunk bytes this node's reads received from peers, by source: the chunk's owner or a holder it handed this node to.",
            &[
                ("source=\"owner\"", get(&self.peer_ingress_owner)),
                ("source=\"holder\"", get(&self.peer_ingress_holder)),
            ],
        );
        counter(
            &mut out,
            "cairn_p2p_handoffs_total",
            "Chunk requests this node answered as owner with holders to fetch from.",
            &[("", get(&self.p2p_handoffs))],
        );
        counter(
            &mut out,
            "cairn_p2p_reselections_total",
            "Holders that could not serve a chunk (gone, busy, not holding it, or wrong bytes), so the next one or the owner was asked.",
            &[("", get(&self.p2p_reselections))],
        );
        counter(
            &mut out,
            "cairn_p2p_bad_copies_total",
            "Chunks from holders whose bytes did not match the owner's digest (discarded).",
            &[("", get(&self.p2p_bad_copies))],
        );
        counter(
            &mut out,
            "cairn_upload_slot_waits_total",
            "Chunk requests that waited for one of this node's upload slots (cluster.upload_slots).",
            &[("", get(&self.upload_slot_waits))],
        );
        counter(
            &mut out,
            "cairn_peer_probes_failed_total",
            "Peers slow to answer that then failed a liveness probe (frozen or gone).",
            &[("", get(&self.peer_probes_failed))],
        );
        counter(
            &mut out,
            "cairn_peer_served_total",
            "Peer requests this node served.",
            &[("", get(&self.peer_served))],
        );
        counter(
            &mut out,
            "cairn_peer_refused_total",
            "Peer requests refused for a missing or wrong secret.",
            &[("", get(&self.peer_refused))],
        );

        let errors = self.errors.lock();
        let _ =
            writeln!(out, "# HELP cairn_s3_errors_total S3 requests answered with an error, by operation and code.");
        let _ = writeln!(out, "# TYPE cairn_s3_errors_total counter");
        for ((op, code), n) in errors.iter() {
            let _ = writeln!(out, "cairn_s3_errors_total{{op=\"{op}\",code=\"{code}\"}} {n}");
        }
        drop(errors);

        let lat = self.latency.lock();
        let name = "cairn_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} S3 request latency to the response head, by operation.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (op, h) in lat.iter() {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"{le}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{op=\"{op}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {}", h.count);
        }
        drop(lat);
        if let Some(a) = ALLOCATOR_STATS.get().and_then(|read| read()) {
            gauge(
                &mut out,
                "cairn_allocator_bytes",
                "Heap bytes as the allocator counts them: live allocations, active pages, resident, retained.",
                &[
                    ("kind=\"allocated\"", a.allocated),
                    ("kind=\"active\"", a.active),
                    ("kind=\"resident\"", a.resident),
                    ("kind=\"retained\"", a.retained),
                ],
            );
        }
        out
    }
}

/// One metric family in the text format: HELP, TYPE, and a line per (labels, value).
pub fn series(out: &mut String, kind: &str, name: &str, help: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    series(out, "counter", name, help, values);
}

fn gauge(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    series(out, "gauge", name, help, values);
}
