//! Writes that bypass the page cache (`O_DIRECT`), shared by the disk tier's fills and the
//! journal's data files.
//!
//! A buffered write copies every byte into the page cache (new pages, memory-cgroup accounting,
//! dirty tracking) and the kernel writes them out later: on a 2-core host that copy was 44% of a
//! node's CPU while it acknowledged checkpoint writes. An `O_DIRECT` write hands the device
//! block-aligned memory instead. Bytes received from a socket are not aligned, so they pass
//! through a small aligned bounce buffer (a copy into memory that stays in the CPU cache), and the
//! checksum of each piece is computed there while it is warm.
//!
//! Offsets, lengths and buffers are aligned to [`ALIGN`]. The last partial block of a file goes
//! through the page cache (the fsync that follows flushes it). A filesystem that refuses
//! `O_DIRECT` (tmpfs before Linux 6.6, some network filesystems) answers `EINVAL`: callers fall
//! back to buffered writes for good.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use xxhash_rust::xxh3::Xxh3;

/// The unit `O_DIRECT` writes are aligned to (offsets, lengths and buffers): the largest logical
/// block size of common devices.
pub const ALIGN: usize = 4096;
/// The bounce buffer's size: large enough for few system calls, small enough to stay in the CPU
/// cache between the copy into it and the checksum over it.
pub(crate) const BOUNCE: usize = 1 << 20;
/// Buffers passed to one `pwritev`.
const MAX_IOVECS: usize = 512;

/// Creates (or truncates) `path` for writing with `O_DIRECT`. `EINVAL`: the filesystem refuses.
pub fn create(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::DIRECT,
        Mode::from_raw_mode(0o644),
    )?;
    Ok(File::from(fd))
}

/// Whether an error is the filesystem refusing `O_DIRECT` (or these alignments).
pub fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Turns `O_DIRECT` off on an open file: later writes go through the page cache.
pub fn buffered(f: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(f)?;
    rustix::fs::fcntl_setfl(f, flags - OFlags::DIRECT)?;
    Ok(())
}

/// Writes `pieces` (in order, as one run of bytes) at `offset` of `f`, a file opened with
/// `O_DIRECT`; `offset` must be a multiple of [`ALIGN`]. Whole blocks go from block-aligned
/// memory; a last partial block (the run must then end the file) goes through the page cache, and
/// the file is left buffered. Each byte is fed to `hash`, if given, as it passes.
pub fn write_at<B: AsRef<[u8]>>(f: &File, offset: u64, pieces: &[B], mut hash: Option<&mut Xxh3>) -> io::Result<()> {
    debug_assert!(offset.is_multiple_of(ALIGN as u64));
    let total: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
    let whole = total / ALIGN * ALIGN;
    BOUNCE_BUF.with_borrow_mut(|bounce| {
        let buf = bounce.get(BOUNCE);
        let (mut filled, mut at, mut sent) = (0usize, offset, 0usize);
        let mut tail: Vec<u8> = Vec::new();
        for p in pieces {
            let mut p = p.as_ref();
            while !p.is_empty() {
                if sent + filled >= whole {
                    // Past the last whole block: the tail.
                    tail.extend_from_slice(p);
                    break;
                }
                let take = p.len().min(BOUNCE - filled).min(whole - sent - filled);
                buf[filled..filled + take].copy_from_slice(&p[..take]);
                if let Some(h) = hash.as_deref_mut() {
                    h.update(&buf[filled..filled + take]);
                }
                filled += take;
                p = &p[take..];
                if filled == BOUNCE || sent + filled == whole {
                    f.write_all_at(&buf[..filled], at)?;
                    at += filled as u64;
                    sent += filled;
                    filled = 0;
                }
            }
        }
        if !tail.is_empty() {
            if let Some(h) = hash {
                h.update(&tail);
            }
            buffered(f)?;
            f.write_all_at(&tail, at)?;
        }
        Ok(())
    })
}

