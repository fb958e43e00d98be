//! One-line errors that name the cause: a missing bucket or key, a node that cannot be reached,
//! credentials the node refuses. Library errors (object_store, reqwest, hyper) arrive as chains
//! of causes; these functions turn them into the one line `main` prints after `cairn: `.

use std::error::Error as StdError;
use std::fmt::Display;

use anyhow::anyhow;

use crate::client::Endpoint;

pub fn bucket_missing(bucket: &str) -> anyhow::Error {
    anyhow!("bucket {bucket:?} does not exist (create it with: cairn mb s3://{bucket})")
}

pub fn invalid_bucket(bucket: &str) -> anyhow::Error {
    anyhow!(
        "invalid bucket name {bucket:?}: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a \
         letter or digit"
    )
}

pub fn object_missing(bucket: &str, key: &str) -> anyhow::Error {
    anyhow!("object s3://{bucket}/{key} does not exist")
}

pub fn bad_endpoint(url: &str, why: &dyn Display) -> anyhow::Error {
    anyhow!("invalid endpoint {url:?} ({why}); expected e.g. http://127.0.0.1:9000")
}

/// A node that did not answer: the innermost cause (e.g. "connection refused").
pub fn unreachable(url: &str, e: &(dyn StdError + 'static)) -> anyhow::Error {
    anyhow!("cannot reach the node at {url}: {}", network_cause(e).unwrap_or_else(|| innermost(e)))
}

/// The same for the admin endpoint, with the hint a node on other ports needs.
pub fn admin_unreachable(url: &str, e: &(dyn StdError + 'static)) -> anyhow::Error {
    anyhow!(
        "cannot reach the node's admin endpoint at {url}: {} (for a node on other ports pass --admin http://HOST:PORT \
         or set CAIRN_ADMIN)",
        network_cause(e).unwrap_or_else(|| innermost(e))
    )
}

pub fn access_denied(ep: &Endpoint, code: &str, message: &str) -> anyhow::Error {
    let url = ep.url();
    let key = ep.access_key();
    match code {
        "InvalidAccessKeyId" => anyhow!(
            "access denied by the node at {url}: it does not know the access key {key:?} (check --access-key or CAIRN_ACCESS_KEY)"
        ),
        "SignatureDoesNotMatch" => anyhow!(
            "access denied by the node at {url}: the secret key is not the one of access key {key:?} (check --secret-key \
             or CAIRN_SECRET_KEY)"
        ),
        "" => anyhow!("access denied by the node at {url} (access key {key:?})"),
        _ if message.is_empty() => anyhow!("access denied by the node at {url}: {code}"),
        _ => anyhow!("access denied by the node at {url}: {message} ({code})"),
    }
}

/// Any other refusal: what was asked, and the node's own code and message.
pub fn refused(what: &str, status: http::StatusCode, code: &str, message: &str) -> anyhow::Error {
    match (code.is_empty(), message.is_empty()) {
        (true, _) => anyhow!("{what}: the node answered {status}"),
        (false, true) => anyhow!("{what}: {code} ({status})"),
        (false, false) => anyhow!("{what}: {message} ({code})"),
    }
}

/// "connection refused", "connection timed out", ... when a network failure is in the chain.
fn network_cause(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    let mut dns = None;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let what = match io.kind() {
                K::ConnectionRefused => "connection refused",
                K::ConnectionReset => "connection reset",
                K::ConnectionAborted => "connection aborted",
                K::TimedOut => "connection timed out",
                K::HostUnreachable => "host unreachable",
                K::NetworkUnreachable => "network unreachable",
                K::AddrNotAvailable => "address not available",
                K::UnexpectedEof | K::BrokenPipe => "the connection was closed",
                _ => "",
            };
            if !what.is_empty() {
                return Some(what.to_owned());
            }
        }
        let text = err.to_string();
        if dns.is_none() && (text.contains("dns error") || text.contains("failed to lookup address")) {
            dns = Some(format!("cannot resolve its name ({})", innermost(err)));
        }
        cur = err.source();
    }
    dns
}

/// The last cause of the chain, which usually says what happened in the fewest words.
fn innermost(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether a network failure (not an HTTP answer) is somewhere in the chain.
fn is_network(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<reqwest::Error>()
            && (r.is_connect() || r.is_timeout())
        {
            return true;
        }
        cur = err.source();
    }
    network_cause(e).is_some()
}

/// The S3 `<Code>` and `<Message>` of an answer quoted in an error's text.
fn quoted_s3_error(text: &str) -> Option<(String, String)> {
    let code = crate::s3req::xml_text(text, "Code")?;
    Some((code, crate::s3req::xml_text(text, "Message").unwrap_or_default()))
}

/// An `object_store` error from an operation on `s3://bucket/key`, as one line.
pub fn from_store(e: object_store::Error, ep: &Endpoint, bucket: &str, key: &str) -> anyhow::Error {
    use object_store::Error as E;
    if is_network(&e) {
        return unreachable(ep.url(), &e);
    }
    let text = e.to_string();
    let quoted = quoted_s3_error(&text);
    match &e {
        E::NotFound { .. } if quoted.as_ref().is_some_and(|(c, _)| c == "NoSuchBucket") => bucket_missing(bucket),
        E::NotFound { .. } => object_missing(bucket, key),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            let (code, message) = quoted.unwrap_or_default();
            access_denied(ep, &code, &message)
        }
        _ => match quoted {
            Some((code, message)) => {
                let what = if key.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{key}") };
                let status = status_in(&text).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                refused(&what, status, &code, &message)
            }
            None => anyhow!("s3://{bucket}/{key}: {}", innermost(&e)),
        },
    }
}

/// The HTTP status object_store quotes ("... status code: 507 Insufficient Storage ...").
fn status_in(text: &str) -> Option<http::StatusCode> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse::<u16>().ok().and_then(|s| http::StatusCode::from_u16(s).ok())
}

/// The line `main` prints: the message, and its causes when some were attached as context.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_cause_is_named() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = anyhow::Error::new(io).context("connecting");
        assert_eq!(network_cause(e.as_ref()).as_deref(), Some("connection refused"));
    }

    #[test]
    fn status_is_read_from_the_text() {
        assert_eq!(
            status_in("x - status code: 507 Insufficient Storage: y"),
            Some(http::StatusCode::INSUFFICIENT_STORAGE)
        );
        assert_eq!(status_in("nothing"), None);
    }

    #[test]
    fn one_line_joins_causes() {
        let e = anyhow!("inner\nsecond line").context("outer");
        assert_eq!(one_line(&e), "outer: inner second line");
    }
}
