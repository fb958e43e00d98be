//! The node configuration: one typed struct, every field with a default, loaded from TOML and then
//! overridden by the binary's flags and environment variables.
//!
//! ```toml
//! [node]
//! listen = "127.0.0.1:9000"        # S3 endpoint
//! admin_listen = "127.0.0.1:9001"  # /metrics and /healthz
//!
//! [cache]
//! dir = "./.cairn"
//! ram_capacity = "1GiB"
//! disk_capacity = "20GiB"
//! free_space_reserve = "10%"       # kept free on the cache dir's device by the disk tier
//!
//! [[origin]]
//! url = "file://./data"            # account mode: buckets are folders under ./data
//!
//! [[origin]]
//! bucket = "weights"               # one container exposed as bucket "weights"
//! url = "az://models/llama"
//! chunk_size = "8MiB"
//! metadata = "immutable"
//! options = { azure_storage_account_name = "devstoreaccount1", azure_storage_use_emulator = "true" }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::key::is_valid_bucket;
use crate::size::{ByteSize, SpaceReserve};

/// Default chunk size of an origin.
pub const DEFAULT_CHUNK_SIZE: ByteSize = ByteSize::mib(8);
/// Default `cache.free_space_reserve`: a tenth of the device, as JuiceFS's `free-space-ratio`.
pub const DEFAULT_FREE_SPACE_RESERVE: SpaceReserve = SpaceReserve::percent(10);
/// Smallest and largest chunk size an origin may configure.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 256 << 20;
/// Longest `limits.header_read_timeout`: an unauthenticated peer connection must not hold a slot
/// for long, and authenticated peer connections are closed after a longer idle time (`cairn-node`).
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Shortest `tls.reload_every`.
pub const MIN_TLS_RELOAD_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file is not valid TOML for cairn: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub cache: CacheSection,
    pub auth: AuthSection,
    pub tls: TlsSection,
    pub limits: LimitsSection,
    pub cluster: ClusterSection,
    pub writeback: WritebackSection,
    pub kv: KvSection,
    pub kubernetes: KubernetesSection,
    #[serde(rename = "origin")]
    pub origins: Vec<OriginConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: NodeSection::default(),
            cache: CacheSection::default(),
            auth: AuthSection::default(),
            tls: TlsSection::default(),
            limits: LimitsSection::default(),
            cluster: ClusterSection::default(),
            writeback: WritebackSection::default(),
            kv: KvSection::default(),
            kubernetes: KubernetesSection::default(),
            origins: vec![OriginConfig::local_default()],
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Address of the S3 endpoint.
    pub listen: String,
    /// Address of `/metrics` and `/healthz`.
    pub admin_listen: String,
    /// Region reported to S3 clients and used in SigV4 scopes.
    pub region: String,
    /// Log format: "text" or "json".
    pub log_format: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9000".into(),
            admin_listen: "127.0.0.1:9001".into(),
            region: "us-east-1".into(),
            log_format: "text".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Directory of the disk tier and of staged multipart uploads.
    pub dir: String,
    /// Capacity of the RAM tier.
    pub ram_capacity: ByteSize,
    /// Capacity of the disk tier; 0 disables it.
    pub disk_capacity: ByteSize,
    /// Free space the disk tier leaves on the cache dir's device, whatever `disk_capacity` says: a
    /// share of the device (`"10%"`) or a byte size (`"2GiB"`). The write-back journal and staged
    /// multipart parts may use it, and evict clean cache chunks for room.
    pub free_space_reserve: SpaceReserve,
    /// Chunks fetched ahead of a sequential reader at first. The window grows (by half) each time
    /// the reader has to wait for a fetch, up to `readahead_max`, and the window reached is
    /// remembered per origin, so a distant origin gets a deep readahead and loopback a short one.
    pub readahead_chunks: usize,
    /// The most one sequential reader's readahead window holds, in bytes.
    pub readahead_max: ByteSize,
    /// Object metadata entries kept in memory.
    pub metadata_entries: usize,
    /// Origin range GETs running at once on this node.
    pub max_origin_fetches: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            dir: "./.cairn".into(),
            ram_capacity: ByteSize::gib(1),
            disk_capacity: ByteSize::gib(20),
            free_space_reserve: DEFAULT_FREE_SPACE_RESERVE,
            readahead_chunks: 8,
            readahead_max: ByteSize::mib(256),
            metadata_entries: 100_000,
            max_origin_fetches: 64,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Serve requests without a signature. Off unless set explicitly.
    pub allow_anonymous: bool,
    /// Access keys accepted in SigV4 signatures.
    pub keys: Vec<AccessKey>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            keys: vec![AccessKey {
                access_key: "cairn".into(),
                secret_key: "cairn-secret-key".into(),
                read_only: false,
            }],
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key: String,
    pub secret_key: String,
    /// May read (GET, HEAD, list, the client routes' reads) and nothing else: a credential to
    /// hand to jobs that only load data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest single PutObject body (S3's own limit is 5 GiB).
    pub max_put_size: ByteSize,
    /// Largest multipart part.
    pub max_part_size: ByteSize,
    /// Most parts in one multipart upload.
    pub max_parts: u32,
    /// Multipart uploads in progress at once.
    pub max_multipart_uploads: usize,
    /// Total bytes of request headers accepted; larger requests get RequestHeaderSectionTooLarge.
    pub max_header_bytes: usize,
    /// Connections open at once on each listener (S3, admin, peer); a connection over the limit
    /// is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections open at once from one source address on each listener (KV included); a
    /// connection over the limit is closed as soon as it is accepted.
    pub max_connections_per_source: usize,
    /// Time a connection has to send a complete request head, counted from its opening or from
    /// the end of the previous response (so it is also how long an idle keep-alive connection is
    /// kept on the S3 and admin ports), and time a new peer connection has to pass the secret check.
    pub header_read_timeout: HumanDuration,
    /// Peer connections that have not yet sent a request with the cluster secret, at once.
    pub max_unauthenticated_connections: usize,
    /// The same from one source address.
    pub max_unauthenticated_per_source: usize,
    /// Keys returned by one listing page at most.
    pub max_list_keys: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_put_size: ByteSize::gib(5),
            max_part_size: ByteSize::gib(5),
            max_parts: 10_000,
            max_multipart_uploads: 1_000,
            max_header_bytes: 16 << 10,
            max_connections: 4_096,
            max_connections_per_source: 1_024,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            max_unauthenticated_connections: 512,
            max_unauthenticated_per_source: 64,
            max_list_keys: 1_000,
        }
    }
}

