//! `cairn-emu`: an S3 server on a local folder that behaves like cloud object storage, for
//! benchmarks.
//!
//! Cloud object storage answers each request after a first-byte latency of tens of milliseconds
//! and streams each connection at tens of MB/s, while its aggregate bandwidth is limited only by
//! the client's network. A loopback origin has neither property, so a cache tuned against it
//! (one chunk fetch at a time, a short readahead) looks fast and is slow against the real thing.
//! This server adds both, and costs little CPU itself, so that the machine's cores measure the
//! client and not the origin:
//!
//! - every request waits `--latency` before it is handled (default 30 ms);
//! - every connection is paced to `--bandwidth` in each direction (default 60 MB/s), with no
//!   aggregate limit;
//! - the S3 operations are `s3s-fs`'s (buckets are folders under `--root`, path-style requests,
//!   SigV4 with one access key), except that object bodies are read in 1 MiB pieces off the
//!   runtime's threads instead of 4 KiB ones;
//! - files copied into a bucket folder by other means are indexed at start (their MD5 computed
//!   once), so no request hashes a whole object.

use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::{Digest, Md5};
use s3s::dto::{GetObjectInput, GetObjectOutput, StreamingBlob};
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Size of the pieces an object body is read and sent in.
const BODY_PIECE: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(version, about = "An S3 server on a folder with cloud-like latency and per-connection bandwidth")]
struct Opt {
    /// Folder holding one sub-folder per bucket.
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Time every request waits before it is handled (its first-byte latency).
    #[arg(long, default_value = "30ms")]
    latency: humantime::Duration,
    /// Bytes per second of each connection in each direction (e.g. 60MB, 1GiB; 0 = unlimited).
    #[arg(long, default_value = "60MB")]
    bandwidth: String,
    /// The access key requests are signed with.
    #[arg(long, default_value = "cairn-emu")]
    access_key: String,
    /// The secret key requests are signed with.
    #[arg(long, default_value = "cairn-emu-secret")]
    secret_key: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let opt = Opt::parse();
    let bandwidth = parse_rate(&opt.bandwidth).with_context(|| format!("--bandwidth {}", opt.bandwidth))?;
    std::fs::create_dir_all(&opt.root).with_context(|| format!("creating {}", opt.root.display()))?;
    let root = opt.root.canonicalize()?;
    let indexed = index(&root)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(opt, root, bandwidth, indexed))
}

async fn serve(opt: Opt, root: PathBuf, bandwidth: u64, indexed: usize) -> Result<()> {
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(Emu { fs, root: root.clone() });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(opt.access_key.clone(), opt.secret_key.clone()));
    let service = builder.build();
    let listener = TcpListener::bind(opt.listen).await.with_context(|| format!("binding {}", opt.listen))?;
    let latency: Duration = opt.latency.into();
    println!(
        "cairn-emu listening on http://{} (root {}, {} objects indexed, latency {:?}, {} per connection)",
        listener.local_addr()?,
        root.display(),
        indexed,
        latency,
        if bandwidth == 0 { "unlimited".to_owned() } else { format!("{bandwidth} B/s") }
    );
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let service = service.clone();
                async move {
                    tokio::time::sleep(latency).await;
                    hyper::service::Service::call(&service, req).await
                }
            });
            let io = TokioIo::new(Paced::new(socket, bandwidth));
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(io, svc).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// `60MB`, `1GiB`, `500000` (bytes per second); `0` means unlimited.
fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim().trim_end_matches("/s");
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("not a number: {num:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => anyhow::bail!("unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((num * mult) as u64)
}

/// Where `s3s-fs` keeps what it knows of an object (its ETag among others).
fn internal_info_path(root: &Path, bucket: &str, key: &str) -> PathBuf {
    let enc = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    root.join(format!(".bucket-{}.object-{}.internal.json", enc(bucket), enc(key)))
}

/// Computes the MD5 ETag of every object file that has none recorded (or an older one than the
/// file), so requests never hash whole objects. Returns how many objects there are.
fn index(root: &Path) -> Result<usize> {
    let mut count = 0;
    for bucket in std::fs::read_dir(root)? {
        let bucket = bucket?;
        let name = bucket.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !bucket.file_type()?.is_dir() {
            continue;
        }
        let mut stack = vec![bucket.path()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let ty = entry.file_type()?;
                if ty.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                if !ty.is_file() {
                    continue;
                }
                count += 1;
                let path = entry.path();
                let key = path.strip_prefix(bucket.path())?.to_string_lossy().into_owned();
                let info = internal_info_path(root, &name, &key);
                let modified = entry.metadata()?.modified()?;
                let fresh = std::fs::metadata(&info).and_then(|m| m.modified()).is_ok_and(|t| t >= modified);
                if fresh {
                    continue;
                }
                let mut file = std::fs::File::open(&path)?;
                let mut md5 = Md5::new();
                let mut buf = vec![0u8; BODY_PIECE];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    md5.update(&buf[..n]);
                }
                let json = serde_json::json!({ "e_tag": hex::encode(md5.finalize()) });
                std::fs::write(&info, serde_json::to_vec(&json)?)?;
            }
        }
    }
    Ok(count)
}

