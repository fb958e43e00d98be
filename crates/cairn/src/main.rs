//! The `cairn` binary: `cairn serve` runs a node; `get`, `put`, `cp`, `ls`, `stat`, `rm`, `mb` and
//! `rb` talk to one over its S3 endpoint, `sync`, `status` and `load` over its admin endpoint.
//! Every failure ends as one line, `cairn: <what and why>`, and exit status 1.
//!
//! The global allocator is jemalloc, not glibc's malloc. A node allocates and frees 8 MiB chunks,
//! odd-sized KV values (64 KiB to 4 MiB) and request bodies on many threads (tokio workers, up to
//! hundreds of blocking threads for disk I/O). glibc serves those from per-thread arenas and,
//! once the first large block is freed, raises its mmap threshold so later ones come from the
//! arenas' heaps too; the holes left behind are seldom returned to the OS. In the 10-minute soak
//! (`bench/soak.py`) glibc's RSS reached 2.0x the configured RAM tiers and kept rising while the
//! sizes cairn reports stayed at their caps; with only glibc's tuning changed (`MALLOC_ARENA_MAX=2`,
//! `MALLOC_MMAP_THRESHOLD_=1048576`) the same binary stayed at 1.3x: fragmentation, not a leak.
//! jemalloc (size classes, time-based purging) holds a plateau at 1.3-1.4x, and it reports its
//! live heap, which `/metrics` exposes as `cairn_allocator_bytes{kind}`; numbers in BENCHMARKS.md,
//! "Memory under sustained load". Tuning glibc from here instead would need `mallopt` and
//! `malloc_trim` through `unsafe` FFI, which the workspace forbids.

mod admin;
mod buckets;
mod client;
mod errors;
mod mount;
mod s3req;
mod serve_help;
mod sigv4;
mod transfer;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_core::{ByteSize, Config, MetadataPolicy, OriginConfig};
use cairn_node::metrics::AllocatorStats;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator's figures for `/metrics` (refreshed at each scrape).
fn allocator_stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// Lets jemalloc purge freed pages from its own threads, so an idle node also gives memory back
/// (without them purging happens only on allocator activity).
fn start_allocator_background_threads() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background threads not started; freed memory is purged on allocation only");
    }
}

#[derive(Parser)]
#[command(name = "cairn", version, about = "A distributed cache for AI data in front of object storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no arguments: ./data as the origin, the cache in ./.cairn, loopback only.
    Serve(Box<ServeArgs>),
    /// Download an object (to a file, or to stdout with `-`), or a prefix with --recursive.
    Get(transfer::GetArgs),
    /// Upload a file as an object, or a folder with --recursive.
    Put(transfer::PutArgs),
    /// Copy between a local path and s3:// (either way), a folder tree with --recursive.
    Cp(transfer::CpArgs),
    /// List the buckets, or the objects under s3://BUCKET[/PREFIX].
    Ls(client::LsArgs),
    /// Show an object's size, ETag and last-modified time.
    Stat(client::StatArgs),
    /// Delete an object, or everything under a prefix with --recursive.
    Rm(buckets::RmArgs),
    /// Create a bucket.
    Mb(buckets::MbArgs),
    /// Remove a bucket (empty, or with everything in it with --force).
    Rb(buckets::RbArgs),
    /// Wait until everything written under BUCKET/PREFIX before now is in the origin.
    #[command(after_help = admin::ADMIN_HELP)]
    Sync(admin::SyncArgs),
    /// Show the members, preloads and pending uploads (objects, bytes, oldest age) per node.
    #[command(after_help = admin::ADMIN_HELP)]
    Status(admin::StatusArgs),
    /// Preload every object under BUCKET/PREFIX (or a list of keys) into the cluster.
    #[command(after_help = admin::ADMIN_HELP)]
    Load(admin::LoadArgs),
    /// Create a cache directory and give it (and what is in it) to a user, so a node can run as
    /// that user on a host directory created by root (the image's init step in Kubernetes).
    PrepareDir(PrepareDirArgs),
    /// Mount s3://BUCKET[/PREFIX] on a directory (FUSE; root or /dev/fuse access needed).
    Mount(Box<mount::MountArgs>),
}

#[derive(Args)]
struct PrepareDirArgs {
    /// Owner as UID:GID.
    #[arg(long, default_value = "65532:65532")]
    owner: String,
    /// The directory to create and hand over.
    dir: PathBuf,
}

