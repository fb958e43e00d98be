//! [`Origin`] over `object_store`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::OriginConfig;
use cairn_core::key::{FOLDER_MARKER, is_folder_marker};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart,
};
use parking_lot::Mutex;

use crate::list::{ListPage, ListedObject, paginate};
use crate::{BodyStream, BucketInfo, Error, ErrorKind, ObjectAttrs, ObjectInfo, Origin, PutInfo, Result, WriteAttrs};

/// Bodies up to this size go up in one PUT; larger ones as a multipart upload.
const SINGLE_PUT_MAX: usize = 8 << 20;
/// Part size of multipart uploads to the origin.
const UPLOAD_PART_SIZE: usize = 16 << 20;
/// Parts of one upload in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;
/// Extended attribute of a `file://` origin file written through cairn: its content's MD5, its
/// content type and attributes, and the file's own ETag when they were written (a file changed
/// since, in place, keeps the attribute but no longer matches it, so it is ignored).
const LOCAL_XATTR: &str = "user.cairn.attrs";
/// Largest extended attribute value Linux takes.
const XATTR_MAX: usize = 64 * 1024;
/// User metadata key (at S3, Azure and GCS origins) holding what their own attributes cannot:
/// `Expires` and the checksums, as JSON. A C#-style identifier, as Azure requires.
const RESERVED_METADATA: &str = "cairnattrs";

/// What [`LOCAL_XATTR`] holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct LocalAttrs {
    /// The file's ETag (inode, size, mtime) right after cairn wrote it.
    etag: String,
    md5: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    attrs: ObjectAttrs,
}

/// The extended attribute of `file`, if cairn wrote one.
fn read_local_attrs(file: &std::path::Path) -> Option<LocalAttrs> {
    let mut buf = vec![0u8; XATTR_MAX];
    let n = rustix::fs::getxattr(file, LOCAL_XATTR, &mut buf[..]).ok()?;
    serde_json::from_slice(&buf[..n]).ok()
}

/// What an origin cannot hold as an attribute of its own, under [`RESERVED_METADATA`].
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Reserved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    checksums: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Local,
    Azure,
    S3,
    Gcs,
}

enum Mode {
    /// One container/bucket (and prefix) exposed under `bucket`.
    Single { bucket: String, store: Arc<dyn ObjectStore>, prefix: Path },
    /// Bucket names pass through; stores are built per bucket on first use.
    Account { stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>> },
}

pub struct StoreOrigin {
    name: String,
    scheme: Scheme,
    /// Root folder for `file://` origins.
    local_root: Option<PathBuf>,
    options: BTreeMap<String, String>,
    mode: Mode,
}