/// TLS (rustls) on the S3, KV and peer listeners and for the peer client. Certificates, keys and
/// CAs are PEM files, polled every `reload_every` and swapped in when their content changes (a
/// Kubernetes Secret volume rotates by swapping a symlink); a file that does not load keeps the
/// previous certificate. Each listener not named here stays plain TCP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// This node's certificate chain, leaf first. It is presented to S3 and KV clients and, on
    /// the peer transport, to peers in both directions, so for `peer` it needs both the server and
    /// the client extended key usage (or none).
    pub cert: String,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// The cluster CA: a peer (client or server) is accepted only with a certificate that chains
    /// to it. Required with `peer`.
    pub ca: String,
    /// When set, S3 and KV clients must present a certificate that chains to this CA.
    pub client_ca: String,
    /// TLS on the S3 endpoint.
    pub s3: bool,
    /// TLS on the KV (RESP) endpoint.
    pub kv: bool,
    /// Mutual TLS on the peer transport (listener and client); every node of the pool needs it.
    pub peer: bool,
    /// How often the files are checked for new content.
    pub reload_every: HumanDuration,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert: String::new(),
            key: String::new(),
            ca: String::new(),
            client_ca: String::new(),
            s3: false,
            kv: false,
            peer: false,
            reload_every: HumanDuration(Duration::from_secs(5)),
        }
    }
}

