//! `cairn mount`: a bucket (or a prefix of one) as a directory, through FUSE. A thin synchronous
//! adapter over the async [`cairn_client::Client`]: each kernel request is handed to the tokio
//! runtime and answered from there (fuser's replies are `Send`), so one slow read never holds up
//! another.
//!
//! - **Reads.** `open` asks the pool for the object's current version ([`Client::stat`]) and the
//!   handle reads that version only. Reads that follow each other go through the client's
//!   [`cairn_client::Reader`] (readahead of whole chunks); a read elsewhere fetches just its
//!   bytes. The kernel's page cache is kept across opens of an unchanged version
//!   (`FOPEN_KEEP_CACHE`), and reads are up to 1 MiB.
//! - **Listings.** Directories are the prefixes of one-level listings; listings and attributes
//!   are trusted for the metadata TTL ([`MountConfig::metadata_ttl`]).
//! - **Writes.** New files only, written sequentially and streamed through a
//!   [`cairn_client::Writer`]; `close` (FUSE flush) returns once the object is acknowledged at
//!   the chosen durability, or with the error if it was not. What object storage cannot do
//!   fails at once with an errno that says so: see [`fs`].
//! - **Restarts.** Reads, stats and listings retry while nodes cannot be reached, for up to
//!   [`MountConfig::retry_for`], so a mount outlives a restart of its local node.

mod fs;
mod table;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_client::{Client, Durability};

pub use fs::{BLOCK_SIZE, MAX_READ};

/// The TTL of `--metadata-ttl immutable`: objects never change in place.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default metadata TTL: the node's own default (`ttl:10s`).
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(10);
/// How long a mount waits for its session to end after unmounting.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// How long listings and attributes are trusted: a duration (`10s`, `ttl:10s`), `immutable`
/// (a day) or `always` (asked for every time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataTtl(pub Duration);

impl std::str::FromStr for MetadataTtl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use cairn_core::MetadataPolicy;
        match s.parse::<MetadataPolicy>() {
            Ok(MetadataPolicy::Immutable) => Ok(Self(IMMUTABLE_TTL)),
            Ok(MetadataPolicy::Always) => Ok(Self(Duration::ZERO)),
            Ok(MetadataPolicy::Ttl(d)) => Ok(Self(d)),
            Err(_) => humantime::parse_duration(s.trim()).map(Self).map_err(|_| {
                format!("invalid metadata TTL {s:?}: expected a duration (\"10s\"), \"immutable\" or \"always\"")
            }),
        }
    }
}

/// What to mount and how.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub bucket: String,
    /// Key prefix the mount's root shows: `""` (the whole bucket) or ending in `/`.
    pub prefix: String,
    /// How long listings and attributes are trusted (the kernel's entry and attribute TTL too).
    pub metadata_ttl: Duration,
    /// When a written file's `close` returns (`None`: the origin's configured durability).
    pub durability: Option<Durability>,
    /// How long reads, stats and listings retry while nodes cannot be reached before failing
    /// with EIO.
    pub retry_for: Duration,
    /// Owner of every file and directory.
    pub uid: u32,
    pub gid: u32,
    /// Let users other than the one who mounted use the mount.
    pub allow_other: bool,
    pub read_only: bool,
    /// Threads reading requests from the kernel. The work itself runs on the tokio runtime,
    /// so one is enough; one also keeps the kernel's order of reads on a file, which the
    /// sequential-read detection relies on.
    pub threads: usize,
}

impl MountConfig {
    pub fn new(bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_owned() } else { format!("{prefix}/") };
        Self {
            bucket: bucket.to_owned(),
            prefix,
            metadata_ttl: DEFAULT_METADATA_TTL,
            durability: None,
            retry_for: Duration::from_secs(60),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            allow_other: false,
            read_only: false,
            threads: 1,
        }
    }
}

