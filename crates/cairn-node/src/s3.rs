//! The S3-compatible endpoint: `s3s` parses, authenticates and serialises; this file maps each
//! operation onto origins, the metadata cache and the chunked read-through.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use cairn_core::key::{KeyError, validate_key};
use cairn_core::{Durability, ObjectVersion};
use cairn_origin::{BodyStream, ErrorKind, ListPage, ObjectAttrs, ObjectInfo, WriteAttrs};
use cairn_store::journal;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::conditional::{Claim, Condition};
use crate::integrity::{self, Expected, Verifier};
use crate::meta::MetaKey;
use crate::multipart::{Completed, MultipartError, UploadTarget};
use crate::reader::ObjectHandle;
use crate::state::{NodeState, OriginEntry};
use crate::writeback::{self, WriteError};

pub struct CairnS3 {
    pub state: Arc<NodeState>,
}

fn origin_error(e: &cairn_origin::Error) -> S3Error {
    if e.kind == ErrorKind::KeyConflict {
        let mut err = S3Error::with_message(S3ErrorCode::Custom("KeyConflict".into()), e.message.clone());
        err.set_status_code(http::StatusCode::CONFLICT);
        return err;
    }
    let code = match e.kind {
        ErrorKind::NoSuchKey => S3ErrorCode::NoSuchKey,
        ErrorKind::NoSuchBucket => S3ErrorCode::NoSuchBucket,
        ErrorKind::VersionChanged => S3ErrorCode::InternalError,
        ErrorKind::BucketAlreadyExists => S3ErrorCode::BucketAlreadyOwnedByYou,
        ErrorKind::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
        ErrorKind::InvalidKey => S3ErrorCode::InvalidArgument,
        ErrorKind::Unsupported => S3ErrorCode::NotImplemented,
        ErrorKind::Body => S3ErrorCode::IncompleteBody,
        ErrorKind::KeyConflict | ErrorKind::Backend => S3ErrorCode::ServiceUnavailable,
    };
    S3Error::with_message(code, e.message.clone())
}

fn multipart_error(e: MultipartError) -> S3Error {
    let code = match &e {
        MultipartError::NoSuchUpload => S3ErrorCode::NoSuchUpload,
        MultipartError::TooManyUploads(_) => S3ErrorCode::SlowDown,
        MultipartError::BadPartNumber(..) => S3ErrorCode::InvalidArgument,
        MultipartError::InvalidPart(_) | MultipartError::NoParts => S3ErrorCode::InvalidPart,
        MultipartError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        MultipartError::EntityTooSmall(..) => S3ErrorCode::EntityTooSmall,
        MultipartError::EntityTooLarge(_) => S3ErrorCode::EntityTooLarge,
        MultipartError::Body(_) => S3ErrorCode::IncompleteBody,
        MultipartError::DiskFull(e) => {
            return insufficient_storage(format!(
                "the node cannot stage the part: its disk is full ({e}); nothing was kept"
            ));
        }
        MultipartError::Io(_) => S3ErrorCode::InternalError,
    };
    S3Error::with_message(code, e.to_string())
}

/// `507 InsufficientStorage`: the node's disk cannot take the write.
fn insufficient_storage(message: String) -> S3Error {
    let mut err = S3Error::with_message(S3ErrorCode::Custom("InsufficientStorage".into()), message);
    err.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
    err
}

fn completed_output(bucket: &str, key: &str, etag: Option<String>) -> CompleteMultipartUploadOutput {
    CompleteMultipartUploadOutput {
        bucket: Some(bucket.to_owned()),
        key: Some(key.to_owned()),
        e_tag: etag.map(|e| ETag::Strong(bare_etag(&e).to_owned())),
        location: Some(format!("/{bucket}/{key}")),
        ..Default::default()
    }
}

/// Part numbers run from 1 to this (S3's limit).
const MAX_PART_NUMBER: i32 = 10_000;

/// ListMultipartUploads answers at most this many uploads and common prefixes (S3's limit).
const MAX_LIST_UPLOADS: i32 = 1000;

/// Header choosing a write's durability: `local`, `replicated` or `origin`.
pub const DURABILITY_HEADER: &str = "x-cairn-durability";

fn durability(headers: &http::HeaderMap, entry: &OriginEntry) -> S3Result<Durability> {
    match headers.get(DURABILITY_HEADER) {
        None => Ok(entry.config.durability),
        Some(v) => v.to_str().ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("{DURABILITY_HEADER} must be \"local\", \"replicated\" or \"origin\""),
            )
        }),
    }
}

fn write_error(e: WriteError, limit: &cairn_core::ByteSize, over: bool) -> S3Error {
    match e {
        WriteError::Body(_) if over => {
            S3Error::with_message(S3ErrorCode::EntityTooLarge, format!("the body exceeds the {limit} limit"))
        }
        WriteError::Body(e) => S3Error::with_message(S3ErrorCode::IncompleteBody, format!("request body failed: {e}")),
        WriteError::DiskFull(m) => insufficient_storage(format!(
            "the node cannot store the object: its disk is full ({m}); earlier objects are intact"
        )),
        WriteError::Replication(m) => S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            format!("the object could not be replicated; nothing was acknowledged: {m}"),
        ),
        WriteError::Io(m) => S3Error::with_message(S3ErrorCode::InternalError, m),
    }
}

fn check_key(key: &str) -> S3Result<()> {
    validate_key(key).map_err(|e| match e {
        KeyError::TooLong(_) => S3Error::with_message(S3ErrorCode::KeyTooLongError, e.to_string()),
        _ => S3Error::with_message(S3ErrorCode::InvalidArgument, e.to_string()),
    })
}

/// An ETag's value without quotes or weak marker, as compared and as sent back.
/// A continuation token this node gave out: the hex of the last key (or name) of a page.
fn decode_token(t: &str) -> S3Result<String> {
    hex::decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "the continuation token provided is incorrect"))
}

fn bare_etag(s: &str) -> &str {
    s.trim_start_matches("W/").trim_matches('"')
}

fn etag_of(info: &ObjectInfo) -> ETag {
    ETag::Strong(bare_etag(info.client_etag()).to_owned())
}