/// Writes `pieces` at `offset` of `f` through the page cache, as few system calls as the kernel
/// allows (`pwritev`), feeding `hash` as [`write_at`] does.
pub fn write_buffered_at<B: AsRef<[u8]>>(
    f: &File,
    offset: u64,
    pieces: &[B],
    hash: Option<&mut Xxh3>,
) -> io::Result<()> {
    if let Some(h) = hash {
        pieces.iter().for_each(|p| h.update(p.as_ref()));
    }
    let (mut i, mut skip, mut at) = (0usize, 0usize, offset);
    while i < pieces.len() {
        let mut slices = Vec::with_capacity((pieces.len() - i).min(MAX_IOVECS));
        slices.push(io::IoSlice::new(&pieces[i].as_ref()[skip..]));
        slices.extend(pieces[i + 1..].iter().take(MAX_IOVECS - 1).map(|p| io::IoSlice::new(p.as_ref())));
        let mut n = rustix::io::pwritev(f, &slices, at)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no bytes"));
        }
        at += n as u64;
        while i < pieces.len() && n > 0 {
            let left = pieces[i].as_ref().len() - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
        while i < pieces.len() && pieces[i].as_ref().len() == skip {
            i += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// Writes `header` padded with zeros to one block, then `data`, to a new file at `path` with
/// `O_DIRECT` (see [`write_at`]).
pub fn write_file_with_header(path: &Path, header: &[u8], data: &[u8]) -> io::Result<()> {
    let mut f = create(path)?;
    let mut first = AlignedBuf::new(ALIGN);
    let block = first.get(ALIGN);
    block[..header.len()].copy_from_slice(header);
    f.write_all(block)?;
    if data.as_ptr().align_offset(ALIGN) == 0 && data.len().is_multiple_of(ALIGN) {
        f.write_all(data)
    } else {
        write_at(&f, ALIGN as u64, &[data], None)
    }
}

thread_local! {
    /// One bounce buffer per thread that writes (the blocking pool's and the fill threads).
    static BOUNCE_BUF: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new(BOUNCE));
}

/// A zeroed buffer whose usable part starts on an [`ALIGN`] boundary.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start }
    }

    /// The first `len` aligned bytes (at most the length it was made with).
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Runs of any length, cut into pieces of any size at any alignment, written one after the
    /// other at aligned offsets, read back exactly, and hash to the xxh3 of their bytes.
    #[test]
    fn pieces_of_any_size_read_back_exactly_and_hash_right() {
        let dir = tempfile::tempdir().expect("test step");
        for (run, cut) in [(3 * ALIGN, 1000), (BOUNCE * 2 + 17, 65_537), (BOUNCE, BOUNCE), (5, 2), (ALIGN + 1, 4096)] {
            let path = dir.path().join(format!("f{run}-{cut}"));
            let f = match create(&path) {
                Ok(f) => f,
                Err(e) if refused(&e) => return, // a filesystem without O_DIRECT: nothing to test
                Err(e) => panic!("{e}"),
            };
            // Two runs: the first whole blocks only, the second ends the file.
            let first = data(2 * ALIGN, 1);
            let second = data(run, 2);
            let mut h = Xxh3::new();
            write_at(&f, 0, &[&first[..ALIGN], &first[ALIGN..]], Some(&mut h)).expect("test step");
            assert_eq!(h.digest(), xxh3_64(&first));
            let pieces: Vec<&[u8]> = second.chunks(cut).collect();
            let mut h = Xxh3::new();
            match write_at(&f, first.len() as u64, &pieces, Some(&mut h)) {
                Ok(()) => {}
                Err(e) if refused(&e) => return,
                Err(e) => panic!("{e}"),
            }
            assert_eq!(h.digest(), xxh3_64(&second));
            f.sync_data().expect("test step");
            let back = std::fs::read(&path).expect("test step");
            assert_eq!(back.len(), first.len() + second.len());
            assert!(back[..first.len()] == first[..], "first run differs");
            assert!(back[first.len()..] == second[..], "second run differs (run {run}, pieces of {cut})");
        }
    }

    #[test]
    fn buffered_writes_match_direct_ones() {
        let dir = tempfile::tempdir().expect("test step");
        let path = dir.path().join("b");
        let f = File::create(&path).expect("test step");
        let d = data(100_000, 3);
        let mut h = Xxh3::new();
        let mut pieces: Vec<&[u8]> = d.chunks(777).collect();
        pieces.insert(3, &[]);
        pieces.push(&[]);
        write_buffered_at(&f, 4096, &pieces, Some(&mut h)).expect("test step");
        assert_eq!(h.digest(), xxh3_64(&d));
        let back = std::fs::read(&path).expect("test step");
        assert!(back[..4096].iter().all(|b| *b == 0));
        assert!(back[4096..] == d[..]);
    }
}
