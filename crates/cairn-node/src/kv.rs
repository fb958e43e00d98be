//! The KV endpoint's command layer: per-connection sessions (protocol version, authentication,
//! client name), the connection and server commands (HELLO, AUTH, INFO, ...), and dispatch of data
//! commands to this node's store or, in a cluster, to the keys' owners (`kv_route.rs`).
//!
//! The socket side (pipelining, buffers, limits) is in `kv_conn.rs`; the RESP codec, command
//! parsing and the store are in the `cairn-kv` crate.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_core::config::KvSection;
use cairn_kv::resp::Limits;
use cairn_kv::{Command, KvStore, KvStoreConfig, Reply};

use crate::cluster::{Cluster, secret_matches};
use crate::kv_route::Router;

/// Bytes a command may have on the wire beyond its largest value (keys, options, headers).
pub const COMMAND_OVERHEAD: usize = 1 << 20;
/// Version reported to clients that check it (the Redis feature level cairn follows).
const REDIS_VERSION: &str = "7.2.0";
/// Commands counted by COMMAND COUNT.
const COMMANDS: &[&str] = &[
    "ping", "echo", "hello", "auth", "select", "client", "info", "dbsize", "command", "config", "quit", "get", "set",
    "mget", "mset", "exists", "del", "unlink", "ttl", "pttl", "expire", "pexpire", "strlen",
];
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

/// State of one client connection.
pub struct Session {
    pub id: u64,
    pub authenticated: bool,
    pub resp3: bool,
    pub name: Option<Bytes>,
    /// Set by QUIT: close after the reply.
    pub closing: bool,
}

