//! Client subcommands over a node's S3 endpoint, through `object_store`'s S3 client.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Transfers at least this large show a progress bar.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Part size and parallelism of uploads.
const PUT_PART_SIZE: usize = 16 << 20;
const PUT_CONCURRENCY: usize = 8;

#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The node's S3 endpoint.
    #[arg(long, env = "CAIRN_ENDPOINT", default_value = "http://127.0.0.1:9000", global = true)]
    endpoint: String,
    #[arg(long, env = "CAIRN_ACCESS_KEY", default_value = "cairn", global = true)]
    access_key: String,
    #[arg(long, env = "CAIRN_SECRET_KEY", default_value = "cairn-secret-key", hide_env_values = true, global = true)]
    secret_key: String,
    #[arg(long, env = "CAIRN_REGION", default_value = "us-east-1", global = true)]
    region: String,
}

/// `s3://bucket/key` or `bucket/key`.
fn split_target(s: &str) -> Result<(String, String)> {
    let s = s.strip_prefix("s3://").unwrap_or(s);
    let (bucket, key) = s.split_once('/').unwrap_or((s, ""));
    if bucket.is_empty() {
        bail!("expected s3://BUCKET/KEY, got {s:?}");
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

fn store(ep: &Endpoint, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    store_with(ep, bucket, None)
}

fn store_with(ep: &Endpoint, bucket: &str, durability: Option<cairn_core::Durability>) -> Result<Arc<dyn ObjectStore>> {
    let mut headers = http::HeaderMap::new();
    if let Some(d) = durability {
        headers.insert("x-cairn-durability", http::HeaderValue::from_str(&d.to_string())?);
    }
    let s = AmazonS3Builder::new()
        .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
        .with_endpoint(&ep.endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_bucket_name(bucket)
        .with_region(&ep.region)
        .with_access_key_id(&ep.access_key)
        .with_secret_access_key(&ep.secret_key)
        .build()
        .context("building the S3 client")?;
    Ok(Arc::new(s))
}

fn progress(total: u64) -> ProgressBar {
    if total < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// s3://BUCKET/KEY
    source: String,
    /// Destination file, or `-` for stdout (default: the key's file name).
    dest: Option<String>,
    /// Only bytes FIRST-LAST (inclusive), e.g. 0-1023.
    #[arg(long)]
    range: Option<String>,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn get(a: GetArgs) -> Result<()> {
    let (bucket, key) = split_target(&a.source)?;
    let s = store(&a.endpoint, &bucket)?;
    let path = Path::parse(&key).with_context(|| format!("invalid key {key:?}"))?;
    let range = match &a.range {
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
    let result = s.get_opts(&path, GetOptions { range, ..Default::default() }).await?;
    let len = result.range.end - result.range.start;
    let dest = a.dest.unwrap_or_else(|| key.rsplit('/').next().unwrap_or("object").to_owned());
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if dest == "-" {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(tokio::fs::File::create(&dest).await.with_context(|| format!("creating {dest}"))?)
    };
    let pb = if dest == "-" { ProgressBar::hidden() } else { progress(len) };
    let mut stream = result.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        out.write_all(&chunk).await?;
        written += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    out.flush().await?;
    pb.finish_and_clear();
    if written != len {
        bail!("short read: got {written} of {len} bytes");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PutArgs {
    /// Local file.
    source: PathBuf,
    /// s3://BUCKET/KEY (a trailing '/' appends the file name).
    dest: String,
    /// Acknowledge at: local (on the node's disk), replicated (on several nodes' disks) or
    /// origin (in object storage); default: the origin's configured durability.
    #[arg(long)]
    durability: Option<cairn_core::Durability>,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn put(a: PutArgs) -> Result<()> {
    let (bucket, mut key) = split_target(&a.dest)?;
    if key.is_empty() || key.ends_with('/') {
        let name = a.source.file_name().context("source has no file name")?.to_string_lossy();
        key.push_str(&name);
    }
    let s = store_with(&a.endpoint, &bucket, a.durability)?;
    let path = Path::parse(&key).with_context(|| format!("invalid key {key:?}"))?;
    let mut file = tokio::fs::File::open(&a.source).await.with_context(|| format!("opening {}", a.source.display()))?;
    let total = file.metadata().await?.len();
    let pb = progress(total);
    if total <= PUT_PART_SIZE as u64 {
        let mut buf = Vec::with_capacity(total as usize);
        file.read_to_end(&mut buf).await?;
        s.put(&path, buf.into()).await?;
    } else {
        let upload = s.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PUT_PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(PUT_CONCURRENCY).await?;
            w.write(&buf[..n]);
            pb.inc(n as u64);
        }
        w.finish().await?;
    }
    pb.finish_and_clear();
    println!("uploaded {} bytes to s3://{bucket}/{key}", total);
    Ok(())
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// s3://BUCKET[/PREFIX]
    target: String,
    /// List every key under the prefix instead of one level.
    #[arg(long, short)]
    recursive: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub async fn ls(a: LsArgs) -> Result<()> {
    let (bucket, prefix) = split_target(&a.target)?;
    let s = store(&a.endpoint, &bucket)?;
    let p = (!prefix.is_empty()).then(|| Path::from(prefix.trim_end_matches('/')));
    if a.recursive {
        let mut list = s.list(p.as_ref());
        while let Some(m) = list.next().await {
            let m = m?;
            println!("{:>14} {} {}", m.size, m.last_modified.format("%Y-%m-%d %H:%M:%S"), m.location);
        }
    } else {
        let r = s.list_with_delimiter(p.as_ref()).await?;
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
    let (bucket, key) = split_target(&a.target)?;
    let s = store(&a.endpoint, &bucket)?;
    let path = Path::parse(&key).with_context(|| format!("invalid key {key:?}"))?;
    let m = s.head(&path).await?;
    println!("key:           s3://{bucket}/{}", m.location);
    println!("size:          {}", m.size);
    println!("etag:          {}", m.e_tag.unwrap_or_default());
    println!("last-modified: {}", m.last_modified.to_rfc3339());
    Ok(())
}
