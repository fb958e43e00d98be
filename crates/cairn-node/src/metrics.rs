//! Prometheus metrics: counters bumped on the data path as plain atomics, read when `/metrics` is
//! scraped and encoded by `prometheus-client` (Prometheus text format 0.0.4).
//!
//! Each scrape gathers a [`Scrape`]: a list of metric families with their current values. The
//! families are registered as one `prometheus-client` collector and encoded by the library, so the
//! exposition (names, escaping, `_total` suffixes, cumulative histogram buckets) is its work.
//! Labels name bounded sets only (tiers, operations, listeners, states): never keys or objects.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_store::ChunkStore;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Upper bounds of the S3 latency buckets, in seconds: 100 µs (a RAM hit) to 10 s (a slow origin).
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
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
    pub client_chunks: AtomicU64,
    pub client_refused: AtomicU64,
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
    /// The objects that served the most bytes (a fixed-size top-K, for the status page).
    pub hot: crate::status::hot::HotObjects,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
}

/// An S3 operation's latency counts: per bucket (not cumulative; the encoder adds them up).
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
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            h.counts[i] += 1;
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

    /// Adds the node's own series and its chunk store's to `out`.
    pub fn collect(&self, store: &ChunkStore, out: &mut Scrape) {
        let s = store.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.counters(
            "cairn_chunk_hits_total",
            "Chunk reads served from the cache, by tier.",
            "tier",
            &[("ram", get(&s.ram_hits)), ("disk", get(&s.disk_hits))],
        );
        out.counter("cairn_chunk_misses_total", "Chunk reads found in no tier.", get(&s.misses));
        out.counters(
            "cairn_evictions_total",
            "Chunks evicted, by tier.",
            "tier",
            &[("ram", get(&s.ram_evictions)), ("disk", get(&s.disk_evictions))],
        );
        out.counter(
            "cairn_corrupt_chunks_total",
            "Disk chunks that failed their checksum and were refetched.",
            get(&s.corrupt_chunks),
        );
        out.counter("cairn_disk_write_errors_total", "Failed writes to the disk tier.", get(&s.disk_write_errors));
        out.counter(
            "cairn_disk_writes_skipped_total",
            "Cache fills not written to disk because its queue was full.",
            get(&s.disk_writes_skipped),
        );
        out.counter(
            "cairn_disk_fills_skipped_for_space_total",
            "Cache fills not written to disk: they would have left less than the free-space reserve.",
            get(&s.disk_fills_skipped_for_space),
        );
        out.counter(
            "cairn_disk_evictions_for_writes_total",
            "Disk-tier chunks evicted to make room for write-back journal entries and staged parts.",
            get(&s.disk_evictions_for_writes),
        );
        if let Some((reserve, free)) = store.disk_reserve_and_free() {
            out.gauges(
                "cairn_disk_free_bytes",
                "Bytes free on the disk tier's device, and the reserve the tier leaves free.",
                "kind",
                &[("free", free), ("reserve", reserve)],
            );
        }
        out.gauges(
            "cairn_cache_bytes",
            "Bytes held, by tier.",
            "tier",
            &[("ram", store.ram_used()), ("disk", store.disk_used())],
        );
        out.counter("cairn_bytes_served_total", "Object bytes sent to clients.", get(&self.bytes_served));
        out.counter("cairn_origin_bytes_total", "Bytes read from origins.", get(&self.origin_bytes));
        out.counters(
            "cairn_origin_requests_total",
            "Requests sent to origins, by operation.",
            "op",
            &[
                ("get_range", get(&self.origin_get_range)),
                ("head", get(&self.origin_head)),
                ("revalidate", get(&self.origin_revalidate)),
                ("put", get(&self.origin_put)),
                ("delete", get(&self.origin_delete)),
                ("list", get(&self.origin_list)),
            ],
        );
        out.counter("cairn_origin_errors_total", "Origin requests that failed.", get(&self.origin_errors));
        out.counter(
            "cairn_singleflight_waits_total",
            "Chunk misses that waited on a fetch already in flight.",
            get(&self.singleflight_waits),
        );
        out.counter(
            "cairn_readahead_chunks_total",
            "Chunks fetched ahead of sequential readers.",
            get(&self.readahead_chunks),
        );
        out.counters(
            "cairn_metadata_lookups_total",
            "Object metadata lookups, by result.",
            "result",
            &[("hit", get(&self.metadata_hits)), ("miss", get(&self.metadata_misses))],
        );
        out.counter("cairn_version_changes_total", "Objects found changed at the origin.", get(&self.version_changes));
        out.gauge("cairn_connections_open", "Client connections open.", get(&self.connections_open));
        out.counter("cairn_peer_requests_total", "Requests sent to peers.", get(&self.peer_requests));
        out.counter("cairn_peer_bytes_total", "Chunk bytes received from peers.", get(&self.peer_bytes));
        out.counter(
            "cairn_peer_failovers_total",
            "Peers that failed a request and were marked suspect.",
            get(&self.peer_failovers),
        );
        out.counter(
            "cairn_peer_hedges_total",
            "Chunk requests also sent to the next node because the first was slower than the hedge delay.",
            get(&self.peer_hedges),
        );
        out.counters(
            "cairn_peer_egress_bytes_total",
            "Chunk bytes sent to peers, by this node's role: the chunk's owner, a holder of a near-cache copy an owner handed the peer to, or a replica holder of a pending write.",
            "role",
            &[
                ("owner", get(&self.peer_egress_owner)),
                ("near", get(&self.peer_egress_near)),
                ("replica", get(&self.peer_egress_replica)),
            ],
        );
        out.counters(
            "cairn_peer_ingress_bytes_total",
            "Chunk bytes this node's reads received from peers, by source: the chunk's owner or a holder it handed this node to.",
            "source",
            &[("owner", get(&self.peer_ingress_owner)), ("holder", get(&self.peer_ingress_holder))],
        );
        out.counter(
            "cairn_p2p_handoffs_total",
            "Chunk requests this node answered as owner with holders to fetch from.",
            get(&self.p2p_handoffs),
        );
        out.counter(
            "cairn_p2p_reselections_total",
            "Holders that could not serve a chunk (gone, busy, not holding it, or wrong bytes), so the next one or the owner was asked.",
            get(&self.p2p_reselections),
        );
        out.counter(
            "cairn_p2p_bad_copies_total",
            "Chunks from holders whose bytes did not match the owner's digest (discarded).",
            get(&self.p2p_bad_copies),
        );
        out.counter(
            "cairn_upload_slot_waits_total",
            "Chunk requests that waited for one of this node's upload slots (cluster.upload_slots).",
            get(&self.upload_slot_waits),
        );
        out.counter(
            "cairn_peer_probes_failed_total",
            "Peers slow to answer that then failed a liveness probe (frozen or gone).",
            get(&self.peer_probes_failed),
        );
        out.counter("cairn_peer_served_total", "Peer requests this node served.", get(&self.peer_served));
        out.counter(
            "cairn_peer_refused_total",
            "Peer requests refused for a missing or wrong secret.",
            get(&self.peer_refused),
        );
        out.counter(
            "cairn_client_chunks_total",
            "Chunks sent to smart clients (the client routes, /_cairn/v1/chunk).",
            get(&self.client_chunks),
        );
        out.counter(
            "cairn_client_refused_total",
            "Client-route requests refused for a missing, unknown or forged signature.",
            get(&self.client_refused),
        );

        let errors: Vec<(Labels, u64)> = self
            .errors
            .lock()
            .iter()
            .map(|((op, code), n)| (vec![("op", (*op).to_owned()), ("code", code.clone())], *n))
            .collect();
        out.counter_family(
            "cairn_s3_errors_total",
            "S3 requests answered with an error, by operation and S3 error code.",
            errors,
        );

        let latency: Vec<(Labels, HistogramValue)> = self
            .latency
            .lock()
            .iter()
            .map(|(op, h)| {
                let buckets = LATENCY_BUCKETS.iter().copied().zip(h.counts).collect();
                (vec![("op", (*op).to_owned())], HistogramValue { sum: h.sum, count: h.count, buckets })
            })
            .collect();
        out.histograms(
            "cairn_request_duration_seconds",
            "S3 request latency to the response head, by operation.",
            latency,
        );
        if let Some(a) = ALLOCATOR_STATS.get().and_then(|read| read()) {
            out.gauges(
                "cairn_allocator_bytes",
                "Heap bytes as the allocator counts them: live allocations, active pages, resident, retained.",
                "kind",
                &[("allocated", a.allocated), ("active", a.active), ("resident", a.resident), ("retained", a.retained)],
            );
        }
    }
}

