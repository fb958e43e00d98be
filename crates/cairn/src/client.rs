//! What every client subcommand shares: the endpoint and credentials, `s3://` targets, the
//! `object_store` S3 client, the progress bar; and the one-object commands `ls` and `stat`.
//! Transfers (`get`, `put`, `cp`) are in `transfer.rs`, bucket commands and `rm` in `buckets.rs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::errors;
use crate::s3req::S3Client;

/// Transfers at least this large show a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Retries of one request inside `object_store`: enough for a blip, short enough that a node
/// that went away is reported within seconds.
const RETRIES: usize = 4;
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The node's S3 endpoint.
    #[arg(long, env = "CAIRN_ENDPOINT", default_value = "http://127.0.0.1:9000", global = true)]
    endpoint: String,
    /// Access key the requests are signed with.
    #[arg(long, env = "CAIRN_ACCESS_KEY", default_value = "cairn", global = true)]
    access_key: String,
    /// Secret key the requests are signed with.
    #[arg(long, env = "CAIRN_SECRET_KEY", default_value = "cairn-secret-key", hide_env_values = true, global = true)]
    secret_key: String,
    /// Region the requests are signed for (the node's `node.region`).
    #[arg(long, env = "CAIRN_REGION", default_value = "us-east-1", global = true)]
    region: String,
}

impl Endpoint {
    pub fn url(&self) -> &str {
        &self.endpoint
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn credentials(&self) -> crate::sigv4::Credentials<'_> {
        crate::sigv4::Credentials { access_key: &self.access_key, secret_key: &self.secret_key, region: &self.region }
    }

    /// The plain-request client (bucket commands and the bucket check).
    pub fn s3(&self) -> Result<S3Client<'_>> {
        S3Client::new(self)
    }
}

/// An `s3://BUCKET/KEY` target.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub bucket: String,
    pub key: String,
}

impl Target {
    /// `s3://bucket/key` or `bucket/key`.
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("s3://").unwrap_or(s);
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("expected s3://BUCKET/KEY, got {s:?}");
        }
        Ok(Self { bucket: bucket.to_owned(), key: key.to_owned() })
    }

    /// The key as a prefix of a folder: "" or ending in '/'.
    pub fn folder(&self) -> String {
        if self.key.is_empty() || self.key.ends_with('/') { self.key.clone() } else { format!("{}/", self.key) }
    }

    pub fn path(&self) -> Result<Path> {
        Path::parse(&self.key).with_context(|| format!("invalid key {:?}", self.key))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

pub fn store(ep: &Endpoint, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    store_with(ep, bucket, None)
}

pub fn store_with(
    ep: &Endpoint,
    bucket: &str,
    durability: Option<cairn_core::Durability>,
) -> Result<Arc<dyn ObjectStore>> {
    let mut headers = http::HeaderMap::new();
    if let Some(d) = durability {
        headers.insert("x-cairn-durability", http::HeaderValue::from_str(&d.to_string())?);
    }
    let retry = object_store::RetryConfig {
        max_retries: RETRIES,
        retry_timeout: RETRY_TIMEOUT,
        backoff: object_store::BackoffConfig::default(),
    };
    let s = AmazonS3Builder::new()
        .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
        .with_retry(retry)
        .with_endpoint(&ep.endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_bucket_name(bucket)
        .with_region(&ep.region)
        .with_access_key_id(&ep.access_key)
        .with_secret_access_key(&ep.secret_key)
        .build()
        .map_err(|e| errors::bad_endpoint(&ep.endpoint, &e))?;
    Ok(Arc::new(s))
}

/// One bar over `total` bytes, drawn on stderr when it is a terminal.
pub fn progress(total: u64) -> ProgressBar {
    if total < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// s3://BUCKET[/PREFIX]; without it, the buckets.
    target: Option<String>,
    /// List every key under the prefix instead of one level.
    #[arg(long, short)]
    recursive: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn ls(a: LsArgs) -> Result<()> {
    let Some(target) = a.target.as_deref().filter(|t| !t.is_empty() && *t != "s3://") else {
        return crate::buckets::list_buckets(&a.endpoint).await;
    };
    let t = Target::parse(target)?;
    let ep = &a.endpoint;
    ep.s3()?.check_bucket(&t.bucket).await?;
    let s = store(ep, &t.bucket)?;
    let p = (!t.key.is_empty()).then(|| Path::from(t.key.trim_end_matches('/')));
    let fail = |e| errors::from_store(e, ep, &t.bucket, &t.key);
    if a.recursive {
        let mut list = s.list(p.as_ref());
        while let Some(m) = list.next().await {
            let m = m.map_err(fail)?;
            println!("{:>14} {} {}", m.size, m.last_modified.format("%Y-%m-%d %H:%M:%S"), m.location);
        }
    } else {
        let r = s.list_with_delimiter(p.as_ref()).await.map_err(fail)?;
        for d in r.common_prefixes {
            println!("{:>14} {:19} {}/", "PRE", "", d);
        }
        for m in r.objects {
            println!("{:>14} {} {}", m.size, m.last_modified.format("%Y-%m-%d %H:%M:%S"), m.location);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// s3://BUCKET/KEY
    target: String,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn stat(a: StatArgs) -> Result<()> {
    let t = Target::parse(&a.target)?;
    let ep = &a.endpoint;
    ep.s3()?.check_bucket(&t.bucket).await?;
    let s = store(ep, &t.bucket)?;
    let m = s.head(&t.path()?).await.map_err(|e| errors::from_store(e, ep, &t.bucket, &t.key))?;
    println!("key:           s3://{}/{}", t.bucket, m.location);
    println!("size:          {}", m.size);
    println!("etag:          {}", m.e_tag.unwrap_or_default());
    println!("last-modified: {}", m.last_modified.to_rfc3339());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("s3://b/a/c").expect("valid");
        assert_eq!((t.bucket.as_str(), t.key.as_str()), ("b", "a/c"));
        assert_eq!(t.folder(), "a/c/");
        assert_eq!(Target::parse("b").expect("valid").folder(), "");
        assert!(Target::parse("s3:///k").is_err());
    }
}
