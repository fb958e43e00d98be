//! Everything a running node shares between requests, and the cache directory's ownership: the
//! lock that keeps a second node off it and the incarnation id that names its contents.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::{Config, OriginConfig};
use cairn_origin::{Origin, StoreOrigin};
use cairn_store::ChunkStore;

use crate::StartError;
use crate::cluster::Cluster;
use crate::kv::KvNode;
use crate::meta::MetaCache;
use crate::metrics::Metrics;
use crate::multipart::Multipart;
use crate::reader::ReadThrough;
use crate::server::Listeners;
use crate::tls::Tls;
use crate::writeback::WriteBack;

pub struct OriginEntry {
    pub config: OriginConfig,
    pub origin: Arc<dyn Origin>,
}

pub struct NodeState {
    pub config: Config,
    pub origins: Vec<OriginEntry>,
    pub meta: MetaCache,
    pub reader: Arc<ReadThrough>,
    pub multipart: Multipart,
    pub metrics: Arc<Metrics>,
    pub cluster: Option<Arc<Cluster>>,
    pub writeback: WriteBack,
    /// The KV keyspace and its endpoint's command layer, when `kv.listen` is set.
    pub kv: Option<Arc<KvNode>>,
    /// Connection limits of the listeners.
    pub listeners: Listeners,
    /// Certificates and TLS configs, when a listener runs TLS (`[tls]`).
    pub tls: Option<Arc<Tls>>,
    /// Random id of the cache directory's contents (`<cache dir>/incarnation`, 32 hex digits): the
    /// same after a restart on the same disk, new when the directory starts empty.
    pub incarnation: String,
    /// What `/readyz` reports (`ready.rs`).
    pub readiness: crate::ready::Readiness,
    /// Preload jobs (`load.rs`).
    pub loads: crate::load::Loads,
    /// When the node started (the status page's uptime).
    pub started: std::time::Instant,
    /// The cache directory's lock, held (`flock`) for as long as the node runs.
    _dir_lock: File,
}

/// Lock file in the cache directory; holds the pid of the node that has it.
const LOCK_FILE: &str = "lock";
/// File in the cache directory naming its incarnation.
const INCARNATION_FILE: &str = "incarnation";

impl NodeState {
    pub fn new(config: Config) -> Result<Self, StartError> {
        config.validate().map_err(|e| StartError::Config(e.to_string()))?;
        let dir = PathBuf::from(&config.cache.dir);
        std::fs::create_dir_all(&dir).map_err(|e| StartError::Io(format!("cache dir {}", dir.display()), e))?;
        // Before anything under the directory is opened: start-up cleans up what it finds there
        // (unacknowledged journal entries, temporary files, the KV spill area), which would
        // destroy a running node's data.
        let dir_lock = lock_cache_dir(&dir)?;
        let incarnation = read_or_create_incarnation(&dir)?;
        tracing::info!(dir = %dir.display(), %incarnation, "cache directory locked");
        let store = ChunkStore::open(
            &dir.join("store"),
            config.cache.ram_capacity.bytes(),
            config.cache.disk_capacity.bytes(),
            config.cache.free_space_reserve,
        )
        .map_err(|e| StartError::Io(format!("disk tier under {}", dir.display()), e))?;
        // Journal entries and staged parts live under the cache dir; clean chunks give way to them.
        let room = store.room(&dir);
        let mut origins = Vec::new();
        for oc in &config.origins {
            let origin = StoreOrigin::from_config(oc).map_err(|e| StartError::Config(e.to_string()))?;
            origins.push(OriginEntry { config: oc.clone(), origin: Arc::new(origin) });
        }
        let metrics = Arc::new(Metrics::default());
        let tls = if config.tls.enabled() { Some(Tls::new(&config.tls).map_err(StartError::Config)?) } else { None };
        let cluster = if config.cluster.enabled() {
            Some(Arc::new(Cluster::load(&config.cluster, metrics.clone(), tls.clone()).map_err(StartError::Config)?))
        } else {
            None
        };
        let writeback = WriteBack::open(
            dir.join("writeback"),
            config.writeback.clone(),
            config.cluster.node_id.clone(),
            incarnation.clone(),
        )
        .map_err(|e| StartError::Io(format!("write-back journal under {}", dir.display()), e))?;
        writeback.journal.set_room(room.clone());
        let reader = Arc::new(ReadThrough::new(
            Arc::new(store),
            metrics.clone(),
            crate::reader::Readahead {
                chunks: config.cache.readahead_chunks,
                max_bytes: config.cache.readahead_max.bytes(),
            },
            config.cache.max_origin_fetches,
            cluster.clone(),
            writeback.journal.clone(),
        ));
        let multipart =
            Multipart::open(dir.join("uploads"), config.limits.max_multipart_uploads, config.limits.max_parts, room)
                .map_err(|e| StartError::Io(format!("upload staging under {}", dir.display()), e))?;
        let kv = if config.kv.enabled() {
            let c = cluster.clone().map(|c| (c, &config.cluster));
            let node = KvNode::new(config.kv.clone(), &dir, c)
                .map_err(|e| StartError::Io(format!("KV disk tier under {}", dir.display()), e))?;
            Some(Arc::new(node))
        } else {
            None
        };
        Ok(Self {
            kv,
            tls,
            listeners: Listeners::new(&config.limits, config.kv.max_connections),
            incarnation,
            readiness: Default::default(),
            loads: crate::load::Loads::new(dir.join("loads")),
            started: std::time::Instant::now(),
            _dir_lock: dir_lock,
            meta: MetaCache::new(config.cache.metadata_entries, metrics.clone(), cluster.clone()),
            config,
            origins,
            reader,
            multipart,
            metrics,
            cluster,
            writeback,
        })
    }

