//! Commands of the KV endpoint: parsing arguments into typed commands with Redis's argument rules
//! and error texts (Redis 7's, checked against a real `redis-server` by the tests), the wire form
//! a command is forwarded in, and running the data commands against the local store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::glob::Glob;
use crate::resp::Reply;
use crate::store::{ExpireCondition, KvStore, SetCondition, SetOptions, SetOutcome, Ttl};

/// Longest piece of a client's input echoed back in an error (Redis's `%.128s`), so an error never
/// costs more than its text.
pub const MAX_ECHO: usize = 128;
/// SCAN's default COUNT.
const SCAN_DEFAULT_COUNT: usize = 10;
/// Bytes MEMORY USAGE adds to a key and value for the entry itself (index, policy, header).
const ENTRY_OVERHEAD: u64 = 96;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR unknown command '{0}', with args beginning with: {1}")]
    Unknown(String, String),
    #[error("ERR unknown subcommand '{1}'. Try {0} HELP.")]
    UnknownSubcommand(String, String),
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(String),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR invalid expire time in '{0}' command")]
    BadExpire(String),
    #[error("ERR invalid cursor")]
    BadCursor,
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
    #[error("ERR {0}")]
    Other(String),
    #[error("ERR DB index is out of range")]
    DbIndex,
    #[error("NOPROTO unsupported protocol version")]
    Proto,
    #[error("ERR key of {0} bytes is over the limit of {1} bytes")]
    KeyTooLong(usize, usize),
}

/// An expiry as given: relative (EX, PX, EXPIRE, PEXPIRE) or absolute (EXAT, PXAT, EXPIREAT,
/// PEXPIREAT), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Milliseconds from now (may be negative for EXPIRE: already past).
    In(i64),
    /// Unix time in milliseconds.
    At(i64),
}

impl When {
    /// Milliseconds from now; at or below zero the time has passed.
    pub fn remaining_ms(self) -> i64 {
        match self {
            When::In(ms) => ms,
            When::At(t) => t.saturating_sub(unix_now_ms()),
        }
    }
}

pub fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What GETEX does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryUpdate {
    Keep,
    Persist,
    Set(When),
}

/// How a SET answers: `+OK`/nil (SET, SETEX, PSETEX) or `:1`/`:0` (SETNX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReply {
    Ok,
    Int,
}

/// CLIENT REPLY's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    /// Skip the reply of the next command.
    Skip,
}

/// The commands the endpoint understands, with their arguments checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Hello {
        proto: Option<i64>,
        auth: Option<(Bytes, Bytes)>,
        name: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    Select(i64),
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    /// CLIENT SETINFO LIB-NAME|LIB-VER: the library, shown by CLIENT LIST.
    ClientSetInfo {
        lib_version: bool,
        value: Bytes,
    },
    /// CLIENT NO-EVICT and NO-TOUCH: accepted, no effect (cairn's eviction is per node, not per
    /// client).
    ClientNoop,
    ClientReply(ReplyMode),
    /// CLIENT LIST, optionally only the given ids.
    ClientList(Option<Vec<u64>>),
    ClientInfo,
    Info(Vec<String>),
    DbSize,
    CommandCount,
    /// COMMAND, COMMAND DOCS, COMMAND INFO: an empty answer (clients only look for optional hints).
    CommandEmpty,
    ConfigGet(Vec<Bytes>),
    ConfigSet(Vec<(Bytes, Bytes)>),
    Quit,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// FLUSHALL and FLUSHDB (this node's keys).
    FlushAll,
    /// SCAN over this node's keys.
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        /// A TYPE filter other than `string`: nothing matches.
        no_type: bool,
    },
    Get(Bytes),
    GetDel(Bytes),
    GetEx {
        key: Bytes,
        update: ExpiryUpdate,
    },
    /// SET, SETNX, SETEX, PSETEX.
    Set {
        key: Bytes,
        value: Bytes,
        condition: SetCondition,
        expire: Option<When>,
        keep_ttl: bool,
        get: bool,
        reply: SetReply,
    },
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    Exists(Vec<Bytes>),
    Touch(Vec<Bytes>),
    /// DEL and UNLINK.
    Del(Vec<Bytes>),
    /// TTL, PTTL (`absolute == false`), EXPIRETIME, PEXPIRETIME.
    Ttl {
        key: Bytes,
        millis: bool,
        absolute: bool,
    },
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT.
    Expire {
        key: Bytes,
        when: When,
        cond: ExpireCondition,
    },
    Persist(Bytes),
    Type(Bytes),
    MemoryUsage(Bytes),
    Strlen(Bytes),
}

/// Longest command name recognised.
const MAX_NAME: usize = 16;

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Client input as shown in an error: up to `max` bytes, cut at a NUL as C's `%.*s` does.
fn echo(b: &[u8], max: usize) -> String {
    let b = &b[..b.len().min(max)];
    let b = b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i]);
    String::from_utf8_lossy(b).into_owned()
}

