//! The cairn daemon: a read-through cache for object storage with an S3-compatible endpoint.
//!
//! [`start`] builds the node's shared state (origins, tiered chunk store, metadata cache,
//! read-through with single-flight and readahead, multipart staging) and serves the S3 endpoint
//! and the admin endpoint (and the KV endpoint, `kv.rs`) until the returned [`RunningNode`] is dropped or shut down.

pub mod client_api;
pub mod cluster;
pub mod conditional;
pub mod gossip;
pub mod integrity;
pub mod kube;
pub mod kv;
pub mod kv_conn;
pub mod kv_route;
pub mod load;
pub mod meta;
pub mod metrics;
pub mod multipart;
pub mod part_layout;
pub mod peer;
/// Peer request signing (shared with clients, which sign with their own keys).
pub use cairn_client::sign as peer_auth;
const _: () = assert!(cairn_client::sign::MAX_SKEW_MS == cairn_membership::wire::MAX_SKEW_MS);
pub mod reader;
pub mod ready;
pub mod s3;
pub mod s3_front;
pub mod server;
pub mod singleflight;
pub mod state;
pub mod status;
pub mod tls;
pub mod writeback;

use std::net::SocketAddr;
use std::sync::Arc;

use cairn_core::Config;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub use state::NodeState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// Another process holds the cache directory.
    #[error("{0}")]
    InUse(String),
}

/// Who may do what: unsigned requests only when the configuration allows anonymous access, and
/// keys marked `read_only` only the operations that read.
struct Access {
    anonymous: bool,
    read_only: std::collections::HashSet<String>,
}

/// S3 operations that change nothing.
fn reads_only(op: &str) -> bool {
    op.starts_with("Get") || op.starts_with("Head") || op.starts_with("List")
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        match cx.credentials() {
            None if self.anonymous => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
            Some(c) if self.read_only.contains(&c.access_key) && !reads_only(cx.s3_op().name()) => {
                Err(s3s::s3_error!(AccessDenied, "This access key may only read ({} is a write).", cx.s3_op().name()))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The configured access keys; an unknown key is `InvalidAccessKeyId`, as S3 answers.
struct Keys(SimpleAuth);

#[async_trait::async_trait]
impl s3s::auth::S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        self.0.lookup(access_key).cloned().ok_or_else(|| {
            s3s::s3_error!(InvalidAccessKeyId, "The AWS Access Key Id you provided does not exist in our records.")
        })
    }
}

pub struct RunningNode {
    pub s3_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub peer_addr: Option<SocketAddr>,
    /// Address of the KV (RESP) endpoint, when enabled.
    pub kv_addr: Option<SocketAddr>,
    pub state: Arc<NodeState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops accepting connections.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// A graceful exit (SIGTERM): pending uploads get up to `grace` to reach the origin; writes
    /// still pending then are handed to replica holders, who upload them once this node is gone;
    /// then the node leaves the membership so the others drop it from their maps at once.
    pub async fn leave(&self, grace: std::time::Duration) {
        self.state.readiness.set_leaving();
        writeback::drain(&self.state, grace).await;
        if let Some(g) = self.state.cluster.as_ref().and_then(|c| c.gossip.get()) {
            g.leave().await;
        }
    }

    /// Waits until the listeners stop.
    pub async fn wait(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub async fn start(mut config: Config) -> Result<RunningNode, StartError> {
    kube::apply_node_labels(&mut config).await.map_err(StartError::Config)?;
    let state = Arc::new(NodeState::new(config)?);
    let cfg = &state.config;
    let mut builder = S3ServiceBuilder::new(s3::CairnS3 { state: state.clone() });
    if !cfg.auth.keys.is_empty() {
        let mut auth = SimpleAuth::new();
        for k in &cfg.auth.keys {
            auth.register(k.access_key.clone(), k.secret_key.clone().into());
        }
        builder.set_auth(Keys(auth));
    }
    builder.set_access(Access {
        anonymous: cfg.auth.allow_anonymous,
        read_only: cfg.auth.keys.iter().filter(|k| k.read_only).map(|k| k.access_key.clone()).collect(),
    });
    let s3 = builder.build();
    let (s3_listener, s3_addr) = server::bind(&cfg.node.listen)
        .await
        .map_err(|e| StartError::Io(format!("listen on {}", cfg.node.listen), e))?;
    let (admin_listener, admin_addr) = server::bind(&cfg.node.admin_listen)
        .await
        .map_err(|e| StartError::Io(format!("listen on {}", cfg.node.admin_listen), e))?;
    let mut tasks =
        vec![tokio::spawn(server::serve_admin(admin_listener, state.clone())), ready::Readiness::spawn_prober(&state)];
    if let Some(tls) = &state.tls {
        tasks.push(tls.spawn_reloader());
    }
    let mut peer_addr = None;
    if let Some(cluster) = &state.cluster {
        let listen = &cfg.cluster.peer_listen;
        let (listener, addr) =
            server::bind(listen).await.map_err(|e| StartError::Io(format!("listen on {listen}"), e))?;
        peer_addr = Some(addr);
        tasks.push(tokio::spawn(peer::serve_peer(listener, state.clone(), cluster.clone())));
        if cfg.cluster.gossip() {
            let joined = std::fs::metadata(std::path::Path::new(&cfg.cache.dir).join("incarnation"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or_else(gossip::now_ms);
            let (g, more) = gossip::Gossip::start(cluster.clone(), joined).await.map_err(StartError::Config)?;
            let _ = cluster.gossip.set(g);
            tasks.extend(more);
        } else {
            tasks.push(cluster.spawn_reloader());
        }
    }
    // Reads must see every acknowledged write from the first request on: the node's own journal
    // and what peers hold for keys it owns are registered before S3 requests are taken (they wait
    // in the listener's backlog meanwhile).
    writeback::recover(&state).await;
    tasks.extend(writeback::spawn(&state));
    // Loads a restart interrupted go on in the background (their origin may be slow to answer).
    tasks.push(tokio::spawn({
        let state = state.clone();
        async move { state.loads.resume(&state).await }
    }));
    tasks.push(tokio::spawn(server::serve_s3(s3_listener, s3, state.clone())));
    let mut kv_addr = None;
    if let Some(kv) = &state.kv {
        let listen = &cfg.kv.listen;
        let (listener, addr) =
            server::bind(listen).await.map_err(|e| StartError::Io(format!("listen on {listen}"), e))?;
        kv_addr = Some(addr);
        let tls = tls::Acceptor::new(state.tls.as_ref(), tls::Listener::Kv);
        let handshake_timeout = cfg.limits.header_read_timeout.0;
        tasks.push(tokio::spawn(kv_conn::serve_kv(
            listener,
            kv.clone(),
            state.listeners.kv.clone(),
            tls,
            handshake_timeout,
        )));
    }
    Ok(RunningNode { s3_addr, admin_addr, peer_addr, kv_addr, state, tasks })
}
