//! Bucket commands (`mb`, `rb`, `ls` without a target) and `rm`, one key or a whole prefix with
//! parallel deletes.

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::client::{Endpoint, Target, store};
use crate::errors;
use crate::transfer::{DEFAULT_JOBS, count};

#[derive(clap::Args)]
pub struct MbArgs {
    /// s3://BUCKET to create (on an account-mode origin: a folder of a file:// origin, a bucket
    /// or container of the account).
    target: String,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(clap::Args)]
pub struct RbArgs {
    /// s3://BUCKET to remove; it must be empty unless --force.
    target: String,
    /// Delete every object in the bucket first.
    #[arg(long)]
    force: bool,
    /// Deletes sent at once (with --force).
    #[arg(long, short, default_value_t = DEFAULT_JOBS)]
    jobs: usize,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// s3://BUCKET/KEY, or s3://BUCKET/PREFIX with --recursive.
    target: String,
    /// Delete every object under the prefix (a folder: s3://b/p deletes p/...).
    #[arg(long, short)]
    recursive: bool,
    /// Deletes sent at once (with --recursive).
    #[arg(long, short, default_value_t = DEFAULT_JOBS)]
    jobs: usize,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// `s3://BUCKET` (a trailing '/' is fine, a key is not).
fn bucket_only(s: &str, cmd: &str) -> Result<String> {
    let t = Target::parse(s)?;
    if !t.key.is_empty() {
        bail!("{cmd} takes s3://BUCKET, not a key ({s})");
    }
    Ok(t.bucket)
}

pub async fn mb(a: MbArgs) -> Result<()> {
    let bucket = bucket_only(&a.target, "mb")?;
    let s3 = a.endpoint.s3()?;
    // The node answers success for a bucket its caller already has (us-east-1 semantics), so
    // ask first to say which it was.
    let head = s3.send(http::Method::HEAD, Some(&bucket), "").await?;
    if head.status.is_success() {
        println!("bucket {bucket:?} already exists");
        return Ok(());
    }
    let a2 = s3.send(http::Method::PUT, Some(&bucket), "").await?;
    if a2.status.is_success() {
        println!("created s3://{bucket}");
        return Ok(());
    }
    let (code, _) = a2.error();
    if code == "InvalidBucketName" {
        return Err(errors::invalid_bucket(&bucket));
    }
    Err(s3.refused(&a2, &format!("mb s3://{bucket}")))
}

pub async fn rb(a: RbArgs) -> Result<()> {
    let bucket = bucket_only(&a.target, "rb")?;
    let s3 = a.endpoint.s3()?;
    let mut deleted = 0;
    if a.force {
        s3.check_bucket(&bucket).await?;
        deleted = delete_prefix(&a.endpoint, &bucket, "", a.jobs).await?;
    }
    let r = s3.send(http::Method::DELETE, Some(&bucket), "").await?;
    if r.status.is_success() {
        if a.force {
            println!("deleted {}; removed s3://{bucket}", count(deleted, "object"));
        } else {
            println!("removed s3://{bucket}");
        }
        return Ok(());
    }
    match r.error().0.as_str() {
        "NoSuchBucket" => bail!("bucket {bucket:?} does not exist"),
        "BucketNotEmpty" => {
            bail!("bucket {bucket:?} is not empty (remove it with everything in it: cairn rb --force s3://{bucket})")
        }
        _ => Err(s3.refused(&r, &format!("rb s3://{bucket}"))),
    }
}

pub async fn rm(a: RmArgs) -> Result<()> {
    let t = Target::parse(&a.target)?;
    let ep = &a.endpoint;
    ep.s3()?.check_bucket(&t.bucket).await?;
    if a.recursive {
        let prefix = t.folder();
        let n = delete_prefix(ep, &t.bucket, &prefix, a.jobs).await?;
        println!("deleted {} under s3://{}/{prefix}", count(n, "object"), t.bucket);
        return Ok(());
    }
    if t.key.is_empty() || t.key.ends_with('/') {
        bail!("{t} names a prefix, not an object (add --recursive to delete everything under it)");
    }
    let s = store(ep, &t.bucket)?;
    let path = t.path()?;
    // S3 answers a delete of a missing key with success; say so instead of pretending.
    if let Err(e) = s.head(&path).await {
        if matches!(e, object_store::Error::NotFound { .. }) {
            let under = s.list(Some(&path)).next().await.is_some();
            if under {
                bail!(
                    "object {t} does not exist, but objects are under {t}/ (delete them with: cairn rm --recursive {t})"
                );
            }
        }
        return Err(errors::from_store(e, ep, &t.bucket, &t.key));
    }
    s.delete(&path).await.map_err(|e| errors::from_store(e, ep, &t.bucket, &t.key))?;
    println!("deleted {t}");
    Ok(())
}

/// Deletes every object under `prefix` ("" or ending in '/'), `jobs` at a time, page by page
/// of the listing; the number deleted. Keys are deleted as stored, folder markers included.
async fn delete_prefix(ep: &Endpoint, bucket: &str, prefix: &str, jobs: usize) -> Result<u64> {
    let s3 = ep.s3()?;
    let mut deleted = 0u64;
    let mut token: Option<String> = None;
    loop {
        let (page, next) = s3.list_page(bucket, prefix, token.as_deref()).await?;
        let s3 = &s3;
        deleted += futures::stream::iter(page)
            .map(|o| async move { s3.delete_object(bucket, &o.key).await.map(|()| 1u64) })
            .buffer_unordered(jobs.max(1))
            .try_fold(0u64, |n, one| async move { Ok(n + one) })
            .await?;
        match next {
            Some(t) => token = Some(t),
            None => return Ok(deleted),
        }
    }
}

pub async fn list_buckets(ep: &Endpoint) -> Result<()> {
    for b in ep.s3()?.list_buckets().await? {
        // `2026-11-30T20:11:03.000Z` as `2026-11-30 20:11:03`, as `aws s3 ls` shows it.
        let when = b.created.get(..19).map(|d| d.replace('T', " ")).unwrap_or_default();
        println!("{when:19} {}", b.name);
    }
    Ok(())
}
