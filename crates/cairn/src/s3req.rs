//! Plain signed S3 requests that `object_store` cannot make: ListBuckets, CreateBucket,
//! DeleteBucket and HeadBucket (the check every object command starts with, so a missing bucket,
//! an unreachable node or a wrong key is named before any transfer starts); and ListObjectsV2
//! and DeleteObject on keys exactly as stored (`object_store` drops a key's trailing '/', so it
//! cannot see or delete the folder markers other tools create).
//!
//! Sent with reqwest, the HTTP client `object_store` itself uses (same version, same rustls), so
//! an `https://` endpoint behaves the same for both kinds of request.

use std::time::SystemTime;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::client::Endpoint;
use crate::errors;
use crate::sigv4;

/// Buckets asked for per ListBuckets page (S3's own maximum).
const BUCKETS_PER_PAGE: usize = 10_000;

pub struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The S3 error code and message of an error answer, when it carries the XML.
    pub fn error(&self) -> (String, String) {
        let text = String::from_utf8_lossy(&self.body);
        (xml_text(&text, "Code").unwrap_or_default(), xml_text(&text, "Message").unwrap_or_default())
    }
}

/// A bucket as ListBuckets names it.
pub struct BucketEntry {
    pub name: String,
    /// As sent, e.g. `2026-11-30T20:11:03.000Z`.
    pub created: String,
}

pub struct S3Client<'a> {
    ep: &'a Endpoint,
    http: reqwest::Client,
}

impl<'a> S3Client<'a> {
    pub fn new(ep: &'a Endpoint) -> Result<Self> {
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Self { ep, http })
    }

    /// Sends a signed request with an empty body to `/BUCKET?QUERY` (or `/` without a bucket).
    /// A node that cannot be reached is an error; any HTTP answer is returned.
    pub async fn send(&self, method: http::Method, bucket: Option<&str>, query: &str) -> Result<Answer> {
        self.send_to(method, bucket, None, query).await
    }

    /// The same for `/BUCKET/KEY`.
    pub async fn send_to(
        &self,
        method: http::Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &str,
    ) -> Result<Answer> {
        let base = self.ep.url().trim_end_matches('/');
        let path = match (bucket, key) {
            (Some(b), Some(k)) => format!("/{}/{}", sigv4::uri_encode(b, false), sigv4::uri_encode(k, true)),
            (Some(b), None) => format!("/{}", sigv4::uri_encode(b, false)),
            (None, _) => "/".to_owned(),
        };
        let url = if query.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query}") };
        let parsed = reqwest::Url::parse(&url).map_err(|e| errors::bad_endpoint(self.ep.url(), &e))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(errors::bad_endpoint(self.ep.url(), &"no host")),
        };
        let amz_date = amz_date(SystemTime::now());
        let headers =
            [("host", host.as_str()), ("x-amz-content-sha256", sigv4::EMPTY_SHA256), ("x-amz-date", amz_date.as_str())];
        // The path signed is the one sent: the endpoint may carry a path prefix of its own.
        let signed = sigv4::Request {
            method: method.as_str(),
            path: parsed.path(),
            query,
            headers: &headers,
            payload_sha256: sigv4::EMPTY_SHA256,
        };
        let creds = self.ep.credentials();
        let auth = sigv4::authorization(&signed, &creds, &amz_date);
        let mut req = self.http.request(method, parsed);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req
            .header(http::header::AUTHORIZATION, auth)
            .send()
            .await
            .map_err(|e| errors::unreachable(self.ep.url(), &e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| errors::unreachable(self.ep.url(), &e))?;
        Ok(Answer { status, body })
    }

    /// Fails with one line unless the bucket exists and the credentials are accepted.
    pub async fn check_bucket(&self, bucket: &str) -> Result<()> {
        let a = self.send(http::Method::HEAD, Some(bucket), "").await?;
        match a.status.as_u16() {
            200..=299 => Ok(()),
            404 => Err(errors::bucket_missing(bucket)),
            // S3 answers a HEAD of a name no bucket can have with a bare 400.
            400 if !cairn_core::key::is_valid_bucket(bucket) => Err(errors::invalid_bucket(bucket)),
            // A HEAD answer has no body to name the reason: ask for the bucket list to learn it.
            401 | 403 => {
                let why = self.send(http::Method::GET, None, "").await?;
                Err(self.refused(&why, &format!("HEAD s3://{bucket}")))
            }
            _ => Err(self.refused(&a, &format!("HEAD s3://{bucket}"))),
        }
    }

    /// The one-line error for a refused request.
    pub fn refused(&self, a: &Answer, what: &str) -> anyhow::Error {
        let (code, message) = a.error();
        if a.status == http::StatusCode::FORBIDDEN || a.status == http::StatusCode::UNAUTHORIZED {
            return errors::access_denied(self.ep, &code, &message);
        }
        errors::refused(what, a.status, &code, &message)
    }

    /// Every bucket the node exposes, page by page.
    pub async fn list_buckets(&self) -> Result<Vec<BucketEntry>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("max-buckets={BUCKETS_PER_PAGE}");
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", sigv4::uri_encode(t, false)));
            }
            let a = self.send(http::Method::GET, None, &query).await?;
            if !a.status.is_success() {
                return Err(self.refused(&a, "ListBuckets"));
            }
            let text = String::from_utf8_lossy(&a.body);
            for b in xml_all(&text, "Bucket") {
                out.push(BucketEntry {
                    name: xml_text(b, "Name").unwrap_or_default(),
                    created: xml_text(b, "CreationDate").unwrap_or_default(),
                });
            }
            token = xml_text(&text, "ContinuationToken").filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