/// `s3s-fs` with object bodies read in large pieces on blocking threads.
struct Emu {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

/// Streams `len` bytes of `path` from `start` in [`BODY_PIECE`] pieces, read ahead by a few.
fn file_body(path: PathBuf, start: u64, len: u64) -> StreamingBlob {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let read = || -> io::Result<std::fs::File> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(start))?;
            Ok(f)
        };
        let mut file = match read() {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(BODY_PIECE);
            let mut buf = BytesMut::zeroed(n);
            let piece = file.read_exact(&mut buf).map(|()| buf.freeze());
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
            left -= n as u64;
        }
    });
    StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The S3 operations: `s3s-fs`'s, with GET bodies from [`Emu::get_object_body`].
macro_rules! s3_impl {
    ($($op:ident($input:ident) -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Emu {
            $(
                async fn $op(&self, req: S3Request<s3s::dto::$input>) -> S3Result<S3Response<s3s::dto::$output>> {
                    self.fs.$op(req).await
                }
            )*

            async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
                self.get_object_body(req).await
            }
        }
    };
}

s3_impl! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    put_object(PutObjectInput) -> PutObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
}

impl Emu {
    /// `s3s-fs`'s answer (headers, range checks, ETag) with the body read in large pieces.
    async fn get_object_body(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        let mut resp = self.fs.get_object(req).await?;
        let len = resp.output.content_length.unwrap_or(0).max(0) as u64;
        // "bytes FIRST-LAST/SIZE" when ranged; the whole file otherwise.
        let start = match &resp.output.content_range {
            Some(r) => r
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| s3s::s3_error!(InternalError, "unexpected Content-Range {r}"))?,
            None => 0,
        };
        resp.output.body = Some(file_body(path, start, len));
        Ok(resp)
    }
}

/// A token bucket: `rate` bytes per second, bursts of at most `burst`.
struct Pace {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Pace {
    fn new(rate: u64) -> Self {
        let rate = rate as f64;
        // 10 ms worth, at least 64 KiB: few timer wake-ups, and smooth at the scale of a request.
        let burst = (rate * 0.01).max(65536.0);
        Self { rate, burst, tokens: burst, last: Instant::now(), sleep: None }
    }

    /// How many of `want` bytes may move now; `Pending` (with a timer set) when none.
    fn poll_allow(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        if self.rate == 0.0 || want == 0 {
            return Poll::Ready(want);
        }
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
            self.last = now;
            // Wait for a useful amount rather than trickling single bytes.
            let need = (want as f64).min(16384.0);
            if self.tokens >= need {
                return Poll::Ready((self.tokens as usize).min(want));
            }
            let wait = Duration::from_secs_f64((need - self.tokens) / self.rate);
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn spend(&mut self, n: usize) {
        if self.rate > 0.0 {
            self.tokens -= n as f64;
        }
    }
}

/// A connection paced in each direction.
struct Paced<S> {
    inner: S,
    read: Pace,
    write: Pace,
}

impl<S> Paced<S> {
    fn new(inner: S, rate: u64) -> Self {
        Self { inner, read: Pace::new(rate), write: Pace::new(rate) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = ready!(this.read.poll_allow(cx, buf.remaining()));
        let mut sub = ReadBuf::new(buf.initialize_unfilled_to(n));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
        let got = sub.filled().len();
        buf.advance(got);
        this.read.spend(got);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.write.poll_allow(cx, buf.len()));
        let wrote = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
        this.write.spend(wrote);
        Poll::Ready(Ok(wrote))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("60MB").ok(), Some(60_000_000));
        assert_eq!(parse_rate("60MB/s").ok(), Some(60_000_000));
        assert_eq!(parse_rate("1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_rate("0").ok(), Some(0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("3 parsecs").is_err());
    }

    #[tokio::test]
    async fn a_paced_connection_keeps_to_its_rate() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut paced = Paced::new(a, 4_000_000);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            b.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        let start = Instant::now();
        let data = vec![7u8; 2_000_000];
        paced.write_all(&data).await.expect("write");
        paced.shutdown().await.expect("shutdown");
        let elapsed = start.elapsed();
        assert_eq!(reader.await.expect("join").expect("read"), 2_000_000);
        // 2 MB at 4 MB/s, less the first burst (64 KiB): just under half a second.
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}
