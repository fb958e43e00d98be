"""S3 write semantics: conditional writes (If-None-Match / If-Match) decided at the key's metadata
owner at every durability, integrity headers (Content-MD5, x-amz-checksum-*, trailers), and user
metadata kept through every write path."""

import base64
import concurrent.futures
import datetime
import hashlib
import os
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
import zlib

import botocore.exceptions
import pytest
import requests

from conftest import ACCESS_KEY, SECRET_KEY, LocalOrigin, Node, payload
from test_cluster import Cluster
from test_writeback import sync, with_durability

# Every test here writes through cairn (skipped on the GCS emulator, which takes no XML API writes).
pytestmark = pytest.mark.writes

MIB = 1024 * 1024


def error_of(call, *args, **kwargs):
    """Runs a boto3 call that must fail; returns (code, HTTP status)."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    # A refused PUT's body may be left unread on its connection: the next request starts on a
    # fresh one, so each answer checked here is the answer to its own request.
    call.__self__._endpoint.http_session._manager.clear()
    r = e.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def body_of(s3, key):
    return s3.get_object(Bucket="data", Key=key)["Body"].read()


# ---------------------------------------------------------------------------------------------
# Conditional writes


@pytest.mark.parametrize("durability", ["origin", "local", "replicated"])
def test_conditional_put(node, prefix, durability):
    s3 = with_durability(node.s3(), durability)
    key = prefix + "ckpt/commit.json"
    first = s3.put_object(Bucket="data", Key=key, Body=b"first", IfNoneMatch="*")
    assert error_of(s3.put_object, Bucket="data", Key=key, Body=b"second", IfNoneMatch="*") == (
        "PreconditionFailed", 412)
    assert body_of(s3, key) == b"first"
    # If-Match: a wrong ETag fails and changes nothing; the current one replaces the object.
    assert error_of(s3.put_object, Bucket="data", Key=key, Body=b"third",
                    IfMatch='"0123456789abcdef0123456789abcdef"') == ("PreconditionFailed", 412)
    assert body_of(s3, key) == b"first"
    etag = s3.head_object(Bucket="data", Key=key)["ETag"]
    if durability == "origin":
        assert etag == first["ETag"]
    second = s3.put_object(Bucket="data", Key=key, Body=b"fourth", IfMatch=etag)
    assert body_of(s3, key) == b"fourth"
    # The ETag answered for the write is the one a following If-Match takes, also once a
    # pending write (`local`, `replicated`) has been uploaded and the object's ETag changed.
    s3.put_object(Bucket="data", Key=key, Body=b"fifth", IfMatch=second["ETag"])
    assert body_of(s3, key) == b"fifth"
    # If-Match on a key without an object is 404, as in S3; `If-Match: *` needs any object.
    assert error_of(s3.put_object, Bucket="data", Key=prefix + "missing", Body=b"x", IfMatch=etag) == (
        "NoSuchKey", 404)
    assert error_of(s3.put_object, Bucket="data", Key=prefix + "missing", Body=b"x", IfMatch="*") == (
        "NoSuchKey", 404)
    s3.put_object(Bucket="data", Key=key, Body=b"sixth", IfMatch="*")
    assert body_of(s3, key) == b"sixth"
    # If-None-Match with an ETag (not `*`) is not something S3 writes take: refused, not ignored.
    assert error_of(s3.put_object, Bucket="data", Key=prefix + "other", Body=b"x", IfNoneMatch=etag) == (
        "NotImplemented", 501)
    assert error_of(s3.head_object, Bucket="data", Key=prefix + "other") == ("404", 404)


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_conditional_complete_multipart(node, prefix, durability):
    s3 = with_durability(node.s3(), durability)
    key = prefix + "table/_delta_log/00000.json"
    part = payload(5 * MIB, seed=3)

    def upload(tail):
        up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
        p1 = s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=1, Body=part)["ETag"]
        p2 = s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=2, Body=tail)["ETag"]
        return up, {"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]}

    up, parts = upload(b"winner")
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload=parts, IfNoneMatch="*")
    up, parts = upload(b"loser")
    assert error_of(s3.complete_multipart_upload, Bucket="data", Key=key, UploadId=up, MultipartUpload=parts,
                    IfNoneMatch="*") == ("PreconditionFailed", 412)
    assert body_of(s3, key) == part + b"winner"
    # The refused completion leaves its upload in place: it completes with the right If-Match.
    etag = s3.head_object(Bucket="data", Key=key)["ETag"]
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload=parts, IfMatch=etag)
    assert body_of(s3, key) == part + b"loser"


def test_conditional_copy(node, prefix):
    s3 = node.s3()
    s3.put_object(Bucket="data", Key=prefix + "src", Body=b"source")
    s3.put_object(Bucket="data", Key=prefix + "dst", Body=b"old")

    def copy(**headers):
        s3c = node.s3()

        def add(request, **_):
            for k, v in headers.items():
                request.headers[k] = v

        s3c.meta.events.register("before-sign.s3.CopyObject", add)
        return s3c.copy_object(Bucket="data", Key=prefix + "dst", CopySource=f"data/{prefix}src")

    with pytest.raises(botocore.exceptions.ClientError) as e:
        copy(**{"If-None-Match": "*"})
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    assert body_of(s3, prefix + "dst") == b"old"
    copy(**{"If-Match": s3.head_object(Bucket="data", Key=prefix + "dst")["ETag"]})
    assert body_of(s3, prefix + "dst") == b"source"


@pytest.mark.parametrize("durability", ["origin", "local", "replicated"])
def test_if_none_match_race_between_nodes(tmp_path, durability):
    """Two nodes create the same keys at once with If-None-Match: *: for every key exactly one
    write wins, the other is 412, and every node reads the winner's bytes."""
    c = Cluster(tmp_path, 3, chunk=1 * 1024 * 1024, origin=LocalOrigin(tmp_path / "origin"))
    try:
        clients = [with_durability(n.s3(), durability) for n in c.nodes]
        rounds = 8
        for r in range(rounds):
            key = f"race/{durability}/{r}"
            bodies = [payload(256 * 1024 + i, seed=100 * r + i) for i in range(2)]
            barrier = threading.Barrier(2)

            def put(i):
                barrier.wait()
                try:
                    clients[i].put_object(Bucket="data", Key=key, Body=bodies[i], IfNoneMatch="*")
                    return i, 200
                except botocore.exceptions.ClientError as e:
                    return i, (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                results = dict(pool.map(put, [0, 1]))
            winners = [i for i, r in results.items() if r == 200]
            assert len(winners) == 1, results
            loser = 1 - winners[0]
            assert results[loser] == ("PreconditionFailed", 412), results
            for s3 in clients:
                assert body_of(s3, key) == bodies[winners[0]]
    finally:
        c.stop()


# ---------------------------------------------------------------------------------------------
# Integrity


def b64(data):
    return base64.b64encode(data).decode()


def crc32_b64(data):
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def signed_put(node, key, body, headers):
    """A PutObject signed by hand, so the test chooses every header (and the body's framing)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{node.endpoint}/data/{key}"
    req = AWSRequest(method="PUT", url=url, data=body, headers=dict(headers))
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(req)
    return requests.put(url, data=body, headers=dict(req.headers.items()), timeout=30)


def s3_error(resp):
    """(code, message) of an S3 XML error answer."""
    root = ET.fromstring(resp.content)
    return root.findtext("Code"), root.findtext("Message")


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_content_md5_is_checked(node, prefix, durability):
    s3 = with_durability(node.s3(), durability)
    key = prefix + "obj"
    s3.put_object(Bucket="data", Key=key, Body=b"previous")
    body = b"new bytes"
    good = b64(hashlib.md5(body).digest())
    wrong = b64(hashlib.md5(b"other bytes").digest())
    assert error_of(s3.put_object, Bucket="data", Key=key, Body=body, ContentMD5=wrong) == ("BadDigest", 400)
    assert body_of(s3, key) == b"previous"
    assert error_of(s3.put_object, Bucket="data", Key=prefix + "fresh", Body=body, ContentMD5=wrong) == (
        "BadDigest", 400)
    assert error_of(s3.head_object, Bucket="data", Key=prefix + "fresh") == ("404", 404)
    assert error_of(s3.put_object, Bucket="data", Key=key, Body=body, ContentMD5="not-an-md5") == (
        "InvalidDigest", 400)
    s3.put_object(Bucket="data", Key=key, Body=body, ContentMD5=good)
    assert body_of(s3, key) == body


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_checksum_headers_are_checked_and_kept(node, prefix, durability):
    s3 = with_durability(node.s3(), durability)
    key = prefix + "obj"
    s3.put_object(Bucket="data", Key=key, Body=b"previous")
    body = payload(100_000, seed=5)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="data", Key=key, Body=body, ChecksumCRC32=crc32_b64(b"other"))
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert e.value.response["Error"]["Message"] == "The CRC32 you specified did not match the calculated checksum."
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="data", Key=key, Body=body, ChecksumSHA256=b64(hashlib.sha256(b"x").digest()))
    assert e.value.response["Error"]["Message"] == "The SHA256 you specified did not match the calculated checksum."
    assert body_of(s3, key) == b"previous"
    # boto3's default: a CRC32 it computes itself; returned with ChecksumMode=ENABLED.
    s3.put_object(Bucket="data", Key=key, Body=body)
    got = s3.get_object(Bucket="data", Key=key, ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumCRC32"] == crc32_b64(body)
    assert s3.head_object(Bucket="data", Key=key, ChecksumMode="ENABLED")["ChecksumCRC32"] == crc32_b64(body)
    # A range has no checksum of its own (boto3 would check the object's against it).
    part = s3.get_object(Bucket="data", Key=key, Range="bytes=10-99", ChecksumMode="ENABLED")
    assert part["Body"].read() == body[10:100] and "ChecksumCRC32" not in part
    sha = b64(hashlib.sha256(body).digest())
    s3.put_object(Bucket="data", Key=key, Body=body, ChecksumSHA256=sha)
    assert s3.head_object(Bucket="data", Key=key, ChecksumMode="ENABLED")["ChecksumSHA256"] == sha
    if durability == "local":
        # The ETag changes when the upload lands: compare once it has.
        assert sync(node, prefix)[0] == 200
    attrs = s3.get_object_attributes(Bucket="data", Key=key,
                                     ObjectAttributes=["ETag", "Checksum", "ObjectSize", "StorageClass"])
    assert attrs["ObjectSize"] == len(body)
    assert attrs["Checksum"]["ChecksumSHA256"] == sha
    assert attrs["StorageClass"] == "STANDARD"
    # S3 answers this ETag without quotes; s3s writes every ETag quoted.
    assert attrs["ETag"].strip('"') == s3.head_object(Bucket="data", Key=key)["ETag"].strip('"')


def aws_chunked(body, trailer_name, trailer_value, chunk=64 * 1024):
    out = b""
    for i in range(0, len(body), chunk):
        piece = body[i:i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n" + f"{trailer_name}:{trailer_value}\r\n\r\n".encode()


def test_trailer_checksums_are_checked(node, prefix):
    s3 = node.s3()
    key = prefix + "trailer"
    s3.put_object(Bucket="data", Key=key, Body=b"previous")
    body = payload(300_000, seed=9)

    def put(value):
        framed = aws_chunked(body, "x-amz-checksum-crc32", value)
        return signed_put(node, key, framed, {
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(body)),
            "x-amz-trailer": "x-amz-checksum-crc32",
            "content-length": str(len(framed)),
        })

    r = put(crc32_b64(b"not the body"))
    assert r.status_code == 400, r.text
    assert s3_error(r) == ("BadDigest", "The CRC32 you specified did not match the calculated checksum.")
    assert body_of(s3, key) == b"previous"
    r = put(crc32_b64(body))
    assert r.status_code == 200, r.text
    got = s3.get_object(Bucket="data", Key=key, ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumCRC32"] == crc32_b64(body)


def test_content_sha256_mismatch(node, prefix):
    key = prefix + "sha"
    node.s3().put_object(Bucket="data", Key=key, Body=b"previous")
    body = b"the body that is sent"
    r = signed_put(node, key, body, {"x-amz-content-sha256": hashlib.sha256(b"another body").hexdigest()})
    assert r.status_code == 400, r.text
    assert s3_error(r)[0] == "XAmzContentSHA256Mismatch"
    assert body_of(node.s3(), key) == b"previous"


# ---------------------------------------------------------------------------------------------
# Metadata

ATTRS = {
    "ContentType": "application/x-checkpoint",
    "CacheControl": "max-age=60",
    "ContentEncoding": "identity",
    "ContentDisposition": 'attachment; filename="step.ckpt"',
    "ContentLanguage": "en-GB",
}
# Keys Azure takes too (its metadata names are C# identifiers: no '-').
USER_META = {"owner": "rank0", "step": "1200", "note": "a b=c"}
EXPIRES = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)


def assert_attrs(resp, meta=USER_META, attrs=ATTRS, expires=EXPIRES):
    assert resp["Metadata"] == meta
    for k, v in attrs.items():
        assert resp[k] == v, k
    if expires is not None:
        assert resp["Expires"] == expires


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_metadata_round_trips(node, prefix, durability, tmp_path):
    s3 = with_durability(node.s3(), durability)
    key = prefix + "m/obj"
    body = payload(70_000, seed=11)
    s3.put_object(Bucket="data", Key=key, Body=body, Metadata=USER_META, Expires=EXPIRES, **ATTRS)
    assert_attrs(s3.head_object(Bucket="data", Key=key))
    got = s3.get_object(Bucket="data", Key=key)
    assert got["Body"].read() == body
    assert_attrs(got)
    # Multipart: the attributes given at CreateMultipartUpload.
    mkey = prefix + "m/multi"
    up = s3.create_multipart_upload(Bucket="data", Key=mkey, Metadata=USER_META, Expires=EXPIRES, **ATTRS)["UploadId"]
    part = payload(5 * MIB, seed=12)
    e1 = s3.upload_part(Bucket="data", Key=mkey, UploadId=up, PartNumber=1, Body=part)["ETag"]
    e2 = s3.upload_part(Bucket="data", Key=mkey, UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    s3.complete_multipart_upload(Bucket="data", Key=mkey, UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert_attrs(s3.head_object(Bucket="data", Key=mkey))
    # CopyObject: COPY keeps the source's, REPLACE takes the request's.
    s3.copy_object(Bucket="data", Key=prefix + "m/copy", CopySource=f"data/{key}")
    assert_attrs(s3.head_object(Bucket="data", Key=prefix + "m/copy"))
    s3.copy_object(Bucket="data", Key=prefix + "m/repl", CopySource=f"data/{key}", MetadataDirective="REPLACE",
                   Metadata={"other": "x"}, ContentType="text/plain")
    h = s3.head_object(Bucket="data", Key=prefix + "m/repl")
    assert h["Metadata"] == {"other": "x"} and h["ContentType"] == "text/plain"
    assert "CacheControl" not in h and "Expires" not in h
    # Through the write-back (local) and a restart: a fresh node reads them from the origin.
    if durability == "local":
        assert sync(node, prefix)[0] == 200
    node.restart()
    assert_attrs(node.s3().head_object(Bucket="data", Key=key))
    fresh = Node(tmp_path / "fresh", node.origin.toml(), env=node.origin.env)
    try:
        for k in (key, mkey, prefix + "m/copy"):
            h = fresh.s3().head_object(Bucket="data", Key=k)
            assert_attrs(h)
            assert not h["ETag"].strip('"').startswith("cairn-w-")
        assert fresh.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
    finally:
        fresh.stop()


def test_file_origin_etag_is_md5_and_attrs_are_invisible(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml())
    s3 = node.s3()
    body = payload(123_457, seed=4)
    r = s3.put_object(Bucket="data", Key=prefix + "a.bin", Body=body, Metadata={"k": "v"})
    md5 = '"' + hashlib.md5(body).hexdigest() + '"'
    assert r["ETag"] == md5
    assert s3.head_object(Bucket="data", Key=prefix + "a.bin")["ETag"] == md5
    listed = s3.list_objects_v2(Bucket="data", Prefix=prefix)["Contents"]
    assert [(o["Key"], o["ETag"]) for o in listed] == [(prefix + "a.bin", md5)]
    # Only the object's file is in the folder: the attributes live in its extended attribute.
    assert sorted(p.name for p in (origin.root / prefix).iterdir()) == ["a.bin"]
    # A file replaced behind cairn's back keeps the folder's own ETag and no stale attributes.
    origin.put_direct(prefix + "a.bin", b"changed")
    time.sleep(1.2)
    h = s3.head_object(Bucket="data", Key=prefix + "a.bin")
    assert h["ETag"] != md5 and h["Metadata"] == {} and h["ContentLength"] == 7


def test_rclone_sync_twice_uploads_nothing_the_second_time(make_node, tmp_path):
    rclone = shutil.which("rclone")
    if not rclone:
        pytest.skip("rclone not installed")
    node = make_node(LocalOrigin(tmp_path / "origin").toml())
    src = tmp_path / "src"
    for i in range(5):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(payload(10_000 + i * 1000, seed=i))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update({
        "RCLONE_CONFIG_C_TYPE": "s3", "RCLONE_CONFIG_C_PROVIDER": "Other",
        "RCLONE_CONFIG_C_ACCESS_KEY_ID": ACCESS_KEY, "RCLONE_CONFIG_C_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_C_ENDPOINT": node.endpoint, "RCLONE_CONFIG_C_FORCE_PATH_STYLE": "true",
    })

    def sync():
        p = subprocess.run([rclone, "sync", str(src), "c:data/rc", "--stats-one-line", "-v", "--stats", "0"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stderr

    first = sync()
    assert first.count("Copied (new)") == 5, first
    second = sync()
    assert "Copied" not in second, second
    assert node.s3().get_object(Bucket="data", Key="rc/d0/f0.bin")["Body"].read() == payload(10_000, seed=0)
