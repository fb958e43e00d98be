//! Everything a running node shares between requests.

use std::path::PathBuf;
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
}

impl NodeState {
    pub fn new(config: Config) -> Result<Self, StartError> {
        config.validate().map_err(|e| StartError::Config(e.to_string()))?;
        let dir = PathBuf::from(&config.cache.dir);
        std::fs::create_dir_all(&dir).map_err(|e| StartError::Io(format!("cache dir {}", dir.display()), e))?;
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
        let cluster = if config.cluster.enabled() {
            Some(Arc::new(Cluster::load(&config.cluster, metrics.clone()).map_err(StartError::Config)?))
        } else {
            None
        };
        let writeback =
            WriteBack::open(dir.join("writeback"), config.writeback.clone(), config.cluster.node_id.clone())
                .map_err(|e| StartError::Io(format!("write-back journal under {}", dir.display()), e))?;
        writeback.journal.set_room(room.clone());
        let reader = Arc::new(ReadThrough::new(
            Arc::new(store),
            metrics.clone(),
            config.cache.readahead_chunks,
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
