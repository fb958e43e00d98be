//! The KV keyspace in a cluster: which nodes hold a key, forwarding of commands to them over the
//! peer transport (`POST /kv`, a RESP command in, a RESP2 reply out), and the peer side that runs
//! such a command on its own store and never forwards it again.
//!
//! A key's candidates are its placement ranking under a KV-only hash namespace (so KV keys and
//! chunks spread independently), healthy nodes first. Reads ask the first candidate that answers;
//! writes go to the first `kv.replicas` that answer. Multi-key reads are split by candidate and
//! sent in parallel; a node that cannot be reached is marked suspect and its keys answer as misses
//! (nil, 0), never as an error or someone else's bytes.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_core::cluster::NodeEntry;
use cairn_core::config::ClusterSection;
use cairn_core::placement::key_hash;
use cairn_kv::resp::{self, Parsed};
use cairn_kv::{Command, Reply};
use futures::future::join_all;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::cluster::{Cluster, PeerClient};
use crate::kv::{KvCounters, KvNode};
use crate::peer_auth::AUTH_HEADER;

/// Prefix of the KV hash namespace, so a KV key never lands where a chunk with the same bytes would.
const KV_NAMESPACE: &[u8] = b"cairn-kv\0";
/// Header marking a peer reply whose body is one value (rather than a RESP reply).
const REPLY_HEADER: &str = "x-cairn-kv-reply";
/// Longest wait for a peer's answer to a KV command (capped by `cluster.peer_max_wait`): an
/// inference engine would rather miss than stall, and even a 512 MiB value moves in about a second.
const KV_FORWARD_MAX_WAIT: Duration = Duration::from_secs(10);
/// Rounds of a multi-key read: the first candidates, then the next ones of keys whose node failed.
const MAX_READ_ROUNDS: usize = 3;
/// Nesting accepted in a peer's reply (MGET answers are one level deep).
const MAX_REPLY_DEPTH: usize = 4;

/// A request body sent as the frames it was built from, so a forwarded value is not copied.
struct Segments(VecDeque<Bytes>);

impl http_body::Body for Segments {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

pub struct Router {
    cluster: Arc<Cluster>,
    client: PeerClient<Segments>,
    replicas: usize,
    max_wait: Duration,
}

/// Where a command goes: this node, or a peer.
#[derive(Clone)]
enum Target {
    Local,
    Peer(NodeEntry),
}

/// The part of a key that decides its placement: the hash tag, as in Redis Cluster (the bytes
/// between the first `{` and the next `}`, when not empty), else the whole key. Keys with one tag
/// have one owner, so a MULTI/EXEC over them runs on one node.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&c| c == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&c| c == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

pub fn kv_hash(key: &[u8]) -> u64 {
    let key = hash_tag(key);
    let mut b = Vec::with_capacity(KV_NAMESPACE.len() + key.len());
    b.extend_from_slice(KV_NAMESPACE);
    b.extend_from_slice(key);
    key_hash(&b)
}

impl Router {
    pub fn new(cluster: Arc<Cluster>, cfg: &ClusterSection, replicas: usize) -> Result<Self, String> {
        let client = crate::cluster::peer_client(cfg, cluster.tls())?;
        Ok(Self { cluster, client, replicas, max_wait: cfg.peer_max_wait.0.min(KV_FORWARD_MAX_WAIT) })
    }

    fn targets(&self, key: &[u8]) -> Vec<Target> {
        let route = self.cluster.route_with(kv_hash(key), self.replicas);
        route
            .candidates
            .into_iter()
            .map(|n| if n.id == self.cluster.node_id { Target::Local } else { Target::Peer(n) })
            .collect()
    }

    /// The nodes a key's writes go to (its first `kv.replicas` candidates), by id.
    pub fn owners(&self, key: &[u8]) -> Vec<String> {
        let route = self.cluster.route_with(kv_hash(key), self.replicas);
        route.candidates.into_iter().take(self.replicas).map(|n| n.id).collect()
    }

