//! Transfers between local files and a node: `get`, `put` and `cp`, of one file or (with
//! `--recursive`) of a folder tree. Files move `--jobs` at a time, large uploads in parts that
//! share the same budget, under one progress bar over the total bytes.

use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::client::{Endpoint, Target, progress, store, store_with};
use crate::errors;

/// Smallest part of a multipart upload; larger for objects that would need more parts than S3
/// allows.
const PART_SIZE: u64 = 16 << 20;
const MAX_PARTS: u64 = 10_000;
/// Files or parts in flight, unless `--jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 8;
/// Failed transfers listed one per line before the rest are only counted.
const FAILURES_SHOWN: usize = 10;

#[derive(clap::Args)]
pub struct Parallel {
    /// Copy a folder tree: every file under a local folder, or every object under an s3:// prefix.
    #[arg(long, short)]
    recursive: bool,
    /// Files (or parts of a large file) transferred at once.
    #[arg(long, short, default_value_t = DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    jobs: usize,
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// s3://BUCKET/KEY, or s3://BUCKET/PREFIX/ with --recursive.
    source: String,
    /// Destination file (or folder), `-` for stdout; default: the key's (or prefix's) last name.
    dest: Option<String>,
    /// Only bytes FIRST-LAST (inclusive), e.g. 0-1023.
    #[arg(long, conflicts_with = "recursive")]
    range: Option<String>,
    #[command(flatten)]
    parallel: Parallel,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(clap::Args)]
pub struct PutArgs {
    /// Local file, or folder with --recursive.
    source: PathBuf,
    /// s3://BUCKET/KEY (a trailing '/' appends the file name), or s3://BUCKET/PREFIX/ for a folder.
    dest: String,
    #[command(flatten)]
    upload: UploadOpts,
    #[command(flatten)]
    parallel: Parallel,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(clap::Args)]
pub struct UploadOpts {
    /// Acknowledge uploads at: local (on the node's disk), replicated (on several nodes' disks) or
    /// origin (in object storage); default: the origin's configured durability.
    #[arg(long)]
    durability: Option<cairn_core::Durability>,
}

