//! Multipart uploads staged on the node's disk until CompleteMultipartUpload.
//!
//! Each upload is a folder under `<cache dir>/uploads/<upload id>/` holding a `target` file
//! (bucket, key and content type, one per line) and one `NNNNN-<md5>.part` file per part. The
//! whole object is streamed to the origin at completion, so an upload works the same for every
//! origin and survives a node restart until it completes or is aborted. Upload ids are random
//! hex and checked as such before they touch a path.
//!
//! Parts are written through the cache's `Room`: clean disk-tier chunks are evicted to make room
//! for them, and a part that still does not fit fails with `DiskFull` (507) and leaves no file.
//!
//! A completion that fails leaves the upload as it was, so the client's retry can complete it. A
//! completion that succeeded is remembered (`<cache dir>/uploads-completed/<upload id>`, for
//! `COMPLETED_KEEP`, at most `COMPLETED_MAX`), so a retry of it (an SDK that timed out waiting)
//! answers the same ETag instead of `NoSuchUpload`. Completions of one upload run one at a time.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use cairn_origin::BodyStream;
use cairn_store::{Room, is_disk_full};

use crate::part_layout::PartLayouts;

/// S3's smallest part (all but the last part).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Read size when streaming staged parts to the origin.
const READ_BLOCK: usize = 1 << 20;
/// Body bytes gathered before they are written to a staged part (and room is made for them).
const STAGE_BATCH: usize = 1 << 20;
/// How long a completed upload is remembered, so a retried completion answers its ETag.
pub const COMPLETED_KEEP: Duration = Duration::from_secs(3600);
/// Completed uploads remembered at most (the oldest are forgotten first).
pub const COMPLETED_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    #[error("too many multipart uploads in progress (limit {0})")]
    TooManyUploads(usize),
    #[error("part number {0} is outside 1..={1}")]
    BadPartNumber(i32, u32),
    #[error("part {0} was not uploaded or its ETag does not match")]
    InvalidPart(i32),
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    #[error("part {0} is {1} bytes; every part but the last must be at least {MIN_PART_SIZE} bytes")]
    EntityTooSmall(i32, u64),
    #[error("part is larger than the {0}-byte limit")]
    EntityTooLarge(u64),
    #[error("the upload lists no parts")]
    NoParts,
    #[error("request body failed: {0}")]
    Body(io::Error),
    #[error("the node's disk is full: {0}")]
    DiskFull(io::Error),
    #[error("staging failed: {0}")]
    Io(io::Error),
}

impl From<io::Error> for MultipartError {
    fn from(e: io::Error) -> Self {
        if is_disk_full(&e) { Self::DiskFull(e) } else { Self::Io(e) }
    }
}

#[derive(Clone, Debug)]
pub struct UploadTarget {
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
    /// Attributes of the object the upload completes (user metadata, other headers).
    pub attrs: cairn_origin::ObjectAttrs,
}

#[derive(Clone, Debug)]
pub struct StagedPart {
    pub number: i32,
    pub etag: String,
    pub size: u64,
    pub modified: SystemTime,
    pub path: PathBuf,
}

/// What a successful completion answered, kept for its retries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Completed {
    pub bucket: String,
    pub key: String,
    pub etag: Option<String>,
}

pub struct Multipart {
    root: PathBuf,
    max_uploads: usize,
    max_parts: u32,
    room: Room,
    /// Part boundaries of the objects completed here (for `partNumber` reads).
    pub layouts: PartLayouts,
    completed_dir: PathBuf,
    /// Remembered completions, oldest first (upload id, when completed).
    completed: Mutex<VecDeque<(String, SystemTime)>>,
    /// One completion at a time per upload id.
    completing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while an upload completes; its retries wait for it.
pub struct CompletionTurn<'a> {
    multipart: &'a Multipart,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for CompletionTurn<'_> {
    fn drop(&mut self) {
        // The guard is still held here, so this entry counts two: the map's and the guard's.
        self.multipart.completing.lock().retain(|_, m| Arc::strong_count(m) > 2);
    }
}

impl Multipart {
    pub fn open(root: PathBuf, max_uploads: usize, max_parts: u32, room: Room) -> io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let mut name = root.file_name().unwrap_or_default().to_os_string();
        name.push("-completed");
        let completed_dir = root.with_file_name(name);
        let layouts = PartLayouts::open(root.with_file_name("part-layouts"))?;
        std::fs::create_dir_all(&completed_dir)?;
        let mut completed = Vec::new();
        for e in std::fs::read_dir(&completed_dir)? {
            let e = e?;
            let at = e.metadata()?.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            completed.push((e.file_name().to_string_lossy().into_owned(), at));
        }
        completed.sort_by_key(|(_, at)| *at);
        let mp = Self {
            root,
            max_uploads,
            max_parts,
            room,
            layouts,
            completed_dir,
            completed: Mutex::new(completed.into()),
            completing: Mutex::new(HashMap::new()),
        };
        mp.forget_old_completions();
        Ok(mp)
    }

