//! `cairn mount s3://BUCKET[/PREFIX] DIR`: the bucket as a directory (see `cairn-fuse`). Runs in
//! the foreground until SIGTERM or SIGINT, then unmounts and exits 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_client::{Client, Config, Durability, Route};

#[derive(clap::Args)]
pub struct MountArgs {
    /// What to mount: s3://BUCKET or s3://BUCKET/PREFIX.
    source: String,
    /// An existing directory to mount it on.
    dir: PathBuf,
    /// The node's S3 endpoint (the node on this host).
    #[arg(long, env = "CAIRN_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// An access key of the pool (a client key; read_only keys give a read-only mount in effect).
    #[arg(long, env = "CAIRN_ACCESS_KEY", default_value = "cairn")]
    access_key: String,
    /// Its secret key.
    #[arg(long, env = "CAIRN_SECRET_KEY", default_value = "cairn-secret-key", hide_env_values = true)]
    secret_key: String,
    /// The region requests are signed for.
    #[arg(long, env = "CAIRN_REGION", default_value = "us-east-1")]
    region: String,
    /// direct: each chunk from its owner; local: everything through the endpoint node.
    #[arg(long, env = "CAIRN_ROUTE", default_value = "direct")]
    route: Route,
    /// How long listings and attributes are trusted: a duration, "immutable" (a day) or
    /// "always" (asked for every time). Follow the origin's metadata policy.
    #[arg(long, default_value = "10s")]
    metadata_ttl: cairn_fuse::MetadataTtl,
    /// When close() of a written file returns: local, replicated or origin [default: the
    /// origin's configured durability].
    #[arg(long)]
    durability: Option<Durability>,
    /// How long reads, stats and listings retry while nodes cannot be reached before failing
    /// with EIO (a restart of the local node).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// Let other users than the one mounting use the mount.
    #[arg(long)]
    allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Threads reading kernel requests (the work runs on the async runtime either way).
    #[arg(long, default_value_t = 1)]
    fuse_threads: usize,
    /// Stay in the foreground (the only mode: background it with `&`, systemd or a sidecar).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    foreground: bool,
}

/// `s3://bucket/prefix` -> (bucket, prefix).
fn split_source(s: &str) -> Result<(String, String)> {
    let Some(rest) = s.strip_prefix("s3://") else { bail!("expected s3://BUCKET[/PREFIX], got {s:?}") };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("expected s3://BUCKET[/PREFIX], got {s:?}");
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

pub async fn mount(a: MountArgs) -> Result<()> {
    crate::init_logging(false);
    if !a.foreground {
        bail!("cairn mount runs in the foreground only: background it with `&`, systemd or a sidecar container");
    }
    let (bucket, prefix) = split_source(&a.source)?;
    if !a.dir.is_dir() {
        bail!("{}: not a directory", a.dir.display());
    }
    let cfg = Config {
        endpoint: a.endpoint.clone(),
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
        region: a.region.clone(),
        route: a.route,
        ..Config::default()
    };
    let client = Client::connect(cfg).await.with_context(|| format!("connecting to {}", a.endpoint))?;
    let mut m = cairn_fuse::MountConfig::new(&bucket, &prefix);
    m.metadata_ttl = a.metadata_ttl.0;
    m.durability = a.durability;
    m.retry_for = a.retry_for;
    m.allow_other = a.allow_other;
    m.read_only = a.read_only;
    m.threads = a.fuse_threads;
    let rt = tokio::runtime::Handle::current();
    let dir = a.dir.clone();
    let mut mounted = tokio::task::spawn_blocking(move || cairn_fuse::mount(client, rt, m, &dir))
        .await?
        .with_context(|| format!("mounting s3://{bucket}/{prefix} on {}", a.dir.display()))?;
    eprintln!(
        "cairn: s3://{bucket}/{prefix} mounted on {} (through {}; metadata TTL {}, durability {}); \
         SIGTERM or Ctrl-C unmounts",
        a.dir.display(),
        a.endpoint,
        humantime::format_duration(a.metadata_ttl.0),
        a.durability.map_or("the origin's".to_owned(), |d| d.to_string()),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
        r = mounted.ended() => {
            r.context("the FUSE session ended")?;
            eprintln!("cairn: {} was unmounted", a.dir.display());
            return Ok(());
        }
    }
    mounted.unmount().await.with_context(|| format!("unmounting {}", a.dir.display()))?;
    eprintln!("cairn: {} unmounted", a.dir.display());
    Ok(())
}