/// The attributes a write request gives its object (user metadata, the headers S3 keeps).
fn request_attrs(
    cache_control: Option<&String>,
    content_disposition: Option<&String>,
    content_encoding: Option<&String>,
    content_language: Option<&String>,
    expires: Option<&Timestamp>,
    metadata: Option<&Metadata>,
) -> ObjectAttrs {
    let expires = expires.and_then(|t| {
        let mut buf = Vec::new();
        t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
        String::from_utf8(buf).ok()
    });
    ObjectAttrs {
        cache_control: cache_control.cloned(),
        content_disposition: content_disposition.cloned(),
        content_encoding: content_encoding.cloned(),
        content_language: content_language.cloned(),
        expires,
        metadata: metadata
            .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The stored checksums of an object, as S3 answers them.
fn checksum_of(attrs: &ObjectAttrs) -> Checksum {
    let get = |name: &str| attrs.checksums.get(name).cloned();
    Checksum {
        checksum_crc32: get("CRC32"),
        checksum_crc32c: get("CRC32C"),
        checksum_crc64nvme: get("CRC64NVME"),
        checksum_sha1: get("SHA1"),
        checksum_sha256: get("SHA256"),
        checksum_type: (!attrs.checksums.is_empty()).then(|| ChecksumType::from_static(ChecksumType::FULL_OBJECT)),
    }
}

fn checksum_mode_enabled(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// Sets an object's stored headers and user metadata (and its checksums, when asked for with
/// `x-amz-checksum-mode: ENABLED`) on a GetObject or HeadObject answer.
macro_rules! set_object_attrs {
    ($out:expr, $info:expr, $checksums:expr) => {{
        let a = &$info.attrs;
        $out.cache_control = a.cache_control.clone();
        $out.content_disposition = a.content_disposition.clone();
        $out.content_encoding = a.content_encoding.clone();
        $out.content_language = a.content_language.clone();
        $out.expires = a.expires.as_deref().and_then(|e| Timestamp::parse(TimestampFormat::HttpDate, e).ok());
        $out.metadata =
            (!a.metadata.is_empty()).then(|| a.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        if $checksums {
            let c = checksum_of(a);
            $out.checksum_crc32 = c.checksum_crc32;
            $out.checksum_crc32c = c.checksum_crc32c;
            $out.checksum_crc64nvme = c.checksum_crc64nvme;
            $out.checksum_sha1 = c.checksum_sha1;
            $out.checksum_sha256 = c.checksum_sha256;
            $out.checksum_type = c.checksum_type;
        }
    }};
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(SystemTime::from(t))
}

fn seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn etag_matches(cond: &ETagCondition, info: &ObjectInfo) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == bare_etag(info.client_etag()),
    }
}

/// `304 Not Modified`, with the object's ETag and Last-Modified (RFC 9110 asks for both).
fn not_modified(info: &ObjectInfo) -> S3Error {
    let mut err = s3_error!(NotModified);
    let mut headers = http::HeaderMap::new();
    let etag = format!("\"{}\"", bare_etag(info.client_etag()));
    let modified = info.last_modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    for (name, value) in [(http::header::ETAG, etag), (http::header::LAST_MODIFIED, modified)] {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    err.set_headers(headers);
    err
}

/// HTTP preconditions in RFC 9110 order: If-Match, If-Unmodified-Since, If-None-Match,
/// If-Modified-Since.
fn check_preconditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = info.last_modified.timestamp();
    if let Some(c) = if_match {
        if !etag_matches(c, info) {
            return Err(s3_error!(PreconditionFailed, "If-Match does not match the object's ETag"));
        }
    } else if let Some(t) = if_unmodified_since
        && modified > seconds(t)
    {
        return Err(s3_error!(PreconditionFailed, "the object was modified after If-Unmodified-Since"));
    }
    if let Some(c) = if_none_match {
        if etag_matches(c, info) {
            return Err(not_modified(info));
        }
    } else if let Some(t) = if_modified_since
        && modified <= seconds(t)
    {
        return Err(not_modified(info));
    }
    Ok(())
}

fn resolve_range(range: Option<&s3s::dto::Range>, size: u64) -> S3Result<(Range<u64>, Option<String>)> {
    match range {
        None => Ok((0..size, None)),
        Some(_) if size == 0 => Err(S3Error::with_message(
            S3ErrorCode::InvalidRange,
            "the requested range is not satisfiable for an empty object",
        )),
        Some(r) => {
            let checked = r.check(size).map_err(|_| {
                S3Error::with_message(
                    S3ErrorCode::InvalidRange,
                    format!("the requested range is not satisfiable for an object of {size} bytes"),
                )
            })?;
            let cr = format!("bytes {}-{}/{}", checked.start, checked.end - 1, size);
            Ok((checked, Some(cr)))
        }
    }
}

/// Most buckets one ListBuckets page may ask for (`max-buckets`), as in S3.
const MAX_BUCKETS_PER_PAGE: i32 = 10_000;

/// One page of ListBuckets: the names after the continuation token (the last name of the
/// previous page, hex-encoded), under the prefix, at most `max` of them.
struct BucketPage {
    prefix: String,
    after: Option<String>,
    max: usize,
}

impl BucketPage {
    fn of(input: &ListBucketsInput) -> S3Result<Self> {
        let max = match input.max_buckets {
            None => MAX_BUCKETS_PER_PAGE,
            Some(n) if (1..=MAX_BUCKETS_PER_PAGE).contains(&n) => n,
            Some(n) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("max-buckets must be between 1 and {MAX_BUCKETS_PER_PAGE}, not {n}"),
                ));
            }
        };
        let after = input.continuation_token.as_deref().map(decode_token).transpose()?;
        Ok(Self { prefix: input.prefix.clone().unwrap_or_default(), after, max: max as usize })
    }

    /// This page of `sorted` buckets, and the token of the next page when there is one.
    fn cut(&self, sorted: Vec<Bucket>) -> (Vec<Bucket>, Option<String>) {
        let mut page: Vec<Bucket> = sorted
            .into_iter()
            .filter(|b| b.name.as_deref().is_some_and(|n| n.starts_with(&self.prefix)))
            .filter(|b| self.after.as_deref().is_none_or(|a| b.name.as_deref().is_some_and(|n| n > a)))
            .take(self.max + 1)
            .collect();
        if page.len() <= self.max {
            return (page, None);
        }
        page.truncate(self.max);
        let token = page.last().and_then(|b| b.name.as_deref()).map(hex::encode);
        (page, token)
    }
}

/// A listing parameter as S3 reads it: empty is not given (`delimiter=` is no delimiter).
fn given(param: Option<String>) -> Option<String> {
    param.filter(|p| !p.is_empty())
}

/// `x-amz-copy-source-range`: `bytes=first-last`, both given (else `InvalidArgument`), inside
/// the source (else `InvalidRange`, as S3 answers).
fn copy_range(header: &str, size: u64) -> S3Result<Range<u64>> {
    let bad = || {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("the range {header:?} is not valid for a copy source of {size} bytes"),
        )
    };
    let (first, last) = header.strip_prefix("bytes=").and_then(|r| r.split_once('-')).ok_or_else(bad)?;
    let (first, last): (u64, u64) = (first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?);
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRange,
            format!("the range {header:?} is not satisfiable for a copy source of {size} bytes"),
        ));
    }
    Ok(first..last + 1)
}

