//! The KV endpoint's command layer: per-connection sessions (protocol version, authentication,
//! client name), the connection and server commands (HELLO, AUTH, INFO, ...), and dispatch of data
//! commands to this node's store or, in a cluster, to the keys' owners (`kv_route.rs`).
//!
//! The socket side (pipelining, buffers, limits) is in `kv_conn.rs`; the RESP codec, command
//! parsing and the store are in the `cairn-kv` crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_core::config::KvSection;
use cairn_kv::command::MAX_ECHO;
use cairn_kv::resp::Limits;
use cairn_kv::{Command, KvStore, KvStoreConfig, Reply, ReplyMode};
use parking_lot::{Mutex, RwLock};

use crate::cluster::{Cluster, secret_matches};
use crate::kv_route::Router;

/// Bytes a command may have on the wire beyond its largest value (keys, options, headers).
pub const COMMAND_OVERHEAD: usize = 1 << 20;
/// Version reported to clients that check it (the Redis feature level cairn follows).
const REDIS_VERSION: &str = "7.2.0";
/// Commands counted by COMMAND COUNT.
const COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "hello",
    "auth",
    "select",
    "client",
    "info",
    "dbsize",
    "command",
    "config",
    "quit",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "flushall",
    "flushdb",
    "scan",
    "get",
    "getdel",
    "getex",
    "set",
    "setnx",
    "setex",
    "psetex",
    "mget",
    "mset",
    "exists",
    "touch",
    "del",
    "unlink",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "type",
    "memory",
    "strlen",
];
/// Error of a command queued in a transaction whose keys have another owner than the keys queued
/// before it.
const CROSS_OWNER: &str = "CROSSSLOT Keys in request don't hash to the same slot: the keys of one MULTI/EXEC must \
                           have one owner; name them with one hash tag, e.g. {user1}:a and {user1}:b";
/// Upper bounds of the command latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Bucket counts, count and sum (seconds) of one command's latencies.
/// Commands with their own latency series, in `op_index` order.
const OPS: [&str; 10] = ["get", "set", "mget", "mset", "exists", "del", "ttl", "expire", "strlen", "other"];

/// Latencies of one command: lock-free, as they are recorded on every command.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Node-level KV counters (the store keeps hits, misses, evictions and lease pins).
#[derive(Default)]
pub struct KvCounters {
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub commands: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    pub output_limit_errors: AtomicU64,
    latency: [Histogram; OPS.len()],
}

impl KvCounters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn observe(&self, op: usize, elapsed: Duration) {
        let Some(h) = self.latency.get(op) else { return };
        let secs = elapsed.as_secs_f64();
        // Buckets are cumulative, as Prometheus reads them: bump the first that holds it, sum up
        // when rendering.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What CLIENT LIST shows of a connection; shared between its session and the node's registry.
pub struct ClientEntry {
    id: u64,
    addr: String,
    opened: Instant,
    /// Milliseconds since `opened` of the last command.
    last_ms: AtomicU64,
    last_cmd: Mutex<&'static str>,
    name: Mutex<Option<Bytes>>,
    lib: Mutex<(Option<Bytes>, Option<Bytes>)>,
    user: Mutex<&'static str>,
    user_name: Mutex<Option<String>>,
    resp: AtomicU64,
    /// Commands queued in MULTI, or -1.
    multi: std::sync::atomic::AtomicI64,
}

/// A transaction being queued (between MULTI and EXEC).
#[derive(Default)]
pub struct Transaction {
    commands: Vec<Command>,
    bytes: usize,
    /// A queued command was refused: EXEC will abort.
    failed: bool,
    /// Owners of the keys queued so far (node ids), in a cluster.
    owners: Option<Vec<String>>,
}

/// State of one client connection.
pub struct Session {
    pub id: u64,
    pub authenticated: bool,
    pub resp3: bool,
    /// Set by QUIT: close after the reply.
    pub closing: bool,
    /// CLIENT REPLY OFF.
    reply_off: bool,
    /// CLIENT REPLY SKIP was the last command: skip the next reply.
    skip_next: bool,
    multi: Option<Transaction>,
    entry: Arc<ClientEntry>,
    clients: Arc<Mutex<BTreeMap<u64, Arc<ClientEntry>>>>,
}

impl Session {
    pub fn name(&self) -> Option<Bytes> {
        self.entry.name.lock().clone()
    }