/// An integer as Redis reads one (`string2ll`): optional `-`, no `+`, no leading zeros, no
/// spaces, within i64.
pub fn int(b: &[u8]) -> Result<i64, CommandError> {
    let bad = || CommandError::NotInteger;
    if b == b"0" {
        return Ok(0);
    }
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 || !(b'1'..=b'9').contains(&digits[0]) {
        return Err(bad());
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))).ok_or_else(bad)?;
    }
    if neg {
        if v > i64::MAX as u64 + 1 { Err(bad()) } else { Ok((v as i64).wrapping_neg()) }
    } else {
        i64::try_from(v).map_err(|_| bad())
    }
}

fn eq(b: &[u8], word: &str) -> bool {
    b.eq_ignore_ascii_case(word.as_bytes())
}

impl Command {
    /// Parses a command's arguments (name first); keys longer than `max_key` are refused.
    pub fn parse(args: &[Bytes], max_key: usize) -> Result<Command, CommandError> {
        let Some(first) = args.first() else { return Err(CommandError::Syntax) };
        // Command names are short: upper-case them on the stack (this runs for every command).
        let mut name_buf = [0u8; MAX_NAME];
        let name = match first.get(..first.len().min(MAX_NAME)) {
            Some(b) if first.len() <= MAX_NAME => {
                name_buf[..b.len()].copy_from_slice(b);
                name_buf[..b.len()].make_ascii_uppercase();
                std::str::from_utf8(&name_buf[..b.len()]).unwrap_or("")
            }
            _ => "",
        };
        let lower = || name.to_ascii_lowercase();
        let rest = &args[1..];
        let arity = |ok: bool| if ok { Ok(()) } else { Err(CommandError::Arity(lower())) };
        let sub_arity = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(CommandError::Arity(format!("{}|{}", lower(), upper(&rest[0]).to_lowercase())))
            }
        };
        let key = |k: &Bytes| {
            if k.len() > max_key { Err(CommandError::KeyTooLong(k.len(), max_key)) } else { Ok(k.clone()) }
        };
        let keys = |ks: &[Bytes]| ks.iter().map(key).collect::<Result<Vec<_>, _>>();
        let unknown_sub = |sub: &Bytes| CommandError::UnknownSubcommand(name.to_owned(), echo(sub, MAX_ECHO));
        Ok(match name {
            "PING" => {
                arity(rest.len() <= 1)?;
                Command::Ping(rest.first().cloned())
            }
            "ECHO" => {
                arity(rest.len() == 1)?;
                Command::Echo(rest[0].clone())
            }
            "HELLO" => parse_hello(rest)?,
            "AUTH" => match rest {
                [p] => Command::Auth { user: None, password: p.clone() },
                [u, p] => Command::Auth { user: Some(u.clone()), password: p.clone() },
                _ => return Err(CommandError::Arity(lower())),
            },
            "SELECT" => {
                arity(rest.len() == 1)?;
                Command::Select(int(&rest[0])?)
            }
            "CLIENT" => {
                arity(!rest.is_empty())?;
                match upper(&rest[0]).as_str() {
                    "SETNAME" => {
                        sub_arity(rest.len() == 2)?;
                        if rest[1].iter().any(|&c| c <= b' ' || c > b'~') {
                            return Err(CommandError::Other(
                                "Client names cannot contain spaces, newlines or special characters.".into(),
                            ));
                        }
                        Command::ClientSetName(rest[1].clone())
                    }
                    "GETNAME" => {
                        sub_arity(rest.len() == 1)?;
                        Command::ClientGetName
                    }
                    "ID" => {
                        sub_arity(rest.len() == 1)?;
                        Command::ClientId
                    }
                    "INFO" => {
                        sub_arity(rest.len() == 1)?;
                        Command::ClientInfo
                    }
                    "SETINFO" => {
                        sub_arity(rest.len() == 3)?;
                        let lib_version = match upper(&rest[1]).as_str() {
                            "LIB-NAME" => false,
                            "LIB-VER" => true,
                            _ => {
                                return Err(CommandError::Other(format!(
                                    "Unrecognized option '{}'",
                                    echo(&rest[1], MAX_ECHO)
                                )));
                            }
                        };
                        if rest[2].iter().any(|c| !(b'!'..=b'~').contains(c)) {
                            return Err(CommandError::Other(
                                "lib-name and lib-ver cannot contain spaces, newlines or special characters.".into(),
                            ));
                        }
                        Command::ClientSetInfo { lib_version, value: rest[2].clone() }
                    }
                    "REPLY" => {
                        sub_arity(rest.len() == 2)?;
                        Command::ClientReply(match upper(&rest[1]).as_str() {
                            "ON" => ReplyMode::On,
                            "OFF" => ReplyMode::Off,
                            "SKIP" => ReplyMode::Skip,
                            _ => return Err(CommandError::Syntax),
                        })
                    }
                    "LIST" => parse_client_list(&rest[1..])?,
                    "NO-EVICT" | "NO-TOUCH" => {
                        sub_arity(rest.len() == 2)?;
                        if !eq(&rest[1], "ON") && !eq(&rest[1], "OFF") {
                            return Err(CommandError::Syntax);
                        }
                        Command::ClientNoop
                    }
                    _ => return Err(unknown_sub(&rest[0])),
                }
            }
            "INFO" => Command::Info(rest.iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect()),
            "DBSIZE" => {
                arity(rest.is_empty())?;
                Command::DbSize
            }
            "COMMAND" => match rest.first().map(|s| upper(s)).as_deref() {
                None | Some("DOCS") | Some("INFO") | Some("LIST") => Command::CommandEmpty,
                Some("COUNT") => Command::CommandCount,
                Some(_) => return Err(unknown_sub(&rest[0])),
            },
            "CONFIG" => {
                arity(!rest.is_empty())?;
                match upper(&rest[0]).as_str() {
                    "GET" => {
                        sub_arity(rest.len() >= 2)?;
                        Command::ConfigGet(rest[1..].to_vec())
                    }
                    "SET" => {
                        sub_arity(rest.len() >= 3 && rest.len() % 2 == 1)?;
                        Command::ConfigSet(rest[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
                    }
                    _ => return Err(unknown_sub(&rest[0])),
                }
            }
            "QUIT" => Command::Quit,
            "MULTI" | "EXEC" | "DISCARD" | "UNWATCH" => {
                arity(rest.is_empty())?;
                match name {
                    "MULTI" => Command::Multi,
                    "EXEC" => Command::Exec,
                    "DISCARD" => Command::Discard,
                    _ => Command::Unwatch,
                }
            }
            "WATCH" => {
                arity(!rest.is_empty())?;
                keys(rest)?;
                Command::Watch
            }
            "FLUSHALL" | "FLUSHDB" => {
                if rest.len() > 1 || rest.first().is_some_and(|m| !eq(m, "ASYNC") && !eq(m, "SYNC")) {
                    return Err(CommandError::Syntax);
                }
                Command::FlushAll
            }
            "SCAN" => parse_scan(rest).map_err(|e| {
                if e == CommandError::Syntax && rest.is_empty() { CommandError::Arity(lower()) } else { e }
            })?,
            "GET" | "GETDEL" | "PERSIST" | "TYPE" | "STRLEN" => {
                arity(rest.len() == 1)?;
                let k = key(&rest[0])?;
                match name {
                    "GET" => Command::Get(k),
                    "GETDEL" => Command::GetDel(k),
                    "PERSIST" => Command::Persist(k),
                    "TYPE" => Command::Type(k),
                    _ => Command::Strlen(k),
                }
            }
            "GETEX" => {
                arity(!rest.is_empty())?;
                let k = key(&rest[0])?;
                let o = parse_options(rest, 1, false)?;
                let update = if o.persist {
                    ExpiryUpdate::Persist
                } else {
                    match o.expire {
                        Some((unit, v)) => ExpiryUpdate::Set(expire_time(v, unit, "getex")?),
                        None => ExpiryUpdate::Keep,
                    }
                };
                Command::GetEx { key: k, update }
            }
            "SET" => {
                arity(rest.len() >= 2)?;
                let k = key(&rest[0])?;
                let o = parse_options(rest, 2, true)?;
                let expire = o.expire.map(|(unit, v)| expire_time(v, unit, "set")).transpose()?;
                Command::Set {
                    key: k,
                    value: rest[1].clone(),
                    condition: o.condition,
                    expire,
                    keep_ttl: o.keep_ttl,
                    get: o.get,
                    reply: SetReply::Ok,
                }
            }
            "SETNX" => {
                arity(rest.len() == 2)?;
                Command::Set {
                    key: key(&rest[0])?,
                    value: rest[1].clone(),
                    condition: SetCondition::IfAbsent,
                    expire: None,
                    keep_ttl: false,
                    get: false,
                    reply: SetReply::Int,
                }
            }
            "SETEX" | "PSETEX" => {
                arity(rest.len() == 3)?;
                let unit = if name == "SETEX" { Unit::Ex } else { Unit::Px };
                let k = key(&rest[0])?;
                let expire = expire_time(&rest[1], unit, &lower())?;
                Command::Set {
                    key: k,
                    value: rest[2].clone(),
                    condition: SetCondition::Always,
                    expire: Some(expire),
                    keep_ttl: false,
                    get: false,
                    reply: SetReply::Ok,
                }
            }
            "MGET" => {
                arity(!rest.is_empty())?;
                Command::MGet(keys(rest)?)
            }
            "MSET" => {
                arity(!rest.is_empty() && rest.len().is_multiple_of(2))?;
                let pairs = rest.chunks(2).map(|p| Ok((key(&p[0])?, p[1].clone()))).collect::<Result<_, _>>()?;
                Command::MSet(pairs)
            }
            "EXISTS" | "TOUCH" | "DEL" | "UNLINK" => {
                arity(!rest.is_empty())?;
                let ks = keys(rest)?;
                match name {
                    "EXISTS" => Command::Exists(ks),
                    "TOUCH" => Command::Touch(ks),
                    _ => Command::Del(ks),
                }
            }
            "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
                arity(rest.len() == 1)?;
                Command::Ttl { key: key(&rest[0])?, millis: name.starts_with('P'), absolute: name.ends_with("TIME") }
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                arity(rest.len() >= 2)?;
                let k = key(&rest[0])?;
                let cond = parse_expire_condition(&rest[2..])?;
                let n = int(&rest[1])?;
                let bad = || CommandError::BadExpire(lower());
                let ms = if name.starts_with('P') {
                    n
                } else {
                    if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&n) {
                        return Err(bad());
                    }
                    n * 1000
                };
                let when = if name.ends_with("AT") {
                    When::At(ms)
                } else {
                    // The absolute time must fit, as Redis computes it.
                    if ms > i64::MAX - unix_now_ms() {
                        return Err(bad());
                    }
                    When::In(ms)
                };
                Command::Expire { key: k, when, cond }
            }
            "MEMORY" => {
                arity(!rest.is_empty())?;
                match upper(&rest[0]).as_str() {
                    "USAGE" => {
                        sub_arity(rest.len() >= 2)?;
                        match &rest[2..] {
                            [] => {}
                            [s, n] if eq(s, "SAMPLES") => {
                                int(n)?;
                            }
                            _ => return Err(CommandError::Syntax),
                        }
                        Command::MemoryUsage(key(&rest[1])?)
                    }
                    _ => return Err(unknown_sub(&rest[0])),
                }
            }
            _ => {
                // As Redis: the name and the arguments shown up to 128 bytes in all.
                let mut shown = String::new();
                for a in rest {
                    if shown.len() >= MAX_ECHO {
                        break;
                    }
                    let room = MAX_ECHO - shown.len();
                    shown.push('\'');
                    shown.push_str(&echo(a, room));
                    shown.push_str("' ");
                }
                return Err(CommandError::Unknown(echo(first, MAX_ECHO), shown));
            }
        })
    }

    /// Whether the command works on keys (it can be queued in MULTI and sent to an owner).
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Command::Get(_)
                | Command::GetDel(_)
                | Command::GetEx { .. }
                | Command::Set { .. }
                | Command::MGet(_)
                | Command::MSet(_)
                | Command::Exists(_)
                | Command::Touch(_)
                | Command::Del(_)
                | Command::Ttl { .. }
                | Command::Expire { .. }
                | Command::Persist(_)
                | Command::Type(_)
                | Command::MemoryUsage(_)
                | Command::Strlen(_)
        )
    }

    /// The keys a data command touches (empty for connection and server commands).
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            Command::Get(k)
            | Command::GetDel(k)
            | Command::Persist(k)
            | Command::Type(k)
            | Command::MemoryUsage(k)
            | Command::Strlen(k) => vec![k],
            Command::Set { key, .. }
            | Command::GetEx { key, .. }
            | Command::Ttl { key, .. }
            | Command::Expire { key, .. } => vec![key],
            Command::MGet(ks) | Command::Exists(ks) | Command::Touch(ks) | Command::Del(ks) => ks.iter().collect(),
            Command::MSet(pairs) => pairs.iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// The wire form of a data command, for a peer; it parses back to the same command (times
    /// travel in milliseconds, relative ones stay relative).
    pub fn to_args(&self) -> Option<Vec<Bytes>> {
        let s = |x: &'static str| Bytes::from_static(x.as_bytes());
        let num = |n: i64| Bytes::from(n.to_string());
        let with = |name: &'static str, keys: &[Bytes]| {
            let mut v = vec![s(name)];
            v.extend(keys.iter().cloned());
            v
        };
        let time = |v: &mut Vec<Bytes>, w: &When| match w {
            When::In(ms) => v.extend([s("PX"), num(*ms)]),
            When::At(ms) => v.extend([s("PXAT"), num(*ms)]),
        };
        Some(match self {
            Command::Get(k) => vec![s("GET"), k.clone()],
            Command::GetDel(k) => vec![s("GETDEL"), k.clone()],
            Command::Persist(k) => vec![s("PERSIST"), k.clone()],
            Command::Type(k) => vec![s("TYPE"), k.clone()],
            Command::Strlen(k) => vec![s("STRLEN"), k.clone()],
            Command::MemoryUsage(k) => vec![s("MEMORY"), s("USAGE"), k.clone()],
            Command::GetEx { key, update } => {
                let mut v = vec![s("GETEX"), key.clone()];
                match update {
                    ExpiryUpdate::Keep => {}
                    ExpiryUpdate::Persist => v.push(s("PERSIST")),
                    ExpiryUpdate::Set(w) => time(&mut v, w),
                }
                v
            }
            Command::Ttl { key, millis, absolute } => {
                let name = match (millis, absolute) {
                    (false, false) => "TTL",
                    (true, false) => "PTTL",
                    (false, true) => "EXPIRETIME",
                    (true, true) => "PEXPIRETIME",
                };
                vec![s(name), key.clone()]
            }
            Command::Expire { key, when, cond } => {
                let mut v = match when {
                    When::In(ms) => vec![s("PEXPIRE"), key.clone(), num(*ms)],
                    When::At(ms) => vec![s("PEXPIREAT"), key.clone(), num(*ms)],
                };
                match cond {
                    ExpireCondition::Always => {}
                    ExpireCondition::IfNone => v.push(s("NX")),
                    ExpireCondition::IfSome => v.push(s("XX")),
                    ExpireCondition::IfLater => v.push(s("GT")),
                    ExpireCondition::IfEarlier => v.push(s("LT")),
                }
                v
            }
            Command::Exists(ks) => with("EXISTS", ks),
            Command::Touch(ks) => with("TOUCH", ks),
            Command::MGet(ks) => with("MGET", ks),
            Command::Del(ks) => with("DEL", ks),
            Command::MSet(pairs) => {
                let mut v = vec![s("MSET")];
                for (k, val) in pairs {
                    v.extend([k.clone(), val.clone()]);
                }
                v
            }
            Command::Set {
                key, value, condition: SetCondition::IfAbsent, expire: None, reply: SetReply::Int, ..
            } => {
                vec![s("SETNX"), key.clone(), value.clone()]
            }
            Command::Set { key, value, condition, expire, keep_ttl, get, reply: SetReply::Ok } => {
                let mut v = vec![s("SET"), key.clone(), value.clone()];
                match condition {
                    SetCondition::IfAbsent => v.push(s("NX")),
                    SetCondition::IfPresent => v.push(s("XX")),
                    SetCondition::Always => {}
                }
                if *keep_ttl {
                    v.push(s("KEEPTTL"));
                } else if let Some(w) = expire {
                    time(&mut v, w);
                }
                if *get {
                    v.push(s("GET"));
                }
                v
            }
            _ => return None,
        })
    }

    /// Runs a data command (or SCAN) against this node's store. Other commands answer an error.
    pub async fn run_local(&self, store: &KvStore) -> Reply {
        let value = |v: Option<Bytes>| v.map_or(Reply::Nil, Reply::Bulk);
        match self {
            Command::Get(k) => value(store.get(k).await),
            Command::GetDel(k) => value(store.take(k).await),
            Command::GetEx { key, update } => {
                let v = store.get(key).await;
                if v.is_some() {
                    match update {
                        ExpiryUpdate::Keep => {}
                        ExpiryUpdate::Persist => {
                            store.persist(key);
                        }
                        ExpiryUpdate::Set(w) => {
                            store.expire_if(key, w.remaining_ms(), ExpireCondition::Always);
                        }
                    }
                }
                value(v)
            }
            Command::Set { key, value: v, condition, expire, keep_ttl, get, reply } => {
                let old = if *get { store.get(key).await } else { None };
                // A time already past stores a key that is already expired, as in Redis.
                let ttl = expire.map(|w| Duration::from_millis(w.remaining_ms().max(0) as u64));
                let opts = SetOptions { condition: *condition, ttl, keep_ttl: *keep_ttl };
                let outcome = store.set(key.clone(), v.clone(), opts);
                match (get, reply, outcome) {
                    (true, _, _) => value(old),
                    (false, SetReply::Int, o) => Reply::Int(i64::from(o == SetOutcome::Stored)),
                    (false, SetReply::Ok, SetOutcome::Stored) => Reply::ok(),
                    (false, SetReply::Ok, SetOutcome::NotStored) => Reply::Nil,
                }
            }
            Command::MGet(ks) => {
                let mut out = Vec::with_capacity(ks.len());
                for k in ks {
                    out.push(value(store.get(k).await));
                }
                Reply::Array(out)
            }
            Command::MSet(pairs) => {
                for (k, v) in pairs {
                    store.set(k.clone(), v.clone(), SetOptions::default());
                }
                Reply::ok()
            }
            Command::Exists(ks) => Reply::Int(store.count_and_pin(ks) as i64),
            Command::Touch(ks) => Reply::Int(store.touch(ks) as i64),
            Command::Del(ks) => Reply::Int(ks.iter().filter(|k| store.delete(k)).count() as i64),
            Command::Ttl { key, millis, absolute } => Reply::Int(match store.ttl(key) {
                Ttl::Missing => -2,
                Ttl::Persistent => -1,
                Ttl::Millis(ms) => {
                    let ms = ms as i64 + if *absolute { unix_now_ms() } else { 0 };
                    // Seconds are rounded to the nearest, as Redis does.
                    if *millis { ms } else { (ms + 500) / 1000 }
                }
            }),
            Command::Expire { key, when, cond } => {
                Reply::Int(i64::from(store.expire_if(key, when.remaining_ms(), *cond)))
            }
            Command::Persist(k) => Reply::Int(i64::from(store.persist(k))),
            Command::Type(k) => Reply::Simple(if store.strlen(k).is_some() { "string" } else { "none" }),
            Command::MemoryUsage(k) => {
                store.strlen(k).map_or(Reply::Nil, |n| Reply::Int((n + k.len() as u64 + ENTRY_OVERHEAD) as i64))
            }
            Command::Strlen(k) => Reply::Int(store.strlen(k).unwrap_or(0) as i64),
            Command::Scan { cursor, pattern, count, no_type } => {
                let (next, mut keys) = store.scan(*cursor, *count);
                if *no_type {
                    keys.clear();
                }
                if let Some(p) = pattern {
                    let glob = Glob::new(p);
                    keys.retain(|k| glob.matches(k));
                }
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(next.to_string())),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ])
            }
            other => Reply::err(format!("ERR {other:?} is not a data command")),
        }
    }
}

