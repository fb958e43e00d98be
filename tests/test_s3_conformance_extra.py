"""S3 behaviours that Ceph's s3-tests check and that the behaviour suite did not: two writers of
one key with a slow body, listing edge cases, bucket re-creation and ListBuckets paging, `Date`
signed requests, chunked request bodies, request ids in errors, UploadPartCopy ranges."""

import http.client
import threading
import time
import xml.etree.ElementTree as ET

import pytest
from botocore.exceptions import ClientError

from conftest import payload

# A writer of one key must not wait on another writer that is still sending: well under the
# time the slow writer is held back below.
PROMPT = 5.0
SLOW_WRITER_HELD = 12.0


def error_of(call):
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


@pytest.fixture
def account(make_node, tmp_path):
    """A node in front of an account-mode file:// origin (buckets are folders), anonymous
    access allowed for raw HTTP requests."""
    root = tmp_path / "account"
    root.mkdir()
    n = make_node(f'url = "file://{root}"\n', extra="allow_anonymous = true")
    n.root = root
    return n


# ---------------------------------------------------------------------------------------------
# Two writers of one key


@pytest.mark.writes
@pytest.mark.parametrize("size", [1 << 20, 12 << 20], ids=["single-put", "multipart-at-origin"])
def test_a_writer_is_not_held_up_by_a_slow_writer_of_the_same_key(make_node, origin, prefix, size):
    node = make_node(origin.toml(), env=origin.env, extra="allow_anonymous = true")
    key = f"{prefix}dual"
    slow_body, fast_body = payload(size, seed=1), payload(size, seed=2)
    half_sent, fast_done = threading.Event(), threading.Event()
    slow = {}

    def slow_writer():
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        conn.putrequest("PUT", f"/data/{key}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        conn.send(slow_body[: size // 2])
        half_sent.set()
        fast_done.wait(SLOW_WRITER_HELD)
        conn.send(slow_body[size // 2:])
        resp = conn.getresponse()
        slow["status"], slow["body"] = resp.status, resp.read()
        slow["acked"] = time.monotonic()

    t = threading.Thread(target=slow_writer)
    t.start()
    assert half_sent.wait(30)
    time.sleep(0.3)  # the slow body's first half is in the node
    s3 = node.s3()
    started = time.monotonic()
    s3.put_object(Bucket="data", Key=key, Body=fast_body)
    fast_took = time.monotonic() - started
    fast_acked = time.monotonic()
    fast_done.set()
    t.join(60)
    assert not t.is_alive()
    assert slow["status"] == 200, slow["body"]
    assert fast_took < PROMPT, f"the second writer waited {fast_took:.1f}s for the first"
    assert slow["acked"] - fast_acked < PROMPT
    # The slow writer was acknowledged last: its whole body is the object, through cairn and at
    # the origin.
    got = s3.get_object(Bucket="data", Key=key)["Body"].read()
    assert len(got) == size
    assert got == slow_body
    if origin.name == "file":
        assert (origin.root / key).read_bytes() == slow_body


# ---------------------------------------------------------------------------------------------
# Listings


def test_an_empty_delimiter_is_no_delimiter(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="lists")
    keys = ["bar", "baz", "cab", "foo/x"]
    for k in keys:
        s3.put_object(Bucket="lists", Key=k, Body=b"x")
    for r in (s3.list_objects(Bucket="lists", Delimiter=""), s3.list_objects_v2(Bucket="lists", Delimiter="")):
        assert "Delimiter" not in r
        assert [o["Key"] for o in r["Contents"]] == keys
        assert "CommonPrefixes" not in r
    raw = http.client.HTTPConnection("127.0.0.1", account.port, timeout=10)
    raw.request("GET", "/lists?list-type=2&delimiter=")
    body = raw.getresponse().read().decode()
    assert "<Delimiter" not in body, body


def test_a_newline_prefix_comes_back_as_sent(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="lists")
    s3.put_object(Bucket="lists", Key="quux", Body=b"x")
    # boto3 asks ListObjects for encoding-type=url and decodes neither V1's Prefix nor a raw one.
    r = s3.list_objects(Bucket="lists", Prefix="\n")
    assert r["Prefix"] == "\n"
    assert "Contents" not in r
    r = s3.list_objects_v2(Bucket="lists", Prefix="\n")
    assert r["Prefix"] == "\n"
    raw = http.client.HTTPConnection("127.0.0.1", account.port, timeout=10)
    raw.request("GET", "/lists?prefix=%0A")
    root = ET.fromstring(raw.getresponse().read())
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    assert root.find(f"{ns}Prefix").text == "\n"


# ---------------------------------------------------------------------------------------------
# Buckets


def test_creating_an_owned_bucket_again_succeeds_and_keeps_it(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="again")
    s3.put_object(Bucket="again", Key="k1", Body=b"one")
    r = s3.create_bucket(Bucket="again")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="again")["Contents"]] == ["k1"]
    assert s3.get_object(Bucket="again", Key="k1")["Body"].read() == b"one"


def test_list_buckets_pages(account):
    s3 = account.s3()
    assert s3.list_buckets(MaxBuckets=1)["Buckets"] == []
    for b in ("page-c", "page-a", "page-b"):
        s3.create_bucket(Bucket=b)
    r = s3.list_buckets(MaxBuckets=1)
    assert [b["Name"] for b in r["Buckets"]] == ["page-a"]
    seen = ["page-a"]
    while "ContinuationToken" in r:
        r = s3.list_buckets(MaxBuckets=1, ContinuationToken=r["ContinuationToken"])
        seen += [b["Name"] for b in r["Buckets"]]
    assert seen == ["page-a", "page-b", "page-c"]
    r = s3.list_buckets(MaxBuckets=2)
    assert [b["Name"] for b in r["Buckets"]] == ["page-a", "page-b"]
    r = s3.list_buckets(MaxBuckets=2, ContinuationToken=r["ContinuationToken"])
    assert [b["Name"] for b in r["Buckets"]] == ["page-c"]
    assert "ContinuationToken" not in r
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["page-a", "page-b", "page-c"]
    assert [b["Name"] for b in s3.list_buckets(Prefix="page-b")["Buckets"]] == ["page-b"]
    raw = http.client.HTTPConnection("127.0.0.1", account.port, timeout=10)
    raw.request("GET", "/?max-buckets=0")  # boto3 refuses to send it
    resp = raw.getresponse()
    body = resp.read().decode()
    assert resp.status == 400 and "<Code>InvalidArgument</Code>" in body, body


# ---------------------------------------------------------------------------------------------
# Requests


def _signed_with_date(s3, date):
    """Makes the client sign PutObject with a `Date` header: botocore then sends no X-Amz-Date."""
    s3.meta.events.register("before-call.s3.PutObject",
                            lambda params, **kw: params["headers"].update({"Date": date}))


def test_a_request_signed_with_date_instead_of_x_amz_date_is_accepted(account):
    from email.utils import formatdate

    s3 = account.s3()
    s3.create_bucket(Bucket="dated")
    sent = {}
    s3.meta.events.register("before-send.s3.PutObject",
                            lambda request, **kw: sent.update(request.headers))
    _signed_with_date(s3, formatdate(usegmt=True))
    s3.put_object(Bucket="dated", Key="k", Body=b"dated body")
    assert "X-Amz-Date" not in sent and "Date" in sent
    assert account.s3().get_object(Bucket="dated", Key="k")["Body"].read() == b"dated body"


def test_a_chunked_put_without_content_length_is_stored(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="chunked")
    s3.meta.events.register_first("before-sign.*.*",
                                  lambda request, **kw: request.headers.add_header("Transfer-Encoding", "chunked"))
    r = s3.put_object(Bucket="chunked", Key="foo", Body=b"bar")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert account.s3().get_object(Bucket="chunked", Key="foo")["Body"].read() == b"bar"
    # A raw chunked body, several chunks.
    body = payload(300_000, seed=3)
    conn = http.client.HTTPConnection("127.0.0.1", account.port, timeout=30)
    conn.request("PUT", "/chunked/raw", body=iter([body[:100_000], body[100_000:]]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    assert account.s3().get_object(Bucket="chunked", Key="raw")["Body"].read() == body


def test_a_chunked_put_over_the_buffer_answers_missing_content_length(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="chunked")
    # Just over the 8 MiB the node gathers, so what it leaves unread fits in socket buffers.
    piece = b"z" * (256 << 10)
    conn = http.client.HTTPConnection("127.0.0.1", account.port, timeout=30)
    conn.request("PUT", "/chunked/big", body=iter([piece] * 33), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 411, body
    assert "<Code>MissingContentLength</Code>" in body
    assert error_of(lambda: s3.head_object(Bucket="chunked", Key="big"))[0] == 404


def test_error_documents_carry_the_request_id_of_the_header(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="ids")
    raw = {}
    s3.meta.events.register("after-call.s3.GetObject", lambda http_response, **kw: raw.update(r=http_response))
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="ids", Key="missing")
    header = raw["r"].headers["x-amz-request-id"]
    assert header
    assert ET.fromstring(raw["r"].content).find("RequestId").text == header
    assert e.value.response["ResponseMetadata"]["RequestId"] == header
    # Every answer has one, and no two are alike.
    ok = s3.put_object(Bucket="ids", Key="k", Body=b"x")["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert ok and ok != header
    # Errors made before the request reaches an operation too (here: a bad signature).
    bad = account.s3(secret_key="wrong-secret")
    raw.clear()
    bad.meta.events.register("after-call.s3.GetObject", lambda http_response, **kw: raw.update(r=http_response))
    with pytest.raises(ClientError):
        bad.get_object(Bucket="ids", Key="k")
    assert ET.fromstring(raw["r"].content).find("RequestId").text == raw["r"].headers["x-amz-request-id"]


def test_upload_part_copy_past_the_source_is_invalid_range(account):
    s3 = account.s3()
    s3.create_bucket(Bucket="copies")
    s3.put_object(Bucket="copies", Key="source", Body=b"12345")
    upload = s3.create_multipart_upload(Bucket="copies", Key="dest")["UploadId"]

    def copy(rng):
        return lambda: s3.upload_part_copy(Bucket="copies", Key="dest", UploadId=upload, PartNumber=1,
                                           CopySource={"Bucket": "copies", "Key": "source"},
                                           CopySourceRange=rng)

    assert error_of(copy("bytes=0-21")) == (416, "InvalidRange")
    assert error_of(copy("bytes=5-5")) == (416, "InvalidRange")
    for malformed in ("0-2", "bytes=0", "bytes=hello-world", "bytes=0-bar", "bytes=3-1"):
        assert error_of(copy(malformed)) == (400, "InvalidArgument"), malformed
    s3.upload_part_copy(Bucket="copies", Key="dest", UploadId=upload, PartNumber=1,
                        CopySource={"Bucket": "copies", "Key": "source"}, CopySourceRange="bytes=1-4")
    parts = s3.list_parts(Bucket="copies", Key="dest", UploadId=upload)["Parts"]
    s3.complete_multipart_upload(Bucket="copies", Key="dest", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": parts[0]["ETag"]}]})
    assert s3.get_object(Bucket="copies", Key="dest")["Body"].read() == b"2345"
