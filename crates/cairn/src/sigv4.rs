//! AWS Signature Version 4 for the few plain S3 requests the CLI sends itself (bucket create,
//! delete, head and list), which `object_store` cannot make. Pure functions: no clock, no I/O.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of an empty body, as `x-amz-content-sha256` carries it.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What a signature covers, besides the headers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded, e.g. `/bucket`).
    pub path: &'a str,
    /// The query as sent, without `?` (already percent-encoded), or "".
    pub query: &'a str,
    /// Lower-case names with their values; must include `host`, `x-amz-content-sha256` and
    /// `x-amz-date`.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

pub struct Credentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(msg.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes as SigV4 wants: everything but unreserved characters (and `/` when
/// `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query's parameters sorted by name, then value (`a=1&b=`; a bare `b` becomes `b=`).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> =
        query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    pairs.sort_unstable();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The `Authorization` header for `req` sent at `amz_date` (`YYYYMMDDTHHMMSSZ`).
pub fn authorization(req: &Request<'_>, creds: &Credentials<'_>, amz_date: &str) -> String {
    let mut headers: Vec<(String, String)> =
        req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())).collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        req.payload_sha256
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", creds.region);
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())));
    let key = [date, creds.region, "s3", "aws4_request"]
        .iter()
        .fold(format!("AWS4{}", creds.secret_key).into_bytes(), |key, part| hmac(&key, part));
    let signature = hex::encode(hmac(&key, &string_to_sign));
    format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}", creds.access_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: Credentials<'static> = Credentials {
        access_key: "AKIAIOSFODNN7EXAMPLE",
        secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
    };

    // The worked examples of AWS's "Signature Calculations for the Authorization Header".
    #[test]
    fn get_object_example() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let req =
            Request { method: "GET", path: "/test.txt", query: "", headers: &headers, payload_sha256: EMPTY_SHA256 };
        assert_eq!(
            authorization(&req, &CREDS, "20130524T000000Z"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn list_objects_example_sorts_the_query() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let req = Request {
            method: "GET",
            path: "/",
            query: "prefix=J&max-keys=2",
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        assert!(
            authorization(&req, &CREDS, "20130524T000000Z")
                .ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
        );
    }

    #[test]
    fn encoding_keeps_unreserved_only() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(canonical_query("location"), "location=");
    }
}