/// A series' labels: names are fixed by the code, values come from bounded sets.
pub type Labels = Vec<(&'static str, String)>;

/// A gauge's value: counts and bytes stay exact integers, ages and ratios are floats.
#[derive(Clone, Copy, Debug)]
pub enum GaugeValue {
    Int(u64),
    Float(f64),
}

impl From<u64> for GaugeValue {
    fn from(v: u64) -> Self {
        GaugeValue::Int(v)
    }
}

impl From<f64> for GaugeValue {
    fn from(v: f64) -> Self {
        GaugeValue::Float(v)
    }
}

/// A histogram's state: `buckets` are (upper bound, observations in that bucket alone).
#[derive(Clone, Debug)]
pub struct HistogramValue {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, GaugeValue)>),
    Histogram(Vec<(Labels, HistogramValue)>),
}

#[derive(Debug)]
struct Family {
    /// The name without the `_total` that the encoder appends to counters.
    name: String,
    help: String,
    samples: Samples,
}

/// The metric families of one scrape, encoded by `prometheus-client`.
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn push(&mut self, name: &str, help: &str, samples: Samples) {
        debug_assert!(!self.families.iter().any(|f| f.name == name), "metric {name} added twice");
        self.families.push(Family { name: name.to_owned(), help: help.to_owned(), samples });
    }

    /// A counter family; `name` ends in `_total`, as it is exposed.
    pub fn counter_family(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
        debug_assert!(name.ends_with("_total"), "counter {name} must end in _total");
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.push(base, help, Samples::Counter(rows));
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.counter_family(name, help, vec![(Vec::new(), v)]);
    }

    /// A counter with one label, one series per value of it.
    pub fn counters(&mut self, name: &str, help: &str, label: &'static str, rows: &[(&str, u64)]) {
        self.counter_family(name, help, rows.iter().map(|(l, v)| (vec![(label, (*l).to_owned())], *v)).collect());
    }

    pub fn gauge_family(&mut self, name: &str, help: &str, rows: Vec<(Labels, GaugeValue)>) {
        debug_assert!(!name.ends_with("_total"), "gauge {name} must not end in _total");
        self.push(name, help, Samples::Gauge(rows));
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: impl Into<GaugeValue>) {
        self.gauge_family(name, help, vec![(Vec::new(), v.into())]);
    }

    /// A gauge with one label, one series per value of it.
    pub fn gauges(&mut self, name: &str, help: &str, label: &'static str, rows: &[(&str, u64)]) {
        self.gauge_family(
            name,
            help,
            rows.iter().map(|(l, v)| (vec![(label, (*l).to_owned())], GaugeValue::Int(*v))).collect(),
        );
    }

    pub fn histograms(&mut self, name: &str, help: &str, rows: Vec<(Labels, HistogramValue)>) {
        self.push(name, help, Samples::Histogram(rows));
    }

    /// The names of the families as exposed (counters with `_total`).
    pub fn names(&self) -> Vec<String> {
        self.families
            .iter()
            .map(|f| match f.samples {
                Samples::Counter(_) => format!("{}_total", f.name),
                _ => f.name.clone(),
            })
            .collect()
    }

    /// The Prometheus text exposition of every family, by `prometheus-client`.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.samples {
                Samples::Counter(_) => MetricType::Counter,
                Samples::Gauge(_) => MetricType::Gauge,
                Samples::Histogram(_) => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            match &f.samples {
                Samples::Counter(rows) => {
                    for (labels, v) in rows {
                        family.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(v, None)?;
                    }
                }
                Samples::Gauge(rows) => {
                    for (labels, v) in rows {
                        let mut m = family.encode_family(labels)?;
                        match v {
                            GaugeValue::Int(n) => m.encode_gauge(n)?,
                            GaugeValue::Float(x) => m.encode_gauge(x)?,
                        }
                    }
                }
                Samples::Histogram(rows) => {
                    for (labels, h) in rows {
                        family
                            .encode_family(labels)?
                            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_gauges_and_cumulative_histograms() {
        let mut s = Scrape::default();
        s.counters("cairn_x_total", "Xs.", "tier", &[("ram", 3), ("disk", 4)]);
        s.gauge("cairn_y_bytes", "Ys.", 7u64);
        s.gauge("cairn_age_seconds", "Age.", 1.5);
        s.histograms(
            "cairn_z_seconds",
            "Zs.",
            vec![(
                vec![("op", "get".into())],
                HistogramValue { sum: 0.3, count: 3, buckets: vec![(0.1, 1), (1.0, 2)] },
            )],
        );
        let text = s.render();
        let expected = "# HELP cairn_x_total Xs.\n# TYPE cairn_x_total counter\n\
            cairn_x_total{tier=\"ram\"} 3\ncairn_x_total{tier=\"disk\"} 4\n\
            # HELP cairn_y_bytes Ys.\n# TYPE cairn_y_bytes gauge\ncairn_y_bytes 7\n\
            # HELP cairn_age_seconds Age.\n# TYPE cairn_age_seconds gauge\ncairn_age_seconds 1.5\n\
            # HELP cairn_z_seconds Zs.\n# TYPE cairn_z_seconds histogram\n\
            cairn_z_seconds_bucket{op=\"get\",le=\"0.1\"} 1\ncairn_z_seconds_bucket{op=\"get\",le=\"1\"} 3\n\
            cairn_z_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\ncairn_z_seconds_sum{op=\"get\"} 0.3\n\
            cairn_z_seconds_count{op=\"get\"} 3\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = Scrape::default();
        s.counter_family("cairn_e_total", "E.", vec![(vec![("code", "a\"b\\c".into())], 1)]);
        assert!(s.render().contains("cairn_e_total{code=\"a\\\"b\\\\c\"} 1\n"));
    }

    #[test]
    fn latency_lands_in_its_bucket_once() {
        let m = Metrics::default();
        m.observe("GetObject", Duration::from_millis(3));
        m.observe("GetObject", Duration::from_secs(60));
        let h = m.latency.lock();
        let h = &h["GetObject"];
        assert_eq!(h.count, 2);
        assert_eq!(h.counts.iter().sum::<u64>(), 1, "the 60 s request is only in +Inf");
        assert_eq!(h.counts[LATENCY_BUCKETS.iter().position(|b| *b == 0.005).unwrap_or(0)], 1);
    }
}