/// Unit of an expiry argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// Options of SET (`set == true`) and GETEX, with Redis's rules: NX/XX, GET, KEEPTTL, PERSIST and
/// one kind of expiry; repeating the same option is allowed (the last expiry wins), mixing
/// conflicting ones is a syntax error.
struct Options<'a> {
    condition: SetCondition,
    get: bool,
    keep_ttl: bool,
    persist: bool,
    expire: Option<(Unit, &'a Bytes)>,
}

fn parse_options(rest: &[Bytes], from: usize, set: bool) -> Result<Options<'_>, CommandError> {
    let mut o = Options { condition: SetCondition::Always, get: false, keep_ttl: false, persist: false, expire: None };
    let mut i = from;
    while i < rest.len() {
        let opt = &rest[i];
        let next = rest.get(i + 1);
        let kind = o.expire.map(|(u, _)| u);
        let expiry = |u: Unit| next.is_some() && kind.is_none_or(|k| k == u) && !o.keep_ttl && !o.persist;
        if set && eq(opt, "NX") && o.condition != SetCondition::IfPresent {
            o.condition = SetCondition::IfAbsent;
        } else if set && eq(opt, "XX") && o.condition != SetCondition::IfAbsent {
            o.condition = SetCondition::IfPresent;
        } else if set && eq(opt, "GET") {
            o.get = true;
        } else if set && eq(opt, "KEEPTTL") && kind.is_none() {
            o.keep_ttl = true;
        } else if !set && eq(opt, "PERSIST") && kind.is_none() {
            o.persist = true;
        } else if let Some(u) = [("EX", Unit::Ex), ("PX", Unit::Px), ("EXAT", Unit::ExAt), ("PXAT", Unit::PxAt)]
            .iter()
            .find(|(w, _)| eq(opt, w))
            .map(|(_, u)| *u)
            && expiry(u)
            && let Some(v) = next
        {
            o.expire = Some((u, v));
            i += 1;
        } else {
            return Err(CommandError::Syntax);
        }
        i += 1;
    }
    Ok(o)
}