    /// The origin with this configured name (as peers name it).
    pub fn origin_named(&self, name: &str) -> Option<&OriginEntry> {
        self.origins.iter().find(|o| o.origin.name() == name)
    }

    /// The origin serving `bucket`: the one exposing it by name, else the account-mode origin.
    pub fn origin_for(&self, bucket: &str) -> Option<&OriginEntry> {
        self.origins
            .iter()
            .find(|o| o.config.bucket.as_deref() == Some(bucket))
            .or_else(|| self.origins.iter().find(|o| o.config.bucket.is_none()))
    }
}

/// Takes the cache directory's exclusive lock and writes this process's pid into the lock file;
/// fails, naming the holder's pid, when another process has it. The kernel releases the lock when
/// the process ends, however it ends.
fn lock_cache_dir(dir: &Path) -> Result<File, StartError> {
    let path = dir.join(LOCK_FILE);
    let io = |what: &str, e| StartError::Io(format!("{what} {}", path.display()), e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("open lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(StartError::InUse(format!(
                "cache dir {} is in use by another cairn node (pid {holder}, lock file {}); each node needs its own cache.dir",
                dir.display(),
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    file.set_len(0).map_err(|e| io("truncate lock file", e))?;
    file.rewind().map_err(|e| io("rewind lock file", e))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(|e| io("write pid to", e))?;
    Ok(file)
}

/// The id in `<dir>/incarnation`, created (durably) when missing or unreadable as an id.
fn read_or_create_incarnation(dir: &Path) -> Result<String, StartError> {
    let path = dir.join(INCARNATION_FILE);
    let io = |what: &str, e| StartError::Io(format!("{what} {}", path.display()), e);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_incarnation(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(text) => {
            tracing::warn!(path = %path.display(), content = %text.trim(), "incarnation file is not a 32-hex-digit id; starting a new incarnation");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", e)),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| io("create", e))?;
    Ok(id)
}

fn is_incarnation(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_directory_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_cache_dir(dir.path()).expect("first lock");
        let err = lock_cache_dir(dir.path()).expect_err("second lock must fail").to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        lock_cache_dir(dir.path()).expect("lock again once released");
    }

    #[test]
    fn incarnation_survives_a_reopen_and_changes_when_the_directory_is_wiped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = read_or_create_incarnation(dir.path()).expect("create");
        assert!(is_incarnation(&first), "{first}");
        assert_eq!(read_or_create_incarnation(dir.path()).expect("reopen"), first);
        std::fs::remove_file(dir.path().join(INCARNATION_FILE)).expect("wipe");
        let second = read_or_create_incarnation(dir.path()).expect("recreate");
        assert!(is_incarnation(&second) && second != first);
        std::fs::write(dir.path().join(INCARNATION_FILE), "garbage").expect("corrupt");
        let third = read_or_create_incarnation(dir.path()).expect("replace garbage");
        assert!(is_incarnation(&third) && third != second);
    }
}