#[derive(clap::Args)]
pub struct CpArgs {
    /// What to copy: a local path or s3://BUCKET/KEY (s3://BUCKET/PREFIX/ with --recursive).
    source: String,
    /// Where to: s3://BUCKET/KEY (a trailing '/' appends the file name) or a local path; one side
    /// is local, the other s3://.
    dest: String,
    #[command(flatten)]
    upload: UploadOpts,
    #[command(flatten)]
    parallel: Parallel,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn cp(a: CpArgs) -> Result<()> {
    match (a.source.starts_with("s3://"), a.dest.starts_with("s3://")) {
        (false, true) => {
            upload(&a.endpoint, &PathBuf::from(&a.source), &a.dest, a.upload.durability, &a.parallel).await
        }
        (true, false) => {
            if a.upload.durability.is_some() {
                bail!("--durability applies to uploads; {} is a download", a.source);
            }
            download(&a.endpoint, &a.source, Some(a.dest), None, &a.parallel).await
        }
        (true, true) => bail!("cp copies between a local path and s3://; both {} and {} are s3://", a.source, a.dest),
        (false, false) => {
            bail!("cp copies between a local path and s3://; neither {} nor {} is s3://", a.source, a.dest)
        }
    }
}

pub async fn put(a: PutArgs) -> Result<()> {
    upload(&a.endpoint, &a.source, &a.dest, a.upload.durability, &a.parallel).await
}

pub async fn get(a: GetArgs) -> Result<()> {
    download(&a.endpoint, &a.source, a.dest, a.range.as_deref(), &a.parallel).await
}

/// One file to move: where it is locally, its key, its size.
struct Item {
    local: PathBuf,
    key: String,
    size: u64,
}

/// What the transfers of a batch ended with.
struct Outcome {
    files: usize,
    bytes: u64,
    failures: Vec<String>,
}

impl Outcome {
    fn finish(self, verb: &str, what: &str, started: Instant) -> Result<()> {
        for f in self.failures.iter().take(FAILURES_SHOWN) {
            eprintln!("cairn: {f}");
        }
        if self.failures.len() > FAILURES_SHOWN {
            eprintln!("cairn: ... and {} more", self.failures.len() - FAILURES_SHOWN);
        }
        if !self.failures.is_empty() {
            bail!("{} of {} files failed to {verb}", self.failures.len(), self.files + self.failures.len());
        }
        println!(
            "{verb}ed {} ({}) {what} in {:.1}s",
            count(self.files as u64, "file"),
            HumanBytes(self.bytes),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

async fn upload(
    ep: &Endpoint,
    source: &LocalPath,
    dest: &str,
    durability: Option<cairn_core::Durability>,
    par: &Parallel,
) -> Result<()> {
    let t = Target::parse(dest)?;
    let meta = tokio::fs::metadata(source).await.map_err(|e| local_error(source, &e))?;
    if meta.is_dir() && !par.recursive {
        bail!("{} is a folder (add --recursive to copy what is in it)", source.display());
    }
    ep.s3()?.check_bucket(&t.bucket).await?;
    let s = store_with(ep, &t.bucket, durability)?;
    let budget = Arc::new(Semaphore::new(par.jobs));
    if !meta.is_dir() {
        let mut key = t.key.clone();
        if key.is_empty() || key.ends_with('/') {
            let name = source.file_name().context("the source has no file name")?.to_string_lossy();
            key.push_str(&name);
        }
        let item = Item { local: source.to_owned(), key, size: meta.len() };
        let pb = progress(item.size);
        let r = upload_one(&s, &item, &budget, &pb).await;
        pb.finish_and_clear();
        let bytes = r.map_err(|e| e.into_line(ep, &t.bucket, &item))?;
        println!("uploaded {bytes} bytes to s3://{}/{}", t.bucket, item.key);
        return Ok(());
    }
    let started = Instant::now();
    let root = source.to_owned();
    let prefix = t.folder();
    let files = tokio::task::spawn_blocking(move || walk(&root)).await??;
    if files.is_empty() {
        eprintln!("cairn: no files under {}; nothing uploaded", source.display());
        return Ok(());
    }
    let items: Vec<Item> =
        files.into_iter().map(|(rel, local, size)| Item { local, key: format!("{prefix}{rel}"), size }).collect();
    let total = items.iter().map(|i| i.size).sum();
    let count = items.len();
    let pb = progress(total);
    let mut results = futures::stream::iter(items.iter())
        .map(|item| {
            let (s, budget, pb) = (&s, &budget, &pb);
            async move { (item, upload_one(s, item, budget, pb).await) }
        })
        .buffer_unordered(par.jobs);
    let mut out = Outcome { files: 0, bytes: 0, failures: Vec::new() };
    while let Some((item, r)) = results.next().await {
        match r {
            Ok(n) => {
                out.files += 1;
                out.bytes += n;
            }
            Err(e) => out.failures.push(format!(
                "upload of {} failed: {}",
                item.local.display(),
                errors::one_line(&e.into_line(ep, &t.bucket, item))
            )),
        }
        pb.set_message(format!("{}/{count} files", out.files + out.failures.len()));
    }
    pb.finish_and_clear();
    out.finish("upload", &format!("from {} to s3://{}/{prefix}", source.display(), t.bucket), started)
}

/// "1 file", "2 files".
pub fn count(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A failed transfer: from the store (mapped with the endpoint's context) or local.
enum TransferError {
    Store(object_store::Error),
    Other(anyhow::Error),
}

impl TransferError {
    fn into_line(self, ep: &Endpoint, bucket: &str, item: &Item) -> anyhow::Error {
        match self {
            Self::Store(e) => errors::from_store(e, ep, bucket, &item.key),
            Self::Other(e) => e,
        }
    }
}

impl From<object_store::Error> for TransferError {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e)
    }
}

impl From<anyhow::Error> for TransferError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

fn local_error(path: &LocalPath, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", path.display(), io_reason(e))
}

/// An I/O error's reason without the "(os error N)" tail.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

fn part_size(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    needed.max(PART_SIZE)
}

/// Uploads one file; the budget bounds the bodies in flight across all files.
async fn upload_one(
    s: &Arc<dyn ObjectStore>,
    item: &Item,
    budget: &Arc<Semaphore>,
    pb: &ProgressBar,
) -> std::result::Result<u64, TransferError> {
    let path = Path::parse(&item.key).with_context(|| format!("invalid key {:?}", item.key))?;
    let mut file = tokio::fs::File::open(&item.local).await.map_err(|e| local_error(&item.local, &e))?;
    let part = part_size(item.size);
    if item.size <= part {
        let _slot = budget.acquire().await.context("transfer budget closed")?;
        let mut buf = Vec::with_capacity(item.size as usize);
        file.read_to_end(&mut buf).await.map_err(|e| local_error(&item.local, &e))?;
        let n = buf.len() as u64;
        s.put(&path, PutPayload::from(buf)).await?;
        pb.inc(n);
        return Ok(n);
    }
    let mut upload = s.put_multipart(&path).await?;
    let mut parts = Vec::new();
    let mut sent = 0u64;
    let outcome: std::result::Result<(), TransferError> = async {
        loop {
            let slot = budget.clone().acquire_owned().await.context("transfer budget closed")?;
            // A part that already failed ends the upload before more of the file is read.
            if let Some(done) = parts.iter().position(|p: &tokio::task::JoinHandle<_>| p.is_finished()) {
                let r: object_store::Result<()> = parts.swap_remove(done).await.context("upload task")?;
                r?;
            }
            let mut buf = Vec::with_capacity(part as usize);
            (&mut file).take(part).read_to_end(&mut buf).await.map_err(|e| local_error(&item.local, &e))?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len() as u64;
            sent += n;
            let fut = upload.put_part(PutPayload::from(buf));
            let pb = pb.clone();
            parts.push(tokio::spawn(async move {
                let r = fut.await;
                drop(slot);
                if r.is_ok() {
                    pb.inc(n);
                }
                r
            }));
            if n < part {
                break;
            }
        }
        for p in parts.drain(..) {
            p.await.context("upload task")??;
        }
        upload.complete().await?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = upload.abort().await;
        return Err(e);
    }
    Ok(sent)
}

/// Every regular file under `root` (following links to files, not to folders), as the key
/// suffix ('/'-separated relative path), its path and its size, sorted by key.
fn walk(root: &LocalPath) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = todo.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| local_error(&dir, &e))?;
        for e in entries {
            let e = e.map_err(|e| local_error(&dir, &e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                bail!("{}: the name is not UTF-8, so it cannot be a key", e.path().display());
            };
            let path = e.path();
            let kind = e.file_type().map_err(|err| local_error(&path, &err))?;
            let key = format!("{rel}{name}");
            if kind.is_dir() {
                todo.push((path, format!("{key}/")));
            } else if kind.is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => out.push((key, path, m.len())),
                    Ok(_) => eprintln!("cairn: skipping {} (a link to a folder)", path.display()),
                    Err(err) => bail!("{}", local_error(&path, &err)),
                }
            } else if kind.is_file() {
                let m = e.metadata().map_err(|err| local_error(&path, &err))?;
                out.push((key, path, m.len()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

async fn download(
    ep: &Endpoint,
    source: &str,
    dest: Option<String>,
    range: Option<&str>,
    par: &Parallel,
) -> Result<()> {
    let t = Target::parse(source)?;
    ep.s3()?.check_bucket(&t.bucket).await?;
    let s = store(ep, &t.bucket)?;
    if !par.recursive {
        return download_single(ep, &s, &t, dest, range).await;
    }
    let started = Instant::now();
    let prefix = t.folder();
    let dir = PathBuf::from(dest.unwrap_or_else(|| {
        let name = prefix.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if name.is_empty() { t.bucket.clone() } else { name.to_owned() }
    }));
    // Listed as stored: a key ending in '/' is a folder marker (made by other tools), a folder here.
    let mut items = Vec::new();
    let mut folders = Vec::new();
    for o in ep.s3()?.list_all(&t.bucket, &prefix).await? {
        let rel = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        if rel.is_empty() {
            continue;
        }
        if let Some(folder) = rel.strip_suffix('/') {
            folders.push(local_path(&dir, folder).with_context(|| format!("s3://{}/{}", t.bucket, o.key))?);
            continue;
        }
        let local = local_path(&dir, rel).with_context(|| format!("s3://{}/{}", t.bucket, o.key))?;
        items.push(Item { local, key: o.key, size: o.size });
    }
    for f in &folders {
        tokio::fs::create_dir_all(f).await.map_err(|e| local_error(f, &e))?;
    }
    if items.is_empty() {
        eprintln!("cairn: no objects under s3://{}/{prefix}; nothing downloaded", t.bucket);
        return Ok(());
    }
    let total = items.iter().map(|i| i.size).sum();
    let count = items.len();
    let pb = progress(total);
    let mut results = futures::stream::iter(items.iter())
        .map(|item| {
            let (s, pb) = (&s, &pb);
            async move { (item, download_one(s, item, pb).await) }
        })
        .buffer_unordered(par.jobs);
    let mut out = Outcome { files: 0, bytes: 0, failures: Vec::new() };
    while let Some((item, r)) = results.next().await {
        match r {
            Ok(n) => {
                out.files += 1;
                out.bytes += n;
            }
            Err(e) => out.failures.push(format!(
                "download of s3://{}/{} failed: {}",
                t.bucket,
                item.key,
                errors::one_line(&e.into_line(ep, &t.bucket, item))
            )),
        }
        pb.set_message(format!("{}/{count} files", out.files + out.failures.len()));
    }
    pb.finish_and_clear();
    out.finish("download", &format!("from s3://{}/{prefix} to {}", t.bucket, dir.display()), started)
}

/// Where the object `rel` (relative to the prefix) lands under `dir`; keys that would leave the
/// folder are refused.
fn local_path(dir: &LocalPath, rel: &str) -> Result<PathBuf> {
    let mut p = dir.to_owned();
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            bail!("the key cannot be a local path (it has an empty, '.' or '..' part)");
        }
        p.push(part);
    }
    Ok(p)
}

/// Streams one object into a temporary file next to its destination, then renames it.
async fn download_one(
    s: &Arc<dyn ObjectStore>,
    item: &Item,
    pb: &ProgressBar,
) -> std::result::Result<u64, TransferError> {
    let path = Path::parse(&item.key).with_context(|| format!("invalid key {:?}", item.key))?;
    let result = s.get(&path).await?;
    if let Some(parent) = item.local.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| local_error(parent, &e))?;
    }
    let name = item.local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = item.local.with_file_name(format!(".{name}.cairn-part"));
    let written = write_stream(result, &tmp, pb).await;
    match written {
        Ok(n) => {
            tokio::fs::rename(&tmp, &item.local).await.map_err(|e| local_error(&item.local, &e))?;
            Ok(n)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn write_stream(
    result: object_store::GetResult,
    to: &LocalPath,
    pb: &ProgressBar,
) -> std::result::Result<u64, TransferError> {
    let len = result.range.end - result.range.start;
    let mut out = tokio::fs::File::create(to).await.map_err(|e| local_error(to, &e))?;
    let mut stream = result.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        out.write_all(&chunk).await.map_err(|e| local_error(to, &e))?;
        written += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    out.flush().await.map_err(|e| local_error(to, &e))?;
    if written != len {
        return Err(anyhow::anyhow!("short read: got {written} of {len} bytes").into());
    }
    Ok(written)
}

async fn download_single(
    ep: &Endpoint,
    s: &Arc<dyn ObjectStore>,
    t: &Target,
    dest: Option<String>,
    range: Option<&str>,
) -> Result<()> {
    if t.key.is_empty() || t.key.ends_with('/') {
        bail!("{t} names a prefix, not an object (add --recursive to download what is under it)");
    }
    let path = t.path()?;
    let range = match range {
        Some(r) => {
            let (x, y) = r.split_once('-').context("--range is FIRST-LAST")?;
            let x: u64 = x.parse().context("--range start")?;
            let y: u64 = y.parse().context("--range end")?;
            if y < x {
                bail!("--range end is before its start");
            }
            Some(GetRange::Bounded(x..y + 1))
        }
        None => None,
    };
    let fail = |e| errors::from_store(e, ep, &t.bucket, &t.key);
    let result = s.get_opts(&path, GetOptions { range, ..Default::default() }).await.map_err(fail)?;
    let file_name = t.key.rsplit('/').next().unwrap_or("object").to_owned();
    let dest = dest.unwrap_or_else(|| file_name.clone());
    if dest == "-" {
        let len = result.range.end - result.range.start;
        let mut out = tokio::io::stdout();
        let mut stream = result.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(fail)?;
            match out.write_all(&chunk).await {
                // The reader went away (`| head`): what it wanted it has, as with `cat`.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.context("writing to stdout")?,
            }
            written += chunk.len() as u64;
        }
        match out.flush().await {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.context("writing to stdout")?,
        }
        if written != len {
            bail!("short read: got {written} of {len} bytes");
        }
        return Ok(());
    }
    let mut local = PathBuf::from(&dest);
    if dest.ends_with('/') || tokio::fs::metadata(&local).await.is_ok_and(|m| m.is_dir()) {
        local.push(&file_name);
    }
    let item = Item { local, key: t.key.clone(), size: result.range.end - result.range.start };
    let pb = progress(item.size);
    let name = item.local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = item.local.with_file_name(format!(".{name}.cairn-part"));
    let r = write_stream(result, &tmp, &pb).await;
    pb.finish_and_clear();
    match r {
        Ok(_) => tokio::fs::rename(&tmp, &item.local).await.map_err(|e| local_error(&item.local, &e)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e.into_line(ep, &t.bucket, &item))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_under_the_part_limit() {
        assert_eq!(part_size(1), PART_SIZE);
        assert_eq!(part_size(100 << 30), PART_SIZE);
        let huge = 1u64 << 40;
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
    }

    #[test]
    fn keys_cannot_leave_the_folder() {
        let d = LocalPath::new("/tmp/x");
        assert_eq!(local_path(d, "a/b").expect("plain"), PathBuf::from("/tmp/x/a/b"));
        assert!(local_path(d, "../etc").is_err());
        assert!(local_path(d, "a//b").is_err());
    }

    #[test]
    fn walk_lists_nested_files_with_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/c.bin"), b"xyz").expect("write");
        std::fs::write(dir.path().join("top"), b"").expect("write");
        std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
        let files: Vec<(String, u64)> =
            walk(dir.path()).expect("walk").into_iter().map(|(k, _, size)| (k, size)).collect();
        assert_eq!(files, vec![("a/b/c.bin".to_owned(), 3), ("top".to_owned(), 0)]);
    }
}
