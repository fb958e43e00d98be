//! Preloading (`cairn load`, `POST /v1/load` on the admin port): the node that takes a load job
//! lists the objects under a prefix (or takes a list of keys) and has every chunk of each fetched
//! from the origin into its owner, in parallel (`parallel` chunks at once), paced to `rate` bytes
//! per second. With `replicate`, every node of a set (all, one zone, one rack) also keeps a copy
//! of each chunk on its own disk, fetched through the owner (so fan-out applies), for roll-outs
//! where every host reads the same weights.
//!
//! A job's id is a digest of what it loads, so starting the same load again attaches to it while it
//! runs and resumes it otherwise. Its progress and the objects it completed are kept in
//! `<cache dir>/loads/<id>.json` (rewritten at most once a second and at the end): a job
//! interrupted by a restart is resumed at start-up and skips the objects already done.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_core::ObjectVersion;
use cairn_core::cluster::NodeEntry;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::cluster::ChunkQuery;
use crate::meta::MetaKey;
use crate::reader::ObjectHandle;
use crate::state::NodeState;

/// Errors kept per job (the count goes on).
const MAX_ERRORS: usize = 20;
/// Objects listed per origin request.
const LIST_PAGE: usize = 1000;
/// How often a running job's file is rewritten.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Finished jobs kept for `cairn status` (the oldest are forgotten).
const KEEP_FINISHED: usize = 32;

fn default_parallel() -> usize {
    16
}

/// What to load.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    pub bucket: String,
    /// Every object whose key starts with this (ignored when `keys` is given).
    #[serde(default)]
    pub prefix: String,
    /// These objects only.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Origin bytes per second over the whole job; 0: unlimited.
    #[serde(default)]
    pub rate: u64,
    /// Chunks fetched at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Nodes that also keep a copy of every chunk: "" (none), "all", "zone=Z" or "rack=R".
    #[serde(default)]
    pub replicate: String,
}

impl LoadSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("bucket is required".into());
        }
        if !(1..=1024).contains(&self.parallel) {
            return Err("parallel must be between 1 and 1024".into());
        }
        if !(self.replicate.is_empty()
            || self.replicate == "all"
            || self.replicate.strip_prefix("zone=").is_some_and(|z| !z.is_empty())
            || self.replicate.strip_prefix("rack=").is_some_and(|r| !r.is_empty()))
        {
            return Err(format!("replicate must be \"all\", \"zone=NAME\" or \"rack=NAME\", not {:?}", self.replicate));
        }
        Ok(())
    }

    /// The job's id: what it loads, not how fast.
    pub fn id(&self) -> String {
        let what = serde_json::json!([self.bucket, self.prefix, self.keys, self.replicate]).to_string();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(what.as_bytes()))
    }
}

/// A job's progress, as `GET /v1/loads` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadStatus {
    pub id: String,
    pub spec: Option<LoadSpec>,
    /// "running", "done", "failed" (some objects could not be loaded) or "cancelled".
    pub state: String,
    /// Set once every object is known (the totals below then stop growing).
    pub listed: bool,
    pub objects_total: u64,
    pub objects_done: u64,
    /// Objects done by an earlier run of the job, skipped by this one.
    pub objects_skipped: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Nodes keeping a copy of every chunk (`replicate`).
    pub replica_nodes: usize,
    pub elapsed_secs: f64,
    pub bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
    pub error_count: u64,
    pub errors: Vec<String>,
}

/// What `<cache dir>/loads/<id>.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    status: LoadStatus,
    done: Vec<String>,
}

struct Job {
    status: Mutex<LoadStatus>,
    done: Mutex<HashSet<String>>,
    bytes_done: AtomicU64,
    cancel: AtomicBool,
    started: Instant,
    /// Bytes done by this run (the rate counts these only).
    run_bytes: AtomicU64,
}

impl Job {
    fn snapshot(&self) -> LoadStatus {
        let mut s = self.status.lock().clone();
        s.bytes_done = self.bytes_done.load(Ordering::Relaxed);
        if s.state == "running" {
            s.elapsed_secs = self.started.elapsed().as_secs_f64();
            let run = self.run_bytes.load(Ordering::Relaxed) as f64;
            s.bytes_per_sec = if s.elapsed_secs > 0.0 { run / s.elapsed_secs } else { 0.0 };
            s.eta_secs = (s.listed && s.bytes_per_sec > 0.0)
                .then(|| s.bytes_total.saturating_sub(s.bytes_done) as f64 / s.bytes_per_sec);
        }
        s
    }

