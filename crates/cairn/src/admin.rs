//! Operator subcommands over a node's admin endpoint: `sync` (the write-back barrier, with a
//! progress bar) and `status` (pending uploads per node).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_node::server::{MemberRow, MembersAnswer as Members};
use cairn_node::writeback::ClusterSummary;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};

/// How often `sync` asks for progress.
const POLL: Duration = Duration::from_millis(250);

#[derive(clap::Args, Clone)]
pub struct Admin {
    /// The node's admin endpoint.
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

async fn get(admin: &Admin, path_and_query: &str) -> Result<ClusterSummary> {
    get_json(admin, path_and_query).await
}

async fn get_json<T: serde::de::DeserializeOwned>(admin: &Admin, path_and_query: &str) -> Result<T> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("{}{}", admin.admin.trim_end_matches('/'), path_and_query);
    let req = http::Request::get(&uri).body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await.with_context(|| format!("asking {uri}"))?;
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
            bail!("timed out: {} objects ({} bytes) not yet in the origin", s.objects, s.bytes);
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
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(m) = &members {
        print_members(m);
        println!();
    }
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
        println!("{id:<24} unreachable");
    }
    println!("total: {} objects, {} bytes pending, {} replicas held", s.objects, s.bytes, s.replicas);
    Ok(())
}