/// Creates `dir` and hands it and everything under it (not following symlinks) to the owner.
fn prepare_dir(a: &PrepareDirArgs) -> Result<()> {
    let (uid, gid) = a
        .owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .with_context(|| format!("--owner {:?}: expected UID:GID", a.owner))?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut todo = vec![a.dir.clone()];
    let mut changed = 0u64;
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if std::os::unix::fs::MetadataExt::uid(&meta) != uid || std::os::unix::fs::MetadataExt::gid(&meta) != gid {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))?;
            changed += 1;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
                todo.push(e?.path());
            }
        }
    }
    eprintln!("{} owned by {uid}:{gid} ({changed} entries changed)", a.dir.display());
    Ok(())
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, short, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the S3 endpoint.
    #[arg(long, env = "CAIRN_LISTEN")]
    listen: Option<String>,
    /// Address of the admin endpoint: the status page, /metrics, /healthz, and what `cairn sync`,
    /// `status` and `load` ask (their --admin).
    #[arg(long, env = "CAIRN_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Cache directory: the disk tier, the write-back journal and multipart staging.
    #[arg(long, env = "CAIRN_CACHE_DIR")]
    cache_dir: Option<String>,
    /// Bytes of chunks kept in RAM, e.g. 4GiB.
    #[arg(long, env = "CAIRN_RAM_CAPACITY")]
    ram_capacity: Option<ByteSize>,
    /// Bytes of chunks kept on disk under the cache directory; 0 disables the disk tier.
    #[arg(long, env = "CAIRN_DISK_CAPACITY")]
    disk_capacity: Option<ByteSize>,
    /// Free space the disk tier leaves on the cache dir's device ("10%" or "2GiB").
    #[arg(long, env = "CAIRN_FREE_SPACE_RESERVE")]
    free_space_reserve: Option<cairn_core::SpaceReserve>,
    /// Chunks fetched ahead of a sequential reader at first (the window grows while it waits).
    #[arg(long, env = "CAIRN_READAHEAD")]
    readahead: Option<usize>,
    /// Replace the configured origins with this one (file://, az://, s3://, gs://).
    #[arg(long, env = "CAIRN_ORIGIN")]
    origin: Option<String>,
    /// Expose --origin under this one bucket name; without it, account mode (bucket names pass
    /// through: sub-folders of a file:// origin, buckets or containers of the account).
    #[arg(long, env = "CAIRN_BUCKET", requires = "origin")]
    bucket: Option<String>,
    /// Backend option for --origin, as KEY=VALUE (repeatable), e.g. aws_endpoint=http://127.0.0.1:9100.
    #[arg(long = "origin-option", requires = "origin", value_parser = parse_kv)]
    origin_options: Vec<(String, String)>,
    /// Chunk size of every origin.
    #[arg(long, env = "CAIRN_CHUNK_SIZE")]
    chunk_size: Option<ByteSize>,
    /// Metadata policy of every origin: immutable, always or ttl:<duration>.
    #[arg(long, env = "CAIRN_METADATA")]
    metadata: Option<MetadataPolicy>,
    /// Default durability of writes to every origin: local, replicated or origin.
    #[arg(long, env = "CAIRN_DURABILITY")]
    durability: Option<cairn_core::Durability>,
    /// Cap on bytes written but not yet uploaded (e.g. 16GiB).
    #[arg(long, env = "CAIRN_DIRTY_MAX")]
    dirty_max: Option<ByteSize>,
    /// Replace the access keys with this one (needs --secret-key).
    #[arg(long, env = "CAIRN_ACCESS_KEY", requires = "secret_key")]
    access_key: Option<String>,
    /// The secret key of --access-key.
    #[arg(long, env = "CAIRN_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Serve unsigned (anonymous) S3 requests too.
    #[arg(long, env = "CAIRN_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Cluster map file (joins a cluster; re-read when it changes).
    #[arg(long, env = "CAIRN_CLUSTER_MAP")]
    cluster_map: Option<String>,
    /// This node's id in the cluster map.
    #[arg(long, env = "CAIRN_NODE_ID")]
    node_id: Option<String>,
    /// Address of the peer transport.
    #[arg(long, env = "CAIRN_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// The cluster's shared secret.
    #[arg(long, env = "CAIRN_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Gossip seeds instead of a map file: other nodes' peer addresses or DNS names, comma-separated.
    #[arg(long, env = "CAIRN_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// This node's zone (replicas land in different zones and racks).
    #[arg(long, env = "CAIRN_ZONE")]
    zone: Option<String>,
    /// This node's rack within its zone; a dead node's chunks move to nodes of its rack.
    #[arg(long, env = "CAIRN_RACK")]
    rack: Option<String>,
    /// The failure-detection cell this node probes within (gossip mode); empty: its zone.
    #[arg(long, env = "CAIRN_CELL")]
    cell: Option<String>,
    /// The address peers reach this node at, when --peer-listen is a wildcard address.
    #[arg(long, env = "CAIRN_ADVERTISE")]
    advertise: Option<String>,
    /// Kubernetes: the Node this pod runs on; zone and rack then come from its labels.
    #[arg(long, env = "CAIRN_K8S_NODE_NAME")]
    k8s_node_name: Option<String>,
    /// Kubernetes: the Node label that names the zone (default topology.kubernetes.io/zone).
    #[arg(long, env = "CAIRN_K8S_ZONE_LABEL")]
    k8s_zone_label: Option<String>,
    /// Kubernetes: the Node label that names the rack.
    #[arg(long, env = "CAIRN_K8S_RACK_LABEL")]
    k8s_rack_label: Option<String>,
    /// Address of the KV (Redis-protocol) endpoint; empty disables it.
    #[arg(long, env = "CAIRN_KV_LISTEN")]
    kv_listen: Option<String>,
    /// Bytes of KV values kept in RAM (separate from the chunk cache).
    #[arg(long, env = "CAIRN_KV_RAM_CAPACITY")]
    kv_ram_capacity: Option<ByteSize>,
    /// Bytes of KV values kept on disk under <cache dir>/kv (emptied at start); 0 disables it.
    #[arg(long, env = "CAIRN_KV_DISK_CAPACITY")]
    kv_disk_capacity: Option<ByteSize>,
    /// Password of the KV endpoint's default user (Redis `requirepass`).
    #[arg(long, env = "CAIRN_KV_PASSWORD", hide_env_values = true)]
    kv_password: Option<String>,
    /// Serve KV clients that do not authenticate.
    #[arg(long, env = "CAIRN_KV_ALLOW_ANONYMOUS")]
    kv_allow_anonymous: bool,
    /// The listeners that run TLS, comma-separated: s3, kv, peer (or "none").
    #[arg(long, env = "CAIRN_TLS", value_delimiter = ',')]
    tls: Option<Vec<String>>,
    /// This node's certificate chain (PEM), reloaded when it changes.
    #[arg(long, env = "CAIRN_TLS_CERT")]
    tls_cert: Option<String>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CAIRN_TLS_KEY")]
    tls_key: Option<String>,
    /// The cluster CA (PEM) peers' certificates must chain to.
    #[arg(long, env = "CAIRN_TLS_CA")]
    tls_ca: Option<String>,
    /// A CA (PEM) S3 and KV clients' certificates must chain to; unset: no client certificates.
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA")]
    tls_client_ca: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl ServeArgs {
    fn config(&self) -> Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
                Config::from_toml_str(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = &self.listen {
            cfg.node.listen = v.clone();
        }
        if let Some(v) = &self.admin_listen {
            cfg.node.admin_listen = v.clone();
        }
        if let Some(v) = &self.cache_dir {
            cfg.cache.dir = v.clone();
        }
        if let Some(v) = self.ram_capacity {
            cfg.cache.ram_capacity = v;
        }
        if let Some(v) = self.disk_capacity {
            cfg.cache.disk_capacity = v;
        }
        if let Some(v) = self.free_space_reserve {
            cfg.cache.free_space_reserve = v;
        }
        if let Some(v) = self.readahead {
            cfg.cache.readahead_chunks = v;
        }
        if let Some(url) = &self.origin {
            let mut o = OriginConfig::local_default();
            o.url = url.clone();
            o.bucket = self.bucket.clone();
            o.options = self.origin_options.iter().cloned().collect();
            cfg.origins = vec![o];
        }
        for o in &mut cfg.origins {
            if let Some(cs) = self.chunk_size {
                o.chunk_size = cs;
            }
            if let Some(m) = self.metadata {
                o.metadata = m;
            }
            if let Some(d) = self.durability {
                o.durability = d;
            }
        }
        if let Some(v) = self.dirty_max {
            cfg.writeback.dirty_max = v;
        }
        if let (Some(k), Some(s)) = (&self.access_key, &self.secret_key) {
            cfg.auth.keys =
                vec![cairn_core::config::AccessKey { access_key: k.clone(), secret_key: s.clone(), read_only: false }];
        }
        if self.allow_anonymous {
            cfg.auth.allow_anonymous = true;
        }
        if let Some(v) = &self.cluster_map {
            cfg.cluster.map = v.clone();
        }
        if let Some(v) = &self.node_id {
            cfg.cluster.node_id = v.clone();
        }
        if let Some(v) = &self.peer_listen {
            cfg.cluster.peer_listen = v.clone();
        }
        if let Some(v) = &self.cluster_secret {
            cfg.cluster.secret = v.clone();
        }
        if let Some(v) = &self.seeds {
            cfg.cluster.seeds = v.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        for (flag, field) in [
            (&self.zone, &mut cfg.cluster.zone),
            (&self.rack, &mut cfg.cluster.rack),
            (&self.cell, &mut cfg.cluster.cell),
            (&self.advertise, &mut cfg.cluster.advertise),
            (&self.k8s_node_name, &mut cfg.kubernetes.node_name),
            (&self.k8s_zone_label, &mut cfg.kubernetes.zone_label),
            (&self.k8s_rack_label, &mut cfg.kubernetes.rack_label),
        ] {
            if let Some(v) = flag {
                field.clone_from(v);
            }
        }
        if let Some(v) = &self.kv_listen {
            cfg.kv.listen = v.clone();
        }
        if let Some(v) = self.kv_ram_capacity {
            cfg.kv.ram_capacity = v;
        }
        if let Some(v) = self.kv_disk_capacity {
            cfg.kv.disk_capacity = v;
        }
        if let Some(v) = &self.kv_password {
            cfg.kv.requirepass = v.clone();
        }
        if self.kv_allow_anonymous {
            cfg.kv.allow_anonymous = true;
        }
        self.apply_tls(&mut cfg.tls)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ServeArgs {
    fn apply_tls(&self, tls: &mut cairn_core::config::TlsSection) -> Result<()> {
        if let Some(listeners) = &self.tls {
            (tls.s3, tls.kv, tls.peer) = (false, false, false);
            for l in listeners.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
                match l {
                    "s3" => tls.s3 = true,
                    "kv" => tls.kv = true,
                    "peer" => tls.peer = true,
                    "none" => {}
                    other => anyhow::bail!("--tls {other:?}: expected s3, kv, peer or none"),
                }
            }
        }
        for (flag, field) in [
            (&self.tls_cert, &mut tls.cert),
            (&self.tls_key, &mut tls.key),
            (&self.tls_ca, &mut tls.ca),
            (&self.tls_client_ca, &mut tls.client_ca),
        ] {
            if let Some(v) = flag {
                field.clone_from(v);
            }
        }
        Ok(())
    }
}

fn init_logging(json: bool) {
    let spec = std::env::var("CAIRN_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .ok()
        .filter(|_| !spec.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // s3s logs every refused request at ERROR (twice for a failed authentication); the node
    // logs them itself (client errors at DEBUG, bursts of failed authentications at WARN, server
    // errors at WARN). `CAIRN_LOG=...,s3s=debug` brings s3s's own lines back.
    if !spec.contains("s3s")
        && let Ok(d) = "s3s=off".parse()
    {
        filter = filter.add_directive(d);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let cfg = args.config()?;
    if args.print_config {
        print!("{}", cfg.to_toml_string());
        return Ok(());
    }
    init_logging(cfg.node.log_format == "json");
    start_allocator_background_threads();
    cairn_node::metrics::set_allocator_stats(allocator_stats);
    let node = cairn_node::start(cfg.clone()).await?;
    eprintln!("cairn {} serving", env!("CARGO_PKG_VERSION"));
    let s3_scheme = if cfg.tls.s3 { "https" } else { "http" };
    eprintln!("  S3 endpoint   {s3_scheme}://{} (path-style, region {})", node.s3_addr, cfg.node.region);
    eprintln!("  admin         http://{}/metrics  http://{}/healthz", node.admin_addr, node.admin_addr);
    for o in &cfg.origins {
        let exposed = match &o.bucket {
            Some(b) => format!("bucket {b}"),
            None => "account mode: bucket names pass through".to_owned(),
        };
        eprintln!(
            "  origin        {} ({exposed}; chunks {}, metadata {}, durability {})",
            o.url, o.chunk_size, o.metadata, o.durability
        );
    }
    eprintln!(
        "  cache         {} (RAM {}, disk {} keeping {} of its device free, readahead {} chunks)",
        cfg.cache.dir,
        cfg.cache.ram_capacity,
        cfg.cache.disk_capacity,
        cfg.cache.free_space_reserve,
        cfg.cache.readahead_chunks
    );
    match cfg.auth.keys.first() {
        Some(k) if cfg.auth.keys.len() == 1 && k.access_key == "cairn" && k.secret_key == "cairn-secret-key" => {
            eprintln!("  credentials   access key cairn, secret key cairn-secret-key (the built-in default)")
        }
        Some(k) => eprintln!("  credentials   {} access key(s), first {}", cfg.auth.keys.len(), k.access_key),
        None => {}
    }
    if cfg.auth.allow_anonymous {
        eprintln!("  anonymous     allowed");
    }
    if cfg.tls.enabled() {
        let on: Vec<&str> = [("s3", cfg.tls.s3), ("kv", cfg.tls.kv), ("peer", cfg.tls.peer)]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
        let clients = if cfg.tls.client_ca.is_empty() { "" } else { ", client certificates required" };
        eprintln!(
            "  TLS           on {} (cert {}, reloaded every {}{clients})",
            on.join(", "),
            cfg.tls.cert,
            humantime::format_duration(cfg.tls.reload_every.0)
        );
    }
    if let Some(kv) = node.kv_addr {
        let k = &cfg.kv;
        let auth = if k.allow_anonymous {
            "anonymous allowed".to_owned()
        } else if k.requirepass == cairn_core::config::KvSection::default().requirepass {
            format!("password {} (the built-in default)", k.requirepass)
        } else {
            format!(
                "password{}",
                if k.users.is_empty() { String::new() } else { format!(" and {} user(s)", k.users.len()) }
            )
        };
        let scheme = if cfg.tls.kv { "rediss" } else { "redis" };
        eprintln!(
            "  KV endpoint   {scheme}://{kv} (RESP2/3; RAM {}, disk {}; {auth})",
            k.ram_capacity, k.disk_capacity
        );
    }
    if let Some(peer) = node.peer_addr {
        let membership = if cfg.cluster.gossip() {
            format!(
                "gossip from seeds {} (cell {})",
                cfg.cluster.seeds.join(", "),
                if cfg.cluster.cell.is_empty() { &cfg.cluster.zone } else { &cfg.cluster.cell }
            )
        } else {
            format!("map {}", cfg.cluster.map)
        };
        let transport = if cfg.tls.peer { "mutual TLS" } else { "plain TCP" };
        eprintln!(
            "  cluster       node {} of {membership} (peer transport {peer} over {transport}, {} owner(s) per chunk)",
            cfg.cluster.node_id, cfg.cluster.replicas
        );
    }
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    };
    stop.await?;
    tracing::info!("shutting down: draining pending uploads and leaving the cluster");
    node.leave(cfg.writeback.drain_timeout.0).await;
    node.shutdown();
    Ok(())
}

/// Parses the command line; `serve --help` shows each flag's default from `Config::default()`.
fn parse_cli() -> Cli {
    let cmd = Cli::command().mut_subcommand("serve", serve_help::with_defaults);
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(a) => serve(*a).await,
        Command::Get(a) => transfer::get(a).await,
        Command::Put(a) => transfer::put(a).await,
        Command::Cp(a) => transfer::cp(a).await,
        Command::Ls(a) => client::ls(a).await,
        Command::Stat(a) => client::stat(a).await,
        Command::Rm(a) => buckets::rm(a).await,
        Command::Mb(a) => buckets::mb(a).await,
        Command::Rb(a) => buckets::rb(a).await,
        Command::Sync(a) => admin::sync(a).await,
        Command::Status(a) => admin::status(a).await,
        Command::Load(a) => admin::load(a).await,
        Command::PrepareDir(a) => prepare_dir(&a),
        Command::Mount(a) => mount::mount(*a).await,
    }
}

#[tokio::main]
async fn main() {
    let cli = parse_cli();
    if let Err(e) = run(cli.command).await {
        eprintln!("cairn: {}", errors::one_line(&e));
        std::process::exit(1);
    }
}