impl TlsSection {
    /// Whether any listener uses TLS.
    pub fn enabled(&self) -> bool {
        self.s3 || self.kv || self.peer
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !self.enabled() {
            return Ok(());
        }
        if self.cert.is_empty() || self.key.is_empty() {
            return bad("tls.cert and tls.key are required when tls.s3, tls.kv or tls.peer is on");
        }
        if self.peer && self.ca.is_empty() {
            return bad("tls.ca (the cluster CA) is required with tls.peer: peers verify each other against it");
        }
        let for_clients = self.s3 || self.kv;
        if !self.client_ca.is_empty() && !for_clients {
            return bad("tls.client_ca applies to S3 and KV clients: turn on tls.s3 or tls.kv");
        }
        if self.reload_every.0 < MIN_TLS_RELOAD_EVERY {
            return bad("tls.reload_every must be at least 100ms");
        }
        Ok(())
    }
}

/// Membership in a cluster. With no `map` the node runs alone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Path of the cluster map file (see `cluster.rs`); re-read when it changes. Empty: no cluster.
    pub map: String,
    /// This node's id in the map.
    pub node_id: String,
    /// Address of the peer transport (chunk and metadata requests between nodes).
    pub peer_listen: String,
    /// Shared secret of the pool. It never crosses the wire: peer requests carry an HMAC keyed from
    /// it (requests without a valid one are refused), gossip packets are sealed with another key
    /// derived from it.
    pub secret: String,
    /// Owners per chunk (R).
    pub replicas: usize,
    /// Time a peer has to connect, and the interval at which a slow answer is checked: a peer that
    /// has not answered by then is probed with a fresh connection; if that fails the next node is
    /// tried, else the wait goes on.
    pub peer_timeout: HumanDuration,
    /// Longest wait for a live but slow peer's answer before the next node is tried.
    pub peer_max_wait: HumanDuration,
    /// How long a peer that failed is tried last.
    pub suspect_for: HumanDuration,
    /// How often the map file is checked for changes.
    pub map_poll: HumanDuration,
    /// Idle keep-alive connections kept per peer.
    pub peer_pool_idle: usize,
    /// Gossip seeds, instead of `map`: `host:port` of other nodes' peer ports (gossip runs on the
    /// same port over UDP). A DNS name that resolves to several addresses (a headless Service)
    /// counts for all of them; names are resolved again every `seed_resolve_every`. The map is
    /// then derived from membership. A node may list itself.
    pub seeds: Vec<String>,
    /// This node's failure domains and relative capacity (gossip mode; a map file says them
    /// for each node itself).
    pub zone: String,
    pub rack: String,
    pub weight: u32,
    /// The failure-detection cell this node runs SWIM in (empty: its zone). Keep cells to a few
    /// thousand nodes: a zone of more is split into cells (e.g. by rack group).
    pub cell: String,
    /// The address other nodes reach this node's peer port (and gossip) at; empty: `peer_listen`
    /// (which must then not be a wildcard address).
    pub advertise: String,
    /// How often each node probes a random member.
    pub probe_period: HumanDuration,
    /// How long a suspected member has to refute before it is declared dead. Longer than the
    /// longest stall (GC pause, frozen VM) that must not cost a node its place.
    pub suspect_timeout: HumanDuration,
    /// A member dead for this long, or that left on purpose, is removed from the map (its keys
    /// then move for good; while it is only `down`, they move within its rack and come back).
    pub remove_after: HumanDuration,
    /// A node whose cache is new takes its share of keys in `join_steps` steps over this time.
    pub join_ramp: HumanDuration,
    pub join_steps: u32,
    pub seed_resolve_every: HumanDuration,
    /// Peer-to-peer fan-out of hot chunks: an owner already sending a chunk hands further
    /// requesters to nodes that fetched it from it recently (`cairn_core::fanout`).
    pub fanout: bool,
    /// Chunk bodies this node sends to peers at once; an owner's further requests wait for a
    /// slot, a holder's are sent elsewhere.
    pub upload_slots: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            map: String::new(),
            node_id: String::new(),
            peer_listen: "127.0.0.1:9100".into(),
            secret: String::new(),
            replicas: 1,
            peer_timeout: HumanDuration(Duration::from_secs(2)),
            peer_max_wait: HumanDuration(Duration::from_secs(60)),
            suspect_for: HumanDuration(Duration::from_secs(10)),
            map_poll: HumanDuration(Duration::from_secs(1)),
            peer_pool_idle: 64,
            seeds: Vec::new(),
            zone: "default".into(),
            rack: "default".into(),
            weight: 100,
            cell: String::new(),
            advertise: String::new(),
            probe_period: HumanDuration(Duration::from_secs(1)),
            suspect_timeout: HumanDuration(Duration::from_secs(8)),
            remove_after: HumanDuration(Duration::from_secs(600)),
            join_ramp: HumanDuration(Duration::from_secs(120)),
            join_steps: 4,
            seed_resolve_every: HumanDuration(Duration::from_secs(30)),
            fanout: true,
            upload_slots: 16,
        }
    }
}

