//! Writes, listings and deletes, through the endpoint node's S3 API (`object_store`'s S3 client,
//! signed with the client's access key). A write names its durability in `x-cairn-durability`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;

use crate::{Client, Config, Durability, Error};

/// Writes up to this size are one PUT; larger ones a multipart upload of parts this size.
pub const PART_SIZE: usize = 16 << 20;
/// Parts of one writer uploading at once.
const PART_CONCURRENCY: usize = 4;

/// A bucket and the durability its writes ask for.
type StoreKey = (String, Option<String>);

/// One S3 client per (bucket, durability), made on first use.
pub(crate) struct Stores {
    cfg: Config,
    endpoint: String,
    made: Mutex<HashMap<StoreKey, Arc<dyn ObjectStore>>>,
}

impl Stores {
    pub(crate) fn new(cfg: &Config, endpoint: &str) -> Self {
        Self { cfg: cfg.clone(), endpoint: endpoint.to_owned(), made: Mutex::new(HashMap::new()) }
    }

    fn get(&self, bucket: &str, durability: Option<Durability>) -> Result<Arc<dyn ObjectStore>, Error> {
        let mut made = self.made.lock();
        if let Some(s) = made.get(&(bucket.to_owned(), durability.map(|d| d.to_string()))) {
            return Ok(s.clone());
        }
        let mut headers = http::HeaderMap::new();
        if let Some(d) = durability {
            headers.insert(
                "x-cairn-durability",
                http::HeaderValue::from_str(&d.to_string()).map_err(|e| Error::Invalid(e.to_string()))?,
            );
        }
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            backoff: object_store::BackoffConfig::default(),
        };
        let s: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::new()
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_default_headers(headers)
                        .with_allow_http(true)
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(self.cfg.timeout.max(Duration::from_secs(60))),
                )
                .with_retry(retry)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_bucket_name(bucket)
                .with_region(&self.cfg.region)
                .with_access_key_id(&self.cfg.access_key)
                .with_secret_access_key(&self.cfg.secret_key)
                .build()
                .map_err(|e| Error::Invalid(format!("S3 client for bucket {bucket:?}: {e}")))?,
        );
        made.insert((bucket.to_owned(), durability.map(|d| d.to_string())), s.clone());
        Ok(s)
    }
}

fn path(key: &str) -> Result<Path, Error> {
    Path::parse(key).map_err(|e| Error::Invalid(format!("key {key:?}: {e}")))
}

/// An `object_store` error in one line that names the cause.
fn store_error(e: object_store::Error, endpoint: &str, bucket: &str, key: &str) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { source, .. } => {
            if source.to_string().contains("NoSuchBucket") {
                Error::NoSuchBucket(bucket.to_owned())
            } else {
                Error::NoSuchKey { bucket: bucket.to_owned(), key: key.to_owned() }
            }
        }
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            Error::AccessDenied(innermost(source.as_ref()))
        }
        E::Precondition { source, .. } => Error::VersionChanged(innermost(source.as_ref())),
        other => {
            let text = innermost(&other);
            let lower = text.to_lowercase();
            if lower.contains("nosuchbucket") {
                Error::NoSuchBucket(bucket.to_owned())
            } else if lower.contains("connection refused") || lower.contains("error sending request") {
                Error::Unreachable { addr: endpoint.to_owned(), why: text }
            } else {
                Error::Server { status: 500, code: "S3".into(), message: text }
            }
        }
    }
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One object of a listing.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// RFC 3339.
    pub last_modified: String,
}

/// A listing: objects, and with a delimiter the prefixes one level down (each ending in `/`).
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub objects: Vec<ListEntry>,
    pub prefixes: Vec<String>,
}

fn entry(m: object_store::ObjectMeta) -> ListEntry {
    ListEntry {
        key: m.location.to_string(),
        size: m.size,
        etag: m.e_tag.map(|e| e.trim_matches('"').to_owned()),
        last_modified: m.last_modified.to_rfc3339(),
    }
}

impl Client {
    fn store(&self, bucket: &str, durability: Option<Durability>) -> Result<Arc<dyn ObjectStore>, Error> {
        self.inner.s3.get(bucket, durability)
    }

    fn s3_error(&self, e: object_store::Error, bucket: &str, key: &str) -> Error {
        store_error(e, &self.inner.endpoint, bucket, key)
    }

