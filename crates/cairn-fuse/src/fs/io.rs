//! The tasks behind open files: one per handle, so the kernel's requests on a handle are served
//! in the order it sent them (a sequential reader's stream, a writer's appends) while requests
//! on other handles run beside them.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use cairn_client::{Error, Reader, Stat, Writer};
use fuser::{Errno, ReplyData, ReplyEmpty, ReplyWrite};
use tokio::sync::mpsc;

use super::{RETRY_FIRST, RETRY_MAX, Shared, errno, transient};
use crate::table::Entry;

pub(super) struct ReadReq {
    pub offset: u64,
    pub size: u32,
    pub reply: ReplyData,
}

pub(super) enum WriteOp {
    Write {
        offset: u64,
        data: Bytes,
        reply: ReplyWrite,
    },
    /// `close` of a descriptor (flush) or `fsync`: completes the object.
    Finish(ReplyEmpty),
    Release(ReplyEmpty),
}

/// Serves one read handle's reads in the order the kernel sent them: a read that starts where
/// the previous one ended goes through the [`Reader`] (readahead); any other is fetched on its
/// own, at once, without waiting for the stream.
pub(super) async fn read_worker(s: Arc<Shared>, mut reader: Reader, mut rx: mpsc::UnboundedReceiver<ReadReq>) {
    // Where the last read fetched on its own ended: a read from there starts a new stream.
    let mut direct_end = None;
    while let Some(req) = rx.recv().await {
        let end = req.offset.saturating_add(u64::from(req.size)).min(reader.size());
        if req.offset >= end {
            req.reply.data(&[]);
            continue;
        }
        if req.offset == reader.position() || direct_end == Some(req.offset) {
            direct_end = None;
            reader.seek(req.offset);
            match read_sequential(&s, &mut reader, (end - req.offset) as usize).await {
                Ok(b) => req.reply.data(&b),
                Err(e) => {
                    tracing::warn!(key = %reader.stat().key, offset = req.offset, error = %e, "read failed");
                    req.reply.error(errno(&e));
                }
            }
        } else {
            direct_end = Some(end);
            let (s, st) = (s.clone(), reader.stat().clone());
            tokio::spawn(async move {
                let offset = req.offset;
                match read_direct(&s, &st, offset..end).await {
                    Ok(b) => req.reply.data(&b),
                    Err(e) => {
                        tracing::warn!(key = %st.key, offset, error = %e, "read failed");
                        req.reply.error(errno(&e));
                    }
                }
            });
        }
    }
}

async fn read_direct(s: &Shared, st: &Stat, range: std::ops::Range<u64>) -> Result<Bytes, Error> {
    s.retry("read", || s.client.read_at(st, range.clone())).await
}

/// `len` bytes from the reader's position (fewer only at the end of the object), retrying
/// from where it stopped while the pool cannot be reached.
async fn read_sequential(s: &Shared, reader: &mut Reader, len: usize) -> Result<Bytes, Error> {
    let mut out = BytesMut::new();
    let started = Instant::now();
    let mut wait = RETRY_FIRST;
    let mut warned = false;
    while out.len() < len {
        match reader.read_bytes(len - out.len()).await {
            Ok(b) if b.is_empty() => break,
            Ok(b) if out.is_empty() && b.len() == len => return Ok(b),
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if transient(&e) && started.elapsed() + wait < s.cfg.retry_for => {
                if !warned {
                    tracing::warn!(key = %reader.stat().key, error = %e, "read retrying while the pool cannot be reached");
                    warned = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
    if warned {
        tracing::info!(key = %reader.stat().key, after = ?started.elapsed(), "read resumed");
    }
    Ok(out.freeze())
}

/// Serves one write handle: appends in order, completes the object at the first flush, fsync
/// or release.
pub(super) async fn write_worker(
    s: Arc<Shared>,
    ino: u64,
    key: String,
    writer: Writer,
    mut rx: mpsc::UnboundedReceiver<WriteOp>,
) {
    let mut writer = Some(writer);
    // Why the object will not be completed, once something failed.
    let mut failed: Option<Errno> = None;
    let mut written = 0u64;
    while let Some(op) = rx.recv().await {
        match op {
            WriteOp::Write { offset, data, reply } => {
                if let Some(e) = failed {
                    reply.error(e);
                    continue;
                }
                let Some(w) = writer.as_mut() else {
                    tracing::warn!(key, "write after the file was completed (flushed or synced): refused");
                    reply.error(Errno::EBADF);
                    continue;
                };
                if offset != written {
                    tracing::warn!(
                        key,
                        offset,
                        expected = written,
                        "random write: objects are written front to back only; this file will not be uploaded"
                    );
                    failed = Some(Errno::EOPNOTSUPP);
                    reply.error(Errno::EOPNOTSUPP);
                    continue;
                }
                let n = data.len();
                match w.write_bytes(data).await {
                    Ok(()) => {
                        written += n as u64;
                        s.table.lock().set_written(&key, written);
                        reply.written(n as u32);
                    }
                    Err(e) => {
                        tracing::warn!(key, error = %e, "upload failed");
                        failed = Some(errno(&e));
                        reply.error(errno(&e));
                    }
                }
            }
            WriteOp::Finish(reply) => match finish(&s, ino, &key, &mut writer, &mut failed, written).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            WriteOp::Release(reply) => {
                let _ = finish(&s, ino, &key, &mut writer, &mut failed, written).await;
                reply.ok();
                return;
            }
        }
    }
    let _ = finish(&s, ino, &key, &mut writer, &mut failed, written).await;
}

/// Completes the object (once): acknowledged at the mount's durability, or the error.
async fn finish(
    s: &Shared,
    ino: u64,
    key: &str,
    writer: &mut Option<Writer>,
    failed: &mut Option<Errno>,
    written: u64,
) -> Result<(), Errno> {
    let Some(w) = writer.take() else {
        return failed.map_or(Ok(()), Err);
    };
    if let Some(e) = *failed {
        w.abort().await;
        s.table.lock().end_write(ino, key, None);
        return Err(e);
    }
    match w.close().await {
        Ok(_etag) => {
            let entry = Entry::file(written, SystemTime::now());
            s.table.lock().end_write(ino, key, Some(entry));
            tracing::debug!(key, bytes = written, "file written");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "upload failed at close");
            let e = errno(&e);
            *failed = Some(e);
            s.table.lock().end_write(ino, key, None);
            Err(e)
        }
    }
}
