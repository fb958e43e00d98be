//! The FUSE operations. Each one looks at the inode table on fuser's thread and, when the pool
//! must be asked, answers from a task on the tokio runtime.
//!
//! What object storage cannot do fails at once, with a log line:
//!
//! | operation | result |
//! |---|---|
//! | rename (a file or a directory) | `EXDEV`: there is no atomic rename of objects; `mv` then copies and deletes by itself, as between two file systems |
//! | open an existing file for writing without `O_TRUNC` (write in place, append) | `EOPNOTSUPP` |
//! | a write that does not follow the previous one (random write) | `EOPNOTSUPP`, and the file's `close` fails: nothing is uploaded |
//! | truncate to another size than the bytes written | `EOPNOTSUPP` |
//! | `mkdir` | a directory of this mount only, until a file is written in it (object storage has no empty directories) |
//! | `rmdir` of a directory with something in it | `ENOTEMPTY` |
//! | extended attributes | none to read (`ENODATA`); setting one is `ENOTSUP` |
//! | links, symlinks, device files | `EPERM` / `ENOSYS` (fuser's defaults) |

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn_client::{Client, Error};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::MountConfig;
use crate::table::{Entry, Kind, ROOT, Table, child_key};
use io::{ReadReq, WriteOp, read_worker, write_worker};

mod io;

/// The largest read the kernel sends (`max_read`), and what `st_blksize` tells programs to use.
pub const MAX_READ: u32 = 1 << 20;
pub const BLOCK_SIZE: u32 = MAX_READ;
/// The kernel's page-cache readahead on the mount (set through its BDI when root).
pub(crate) const READAHEAD_BYTES: u32 = 16 << 20;
/// Background (readahead) requests the kernel may have in flight at once.
const MAX_BACKGROUND: u16 = 64;
/// Backoff bounds of retries while nodes cannot be reached.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// What `statfs` reports: object storage has no fixed size.
const STATFS_BLOCKS: u64 = 1 << 40;
const STATFS_FILES: u64 = 1 << 32;
const NAME_MAX: u32 = 1024;
/// A listing that finished while a lookup waited for it is used even under `--metadata-ttl
/// always`, when it is at most this old.
const LISTING_SHARED: Duration = Duration::from_millis(100);

/// The file system fuser drives.
pub(crate) struct CairnFs {
    s: Arc<Shared>,
}

struct Shared {
    client: Client,
    rt: Handle,
    cfg: MountConfig,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, OpenHandle>>,
    next_fh: AtomicU64,
    /// One listing request per directory at a time: lookups that find it stale together wait
    /// for the same answer.
    listing_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An open file or directory.
enum OpenHandle {
    /// Reads of one version, in the kernel's order, by one task.
    Read(mpsc::UnboundedSender<ReadReq>),
    /// A new object being written, by one task.
    Write(mpsc::UnboundedSender<WriteOp>),
    /// A directory's entries as listed at `opendir` (stable offsets for `readdir`).
    Dir(Arc<Vec<(u64, FileType, String)>>),
}

/// Errors worth waiting out: a node restarting, a request that timed out.
fn transient(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Server { status, .. } => *status >= 500,
        _ => false,
    }
}

fn errno(e: &Error) -> Errno {
    match e {
        Error::NoSuchKey { .. } | Error::NoSuchBucket(_) => Errno::ENOENT,
        Error::AccessDenied(_) => Errno::EACCES,
        Error::VersionChanged(_) => Errno::ESTALE,
        Error::Invalid(_) => Errno::EINVAL,
        Error::Unreachable { .. } | Error::Server { .. } => Errno::EIO,
    }
}