/// The `x-amz-copy-source-if-*` conditions of a copy.
struct CopyConditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

/// A copy source being read: its bytes as a body, and whether reading them failed.
struct SourceBody {
    meta_key: MetaKey,
    info: ObjectInfo,
    len: u64,
    body: BodyStream,
    failed: Arc<AtomicBool>,
}

/// Percent-encodes a key for `encoding-type=url` listings (everything but unreserved and '/').
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Request body as a stream that fails once it passes `limit` bytes, raising `over`.
fn limited_body(body: Option<StreamingBlob>, limit: u64, over: Arc<AtomicBool>) -> BodyStream {
    let Some(body) = body else { return futures::stream::empty().boxed() };
    let mut seen = 0u64;
    body.map_err(|e| io::Error::other(e.to_string()))
        .and_then(move |b| {
            seen += b.len() as u64;
            let over = over.clone();
            async move {
                if seen > limit {
                    over.store(true, Ordering::Relaxed);
                    Err(io::Error::other("body exceeds the size limit"))
                } else {
                    Ok(b)
                }
            }
        })
        .boxed()
}

impl CairnS3 {
    async fn timed<T, F>(&self, op: &'static str, fut: F) -> S3Result<T>
    where
        F: Future<Output = S3Result<T>>,
    {
        let start = Instant::now();
        let r = fut.await;
        self.state.metrics.observe(op, start.elapsed());
        if let Err(e) = &r {
            self.state.metrics.error(op, e.code().as_str());
        }
        r
    }

    fn origin(&self, bucket: &str) -> S3Result<&OriginEntry> {
        self.state.origin_for(bucket).ok_or_else(|| {
            S3Error::with_message(S3ErrorCode::NoSuchBucket, format!("bucket {bucket:?} does not exist"))
        })
    }

    fn meta_key(entry: &OriginEntry, bucket: &str, key: &str) -> MetaKey {
        MetaKey { origin: entry.origin.name().to_owned(), bucket: bucket.to_owned(), key: key.to_owned() }
    }

    async fn object_info(&self, entry: &OriginEntry, bucket: &str, key: &str) -> S3Result<ObjectInfo> {
        self.state
            .meta
            .get(&entry.origin, entry.config.metadata, Self::meta_key(entry, bucket, key))
            .await
            .map_err(|e| origin_error(&e))
    }

    fn handle(entry: &OriginEntry, bucket: &str, key: &str, info: &ObjectInfo) -> Arc<ObjectHandle> {
        Arc::new(ObjectHandle {
            origin: entry.origin.clone(),
            version: ObjectVersion {
                origin: entry.origin.name().to_owned(),
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version: info.etag.clone(),
                size: info.size,
            },
            chunk_size: entry.config.chunk_size.bytes(),
        })
    }

    /// Forgets an object's metadata (here and at the owner of its metadata key) and drops the
    /// chunks of the version this node had cached.
    async fn invalidate(&self, entry: &OriginEntry, bucket: &str, key: &str) {
        self.state.multipart.layouts.forget(entry.origin.name(), bucket, key).await;
        if let Some(cluster) = &self.state.cluster {
            let route = cluster.route(crate::cluster::Cluster::meta_key(entry.origin.name(), bucket, key));
            // Owners of the metadata for reads (cluster.replicas) and for writes
            // (writeback.replicas) may both hold a copy.
            let owners = self.state.config.cluster.replicas.max(self.state.config.writeback.replicas);
            for node in route.candidates.iter().take(owners) {
                if node.id == cluster.node_id {
                    continue;
                }
                if let Err(e) = cluster.invalidate(node, entry.origin.name(), bucket, key).await {
                    tracing::warn!(peer = %node.id, error = ?e, "could not invalidate metadata at its owner");
                }
            }
        }
        if let Some(old) = self.state.meta.remove(&Self::meta_key(entry, bucket, key)) {
            let h = Self::handle(entry, bucket, key, &old);
            for i in 0..h.layout().chunk_count() {
                self.state.reader.store().remove(h.chunk_id(i));
            }
        }
    }

    async fn get_object_inner(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
        check_key(key)?;
        let entry = self.origin(bucket)?;
        // A version change between our metadata and the origin's bytes is retried once with
        // fresh metadata; after the first byte is sent a change aborts the response instead.
        let mut attempt = 0;
        let (info, handle, range, content_range, parts_count, first) = loop {
            attempt += 1;
            let info = self.object_info(entry, bucket, key).await?;
            check_preconditions(
                &info,
                input.if_match.as_ref(),
                input.if_unmodified_since.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
            )?;
            let (range, content_range, parts_count) =
                self.resolve_part(entry, bucket, key, &info, input.part_number, input.range.as_ref()).await?;
            let handle = Self::handle(entry, bucket, key, &info);
            let layout = handle.layout();
            let Some((first_index, first_piece)) = layout.pieces(range.clone()).next() else {
                break (info, handle, range, content_range, parts_count, None);
            };
            match self.state.reader.chunk(&handle, first_index).await {
                Ok(b) if b.len() >= first_piece.end => {
                    let last = (range.end - 1) / handle.chunk_size;
                    self.state.reader.note_read(&handle, first_index, last);
                    break (info, handle, range, content_range, parts_count, Some(b));
                }
                Ok(_) => return Err(s3_error!(InternalError, "cached chunk is shorter than the object claims")),
                Err(e) if e.kind == ErrorKind::VersionChanged && attempt == 1 => {
                    self.state.meta.remove(&Self::meta_key(entry, bucket, key));
                    continue;
                }
                Err(e) if e.kind == ErrorKind::NoSuchKey => {
                    self.state.meta.remove(&Self::meta_key(entry, bucket, key));
                    return Err(origin_error(&e));
                }
                Err(e) => return Err(origin_error(&e)),
            }
        };
        let len = range.end - range.start;
        let body = self.state.reader.stream(handle, range, first);
        let mut output = GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(len as i64),
            content_range,
            content_type: info.content_type.clone(),
            e_tag: Some(etag_of(&info)),
            last_modified: Some(timestamp(info.last_modified)),
            accept_ranges: Some("bytes".into()),
            parts_count,
            ..Default::default()
        };
        // A range's bytes do not have the object's checksum: S3 sends none for them.
        set_object_attrs!(
            output,
            info,
            checksum_mode_enabled(input.checksum_mode.as_ref()) && output.content_range.is_none()
        );
        Ok(S3Response::new(output))
    }

