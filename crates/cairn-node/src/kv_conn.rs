//! The KV endpoint's sockets: the listener (connections bounded in total and per source address,
//! through `server::accept_loop`) and one pipelined connection loop per client.
//!
//! A connection parses every complete command in its buffer, runs them in order and writes the
//! replies in one batch before it blocks on the socket again, so pipelined clients get many
//! replies per write. Replies wait in the output only up to `kv.max_pipeline` replies or
//! `kv.max_output_buffer` bytes; past that they are written before more input is read, so a
//! client that does not read its replies stops being read from (backpressure), and one reply
//! larger than the whole output limit is answered with an error instead.
//!
//! Large values are read once: when a command's header declares a bulk string, the buffer is
//! grown to the command's full size before reading on, and the stored value is a slice of that
//! buffer. Such up-front reservations are bounded node-wide (`MAX_RESERVED_SHARE`); past that a
//! connection's buffer grows with the data as it arrives.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use cairn_kv::resp::{self, Output, Parsed, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::kv::{KvCounters, KvNode};
use crate::server::Admission;
use crate::tls::Acceptor;

/// Buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// Bytes read from a socket at a time when no large value is expected.
const READ_CHUNK: usize = 64 << 10;
/// Buffers reserved ahead for declared values, node-wide, at most this share (1/n) of the KV RAM
/// capacity.
const MAX_RESERVED_SHARE: u64 = 2;

/// Bytes reserved ahead for values being received, node-wide.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// A reservation against [`RESERVED`], released when dropped.
struct Reservation(u64);

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Serves the KV endpoint; with TLS, a connection's handshake must finish within `handshake_timeout`.
pub async fn serve_kv(
    listener: TcpListener,
    kv: Arc<KvNode>,
    admission: Arc<Admission>,
    tls: Acceptor,
    handshake_timeout: std::time::Duration,
) {
    let counters = kv.clone();
    // Over a limit: say so and close, as Redis does with maxclients.
    let refuse = move |stream: &TcpStream, _| {
        KvCounters::add(&counters.counters.connections_refused, 1);
        let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
    };
    crate::server::accept_loop(listener, admission, refuse, move |stream, peer, slot| {
        let kv = kv.clone();
        let tls = tls.clone();
        async move {
            let Some(stream) = tls.accept(stream, peer, handshake_timeout).await else { return };
            kv.counters.connections_open.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = connection(stream, &kv, peer).await {
                tracing::debug!(%peer, error = %e, "KV connection ended with an error");
            }
            kv.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        }
    })
    .await
}

/// Writes the pending replies with vectored writes, so a value and its framing leave in one
/// system call (and the client wakes up fewer times per reply).
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Output, kv: &KvNode) -> std::io::Result<()> {
    KvCounters::add(&kv.counters.bytes_out, out.len() as u64);
    let mut segs = out.take();
    // Small replies (the usual batch) are one coalesced segment: a plain write, no iovec array.
    if let [only] = segs.as_slice() {
        stream.write_all(only).await?;
        return stream.flush().await;
    }
    let mut segs: std::collections::VecDeque<bytes::Bytes> = std::mem::take(&mut segs).into();
    while !segs.is_empty() {
        let slices: Vec<IoSlice<'_>> = segs.iter().take(MAX_IOVECS).map(|b| IoSlice::new(b)).collect();
        let mut n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = segs.front_mut() else { break };
            if n >= front.len() {
                n -= front.len();
                segs.pop_front();
            } else {
                bytes::Buf::advance(front, n);
                n = 0;
            }
        }
    }
    // A TLS stream may hold the last records until flushed.
    stream.flush().await
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    kv: &KvNode,
    peer: std::net::SocketAddr,
) -> std::io::Result<()> {
    let mut session = kv.new_session(Some(peer));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Output::default();
    let mut pending = 0usize;
    let mut reservation: Option<Reservation> = None;
    let max_output = kv.cfg.max_output_buffer.bytes() as usize;
    let reserve_cap = kv.cfg.ram_capacity.bytes() / MAX_RESERVED_SHARE;
    loop {
        let need = loop {
            // Until the client authenticates, its commands are held to small limits.
            match resp::parse_command(&buf, &kv.limits_for(&session)) {
                Ok(Parsed::Complete(ranges, len)) => {
                    let args = resp::take_command(&mut buf, &ranges, len);
                    reservation = None;
                    if args.is_empty() {
                        continue;
                    }
                    // `None` under CLIENT REPLY OFF or SKIP: no reply to send.
                    match kv.execute(&mut session, args).await {
                        Some(reply) if reply.wire_len() > max_output => {
                            KvCounters::add(&kv.counters.output_limit_errors, 1);
                            let msg = format!(
                                "ERR reply of about {} bytes is over the client output buffer limit",
                                reply.wire_len()
                            );
                            out.push(&Reply::err(msg), session.resp3);
                        }
                        Some(reply) => out.push(&reply, session.resp3),
                        None => {}
                    }
                    pending += 1;
                    if session.closing {
                        write_out(&mut stream, &mut out, kv).await?;
                        return Ok(());
                    }
                    if pending >= kv.cfg.max_pipeline || out.len() >= max_output {
                        write_out(&mut stream, &mut out, kv).await?;
                        pending = 0;
                    }
                }
                Ok(Parsed::Incomplete(need)) => break need,
                Err(e) => {
                    // The stream cannot be resynchronised after a framing error: answer and close.
                    KvCounters::add(&kv.counters.protocol_errors, 1);
                    out.push(&Reply::err(format!("ERR {e}")), session.resp3);
                    write_out(&mut stream, &mut out, kv).await?;
                    return Ok(());
                }
            }
        };
        if !out.is_empty() {
            write_out(&mut stream, &mut out, kv).await?;
            pending = 0;
        }
        let missing = need.saturating_sub(buf.len());
        if missing > READ_CHUNK && reservation.is_none() {
            let n = missing as u64;
            if RESERVED.fetch_add(n, Ordering::Relaxed) + n <= reserve_cap {
                reservation = Some(Reservation(n));
                buf.reserve(missing);
            } else {
                RESERVED.fetch_sub(n, Ordering::Relaxed);
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK.min(missing.max(1)) {
            buf.reserve(READ_CHUNK);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            // Closed, possibly mid-command: whatever was partly received is dropped unseen.
            return Ok(());
        }
        KvCounters::add(&kv.counters.bytes_in, n as u64);
    }
}