    fn set_name(&self, name: Option<Bytes>) {
        *self.entry.name.lock() = name.filter(|n| !n.is_empty());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
    }
}

/// Settings CONFIG SET can change while the node runs.
struct Live {
    requirepass: RwLock<String>,
    max_bulk: AtomicUsize,
}

pub struct KvNode {
    pub store: KvStore,
    pub cfg: KvSection,
    pub limits: Limits,
    pub counters: KvCounters,
    router: Option<Router>,
    next_id: AtomicU64,
    started: Instant,
    live: Live,
    clients: Arc<Mutex<BTreeMap<u64, Arc<ClientEntry>>>>,
    /// Commands on this node's store hold it shared; a transaction (EXEC) holds it alone, so no
    /// other command runs between its commands.
    gate: tokio::sync::RwLock<()>,
}

impl KvNode {
    pub fn new(
        cfg: KvSection,
        cache_dir: &std::path::Path,
        cluster: Option<(Arc<Cluster>, &cairn_core::config::ClusterSection)>,
    ) -> std::io::Result<Self> {
        let store = KvStore::open(KvStoreConfig {
            ram_capacity: cfg.ram_capacity.bytes(),
            disk_capacity: cfg.disk_capacity.bytes(),
            dir: cache_dir.join("kv"),
            lease: cfg.lease.0,
        })?;
        let max_value = cfg.max_value().bytes() as usize;
        let limits = Limits {
            max_args: cfg.max_args,
            max_bulk: max_value.max(cfg.max_key_size),
            max_command: max_value + COMMAND_OVERHEAD,
            max_inline: cfg.max_inline_size,
            authenticated: true,
        };
        let router = match cluster {
            Some((c, section)) => Some(Router::new(c, section, cfg.replicas).map_err(std::io::Error::other)?),
            None => None,
        };
        let live =
            Live { requirepass: RwLock::new(cfg.requirepass.clone()), max_bulk: AtomicUsize::new(limits.max_bulk) };
        Ok(Self {
            store,
            cfg,
            limits,
            counters: KvCounters::default(),
            router,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            live,
            clients: Arc::default(),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// A session for a client connected from `addr`.
    pub fn new_session(&self, addr: Option<SocketAddr>) -> Session {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            id,
            addr: addr.map_or_else(|| "?:0".to_owned(), |a| a.to_string()),
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            last_cmd: Mutex::new("NULL"),
            name: Mutex::new(None),
            lib: Mutex::new((None, None)),
            user: Mutex::new("default"),
            user_name: Mutex::new(None),
            resp: AtomicU64::new(2),
            multi: std::sync::atomic::AtomicI64::new(-1),
        });
        self.clients.lock().insert(id, entry.clone());
        Session {
            id,
            authenticated: self.cfg.allow_anonymous,
            resp3: false,
            closing: false,
            reply_off: false,
            skip_next: false,
            multi: None,
            entry,
            clients: self.clients.clone(),
        }
    }

    /// The parser's limits for this session: small ones until it has authenticated.
    pub fn limits_for(&self, s: &Session) -> Limits {
        Limits { authenticated: s.authenticated, max_bulk: self.live.max_bulk.load(Ordering::Relaxed), ..self.limits }
    }

    /// Runs a data command (or SCAN) on this node's store, between transactions.
    pub async fn run_local(&self, cmd: &Command) -> Reply {
        let _shared = self.gate.read().await;
        cmd.run_local(&self.store).await
    }

    /// Runs a transaction's commands on this node's store with nothing in between; their replies.
    pub async fn run_transaction_local(&self, cmds: &[Command]) -> Reply {
        let _alone = self.gate.write().await;
        let mut out = Vec::with_capacity(cmds.len());
        for c in cmds {
            out.push(c.run_local(&self.store).await);
        }
        Reply::Array(out)
    }

    /// Runs one command from a client; `None` when its reply is not sent (CLIENT REPLY OFF/SKIP).
    pub async fn execute(&self, s: &mut Session, args: Vec<Bytes>) -> Option<Reply> {
        let skip = std::mem::take(&mut s.skip_next);
        let reply = self.execute_one(s, args).await;
        (!skip && !s.reply_off && !s.skip_next).then_some(reply)
    }

    async fn execute_one(&self, s: &mut Session, args: Vec<Bytes>) -> Reply {
        KvCounters::add(&self.counters.commands, 1);
        // One clock read serves CLIENT LIST's idle time and the latency histogram.
        let started = Instant::now();
        s.entry.last_ms.store(started.duration_since(s.entry.opened).as_millis() as u64, Ordering::Relaxed);
        let cmd = match Command::parse(&args, self.cfg.max_key_size) {
            Ok(c) => c,
            Err(e) => {
                if let Some(t) = &mut s.multi {
                    t.failed = true;
                }
                return Reply::err(e.to_string());
            }
        };
        *s.entry.last_cmd.lock() = command_name(&cmd);
        if !s.authenticated && !matches!(cmd, Command::Auth { .. } | Command::Hello { .. } | Command::Quit) {
            return Reply::err("NOAUTH Authentication required.");
        }
        if s.multi.is_some()
            && !matches!(cmd, Command::Exec | Command::Discard | Command::Multi | Command::Watch | Command::Quit)
        {
            return self.queue(s, cmd, &args);
        }
        let op = op_index(&cmd);
        let reply = match cmd {
            Command::Ping(None) => Reply::Simple("PONG"),
            Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
            Command::Hello { proto, auth, name } => return self.hello(s, proto, auth, name),
            Command::Auth { user, password } => self.auth(s, user.as_deref(), &password),
            Command::Select(0) => Reply::ok(),
            Command::Select(_) => Reply::err("ERR DB index is out of range"),
            Command::ClientSetName(n) => {
                s.set_name(Some(n));
                Reply::ok()
            }
            Command::ClientGetName => s.name().map_or(Reply::Nil, Reply::Bulk),
            Command::ClientId => Reply::Int(s.id as i64),
            Command::ClientSetInfo { lib_version, value } => {
                let mut lib = s.entry.lib.lock();
                if lib_version {
                    lib.1 = Some(value)
                } else {
                    lib.0 = Some(value)
                }
                Reply::ok()
            }
            Command::ClientNoop => Reply::ok(),
            Command::ClientReply(mode) => {
                s.reply_off = mode == ReplyMode::Off;
                s.skip_next = mode == ReplyMode::Skip;
                Reply::ok()
            }
            Command::ClientList(ids) => Reply::Bulk(Bytes::from(self.client_list(ids.as_deref()))),
            Command::ClientInfo => Reply::Bulk(Bytes::from(self.client_line(&s.entry))),
            Command::Info(sections) => Reply::Bulk(Bytes::from(self.info(&sections))),
            Command::DbSize => Reply::Int(self.store.len() as i64),
            Command::CommandCount => Reply::Int(COMMANDS.len() as i64),
            Command::CommandEmpty => Reply::Array(Vec::new()),
            Command::ConfigGet(patterns) => self.config_get(&patterns),
            Command::ConfigSet(pairs) => self.config_set(&pairs),
            Command::Quit => {
                s.closing = true;
                Reply::ok()
            }
            Command::Multi if s.multi.is_some() => Reply::err("ERR MULTI calls can not be nested"),
            Command::Multi => {
                s.multi = Some(Transaction::default());
                s.entry.multi.store(0, Ordering::Relaxed);
                Reply::ok()
            }
            Command::Exec => self.exec(s).await,
            Command::Discard => match s.multi.take() {
                Some(_) => {
                    s.entry.multi.store(-1, Ordering::Relaxed);
                    Reply::ok()
                }
                None => Reply::err("ERR DISCARD without MULTI"),
            },
            Command::Watch if s.multi.is_some() => Reply::err("ERR WATCH inside MULTI is not allowed"),
            Command::Watch => Reply::err(
                "ERR WATCH is not supported: cairn runs MULTI/EXEC atomically on the keys' owner but does not watch keys",
            ),
            Command::Unwatch => Reply::ok(),
            Command::FlushAll if !self.cfg.allow_flush => Reply::err(
                "ERR FLUSHALL and FLUSHDB are disabled on this node (set kv.allow_flush = true to allow them)",
            ),
            Command::FlushAll => {
                let _alone = self.gate.write().await;
                let n = self.store.clear();
                tracing::info!(keys = n, client = s.id, "KV store flushed by FLUSHALL/FLUSHDB");
                Reply::ok()
            }
            scan @ Command::Scan { .. } => self.run_local(&scan).await,
            data => match &self.router {
                Some(r) => r.dispatch(self, data).await,
                None => self.run_local(&data).await,
            },
        };
        self.counters.observe(op, started.elapsed());
        reply
    }

    fn check_password(&self, user: Option<&[u8]>, password: &[u8]) -> Result<(), Reply> {
        let ok = match user {
            None | Some(b"default") => {
                let requirepass = self.live.requirepass.read();
                if requirepass.is_empty() && user.is_none() {
                    return Err(Reply::err(
                        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                    ));
                }
                !requirepass.is_empty() && secret_matches(password, requirepass.as_bytes())
            }
            Some(u) => {
                self.cfg.users.iter().any(|x| x.user.as_bytes() == u && secret_matches(password, x.password.as_bytes()))
            }
        };
        if ok {
            Ok(())
        } else {
            KvCounters::add(&self.counters.auth_failures, 1);
            Err(Reply::err("WRONGPASS invalid username-password pair or user is disabled."))
        }
    }

    fn auth(&self, s: &mut Session, user: Option<&[u8]>, password: &[u8]) -> Reply {
        match self.check_password(user, password) {
            Ok(()) => {
                s.authenticated = true;
                self.set_user(s, user);
                Reply::ok()
            }
            Err(e) => e,
        }
    }

    fn hello(&self, s: &mut Session, proto: Option<i64>, auth: Option<(Bytes, Bytes)>, name: Option<Bytes>) -> Reply {
        if let Some((u, p)) = auth {
            if let Err(e) = self.check_password(Some(&u), &p) {
                return e;
            }
            s.authenticated = true;
            self.set_user(s, Some(&u));
        }
        if !s.authenticated {
            return Reply::err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(p) = proto {
            s.resp3 = p == 3;
            s.entry.resp.store(p as u64, Ordering::Relaxed);
        }
        if let Some(n) = name {
            s.set_name(Some(n));
        }
        let kv = |k: &'static str, v: Reply| (Reply::Bulk(Bytes::from_static(k.as_bytes())), v);
        Reply::Map(vec![
            kv("server", Reply::bulk("redis")),
            kv("version", Reply::bulk(REDIS_VERSION)),
            kv("proto", Reply::Int(if s.resp3 { 3 } else { 2 })),
            kv("id", Reply::Int(s.id as i64)),
            kv("mode", Reply::bulk(if self.router.is_some() { "cluster" } else { "standalone" })),
            kv("role", Reply::bulk("master")),
            kv("modules", Reply::Array(Vec::new())),
        ])
    }

    fn set_user(&self, s: &Session, user: Option<&[u8]>) {
        let name = user.map(|u| String::from_utf8_lossy(u).into_owned()).filter(|u| u != "default");
        *s.entry.user.lock() = if name.is_some() { "" } else { "default" };
        *s.entry.user_name.lock() = name;
    }

    /// Queues a command between MULTI and EXEC: only key commands, all of one owner.
    fn queue(&self, s: &mut Session, cmd: Command, args: &[Bytes]) -> Reply {
        let Some(t) = s.multi.as_mut() else { return Reply::err("ERR not in MULTI") };
        let refuse = |t: &mut Transaction, msg: String| {
            t.failed = true;
            Reply::err(msg)
        };
        if !cmd.is_data() {
            let name = String::from_utf8_lossy(&args[0][..args[0].len().min(MAX_ECHO)]).to_ascii_lowercase();
            return refuse(t, format!("ERR '{name}' cannot be queued in MULTI on cairn: only key commands can"));
        }
        let size: usize = args.iter().map(|a| a.len() + 16).sum();
        if t.bytes + size > self.limits.max_command {
            return refuse(t, format!("ERR transaction over the size limit of {} bytes", self.limits.max_command));
        }
        if let Some(r) = &self.router {
            for k in cmd.keys() {
                let owners = r.owners(k);
                match &t.owners {
                    None => t.owners = Some(owners),
                    Some(o) if *o != owners => return refuse(t, CROSS_OWNER.to_owned()),
                    Some(_) => {}
                }
            }
        }
        t.bytes += size;
        t.commands.push(cmd);
        s.entry.multi.store(t.commands.len() as i64, Ordering::Relaxed);
        Reply::Simple("QUEUED")
    }

    async fn exec(&self, s: &mut Session) -> Reply {
        let Some(t) = s.multi.take() else { return Reply::err("ERR EXEC without MULTI") };
        s.entry.multi.store(-1, Ordering::Relaxed);
        if t.failed {
            return Reply::err("EXECABORT Transaction discarded because of previous errors.");
        }
        match &self.router {
            Some(r) => r.exec(self, t.commands).await,
            None => self.run_transaction_local(&t.commands).await,
        }
    }

    fn client_line(&self, c: &ClientEntry) -> String {
        let name = c.name.lock().as_ref().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        let (lib_name, lib_ver) = {
            let lib = c.lib.lock();
            let show =
                |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (show(&lib.0), show(&lib.1))
        };
        let user = match c.user_name.lock().clone() {
            Some(u) => u,
            None => c.user.lock().to_string(),
        };
        let multi = c.multi.load(Ordering::Relaxed);
        let age = c.opened.elapsed();
        let idle = age.as_millis() as u64 - c.last_ms.load(Ordering::Relaxed).min(age.as_millis() as u64);
        format!(
            "id={} addr={} laddr={} fd=-1 name={name} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi={multi} \
             qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} \
             user={user} redir=-1 resp={} lib-name={lib_name} lib-ver={lib_ver}\n",
            c.id,
            c.addr,
            self.cfg.listen,
            age.as_secs(),
            idle / 1000,
            if multi >= 0 { "x" } else { "N" },
            c.last_cmd.lock(),
            c.resp.load(Ordering::Relaxed),
        )
    }

    fn client_list(&self, ids: Option<&[u64]>) -> String {
        let clients: Vec<Arc<ClientEntry>> = self.clients.lock().values().cloned().collect();
        clients.iter().filter(|c| ids.is_none_or(|ids| ids.contains(&c.id))).map(|c| self.client_line(c)).collect()
    }

    /// The settings CONFIG GET shows, with their current values.
    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("save", String::new()),
            ("appendonly", "no".to_owned()),
            ("maxmemory", self.cfg.ram_capacity.bytes().to_string()),
            ("maxmemory-policy", "allkeys-lru".to_owned()),
            ("databases", "1".to_owned()),
            ("maxclients", self.cfg.max_connections.to_string()),
            ("proto-max-bulk-len", self.live.max_bulk.load(Ordering::Relaxed).to_string()),
            ("requirepass", self.live.requirepass.read().clone()),
        ]
    }