/// An expiry argument checked as Redis checks it: positive, and its absolute time in
/// milliseconds within range.
fn expire_time(v: &[u8], unit: Unit, cmd: &str) -> Result<When, CommandError> {
    let n = int(v)?;
    let bad = || CommandError::BadExpire(cmd.to_owned());
    if n <= 0 || (matches!(unit, Unit::Ex | Unit::ExAt) && n > i64::MAX / 1000) {
        return Err(bad());
    }
    let ms = if matches!(unit, Unit::Ex | Unit::ExAt) { n * 1000 } else { n };
    match unit {
        Unit::Ex | Unit::Px => {
            ms.checked_add(unix_now_ms()).ok_or_else(bad)?;
            Ok(When::In(ms))
        }
        Unit::ExAt | Unit::PxAt => Ok(When::At(ms)),
    }
}

fn parse_expire_condition(opts: &[Bytes]) -> Result<ExpireCondition, CommandError> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in opts {
        match upper(o).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => return Err(CommandError::UnsupportedOption(echo(o, MAX_ECHO))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CommandError::Other("NX and XX, GT or LT options at the same time are not compatible".into()));
    }
    if gt && lt {
        return Err(CommandError::Other("GT and LT options at the same time are not compatible".into()));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    })
}

fn parse_scan(rest: &[Bytes]) -> Result<Command, CommandError> {
    let Some(c) = rest.first() else { return Err(CommandError::Syntax) };
    let cursor = std::str::from_utf8(c).ok().and_then(|s| s.parse::<u64>().ok()).ok_or(CommandError::BadCursor)?;
    let (mut pattern, mut count, mut no_type) = (None, SCAN_DEFAULT_COUNT, false);
    let mut i = 1;
    while i < rest.len() {
        let Some(v) = rest.get(i + 1) else { return Err(CommandError::Syntax) };
        match upper(&rest[i]).as_str() {
            "MATCH" => pattern = (v.as_ref() != b"*").then(|| v.clone()),
            "COUNT" => {
                let n = int(v)?;
                if n < 1 {
                    return Err(CommandError::Syntax);
                }
                count = usize::try_from(n).unwrap_or(usize::MAX);
            }
            "TYPE" => no_type = !eq(v, "string"),
            _ => return Err(CommandError::Syntax),
        }
        i += 2;
    }
    Ok(Command::Scan { cursor, pattern, count, no_type })
}