    /// Waits for any other completion of this upload to finish.
    pub async fn completion_turn(&self, id: &str) -> CompletionTurn<'_> {
        let lock = self.completing.lock().entry(id.to_owned()).or_default().clone();
        CompletionTurn { multipart: self, _guard: lock.lock_owned().await }
    }

    /// What an earlier completion of this upload (of this bucket and key) answered.
    pub async fn completed(&self, id: &str, bucket: &str, key: &str) -> Option<Completed> {
        let fresh = self
            .completed
            .lock()
            .iter()
            .any(|(i, at)| i == id && at.elapsed().map_or(true, |age| age < COMPLETED_KEEP));
        if !fresh || self.upload_dir(id).is_ok() {
            return None;
        }
        let text = tokio::fs::read(self.completed_dir.join(id)).await.ok()?;
        let done: Completed = serde_json::from_slice(&text).ok()?;
        (done.bucket == bucket && done.key == key).then_some(done)
    }

    /// Records a successful completion, then removes the staged upload. The object is written
    /// by now, so failures here are logged, not answered.
    pub async fn finish(&self, id: &str, done: &Completed) {
        let written = async {
            let body = serde_json::to_vec(done).map_err(io::Error::other)?;
            let tmp = self.completed_dir.join(format!("{id}.tmp"));
            tokio::fs::write(&tmp, body).await?;
            tokio::fs::rename(&tmp, self.completed_dir.join(id)).await
        }
        .await;
        match written {
            Ok(()) => {
                let mut c = self.completed.lock();
                c.retain(|(i, _)| i != id);
                c.push_back((id.to_owned(), SystemTime::now()));
            }
            Err(e) => tracing::warn!(upload = id, error = %e, "could not remember a completed upload"),
        }
        self.forget_old_completions();
        if let Err(e) = self.remove(id).await {
            tracing::warn!(upload = id, error = %e, "could not remove a completed upload's staged parts");
        }
    }

    fn forget_old_completions(&self) {
        let mut c = self.completed.lock();
        while let Some((id, at)) = c.front() {
            let old = at.elapsed().is_ok_and(|age| age >= COMPLETED_KEEP);
            if !old && c.len() <= COMPLETED_MAX {
                break;
            }
            let _ = std::fs::remove_file(self.completed_dir.join(id));
            c.pop_front();
        }
    }

    fn upload_dir(&self, id: &str) -> Result<PathBuf, MultipartError> {
        let valid = id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if !valid {
            return Err(MultipartError::NoSuchUpload);
        }
        let dir = self.root.join(id);
        if dir.join("target").is_file() { Ok(dir) } else { Err(MultipartError::NoSuchUpload) }
    }

    pub async fn create(&self, target: &UploadTarget) -> Result<String, MultipartError> {
        let mut in_progress = 0;
        let mut rd = tokio::fs::read_dir(&self.root).await?;
        while rd.next_entry().await?.is_some() {
            in_progress += 1;
        }
        if in_progress >= self.max_uploads {
            return Err(MultipartError::TooManyUploads(self.max_uploads));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = self.root.join(&id);
        tokio::fs::create_dir_all(&dir).await?;
        let text = format!(
            "{}\n{}\n{}\n{}\n",
            target.bucket,
            target.key,
            target.content_type.as_deref().unwrap_or(""),
            serde_json::to_string(&target.attrs).unwrap_or_default()
        );
        let written = async {
            tokio::fs::write(dir.join("target.tmp"), text).await?;
            tokio::fs::rename(dir.join("target.tmp"), dir.join("target")).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.into());
        }
        Ok(id)
    }

    /// The upload's target, checked against the bucket and key the request names.
    pub async fn target(&self, id: &str, bucket: &str, key: &str) -> Result<UploadTarget, MultipartError> {
        let dir = self.upload_dir(id)?;
        let t = self.read_target(&dir).await?;
        if t.bucket != bucket || t.key != key {
            return Err(MultipartError::NoSuchUpload);
        }
        Ok(t)
    }

    /// Every upload in progress: id, target and when it was initiated, ordered by key, then id
    /// (so that a key marker and an upload id marker name one place in the list).
    pub async fn uploads(&self) -> Result<Vec<(String, UploadTarget, SystemTime)>, MultipartError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.root).await?;
        while let Some(e) = rd.next_entry().await? {
            let id = e.file_name().to_string_lossy().into_owned();
            let Ok(dir) = self.upload_dir(&id) else { continue };
            let Ok(meta) = tokio::fs::metadata(dir.join("target")).await else { continue };
            let Ok(t) = self.read_target(&dir).await else { continue };
            out.push((id, t, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        out.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(out)
    }

    async fn read_target(&self, dir: &Path) -> Result<UploadTarget, MultipartError> {
        let text = tokio::fs::read_to_string(dir.join("target")).await?;
        let mut lines = text.lines();
        Ok(UploadTarget {
            bucket: lines.next().unwrap_or_default().to_owned(),
            key: lines.next().unwrap_or_default().to_owned(),
            content_type: lines.next().filter(|s| !s.is_empty()).map(str::to_owned),
            attrs: lines.next().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default(),
        })
    }

    /// Streams one part to disk; returns its ETag (hex MD5). A part number uploaded again
    /// replaces the earlier part.
    pub async fn write_part(
        &self,
        id: &str,
        number: i32,
        mut body: BodyStream,
        max_size: u64,
    ) -> Result<String, MultipartError> {
        if number < 1 || number as u32 > self.max_parts {
            return Err(MultipartError::BadPartNumber(number, self.max_parts));
        }
        let dir = self.upload_dir(id)?;
        let tmp = dir.join(format!("{number:05}.{:x}.tmp", rand::random::<u64>()));
        let result: Result<String, MultipartError> = async {
            let f = Arc::new(tokio::fs::File::create(&tmp).await?.into_std().await);
            let mut md5 = Md5::new();
            let mut size = 0u64;
            let mut batch = Vec::new();
            let mut batch_len = 0usize;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(MultipartError::Body)?;
                size += chunk.len() as u64;
                if size > max_size {
                    return Err(MultipartError::EntityTooLarge(max_size));
                }
                md5.update(&chunk);
                batch_len += chunk.len();
                batch.push(chunk);
                if batch_len >= STAGE_BATCH {
                    let at = size - batch_len as u64;
                    self.stage(&f, at, std::mem::take(&mut batch)).await?;
                    batch_len = 0;
                }
            }
            if batch_len > 0 {
                self.stage(&f, size - batch_len as u64, batch).await?;
            }
            Ok(hex::encode(md5.finalize()))
        }
        .await;
        let etag = match result {
            Ok(e) => e,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        for old in self.parts(&dir).await?.into_iter().filter(|p| p.number == number) {
            let _ = tokio::fs::remove_file(&old.path).await;
        }
        tokio::fs::rename(&tmp, dir.join(format!("{number:05}-{etag}.part"))).await?;
        Ok(etag)
    }

    /// Writes body pieces at `offset` of a staged part, making room for them first.
    async fn stage(&self, f: &Arc<std::fs::File>, offset: u64, pieces: Vec<Bytes>) -> io::Result<()> {
        let (f, room) = (f.clone(), self.room.clone());
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        tokio::task::spawn_blocking(move || {
            // Positional writes, so the retry after making room rewrites the same bytes.
            room.write(len, || {
                let mut at = offset;
                for p in &pieces {
                    f.write_all_at(p, at)?;
                    at += p.len() as u64;
                }
                Ok(())
            })?;
            crate::writeback::start_writeback(&f, offset, len);
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The room-maker staged bytes go through.
    pub fn room(&self) -> &Room {
        &self.room
    }

    async fn parts(&self, dir: &Path) -> Result<Vec<StagedPart>, MultipartError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".part") else { continue };
            let Some((num, etag)) = stem.split_once('-') else { continue };
            let Ok(number) = num.parse() else { continue };
            let meta = e.metadata().await?;
            out.push(StagedPart {
                number,
                etag: etag.to_owned(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path: e.path(),
            });
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    pub async fn list_parts(&self, id: &str) -> Result<Vec<StagedPart>, MultipartError> {
        let dir = self.upload_dir(id)?;
        self.parts(&dir).await
    }

    /// Checks the client's part list against the staged parts; returns the parts in order and
    /// the object's total size.
    pub async fn plan(&self, id: &str, wanted: &[(i32, String)]) -> Result<(Vec<StagedPart>, u64), MultipartError> {
        let staged = self.list_parts(id).await?;
        if wanted.is_empty() {
            return Err(MultipartError::NoParts);
        }
        let mut out = Vec::with_capacity(wanted.len());
        let mut prev = 0;
        for (number, etag) in wanted {
            if *number <= prev {
                return Err(MultipartError::InvalidPartOrder);
            }
            prev = *number;
            let etag = etag.trim_matches('"');
            let part = staged
                .iter()
                .find(|p| p.number == *number && p.etag == etag)
                .ok_or(MultipartError::InvalidPart(*number))?;
            out.push(part.clone());
        }
        for p in &out[..out.len() - 1] {
            if p.size < MIN_PART_SIZE {
                return Err(MultipartError::EntityTooSmall(p.number, p.size));
            }
        }
        let total = out.iter().map(|p| p.size).sum();
        Ok((out, total))
    }

    /// The concatenated parts as one body stream.
    pub fn body(parts: Vec<StagedPart>) -> BodyStream {
        let paths: Vec<PathBuf> = parts.into_iter().map(|p| p.path).collect();
        futures::stream::iter(paths)
            .then(|path| async move { tokio::fs::File::open(path).await })
            .map(|file| match file {
                Ok(f) => futures::stream::try_unfold(f, |mut f| async move {
                    let mut buf = BytesMut::with_capacity(READ_BLOCK);
                    let n = f.read_buf(&mut buf).await?;
                    Ok::<_, io::Error>((n > 0).then(|| (Bytes::from(buf), f)))
                })
                .boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            .boxed()
    }

    pub async fn remove(&self, id: &str) -> Result<(), MultipartError> {
        let dir = self.upload_dir(id)?;
        tokio::fs::remove_dir_all(dir).await?;
        Ok(())
    }
}