/// One object of a listing, its key exactly as stored.
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
}

impl S3Client<'_> {
    /// One page of ListObjectsV2 under `prefix`, and the token of the next page.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<(Vec<ObjectEntry>, Option<String>)> {
        let mut query = format!("list-type=2&prefix={}", sigv4::uri_encode(prefix, false));
        if let Some(t) = token {
            query.push_str(&format!("&continuation-token={}", sigv4::uri_encode(t, false)));
        }
        let a = self.send(http::Method::GET, Some(bucket), &query).await?;
        if !a.status.is_success() {
            if a.status == http::StatusCode::NOT_FOUND && a.error().0 == "NoSuchBucket" {
                return Err(errors::bucket_missing(bucket));
            }
            return Err(self.refused(&a, &format!("listing s3://{bucket}/{prefix}")));
        }
        let text = String::from_utf8_lossy(&a.body);
        let mut objects = Vec::new();
        for c in xml_all(&text, "Contents") {
            let key = xml_text(c, "Key").unwrap_or_default();
            let size = xml_text(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
            objects.push(ObjectEntry { key, size });
        }
        let truncated = xml_text(&text, "IsTruncated").is_some_and(|t| t == "true");
        let next = xml_text(&text, "NextContinuationToken").filter(|t| truncated && !t.is_empty());
        Ok((objects, next))
    }

    /// Every object under `prefix`, in key order.
    pub async fn list_all(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectEntry>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = self.list_page(bucket, prefix, token.as_deref()).await?;
            out.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// DeleteObject of the key as stored (a missing key is no error, as in S3).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        let a = self.send_to(http::Method::DELETE, Some(bucket), Some(key), "").await?;
        if a.status.is_success() || a.status == http::StatusCode::NOT_FOUND && a.error().0 == "NoSuchKey" {
            return Ok(());
        }
        Err(self.refused(&a, &format!("deleting s3://{bucket}/{key}")))
    }
}

/// `YYYYMMDDTHHMMSSZ`.
fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().replace(['-', ':'], "")
}

/// The text of every `<tag>...</tag>` in `xml`, in order (no nesting of the same tag).
fn xml_all<'x>(xml: &'x str, tag: &str) -> Vec<&'x str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The unescaped text of the first `<tag>...</tag>` in `xml`.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    xml_all(xml, tag).first().map(|t| {
        t.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_date_is_compact_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
    }

    #[test]
    fn reads_bucket_listing() {
        let xml = "<ListAllMyBucketsResult><Buckets><Bucket><Name>a</Name><CreationDate>d1</CreationDate>\
                   </Bucket><Bucket><Name>b&amp;c</Name></Bucket></Buckets></ListAllMyBucketsResult>";
        let buckets = xml_all(xml, "Bucket");
        assert_eq!(buckets.len(), 2);
        assert_eq!(xml_text(buckets[1], "Name").as_deref(), Some("b&c"));
        assert_eq!(xml_text(xml, "ContinuationToken"), None);
    }
}