impl StoreOrigin {
    pub fn from_config(cfg: &OriginConfig) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorKind::Backend, m);
        let (scheme, rest) = if let Some(r) = cfg.url.strip_prefix("file://") {
            (Scheme::Local, r)
        } else if let Some(r) = ["az://", "azure://", "abfs://"].iter().find_map(|p| cfg.url.strip_prefix(p)) {
            (Scheme::Azure, r)
        } else if let Some(r) = cfg.url.strip_prefix("s3://") {
            (Scheme::S3, r)
        } else if let Some(r) = cfg.url.strip_prefix("gs://") {
            (Scheme::Gcs, r)
        } else {
            return Err(bad(format!("unsupported origin url {:?}", cfg.url)));
        };
        let mut origin = Self {
            name: cfg.display_name(),
            scheme,
            local_root: None,
            options: cfg.options.clone(),
            mode: Mode::Account { stores: Mutex::new(HashMap::new()) },
        };
        if scheme == Scheme::Local {
            let root = PathBuf::from(rest);
            std::fs::create_dir_all(&root)
                .map_err(|e| bad(format!("cannot create origin folder {}: {e}", root.display())))?;
            let root = root
                .canonicalize()
                .map_err(|e| bad(format!("cannot resolve origin folder {}: {e}", root.display())))?;
            origin.local_root = Some(root);
        }
        if let Some(bucket) = &cfg.bucket {
            let (store, prefix) = match scheme {
                Scheme::Local => (origin.build_local(None)?, Path::default()),
                _ => {
                    let rest = rest.trim_matches('/');
                    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    if container.is_empty() {
                        return Err(bad(format!(
                            "origin {:?} serves bucket {bucket:?} but its url {:?} names no container/bucket",
                            origin.name, cfg.url
                        )));
                    }
                    let prefix = Path::parse(prefix).map_err(|e| bad(format!("bad origin prefix {prefix:?}: {e}")))?;
                    (origin.build_cloud(container)?, prefix)
                }
            };
            origin.mode = Mode::Single { bucket: bucket.clone(), store, prefix };
        } else if scheme != Scheme::Local && !rest.trim_matches('/').is_empty() {
            return Err(bad(format!(
                "origin url {:?} names a container/bucket: set `bucket` to expose it, or use {}:// alone for account mode",
                cfg.url,
                cfg.url.split("://").next().unwrap_or_default()
            )));
        }
        Ok(origin)
    }

    fn build_local(&self, bucket: Option<&str>) -> Result<Arc<dyn ObjectStore>> {
        let root = self.local_root.clone().unwrap_or_default();
        let dir = match bucket {
            Some(b) => root.join(b),
            None => root,
        };
        // Deletes remove the folders they leave empty, as an object store has no empty folders
        // to list (up to the store's root, which stays).
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| Error::new(ErrorKind::Backend, format!("origin folder {}: {e}", dir.display())))?
            .with_automatic_cleanup(true);
        Ok(Arc::new(fs))
    }

    /// cairn retries above this layer (the uploader until the origin takes a write, clients on
    /// read errors), so a request fails after a few quick retries instead of minutes.
    fn build_cloud(&self, container: &str) -> Result<Arc<dyn ObjectStore>> {
        let err = |e: object_store::Error| Error::new(ErrorKind::Backend, format!("origin {}: {e}", self.name));
        let store: Arc<dyn ObjectStore> = match self.scheme {
            Scheme::Azure => {
                let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container).with_retry(origin_retry());
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(err)?, v);
                }
                Arc::new(b.build().map_err(err)?)
            }
            Scheme::S3 => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(container).with_retry(origin_retry());
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(err)?, v);
                }
                Arc::new(b.build().map_err(err)?)
            }
            Scheme::Gcs => {
                let mut b =
                    GoogleCloudStorageBuilder::from_env().with_bucket_name(container).with_retry(origin_retry());
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(err)?, v);
                }
                Arc::new(b.build().map_err(err)?)
            }
            Scheme::Local => self.build_local(Some(container))?,
        };
        Ok(store)
    }

    /// The store and path prefix serving `bucket`.
    fn store(&self, bucket: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        match &self.mode {
            Mode::Single { bucket: b, store, prefix } => {
                if b == bucket {
                    Ok((store.clone(), prefix.clone()))
                } else {
                    Err(Error::new(ErrorKind::NoSuchBucket, format!("bucket {bucket:?} does not exist")))
                }
            }
            Mode::Account { stores } => {
                if !cairn_core::key::is_valid_bucket(bucket) {
                    return Err(Error::new(ErrorKind::NoSuchBucket, format!("bucket {bucket:?} does not exist")));
                }
                if let Some(s) = stores.lock().get(bucket) {
                    return Ok((s.clone(), Path::default()));
                }
                if let Some(dir) = self.local_bucket_dir(bucket)
                    && !dir.is_dir()
                {
                    return Err(Error::new(ErrorKind::NoSuchBucket, format!("bucket {bucket:?} does not exist")));
                }
                let s = self.build_cloud(bucket)?;
                stores.lock().insert(bucket.to_owned(), s.clone());
                Ok((s, Path::default()))
            }
        }
    }

    /// The origin path of an object key. A folder marker (`a/b/`) cannot be a path of its own
    /// (object_store drops the trailing '/', and on a folder origin `a/b` is the folder), so it is
    /// stored inside its folder as [`FOLDER_MARKER`].
    fn path(prefix: &Path, key: &str) -> Result<Path> {
        let rel = Path::parse(key)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("object key {key:?} cannot be stored: {e}")))?;
        if rel.as_ref().is_empty() {
            return Err(Error::new(ErrorKind::InvalidKey, "object key is empty"));
        }
        let rel = if is_folder_marker(key) { rel.join(FOLDER_MARKER) } else { rel };
        Ok(if prefix.as_ref().is_empty() { rel } else { Path::from_iter(prefix.parts().chain(rel.parts())) })
    }

    fn relative(prefix: &Path, full: &Path) -> String {
        let s = full.as_ref();
        let p = prefix.as_ref();
        if p.is_empty() { s.to_owned() } else { s.strip_prefix(p).unwrap_or(s).trim_start_matches('/').to_owned() }
    }

    /// The object key stored at an origin path under `prefix`: the inverse of [`Self::path`].
    fn object_key(prefix: &Path, full: &Path) -> String {
        let rel = Self::relative(prefix, full);
        match rel.strip_suffix(FOLDER_MARKER) {
            Some(folder) if folder.ends_with('/') => folder.to_owned(),
            _ => rel,
        }
    }

    /// Whether an account-mode local bucket folder exists; errors mean NoSuchBucket for callers.
    fn local_bucket_dir(&self, bucket: &str) -> Option<PathBuf> {
        match (&self.mode, &self.local_root) {
            (Mode::Account { .. }, Some(root)) if cairn_core::key::is_valid_bucket(bucket) => Some(root.join(bucket)),
            _ => None,
        }
    }

    async fn require_bucket(&self, bucket: &str) -> Result<()> {
        if self.bucket_exists(bucket).await? {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NoSuchBucket, format!("bucket {bucket:?} does not exist")))
        }
    }

    fn map_err(&self, e: object_store::Error, bucket: &str, key: &str) -> Error {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => Error::new(ErrorKind::NoSuchKey, format!("{bucket}/{key} does not exist")),
            E::Precondition { .. } => {
                Error::new(ErrorKind::VersionChanged, format!("{bucket}/{key} changed at the origin"))
            }
            E::InvalidPath { source } => Error::new(ErrorKind::InvalidKey, format!("invalid key {key:?}: {source}")),
            // A key whose path segment the origin's file system cannot name (ENAMETOOLONG).
            other if self.scheme == Scheme::Local && other.to_string().contains("os error 36") => Error::new(
                ErrorKind::InvalidKey,
                format!("object key {key:?} has a path segment too long for the origin"),
            ),
            // EEXIST, ENOTDIR, EISDIR: a folder where the key needs a file, or the reverse.
            other
                if self.scheme == Scheme::Local
                    && ["os error 17", "os error 20", "os error 21"].iter().any(|c| other.to_string().contains(c)) =>
            {
                key_conflict(key, None)
            }
            other => Error::new(ErrorKind::Backend, format!("origin {} failed on {bucket}/{key}: {other}", self.name)),
        }
    }

    /// On a folder origin: an existing object whose key is a folder of `key` (`a/b` for
    /// `a/b/c`), or a folder at `key` itself.
    async fn local_conflict(&self, bucket: &str, key: &str) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let dir = match &self.mode {
            Mode::Single { .. } => root.clone(),
            Mode::Account { .. } => match self.local_bucket_dir(bucket) {
                Some(d) => d,
                None => return Ok(()),
            },
        };
        let path = Self::path(&Path::default(), key)?;
        let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_owned()).collect();
        let mut at = dir;
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let Ok(meta) = tokio::fs::symlink_metadata(&at).await else { return Ok(()) };
            let last = i + 1 == parts.len();
            if !last && !meta.is_dir() {
                return Err(key_conflict(key, Some(&parts[..=i].join("/"))));
            }
            if last && meta.is_dir() {
                return Err(key_conflict(key, None));
            }
        }
        Ok(())
    }

    fn info(meta: &object_store::ObjectMeta, attributes: Option<&Attributes>) -> ObjectInfo {
        ObjectInfo {
            size: meta.size,
            etag: meta.e_tag.clone().or_else(|| meta.version.clone()).unwrap_or_else(|| {
                format!("\"{}-{}\"", meta.last_modified.timestamp_nanos_opt().unwrap_or(0), meta.size)
            }),
            last_modified: meta.last_modified,
            content_type: attributes.and_then(|a| a.get(&Attribute::ContentType)).map(|v| v.to_string()),
            attrs: attributes.map(Self::object_attrs).unwrap_or_default(),
        }
    }

    /// The attributes an origin returned, as cairn keeps them.
    fn object_attrs(a: &Attributes) -> ObjectAttrs {
        let get = |k: &Attribute| a.get(k).map(|v| v.to_string());
        let mut out = ObjectAttrs {
            cache_control: get(&Attribute::CacheControl),
            content_disposition: get(&Attribute::ContentDisposition),
            content_encoding: get(&Attribute::ContentEncoding),
            content_language: get(&Attribute::ContentLanguage),
            ..Default::default()
        };
        for (k, v) in a.iter() {
            if let Attribute::Metadata(name) = k {
                if name.eq_ignore_ascii_case(RESERVED_METADATA) {
                    let r: Reserved = serde_json::from_str(v.as_ref()).unwrap_or_default();
                    out.expires = r.expires;
                    out.checksums = r.checksums;
                } else {
                    out.metadata.insert(name.to_ascii_lowercase(), v.to_string());
                }
            }
        }
        out
    }

    /// `object_store` attributes for a write to a cloud origin.
    fn attributes(content_type: Option<String>, attrs: &ObjectAttrs) -> Attributes {
        let mut a = Attributes::new();
        let mut set = |k: Attribute, v: &Option<String>| {
            if let Some(v) = v {
                a.insert(k, v.clone().into());
            }
        };
        set(Attribute::ContentType, &content_type);
        set(Attribute::CacheControl, &attrs.cache_control);
        set(Attribute::ContentDisposition, &attrs.content_disposition);
        set(Attribute::ContentEncoding, &attrs.content_encoding);
        set(Attribute::ContentLanguage, &attrs.content_language);
        for (k, v) in &attrs.metadata {
            a.insert(Attribute::Metadata(k.clone().into()), v.clone().into());
        }
        if attrs.expires.is_some() || !attrs.checksums.is_empty() {
            let r = Reserved { expires: attrs.expires.clone(), checksums: attrs.checksums.clone() };
            if let Ok(json) = serde_json::to_string(&r) {
                a.insert(Attribute::Metadata(RESERVED_METADATA.into()), json.into());
            }
        }
        a
    }

    /// The folder a `file://` origin keeps `bucket` in.
    fn local_dir(&self, bucket: &str) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(match &self.mode {
            Mode::Single { .. } => root.clone(),
            Mode::Account { .. } => root.join(bucket),
        })
    }

    /// The file of an object of a `file://` origin.
    fn local_file(dir: &std::path::Path, path: &Path) -> Option<PathBuf> {
        LocalFileSystem::new_with_prefix(dir).ok()?.path_to_filesystem(path).ok()
    }

    /// Adds what cairn stored in a `file://` origin file's extended attribute to its metadata,
    /// if the file is still as cairn wrote it.
    async fn with_local_attrs(&self, bucket: &str, path: &Path, mut info: ObjectInfo) -> ObjectInfo {
        let Some(dir) = self.local_dir(bucket) else { return info };
        let path = path.clone();
        let found =
            tokio::task::spawn_blocking(move || Self::local_file(&dir, &path).and_then(|f| read_local_attrs(&f)))
                .await
                .ok()
                .flatten();
        if let Some(la) = found
            && la.etag == info.etag
        {
            info.content_type = la.content_type;
            info.attrs = la.attrs;
            info.attrs.etag = Some(format!("\"{}\"", la.md5));
        }
        info
    }

    /// Records the MD5, content type and attributes of a file cairn just wrote.
    async fn write_local_attrs(&self, bucket: &str, path: &Path, la: LocalAttrs) {
        let Some(dir) = self.local_dir(bucket) else { return };
        let path = path.clone();
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = Self::local_file(&dir, &path).ok_or_else(|| std::io::Error::other("no file path"))?;
            let value = serde_json::to_vec(&la).map_err(std::io::Error::other)?;
            rustix::fs::setxattr(&file, LOCAL_XATTR, &value, rustix::fs::XattrFlags::empty())?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(origin = %self.name, bucket, error = %e, "could not store an object's attributes in its file's extended attribute; it keeps none");
        }
    }
}

