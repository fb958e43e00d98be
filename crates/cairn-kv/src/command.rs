//! Commands of the KV endpoint: parsing arguments into typed commands with Redis's argument rules
//! and error texts, and running the data commands against the local store.

use std::time::Duration;

use bytes::Bytes;

use crate::resp::Reply;
use crate::store::{KvStore, SetCondition, SetOptions, SetOutcome, Ttl};

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
    #[error("ERR DB index is out of range")]
    DbIndex,
    #[error("NOPROTO unsupported protocol version")]
    Proto,
    #[error("ERR key of {0} bytes is over the limit of {1} bytes")]
    KeyTooLong(usize, usize),
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
    /// CLIENT SETINFO and the other CLIENT subcommands clients send on connect: accepted, no effect.
    ClientNoop,
    Info(Vec<String>),
    DbSize,
    CommandCount,
    /// COMMAND, COMMAND DOCS, COMMAND INFO: an empty answer (clients only look for optional hints).
    CommandEmpty,
    ConfigGet(Vec<Bytes>),
    Quit,
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        opts: SetOptions,
        get: bool,
    },
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    Exists(Vec<Bytes>),
    /// DEL and UNLINK.
    Del(Vec<Bytes>),
    /// TTL (`millis == false`) and PTTL.
    Ttl {
        key: Bytes,
        millis: bool,
    },
    /// EXPIRE and PEXPIRE, in milliseconds.
    Expire {
        key: Bytes,
        ms: i64,
    },
    Strlen(Bytes),
}

