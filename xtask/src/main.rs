//! `cargo xtask`: the project's tasks beyond cargo's own.
//!
//! - `cargo xtask test`  installs what the tests need (Python clients, moto, Azurite, rclone,
//!   redis-server, redis-cli and redis-benchmark, curl and iproute2, pyspark with Java 17 and
//!   the s3a jars),
//!   builds in release mode and runs the Rust and the end-to-end suites.
//! - `cargo xtask deps`  installs the test dependencies only.
//! - `cargo xtask bench [write | cluster]` installs the benchmark references (nginx, wrk, FUSE)
//!   and runs the single-node, checkpoint-write or cluster benchmark.
//! - `cargo xtask bench soak [args]` runs the memory soak (3 nodes under mixed load, RSS against
//!   the configured tiers; `--minutes`, `--rate`, `--node-env`).
//! - `cargo xtask bench-kv` runs the KV benchmark (cairn's RESP endpoint against Redis 7).
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
    apt_install(&["rclone", "redis-server", "redis-tools", "curl", "iproute2"])?;
    spark_deps(&root)?;
    Ok(())
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

fn build_release() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "--locked", "-p", "cairn"]))
}

fn test(rest: &[String]) -> Result<()> {
    deps()?;
    build_release()?;
    let root = root();
    run(Command::new("cargo").current_dir(&root).args(["test", "--release", "--locked", "--workspace"]))?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", root.join("target/release/cairn"))
        .args(["-m", "pytest", "-q", "-ra", "tests"])
        .args(rest))
}

/// `bench [args]`: the single-node benchmark; `bench write [args]`: checkpoint writes;
/// `bench cluster [args]`: the cluster benchmark; `bench soak [args]`: the memory soak.
fn bench(rest: &[String]) -> Result<()> {
    if let Some((s, args)) = rest.split_first()
        && s == "soak"
    {
        return soak(args);
    }
    deps()?;
    apt_install(&["nginx-light", "wrk", "fuse3", "curl"])?;
    build_release()?;
    let root = root();
    let (script, args) = match rest.split_first() {
        Some((w, args)) if w == "write" => ("bench/write_bench.py", args),
        Some((c, args)) if c == "cluster" => ("bench/cluster_bench.py", args),
        _ => ("bench/bench.py", rest),
    };
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", root.join("target/release/cairn"))
        .arg(root.join(script))
        .args(args))
}

/// The memory soak needs only the Python clients (redis-py) and the release binary.
fn soak(rest: &[String]) -> Result<()> {
    let root = root();
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r"]).arg(root.join("tests/requirements.txt")))?;
    build_release()?;
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", root.join("target/release/cairn"))
        .arg(root.join("bench/soak.py"))
        .args(rest))
}

fn bench_kv(rest: &[String]) -> Result<()> {
    deps()?;
    build_release()?;
    let root = root();
    run(Command::new("python3")
        .current_dir(&root)
        .env("CAIRN_BIN", root.join("target/release/cairn"))
        .arg(root.join("bench/kv_bench.py"))
        .args(rest))
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
        "lint" => lint(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [pytest args] | deps | bench [write | cluster | soak] [args] | bench-kv [args] | lint>"
            );
            Ok(())
        }
    }
}
