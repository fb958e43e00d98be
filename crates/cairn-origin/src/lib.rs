//! Object storage backends behind one small trait.
//!
//! [`Origin`] is what the node needs from object storage: HEAD, conditional revalidation, range
//! GETs pinned to one version, streaming PUT, DELETE, S3-style listings and bucket operations.
//! [`StoreOrigin`] implements it over `object_store` for a local folder (`file://`), Azure Blob
//! (`az://`), S3 and S3-compatible servers (`s3://`) and GCS (`gs://`), either for a whole account
//! (S3 bucket names pass through to containers/buckets, or to folders under a `file://` root) or
//! for one bucket/prefix exposed under a chosen bucket name.

mod list;
mod store;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use list::{ListPage, ListedObject};
pub use store::StoreOrigin;

/// What the origin reports about one version of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The origin's ETag (quoted as the origin sent it), or a version id when there is none.
    pub etag: String,
    pub last_modified: DateTime<Utc>,
    pub content_type: Option<String>,
    pub attrs: ObjectAttrs,
}

impl ObjectInfo {
    /// The ETag clients see: the MD5 of the content where the origin's own ETag is not (a
    /// `file://` origin), else the origin's.
    pub fn client_etag(&self) -> &str {
        self.attrs.etag.as_deref().unwrap_or(&self.etag)
    }
}

/// What an object keeps besides its bytes and content type: the other HTTP headers S3 stores
/// with it, its user metadata (`x-amz-meta-*`) and the additional checksums it was written with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// As the client sent it (an HTTP date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// User metadata, keys lowercase without the `x-amz-meta-` prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Base64 checksums by S3 algorithm name (`CRC32`, `SHA256`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// The ETag to show clients when the origin's differs from the content's MD5 (quoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// Attributes of an object being written, shared with the body's verifier: checksums are
/// added when the body ends, so a store reads them only after the last byte.
pub type WriteAttrs = Arc<Mutex<ObjectAttrs>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutInfo {
    pub etag: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NoSuchKey,
    NoSuchBucket,
    /// The object is no longer at the version a request was pinned to.
    VersionChanged,
    BucketAlreadyExists,
    BucketNotEmpty,
    InvalidKey,
    /// The backend cannot do this (e.g. create containers in single-bucket mode).
    Unsupported,
    /// The request body stream failed (client went away, short body).
    Body,
    /// The key cannot be stored beside an existing one: on a folder origin `a/b` cannot be both
    /// an object and the folder of `a/b/c` (S3 allows both).
    KeyConflict,
    /// Anything else: network, throttling that outlived retries, permissions.
    Backend,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request body as a stream of byte chunks.
pub type BodyStream = BoxStream<'static, std::result::Result<Bytes, std::io::Error>>;

#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Configured name, used in chunk ids and metrics.
    fn name(&self) -> &str;

    /// True when bucket names pass through to the backend.
    fn is_account(&self) -> bool;

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo>;

    /// Conditional HEAD: `None` when the object still has version `etag`.
    async fn revalidate(&self, bucket: &str, key: &str, etag: &str) -> Result<Option<ObjectInfo>>;

    /// Bytes `range` of the object, only if it is still at version `etag`
    /// (else [`ErrorKind::VersionChanged`]).
    async fn get_range(&self, bucket: &str, key: &str, range: Range<u64>, etag: &str) -> Result<Bytes>;

    /// Stores the whole body as the object's new version with its content type and attributes;
    /// large bodies go up as a multipart upload.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        content_type: Option<String>,
        attrs: WriteAttrs,
    ) -> Result<PutInfo>;

    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;

    /// Whether `key` can be stored next to the keys already there ([`ErrorKind::KeyConflict`]
    /// when not), so a write that could never reach the origin is refused before it is taken.
    async fn check_writable(&self, _bucket: &str, _key: &str) -> Result<()> {
        Ok(())
    }

    /// One page of an S3-style listing: keys are relative to the bucket, sorted, after
    /// `start_after`, at most `max_keys` entries (objects plus common prefixes).
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage>;

    async fn bucket_exists(&self, bucket: &str) -> Result<bool>;

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>>;

    async fn create_bucket(&self, bucket: &str) -> Result<()>;

    async fn delete_bucket(&self, bucket: &str) -> Result<()>;
}