pub struct KvNode {
    pub store: KvStore,
    pub cfg: KvSection,
    pub limits: Limits,
    pub counters: KvCounters,
    router: Option<Router>,
    next_id: AtomicU64,
    started: Instant,
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
        let max_value = cfg.max_value_size.bytes() as usize;
        let limits = Limits {
            max_args: cfg.max_args,
            max_bulk: max_value.max(cfg.max_key_size),
            max_command: max_value + COMMAND_OVERHEAD,
            max_inline: cfg.max_inline_size,
        };
        let router = match cluster {
            Some((c, section)) => Some(Router::new(c, section, cfg.replicas).map_err(std::io::Error::other)?),
            None => None,
        };
        Ok(Self {
            store,
            cfg,
            limits,
            counters: KvCounters::default(),
            router,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
        })
    }

    pub fn new_session(&self) -> Session {
        Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            authenticated: self.cfg.allow_anonymous,
            resp3: false,
            name: None,
            closing: false,
        }
    }

    /// Runs one command from a client.
    pub async fn execute(&self, s: &mut Session, args: Vec<Bytes>) -> Reply {
        KvCounters::add(&self.counters.commands, 1);
        let cmd = match Command::parse(&args, self.cfg.max_key_size) {
            Ok(c) => c,
            Err(e) => return Reply::err(e.to_string()),
        };
        if !s.authenticated && !matches!(cmd, Command::Auth { .. } | Command::Hello { .. } | Command::Quit) {
            return Reply::err("NOAUTH Authentication required.");
        }
        let started = Instant::now();
        let op = op_index(&cmd);
        let reply = match cmd {
            Command::Ping(None) => Reply::Simple("PONG"),
            Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
            Command::Hello { proto, auth, name } => return self.hello(s, proto, auth, name),
            Command::Auth { user, password } => self.auth(s, user.as_deref(), &password),
            Command::Select(0) => Reply::ok(),
            Command::Select(_) => Reply::err("ERR DB index is out of range"),
            Command::ClientSetName(n) => {
                s.name = (!n.is_empty()).then_some(n);
                Reply::ok()
            }
            Command::ClientGetName => s.name.clone().map_or(Reply::Nil, Reply::Bulk),
            Command::ClientId => Reply::Int(s.id as i64),
            Command::ClientNoop => Reply::ok(),
            Command::Info(sections) => Reply::Bulk(Bytes::from(self.info(&sections))),
            Command::DbSize => Reply::Int(self.store.len() as i64),
            Command::CommandCount => Reply::Int(COMMANDS.len() as i64),
            Command::CommandEmpty => Reply::Array(Vec::new()),
            Command::ConfigGet(patterns) => self.config_get(&patterns),
            Command::Quit => {
                s.closing = true;
                Reply::ok()
            }
            data => match &self.router {
                Some(r) => r.dispatch(self, data).await,
                None => data.run_local(&self.store).await,
            },
        };
        self.counters.observe(op, started.elapsed());
        reply
    }

    fn check_password(&self, user: Option<&[u8]>, password: &[u8]) -> Result<(), Reply> {
        let ok = match user {
            None | Some(b"default") => {
                if self.cfg.requirepass.is_empty() && user.is_none() {
                    return Err(Reply::err(
                        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                    ));
                }
                !self.cfg.requirepass.is_empty() && secret_matches(password, self.cfg.requirepass.as_bytes())
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
        }
        if !s.authenticated {
            return Reply::err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(p) = proto {
            s.resp3 = p == 3;
        }
        if let Some(n) = name {
            s.name = Some(n);
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

    fn config_get(&self, patterns: &[Bytes]) -> Reply {
        let known = [
            ("save", String::new()),
            ("appendonly", "no".to_owned()),
            ("maxmemory", self.cfg.ram_capacity.bytes().to_string()),
            ("maxmemory-policy", "allkeys-lru".to_owned()),
            ("databases", "1".to_owned()),
            ("proto-max-bulk-len", self.cfg.max_value_size.bytes().to_string()),
        ];
        let mut out = Vec::new();
        for p in patterns {
            let p = String::from_utf8_lossy(p).to_ascii_lowercase();
            for (k, v) in &known {
                if p == "*" || p == *k {
                    out.push((Reply::bulk(*k), Reply::bulk(v.clone())));
                }
            }
        }
        Reply::Map(out)
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

    /// Appends the KV series to the `/metrics` text.
    pub fn render_metrics(&self, out: &mut String) {
        let st = self.store.stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let mut series = |kind: &str, name: &str, help: &str, values: &[(&str, u64)]| {
            crate::metrics::series(out, kind, name, help, values)
        };
        series(
            "counter",
            "cairn_kv_hits_total",
            "KV reads served by this node's store, by tier.",
            &[("tier=\"ram\"", get(&st.ram_hits)), ("tier=\"disk\"", get(&st.disk_hits))],
        );
        series("counter", "cairn_kv_misses_total", "KV reads that found nothing here.", &[("", get(&st.misses))]);
        series(
            "counter",
            "cairn_kv_evictions_total",
            "KV values evicted, by tier; dropped: evicted with no copy left.",
            &[
                ("tier=\"ram\"", get(&st.ram_evictions)),
                ("tier=\"disk\"", get(&st.disk_evictions)),
                ("tier=\"dropped\"", get(&st.dropped)),
            ],
        );
        series(
            "counter",
            "cairn_kv_lease_pins_total",
            "KV keys leased by an EXISTS hit.",
            &[("", get(&st.lease_pins))],
        );
        series("counter", "cairn_kv_expired_total", "KV keys found expired.", &[("", get(&st.expired))]);
        series(
            "counter",
            "cairn_kv_spilled_total",
            "KV values written to disk on eviction from RAM.",
            &[("", get(&st.spilled))],
        );
        series(
            "counter",
            "cairn_kv_corrupt_total",
            "KV disk values that failed verification.",
            &[("", get(&st.corrupt))],
        );
        series(
            "counter",
            "cairn_kv_bytes_total",
            "Bytes on the KV endpoint's client connections, by direction.",
            &[("dir=\"in\"", get(&c.bytes_in)), ("dir=\"out\"", get(&c.bytes_out))],
        );
        series("counter", "cairn_kv_commands_total", "KV commands received.", &[("", get(&c.commands))]);
        series(
            "counter",
            "cairn_kv_forwarded_total",
            "KV commands sent to owners, and those that failed.",
            &[("result=\"sent\"", get(&c.forwarded)), ("result=\"failed\"", get(&c.forward_failures))],
        );
        series(
            "counter",
            "cairn_kv_refused_total",
            "KV requests refused, by reason.",
            &[
                ("reason=\"protocol\"", get(&c.protocol_errors)),
                ("reason=\"auth\"", get(&c.auth_failures)),
                ("reason=\"output_buffer\"", get(&c.output_limit_errors)),
                ("reason=\"connections\"", get(&c.connections_refused)),
            ],
        );
        series(
            "gauge",
            "cairn_kv_bytes",
            "Bytes held by the KV store, by tier.",
            &[("tier=\"ram\"", self.store.ram_used()), ("tier=\"disk\"", self.store.disk_used())],
        );
        series("gauge", "cairn_kv_connections_open", "KV client connections open.", &[("", get(&c.connections_open))]);
        let name = "cairn_kv_command_duration_seconds";
        let _ = writeln!(out, "# HELP {name} KV command latency, by command.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (op, h) in OPS.iter().zip(&c.latency) {
            let n = get(&h.count);
            if n == 0 {
                continue;
            }
            let sum = get(&h.sum_nanos) as f64 / 1e9;
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += get(&h.buckets[i]);
                let _ = writeln!(out, "{name}_bucket{{cmd=\"{op}\",le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{cmd=\"{op}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(out, "{name}_sum{{cmd=\"{op}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{cmd=\"{op}\"}} {n}");
        }
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
