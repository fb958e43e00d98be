//! Integrity of write bodies: `Content-MD5` and the additional checksums
//! (`x-amz-checksum-{crc32,crc32c,sha1,sha256,crc64nvme}`, as headers or as aws-chunked
//! trailers), checked as the body streams by.
//!
//! `s3s` checks SigV4 signatures, chunk signatures and a single-chunk `x-amz-content-sha256`, and
//! hands the trailers over; it checks neither `Content-MD5` nor the checksums. [`Verifier`]
//! hashes the body on its way to the origin or the journal and, at its end, fails the stream when
//! a value does not match, so the write stores nothing. The checksums it computed (those the
//! client gave or named with `x-amz-sdk-checksum-algorithm`) are kept with the object.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use cairn_origin::{BodyStream, WriteAttrs};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use s3s::crypto::{Checksum, Crc32, Crc32c, Crc64Nvme, Md5, Sha1, Sha256};
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders};

/// An additional checksum algorithm of S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub const ALL: [Self; 5] = [Self::Crc32, Self::Crc32c, Self::Crc64Nvme, Self::Sha1, Self::Sha256];

    /// As S3 names it (`CRC32`), in messages and `x-amz-checksum-algorithm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s) || a.header().eq_ignore_ascii_case(s))
    }
}

fn b64(data: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(data)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(s.trim()).ok()
}

fn error(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::with_message(code, message.into())
}

/// What the client said the body hashes to, and which checksums to compute.
#[derive(Default)]
pub struct Expected {
    md5: Option<Vec<u8>>,
    /// Checksums given as headers (base64).
    given: Vec<(Algorithm, String)>,
    /// The checksum announced in `x-amz-trailer`.
    trailer: Option<Algorithm>,
    trailers: Option<TrailingHeaders>,
    /// Computed without a value to check (`x-amz-sdk-checksum-algorithm`), to keep.
    named: Option<Algorithm>,
}

