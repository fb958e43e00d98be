//! A pod's failure domains from its Node's labels (`[kubernetes]`).
//!
//! The Downward API gives a pod its node's name but not the node's labels, so the node reads its
//! own Node object once at start (`GET /api/v1/nodes/NAME` with the pod's service-account token,
//! the API server verified against the service account's CA). The chart grants `get` on `nodes`
//! and nothing else. `cluster.zone` / `cluster.rack` set to anything but their default win over
//! labels.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_core::Config;
use cairn_core::config::KubernetesSection;

/// How long start-up keeps trying to read the Node before giving up (the API server may be
/// briefly unreachable while a node boots).
const LOOKUP_FOR: Duration = Duration::from_secs(30);

/// Fills `cluster.zone` and `cluster.rack` from the Node's labels when `kubernetes.node_name`
/// is set and they are not. An error names what failed; a node that cannot learn its zone does
/// not start (placing it in the wrong failure domain would put replicas together).
pub async fn apply_node_labels(cfg: &mut Config) -> Result<(), String> {
    let k = &cfg.kubernetes;
    if k.node_name.is_empty() {
        return Ok(());
    }
    // Left at their default ("default") or emptied: labels decide.
    let unset = |v: &str| v.is_empty() || v == "default";
    let want_zone = unset(&cfg.cluster.zone) && !k.zone_label.is_empty();
    let want_rack = unset(&cfg.cluster.rack) && !k.rack_label.is_empty();
    if !want_zone && !want_rack {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + LOOKUP_FOR;
    let labels = loop {
        match node_labels(k).await {
            Ok(l) => break l,
            Err(Lookup { message: e, retry: true }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(node = %k.node_name, error = %e, "reading this node's labels; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("kubernetes: reading node {}: {}", k.node_name, e.message)),
        }
    };
    let label = |name: &str| match labels.get(name) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            tracing::warn!(node = %k.node_name, label = name, "the node has no such label; using \"default\"");
            "default".to_owned()
        }
    };
    if want_zone {
        cfg.cluster.zone = label(&k.zone_label);
    }
    if want_rack {
        cfg.cluster.rack = label(&k.rack_label);
    }
    tracing::info!(
        node = %k.node_name,
        zone = %cfg.cluster.zone,
        rack = %cfg.cluster.rack,
        "failure domains from the node's labels"
    );
    Ok(())
}

/// Why a lookup failed, and whether trying again may help (the API server unreachable or
/// answering 5xx/429; not a refusal, a missing node or a bad answer).
pub struct Lookup {
    pub message: String,
    pub retry: bool,
}

fn fatal(message: impl Into<String>) -> Lookup {
    Lookup { message: message.into(), retry: false }
}

/// The labels of Node `k.node_name`.
pub async fn node_labels(k: &KubernetesSection) -> Result<BTreeMap<String, String>, Lookup> {
    let api = if k.api.is_empty() {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| fatal("no API server: set kubernetes.api or run in a pod (KUBERNETES_SERVICE_HOST)"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        // An IPv6 service host needs brackets in a URL.
        if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") }
    } else {
        k.api.trim_end_matches('/').to_owned()
    };
    let token = std::fs::read_to_string(&k.token_file).map_err(|e| fatal(format!("token {}: {e}", k.token_file)))?;
    let ca = std::fs::read(&k.ca_file).map_err(|e| fatal(format!("CA {}: {e}", k.ca_file)))?;
    let ca = reqwest::Certificate::from_pem(&ca).map_err(|e| fatal(format!("CA {}: {e}", k.ca_file)))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fatal(format!("HTTPS client: {e}")))?;
    let url = format!("{api}/api/v1/nodes/{}", k.node_name);
    let resp = client
        .get(&url)
        .bearer_auth(token.trim())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| Lookup { message: format!("GET {url}: {}", chain(&e)), retry: true })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| Lookup { message: format!("GET {url}: {}", chain(&e)), retry: true })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(Lookup {
            message: format!("GET {url}: {status}: {}", text.chars().take(300).collect::<String>()),
            retry: status.is_server_error() || status.as_u16() == 429,
        });
    }
    #[derive(serde::Deserialize)]
    struct Node {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    let node: Node = serde_json::from_slice(&body).map_err(|e| fatal(format!("GET {url}: not a Node: {e}")))?;
    Ok(node.metadata.labels)
}

/// An error with its causes ("error sending request: connection refused: ...").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