impl ClusterSection {
    pub fn enabled(&self) -> bool {
        !self.map.is_empty() || self.gossip()
    }

    /// Membership by gossip (seeds given) rather than a map file.
    pub fn gossip(&self) -> bool {
        !self.seeds.is_empty()
    }
}

/// Writes acknowledged before they reach the origin: the journal, the uploader and their limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WritebackSection {
    /// Nodes that hold every chunk of a `replicated` write before it is acknowledged: the writer
    /// and the chunk's first owners other than the writer.
    pub replicas: usize,
    /// Bytes written but not yet in the origin, per node. At the cap, writes wait for uploads.
    pub dirty_max: ByteSize,
    /// Objects uploaded to the origin at once.
    pub upload_concurrency: usize,
    /// First and longest wait between retries of a failed upload.
    pub retry_min: HumanDuration,
    pub retry_max: HumanDuration,
    /// While writes are arriving on a node, the upload of an acknowledged write waits up to this
    /// long after its acknowledgement, so the writes get the CPU and disk first (0: never waits).
    /// A sync barrier ends the wait.
    pub upload_defer: HumanDuration,
    /// How long a replica holder waits for an unreachable writer before it uploads the object
    /// itself (at once when the map marks the writer down).
    pub takeover_after: HumanDuration,
    /// On SIGTERM, how long pending uploads get to reach the origin before the writes still
    /// pending are handed to replica holders (keep it well inside the pod's grace period).
    pub drain_timeout: HumanDuration,
}

impl Default for WritebackSection {
    fn default() -> Self {
        Self {
            replicas: 2,
            dirty_max: ByteSize::gib(16),
            upload_concurrency: 4,
            retry_min: HumanDuration(Duration::from_millis(200)),
            retry_max: HumanDuration(Duration::from_secs(10)),
            upload_defer: HumanDuration(Duration::from_secs(10)),
            takeover_after: HumanDuration(Duration::from_secs(60)),
            drain_timeout: HumanDuration(Duration::from_secs(20)),
        }
    }
}

/// Running as a Kubernetes pod: the zone and rack come from the labels of the Node the pod runs
/// on (read once at start with the pod's service account; it needs `get` on `nodes` only).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    /// Name of the Node this pod runs on (the Downward API's `spec.nodeName`); empty: not on
    /// Kubernetes, nothing is looked up.
    pub node_name: String,
    /// Label giving `cluster.zone` when that is left at its default.
    pub zone_label: String,
    /// Label giving `cluster.rack` when that is left at its default; empty: no rack from labels.
    pub rack_label: String,
    /// API server; empty: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api: String,
    /// The service account's token and the API server's CA.
    pub token_file: String,
    pub ca_file: String,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            zone_label: "topology.kubernetes.io/zone".into(),
            rack_label: String::new(),
            api: String::new(),
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
        }
    }
}

