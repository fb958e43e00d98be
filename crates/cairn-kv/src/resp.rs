//! The Redis protocol: an incremental, bounded parser of client commands (RESP arrays of bulk
//! strings, and inline commands as typed in telnet), the reply type with its RESP2 and RESP3
//! encodings, and a parser of RESP2 replies for answers that come back from peers.
//!
//! Parsing is zero-copy: a complete command is split off the connection's buffer and its
//! arguments are slices of it. When a bulk string's header is seen, [`Parsed::Incomplete`] tells
//! how many bytes the whole command needs, so the connection can reserve them once and read a
//! large value straight into the buffer it will be stored from.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest `*<n>` / `$<n>` header line; a longer one is malformed.
const MAX_HEADER_LINE: usize = 32;
/// Bulk strings up to this size are copied into the output buffer; larger ones are sent from the
/// stored value itself.
const INLINE_BULK_MAX: usize = 16 << 10;
/// Most arguments of a command from a client that has not authenticated (Redis 7's limit), so
/// an unauthenticated client cannot make the node hold anything large.
pub const UNAUTHENTICATED_MAX_ARGS: i64 = 10;
/// Longest bulk string from a client that has not authenticated (Redis 7's limit).
pub const UNAUTHENTICATED_MAX_BULK: i64 = 16 << 10;

/// Bounds on what one command may claim.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most arguments (command name included).
    pub max_args: usize,
    /// Longest bulk string.
    pub max_bulk: usize,
    /// Most bytes of one command on the wire.
    pub max_command: usize,
    /// Longest inline command line.
    pub max_inline: usize,
    /// Whether the client has authenticated; until then the `UNAUTHENTICATED_*` limits apply.
    pub authenticated: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: {0}")]
    Malformed(String),
    #[error("Protocol error: invalid multibulk length {0} (limit {1})")]
    TooManyArgs(i64, usize),
    #[error("Protocol error: invalid bulk length {0} (limit {1})")]
    BulkTooLong(i64, usize),
    #[error("Protocol error: command of {0} bytes is over the limit of {1}")]
    CommandTooLong(usize, usize),
    #[error("Protocol error: too big inline request (limit {0})")]
    InlineTooLong(usize),
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedArgs,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulk,
}

/// Outcome of looking at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command: its arguments (empty for a blank inline line) and its length on the wire.
    Complete(Vec<(usize, usize)>, usize),
    /// More bytes are needed; the command needs at least this many in total.
    Incomplete(usize),
}

/// Finds the end of the line starting at `pos`; returns the index of its `\r`.
fn line_end(buf: &[u8], pos: usize, max: usize) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[pos..buf.len().min(pos + max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(pos + i)),
        None if window.len() >= max + 2 => Err(ProtocolError::Malformed("header line too long".into())),
        None => Ok(None),
    }
}

fn parse_int(s: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError::Malformed(format!("invalid length {:?}", String::from_utf8_lossy(s))))
}

/// Parses one command at the start of `buf`.
pub fn parse_command(buf: &[u8], lim: &Limits) -> Result<Parsed, ProtocolError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete(1));
    }
    if buf[0] != b'*' {
        return parse_inline(buf, lim);
    }
    let Some(end) = line_end(buf, 1, MAX_HEADER_LINE)? else { return Ok(Parsed::Incomplete(buf.len() + 1)) };
    let n = parse_int(&buf[1..end])?;
    if !lim.authenticated && n > UNAUTHENTICATED_MAX_ARGS {
        return Err(ProtocolError::UnauthenticatedArgs);
    }
    if n > lim.max_args as i64 {
        return Err(ProtocolError::TooManyArgs(n, lim.max_args));
    }
    let mut pos = end + 2;
    if n <= 0 {
        return Ok(Parsed::Complete(Vec::new(), pos));
    }
    // The count is only a claim until the arguments arrive: reserve for a few at first.
    let mut args = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(Parsed::Incomplete(pos + 1));
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError::Malformed(format!("expected '$', got '{}'", buf[pos].escape_ascii())));
        }
        let Some(end) = line_end(buf, pos + 1, MAX_HEADER_LINE)? else { return Ok(Parsed::Incomplete(buf.len() + 1)) };
        let len = parse_int(&buf[pos + 1..end])?;
        if !lim.authenticated && len > UNAUTHENTICATED_MAX_BULK {
            return Err(ProtocolError::UnauthenticatedBulk);
        }
        if len < 0 || len > lim.max_bulk as i64 {
            return Err(ProtocolError::BulkTooLong(len, lim.max_bulk));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if stop + 2 > lim.max_command {
            return Err(ProtocolError::CommandTooLong(stop + 2, lim.max_command));
        }
        if buf.len() < stop + 2 {
            return Ok(Parsed::Incomplete(stop + 2));
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError::Malformed("bulk string not followed by CRLF".into()));
        }
        args.push((start, stop));
        pos = stop + 2;
    }
    Ok(Parsed::Complete(args, pos))
}