    /// Writes an object; acknowledged at `durability` (the origin's configured one when `None`).
    /// Returns its ETag.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        durability: Option<Durability>,
    ) -> Result<String, Error> {
        let mut w = self.writer(bucket, key, durability)?;
        w.write_bytes(data).await?;
        w.close().await
    }

    /// A writer of a new object, streamed in parts; nothing is visible until [`Writer::close`].
    pub fn writer(&self, bucket: &str, key: &str, durability: Option<Durability>) -> Result<Writer, Error> {
        Ok(Writer {
            client: self.clone(),
            store: self.store(bucket, durability)?,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            path: path(key)?,
            buf: BytesMut::new(),
            upload: None,
            parts: futures::stream::FuturesUnordered::new(),
            written: 0,
        })
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Error> {
        let s = self.store(bucket, None)?;
        s.delete(&path(key)?).await.map_err(|e| self.s3_error(e, bucket, key))
    }

    /// Objects under `prefix` (`recursive`: every level; else one level, with the prefixes below).
    pub async fn list(&self, bucket: &str, prefix: &str, recursive: bool) -> Result<Listing, Error> {
        let s = self.store(bucket, None)?;
        let trimmed = prefix.trim_end_matches('/');
        let p = if trimmed.is_empty() { None } else { Some(path(trimmed)?) };
        let mut out = Listing::default();
        if recursive {
            let mut list = s.list(p.as_ref());
            while let Some(m) = list.next().await {
                out.objects.push(entry(m.map_err(|e| self.s3_error(e, bucket, prefix))?));
            }
        } else {
            let r = s.list_with_delimiter(p.as_ref()).await.map_err(|e| self.s3_error(e, bucket, prefix))?;
            out.prefixes = r.common_prefixes.into_iter().map(|p| format!("{p}/")).collect();
            out.objects = r.objects.into_iter().map(entry).collect();
        }
        Ok(out)
    }
}

type PartFuture = futures::future::BoxFuture<'static, Result<(), object_store::Error>>;

/// A new object being written: parts upload while the caller writes the next ones (at most
/// [`PART_CONCURRENCY`] at once, so memory stays bounded); one small object is one PUT.
pub struct Writer {
    client: Client,
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    path: Path,
    buf: BytesMut,
    upload: Option<Box<dyn MultipartUpload>>,
    parts: futures::stream::FuturesUnordered<PartFuture>,
    written: u64,
}

impl Writer {
    pub fn written(&self) -> u64 {
        self.written
    }

    fn fail(&self, e: object_store::Error) -> Error {
        self.client.s3_error(e, &self.bucket, &self.key)
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_bytes(Bytes::copy_from_slice(data)).await
    }

    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.written += data.len() as u64;
        self.buf.extend_from_slice(&data);
        while self.buf.len() >= PART_SIZE {
            let part = self.buf.split_to(PART_SIZE).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), Error> {
        if self.upload.is_none() {
            let u = self.store.put_multipart(&self.path).await.map_err(|e| self.fail(e))?;
            self.upload = Some(u);
        }
        while self.parts.len() >= PART_CONCURRENCY {
            if let Some(Err(e)) = self.parts.next().await {
                return Err(self.fail(e));
            }
        }
        let upload = self.upload.as_mut().expect("started above");
        self.parts.push(upload.put_part(PutPayload::from(part)));
        Ok(())
    }

    /// Uploads what is left and completes the object; its ETag.
    pub async fn close(mut self) -> Result<String, Error> {
        let rest = std::mem::take(&mut self.buf).freeze();
        if self.upload.is_none() {
            let r = self.store.put(&self.path, PutPayload::from(rest)).await.map_err(|e| self.fail(e))?;
            return Ok(r.e_tag.unwrap_or_default().trim_matches('"').to_owned());
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        while let Some(r) = self.parts.next().await {
            if let Err(e) = r {
                if let Some(mut u) = self.upload.take() {
                    let _ = u.abort().await;
                }
                return Err(self.fail(e));
            }
        }
        let mut upload = self.upload.take().expect("started above");
        let r = upload.complete().await.map_err(|e| self.fail(e))?;
        Ok(r.e_tag.unwrap_or_default().trim_matches('"').to_owned())
    }

    /// Gives the object up: nothing of it becomes visible.
    pub async fn abort(mut self) {
        self.parts.clear();
        if let Some(mut u) = self.upload.take() {
            let _ = u.abort().await;
        }
    }
}