/// The KV keyspace and its Redis-protocol (RESP2/RESP3) endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvSection {
    /// Address of the RESP endpoint; empty disables it. Not 6379, so a local Redis can coexist.
    pub listen: String,
    /// Capacity of the KV RAM tier (separate from the chunk cache).
    pub ram_capacity: ByteSize,
    /// Capacity of the KV disk tier (under `<cache.dir>/kv`); 0 disables it.
    pub disk_capacity: ByteSize,
    /// Largest value accepted by SET/MSET (Redis `proto-max-bulk-len`). Unset: 512 MiB (Redis's
    /// default), or `ram_capacity` when the RAM tier is smaller; see [`KvSection::max_value`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_size: Option<ByteSize>,
    /// Longest key accepted.
    pub max_key_size: usize,
    /// Most arguments in one command (command name included); Redis allows 1,048,576 (so MGET,
    /// EXISTS and DEL of that many keys). Over it the command is a protocol error.
    pub max_args: usize,
    /// Longest inline (non-RESP) command line.
    pub max_inline_size: usize,
    /// Commands read ahead of their replies on one connection; past this, reading pauses.
    pub max_pipeline: usize,
    /// Largest reply (or batch of pipelined replies) held for one client; a bigger reply is an error.
    pub max_output_buffer: ByteSize,
    /// Client connections served at once.
    pub max_connections: usize,
    /// How long an EXISTS hit protects a key from eviction, so EXISTS then GET finds it.
    pub lease: HumanDuration,
    /// Copies of each key (on the first nodes of its placement ranking).
    pub replicas: usize,
    /// Password of the `default` user (Redis `requirepass`); empty: no default user.
    pub requirepass: String,
    /// ACL-style users (`AUTH user password`).
    pub users: Vec<KvUser>,
    /// Serve clients that never authenticate. Off unless set explicitly.
    pub allow_anonymous: bool,
    /// Accept FLUSHALL and FLUSHDB (they empty this node's KV store). Off unless set explicitly.
    pub allow_flush: bool,
}

impl Default for KvSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6380".into(),
            ram_capacity: ByteSize::gib(1),
            disk_capacity: ByteSize::gib(10),
            max_value_size: None,
            max_key_size: 8 << 10,
            max_args: KV_MAX_ARGS,
            max_inline_size: 64 << 10,
            max_pipeline: 1_024,
            max_output_buffer: ByteSize::gib(1),
            max_connections: 4_096,
            lease: HumanDuration(Duration::from_secs(5)),
            replicas: 1,
            requirepass: "cairn-kv-password".into(),
            users: Vec::new(),
            allow_anonymous: false,
            allow_flush: false,
        }
    }
}

/// Redis's most arguments in one command (its `invalid multibulk length` limit).
pub const KV_MAX_ARGS: usize = 1 << 20;
/// Redis's default largest value (`proto-max-bulk-len`).
pub const KV_DEFAULT_MAX_VALUE: ByteSize = ByteSize::mib(512);

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once the bytes are on the writing node's disk (fsync'd); uploaded in the background.
    Local,
    /// Once every chunk is on disk at `writeback.replicas` nodes; uploaded in the background.
    Replicated,
    /// Once the object is in the origin (write-through).
    #[default]
    Origin,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "replicated" => Ok(Self::Replicated),
            "origin" => Ok(Self::Origin),
            other => Err(format!("invalid durability {other:?}: expected \"local\", \"replicated\" or \"origin\"")),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Replicated => "replicated",
            Self::Origin => "origin",
        })
    }
}

impl Serialize for Durability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl KvSection {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The largest value accepted: `max_value_size`, or when unset 512 MiB capped by the RAM tier.
    pub fn max_value(&self) -> ByteSize {
        self.max_value_size.unwrap_or_else(|| ByteSize(KV_DEFAULT_MAX_VALUE.bytes().min(self.ram_capacity.bytes())))
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvUser {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for KvUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvUser").field("user", &self.user).finish_non_exhaustive()
    }
}

/// A duration written as `2s`, `500ms`, `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// When cached object metadata is trusted without asking the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataPolicy {
    /// Objects never change in place: metadata is fetched once.
    Immutable,
    /// Metadata is trusted for this long, then fetched again.
    Ttl(Duration),
    /// Every request revalidates with a conditional request to the origin.
    Always,
}