    /// Runs a transaction on the owners of its keys (all of them one owner, checked when queued);
    /// the first answer is the reply, as for a write.
    pub async fn exec(&self, kv: &KvNode, cmds: Vec<Command>) -> Reply {
        let keys: Vec<&Bytes> = cmds.iter().flat_map(|c| c.keys()).collect();
        let Some(first) = keys.first() else { return kv.run_transaction_local(&cmds).await };
        let owners = self.owners(first);
        if keys.iter().any(|k| self.owners(k) != owners) {
            return Reply::err(
                "EXECABORT Transaction discarded because its keys no longer have one owner (the cluster changed); retry it",
            );
        }
        let mut body = resp::encode_command(&[Bytes::from_static(b"MULTI")]);
        for c in &cmds {
            match c.to_args() {
                Some(args) => body.extend(resp::encode_command(&args)),
                None => return Reply::err("EXECABORT Transaction discarded: a command cannot be sent to its owner"),
            }
        }
        body.extend(resp::encode_command(&[Bytes::from_static(b"EXEC")]));
        let mut candidates = self.targets(first).into_iter();
        let mut replies = Vec::new();
        while replies.len() < self.replicas {
            let batch: Vec<Target> = candidates.by_ref().take(self.replicas - replies.len()).collect();
            if batch.is_empty() {
                break;
            }
            let runs = batch.iter().map(|t| async {
                match t {
                    Target::Local => Some(kv.run_transaction_local(&cmds).await),
                    Target::Peer(n) => self.send(kv, n, body.clone()).await,
                }
            });
            replies.extend(join_all(runs).await.into_iter().flatten());
        }
        replies
            .into_iter()
            .next()
            .unwrap_or_else(|| Reply::err("EXECABORT Transaction discarded: no node holding its keys is reachable"))
    }

    /// Runs a data command on the owners of its keys.
    pub async fn dispatch(&self, kv: &KvNode, cmd: Command) -> Reply {
        match cmd {
            Command::Get(ref k)
            | Command::Strlen(ref k)
            | Command::Type(ref k)
            | Command::MemoryUsage(ref k)
            | Command::Ttl { key: ref k, .. } => {
                let miss = match &cmd {
                    Command::Get(_) | Command::MemoryUsage(_) => Reply::Nil,
                    Command::Ttl { .. } => Reply::Int(-2),
                    Command::Type(_) => Reply::Simple("none"),
                    _ => Reply::Int(0),
                };
                self.read_one(kv, k.clone(), &cmd, miss).await
            }
            Command::Set { ref key, .. }
            | Command::Expire { ref key, .. }
            | Command::GetDel(ref key)
            | Command::GetEx { ref key, .. }
            | Command::Persist(ref key) => self.write_one(kv, key.clone(), &cmd).await,
            Command::Del(keys) => {
                let each = keys.iter().map(|k| async move {
                    let del = Command::Del(vec![k.clone()]);
                    self.write_one(kv, k.clone(), &del).await
                });
                let n = join_all(each).await.iter().filter(|r| matches!(r, Reply::Int(n) if *n > 0)).count();
                Reply::Int(n as i64)
            }
            Command::MSet(pairs) => {
                let each = pairs.iter().map(|(k, v)| {
                    let set = Command::MSet(vec![(k.clone(), v.clone())]);
                    async move { self.write_one(kv, k.clone(), &set).await }
                });
                let replies = join_all(each).await;
                replies.into_iter().find(|r| matches!(r, Reply::Error(_))).unwrap_or_else(Reply::ok)
            }
            Command::Exists(keys) => self.count(kv, keys, Command::Exists).await,
            Command::Touch(keys) => self.count(kv, keys, Command::Touch).await,
            Command::MGet(keys) => self.mget(kv, keys).await,
            other => kv.run_local(&other).await,
        }
    }

    async fn read_one(&self, kv: &KvNode, key: Bytes, cmd: &Command, miss: Reply) -> Reply {
        for t in self.targets(&key) {
            match self.run_on(kv, &t, cmd).await {
                Some(r) => return r,
                None => continue,
            }
        }
        miss
    }

    /// Sends a write to the first `replicas` candidates that answer; the first answer is the reply.
    async fn write_one(&self, kv: &KvNode, key: Bytes, cmd: &Command) -> Reply {
        let mut candidates = self.targets(&key).into_iter();
        let mut replies = Vec::new();
        while replies.len() < self.replicas {
            let batch: Vec<Target> = candidates.by_ref().take(self.replicas - replies.len()).collect();
            if batch.is_empty() {
                break;
            }
            replies.extend(join_all(batch.iter().map(|t| self.run_on(kv, t, cmd))).await.into_iter().flatten());
        }
        match (cmd, replies.is_empty()) {
            (_, true) => Reply::err("ERR no node holding this key is reachable"),
            // A key deleted on any replica counts as deleted.
            (Command::Del(_), false) => {
                replies.into_iter().max_by_key(|r| matches!(r, Reply::Int(n) if *n > 0)).unwrap_or(Reply::Int(0))
            }
            _ => replies.into_iter().next().unwrap_or(Reply::Nil),
        }
    }