    fn list_page_objects(page: &ListPage, encode: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
        let enc = |s: &str| if encode { url_encode(s) } else { s.to_owned() };
        let objects = page
            .objects
            .iter()
            .map(|o| Object {
                key: Some(enc(&o.key)),
                size: Some(o.size as i64),
                e_tag: o.etag.as_deref().map(|e| ETag::Strong(bare_etag(e).to_owned())),
                last_modified: Some(timestamp(o.last_modified)),
                storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        let prefixes = page.common_prefixes.iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect();
        (objects, prefixes)
    }

    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<i32>,
    ) -> S3Result<(ListPage, i32)> {
        let entry = self.origin(bucket)?;
        let limit = self.state.config.limits.max_list_keys;
        let max = match max_keys {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
            Some(n) => (n as usize).min(limit),
            None => limit,
        };
        if max == 0 {
            if !entry.origin.bucket_exists(bucket).await.map_err(|e| origin_error(&e))? {
                return Err(s3_error!(NoSuchBucket));
            }
            return Ok((ListPage::default(), 0));
        }
        crate::metrics::Metrics::add(&self.state.metrics.origin_list, 1);
        let page =
            entry.origin.list(bucket, prefix, delimiter, start_after, max).await.map_err(|e| origin_error(&e))?;
        Ok((page, max as i32))
    }

    /// Runs `write` under `condition` (`If-None-Match: *` / `If-Match`), decided at the owner of
    /// the key's metadata and held there until the write is visible; unconditional writes just run.
    async fn conditionally<T>(
        &self,
        entry: &OriginEntry,
        bucket: &str,
        key: &str,
        condition: Option<Condition>,
        write: impl Future<Output = S3Result<T>>,
    ) -> S3Result<T> {
        let Some(condition) = condition else { return write.await };
        let claim = Claim::take(&self.state, entry, bucket, key, condition).await?;
        let r = write.await;
        claim.release().await;
        r
    }

    /// The key's turn for an origin operation: waits for a running upload of the key, so it
    /// cannot land after this operation.
    async fn origin_turn(&self, entry: &OriginEntry, bucket: &str, key: &str) -> S3Result<writeback::OriginTurn> {
        writeback::begin_origin_op(&self.state, entry, bucket, key)
            .await
            .map_err(|e| S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string()))
    }

    /// Deletes a key at the origin in its turn, superseding older pending writes of it.
    async fn delete_key(&self, entry: &OriginEntry, bucket: &str, key: &str) -> S3Result<()> {
        let turn = self.origin_turn(entry, bucket, key).await?;
        crate::metrics::Metrics::add(&self.state.metrics.origin_delete, 1);
        let r = entry.origin.delete(bucket, key).await;
        writeback::end_origin_op(&self.state, turn, r.is_ok()).await;
        self.invalidate(entry, bucket, key).await;
        r.map_err(|e| origin_error(&e))
    }

