//! Operator subcommands over a node's admin endpoint: `sync` (the write-back barrier, with a
//! progress bar), `status` (members, pending uploads per node, preloads) and `load` (a preload
//! with a progress bar).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_node::load::{LoadSpec, LoadStatus};
use cairn_node::server::{MemberRow, MembersAnswer as Members};
use cairn_node::writeback::ClusterSummary;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};

/// How often `sync` asks for progress.
const POLL: Duration = Duration::from_millis(250);

/// What `sync`, `status` and `load` print after their --help.
pub const ADMIN_HELP: &str = "These commands talk to the node's admin endpoint (its node.admin_listen, \
`cairn serve --admin-listen`), not to its S3 endpoint. For a node that is not on the default ports, \
pass --admin http://HOST:PORT or set CAIRN_ADMIN, e.g. CAIRN_ADMIN=http://127.0.0.1:19001.";

#[derive(clap::Args, Clone)]
pub struct Admin {
    /// The node's admin endpoint (its `--admin-listen`); needed for a node not on the default ports.
    #[arg(long, env = "CAIRN_ADMIN", default_value = "http://127.0.0.1:9001")]
    admin: String,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// BUCKET[/PREFIX] (or s3://BUCKET/PREFIX): writes under it acknowledged before now.
    target: String,
    /// Give up (exit status 1) after this long, e.g. 10m.
    #[arg(long)]
    timeout: Option<humantime::Duration>,
    #[command(flatten)]
    admin: Admin,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: Admin,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// BUCKET[/PREFIX] (or s3://BUCKET/PREFIX): every object under it.
    target: String,
    /// Load the keys listed in this file (one per line, relative to BUCKET) instead of a prefix.
    #[arg(long)]
    list: Option<std::path::PathBuf>,
    /// Origin bytes per second at most, e.g. 500MiB (default: unlimited).
    #[arg(long)]
    rate: Option<cairn_core::ByteSize>,
    /// Chunks fetched at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Also keep a copy of every chunk on each node of a set: all, zone=NAME or rack=NAME.
    #[arg(long, default_value = "")]
    replicate: String,
    /// Start the load and return; it runs on the node (`cairn status` shows it).
    #[arg(long)]
    detach: bool,
    /// Cancel the running load of the same target instead.
    #[arg(long)]
    cancel: bool,
    #[command(flatten)]
    admin: Admin,
}