/// Longest command name recognised.
const MAX_NAME: usize = 16;

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn int(b: &[u8]) -> Result<i64, CommandError> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or(CommandError::NotInteger)
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
        let key = |k: &Bytes| {
            if k.len() > max_key { Err(CommandError::KeyTooLong(k.len(), max_key)) } else { Ok(k.clone()) }
        };
        let keys = |ks: &[Bytes]| ks.iter().map(key).collect::<Result<Vec<_>, _>>();
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
                    "SETNAME" if rest.len() == 2 => Command::ClientSetName(rest[1].clone()),
                    "GETNAME" => Command::ClientGetName,
                    "ID" => Command::ClientId,
                    "SETINFO" if rest.len() == 3 => Command::ClientNoop,
                    "SETNAME" | "SETINFO" => {
                        return Err(CommandError::Arity(format!("client|{}", upper(&rest[0]).to_lowercase())));
                    }
                    "NO-EVICT" | "NO-TOUCH" | "REPLY" => Command::ClientNoop,
                    other => return Err(CommandError::UnknownSubcommand("CLIENT".into(), other.to_owned())),
                }
            }
            "INFO" => Command::Info(rest.iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect()),
            "DBSIZE" => Command::DbSize,
            "COMMAND" => match rest.first().map(|s| upper(s)).as_deref() {
                None | Some("DOCS") | Some("INFO") | Some("LIST") => Command::CommandEmpty,
                Some("COUNT") => Command::CommandCount,
                Some(other) => return Err(CommandError::UnknownSubcommand("COMMAND".into(), other.to_owned())),
            },
            "CONFIG" => {
                arity(!rest.is_empty())?;
                match upper(&rest[0]).as_str() {
                    "GET" if rest.len() >= 2 => Command::ConfigGet(rest[1..].to_vec()),
                    "GET" => return Err(CommandError::Arity("config|get".into())),
                    other => return Err(CommandError::UnknownSubcommand("CONFIG".into(), other.to_owned())),
                }
            }
            "QUIT" => Command::Quit,
            "GET" => {
                arity(rest.len() == 1)?;
                Command::Get(key(&rest[0])?)
            }
            "SET" => parse_set(rest, max_key)?,
            "MGET" => {
                arity(!rest.is_empty())?;
                Command::MGet(keys(rest)?)
            }
            "MSET" => {
                arity(!rest.is_empty() && rest.len().is_multiple_of(2))?;
                let pairs = rest.chunks(2).map(|p| Ok((key(&p[0])?, p[1].clone()))).collect::<Result<_, _>>()?;
                Command::MSet(pairs)
            }
            "EXISTS" => {
                arity(!rest.is_empty())?;
                Command::Exists(keys(rest)?)
            }
            "DEL" | "UNLINK" => {
                arity(!rest.is_empty())?;
                Command::Del(keys(rest)?)
            }
            "TTL" | "PTTL" => {
                arity(rest.len() == 1)?;
                Command::Ttl { key: key(&rest[0])?, millis: name == "PTTL" }
            }
            "EXPIRE" | "PEXPIRE" => {
                arity(rest.len() == 2)?;
                let n = int(&rest[1])?;
                let ms = if name == "EXPIRE" { n.checked_mul(1000) } else { Some(n) };
                Command::Expire { key: key(&rest[0])?, ms: ms.ok_or_else(|| CommandError::BadExpire(lower()))? }
            }
            "STRLEN" => {
                arity(rest.len() == 1)?;
                Command::Strlen(key(&rest[0])?)
            }
            _ => {
                let shown: String = rest.iter().take(8).map(|a| format!("'{}' ", String::from_utf8_lossy(a))).collect();
                return Err(CommandError::Unknown(String::from_utf8_lossy(first).into_owned(), shown));
            }
        })
    }

    /// The keys a data command touches (empty for connection and server commands).
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            Command::Get(k) | Command::Strlen(k) => vec![k],
            Command::Set { key, .. } | Command::Ttl { key, .. } | Command::Expire { key, .. } => vec![key],
            Command::MGet(ks) | Command::Exists(ks) | Command::Del(ks) => ks.iter().collect(),
            Command::MSet(pairs) => pairs.iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// Runs a data command against this node's store. Other commands answer an error.
    pub async fn run_local(&self, store: &KvStore) -> Reply {
        match self {
            Command::Get(k) => store.get(k).await.map_or(Reply::Nil, Reply::Bulk),
            Command::Set { key, value, opts, get } => {
                let old = if *get { store.get(key).await } else { None };
                let outcome = store.set(key.clone(), value.clone(), *opts);
                match (get, outcome) {
                    (true, _) => old.map_or(Reply::Nil, Reply::Bulk),
                    (false, SetOutcome::Stored) => Reply::ok(),
                    (false, SetOutcome::NotStored) => Reply::Nil,
                }
            }
            Command::MGet(ks) => {
                let mut out = Vec::with_capacity(ks.len());
                for k in ks {
                    out.push(store.get(k).await.map_or(Reply::Nil, Reply::Bulk));
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
            Command::Del(ks) => Reply::Int(ks.iter().filter(|k| store.delete(k)).count() as i64),
            Command::Ttl { key, millis } => Reply::Int(match store.ttl(key) {
                Ttl::Missing => -2,
                Ttl::Persistent => -1,
                Ttl::Millis(ms) if *millis => ms as i64,
                Ttl::Millis(ms) => ms.div_ceil(1000) as i64,
            }),
            Command::Expire { key, ms } => Reply::Int(store.expire(key, *ms) as i64),
            Command::Strlen(k) => Reply::Int(store.strlen(k).unwrap_or(0) as i64),
            other => Reply::err(format!("ERR {other:?} is not a data command")),
        }
    }
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, CommandError> {
    let mut proto = None;
    let mut auth = None;
    let mut name = None;
    let mut i = 0;
    if let Some(p) = rest.first() {
        let v = int(p).map_err(|_| CommandError::Proto)?;
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
            _ => return Err(CommandError::Syntax),
        }
    }
    Ok(Command::Hello { proto, auth, name })
}

fn parse_set(rest: &[Bytes], max_key: usize) -> Result<Command, CommandError> {
    if rest.len() < 2 {
        return Err(CommandError::Arity("set".into()));
    }
    if rest[0].len() > max_key {
        return Err(CommandError::KeyTooLong(rest[0].len(), max_key));
    }
    let mut opts = SetOptions::default();
    let mut get = false;
    let mut expiry_given = false;
    let mut i = 2;
    while i < rest.len() {
        let word = upper(&rest[i]);
        match word.as_str() {
            "NX" if opts.condition == SetCondition::Always => opts.condition = SetCondition::IfAbsent,
            "XX" if opts.condition == SetCondition::Always => opts.condition = SetCondition::IfPresent,
            "GET" => get = true,
            "KEEPTTL" if !expiry_given => {
                opts.keep_ttl = true;
                expiry_given = true;
            }
            "EX" | "PX" if !expiry_given && i + 1 < rest.len() => {
                let n = int(&rest[i + 1])?;
                if n <= 0 {
                    return Err(CommandError::BadExpire("set".into()));
                }
                let ms =
                    if word == "EX" { n.checked_mul(1000).ok_or(CommandError::BadExpire("set".into()))? } else { n };
                opts.ttl = Some(Duration::from_millis(ms as u64));
                expiry_given = true;
                i += 1;
            }
            _ => return Err(CommandError::Syntax),
        }
        i += 1;
    }
    Ok(Command::Set { key: rest[0].clone(), value: rest[1].clone(), opts, get })
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

    #[test]
    fn set_options() {
        let Ok(Command::Set { opts, get, .. }) = parse("set k v NX PX 1500 GET") else { panic!("parses") };
        assert_eq!(opts.condition, SetCondition::IfAbsent);
        assert_eq!(opts.ttl, Some(Duration::from_millis(1500)));
        assert!(get);
        assert_eq!(parse("SET k v NX XX"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v EX 1 KEEPTTL"), Err(CommandError::Syntax));
        assert_eq!(parse("SET k v EX 0"), Err(CommandError::BadExpire("set".into())));
        assert_eq!(parse("SET k v EX abc"), Err(CommandError::NotInteger));
        assert_eq!(parse("SET k"), Err(CommandError::Arity("set".into())));
    }

    #[test]
    fn errors_read_like_redis() {
        assert_eq!(
            parse("FLUSHALL x").map_err(|e| e.to_string()),
            Err("ERR unknown command 'FLUSHALL', with args beginning with: 'x' ".into())
        );
        assert_eq!(
            parse("GET").map_err(|e| e.to_string()),
            Err("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(parse("GET 0123456789abcdefg"), Err(CommandError::KeyTooLong(17, 16)));
        assert_eq!(parse("HELLO 4"), Err(CommandError::Proto));
        assert_eq!(parse("MSET a"), Err(CommandError::Arity("mset".into())));
    }

    #[test]
    fn hello_and_client() {
        assert_eq!(
            parse("HELLO 3 AUTH u p SETNAME n"),
            Ok(Command::Hello { proto: Some(3), auth: Some(("u".into(), "p".into())), name: Some("n".into()) })
        );
        assert_eq!(parse("CLIENT SETINFO LIB-NAME redis-py"), Ok(Command::ClientNoop));
        assert_eq!(parse("EXPIRE k 2"), Ok(Command::Expire { key: "k".into(), ms: 2000 }));
    }
}