/// A mounted file system; [`Mounted::unmount`] ends it.
pub struct Mounted {
    dir: PathBuf,
    unmounter: fuser::SessionUnmounter,
    ended: Option<tokio::sync::oneshot::Receiver<io::Result<()>>>,
}

/// Mounts `cfg.bucket`/`cfg.prefix` on `dir` and serves it from threads of its own, doing the
/// work on `rt`. Blocking: call it from a thread that may block (`spawn_blocking`).
pub fn mount(client: Client, rt: tokio::runtime::Handle, cfg: MountConfig, dir: &Path) -> io::Result<Mounted> {
    // A missing bucket or a refused key fails here, in one line, before anything is mounted.
    rt.block_on(client.list(&cfg.bucket, &cfg.prefix, false))
        .map_err(|e| io::Error::other(format!("listing s3://{}/{}: {e}", cfg.bucket, cfg.prefix)))?;
    let mut options = vec![
        fuser::MountOption::FSName(format!("cairn:{}/{}", cfg.bucket, cfg.prefix.trim_end_matches('/'))),
        fuser::MountOption::Subtype("cairn".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::CUSTOM(format!("max_read={MAX_READ}")),
    ];
    if cfg.read_only {
        options.push(fuser::MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if cfg.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = cfg.threads > 1;
    let fs = fs::CairnFs::new(client, rt, cfg);
    let mut session = fuser::Session::new(fs, dir, &config)?;
    let unmounter = session.unmount_callable();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("cairn-fuse".into()).spawn(move || {
        let _ = tx.send(session.run());
    })?;
    set_readahead(dir);
    Ok(Mounted { dir: dir.to_owned(), unmounter, ended: Some(rx) })
}

/// Raises the kernel's page-cache readahead of the mount (its BDI) to [`MAX_READ`] several
/// times over, so sequential readers keep several large reads in flight; best effort (root).
fn set_readahead(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else { return };
    let dev = meta.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    let kb = fs::READAHEAD_BYTES / 1024;
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::debug!(path, error = %e, "kernel readahead left at its default");
    }
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the session ends by itself (someone ran `umount`).
    pub async fn ended(&mut self) -> io::Result<()> {
        match self.ended.as_mut() {
            Some(rx) => {
                let r = rx.await.unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread died")));
                self.ended = None;
                r
            }
            None => std::future::pending().await,
        }
    }

    /// Unmounts (lazily when files are still open: the mount point is detached at once and the
    /// file system goes when they close) and waits for the session to end.
    pub async fn unmount(mut self) -> io::Result<()> {
        let dir = self.dir.clone();
        let mut unmounter = self.unmounter;
        let r = tokio::task::spawn_blocking(move || match unmounter.unmount() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unmount failed; detaching lazily");
                nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
            }
        })
        .await
        .map_err(io::Error::other)?;
        r?;
        if let Some(rx) = self.ended.take()
            && let Ok(Ok(Err(e))) = tokio::time::timeout(UNMOUNT_WAIT, rx).await
        {
            tracing::warn!(error = %e, "the FUSE session ended with an error");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_ttl_parses_durations_and_policies() {
        assert_eq!("10s".parse::<MetadataTtl>(), Ok(MetadataTtl(Duration::from_secs(10))));
        assert_eq!("ttl:2m".parse::<MetadataTtl>(), Ok(MetadataTtl(Duration::from_secs(120))));
        assert_eq!("immutable".parse::<MetadataTtl>(), Ok(MetadataTtl(IMMUTABLE_TTL)));
        assert_eq!("always".parse::<MetadataTtl>(), Ok(MetadataTtl(Duration::ZERO)));
        assert!("soon".parse::<MetadataTtl>().is_err());
    }

    #[test]
    fn prefixes_end_in_a_slash() {
        assert_eq!(MountConfig::new("b", "").prefix, "");
        assert_eq!(MountConfig::new("b", "a/b").prefix, "a/b/");
        assert_eq!(MountConfig::new("b", "/a/").prefix, "a/");
    }
}