    /// Groups the keys at `idx` by the first candidate of each.
    fn group(&self, keys: &[Bytes], idx: &[usize]) -> Vec<(Target, Vec<usize>)> {
        let mut groups: HashMap<String, (Target, Vec<usize>)> = HashMap::new();
        for &i in idx {
            let k = &keys[i];
            let t = self.targets(k).into_iter().next().unwrap_or(Target::Local);
            let id = match &t {
                Target::Local => String::new(),
                Target::Peer(n) => n.id.clone(),
            };
            groups.entry(id).or_insert_with(|| (t, Vec::new())).1.push(i);
        }
        groups.into_values().collect()
    }

    /// Runs a multi-key read split by first candidate, in parallel; the keys of a node that
    /// cannot be reached are asked again of their next candidate (it is now suspect, so ranked
    /// last), a few rounds at most. Returns each answered group's key indices and reply.
    async fn multi_read(
        &self,
        kv: &KvNode,
        keys: &[Bytes],
        make: fn(Vec<Bytes>) -> Command,
    ) -> Vec<(Vec<usize>, Reply)> {
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut answered = Vec::new();
        for _ in 0..MAX_READ_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let groups = self.group(keys, &pending);
            let calls = groups.into_iter().map(|(t, idx)| {
                let sub = make(idx.iter().map(|&i| keys[i].clone()).collect());
                async move { (idx, self.run_on(kv, &t, &sub).await) }
            });
            pending.clear();
            for (idx, reply) in join_all(calls).await {
                match reply {
                    Some(r) => answered.push((idx, r)),
                    None => pending.extend(idx),
                }
            }
        }
        answered
    }

    async fn count(&self, kv: &KvNode, keys: Vec<Bytes>, make: fn(Vec<Bytes>) -> Command) -> Reply {
        let answered = self.multi_read(kv, &keys, make).await;
        Reply::Int(answered.iter().map(|(_, r)| if let Reply::Int(n) = r { *n } else { 0 }).sum())
    }

    async fn mget(&self, kv: &KvNode, keys: Vec<Bytes>) -> Reply {
        let mut out = vec![Reply::Nil; keys.len()];
        for (idx, reply) in self.multi_read(kv, &keys, Command::MGet).await {
            if let Reply::Array(items) = reply
                && items.len() == idx.len()
            {
                for (&i, item) in idx.iter().zip(items) {
                    // Only a value or a miss is taken from a peer; anything else is a miss.
                    if matches!(item, Reply::Bulk(_)) {
                        out[i] = item;
                    }
                }
            }
        }
        Reply::Array(out)
    }

    /// Runs `cmd` on one target; `None` when the target could not be reached (it is marked suspect).
    async fn run_on(&self, kv: &KvNode, t: &Target, cmd: &Command) -> Option<Reply> {
        let node = match t {
            Target::Local => return Some(kv.run_local(cmd).await),
            Target::Peer(n) => n,
        };
        let Some(args) = cmd.to_args() else { return Some(Reply::err("ERR not a forwardable command")) };
        self.send(kv, node, resp::encode_command(&args)).await
    }

    /// Sends an encoded command (or transaction) to a peer; `None` when it could not be reached
    /// (it is marked suspect).
    async fn send(&self, kv: &KvNode, node: &NodeEntry, body: Vec<Bytes>) -> Option<Reply> {
        KvCounters::add(&kv.counters.forwarded, 1);
        match self.forward(node, body).await {
            Ok(r) => Some(r),
            Err(e) => {
                KvCounters::add(&kv.counters.forward_failures, 1);
                tracing::warn!(peer = %node.id, error = %e, "KV forward failed; the peer's keys answer as misses");
                self.cluster.mark_suspect(&node.id);
                None
            }
        }
    }

