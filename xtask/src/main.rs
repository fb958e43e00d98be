//! `cargo xtask`: the project's tasks beyond cargo's own.
//!
//! - `cargo xtask test`  installs what the tests need (Python clients, moto, Azurite, rclone,
//!   redis-server, redis-cli and redis-benchmark, curl and iproute2),
//!   builds in release mode and runs the Rust and the end-to-end suites.
//! - `cargo xtask deps`  installs the test dependencies only.
//! - `cargo xtask bench [write | cluster | tls]` installs the benchmark references (nginx, wrk,
//!   FUSE) and runs the single-node, checkpoint-write, cluster or TLS-on-hits benchmark.
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
/// `bench cluster [args]`: the cluster benchmark; `bench tls [args]`: https against http on hits;
/// `bench soak [args]`: the memory soak.
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
        Some((t, args)) if t == "tls" => ("bench/tls_bench.py", args),
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
                "usage: cargo xtask <test [pytest args] | deps | bench [write | cluster | tls | soak] [args] | bench-kv [args] | lint>"
            );
            Ok(())
        }
    }
}