impl StoreOrigin {
    /// After a PUT: on a folder origin, records the MD5 and attributes with the file and answers
    /// the MD5 as ETag.
    async fn put_done(
        &self,
        bucket: &str,
        path: &Path,
        etag: Option<String>,
        md5: Option<md5::Md5>,
        content_type: Option<String>,
        attrs: &WriteAttrs,
    ) -> PutInfo {
        use md5::Digest as _;
        let (Some(md5), Some(native)) = (md5, etag.clone()) else { return PutInfo { etag } };
        let md5 = hex::encode(md5.finalize());
        let mut attrs = attrs.lock().clone();
        attrs.etag = None;
        self.write_local_attrs(bucket, path, LocalAttrs { etag: native, md5: md5.clone(), content_type, attrs }).await;
        PutInfo { etag: Some(format!("\"{md5}\"")) }
    }

    /// Replaces the ETags of files cairn wrote to a folder origin with their content's MD5.
    async fn local_listing_etags(&self, bucket: &str, root: &Path, objects: &mut [ListedObject]) {
        let Some(dir) = self.local_dir(bucket) else { return };
        let wanted: Vec<(Path, Option<String>)> =
            objects.iter().filter_map(|o| Self::path(root, &o.key).ok().map(|p| (p, o.etag.clone()))).collect();
        let found = tokio::task::spawn_blocking(move || {
            let Ok(fs) = LocalFileSystem::new_with_prefix(&dir) else { return Vec::new() };
            wanted
                .into_iter()
                .map(|(p, etag)| {
                    let la = fs.path_to_filesystem(&p).ok().and_then(|f| read_local_attrs(&f));
                    la.filter(|la| Some(&la.etag) == etag.as_ref()).map(|la| format!("\"{}\"", la.md5))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for (o, md5) in objects.iter_mut().zip(found) {
            if md5.is_some() {
                o.etag = md5;
            }
        }
    }
}

/// The error for a key a folder origin cannot store beside an existing one.
fn key_conflict(key: &str, object: Option<&str>) -> Error {
    let why = match object {
        Some(o) => format!("the object {o:?} exists, and a folder origin cannot also hold keys under it"),
        None => "the origin is a folder, where a key cannot be both an object and a folder of other keys".to_owned(),
    };
    Error::new(ErrorKind::KeyConflict, format!("object key {key:?} conflicts with an existing key: {why}"))
}

#[async_trait]
impl Origin for StoreOrigin {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_account(&self) -> bool {
        matches!(self.mode, Mode::Account { .. })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        let (store, prefix) = self.store(bucket)?;
        let path = Self::path(&prefix, key)?;
        let opts = GetOptions { head: true, ..Default::default() };
        match store.get_opts(&path, opts).await {
            Ok(r) => Ok(self.with_local_attrs(bucket, &path, Self::info(&r.meta, Some(&r.attributes))).await),
            Err(e) => {
                let err = self.map_err(e, bucket, key);
                if err.kind == ErrorKind::NoSuchKey {
                    self.require_bucket(bucket).await?;
                }
                Err(err)
            }
        }
    }

    async fn revalidate(&self, bucket: &str, key: &str, etag: &str) -> Result<Option<ObjectInfo>> {
        let (store, prefix) = self.store(bucket)?;
        let path = Self::path(&prefix, key)?;
        let opts = GetOptions { head: true, if_none_match: Some(etag.to_owned()), ..Default::default() };
        match store.get_opts(&path, opts).await {
            Ok(r) => {
                let info = Self::info(&r.meta, Some(&r.attributes));
                if info.etag == etag {
                    return Ok(None);
                }
                Ok(Some(self.with_local_attrs(bucket, &path, info).await))
            }
            Err(object_store::Error::NotModified { .. }) => Ok(None),
            Err(e) => Err(self.map_err(e, bucket, key)),
        }
    }

    async fn get_range(&self, bucket: &str, key: &str, range: Range<u64>, etag: &str) -> Result<Bytes> {
        let (store, prefix) = self.store(bucket)?;
        let path = Self::path(&prefix, key)?;
        let want = range.end - range.start;
        let opts =
            GetOptions { range: Some(GetRange::Bounded(range)), if_match: Some(etag.to_owned()), ..Default::default() };
        let r = store.get_opts(&path, opts).await.map_err(|e| self.map_err(e, bucket, key))?;
        let bytes = r.bytes().await.map_err(|e| self.map_err(e, bucket, key))?;
        if bytes.len() as u64 != want {
            // The object shrank under us without the ETag changing: never serve a short chunk.
            return Err(Error::new(
                ErrorKind::VersionChanged,
                format!("{bucket}/{key}: origin returned {} bytes for a {want}-byte range", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        mut body: BodyStream,
        content_type: Option<String>,
        attrs: WriteAttrs,
    ) -> Result<PutInfo> {
        use md5::Digest as _;
        let (store, prefix) = self.store(bucket)?;
        self.require_bucket(bucket).await?;
        let path = Self::path(&prefix, key)?;
        let local = self.scheme == Scheme::Local;
        // A folder origin keeps no attributes of its own: cairn stores them (and the MD5 the
        // client sees as ETag) in an extended attribute once the file is written.
        let mut md5 = local.then(md5::Md5::new);
        let body_err = |e: std::io::Error| Error::new(ErrorKind::Body, format!("request body failed: {e}"));
        // Small bodies: one PUT.
        let mut first: Vec<Bytes> = Vec::new();
        let mut first_len = 0usize;
        let mut ended = false;
        while first_len <= SINGLE_PUT_MAX {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(body_err)?;
                    if let Some(h) = &mut md5 {
                        h.update(&chunk);
                    }
                    first_len += chunk.len();
                    first.push(chunk);
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        // The whole body is here for a single PUT, so checksums sent as trailers are known.
        let attributes = |attrs: &WriteAttrs| {
            if local { Attributes::new() } else { Self::attributes(content_type.clone(), &attrs.lock()) }
        };
        if ended {
            let payload: PutPayload = first.into_iter().collect();
            let opts = PutOptions { attributes: attributes(&attrs), ..Default::default() };
            let r = store.put_opts(&path, payload, opts).await.map_err(|e| self.map_err(e, bucket, key))?;
            return Ok(self.put_done(bucket, &path, r.e_tag, md5, content_type, &attrs).await);
        }
        let opts = object_store::PutMultipartOptions { attributes: attributes(&attrs), ..Default::default() };
        let upload = store.put_multipart_opts(&path, opts).await.map_err(|e| self.map_err(e, bucket, key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_SIZE);
        for chunk in first {
            writer.put(chunk);
        }
        let result: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(body_err)?;
                if let Some(h) = &mut md5 {
                    h.update(&chunk);
                }
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await.map_err(|e| self.map_err(e, bucket, key))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            return Err(e);
        }
        let r = writer.finish().await.map_err(|e| self.map_err(e, bucket, key))?;
        Ok(self.put_done(bucket, &path, r.e_tag, md5, content_type, &attrs).await)
    }

    async fn check_writable(&self, bucket: &str, key: &str) -> Result<()> {
        if self.scheme == Scheme::Local { self.local_conflict(bucket, key).await } else { Ok(()) }
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let (store, prefix) = self.store(bucket)?;
        self.require_bucket(bucket).await?;
        let path = Self::path(&prefix, key)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(e, bucket, key)),
        }
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        let (store, root) = self.store(bucket)?;
        self.require_bucket(bucket).await?;
        // object_store lists whole path segments: list the deepest folder that contains every
        // key with this string prefix, then filter.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let dir_path = if dir.is_empty() {
            root.clone()
        } else {
            match Self::path(&root, dir) {
                Ok(p) => p,
                // No stored key can live under an unrepresentable folder.
                Err(_) => return Ok(ListPage::default()),
            }
        };
        let listed_prefix = (!dir_path.as_ref().is_empty()).then_some(&dir_path);
        let to_listed = |m: &object_store::ObjectMeta| ListedObject {
            key: Self::object_key(&root, &m.location),
            size: m.size,
            etag: m.e_tag.clone(),
            last_modified: m.last_modified,
        };
        let (objects, dirs) = if delimiter == Some("/") {
            let r = match store.list_with_delimiter(listed_prefix).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(ListPage::default()),
                Err(e) => return Err(self.map_err(e, bucket, prefix)),
            };
            let dirs = r.common_prefixes.iter().map(|p| format!("{}/", Self::relative(&root, p))).collect();
            (r.objects.iter().map(to_listed).collect(), dirs)
        } else {
            let all: Vec<ListedObject> = match store.list(listed_prefix).map_ok(|m| to_listed(&m)).try_collect().await {
                Ok(v) => v,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(self.map_err(e, bucket, prefix)),
            };
            (all, Vec::new())
        };
        let mut page = paginate(objects, dirs, prefix, delimiter, start_after, max_keys);
        if self.scheme == Scheme::Local {
            self.local_listing_etags(bucket, &root, &mut page.objects).await;
        }
        Ok(page)
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        match &self.mode {
            Mode::Single { bucket: b, .. } => Ok(b == bucket),
            Mode::Account { .. } => {
                if let Some(dir) = self.local_bucket_dir(bucket) {
                    return Ok(tokio::fs::metadata(&dir).await.map(|m| m.is_dir()).unwrap_or(false));
                }
                if !cairn_core::key::is_valid_bucket(bucket) {
                    return Ok(false);
                }
                let (store, _) = self.store(bucket)?;
                let mut s = store.list(None);
                match s.next().await {
                    None | Some(Ok(_)) => Ok(true),
                    Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        if msg.contains("NoSuchBucket") || msg.contains("ContainerNotFound") || msg.contains("404") {
                            Ok(false)
                        } else {
                            Err(self.map_err(e, bucket, ""))
                        }
                    }
                }
            }
        }
    }

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        match &self.mode {
            Mode::Single { bucket, .. } => Ok(vec![BucketInfo { name: bucket.clone(), created: None }]),
            Mode::Account { .. } => {
                let Some(root) = &self.local_root else {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("origin {} cannot list its containers; expose them as single buckets", self.name),
                    ));
                };
                let mut out = Vec::new();
                let mut rd = tokio::fs::read_dir(root)
                    .await
                    .map_err(|e| Error::new(ErrorKind::Backend, format!("listing {}: {e}", root.display())))?;
                while let Ok(Some(e)) = rd.next_entry().await {
                    let Ok(meta) = e.metadata().await else { continue };
                    let name = e.file_name().to_string_lossy().into_owned();
                    if meta.is_dir() && cairn_core::key::is_valid_bucket(&name) {
                        let created = meta.created().or_else(|_| meta.modified()).ok().map(DateTime::<Utc>::from);
                        out.push(BucketInfo { name, created });
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
        }
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let Some(dir) = self.local_bucket_dir(bucket) else {
            if self.bucket_exists(bucket).await? {
                return Err(Error::new(ErrorKind::BucketAlreadyExists, format!("bucket {bucket:?} already exists")));
            }
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("origin {} cannot create buckets; create the container at the origin", self.name),
            ));
        };
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::new(ErrorKind::BucketAlreadyExists, format!("bucket {bucket:?} already exists")))
            }
            Err(e) => Err(Error::new(ErrorKind::Backend, format!("creating bucket {bucket:?}: {e}"))),
        }
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let Some(dir) = self.local_bucket_dir(bucket) else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("origin {} cannot delete buckets; delete the container at the origin", self.name),
            ));
        };
        self.require_bucket(bucket).await?;
        let page = self.list(bucket, "", None, None, 1).await?;
        if !page.objects.is_empty() {
            return Err(Error::new(ErrorKind::BucketNotEmpty, format!("bucket {bucket:?} is not empty")));
        }
        // Only empty folders remain; remove them bottom-up.
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| Error::new(ErrorKind::Backend, format!("deleting bucket {bucket:?}: {e}")))?;
        if let Mode::Account { stores } = &self.mode {
            stores.lock().remove(bucket);
        }
        Ok(())
    }
}

