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

pub fn kv_hash(key: &[u8]) -> u64 {
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

    /// Runs a data command on the owners of its keys.
    pub async fn dispatch(&self, kv: &KvNode, cmd: Command) -> Reply {
        match cmd {
            Command::Get(ref k) | Command::Strlen(ref k) | Command::Ttl { key: ref k, .. } => {
                let miss = match &cmd {
                    Command::Get(_) => Reply::Nil,
                    Command::Ttl { .. } => Reply::Int(-2),
                    _ => Reply::Int(0),
                };
                self.read_one(kv, k.clone(), &cmd, miss).await
            }
            Command::Set { ref key, .. } | Command::Expire { ref key, .. } => {
                self.write_one(kv, key.clone(), &cmd).await
            }
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
                    let set = Command::Set { key: k.clone(), value: v.clone(), opts: Default::default(), get: false };
                    async move { self.write_one(kv, k.clone(), &set).await }
                });
                let replies = join_all(each).await;
                replies.into_iter().find(|r| matches!(r, Reply::Error(_))).unwrap_or_else(Reply::ok)
            }
            Command::Exists(keys) => self.exists(kv, keys).await,
            Command::MGet(keys) => self.mget(kv, keys).await,
            other => other.run_local(&kv.store).await,
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

    async fn exists(&self, kv: &KvNode, keys: Vec<Bytes>) -> Reply {
        let answered = self.multi_read(kv, &keys, Command::Exists).await;
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
            Target::Local => return Some(cmd.run_local(&kv.store).await),
            Target::Peer(n) => n,
        };
        KvCounters::add(&kv.counters.forwarded, 1);
        match self.forward(node, cmd).await {
            Ok(r) => Some(r),
            Err(e) => {
                KvCounters::add(&kv.counters.forward_failures, 1);
                tracing::warn!(peer = %node.id, error = %e, "KV forward failed; the peer's keys answer as misses");
                self.cluster.mark_suspect(&node.id);
                None
            }
        }
    }

    async fn forward(&self, node: &NodeEntry, cmd: &Command) -> Result<Reply, String> {
        let args = to_args(cmd).ok_or("not a forwardable command")?;
        let body = Segments(resp::encode_command(&args).into());
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

/// The wire form of a data command, for a peer.
fn to_args(cmd: &Command) -> Option<Vec<Bytes>> {
    let s = |x: &'static str| Bytes::from_static(x.as_bytes());
    let with = |name: &'static str, keys: &[Bytes]| {
        let mut v = vec![s(name)];
        v.extend(keys.iter().cloned());
        v
    };
    Some(match cmd {
        Command::Get(k) => vec![s("GET"), k.clone()],
        Command::Strlen(k) => vec![s("STRLEN"), k.clone()],
        Command::Ttl { key, millis } => vec![s(if *millis { "PTTL" } else { "TTL" }), key.clone()],
        Command::Expire { key, ms } => vec![s("PEXPIRE"), key.clone(), Bytes::from(ms.to_string())],
        Command::Exists(ks) => with("EXISTS", ks),
        Command::MGet(ks) => with("MGET", ks),
        Command::Del(ks) => with("DEL", ks),
        Command::Set { key, value, opts, get } => {
            let mut v = vec![s("SET"), key.clone(), value.clone()];
            match opts.condition {
                cairn_kv::SetCondition::IfAbsent => v.push(s("NX")),
                cairn_kv::SetCondition::IfPresent => v.push(s("XX")),
                cairn_kv::SetCondition::Always => {}
            }
            if opts.keep_ttl {
                v.push(s("KEEPTTL"));
            } else if let Some(ttl) = opts.ttl {
                v.push(s("PX"));
                v.push(Bytes::from(ttl.as_millis().to_string()));
            }
            if *get {
                v.push(s("GET"));
            }
            v
        }
        _ => return None,
    })
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
    let args = match resp::parse_command(&buf, &kv.limits) {
        Ok(Parsed::Complete(args, len)) if len == buf.len() => resp::take_command(&mut buf, &args, len),
        Ok(_) => return reply(StatusCode::BAD_REQUEST, Bytes::from("incomplete command")),
        Err(e) => return reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
    };
    let out = match Command::parse(&args, kv.cfg.max_key_size) {
        Ok(cmd) if to_args(&cmd).is_some() => cmd.run_local(&kv.store).await,
        Ok(_) => Reply::err("ERR not a data command"),
        Err(e) => Reply::err(e.to_string()),
    };
    if let Reply::Bulk(value) = out {
        // A single value goes back as the body itself, not copied into a RESP frame.
        let mut r = reply(StatusCode::OK, value);
        r.headers_mut().insert(REPLY_HEADER, http::HeaderValue::from_static("bulk"));
        return r;
    }
    let segs = resp::encode(&out, false);
    let body = if segs.len() == 1 { segs.into_iter().next().unwrap_or_default() } else { Bytes::from(segs.concat()) };
    reply(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Command {
        let args: Vec<Bytes> = s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
        Command::parse(&args, 64).expect("parses")
    }

    /// What a peer receives means the same as what the client sent.
    #[test]
    fn forwarded_commands_keep_their_meaning() {
        for s in [
            "GET k",
            "STRLEN k",
            "TTL k",
            "PTTL k",
            "PEXPIRE k 1500",
            "EXISTS a b a",
            "MGET a b",
            "DEL a b",
            "SET k v",
            "SET k v NX PX 250 GET",
            "SET k v XX KEEPTTL",
        ] {
            let c = cmd(s);
            let wire = to_args(&c).expect("forwardable");
            assert_eq!(Command::parse(&wire, 64), Ok(c), "{s}");
        }
        // EXPIRE in seconds travels as PEXPIRE in milliseconds; SET EX as PX.
        assert_eq!(Command::parse(&to_args(&cmd("EXPIRE k 2")).expect("fwd"), 64), Ok(cmd("PEXPIRE k 2000")));
        assert_eq!(Command::parse(&to_args(&cmd("SET k v EX 3")).expect("fwd"), 64), Ok(cmd("SET k v PX 3000")));
        assert!(to_args(&cmd("PING")).is_none());
        assert!(to_args(&cmd("INFO")).is_none());
    }

    #[test]
    fn kv_keys_hash_apart_from_chunk_keys() {
        assert_ne!(kv_hash(b"k"), key_hash(b"k"));
        assert_eq!(kv_hash(b"k"), kv_hash(b"k"));
    }
}