    async fn forward(&self, node: &NodeEntry, body: Vec<Bytes>) -> Result<Reply, String> {
        let body = Segments(body.into());
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.cluster.peer_url(&node.addr, "/kv"))
            .header(AUTH_HEADER, self.cluster.sign(&Method::POST, "/kv"))
            .body(body)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let is_bulk = resp.headers().get(REPLY_HEADER).is_some_and(|v| v == "bulk");
            let expected = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut buf = BytesMut::with_capacity(expected);
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reply body: {e}"))?;
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&buf)));
            }
            let body = buf.freeze();
            if is_bulk {
                if body.len() != expected {
                    return Err(format!("short value: {} of {expected} bytes", body.len()));
                }
                return Ok(Reply::Bulk(body));
            }
            let (reply, used) = resp::parse_reply(&body, MAX_REPLY_DEPTH).map_err(|e| e.to_string())?;
            if used != body.len() {
                return Err("trailing bytes after the reply".into());
            }
            Ok(reply)
        };
        match tokio::time::timeout(self.max_wait, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply in {:?}", started.elapsed())),
        }
    }
}

/// `POST /kv` on the peer port: runs one data command on this node's store, never forwarding it.
pub async fn serve_peer(kv: &KvNode, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r
    };
    let expected = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if expected > kv.limits.max_command {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::from("command over the size limit"));
    }
    // One copy, out of hyper's frames into a buffer of the declared size: the stored value is a
    // slice of it.
    let mut buf = BytesMut::with_capacity(expected);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    if buf.len() + d.len() > kv.limits.max_command {
                        return reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::from("command over the size limit"));
                    }
                    buf.extend_from_slice(d);
                }
            }
            // The sender went away mid-command: nothing was stored.
            Err(e) => return reply(StatusCode::BAD_REQUEST, Bytes::from(format!("body: {e}"))),
        }
    }
    // One data command, or a transaction: MULTI, data commands, EXEC.
    let mut cmds = Vec::new();
    let mut transaction = false;
    loop {
        let args = match resp::parse_command(&buf, &kv.limits) {
            Ok(Parsed::Complete(args, len)) => resp::take_command(&mut buf, &args, len),
            Ok(_) => return reply(StatusCode::BAD_REQUEST, Bytes::from("incomplete command")),
            Err(e) => return reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
        };
        let word = |w: &str| args.len() == 1 && args[0].eq_ignore_ascii_case(w.as_bytes());
        if cmds.is_empty() && !transaction && word("MULTI") {
            transaction = true;
            continue;
        }
        if transaction && word("EXEC") {
            break;
        }
        match Command::parse(&args, kv.cfg.max_key_size) {
            Ok(cmd) if cmd.is_data() => cmds.push(cmd),
            Ok(_) => return reply(StatusCode::BAD_REQUEST, Bytes::from("not a data command")),
            // The sender checked the command: a peer that reads it otherwise answers as a client would.
            Err(e) if !transaction => return reply(StatusCode::OK, encode_reply(&Reply::err(e.to_string()))),
            Err(e) => return reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
        }
        if !transaction {
            break;
        }
    }
    if !buf.is_empty() {
        return reply(StatusCode::BAD_REQUEST, Bytes::from("trailing bytes after the command"));
    }
    let out = match cmds.as_slice() {
        [cmd] if !transaction => kv.run_local(cmd).await,
        _ => kv.run_transaction_local(&cmds).await,
    };
    if let Reply::Bulk(value) = out {
        // A single value goes back as the body itself, not copied into a RESP frame.
        let mut r = reply(StatusCode::OK, value);
        r.headers_mut().insert(REPLY_HEADER, http::HeaderValue::from_static("bulk"));
        return r;
    }
    reply(StatusCode::OK, encode_reply(&out))
}

fn encode_reply(out: &Reply) -> Bytes {
    let segs = resp::encode(out, false);
    if segs.len() == 1 { segs.into_iter().next().unwrap_or_default() } else { Bytes::from(segs.concat()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_hash_apart_from_chunk_keys() {
        assert_ne!(kv_hash(b"k"), key_hash(b"k"));
        assert_eq!(kv_hash(b"k"), kv_hash(b"k"));
    }

    #[test]
    fn hash_tags_decide_placement() {
        assert_eq!(hash_tag(b"{user1}:a"), b"user1");
        assert_eq!(kv_hash(b"{user1}:a"), kv_hash(b"x{user1}b"));
        assert_eq!(kv_hash(b"{user1}:a"), kv_hash(b"user1"));
        assert_eq!(hash_tag(b"{}:a"), b"{}:a");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b"a{b}{c}"), b"b");
        assert_eq!(hash_tag(b"a}b{"), b"a}b{");
    }
}