    /// Opens the source of a CopyObject or UploadPartCopy: checks its conditions (a failed one
    /// is 412, If-None-Match included) and streams `range` of it (all of it when `None`) through
    /// the cache.
    async fn copy_source(
        &self,
        source: &CopySource,
        conditions: CopyConditions<'_>,
        range: Option<&str>,
    ) -> S3Result<SourceBody> {
        let CopySource::Bucket { bucket, key, version_id } = source else {
            return Err(s3_error!(NotImplemented, "a copy source must be given as bucket/key"));
        };
        if version_id.is_some() {
            return Err(s3_error!(NotImplemented, "copying a source versionId is not supported"));
        }
        check_key(key)?;
        let entry = self.origin(bucket)?;
        let info = self.object_info(entry, bucket, key).await?;
        check_preconditions(
            &info,
            conditions.if_match,
            conditions.if_unmodified_since,
            conditions.if_none_match,
            conditions.if_modified_since,
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed, "the copy source's conditions are not met")
            } else {
                e
            }
        })?;
        let range = match range {
            None => 0..info.size,
            Some(r) => copy_range(r, info.size)?,
        };
        let handle = Self::handle(entry, bucket, key, &info);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let body = self.state.reader.stream(handle, range.clone(), None).inspect_err(move |_| {
            flag.store(true, Ordering::Relaxed);
        });
        Ok(SourceBody {
            meta_key: Self::meta_key(entry, bucket, key),
            info,
            len: range.end - range.start,
            body: body.boxed(),
            failed,
        })
    }

    /// The error for a copy whose write failed: a source that could not be read (changed at the
    /// origin, or its chunks unavailable) is retried from fresh metadata by the client's next try.
    fn copy_failed(&self, source: &SourceBody, e: S3Error) -> S3Error {
        if !source.failed.load(Ordering::Relaxed) {
            return e;
        }
        self.state.meta.remove(&source.meta_key);
        S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            format!(
                "reading the copy source {}/{} failed; nothing was written",
                source.meta_key.bucket, source.meta_key.key
            ),
        )
    }

    /// CopyObject: the source's bytes, read through the cache, written to the destination as a
    /// PutObject of the same durability would be.
    async fn copy_object_inner(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
        check_key(key)?;
        let entry = self.origin(bucket)?;
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if let CopySource::Bucket { bucket: b, key: k, .. } = &input.copy_source
            && (b.as_ref(), k.as_ref()) == (bucket, key)
            && !replace
        {
            return Err(s3_error!(
                InvalidRequest,
                "this copy request is illegal because it is trying to copy an object to itself without changing \
                 the object's metadata"
            ));
        }
        let conditions = CopyConditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        let durability = durability(&req.headers, entry)?;
        let mut source = self.copy_source(&input.copy_source, conditions, None).await?;
        let limit = &self.state.config.limits.max_put_size;
        if source.len > limit.bytes() {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the copy source is {} bytes, over the {limit} limit", source.len),
            ));
        }
        entry.origin.check_writable(bucket, key).await.map_err(|e| origin_error(&e))?;
        self.state.multipart.layouts.forget(entry.origin.name(), bucket, key).await;
        let content_type = if replace { input.content_type.clone() } else { source.info.content_type.clone() };
        // The bytes are the source's, so its checksums hold for the copy either way.
        let mut attrs = if replace {
            let mut a = request_attrs(
                input.cache_control.as_ref(),
                input.content_disposition.as_ref(),
                input.content_encoding.as_ref(),
                input.content_language.as_ref(),
                input.expires.as_ref(),
                input.metadata.as_ref(),
            );
            a.checksums = source.info.attrs.checksums.clone();
            a
        } else {
            source.info.attrs.clone()
        };
        attrs.etag = None;
        let attrs: WriteAttrs = Arc::new(Mutex::new(attrs));
        let body = std::mem::replace(&mut source.body, futures::stream::empty().boxed());
        let over = AtomicBool::new(false);
        let condition = Condition::of_headers(&req.headers)?;
        let written = self
            .conditionally(entry, bucket, key, condition, async {
                match durability {
                    Durability::Origin => self.put_body(entry, bucket, key, body, &over, content_type, attrs).await,
                    d => writeback::write_stream(
                        &self.state,
                        entry,
                        bucket,
                        key,
                        body,
                        content_type,
                        attrs,
                        d,
                        Some(source.len),
                    )
                    .await
                    .map(Some)
                    .map_err(|e| write_error(e, limit, false)),
                }
            })
            .await;
        let etag = written.map_err(|e| self.copy_failed(&source, e))?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: etag.map(|e| ETag::Strong(bare_etag(&e).to_owned())),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// UploadPartCopy: a range of the source, read through the cache, staged as a part.
    async fn upload_part_copy_inner(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        self.state.multipart.target(&input.upload_id, &input.bucket, &input.key).await.map_err(multipart_error)?;
        let conditions = CopyConditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        let mut source = self.copy_source(&input.copy_source, conditions, input.copy_source_range.as_deref()).await?;
        let limit = self.state.config.limits.max_part_size.bytes();
        if source.len > limit {
            return Err(multipart_error(MultipartError::EntityTooLarge(limit)));
        }
        let body = std::mem::replace(&mut source.body, futures::stream::empty().boxed());
        let etag = self
            .state
            .multipart
            .write_part(&input.upload_id, input.part_number, body, limit)
            .await
            .map_err(|e| self.copy_failed(&source, multipart_error(e)))?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// The byte range a read asks for (`partNumber` or `Range`), its Content-Range, and the
    /// object's part count when it asks for a part of an object completed as a multipart upload
    /// on this node (other objects are one part).
    async fn resolve_part(
        &self,
        entry: &OriginEntry,
        bucket: &str,
        key: &str,
        info: &ObjectInfo,
        part_number: Option<i32>,
        range: Option<&s3s::dto::Range>,
    ) -> S3Result<(Range<u64>, Option<String>, Option<i32>)> {
        let Some(number) = part_number else {
            let (r, cr) = resolve_range(range, info.size)?;
            return Ok((r, cr, None));
        };
        if range.is_some() {
            return Err(s3_error!(InvalidRequest, "Cannot specify both Range header and partNumber query parameter"));
        }
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(s3_error!(InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive"));
        }
        let layout = self
            .state
            .multipart
            .layouts
            .get(entry.origin.name(), bucket, key, bare_etag(info.client_etag()), info.size)
            .await;
        let count = layout.as_ref().map(|p| p.len() as i32);
        let parts = layout.unwrap_or_else(|| vec![info.size]);
        let Some(&len) = parts.get(number as usize - 1) else {
            let mut err = S3Error::with_message(
                S3ErrorCode::Custom("InvalidPartNumber".into()),
                "The requested partnumber is not satisfiable",
            );
            err.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
            return Err(err);
        };
        let start: u64 = parts[..number as usize - 1].iter().sum();
        if info.size == 0 {
            return Ok((0..0, None, count));
        }
        let cr = format!("bytes {}-{}/{}", start, start + len - 1, info.size);
        Ok((start..start + len, Some(cr), count))
    }

    /// ListMultipartUploads: this node's uploads in progress, by key then upload id, with prefix,
    /// delimiter, key and upload id markers and `max-uploads` (at most 1000).
    async fn list_multipart_uploads_inner(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let bucket = input.bucket.as_str();
        let entry = self.origin(bucket)?;
        if !entry.origin.bucket_exists(bucket).await.map_err(|e| origin_error(&e))? {
            return Err(s3_error!(NoSuchBucket));
        }
        let max = match input.max_uploads {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-uploads must not be negative")),
            Some(n) => n.min(MAX_LIST_UPLOADS),
            None => MAX_LIST_UPLOADS,
        };
        let prefix = input.prefix.as_deref().unwrap_or("");
        let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
        let key_marker = input.key_marker.as_deref().unwrap_or("");
        // An upload id marker counts only with a key marker: uploads of that key after that id.
        let id_marker = input.upload_id_marker.as_deref().filter(|_| !key_marker.is_empty());
        let all = self.state.multipart.uploads().await.map_err(multipart_error)?;
        let past_markers = |key: &str, id: &str| match id_marker {
            Some(m) => key > key_marker || (key == key_marker && id > m),
            None => key > key_marker,
        };
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let (mut next_key, mut next_id, mut truncated) = (None, None, false);
        for (id, target, initiated) in all {
            let key = target.key.as_str();
            if target.bucket != bucket || !key.starts_with(prefix) || !past_markers(key, &id) {
                continue;
            }
            let rolled =
                delimiter.and_then(|d| key[prefix.len()..].find(d).map(|at| &key[..prefix.len() + at + d.len()]));
            if let Some(p) = rolled {
                // A marker that is this common prefix was the last entry of the previous page.
                if prefixes.last().map(String::as_str) == Some(p) || p == key_marker {
                    continue;
                }
            }
            if uploads.len() + prefixes.len() >= max as usize {
                truncated = true;
                break;
            }
            match rolled {
                Some(p) => {
                    prefixes.push(p.to_owned());
                    (next_key, next_id) = (Some(p.to_owned()), None);
                }
                None => {
                    (next_key, next_id) = (Some(key.to_owned()), Some(id.clone()));
                    uploads.push(MultipartUpload {
                        key: Some(key.to_owned()),
                        upload_id: Some(id),
                        initiated: Some(Timestamp::from(initiated)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        owner: Some(Owner { display_name: Some("cairn".into()), id: Some("cairn".into()) }),
                        initiator: Some(Initiator { display_name: Some("cairn".into()), id: Some("cairn".into()) }),
                        ..Default::default()
                    });
                }
            }
        }
        let encode = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: &str| if encode { url_encode(s) } else { s.to_owned() };
        for u in &mut uploads {
            u.key = u.key.as_deref().map(enc);
        }
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.as_deref().map(enc),
            key_marker: Some(enc(key_marker)),
            upload_id_marker: Some(id_marker.unwrap_or("").to_owned()),
            max_uploads: Some(max),
            is_truncated: Some(truncated),
            next_key_marker: next_key.filter(|_| truncated).map(|k| enc(&k)),
            next_upload_id_marker: next_id.filter(|_| truncated),
            encoding_type: input.encoding_type.clone(),
            uploads: Some(uploads),
            common_prefixes: Some(prefixes.iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            ..Default::default()
        }))
    }

    /// Streams a request body to the origin under the node's size limit.
    #[allow(clippy::too_many_arguments)]
    async fn put_body(
        &self,
        entry: &OriginEntry,
        bucket: &str,
        key: &str,
        body: BodyStream,
        over: &AtomicBool,
        content_type: Option<String>,
        attrs: WriteAttrs,
    ) -> S3Result<Option<String>> {
        let (body, turn) = writeback::turn_at_body_end(&self.state, entry, bucket, key, body);
        crate::metrics::Metrics::add(&self.state.metrics.origin_put, 1);
        let r = entry.origin.put(bucket, key, body, content_type, attrs).await;
        let turn = turn.lock().take();
        let busy = match turn {
            Some(Ok(turn)) => {
                writeback::end_origin_op(&self.state, turn, r.is_ok()).await;
                None
            }
            Some(Err(busy)) => Some(busy.to_string()),
            None => None,
        };
        self.invalidate(entry, bucket, key).await;
        match r {
            Ok(info) => Ok(info.etag),
            Err(_) if busy.is_some() => {
                Err(S3Error::with_message(S3ErrorCode::ServiceUnavailable, busy.unwrap_or_default()))
            }
            Err(_) if over.load(Ordering::Relaxed) => Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the body exceeds the {} limit", self.state.config.limits.max_put_size),
            )),
            Err(e) => {
                crate::metrics::Metrics::add(&self.state.metrics.origin_errors, 1);
                Err(origin_error(&e))
            }
        }
    }
}