fn parse_client_list(rest: &[Bytes]) -> Result<Command, CommandError> {
    match rest {
        [] => Ok(Command::ClientList(None)),
        [t, kind] if eq(t, "TYPE") => match upper(kind).as_str() {
            "NORMAL" => Ok(Command::ClientList(None)),
            "MASTER" | "REPLICA" | "SLAVE" | "PUBSUB" => Ok(Command::ClientList(Some(Vec::new()))),
            _ => Err(CommandError::Other(format!("Unknown client type '{}'", echo(kind, MAX_ECHO)))),
        },
        [t, ids @ ..] if eq(t, "ID") && !ids.is_empty() => {
            let ids = ids
                .iter()
                .map(|i| int(i).ok().filter(|n| *n > 0).map(|n| n as u64))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| CommandError::Other("Invalid client ID".into()))?;
            Ok(Command::ClientList(Some(ids)))
        }
        _ => Err(CommandError::Syntax),
    }
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, CommandError> {
    let mut proto = None;
    let mut auth = None;
    let mut name = None;
    let mut i = 0;
    if let Some(p) = rest.first() {
        let v = int(p).map_err(|_| CommandError::Other("Protocol version is not an integer or out of range".into()))?;
        if !(2..=3).contains(&v) {
            return Err(CommandError::Proto);
        }
        proto = Some(v);
        i = 1;
    }
    while i < rest.len() {
        match upper(&rest[i]).as_str() {
            "AUTH" if i + 2 < rest.len() => {
                auth = Some((rest[i + 1].clone(), rest[i + 2].clone()));
                i += 3;
            }
            "SETNAME" if i + 1 < rest.len() => {
                name = Some(rest[i + 1].clone());
                i += 2;
            }
            _ => {
                return Err(CommandError::Other(format!(
                    "Syntax error in HELLO option '{}'",
                    echo(&rest[i], MAX_ECHO)
                )));
            }
        }
    }
    Ok(Command::Hello { proto, auth, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(&args(s), 16)
    }

    fn err(s: &str) -> String {
        parse(s).expect_err(s).to_string()
    }

    #[test]
    fn set_options() {
        let Ok(Command::Set { condition, expire, get, .. }) = parse("set k v NX PX 1500 GET") else { panic!("parses") };
        assert_eq!(condition, SetCondition::IfAbsent);
        assert_eq!(expire, Some(When::In(1500)));
        assert!(get);
        assert_eq!(parse("SET k v NX XX"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v EX 1 KEEPTTL"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v KEEPTTL EX 1"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v EX 1 PX 1"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v EX 0"), Err(CommandError::BadExpire("set".into())));
        assert_eq!(parse("SET k v EX abc"), Err(CommandError::NotInteger));
        assert_eq!(parse("SET k v EX abc NX XX"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k"), Err(CommandError::Arity("set".into())));
        // Repeats are allowed: the last expiry wins.
        let Ok(Command::Set { expire, .. }) = parse("SET k v EX 1 EX 2 NX NX GET GET") else { panic!("parses") };
        assert_eq!(expire, Some(When::In(2000)));
        let Ok(Command::Set { expire, .. }) = parse("SET k v PXAT 5") else { panic!("parses") };
        assert_eq!(expire, Some(When::At(5)));
        assert_eq!(parse("SET k v EX 9223372036854775"), Err(CommandError::BadExpire("set".into())));
        assert_eq!(parse("SET k v PERSIST"), Err(CommandError::Syntax));
        assert_eq!(parse("GETEX k PERSIST EX 1"), Err(CommandError::Syntax));
        assert_eq!(parse("GETEX k NX"), Err(CommandError::Syntax));
        assert_eq!(parse("SETEX k 0 v"), Err(CommandError::BadExpire("setex".into())));
    }

    #[test]
    fn integers_as_redis_reads_them() {
        for ok in ["0", "1", "-1", "9223372036854775807", "-9223372036854775808", "10"] {
            assert_eq!(int(ok.as_bytes()).map(|v| v.to_string()), Ok(ok.to_owned()));
        }
        for bad in ["", "-", "+1", "01", "-0", " 1", "1 ", "9223372036854775808", "1e3", "0x10", "99999999999999999999"]
        {
            assert_eq!(int(bad.as_bytes()), Err(CommandError::NotInteger), "{bad:?}");
        }
    }

    #[test]
    fn expire_options() {
        assert_eq!(
            parse("EXPIRE k 2"),
            Ok(Command::Expire { key: "k".into(), when: When::In(2000), cond: ExpireCondition::Always })
        );
        assert_eq!(
            parse("PEXPIREAT k 5 gt"),
            Ok(Command::Expire { key: "k".into(), when: When::At(5), cond: ExpireCondition::IfLater })
        );
        assert_eq!(err("EXPIRE k 1 NX XX"), "ERR NX and XX, GT or LT options at the same time are not compatible");
        assert_eq!(err("EXPIRE k 1 GT LT"), "ERR GT and LT options at the same time are not compatible");
        assert_eq!(err("EXPIRE k 1 FOO"), "ERR Unsupported option FOO");
        assert_eq!(err("EXPIRE k 9223372036854776"), "ERR invalid expire time in 'expire' command");
        assert_eq!(err("PEXPIRE k 9223372036854775807"), "ERR invalid expire time in 'pexpire' command");
        assert!(matches!(parse("EXPIRE k -5"), Ok(Command::Expire { when: When::In(-5000), .. })));
    }

    #[test]
    fn errors_read_like_redis() {
        assert_eq!(err("FOO x"), "ERR unknown command 'FOO', with args beginning with: 'x' ");
        assert_eq!(err("FLUSHALL x"), "ERR syntax error");
        assert_eq!(err("GET"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(err("CLIENT SETNAME"), "ERR wrong number of arguments for 'client|setname' command");
        assert_eq!(err("CLIENT FOO"), "ERR unknown subcommand 'FOO'. Try CLIENT HELP.");
        assert_eq!(parse("GET 0123456789abcdefg"), Err(CommandError::KeyTooLong(17, 16)));
        assert_eq!(parse("HELLO 4"), Err(CommandError::Proto));
        assert_eq!(parse("MSET a"), Err(CommandError::Arity("mset".into())));
        assert_eq!(err("SCAN x"), "ERR invalid cursor");
        assert_eq!(err("SCAN 0 COUNT 0"), "ERR syntax error");
    }

    #[test]
    fn echoed_input_is_capped() {
        let big = Bytes::from(vec![0xffu8; 1 << 20]);
        let e = Command::parse(&[big.clone(), big.clone(), big], 16).expect_err("unknown").to_string();
        // 128 bytes of name and of arguments at most, each invalid byte shown as U+FFFD.
        assert!(e.len() < 2 * 3 * MAX_ECHO + 100, "{} bytes", e.len());
        let e = Command::parse(&args(&format!("X {} y", "a".repeat(200))), 16).expect_err("unknown").to_string();
        assert_eq!(e, format!("ERR unknown command 'X', with args beginning with: '{}' ", "a".repeat(MAX_ECHO)));
        let sub = format!("CLIENT {}", "b".repeat(1000));
        assert_eq!(err(&sub), format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", "b".repeat(MAX_ECHO)));
    }

    #[test]
    fn hello_and_client() {
        assert_eq!(
            parse("HELLO 3 AUTH u p SETNAME n"),
            Ok(Command::Hello { proto: Some(3), auth: Some(("u".into(), "p".into())), name: Some("n".into()) })
        );
        assert_eq!(
            parse("CLIENT SETINFO LIB-NAME redis-py"),
            Ok(Command::ClientSetInfo { lib_version: false, value: "redis-py".into() })
        );
        assert_eq!(parse("CLIENT REPLY skip"), Ok(Command::ClientReply(ReplyMode::Skip)));
        assert_eq!(parse("CLIENT REPLY maybe"), Err(CommandError::Syntax));
        assert_eq!(parse("CLIENT LIST ID 3 4"), Ok(Command::ClientList(Some(vec![3, 4]))));
    }

    /// What a peer receives means the same as what the client sent.
    #[test]
    fn forwarded_commands_keep_their_meaning() {
        for s in [
            "GET k",
            "GETDEL k",
            "GETEX k",
            "GETEX k PERSIST",
            "GETEX k PX 20",
            "GETEX k PXAT 20",
            "STRLEN k",
            "TYPE k",
            "PERSIST k",
            "MEMORY USAGE k",
            "TTL k",
            "PTTL k",
            "EXPIRETIME k",
            "PEXPIRETIME k",
            "PEXPIRE k 1500",
            "PEXPIRE k -3 XX",
            "PEXPIREAT k 1500 LT",
            "EXISTS a b a",
            "TOUCH a b",
            "MGET a b",
            "MSET a 1 b 2",
            "DEL a b",
            "SET k v",
            "SETNX k v",
            "SET k v NX PX 250 GET",
            "SET k v XX KEEPTTL",
            "SET k v PXAT 99",
        ] {
            let c = parse(s).expect(s);
            assert!(c.is_data(), "{s}");
            let wire = c.to_args().expect("forwardable");
            assert_eq!(Command::parse(&wire, 64), Ok(c), "{s}");
        }
        // Seconds travel as milliseconds.
        let fwd = |s: &str| Command::parse(&parse(s).expect(s).to_args().expect("fwd"), 64);
        assert_eq!(fwd("EXPIRE k 2"), parse("PEXPIRE k 2000"));
        assert_eq!(fwd("SET k v EX 3"), parse("SET k v PX 3000"));
        assert_eq!(fwd("SETEX k 3 v"), parse("SET k v PX 3000"));
        assert_eq!(fwd("EXPIREAT k 3 NX"), parse("PEXPIREAT k 3000 NX"));
        assert!(parse("PING").expect("ping").to_args().is_none());
        assert!(parse("SCAN 0").expect("scan").to_args().is_none());
    }
}