impl FromStr for MetadataPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "immutable" => Ok(Self::Immutable),
            "always" => Ok(Self::Always),
            other => match other.strip_prefix("ttl:") {
                Some(d) => humantime::parse_duration(d.trim())
                    .map(Self::Ttl)
                    .map_err(|e| format!("invalid metadata ttl {d:?}: {e}")),
                None => Err(format!(
                    "invalid metadata policy {other:?}: expected \"immutable\", \"always\" or \"ttl:<duration>\" (e.g. \"ttl:30s\")"
                )),
            },
        }
    }
}

impl fmt::Display for MetadataPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Immutable => f.write_str("immutable"),
            Self::Always => f.write_str("always"),
            Self::Ttl(d) => write!(f, "ttl:{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for MetadataPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MetadataPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One object storage backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Name used in metrics and chunk ids; defaults to the bucket name, or "default".
    #[serde(default)]
    pub name: Option<String>,
    /// Bucket name this origin is exposed under. Absent: account mode, where S3 bucket names pass
    /// through to the origin's containers/buckets (or folders of a `file://` root).
    #[serde(default)]
    pub bucket: Option<String>,
    /// `file://PATH`, `az://CONTAINER[/PREFIX]`, `s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]`; in
    /// account mode the container/bucket part is left out (`az://`, `s3://`, `gs://`).
    pub url: String,
    #[serde(default = "default_chunk_size")]
    pub chunk_size: ByteSize,
    #[serde(default = "default_metadata_policy")]
    pub metadata: MetadataPolicy,
    /// Durability of writes that do not ask for one (`x-cairn-durability`).
    #[serde(default)]
    pub durability: Durability,
    /// Backend options passed to `object_store` (e.g. `aws_endpoint`, `aws_allow_http`,
    /// `azure_storage_account_name`, `azure_storage_use_emulator`); unset ones come from the
    /// environment as `object_store` reads it.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_chunk_size() -> ByteSize {
    DEFAULT_CHUNK_SIZE
}

fn default_metadata_policy() -> MetadataPolicy {
    MetadataPolicy::Ttl(Duration::from_secs(10))
}

impl OriginConfig {
    /// The embedded default: the folder `./data` in account mode.
    pub fn local_default() -> Self {
        Self {
            name: None,
            bucket: None,
            url: "file://./data".into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            metadata: default_metadata_policy(),
            durability: Durability::default(),
            options: BTreeMap::new(),
        }
    }

    pub fn display_name(&self) -> String {
        self.name.clone().or_else(|| self.bucket.clone()).unwrap_or_else(|| "default".into())
    }
}