impl Expected {
    /// Reads `Content-MD5`, `x-amz-checksum-*`, `x-amz-trailer` and the checksum algorithm from a
    /// write request's headers. A malformed `Content-MD5` is `InvalidDigest`; a malformed checksum,
    /// or more than one, is `InvalidRequest`.
    pub fn from_request(headers: &http::HeaderMap, trailers: Option<TrailingHeaders>) -> S3Result<Self> {
        let mut out = Self { trailers, ..Self::default() };
        if let Some(v) = headers.get("content-md5") {
            match v.to_str().ok().and_then(unb64) {
                Some(d) if d.len() == 16 => out.md5 = Some(d),
                _ => return Err(error(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified is not valid.")),
            }
        }
        for a in Algorithm::ALL {
            if let Some(v) = headers.get(a.header()) {
                let value = v.to_str().unwrap_or_default().trim().to_owned();
                if unb64(&value).is_none_or(|d| d.len() != a.digest_len()) {
                    return Err(error(
                        S3ErrorCode::InvalidRequest,
                        format!("Value for {} header is invalid.", a.header()),
                    ));
                }
                out.given.push((a, value));
            }
        }
        if let Some(v) = headers.get("x-amz-trailer") {
            let name = v.to_str().unwrap_or_default().trim();
            if let Some(a) = Algorithm::parse(name) {
                out.trailer = Some(a);
            } else if name.starts_with("x-amz-checksum-") {
                return Err(error(S3ErrorCode::InvalidRequest, format!("the trailer {name} is not supported")));
            }
        }
        if out.given.len() + usize::from(out.trailer.is_some()) > 1 {
            return Err(error(
                S3ErrorCode::InvalidRequest,
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            ));
        }
        for name in ["x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"] {
            if let Some(v) = headers.get(name) {
                let s = v.to_str().unwrap_or_default();
                match Algorithm::parse(s) {
                    Some(a) => out.named = Some(a),
                    None => {
                        return Err(error(S3ErrorCode::InvalidRequest, format!("{name} {s:?} is not supported")));
                    }
                }
            }
        }
        Ok(out)
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        let mut v: Vec<Algorithm> = self.given.iter().map(|(a, _)| *a).chain(self.trailer).chain(self.named).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What a verified body hashed to.
#[derive(Clone, Debug, Default)]
pub struct Computed {
    /// Hex MD5 of the body, when the client sent `Content-MD5` (the only time it is computed).
    pub md5: Option<String>,
    /// Base64 checksums the client gave or named, by algorithm.
    pub checksums: BTreeMap<Algorithm, String>,
}

/// The end of a verified body: what it hashed to, or why it was refused.
#[derive(Default)]
pub struct Outcome {
    pub error: Option<S3Error>,
    pub computed: Option<Computed>,
}

enum Hasher {
    Crc32(Crc32),
    Crc32c(Crc32c),
    Crc64Nvme(Crc64Nvme),
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Crc32 => Self::Crc32(Crc32::new()),
            Algorithm::Crc32c => Self::Crc32c(Crc32c::new()),
            Algorithm::Crc64Nvme => Self::Crc64Nvme(Crc64Nvme::new()),
            Algorithm::Sha1 => Self::Sha1(Sha1::new()),
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, d: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(d),
            Self::Crc32c(h) => h.update(d),
            Self::Crc64Nvme(h) => h.update(d),
            Self::Sha1(h) => h.update(d),
            Self::Sha256(h) => h.update(d),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Crc32(h) => b64(h.finalize().as_ref()),
            Self::Crc32c(h) => b64(h.finalize().as_ref()),
            Self::Crc64Nvme(h) => b64(h.finalize().as_ref()),
            Self::Sha1(h) => b64(h.finalize().as_ref()),
            Self::Sha256(h) => b64(h.finalize().as_ref()),
        }
    }
}

/// A body that hashes what passes and fails at its end when it does not match what the client
/// said; the [`Outcome`] tells why.
pub struct Verifier {
    inner: BodyStream,
    md5: Option<Md5>,
    hashers: Vec<(Algorithm, Hasher)>,
    expected: Expected,
    outcome: Arc<Mutex<Outcome>>,
    /// The written object's attributes, which take the computed checksums.
    sink: Option<WriteAttrs>,
    done: bool,
}

impl Verifier {
    /// Wraps `body`; the returned outcome is filled when the body ends, and the checksums are
    /// added to `sink`'s.
    pub fn wrap(body: BodyStream, expected: Expected, sink: Option<WriteAttrs>) -> (BodyStream, Arc<Mutex<Outcome>>) {
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let hashers = expected.algorithms().into_iter().map(|a| (a, Hasher::new(a))).collect();
        // MD5 costs about 2 ns per byte, most of a write's CPU: it is computed only to check a
        // `Content-MD5`. A write-back PUT's ETag is its pending version, a write-through PUT's is
        // the origin's, and a part's ETag is computed where the part is staged.
        let md5 = expected.md5.is_some().then(Md5::new);
        let v = Self { inner: body, md5, hashers, expected, outcome: outcome.clone(), sink, done: false };
        (v.boxed(), outcome)
    }

    /// Compares what the body hashed to with what the client said.
    fn conclude(&mut self) -> Result<Computed, S3Error> {
        let md5 = self.md5.take().map(|h| h.finalize());
        if let (Some(want), Some(got)) = (&self.expected.md5, &md5)
            && want.as_slice() != got.as_slice()
        {
            return Err(error(S3ErrorCode::BadDigest, "The Content-MD5 you specified did not match what we received."));
        }
        let mut checksums = BTreeMap::new();
        for (a, h) in std::mem::take(&mut self.hashers) {
            checksums.insert(a, h.finish());
        }
        let mut wanted: Vec<(Algorithm, String)> = self.expected.given.clone();
        if let Some(a) = self.expected.trailer {
            let value = self
                .expected
                .trailers
                .as_ref()
                .and_then(|t| t.read(|h| h.get(a.header()).and_then(|v| v.to_str().ok()).map(str::to_owned)))
                .flatten();
            match value {
                Some(v) => wanted.push((a, v.trim().to_owned())),
                None => {
                    return Err(error(
                        S3ErrorCode::InvalidRequest,
                        format!("the {} trailer announced in x-amz-trailer did not come", a.header()),
                    ));
                }
            }
        }
        for (a, want) in wanted {
            if checksums.get(&a) != Some(&want) {
                return Err(error(
                    S3ErrorCode::BadDigest,
                    format!("The {} you specified did not match the calculated checksum.", a.name()),
                ));
            }
        }
        Ok(Computed { md5: md5.map(hex::encode), checksums })
    }
}

impl Stream for Verifier {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) => {
                let this = &mut *self;
                if let Some(h) = &mut this.md5 {
                    h.update(&b);
                }
                for (_, h) in &mut this.hashers {
                    h.update(&b);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                // s3s checks a single-chunk x-amz-content-sha256 as the body streams.
                if e.to_string().contains("Sha256Mismatch") {
                    let mut err = error(
                        S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    );
                    err.set_status_code(http::StatusCode::BAD_REQUEST);
                    self.outcome.lock().error = Some(err);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                match self.conclude() {
                    Ok(c) => {
                        if let Some(sink) = &self.sink {
                            let mut attrs = sink.lock();
                            for (a, v) in &c.checksums {
                                attrs.checksums.insert(a.name().to_owned(), v.clone());
                            }
                        }
                        self.outcome.lock().computed = Some(c);
                        Poll::Ready(None)
                    }
                    Err(e) => {
                        let msg = e.message().unwrap_or("the body failed verification").to_owned();
                        self.outcome.lock().error = Some(e);
                        Poll::Ready(Some(Err(io::Error::other(msg))))
                    }
                }
            }
        }
    }
}

/// The error a write failed with: the body's verification error when there is one.
pub fn or_verification(outcome: &Mutex<Outcome>, e: S3Error) -> S3Error {
    outcome.lock().error.take().unwrap_or(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(headers: &[(&str, &str)], body: &'static [u8]) -> (Result<Vec<u8>, String>, Outcome) {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).expect("test step"), v.parse().expect("test step"));
        }
        let expected = Expected::from_request(&h, None).expect("test step");
        let stream =
            futures::stream::iter(vec![Ok(Bytes::from_static(&body[..3])), Ok(Bytes::from_static(&body[3..]))]);
        let (mut s, outcome) = Verifier::wrap(stream.boxed(), expected, None);
        let mut got = Vec::new();
        let r = loop {
            match s.next().await {
                Some(Ok(b)) => got.extend_from_slice(&b),
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(got),
            }
        };
        let o = std::mem::take(&mut *outcome.lock());
        (r, o)
    }

    #[tokio::test]
    async fn checks_md5_and_checksums() {
        // md5("hello world") and its CRC32 (0x0d4a1185).
        let md5 = b64(&hex::decode("5eb63bbbe01eeed093cb22bb8f5acdc3").expect("test step"));
        let (r, o) = run(&[("content-md5", &md5), ("x-amz-checksum-crc32", "DUoRhQ==")], b"hello world").await;
        assert_eq!(r.expect("test step"), b"hello world");
        let c = o.computed.expect("test step");
        assert_eq!(c.md5.as_deref(), Some("5eb63bbbe01eeed093cb22bb8f5acdc3"));
        assert_eq!(c.checksums[&Algorithm::Crc32], "DUoRhQ==");

        // Without a Content-MD5 nothing asks for the MD5, and it is not computed.
        let (r, o) = run(&[("x-amz-checksum-crc32", "DUoRhQ==")], b"hello world").await;
        assert_eq!(r.expect("test step"), b"hello world");
        assert_eq!(o.computed.expect("test step").md5, None);

        let (r, o) = run(&[("x-amz-checksum-crc32", "AAAAAA==")], b"hello world").await;
        assert!(r.is_err());
        let e = o.error.expect("test step");
        assert_eq!(*e.code(), S3ErrorCode::BadDigest);
        assert_eq!(e.message(), Some("The CRC32 you specified did not match the calculated checksum."));

        let wrong = b64(&[0u8; 16]);
        let (r, o) = run(&[("content-md5", &wrong)], b"hello world").await;
        assert!(r.is_err());
        assert_eq!(*o.error.expect("test step").code(), S3ErrorCode::BadDigest);
    }

    #[test]
    fn malformed_values_are_refused() {
        let mut h = http::HeaderMap::new();
        h.insert("content-md5", "not-base64!".parse().expect("test step"));
        let e = Expected::from_request(&h, None).err().expect("test step");
        assert_eq!(*e.code(), S3ErrorCode::InvalidDigest);
        let mut h = http::HeaderMap::new();
        h.insert("x-amz-checksum-sha256", "AAAA".parse().expect("test step"));
        let e = Expected::from_request(&h, None).err().expect("test step");
        assert_eq!(*e.code(), S3ErrorCode::InvalidRequest);
    }
}