async fn request_json<T: serde::de::DeserializeOwned>(
    admin: &Admin,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<T> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("{}{}", admin.admin.trim_end_matches('/'), path);
    let req = http::Request::builder().method(method).uri(&uri).body(Full::new(Bytes::from(body)))?;
    let resp = client.request(req).await.map_err(|e| crate::errors::admin_unreachable(&admin.admin, &e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{msg}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{uri}: unexpected answer"))
}

fn load_line(s: &LoadStatus) -> String {
    let rate = indicatif::HumanBytes(s.bytes_per_sec as u64);
    let eta = s.eta_secs.map_or("-".to_owned(), |e| format!("{e:.0}s"));
    format!(
        "{}/{}{} objects, {}/s, ETA {eta}{}",
        s.objects_done,
        s.objects_total,
        if s.listed { "" } else { "+" },
        rate,
        if s.error_count > 0 { format!(", {} errors", s.error_count) } else { String::new() }
    )
}

pub async fn load(a: LoadArgs) -> Result<()> {
    let target = a.target.strip_prefix("s3://").unwrap_or(&a.target);
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    if bucket.is_empty() {
        bail!("expected BUCKET[/PREFIX], got {:?}", a.target);
    }
    let keys = match &a.list {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let keys: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.strip_prefix(&format!("s3://{bucket}/")).unwrap_or(l).to_owned())
                .collect();
            if keys.is_empty() {
                bail!("{} lists no keys", path.display());
            }
            keys
        }
        None => Vec::new(),
    };
    let spec = LoadSpec {
        bucket: bucket.to_owned(),
        prefix: if keys.is_empty() { prefix.to_owned() } else { String::new() },
        keys,
        rate: a.rate.map_or(0, |r| r.bytes()),
        parallel: a.parallel,
        replicate: a.replicate.clone(),
    };
    if a.cancel {
        let s: LoadStatus =
            request_json(&a.admin, http::Method::DELETE, &format!("/v1/loads/{}", spec.id()), Vec::new()).await?;
        println!("cancelling load {} ({})", s.id, load_line(&s));
        return Ok(());
    }
    let mut s: LoadStatus = request_json(&a.admin, http::Method::POST, "/v1/load", serde_json::to_vec(&spec)?).await?;
    if s.objects_skipped > 0 || s.objects_done > 0 {
        eprintln!("load {}: resuming", s.id);
    }
    if a.detach {
        println!("load {} started on the node; `cairn status` shows its progress", s.id);
        return Ok(());
    }
    let pb = ProgressBar::new(s.bytes_total.max(1));
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        pb.set_length(s.bytes_total.max(1));
        pb.set_position(s.bytes_done);
        pb.set_message(load_line(&s));
        if s.state != "running" {
            pb.finish_and_clear();
            break;
        }
        tokio::time::sleep(POLL).await;
        s = request_json(&a.admin, http::Method::GET, &format!("/v1/loads/{}", s.id), Vec::new()).await?;
    }
    let replicas =
        if s.replica_nodes > 0 { format!(", a copy on each of {} nodes", s.replica_nodes) } else { String::new() };
    match s.state.as_str() {
        "done" => {
            println!(
                "loaded s3://{bucket}/{prefix}: {} objects, {} in {:.1}s ({}/s){replicas}",
                s.objects_done,
                indicatif::HumanBytes(s.bytes_done),
                s.elapsed_secs,
                indicatif::HumanBytes(s.bytes_per_sec as u64)
            );
            Ok(())
        }
        other => {
            for e in &s.errors {
                eprintln!("  {e}");
            }
            bail!(
                "load {} {other}: {} of {} objects loaded, {} errors",
                s.id,
                s.objects_done,
                s.objects_total,
                s.error_count
            )
        }
    }
}

fn print_loads(loads: &[LoadStatus]) {
    if loads.is_empty() {
        return;
    }
    println!("{:<18} {:<10} {:<40} progress", "load", "state", "what");
    for s in loads {
        let what = s.spec.as_ref().map_or(String::new(), |sp| {
            if sp.keys.is_empty() {
                format!("s3://{}/{}", sp.bucket, sp.prefix)
            } else {
                format!("s3://{} ({} keys)", sp.bucket, sp.keys.len())
            }
        });
        println!("{:<18} {:<10} {:<40} {}", s.id, s.state, what, load_line(s));
    }
    println!();
}

async fn get(admin: &Admin, path_and_query: &str) -> Result<ClusterSummary> {
    get_json(admin, path_and_query).await
}

async fn get_json<T: serde::de::DeserializeOwned>(admin: &Admin, path_and_query: &str) -> Result<T> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("{}{}", admin.admin.trim_end_matches('/'), path_and_query);
    let req = http::Request::get(&uri).body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await.map_err(|e| crate::errors::admin_unreachable(&admin.admin, &e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
    if !status.is_success() {
        bail!("{uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{uri}: unexpected answer"))
}

fn query(bucket: &str, prefix: &str, upto: Option<u64>) -> String {
    let mut q = url_encode(&[("bucket", bucket), ("prefix", prefix)]);
    if let Some(u) = upto {
        q.push_str(&format!("&upto={u}"));
    }
    q
}

fn url_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn sync(a: SyncArgs) -> Result<()> {
    let target = a.target.strip_prefix("s3://").unwrap_or(&a.target);
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    if bucket.is_empty() {
        bail!("expected BUCKET[/PREFIX], got {:?}", a.target);
    }
    let first = get(&a.admin, &format!("/v1/pending?{}", query(bucket, prefix, None))).await?;
    let mark = first.mark;
    let total = first.bytes;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} in the origin, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut s = first;
    loop {
        pb.set_position(total.saturating_sub(s.bytes));
        let mut msg = format!("{} objects left", s.objects);
        if s.replicas > 0 {
            msg.push_str(&format!(", {} replicas awaiting confirmation", s.replicas));
        }
        if !s.unreachable.is_empty() {
            msg.push_str(&format!(", waiting for unreachable nodes {}", s.unreachable.join(", ")));
        }
        if let Some(err) = s.nodes.iter().find_map(|n| n.last_error.clone()) {
            msg.push_str(&format!(", retrying: {err}"));
        }
        pb.set_message(msg);
        if s.objects == 0 && s.replicas == 0 && s.unreachable.is_empty() {
            pb.finish_and_clear();
            println!("synced s3://{bucket}/{prefix}: everything written before the call is in the origin");
            return Ok(());
        }
        if a.timeout.is_some_and(|t| started.elapsed() >= *t) {
            pb.abandon();
            let mut why = format!("timed out: {} objects ({} bytes) not yet in the origin", s.objects, s.bytes);
            for id in &s.unreachable {
                let reason = s.why.get(id).map(String::as_str).unwrap_or("no answer");
                why.push_str(&format!("; node {id} could not be asked what it holds ({reason})"));
            }
            bail!(why);
        }
        tokio::time::sleep(POLL).await;
        s = get(&a.admin, &format!("/v1/pending?{}", query(bucket, prefix, Some(mark)))).await?;
    }
}

