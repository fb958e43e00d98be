//! What the S3 endpoint does around s3s for each request: it gives the request an id (the
//! `x-amz-request-id` header of the answer, and the `<RequestId>` of an error document), takes
//! the SigV4 request time from `Date` when there is no `X-Amz-Date`, and learns the length of a
//! body sent without one.

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

/// The longest body sent without a length (`Transfer-Encoding: chunked`, not aws-chunked) that
/// is gathered to learn its length; a longer one answers `411 MissingContentLength`, as S3
/// answers every such body.
pub const CHUNKED_BODY_MAX: usize = 8 << 20;

const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_REQUEST_ID: &str = "x-amz-request-id";

/// A new request id: 16 hex digits, as S3's.
pub fn new_request_id() -> String {
    // Written digit by digit: this runs for every request, and `format!` costs several times more.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let n = rand::random::<u64>();
    (0..16).rev().map(|i| char::from(HEX[((n >> (i * 4)) & 0xF) as usize])).collect()
}

/// An S3 error document.
pub fn xml_error(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = Response::new(s3s::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp
}

/// Names the answer with the request's id: the header, and in an error document its
/// `<RequestId>` (s3s writes none).
pub fn with_request_id(mut resp: Response<s3s::Body>, id: &str) -> Response<s3s::Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(X_AMZ_REQUEST_ID, v);
    }
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let Some(doc) = resp.body().bytes().and_then(|b| error_with_request_id(&b, id)) else { return resp };
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(doc.len()));
    *resp.body_mut() = s3s::Body::from(doc);
    resp
}

fn error_with_request_id(doc: &[u8], id: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(doc).ok()?;
    if text.contains("<RequestId>") {
        return None;
    }
    let end = text.rfind("</Error>")?;
    Some(format!("{}<RequestId>{id}</RequestId>{}", &text[..end], &text[end..]).into_bytes())
}

/// SigV4 takes the request time from `Date` when `X-Amz-Date` is absent; s3s reads only the
/// latter, so it is filled in from the former. It is then not a signed header, so the signature
/// (over `date`, and over the time in the string to sign) is checked as the client made it.
pub fn amz_date_from_date(headers: &mut HeaderMap) {
    if headers.contains_key(X_AMZ_DATE) {
        return;
    }
    let sigv4 =
        headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 "));
    if !sigv4 {
        return;
    }
    let Some(date) = headers.get(DATE).and_then(|v| v.to_str().ok()) else { return };
    let Ok(time) = chrono::DateTime::parse_from_rfc2822(date) else { return };
    let stamp = time.with_timezone(&chrono::Utc).format("%Y%m%dT%H%M%SZ").to_string();
    if let Ok(v) = HeaderValue::from_str(&stamp) {
        headers.insert(X_AMZ_DATE, v);
    }
}

/// The request with a body s3s can take: a body sent without a length (and not as aws-chunked,
/// which carries its decoded length) is gathered, up to [`CHUNKED_BODY_MAX`], and given a
/// `Content-Length`. Else the answer to send instead.
pub async fn with_known_length(mut req: Request<s3s::Body>) -> Result<Request<s3s::Body>, Response<s3s::Body>> {
    let headers = req.headers();
    let unknown = headers.contains_key(TRANSFER_ENCODING)
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key("x-amz-decoded-content-length");
    if !unknown {
        return Ok(req);
    }
    match req.body_mut().store_all_limited(CHUNKED_BODY_MAX).await {
        Ok(body) => {
            req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Ok(req)
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(xml_error(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            &format!("You must provide the Content-Length HTTP header for a body over {CHUNKED_BODY_MAX} bytes."),
        )),
        Err(e) => Err(xml_error(StatusCode::BAD_REQUEST, "IncompleteBody", &format!("the request body failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_upper_case_hex_digits() {
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)), "{id}");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn request_id_goes_before_the_end_of_the_error() {
        let doc = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code></Error>";
        let out = error_with_request_id(doc, "ABC").map(String::from_utf8);
        let out = out.and_then(Result::ok).unwrap_or_default();
        assert_eq!(out, "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><RequestId>ABC</RequestId></Error>");
        assert!(error_with_request_id(out.as_bytes(), "DEF").is_none());
        assert!(error_with_request_id(b"not xml", "ABC").is_none());
    }

    #[test]
    fn date_becomes_x_amz_date_for_sigv4_only() {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=k/20261130/us-east-1/s3/aws4_request"),
        );
        h.insert(DATE, HeaderValue::from_static("Mon, 30 Nov 2026 14:05:09 -0000"));
        amz_date_from_date(&mut h);
        assert_eq!(h.get(X_AMZ_DATE).map(HeaderValue::as_bytes), Some(&b"20261130T140509Z"[..]));
        let mut gmt = HeaderMap::new();
        gmt.insert(AUTHORIZATION, HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=x"));
        gmt.insert(DATE, HeaderValue::from_static("Mon, 30 Nov 2026 14:05:09 GMT"));
        amz_date_from_date(&mut gmt);
        assert_eq!(gmt.get(X_AMZ_DATE).map(HeaderValue::as_bytes), Some(&b"20261130T140509Z"[..]));
        let mut v2 = HeaderMap::new();
        v2.insert(AUTHORIZATION, HeaderValue::from_static("AWS k:sig"));
        v2.insert(DATE, HeaderValue::from_static("Mon, 30 Nov 2026 14:05:09 GMT"));
        amz_date_from_date(&mut v2);
        assert!(v2.get(X_AMZ_DATE).is_none());
    }
}