fn parse_time(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map(SystemTime::from).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl CairnFs {
    pub(crate) fn new(client: Client, rt: Handle, cfg: MountConfig) -> Self {
        let table = Mutex::new(Table::new(&cfg.prefix));
        Self {
            s: Arc::new(Shared {
                client,
                rt,
                cfg,
                table,
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                listing_locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.s.rt.spawn(f);
    }
}

impl Shared {
    fn ttl(&self) -> Duration {
        self.cfg.metadata_ttl
    }

    fn attr(&self, ino: u64, e: &Entry) -> FileAttr {
        let (kind, perm, nlink) = match e.kind {
            Kind::File => (FileType::RegularFile, if self.cfg.read_only { 0o444 } else { 0o644 }, 1),
            Kind::Dir => (FileType::Directory, if self.cfg.read_only { 0o555 } else { 0o755 }, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: e.size,
            blocks: e.size.div_ceil(512),
            atime: e.mtime,
            mtime: e.mtime,
            ctime: e.mtime,
            crtime: e.mtime,
            kind,
            perm,
            nlink,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// Runs `f` again, with backoff, while it fails in a way a restart of a node explains, for up
    /// to `retry_for`.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let mut wait = RETRY_FIRST;
        let mut warned = false;
        loop {
            match f().await {
                Err(e) if transient(&e) && started.elapsed() + wait < self.cfg.retry_for => {
                    if !warned {
                        tracing::warn!(what, error = %e, "retrying while the pool cannot be reached");
                        warned = true;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                r => {
                    if warned && r.is_ok() {
                        tracing::info!(what, after = ?started.elapsed(), "the pool answers again");
                    }
                    return r;
                }
            }
        }
    }

    /// The children of the directory `dir_key`, from the cache while it is fresh.
    async fn listing(&self, dir_key: &str) -> Result<Arc<BTreeMap<String, Entry>>, Error> {
        if let Some(l) = self.table.lock().fresh_listing(dir_key, self.ttl()) {
            return Ok(l);
        }
        let lock = self.listing_locks.lock().entry(dir_key.to_owned()).or_default().clone();
        let _one = lock.lock().await;
        // Listed while this call waited: that answer is as new as one of its own.
        if let Some(l) = self.table.lock().fresh_listing(dir_key, self.ttl().max(LISTING_SHARED)) {
            return Ok(l);
        }
        let r = self.fetch_listing(dir_key).await;
        self.listing_locks.lock().remove(dir_key);
        r
    }

    async fn fetch_listing(&self, dir_key: &str) -> Result<Arc<BTreeMap<String, Entry>>, Error> {
        let bucket = &self.cfg.bucket;
        let listing = self.retry("list", || self.client.list(bucket, dir_key, false)).await?;
        let mut entries = BTreeMap::new();
        for o in listing.objects {
            let Some(name) = o.key.strip_prefix(dir_key) else { continue };
            if valid_name(name) {
                let mtime = parse_time(&o.last_modified);
                entries.insert(name.to_owned(), Entry::file(o.size, mtime));
            }
        }
        // A prefix and an object of the same name: the directory wins (its files stay reachable).
        for p in listing.prefixes {
            let Some(name) = p.strip_prefix(dir_key).map(|n| n.trim_end_matches('/')) else { continue };
            if valid_name(name) {
                entries.insert(name.to_owned(), Entry::dir());
            }
        }
        Ok(self.table.lock().store_listing(dir_key, entries))
    }

    fn key_of(&self, ino: u64) -> Result<(String, Kind), Errno> {
        self.table.lock().get(ino).map(|n| (n.key.clone(), n.entry.kind)).ok_or(Errno::ESTALE)
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        let (dir_key, kind) = self.key_of(parent)?;
        if kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let entries = self.listing(&dir_key).await.map_err(|e| errno(&e))?;
        let entry = entries.get(name).cloned().ok_or(Errno::ENOENT)?;
        let mut t = self.table.lock();
        let ino = t.intern(parent, name, entry.clone());
        if ino == 0 {
            return Err(Errno::ESTALE);
        }
        Ok(self.attr(ino, &entry))
    }

    async fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let (key, entry, fresh) = {
            let t = self.table.lock();
            let n = t.get(ino).ok_or(Errno::ESTALE)?;
            let mut entry = n.entry.clone();
            if let Some(w) = t.written(&n.key) {
                entry.size = w;
                return Ok(self.attr(ino, &entry));
            }
            (n.key.clone(), entry, n.checked.elapsed() < self.ttl())
        };
        if fresh || entry.kind == Kind::Dir {
            return Ok(self.attr(ino, &entry));
        }
        let st = self.retry("stat", || self.client.stat(&self.cfg.bucket, &key)).await.map_err(|e| errno(&e))?;
        let entry = Entry::file(st.size, parse_time(&st.last_modified));
        if let Some(n) = self.table.lock().get_mut(ino) {
            n.entry = entry.clone();
            n.checked = Instant::now();
        }
        Ok(self.attr(ino, &entry))
    }

    fn new_fh(&self, h: OpenHandle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    /// Opens `ino` for reading: pins its current version; keeps the page cache when that is the
    /// version the last open read.
    async fn open_read(self: &Arc<Self>, ino: u64) -> Result<(u64, FopenFlags), Errno> {
        let (key, _) = self.key_of(ino)?;
        let st = self.retry("stat", || self.client.stat(&self.cfg.bucket, &key)).await.map_err(|e| errno(&e))?;
        let keep = {
            let mut t = self.table.lock();
            let Some(n) = t.get_mut(ino) else { return Err(Errno::ESTALE) };
            let keep = n.opened_version.as_deref() == Some(st.version.as_str());
            n.opened_version = Some(st.version.clone());
            n.entry = Entry::file(st.size, parse_time(&st.last_modified));
            n.checked = Instant::now();
            keep
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = self.client.open_stat(st);
        tokio::spawn(read_worker(self.clone(), reader, rx));
        let fh = self.new_fh(OpenHandle::Read(tx));
        let flags = if keep { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
        Ok((fh, flags))
    }

    /// Starts writing `key` as a new object (replacing what is there when it completes).
    fn open_write(self: &Arc<Self>, ino: u64, key: &str) -> Result<u64, Errno> {
        if self.table.lock().is_writing(key) {
            tracing::warn!(key, "the file is being written through another descriptor: refused");
            return Err(Errno::EBUSY);
        }
        let writer = {
            let _rt = self.rt.enter();
            self.client.writer(&self.cfg.bucket, key, self.cfg.durability).map_err(|e| {
                tracing::warn!(key, error = %e, "cannot start the upload");
                errno(&e)
            })?
        };
        self.table.lock().start_write(key);
        let (tx, rx) = mpsc::unbounded_channel();
        self.rt.spawn(write_worker(self.clone(), ino, key.to_owned(), writer, rx));
        Ok(self.new_fh(OpenHandle::Write(tx)))
    }

    async fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let (key, kind) = self.key_of(ino)?;
        if kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let entries = self.listing(&key).await.map_err(|e| errno(&e))?;
        let parent = self.table.lock().get(ino).map_or(ROOT, |n| n.parent);
        let mut out = vec![(ino, FileType::Directory, ".".to_owned()), (parent, FileType::Directory, "..".to_owned())];
        {
            let t = self.table.lock();
            for (name, e) in entries.iter() {
                let kind = if e.kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
                // An inode the kernel does not hold yet gets a number of its own (readdir does
                // not count as a lookup, so none is made for it).
                let child = t.peek(ino, name).unwrap_or_else(|| synthetic_ino(&child_key(&key, name, e.kind)));
                out.push((child, kind, name.clone()));
            }
        }
        Ok(self.new_fh(OpenHandle::Dir(Arc::new(out))))
    }

    async fn unlink(&self, parent: u64, name: &str) -> Result<(), Errno> {
        let (dir_key, _) = self.key_of(parent)?;
        let key = child_key(&dir_key, name, Kind::File);
        if self.table.lock().is_writing(&key) {
            tracing::warn!(key, "unlink of a file still being written: refused");
            return Err(Errno::EBUSY);
        }
        let entries = self.listing(&dir_key).await.map_err(|e| errno(&e))?;
        match entries.get(name).map(|e| e.kind) {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(Kind::File) => {}
        }
        self.retry("delete", || self.client.delete(&self.cfg.bucket, &key)).await.map_err(|e| {
            tracing::warn!(key, error = %e, "delete failed");
            errno(&e)
        })?;
        self.table.lock().detach(parent, name);
        Ok(())
    }

    async fn mkdir(&self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        let (dir_key, _) = self.key_of(parent)?;
        let entries = self.listing(&dir_key).await.map_err(|e| errno(&e))?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let mut t = self.table.lock();
        t.add_virtual_dir(&child_key(&dir_key, name, Kind::Dir));
        t.add_to_listing(&dir_key, name, Entry::dir());
        let ino = t.intern(parent, name, Entry::dir());
        Ok(self.attr(ino, &Entry::dir()))
    }

    async fn rmdir(&self, parent: u64, name: &str) -> Result<(), Errno> {
        let (dir_key, _) = self.key_of(parent)?;
        let entries = self.listing(&dir_key).await.map_err(|e| errno(&e))?;
        match entries.get(name).map(|e| e.kind) {
            None => return Err(Errno::ENOENT),
            Some(Kind::File) => return Err(Errno::ENOTDIR),
            Some(Kind::Dir) => {}
        }
        let key = child_key(&dir_key, name, Kind::Dir);
        if self.table.lock().has_local_children(&key) {
            return Err(Errno::ENOTEMPTY);
        }
        let inside = self.retry("list", || self.client.list(&self.cfg.bucket, &key, false)).await;
        let inside = inside.map_err(|e| errno(&e))?;
        if !inside.prefixes.is_empty() || inside.objects.iter().any(|o| o.key != key) {
            return Err(Errno::ENOTEMPTY);
        }
        // A directory marker object ("dir/"), as some tools leave: removed with the directory.
        if inside.objects.iter().any(|o| o.key == key) {
            self.retry("delete", || self.client.delete(&self.cfg.bucket, &key)).await.map_err(|e| errno(&e))?;
        }
        let mut t = self.table.lock();
        t.remove_virtual_dir(&key);
        t.detach(parent, name);
        Ok(())
    }
}

/// A name a listing may show as a directory entry.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// An inode number for a directory entry the kernel has not looked up (high bit set, so never
/// one of the table's).
fn synthetic_ino(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() | (1 << 63)
}

fn name_str(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_owned).ok_or(Errno::EINVAL)
}

impl fuser::Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        let wanted = [InitFlags::FUSE_ATOMIC_O_TRUNC, InitFlags::FUSE_AUTO_INVAL_DATA, InitFlags::FUSE_PARALLEL_DIROPS];
        for flag in wanted {
            if offered.contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        if let Err(max) = config.set_max_readahead(READAHEAD_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Ok(name) = name_str(name) else { return reply.error(Errno::ENOENT) };
        let s = self.s.clone();
        self.spawn(async move {
            match s.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&s.ttl(), &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.s.table.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.s.clone();
        self.spawn(async move {
            match s.getattr(ino.0).await {
                Ok(attr) => reply.attr(&s.ttl(), &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Modes, owners and times are not stored: accepted and left as they are (so `cp -p`
        // and `touch` work). A size is possible only where it changes nothing.
        if let Some(size) = size {
            let t = self.s.table.lock();
            let Some(n) = t.get(ino.0) else { return reply.error(Errno::ESTALE) };
            let current = t.written(&n.key).unwrap_or(n.entry.size);
            if size != current {
                tracing::warn!(key = %n.key, size, "truncate: objects cannot be resized in place; open with O_TRUNC to replace one");
                return reply.error(Errno::EOPNOTSUPP);
            }
        }
        self.getattr(req, ino, None, reply);
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let Ok(name) = name_str(name) else { return reply.error(Errno::EINVAL) };
        let s = self.s.clone();
        self.spawn(async move {
            match s.mkdir(parent.0, &name).await {
                Ok(attr) => reply.entry(&s.ttl(), &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let Ok(name) = name_str(name) else { return reply.error(Errno::ENOENT) };
        let s = self.s.clone();
        self.spawn(async move {
            match s.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let Ok(name) = name_str(name) else { return reply.error(Errno::ENOENT) };
        let s = self.s.clone();
        self.spawn(async move {
            match s.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let from = self.s.table.lock().peek(parent.0, &name.to_string_lossy());
        tracing::info!(
            name = %name.to_string_lossy(),
            to = %newname.to_string_lossy(),
            inode = ?from,
            "rename: object storage has no rename; EXDEV (mv copies and deletes instead)"
        );
        reply.error(Errno::EXDEV);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() == OpenAccMode::O_RDONLY {
            let s = self.s.clone();
            self.spawn(async move {
                match s.open_read(ino.0).await {
                    Ok((fh, f)) => reply.opened(FileHandle(fh), f),
                    Err(e) => reply.error(e),
                }
            });
            return;
        }
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let Ok((key, _)) = self.s.key_of(ino.0) else { return reply.error(Errno::ESTALE) };
        if flags.0 & libc::O_TRUNC == 0 || flags.0 & libc::O_APPEND != 0 {
            tracing::warn!(
                key,
                "open for writing without O_TRUNC: objects cannot be changed in place; \
                 write a new file, or replace this one whole (O_TRUNC)"
            );
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.s.open_write(ino.0, &key) {
            Ok(fh) => {
                if let Some(n) = self.s.table.lock().get_mut(ino.0) {
                    n.entry.size = 0;
                    n.opened_version = None;
                }
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.s.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let Ok(name) = name_str(name) else { return reply.error(Errno::EINVAL) };
        if !valid_name(&name) {
            return reply.error(Errno::EINVAL);
        }
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // O_CREAT without write access: an empty object, made at once.
            tracing::debug!(name, "create read-only: nothing to write");
        }
        let Ok((dir_key, _)) = self.s.key_of(parent.0) else { return reply.error(Errno::ESTALE) };
        let key = child_key(&dir_key, &name, Kind::File);
        let entry = Entry::file(0, SystemTime::now());
        let ino = {
            let mut t = self.s.table.lock();
            t.add_to_listing(&dir_key, &name, entry.clone());
            t.intern(parent.0, &name, entry.clone())
        };
        match self.s.open_write(ino, &key) {
            Ok(fh) => {
                let attr = self.s.attr(ino, &entry);
                reply.created(&self.s.ttl(), &attr, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => {
                self.s.table.lock().detach(parent.0, &name);
                reply.error(e)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let tx = match self.s.handles.lock().get(&fh.0) {
            Some(OpenHandle::Read(tx)) => tx.clone(),
            Some(_) => return reply.error(Errno::EBADF),
            None => return reply.error(Errno::EBADF),
        };
        if let Err(mpsc::error::SendError(req)) = tx.send(ReadReq { offset, size, reply }) {
            req.reply.error(Errno::EBADF);
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let tx = match self.s.handles.lock().get(&fh.0) {
            Some(OpenHandle::Write(tx)) => tx.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        let op = WriteOp::Write { offset, data: Bytes::copy_from_slice(data), reply };
        if let Err(mpsc::error::SendError(WriteOp::Write { reply, .. })) = tx.send(op) {
            reply.error(Errno::EBADF);
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let tx = match self.s.handles.lock().get(&fh.0) {
            Some(OpenHandle::Write(tx)) => tx.clone(),
            _ => return reply.ok(),
        };
        if let Err(mpsc::error::SendError(WriteOp::Finish(reply))) = tx.send(WriteOp::Finish(reply)) {
            reply.error(Errno::EIO);
        }
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.flush(req, ino, fh, LockOwner(0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.s.handles.lock().remove(&fh.0) {
            Some(OpenHandle::Write(tx)) => {
                if let Err(mpsc::error::SendError(WriteOp::Release(reply))) = tx.send(WriteOp::Release(reply)) {
                    reply.ok();
                }
            }
            _ => reply.ok(),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = self.s.clone();
        self.spawn(async move {
            match s.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.s.handles.lock().get(&fh.0) {
            Some(OpenHandle::Dir(e)) => e.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.s.handles.lock().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_FILES,
            STATFS_FILES,
            BLOCK_SIZE,
            NAME_MAX,
            BLOCK_SIZE,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    // Objects have no extended attributes: none to list or read, none can be set (`ls -l` and
    // `cp` ask for every file; answered quietly).
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::NO_XATTR);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::split_key;

    #[test]
    fn errors_map_to_errnos_that_name_the_cause() {
        assert_eq!(errno(&Error::NoSuchKey { bucket: "b".into(), key: "k".into() }), Errno::ENOENT);
        assert_eq!(errno(&Error::AccessDenied("x".into())), Errno::EACCES);
        assert_eq!(errno(&Error::VersionChanged("x".into())), Errno::ESTALE);
        let down = Error::Unreachable { addr: "a".into(), why: "refused".into() };
        assert!(transient(&down));
        assert_eq!(errno(&down), Errno::EIO);
        assert!(!transient(&Error::AccessDenied("x".into())));
    }

    #[test]
    fn names_from_listings_are_checked() {
        assert!(valid_name("a.bin"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert_ne!(synthetic_ino("a") & (1 << 63), 0);
        assert_eq!(split_key("x/y"), ("x/", "y"));
    }
}