fn print_members(m: &Members) {
    let count = |st: &str| m.members.iter().filter(|r| r.state == st).count();
    println!(
        "members ({}, map {}): {} alive, {} suspect, {} dead, {} left",
        m.mode,
        m.map_version,
        count("alive") + count("up"),
        count("suspect"),
        count("dead") + count("down"),
        count("left")
    );
    println!(
        "{:<20} {:<8} {:<8} {:<22} {:<12} {:<10} {:>6} {:>5} {:>10}",
        "id", "state", "map", "addr", "zone", "rack", "weight", "inc", "heard"
    );
    // The ones needing attention first.
    let rank = |r: &MemberRow| match r.state.as_str() {
        "suspect" => 0,
        "dead" | "down" => 1,
        "left" => 3,
        _ => 2,
    };
    let mut rows: Vec<&MemberRow> = m.members.iter().collect();
    rows.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.id.cmp(&b.id)));
    for r in rows {
        let heard = match r.heard_ms_ago {
            Some(_) if r.this_node => "this node".to_owned(),
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "-".into(),
        };
        println!(
            "{:<20} {:<8} {:<8} {:<22} {:<12} {:<10} {:>6} {:>5} {:>10}",
            r.id, r.state, r.map, r.addr, r.zone, r.rack, r.weight, r.incarnation, heard
        );
    }
}

pub async fn status(a: StatusArgs) -> Result<()> {
    let s = get(&a.admin, "/v1/status").await?;
    // A node outside a cluster has no members to show.
    let members: Option<Members> = get_json(&a.admin, "/v1/members").await.ok();
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        if let (Some(obj), Some(m)) = (v.as_object_mut(), &members) {
            obj.insert("members".into(), serde_json::to_value(m)?);
        }
        if let Some(obj) = v.as_object_mut() {
            let loads: Vec<LoadStatus> = get_json(&a.admin, "/v1/loads").await.unwrap_or_default();
            obj.insert("loads".into(), serde_json::to_value(loads)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(m) = &members {
        print_members(m);
        println!();
    }
    let loads: Vec<LoadStatus> = get_json(&a.admin, "/v1/loads").await.unwrap_or_default();
    print_loads(&loads);
    println!(
        "{:<24} {:>8} {:>16} {:>9} {:>12} {:>16}  last error",
        "node", "objects", "bytes", "replicas", "oldest (s)", "dirty bytes"
    );
    for n in &s.nodes {
        let name = if n.node.is_empty() { "(this node)" } else { n.node.as_str() };
        println!(
            "{:<24} {:>8} {:>16} {:>9} {:>12.1} {:>16}  {}",
            name,
            n.objects,
            n.bytes,
            n.replicas,
            n.oldest_age_secs,
            n.dirty_bytes,
            n.last_error.as_deref().unwrap_or("-")
        );
    }
    for id in &s.unreachable {
        println!("{id:<24} unreachable: {}", s.why.get(id).map(String::as_str).unwrap_or("no answer"));
    }
    println!("total: {} objects, {} bytes pending, {} replicas held", s.objects, s.bytes, s.replicas);
    Ok(())
}