/// Retries of one origin request inside `object_store`.
const ORIGIN_RETRIES: usize = 3;
const ORIGIN_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn origin_retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: ORIGIN_RETRIES, retry_timeout: ORIGIN_RETRY_TIMEOUT, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_markers_live_inside_their_folder() {
        let root = Path::default();
        let p = StoreOrigin::path(&root, "a/b/").expect("marker path");
        assert_eq!(p.as_ref(), "a/b/.cairn-folder");
        assert_eq!(StoreOrigin::object_key(&root, &p), "a/b/");
        let p = StoreOrigin::path(&root, "a/b").expect("object path");
        assert_eq!(p.as_ref(), "a/b");
        assert_eq!(StoreOrigin::object_key(&root, &p), "a/b");

        let prefix = Path::parse("models/llama").expect("prefix");
        let p = StoreOrigin::path(&prefix, "x/").expect("marker path");
        assert_eq!(p.as_ref(), "models/llama/x/.cairn-folder");
        assert_eq!(StoreOrigin::object_key(&prefix, &p), "x/");
        // A folder of that name is a folder, and a marker needs a folder to mark.
        let p = Path::parse("a/.cairn-folder/c").expect("path");
        assert_eq!(StoreOrigin::object_key(&root, &p), "a/.cairn-folder/c");
        let p = Path::parse(".cairn-folder").expect("path");
        assert_eq!(StoreOrigin::object_key(&root, &p), ".cairn-folder");
    }
}