    fn error(&self, e: String) {
        let mut s = self.status.lock();
        s.error_count += 1;
        if s.errors.len() < MAX_ERRORS {
            s.errors.push(e);
        }
    }
}

/// Origin bytes per second over a job: each chunk reserves its time slot.
struct Pace {
    rate: u64,
    next: Mutex<Instant>,
}

impl Pace {
    async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
}

/// The load jobs this node runs.
pub struct Loads {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Loads {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, jobs: Mutex::new(HashMap::new()) }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Starts `spec`, or returns the job already running it. A job that ran before (here, or before
    /// a restart) resumes and skips the objects it completed.
    pub async fn start(&self, state: &Arc<NodeState>, spec: LoadSpec) -> Result<LoadStatus, String> {
        spec.validate()?;
        let Some(entry) = state.origin_for(&spec.bucket) else {
            return Err(format!("bucket {:?} does not exist", spec.bucket));
        };
        match entry.origin.bucket_exists(&spec.bucket).await {
            Ok(true) => {}
            Ok(false) => return Err(format!("bucket {:?} does not exist", spec.bucket)),
            Err(e) => return Err(format!("bucket {:?}: {e}", spec.bucket)),
        }
        let replica_nodes = replica_set(state, &spec.replicate)?;
        let id = spec.id();
        // The saved progress (the keys already loaded, possibly millions) is read off the
        // runtime and before `jobs` is locked, so listing or cancelling loads never waits for it.
        let saved = self.path(&id);
        let done: HashSet<String> = tokio::task::spawn_blocking(move || {
            std::fs::read(saved)
                .ok()
                .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
                .map(|s| s.done.into_iter().collect())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let mut jobs = self.jobs.lock();
        if let Some(job) = jobs.get(&id)
            && job.status.lock().state == "running"
        {
            return Ok(job.snapshot());
        }
        let job = Arc::new(Job {
            status: Mutex::new(LoadStatus {
                id: id.clone(),
                spec: Some(spec.clone()),
                state: "running".into(),
                replica_nodes: replica_nodes.len(),
                ..Default::default()
            }),
            done: Mutex::new(done),
            bytes_done: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            started: Instant::now(),
            run_bytes: AtomicU64::new(0),
        });
        if jobs.len() >= KEEP_FINISHED {
            let finished: Vec<String> =
                jobs.iter().filter(|(_, j)| j.status.lock().state != "running").map(|(k, _)| k.clone()).collect();
            for k in finished.into_iter().take(jobs.len() + 1 - KEEP_FINISHED) {
                jobs.remove(&k);
            }
        }
        jobs.insert(id.clone(), job.clone());
        drop(jobs);
        tracing::info!(%id, bucket = %spec.bucket, prefix = %spec.prefix, keys = spec.keys.len(), rate = spec.rate, replicate = %spec.replicate, "load started");
        let state = state.clone();
        tokio::spawn(async move {
            run(&state, &job, &spec, replica_nodes).await;
            let s = job.snapshot();
            tracing::info!(id = %s.id, state = %s.state, objects = s.objects_done, bytes = s.bytes_done, errors = s.error_count, "load finished");
            state.loads.save(&job);
        });
        Ok(self.get(&id).unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Option<LoadStatus> {
        self.jobs.lock().get(id).map(|j| j.snapshot())
    }

    /// Every job this node knows, running ones first.
    pub fn list(&self) -> Vec<LoadStatus> {
        let mut v: Vec<LoadStatus> = self.jobs.lock().values().map(|j| j.snapshot()).collect();
        v.sort_by(|a, b| (a.state != "running").cmp(&(b.state != "running")).then(a.id.cmp(&b.id)));
        v
    }

    pub fn cancel(&self, id: &str) -> bool {
        match self.jobs.lock().get(id) {
            Some(j) => {
                j.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn save(&self, job: &Job) {
        let saved = Saved { status: job.snapshot(), done: job.done.lock().iter().cloned().collect() };
        let path = self.path(&saved.status.id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&saved).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "could not save a load job's progress");
        }
    }

    /// Resumes the jobs a restart interrupted.
    pub async fn resume(&self, state: &Arc<NodeState>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            let Ok(saved) = serde_json::from_slice::<Saved>(&bytes) else { continue };
            if saved.status.state != "running" {
                continue;
            }
            let Some(spec) = saved.status.spec else { continue };
            match self.start(state, spec).await {
                Ok(s) => tracing::info!(id = %s.id, done = saved.done.len(), "load resumed after a restart"),
                Err(e) => tracing::warn!(error = %e, "could not resume a load"),
            }
        }
    }
}

/// The nodes of `replicate` ("all", "zone=Z", "rack=R"), this one included when it matches.
fn replica_set(state: &NodeState, replicate: &str) -> Result<Vec<NodeEntry>, String> {
    if replicate.is_empty() {
        return Ok(Vec::new());
    }
    let Some(cluster) = &state.cluster else {
        return Err("replicate needs a cluster: this node runs alone".into());
    };
    let nodes = cluster.up_nodes();
    let set: Vec<NodeEntry> = match replicate.split_once('=') {
        Some(("zone", z)) => nodes.into_iter().filter(|n| n.zone == z).collect(),
        Some(("rack", r)) => nodes.into_iter().filter(|n| n.rack == r).collect(),
        _ => nodes,
    };
    if set.is_empty() {
        return Err(format!("no node is up in {replicate:?}"));
    }
    Ok(set)
}

async fn run(state: &Arc<NodeState>, job: &Arc<Job>, spec: &LoadSpec, replicas: Vec<NodeEntry>) {
    let Some(entry) = state.origin_for(&spec.bucket) else { return };
    let permits = Arc::new(Semaphore::new(spec.parallel));
    let pace = Arc::new(Pace { rate: spec.rate, next: Mutex::new(Instant::now()) });
    let replicas = Arc::new(replicas);
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_save = Instant::now();
    let mut objects: Vec<(String, u64)> = spec.keys.iter().map(|k| (k.clone(), 0)).collect();
    let mut cursor: Option<String> = None;
    let mut listed = !spec.keys.is_empty();
    if listed {
        let mut s = job.status.lock();
        s.listed = true;
        s.objects_total = objects.len() as u64;
    }
    let mut next = 0;
    loop {
        if job.cancel.load(Ordering::Relaxed) {
            break;
        }
        if next == objects.len() {
            if listed {
                break;
            }
            match entry.origin.list(&spec.bucket, &spec.prefix, None, cursor.as_deref(), LIST_PAGE).await {
                Ok(page) => {
                    cursor = page.next_start_after.clone();
                    listed = cursor.is_none();
                    objects.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
                    let mut s = job.status.lock();
                    s.listed = listed;
                    s.objects_total = objects.len() as u64;
                    s.bytes_total = objects.iter().map(|(_, n)| n).sum();
                }
                Err(e) => {
                    job.error(format!("listing s3://{}/{}: {e}", spec.bucket, spec.prefix));
                    break;
                }
            }
            continue;
        }
        let key = objects[next].0.clone();
        next += 1;
        if job.done.lock().contains(&key) {
            let size = if spec.keys.is_empty() {
                objects[next - 1].1
            } else {
                let k =
                    MetaKey { origin: entry.origin.name().to_owned(), bucket: spec.bucket.clone(), key: key.clone() };
                state.meta.get(&entry.origin, entry.config.metadata, k).await.map(|i| i.size).unwrap_or(0)
            };
            job.bytes_done.fetch_add(size, Ordering::Relaxed);
            let mut s = job.status.lock();
            s.objects_done += 1;
            s.objects_skipped += 1;
            if !spec.keys.is_empty() {
                s.bytes_total += size;
            }
            continue;
        }
        let meta_key =
            MetaKey { origin: entry.origin.name().to_owned(), bucket: spec.bucket.clone(), key: key.clone() };
        let info = match state.meta.get(&entry.origin, entry.config.metadata, meta_key).await {
            Ok(i) => i,
            Err(e) => {
                job.error(format!("{key}: {e}"));
                continue;
            }
        };
        {
            let mut s = job.status.lock();
            if !spec.keys.is_empty() {
                s.bytes_total += info.size;
            } else {
                // The listing's size may be older than the object.
                s.bytes_total = s.bytes_total + info.size - objects[next - 1].1;
            }
        }
        let obj = Arc::new(ObjectHandle {
            origin: entry.origin.clone(),
            version: ObjectVersion {
                origin: entry.origin.name().to_owned(),
                bucket: spec.bucket.clone(),
                key: key.clone(),
                version: info.etag.clone(),
                size: info.size,
            },
            chunk_size: entry.config.chunk_size.bytes(),
        });
        let chunks = obj.layout().chunk_count();
        if chunks == 0 {
            finish_object(job, &key);
            continue;
        }
        let remaining = Arc::new(AtomicU64::new(chunks));
        let failed = Arc::new(AtomicBool::new(false));
        for index in 0..chunks {
            let len = obj.layout().chunk_range(index).end - obj.layout().chunk_range(index).start;
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            pace.take(len).await;
            if job.cancel.load(Ordering::Relaxed) {
                break;
            }
            {
                let (state, job, obj, replicas, remaining, failed, key) = (
                    state.clone(),
                    job.clone(),
                    obj.clone(),
                    replicas.clone(),
                    remaining.clone(),
                    failed.clone(),
                    key.clone(),
                );
                tasks.spawn(async move {
                    match load_chunk(&state, &obj, index, &replicas).await {
                        Ok(()) => {
                            job.bytes_done.fetch_add(len, Ordering::Relaxed);
                            job.run_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            job.error(format!("{key} chunk {index}: {e}"));
                        }
                    }
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 && !failed.load(Ordering::Relaxed) {
                        finish_object(&job, &key);
                    }
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
            if last_save.elapsed() >= SAVE_EVERY {
                state.loads.save(job);
                last_save = Instant::now();
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut s = job.status.lock();
    s.elapsed_secs = job.started.elapsed().as_secs_f64();
    let run = job.run_bytes.load(Ordering::Relaxed) as f64;
    s.bytes_per_sec = if s.elapsed_secs > 0.0 { run / s.elapsed_secs } else { 0.0 };
    s.eta_secs = None;
    s.state = if job.cancel.load(Ordering::Relaxed) {
        "cancelled"
    } else if s.error_count > 0 {
        "failed"
    } else {
        "done"
    }
    .into();
}

fn finish_object(job: &Job, key: &str) {
    job.done.lock().insert(key.to_owned());
    job.status.lock().objects_done += 1;
}

/// One chunk into its owner (which fetches it from the origin unless it holds it), then into every
/// node of the replica set.
async fn load_chunk(state: &NodeState, obj: &ObjectHandle, index: u64, replicas: &[NodeEntry]) -> Result<(), String> {
    let id = obj.chunk_id(index);
    match &state.cluster {
        None => {
            state.reader.local_chunk(obj, index).await.map_err(|e| e.to_string())?;
        }
        Some(cluster) => {
            let route = cluster.route(id.0 as u64);
            if route.self_is_owner {
                state.reader.local_chunk(obj, index).await.map_err(|e| e.to_string())?;
            } else {
                let q = ChunkQuery::new(&obj.version, obj.chunk_size, index);
                let mut last = String::from("no owner");
                let mut ok = false;
                for node in route.candidates.iter().take_while(|n| n.id != cluster.node_id) {
                    match cluster.warm_chunk(node, &q, false).await {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(crate::cluster::PeerError::Origin(e)) => return Err(e.to_string()),
                        Err(crate::cluster::PeerError::Unavailable(m)) => last = m,
                    }
                }
                if !ok {
                    // No owner reachable: this node holds it instead.
                    tracing::debug!(chunk = %id, error = %last, "no owner took the chunk; loading it here");
                    state.reader.local_chunk(obj, index).await.map_err(|e| e.to_string())?;
                }
            }
            for node in replicas {
                if node.id == cluster.node_id {
                    state.reader.keep_chunk(obj, index).await.map_err(|e| e.to_string())?;
                } else {
                    let q = ChunkQuery::new(&obj.version, obj.chunk_size, index);
                    cluster.warm_chunk(node, &q, true).await.map_err(|e| match e {
                        crate::cluster::PeerError::Origin(e) => e.to_string(),
                        crate::cluster::PeerError::Unavailable(m) => m,
                    })?;
                }
            }
        }
    }
    Ok(())
}