fn parse_inline(buf: &[u8], lim: &Limits) -> Result<Parsed, ProtocolError> {
    let window = &buf[..buf.len().min(lim.max_inline + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > lim.max_inline {
            return Err(ProtocolError::InlineTooLong(lim.max_inline));
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    let mut args = Vec::new();
    let mut i = 0;
    while i < nl {
        while i < nl && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < nl && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > start {
            args.push((start, i));
        }
    }
    if !lim.authenticated && args.len() as i64 > UNAUTHENTICATED_MAX_ARGS {
        return Err(ProtocolError::UnauthenticatedArgs);
    }
    if args.len() > lim.max_args {
        return Err(ProtocolError::TooManyArgs(args.len() as i64, lim.max_args));
    }
    Ok(Parsed::Complete(args, nl + 1))
}

/// Splits a complete command off `buf` and returns its arguments as slices of it.
pub fn take_command(buf: &mut BytesMut, args: &[(usize, usize)], len: usize) -> Vec<Bytes> {
    let frame = buf.split_to(len).freeze();
    args.iter().map(|&(a, b)| frame.slice(a..b)).collect()
}

/// A reply, independent of the protocol version it is sent in.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(&'static str),
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
    /// A map in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK")
    }

    pub fn err(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        // An error line must not contain line breaks.
        Reply::Error(msg.replace(['\r', '\n'], " "))
    }

    pub fn bulk(s: impl Into<Bytes>) -> Self {
        Reply::Bulk(s.into())
    }

    /// Bytes of the encoded reply, close enough to bound output buffers.
    pub fn wire_len(&self) -> usize {
        match self {
            Reply::Bulk(b) => b.len() + 16,
            Reply::Array(v) => 16 + v.iter().map(Reply::wire_len).sum::<usize>(),
            Reply::Map(v) => 16 + v.iter().map(|(k, v)| k.wire_len() + v.wire_len()).sum::<usize>(),
            Reply::Status(s) | Reply::Error(s) => s.len() + 3,
            _ => 24,
        }
    }
}

/// Encoded replies waiting to be written: small pieces coalesced, large values kept by reference.
#[derive(Default)]
pub struct Output {
    segments: Vec<Bytes>,
    current: BytesMut,
    len: usize,
}

impl Output {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one reply in RESP2 (`resp3 == false`) or RESP3.
    pub fn push(&mut self, reply: &Reply, resp3: bool) {
        match reply {
            Reply::Simple(s) => self.line(b'+', s.as_bytes()),
            Reply::Status(s) => self.line(b'+', s.as_bytes()),
            Reply::Error(s) => self.line(b'-', s.as_bytes()),
            Reply::Int(n) => self.line(b':', n.to_string().as_bytes()),
            Reply::Nil if resp3 => self.raw(b"_\r\n"),
            Reply::Nil => self.raw(b"$-1\r\n"),
            Reply::Bulk(b) => {
                self.line(b'$', b.len().to_string().as_bytes());
                if b.len() <= INLINE_BULK_MAX {
                    self.raw(b);
                } else {
                    self.flush_current();
                    self.len += b.len();
                    self.segments.push(b.clone());
                }
                self.raw(b"\r\n");
            }
            Reply::Array(items) => {
                self.line(b'*', items.len().to_string().as_bytes());
                for i in items {
                    self.push(i, resp3);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    self.line(b'%', pairs.len().to_string().as_bytes());
                } else {
                    self.line(b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    self.push(k, resp3);
                    self.push(v, resp3);
                }
            }
        }
    }

    fn line(&mut self, prefix: u8, body: &[u8]) {
        self.current.put_u8(prefix);
        self.current.extend_from_slice(body);
        self.current.extend_from_slice(b"\r\n");
        self.len += body.len() + 3;
    }

    fn raw(&mut self, b: &[u8]) {
        self.current.extend_from_slice(b);
        self.len += b.len();
    }

    fn flush_current(&mut self) {
        if !self.current.is_empty() {
            self.segments.push(self.current.split().freeze());
        }
    }

    /// Takes everything encoded so far, in order.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.flush_current();
        self.len = 0;
        std::mem::take(&mut self.segments)
    }
}

/// Encodes one reply into a single buffer (for peers and tests).
pub fn encode(reply: &Reply, resp3: bool) -> Vec<Bytes> {
    let mut out = Output::default();
    out.push(reply, resp3);
    out.take()
}

/// Encodes a command as a RESP array of bulk strings, values by reference.
pub fn encode_command(args: &[Bytes]) -> Vec<Bytes> {
    let mut out = Output::default();
    out.push(&Reply::Array(args.iter().cloned().map(Reply::Bulk).collect()), false);
    out.take()
}

/// Parses one RESP2 reply at the start of `buf` (as a peer sends it); bulk strings are slices of
/// `buf`. Returns the reply and the bytes it took.
pub fn parse_reply(buf: &Bytes, max_depth: usize) -> Result<(Reply, usize), ProtocolError> {
    parse_reply_at(buf, 0, max_depth)
}

fn parse_reply_at(buf: &Bytes, pos: usize, depth: usize) -> Result<(Reply, usize), ProtocolError> {
    let short = || ProtocolError::Malformed("reply cut short".into());
    if pos >= buf.len() {
        return Err(short());
    }
    let end = buf[pos..].windows(2).position(|w| w == b"\r\n").map(|i| pos + i).ok_or_else(short)?;
    let line = &buf[pos + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    match buf[pos] {
        b'+' => Ok((Reply::Status(text()), next)),
        b'-' => Ok((Reply::Error(text()), next)),
        b':' => Ok((Reply::Int(parse_int(line)?), next)),
        b'$' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok((Reply::Nil, next));
            }
            let stop = next + n as usize;
            if buf.len() < stop + 2 {
                return Err(short());
            }
            Ok((Reply::Bulk(buf.slice(next..stop)), stop + 2))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok((Reply::Nil, next));
            }
            if depth == 0 {
                return Err(ProtocolError::Malformed("reply nested too deep".into()));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut p = next;
            for _ in 0..n {
                let (r, q) = parse_reply_at(buf, p, depth - 1)?;
                items.push(r);
                p = q;
            }
            Ok((Reply::Array(items), p))
        }
        other => Err(ProtocolError::Malformed(format!("unexpected reply type '{}'", other.escape_ascii()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIM: Limits =
        Limits { max_args: 16, max_bulk: 1 << 20, max_command: 2 << 20, max_inline: 64, authenticated: true };

    fn joined(segs: Vec<Bytes>) -> Vec<u8> {
        segs.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn parse_all(bytes: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match parse_command(&buf, &LIM)? {
                Parsed::Complete(args, len) => out.push(take_command(&mut buf, &args, len)),
                Parsed::Incomplete(_) => return Ok(out),
            }
        }
    }

    #[test]
    fn parses_arrays_and_inline() {
        let cmds = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n  SET a  b \r\n*0\r\n").expect("parses");
        assert_eq!(cmds[0], vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(cmds[1], vec![Bytes::from("PING")]);
        assert_eq!(cmds[2], vec![Bytes::from("SET"), Bytes::from("a"), Bytes::from("b")]);
        assert!(cmds[3].is_empty());
    }

    #[test]
    fn incomplete_reports_the_whole_command_size() {
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nxyz";
        let want = head.len() - 3 + 1000 + 2;
        assert_eq!(parse_command(head, &LIM), Ok(Parsed::Incomplete(want)));
    }

    #[test]
    fn refuses_what_is_over_the_limits() {
        assert!(matches!(parse_command(b"*17\r\n", &LIM), Err(ProtocolError::TooManyArgs(17, 16))));
        assert!(matches!(parse_command(b"*1\r\n$2000000\r\n", &LIM), Err(ProtocolError::BulkTooLong(..))));
        assert!(matches!(parse_command(b"*1\r\n$-5\r\n", &LIM), Err(ProtocolError::BulkTooLong(..))));
        assert!(matches!(parse_command(b"*1\r\n$abc\r\n", &LIM), Err(ProtocolError::Malformed(_))));
        assert!(matches!(parse_command(b"*1\r\n:3\r\n", &LIM), Err(ProtocolError::Malformed(_))));
        assert!(matches!(parse_command(b"*1\r\n$1\r\nabc", &LIM), Err(ProtocolError::Malformed(_))));
        assert!(matches!(parse_command(&[b'x'; 100], &LIM), Err(ProtocolError::InlineTooLong(64))));
        let long_header = [b"*".as_slice(), &[b'1'; 40]].concat();
        assert!(matches!(parse_command(&long_header, &LIM), Err(ProtocolError::Malformed(_))));
    }

    #[test]
    fn unauthenticated_clients_get_small_limits() {
        let lim = Limits { authenticated: false, ..LIM };
        let big = b"*2\r\n$3\r\nFOO\r\n$16385\r\n";
        assert_eq!(parse_command(big, &lim), Err(ProtocolError::UnauthenticatedBulk));
        assert_eq!(parse_command(b"*11\r\n", &lim), Err(ProtocolError::UnauthenticatedArgs));
        assert_eq!(parse_command(b"*2\r\n$4\r\nAUTH\r\n$16384\r\n", &lim), Ok(Parsed::Incomplete(16384 + 24)));
        assert_eq!(parse_command(big, &LIM), Ok(Parsed::Incomplete(16385 + 23)));
        assert_eq!(ProtocolError::UnauthenticatedBulk.to_string(), "Protocol error: unauthenticated bulk length");
    }

    #[test]
    fn encodes_both_protocols() {
        let r = Reply::Array(vec![Reply::Nil, Reply::Int(3), Reply::bulk("ab"), Reply::ok()]);
        assert_eq!(joined(encode(&r, false)), b"*4\r\n$-1\r\n:3\r\n$2\r\nab\r\n+OK\r\n");
        assert_eq!(joined(encode(&r, true)), b"*4\r\n_\r\n:3\r\n$2\r\nab\r\n+OK\r\n");
        let m = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(joined(encode(&m, true)), b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(joined(encode(&m, false)), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(joined(encode(&Reply::err("a\r\nb"), false)), b"-a  b\r\n");
    }

    #[test]
    fn large_bulks_are_sent_by_reference() {
        let big = Bytes::from(vec![7u8; INLINE_BULK_MAX + 1]);
        let segs = encode(&Reply::Bulk(big.clone()), false);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[1].as_ptr(), big.as_ptr());
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            Just(Reply::Nil),
            any::<i64>().prop_map(Reply::Int),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Reply::Status),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Reply::Error),
            proptest::collection::vec(any::<u8>(), 0..40_000).prop_map(|v| Reply::Bulk(Bytes::from(v))),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| proptest::collection::vec(inner, 0..8).prop_map(Reply::Array))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn commands_round_trip_in_any_split(
            cmds in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let cmds: Vec<Vec<Bytes>> = cmds.into_iter().map(|c| c.into_iter().map(Bytes::from).collect()).collect();
            let wire: Vec<u8> = cmds.iter().flat_map(|c| joined(encode_command(c))).collect();
            // Feed in two pieces: the parser must wait, then produce exactly the commands sent.
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            let mut fed = false;
            loop {
                match parse_command(&buf, &LIM).expect("valid input") {
                    Parsed::Complete(args, len) => got.push(take_command(&mut buf, &args, len)),
                    Parsed::Incomplete(need) => {
                        prop_assert!(need > buf.len());
                        if fed { break; }
                        buf.extend_from_slice(&wire[cut..]);
                        fed = true;
                    }
                }
            }
            prop_assert_eq!(got, cmds);
        }

        #[test]
        fn replies_round_trip(r in arb_reply()) {
            let wire = Bytes::from(joined(encode(&r, false)));
            let (back, used) = parse_reply(&wire, 8).expect("parses");
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(back, normalize(r));
        }
    }

    /// RESP2 has no separate status type on the way back: simple strings parse as `Status`.
    fn normalize(r: Reply) -> Reply {
        match r {
            Reply::Simple(s) => Reply::Status(s.to_owned()),
            Reply::Array(v) => Reply::Array(v.into_iter().map(normalize).collect()),
            other => other,
        }
    }
}