    fn config_get(&self, patterns: &[Bytes]) -> Reply {
        let mut out = Vec::new();
        let settings = self.settings();
        for p in patterns {
            let glob = cairn_kv::glob::Glob::new(&p.to_ascii_lowercase());
            for (k, v) in &settings {
                if glob.matches(k.as_bytes()) && !out.iter().any(|(n, _): &(Reply, Reply)| *n == Reply::bulk(*k)) {
                    out.push((Reply::bulk(*k), Reply::bulk(v.clone())));
                }
            }
        }
        Reply::Map(out)
    }

    /// CONFIG SET: `requirepass` and `proto-max-bulk-len` (up to `kv.max_value_size`) change live;
    /// `save ""` and `appendonly no` are what cairn does already. All pairs are checked before any
    /// is applied.
    fn config_set(&self, pairs: &[(Bytes, Bytes)]) -> Reply {
        enum Change {
            Password(String),
            MaxBulk(usize),
            Nothing,
        }
        let mut changes = Vec::new();
        for (k, v) in pairs {
            let name = String::from_utf8_lossy(&k[..k.len().min(MAX_ECHO)]).to_ascii_lowercase();
            let value = String::from_utf8_lossy(v);
            let failed = |why: &str| {
                Reply::err(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"))
            };
            let change = match name.as_str() {
                "requirepass" => Change::Password(value.into_owned()),
                "proto-max-bulk-len" => {
                    let ceiling = self.limits.max_bulk;
                    match cairn_kv::command::int(v).ok().and_then(|n| usize::try_from(n).ok()) {
                        Some(n) if (self.cfg.max_key_size..=ceiling).contains(&n) => Change::MaxBulk(n),
                        _ => {
                            return failed(&format!(
                                "must be between kv.max_key_size ({}) and kv.max_value_size ({ceiling})",
                                self.cfg.max_key_size
                            ));
                        }
                    }
                }
                "save" if v.is_empty() => Change::Nothing,
                "appendonly" if value.eq_ignore_ascii_case("no") => Change::Nothing,
                "save" | "appendonly" => return failed("the KV keyspace is a cache and is never persisted"),
                "maxmemory" | "maxmemory-policy" | "maxclients" | "databases" => {
                    return failed("cannot be changed while the node runs; set it in the [kv] configuration");
                }
                _ => {
                    return Reply::err(format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'"));
                }
            };
            changes.push(change);
        }
        for c in changes {
            match c {
                Change::Password(p) => *self.live.requirepass.write() = p,
                Change::MaxBulk(n) => self.live.max_bulk.store(n, Ordering::Relaxed),
                Change::Nothing => {}
            }
        }
        Reply::ok()
    }

    fn info(&self, sections: &[String]) -> String {
        let want = |s: &str| sections.is_empty() || sections.iter().any(|x| x == s || x == "all" || x == "everything");
        let st = self.store.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        if want("server") {
            let _ = write!(
                out,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\ncairn_version:{}\r\nredis_mode:{}\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                if self.router.is_some() { "cluster" } else { "standalone" },
                std::env::consts::OS,
                std::process::id(),
                self.cfg.listen.rsplit(':').next().unwrap_or(""),
                self.started.elapsed().as_secs()
            );
        }
        if want("clients") {
            let _ = write!(out, "# Clients\r\nconnected_clients:{}\r\n\r\n", get(&self.counters.connections_open));
        }
        if want("memory") {
            let _ = write!(
                out,
                "# Memory\r\nused_memory:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:allkeys-lru\r\ncairn_disk_used:{}\r\ncairn_disk_capacity:{}\r\n\r\n",
                self.store.ram_used(),
                self.cfg.ram_capacity.bytes(),
                self.store.disk_used(),
                self.cfg.disk_capacity.bytes()
            );
        }
        if want("stats") {
            let _ = write!(
                out,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nevicted_keys:{}\r\nexpired_keys:{}\r\ncairn_disk_hits:{}\r\ncairn_lease_pins:{}\r\n\r\n",
                self.next_id.load(Ordering::Relaxed) - 1,
                get(&self.counters.commands),
                get(&self.counters.bytes_in),
                get(&self.counters.bytes_out),
                get(&st.ram_hits) + get(&st.disk_hits),
                get(&st.misses),
                get(&st.dropped) + get(&st.disk_evictions),
                get(&st.expired),
                get(&st.disk_hits),
                get(&st.lease_pins),
            );
        }
        if want("keyspace") {
            let n = self.store.len();
            out.push_str("# Keyspace\r\n");
            if n > 0 {
                let _ = write!(out, "db0:keys={n},expires=0,avg_ttl=0\r\n");
            }
            out.push_str("\r\n");
        }
        out
    }

    /// Adds the KV series to a scrape.
    pub fn collect_metrics(&self, out: &mut crate::metrics::Scrape, ram_capacity: u64, disk_capacity: u64) {
        let st = self.store.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        out.counters(
            "cairn_kv_hits_total",
            "KV reads served by this node's store, by tier.",
            "tier",
            &[("ram", get(&st.ram_hits)), ("disk", get(&st.disk_hits))],
        );
        out.counter("cairn_kv_misses_total", "KV reads that found nothing here.", get(&st.misses));
        out.counters(
            "cairn_kv_evictions_total",
            "KV values evicted, by tier; dropped: evicted with no copy left.",
            "tier",
            &[("ram", get(&st.ram_evictions)), ("disk", get(&st.disk_evictions)), ("dropped", get(&st.dropped))],
        );
        out.counter("cairn_kv_lease_pins_total", "KV keys leased by an EXISTS hit.", get(&st.lease_pins));
        out.counter("cairn_kv_expired_total", "KV keys found expired.", get(&st.expired));
        out.counter("cairn_kv_spilled_total", "KV values written to disk on eviction from RAM.", get(&st.spilled));
        out.counter("cairn_kv_corrupt_total", "KV disk values that failed verification.", get(&st.corrupt));
        out.counters(
            "cairn_kv_network_bytes_total",
            "Bytes on the KV endpoint's client connections, by direction.",
            "dir",
            &[("in", get(&c.bytes_in)), ("out", get(&c.bytes_out))],
        );
        out.counter("cairn_kv_commands_total", "KV commands received.", get(&c.commands));
        out.counters(
            "cairn_kv_forwarded_total",
            "KV commands sent to owners, and those that failed.",
            "result",
            &[("sent", get(&c.forwarded)), ("failed", get(&c.forward_failures))],
        );
        out.counters(
            "cairn_kv_refused_total",
            "KV requests refused, by reason.",
            "reason",
            &[
                ("protocol", get(&c.protocol_errors)),
                ("auth", get(&c.auth_failures)),
                ("output_buffer", get(&c.output_limit_errors)),
                ("connections", get(&c.connections_refused)),
            ],
        );
        out.gauges(
            "cairn_kv_bytes",
            "Bytes held by the KV store, by tier.",
            "tier",
            &[("ram", self.store.ram_used()), ("disk", self.store.disk_used())],
        );
        out.gauges(
            "cairn_kv_capacity_bytes",
            "Capacity of the KV store, by tier (kv.ram_capacity, kv.disk_capacity).",
            "tier",
            &[("ram", ram_capacity), ("disk", disk_capacity)],
        );
        out.gauge("cairn_kv_connections_open", "KV client connections open.", get(&c.connections_open));
        let latency: Vec<(crate::metrics::Labels, crate::metrics::HistogramValue)> = OPS
            .iter()
            .zip(&c.latency)
            .filter(|(_, h)| get(&h.count) > 0)
            .map(|(op, h)| {
                let buckets = LATENCY_BUCKETS.iter().copied().zip(h.buckets.iter().map(get)).collect();
                let value = crate::metrics::HistogramValue {
                    sum: get(&h.sum_nanos) as f64 / 1e9,
                    count: get(&h.count),
                    buckets,
                };
                (vec![("cmd", (*op).to_owned())], value)
            })
            .collect();
        out.histograms("cairn_kv_command_duration_seconds", "KV command latency, by command.", latency);
    }
}

/// A command's name, as CLIENT LIST shows the last one.
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Ping(_) => "ping",
        Command::Echo(_) => "echo",
        Command::Hello { .. } => "hello",
        Command::Auth { .. } => "auth",
        Command::Select(_) => "select",
        Command::ClientSetName(_)
        | Command::ClientGetName
        | Command::ClientId
        | Command::ClientSetInfo { .. }
        | Command::ClientNoop
        | Command::ClientReply(_)
        | Command::ClientList(_)
        | Command::ClientInfo => "client",
        Command::Info(_) => "info",
        Command::DbSize => "dbsize",
        Command::CommandCount | Command::CommandEmpty => "command",
        Command::ConfigGet(_) | Command::ConfigSet(_) => "config",
        Command::Quit => "quit",
        Command::Multi => "multi",
        Command::Exec => "exec",
        Command::Discard => "discard",
        Command::Watch => "watch",
        Command::Unwatch => "unwatch",
        Command::FlushAll => "flushall",
        Command::Scan { .. } => "scan",
        Command::Get(_) => "get",
        Command::GetDel(_) => "getdel",
        Command::GetEx { .. } => "getex",
        Command::Set { .. } => "set",
        Command::MGet(_) => "mget",
        Command::MSet(_) => "mset",
        Command::Exists(_) => "exists",
        Command::Touch(_) => "touch",
        Command::Del(_) => "del",
        Command::Ttl { .. } => "ttl",
        Command::Expire { .. } => "expire",
        Command::Persist(_) => "persist",
        Command::Type(_) => "type",
        Command::MemoryUsage(_) => "memory",
        Command::Strlen(_) => "strlen",
    }
}

/// Index of a command's latency series in [`OPS`].
fn op_index(c: &Command) -> usize {
    match c {
        Command::Get(_) => 0,
        Command::Set { .. } => 1,
        Command::MGet(_) => 2,
        Command::MSet(_) => 3,
        Command::Exists(_) => 4,
        Command::Del(_) => 5,
        Command::Ttl { .. } => 6,
        Command::Expire { .. } => 7,
        Command::Strlen(_) => 8,
        _ => 9,
    }
}