impl Config {
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(s)?;
        Ok(cfg)
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what serde cannot: ranges, names, and that buckets map to one origin each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.origins.is_empty() {
            return bad("at least one [[origin]] is required".into());
        }
        let mut account = 0;
        let mut names = std::collections::HashSet::new();
        let mut buckets = std::collections::HashSet::new();
        for o in &self.origins {
            let cs = o.chunk_size.bytes();
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
                return bad(format!(
                    "origin {}: chunk_size {} is outside {}..={}",
                    o.display_name(),
                    o.chunk_size,
                    ByteSize(MIN_CHUNK_SIZE),
                    ByteSize(MAX_CHUNK_SIZE)
                ));
            }
            match &o.bucket {
                Some(b) => {
                    if !is_valid_bucket(b) {
                        return bad(format!("origin bucket name {b:?} is not a valid S3 bucket name"));
                    }
                    if !buckets.insert(b.clone()) {
                        return bad(format!("bucket {b:?} is served by two origins"));
                    }
                }
                None => {
                    account += 1;
                    if account > 1 {
                        return bad("at most one origin may be in account mode (without `bucket`)".into());
                    }
                }
            }
            if !names.insert(o.display_name()) {
                return bad(format!("two origins are named {:?}", o.display_name()));
            }
            let scheme_ok =
                ["file://", "az://", "azure://", "abfs://", "s3://", "gs://"].iter().any(|p| o.url.starts_with(p));
            if !scheme_ok {
                return bad(format!("origin url {:?} must start with file://, az://, s3:// or gs://", o.url));
            }
        }
        if self.cache.ram_capacity.bytes() < MAX_CHUNK_SIZE.min(16 << 20) {
            return bad(format!("cache.ram_capacity {} is below 16MiB", self.cache.ram_capacity));
        }
        if self.cache.readahead_chunks > 256 {
            return bad("cache.readahead_chunks is above 256".into());
        }
        if self.cache.max_origin_fetches == 0 || self.limits.max_connections == 0 {
            return bad("cache.max_origin_fetches and limits.max_connections must be positive".into());
        }
        let l = &self.limits;
        if l.max_connections_per_source == 0
            || l.max_unauthenticated_connections == 0
            || l.max_unauthenticated_per_source == 0
        {
            return bad(
                "limits.max_connections_per_source, max_unauthenticated_connections and max_unauthenticated_per_source must be positive"
                    .into(),
            );
        }
        if l.header_read_timeout.0.is_zero() || l.header_read_timeout.0 > MAX_HEADER_READ_TIMEOUT {
            return bad(format!(
                "limits.header_read_timeout must be above 0 and at most {}",
                humantime::format_duration(MAX_HEADER_READ_TIMEOUT)
            ));
        }
        let c = &self.cluster;
        if c.enabled() {
            if !c.map.is_empty() && c.gossip() {
                return bad("cluster.map and cluster.seeds exclude each other: a map file, or gossip from seeds".into());
            }
            if c.node_id.is_empty() {
                return bad("cluster.node_id is required in a cluster".into());
            }
            if c.secret.len() < 16 {
                return bad("cluster.secret must be at least 16 characters in a cluster".into());
            }
            if c.gossip() {
                if c.weight == 0 {
                    return bad("cluster.weight must be positive".into());
                }
                if c.probe_period.0 < Duration::from_millis(100) || c.suspect_timeout.0 < c.probe_period.0 {
                    return bad(
                        "cluster.probe_period must be at least 100ms and suspect_timeout at least probe_period".into(),
                    );
                }
            }
            if !(1..=5).contains(&c.replicas) {
                return bad("cluster.replicas must be between 1 and 5".into());
            }
            if !(1..=4096).contains(&c.upload_slots) {
                return bad("cluster.upload_slots must be between 1 and 4096".into());
            }
        }
        let w = &self.writeback;
        if !(1..=5).contains(&w.replicas) {
            return bad("writeback.replicas must be between 1 and 5".into());
        }
        if w.upload_concurrency == 0 || w.retry_min.0.is_zero() || w.retry_max.0 < w.retry_min.0 {
            return bad("writeback.upload_concurrency and retry_min must be positive, retry_max >= retry_min".into());
        }
        let kv = &self.kv;
        if kv.enabled() {
            if !kv.allow_anonymous && kv.requirepass.is_empty() && kv.users.is_empty() {
                return bad(
                    "kv: no requirepass or users and kv.allow_anonymous is off: nobody could use the KV endpoint"
                        .into(),
                );
            }
            if kv.max_key_size == 0 || kv.max_args < 3 || kv.max_pipeline == 0 || kv.max_connections == 0 {
                return bad(
                    "kv.max_key_size, kv.max_pipeline and kv.max_connections must be positive, kv.max_args at least 3"
                        .into(),
                );
            }
            if kv.max_value().bytes() > kv.ram_capacity.bytes() {
                return bad(format!(
                    "kv.max_value_size {} is above kv.ram_capacity {}: lower kv.max_value_size to at most {} (or \
                     leave it unset: it then follows the RAM tier), or raise kv.ram_capacity",
                    kv.max_value(),
                    kv.ram_capacity,
                    kv.ram_capacity
                ));
            }
            if kv.max_value().bytes() == 0 {
                return bad("kv.max_value_size and kv.ram_capacity must be positive".into());
            }
            if !(1..=5).contains(&kv.replicas) {
                return bad("kv.replicas must be between 1 and 5".into());
            }
        }
        self.tls.validate()?;
        if !self.auth.allow_anonymous && self.auth.keys.is_empty() {
            return bad("no access keys are configured and anonymous access is off: nobody could use this node".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let cfg = Config::default();
        cfg.validate().expect("default config is valid");
        let text = cfg.to_toml_string();
        assert_eq!(Config::from_toml_str(&text).expect("parses"), cfg);
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml_str("").expect("parses"), Config::default());
    }

    #[test]
    fn parses_origins() {
        let cfg = Config::from_toml_str(
            r#"
            [cache]
            ram_capacity = "256MiB"
            free_space_reserve = "5%"
            [[origin]]
            bucket = "weights"
            url = "az://models/llama"
            chunk_size = "4MiB"
            metadata = "immutable"
            options = { azure_storage_use_emulator = "true" }
            [[origin]]
            url = "s3://"
            metadata = "ttl:1m"
            "#,
        )
        .expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.origins.len(), 2);
        assert_eq!(cfg.origins[0].chunk_size, ByteSize::mib(4));
        assert_eq!(cfg.origins[0].metadata, MetadataPolicy::Immutable);
        assert_eq!(cfg.origins[1].metadata, MetadataPolicy::Ttl(Duration::from_secs(60)));
        assert_eq!(cfg.cache.ram_capacity, ByteSize::mib(256));
        assert_eq!(cfg.cache.free_space_reserve, SpaceReserve::percent(5));
        assert_eq!(Config::default().cache.free_space_reserve, SpaceReserve::percent(10));
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            ("[cache]\nram_capcity = 1", "unknown field"),
            ("[cache]\nfree_space_reserve = \"100%\"", "free-space reserve"),
            ("[[origin]]\nurl = \"ftp://x\"", "must start with"),
            ("[[origin]]\nurl = \"s3://\"\n[[origin]]\nurl = \"az://\"", "account mode"),
            ("[[origin]]\nurl = \"s3://a\"\nbucket = \"Bad_Name\"", "not a valid"),
            ("[[origin]]\nurl = \"s3://a\"\nchunk_size = \"1KiB\"", "chunk_size"),
            ("[[origin]]\nurl = \"s3://a\"\nmetadata = \"sometimes\"", "metadata policy"),
            ("[auth]\nkeys = []", "nobody could use"),
            ("[kv]\nrequirepass = \"\"", "nobody could use the KV endpoint"),
            ("[kv]\nreplicas = 0", "kv.replicas"),
            ("[kv]\nram_capacity = \"256MiB\"\nmax_value_size = \"1GiB\"", "lower kv.max_value_size to at most 256"),
            ("[limits]\nheader_read_timeout = \"0s\"", "header_read_timeout"),
            ("[limits]\nheader_read_timeout = \"5m\"", "header_read_timeout"),
            ("[limits]\nmax_unauthenticated_per_source = 0", "must be positive"),
            ("[tls]\ns3 = true", "tls.cert and tls.key"),
            ("[tls]\npeer = true\ncert = \"c\"\nkey = \"k\"", "tls.ca"),
            ("[tls]\npeer = true\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\nclient_ca = \"a\"", "tls.client_ca"),
            ("[tls]\ns3 = true\ncert = \"c\"\nkey = \"k\"\nreload_every = \"10ms\"", "reload_every"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml_str(text).and_then(|c| c.validate().map(|_| c));
            let msg = err.expect_err(text).to_string();
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
    }

    #[test]
    fn kv_value_limit_follows_a_small_ram_tier() {
        let cfg = Config::from_toml_str("[kv]\nram_capacity = \"256MiB\"").expect("parses");
        cfg.validate().expect("a small KV RAM tier starts with the default value limit");
        assert_eq!(cfg.kv.max_value(), ByteSize::mib(256));
        assert_eq!(Config::default().kv.max_value(), ByteSize::mib(512));
        let cfg = Config::from_toml_str("[kv]\nmax_value_size = \"8MiB\"").expect("parses");
        assert_eq!(cfg.kv.max_value(), ByteSize::mib(8));
    }

    #[test]
    fn metadata_policy_parses() {
        assert_eq!("always".parse(), Ok(MetadataPolicy::Always));
        assert_eq!("ttl:250ms".parse(), Ok(MetadataPolicy::Ttl(Duration::from_millis(250))));
        assert!("ttl:soon".parse::<MetadataPolicy>().is_err());
    }
}