#[async_trait::async_trait]
impl S3 for CairnS3 {
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.timed("GetObject", self.get_object_inner(req)).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.timed("HeadObject", async {
            let input = req.input;
            let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
            check_key(key)?;
            let entry = self.origin(bucket)?;
            let info = self.object_info(entry, bucket, key).await?;
            check_preconditions(
                &info,
                input.if_match.as_ref(),
                input.if_unmodified_since.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
            )?;
            let (range, content_range, parts_count) =
                self.resolve_part(entry, bucket, key, &info, input.part_number, input.range.as_ref()).await?;
            let partial = content_range.is_some();
            let mut output = HeadObjectOutput {
                content_length: Some((range.end - range.start) as i64),
                content_range,
                content_type: info.content_type.clone(),
                e_tag: Some(etag_of(&info)),
                last_modified: Some(timestamp(info.last_modified)),
                accept_ranges: Some("bytes".into()),
                parts_count,
                ..Default::default()
            };
            // A range's bytes do not have the object's checksum: S3 sends none for them.
            set_object_attrs!(
                output,
                info,
                checksum_mode_enabled(input.checksum_mode.as_ref()) && output.content_range.is_none()
            );
            let mut resp = S3Response::new(output);
            if partial {
                resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
            }
            Ok(resp)
        })
        .await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.timed("ListObjectsV2", async {
            let input = req.input;
            let prefix = input.prefix.clone().unwrap_or_default();
            let after_token = input.continuation_token.as_deref().map(decode_token).transpose()?;
            let start_after = after_token.as_deref().or(input.start_after.as_deref());
            let delimiter = given(input.delimiter.clone());
            let (page, max) =
                self.list_page(&input.bucket, &prefix, delimiter.as_deref(), start_after, input.max_keys).await?;
            let encode = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
            let (objects, prefixes) = Self::list_page_objects(&page, encode);
            let enc = |s: String| if encode { url_encode(&s) } else { s };
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(input.bucket.clone()),
                prefix: Some(enc(prefix)),
                delimiter: delimiter.map(enc),
                max_keys: Some(max),
                key_count: Some((objects.len() + prefixes.len()) as i32),
                is_truncated: Some(page.next_start_after.is_some()),
                continuation_token: input.continuation_token.clone(),
                next_continuation_token: page.next_start_after.as_ref().map(hex::encode),
                start_after: input.start_after.clone().map(enc),
                encoding_type: input.encoding_type.clone(),
                contents: Some(objects),
                common_prefixes: Some(prefixes),
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.timed("ListObjects", async {
            let input = req.input;
            let prefix = input.prefix.clone().unwrap_or_default();
            let delimiter = given(input.delimiter.clone());
            let (page, max) = self
                .list_page(&input.bucket, &prefix, delimiter.as_deref(), input.marker.as_deref(), input.max_keys)
                .await?;
            let encode = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
            let (objects, prefixes) = Self::list_page_objects(&page, encode);
            let enc = |s: String| if encode { url_encode(&s) } else { s };
            Ok(S3Response::new(ListObjectsOutput {
                name: Some(input.bucket.clone()),
                // S3 sends ListObjects' (V1) Prefix as given, even with encoding-type=url, and
                // clients (boto3) do not decode it.
                prefix: Some(prefix),
                delimiter: delimiter.map(enc),
                marker: Some(input.marker.clone().map(enc).unwrap_or_default()),
                max_keys: Some(max),
                is_truncated: Some(page.next_start_after.is_some()),
                next_marker: page.next_start_after.clone().map(enc),
                encoding_type: input.encoding_type.clone(),
                contents: Some(objects),
                common_prefixes: Some(prefixes),
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.timed("ListBuckets", async {
            let input = req.input;
            let page = BucketPage::of(&input)?;
            let mut buckets = Vec::new();
            for entry in &self.state.origins {
                match entry.origin.list_buckets().await {
                    Ok(list) => buckets.extend(list.into_iter().map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(timestamp(b.created.unwrap_or_default())),
                        ..Default::default()
                    })),
                    Err(e) if e.kind == ErrorKind::Unsupported => {}
                    Err(e) => return Err(origin_error(&e)),
                }
            }
            buckets.sort_by(|a, b| a.name.cmp(&b.name));
            buckets.dedup_by(|a, b| a.name == b.name);
            let (buckets, continuation_token) = page.cut(buckets);
            Ok(S3Response::new(ListBucketsOutput {
                buckets: Some(buckets),
                continuation_token,
                prefix: input.prefix,
                owner: Some(Owner { display_name: Some("cairn".into()), id: Some("cairn".into()) }),
            }))
        })
        .await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.timed("HeadBucket", async {
            let bucket = req.input.bucket.as_str();
            let entry = self.origin(bucket)?;
            if !entry.origin.bucket_exists(bucket).await.map_err(|e| origin_error(&e))? {
                return Err(s3_error!(NoSuchBucket));
            }
            Ok(S3Response::new(HeadBucketOutput {
                bucket_region: Some(self.state.config.node.region.clone()),
                ..Default::default()
            }))
        })
        .await
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.timed("CreateBucket", async {
            let bucket = req.input.bucket.as_str();
            if !cairn_core::key::is_valid_bucket(bucket) {
                return Err(s3_error!(InvalidBucketName));
            }
            let entry = self
                .state
                .origin_for(bucket)
                .ok_or_else(|| s3_error!(NotImplemented, "no account-mode origin is configured to hold new buckets"))?;
            match entry.origin.create_bucket(bucket).await {
                // us-east-1 answers a creator that already has the bucket with success and leaves
                // the bucket as it is; other regions answer 409 BucketAlreadyOwnedByYou.
                Err(e) if e.kind == ErrorKind::BucketAlreadyExists && self.state.config.node.region == "us-east-1" => {}
                r => r.map_err(|e| origin_error(&e))?,
            }
            Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{bucket}")) }))
        })
        .await
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.timed("DeleteBucket", async {
            let bucket = req.input.bucket.as_str();
            let entry = self.origin(bucket)?;
            entry.origin.delete_bucket(bucket).await.map_err(|e| origin_error(&e))?;
            Ok(S3Response::new(DeleteBucketOutput::default()))
        })
        .await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.timed("PutObject", async {
            let input = req.input;
            let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
            check_key(key)?;
            let entry = self.origin(bucket)?;
            let limit = self.state.config.limits.max_put_size.bytes();
            if input.content_length.is_some_and(|n| n as u64 > limit) {
                return Err(S3Error::with_message(
                    S3ErrorCode::EntityTooLarge,
                    format!("the body exceeds the {} limit", self.state.config.limits.max_put_size),
                ));
            }
            let durability = durability(&req.headers, entry)?;
            entry.origin.check_writable(bucket, key).await.map_err(|e| origin_error(&e))?;
            self.state.multipart.layouts.forget(entry.origin.name(), bucket, key).await;
            let over = Arc::new(AtomicBool::new(false));
            let condition = Condition::of(input.if_match.as_ref(), input.if_none_match.as_ref())?;
            let expected = Expected::from_request(&req.headers, req.trailing_headers.clone())?;
            let attrs: WriteAttrs = Arc::new(Mutex::new(request_attrs(
                input.cache_control.as_ref(),
                input.content_disposition.as_ref(),
                input.content_encoding.as_ref(),
                input.content_language.as_ref(),
                input.expires.as_ref(),
                input.metadata.as_ref(),
            )));
            let body = limited_body(input.body, limit, over.clone());
            let (body, verified) = Verifier::wrap(body, expected, Some(attrs.clone()));
            let write = async {
                Ok(match durability {
                    Durability::Origin => {
                        self.put_body(entry, bucket, key, body, &over, input.content_type.clone(), attrs.clone())
                            .await?
                    }
                    d => Some(
                        writeback::write_stream(
                            &self.state,
                            entry,
                            bucket,
                            key,
                            body,
                            input.content_type.clone(),
                            attrs.clone(),
                            d,
                            input.content_length.map(|n| n as u64),
                        )
                        .await
                        .map_err(|e| {
                            write_error(e, &self.state.config.limits.max_put_size, over.load(Ordering::Relaxed))
                        })?,
                    ),
                })
            };
            let etag = self
                .conditionally(entry, bucket, key, condition, write)
                .await
                .map_err(|e| integrity::or_verification(&verified, e))?;
            Ok(S3Response::new(PutObjectOutput {
                e_tag: etag.map(|e| ETag::Strong(bare_etag(&e).to_owned())),
                ..Default::default()
            }))
        })
        .await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.timed("CopyObject", self.copy_object_inner(req)).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.timed("DeleteObject", async {
            let (bucket, key) = (req.input.bucket.as_str(), req.input.key.as_str());
            check_key(key)?;
            let entry = self.origin(bucket)?;
            self.delete_key(entry, bucket, key).await?;
            Ok(S3Response::new(DeleteObjectOutput::default()))
        })
        .await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.timed("DeleteObjects", async {
            let input = req.input;
            let bucket = input.bucket.as_str();
            let entry = self.origin(bucket)?;
            if input.delete.objects.len() > 1000 {
                return Err(s3_error!(MalformedXML, "DeleteObjects takes at most 1000 keys"));
            }
            let quiet = input.delete.quiet.unwrap_or(false);
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for obj in &input.delete.objects {
                let key = obj.key.as_str();
                let r = match check_key(key) {
                    Err(e) => Err(e),
                    Ok(()) => self.delete_key(entry, bucket, key).await,
                };
                match r {
                    Ok(()) if !quiet => deleted.push(DeletedObject { key: Some(key.to_owned()), ..Default::default() }),
                    Ok(()) => {}
                    Err(e) => errors.push(Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(key.to_owned()),
                        message: e.message().map(str::to_owned),
                        ..Default::default()
                    }),
                }
            }
            Ok(S3Response::new(DeleteObjectsOutput {
                deleted: Some(deleted),
                errors: Some(errors),
                ..Default::default()
            }))
        })
        .await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.timed("CreateMultipartUpload", async {
            let input = req.input;
            check_key(&input.key)?;
            let entry = self.origin(&input.bucket)?;
            if !entry.origin.bucket_exists(&input.bucket).await.map_err(|e| origin_error(&e))? {
                return Err(s3_error!(NoSuchBucket));
            }
            let attrs = request_attrs(
                input.cache_control.as_ref(),
                input.content_disposition.as_ref(),
                input.content_encoding.as_ref(),
                input.content_language.as_ref(),
                input.expires.as_ref(),
                input.metadata.as_ref(),
            );
            let target = UploadTarget {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                content_type: input.content_type,
                attrs,
            };
            let id = self.state.multipart.create(&target).await.map_err(multipart_error)?;
            Ok(S3Response::new(CreateMultipartUploadOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                upload_id: Some(id),
                ..Default::default()
            }))
        })
        .await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.timed("UploadPart", async {
            let input = req.input;
            let limit = self.state.config.limits.max_part_size.bytes();
            self.state.multipart.target(&input.upload_id, &input.bucket, &input.key).await.map_err(multipart_error)?;
            if input.content_length.is_some_and(|n| n as u64 > limit) {
                return Err(multipart_error(MultipartError::EntityTooLarge(limit)));
            }
            let expected = Expected::from_request(&req.headers, req.trailing_headers.clone())?;
            let over = Arc::new(AtomicBool::new(false));
            let (body, verified) = Verifier::wrap(limited_body(input.body, u64::MAX, over), expected, None);
            let etag = self
                .state
                .multipart
                .write_part(&input.upload_id, input.part_number, body, limit)
                .await
                .map_err(|e| integrity::or_verification(&verified, multipart_error(e)))?;
            Ok(S3Response::new(UploadPartOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() }))
        })
        .await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.timed("UploadPartCopy", self.upload_part_copy_inner(req)).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.timed("ListParts", async {
            let input = req.input;
            self.state.multipart.target(&input.upload_id, &input.bucket, &input.key).await.map_err(multipart_error)?;
            let marker = input.part_number_marker.unwrap_or(0);
            let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
            let staged = self.state.multipart.list_parts(&input.upload_id).await.map_err(multipart_error)?;
            let after: Vec<_> = staged.into_iter().filter(|p| p.number > marker).collect();
            let truncated = after.len() > max;
            let parts: Vec<Part> = after
                .iter()
                .take(max)
                .map(|p| Part {
                    part_number: Some(p.number),
                    e_tag: Some(ETag::Strong(p.etag.clone())),
                    size: Some(p.size as i64),
                    last_modified: Some(Timestamp::from(p.modified)),
                    ..Default::default()
                })
                .collect();
            Ok(S3Response::new(ListPartsOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                upload_id: Some(input.upload_id),
                is_truncated: Some(truncated),
                next_part_number_marker: parts.last().and_then(|p| p.part_number).filter(|_| truncated),
                max_parts: Some(max as i32),
                part_number_marker: input.part_number_marker,
                parts: Some(parts),
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.timed("ListMultipartUploads", self.list_multipart_uploads_inner(req)).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.timed("CompleteMultipartUpload", async {
            let input = req.input;
            let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
            let entry = self.origin(bucket)?;
            let _turn = self.state.multipart.completion_turn(&input.upload_id).await;
            if let Some(done) = self.state.multipart.completed(&input.upload_id, bucket, key).await {
                return Ok(S3Response::new(completed_output(bucket, key, done.etag)));
            }
            let target = self.state.multipart.target(&input.upload_id, bucket, key).await.map_err(multipart_error)?;
            let wanted: Vec<(i32, String)> = input
                .multipart_upload
                .and_then(|m| m.parts)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.part_number.unwrap_or(0), p.e_tag.map(|e| e.value().to_owned()).unwrap_or_default()))
                .collect();
            let (parts, total) = self.state.multipart.plan(&input.upload_id, &wanted).await.map_err(multipart_error)?;
            let part_sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
            entry.origin.check_writable(bucket, key).await.map_err(|e| origin_error(&e))?;
            if total > self.state.config.limits.max_part_size.bytes() * u64::from(self.state.config.limits.max_parts) {
                return Err(s3_error!(EntityTooLarge));
            }
            let durability = durability(&req.headers, entry)?;
            let condition = Condition::of(input.if_match.as_ref(), input.if_none_match.as_ref())?;
            let claim = match condition {
                Some(c) => Some(Claim::take(&self.state, entry, bucket, key, c).await?),
                None => None,
            };
            let written = async {
                Ok::<_, S3Error>(match durability {
                    Durability::Origin => {
                        let over = AtomicBool::new(false);
                        let body = crate::multipart::Multipart::body(parts);
                        let attrs = Arc::new(Mutex::new(target.attrs));
                        self.put_body(entry, bucket, key, body, &over, target.content_type, attrs).await?
                    }
                    d => {
                        // The parts are linked into the journal without copying; its record needs room.
                        // Made before they are linked, so a full disk leaves the upload as it was.
                        let chunks = total.div_ceil(entry.config.chunk_size.bytes());
                        if let Err(e) = self.state.multipart.room().make_async(journal::record_bytes(chunks)).await {
                            return Err(multipart_error(e.into()));
                        }
                        Some(
                            writeback::write_parts(
                                &self.state,
                                entry,
                                bucket,
                                key,
                                parts,
                                target.content_type,
                                target.attrs,
                                d,
                            )
                            .await
                            .map_err(|e| write_error(e, &self.state.config.limits.max_part_size, false))?,
                        )
                    }
                })
            }
            .await;
            if let Some(claim) = claim {
                claim.release().await;
            }
            let etag = written?;
            if let Some(e) = &etag {
                let layouts = &self.state.multipart.layouts;
                if let Err(err) = layouts.record(entry.origin.name(), bucket, key, bare_etag(e), part_sizes).await {
                    tracing::warn!(bucket, key, error = %err, "could not record the object's part boundaries");
                }
            }
            let done = Completed { bucket: bucket.to_owned(), key: key.to_owned(), etag };
            self.state.multipart.finish(&input.upload_id, &done).await;
            Ok(S3Response::new(completed_output(bucket, key, done.etag)))
        })
        .await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.timed("AbortMultipartUpload", async {
            let input = req.input;
            self.state.multipart.target(&input.upload_id, &input.bucket, &input.key).await.map_err(multipart_error)?;
            self.state.multipart.remove(&input.upload_id).await.map_err(multipart_error)?;
            Ok(S3Response::new(AbortMultipartUploadOutput::default()))
        })
        .await
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        self.timed("GetObjectAttributes", async {
            let input = req.input;
            let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
            check_key(key)?;
            if input.version_id.is_some() {
                return Err(s3_error!(NotImplemented, "GetObjectAttributes of a versionId is not supported"));
            }
            let entry = self.origin(bucket)?;
            let info = self.object_info(entry, bucket, key).await?;
            // One header, `x-amz-object-attributes: ETag,ObjectSize`, may name several.
            let wanted = |name: &str| {
                input
                    .object_attributes
                    .iter()
                    .flat_map(|a| a.as_str().split(','))
                    .any(|a| a.trim().eq_ignore_ascii_case(name))
            };
            Ok(S3Response::new(GetObjectAttributesOutput {
                e_tag: wanted(ObjectAttributes::ETAG).then(|| etag_of(&info)),
                checksum: (wanted(ObjectAttributes::CHECKSUM) && !info.attrs.checksums.is_empty())
                    .then(|| checksum_of(&info.attrs)),
                object_size: wanted(ObjectAttributes::OBJECT_SIZE).then_some(info.size as i64),
                storage_class: wanted(ObjectAttributes::STORAGE_CLASS)
                    .then(|| StorageClass::from_static(StorageClass::STANDARD)),
                last_modified: Some(timestamp(info.last_modified)),
                ..Default::default()
            }))
        })
        .await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.timed("GetBucketLocation", async {
            let bucket = req.input.bucket.as_str();
            let entry = self.origin(bucket)?;
            if !entry.origin.bucket_exists(bucket).await.map_err(|e| origin_error(&e))? {
                return Err(s3_error!(NoSuchBucket));
            }
            Ok(S3Response::new(GetBucketLocationOutput {
                location_constraint: Some(BucketLocationConstraint::from(self.state.config.node.region.clone())),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).ok(), Some(0..10));
        assert_eq!(copy_range("bytes=5-5", 10).ok(), Some(5..6));
        for bad in ["bytes=0-10", "bytes=5-4", "bytes=-5", "bytes=5-", "0-5", "bytes=a-b"] {
            assert!(copy_range(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_encoding_keeps_slashes() {
        assert_eq!(url_encode("a b/c+d%"), "a%20b/c%2Bd%25");
        assert_eq!(url_encode("ü"), "%C3%BC");
    }
}
