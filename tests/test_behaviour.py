"""The behaviour suite, run against every origin (local folder, Azurite, moto S3,
fake-gcs-server): chunked read-through with exact bytes, consistency after an origin overwrite,
single-flight, corruption of cached chunks, restarts, listings, deletes and conditional
requests."""

import concurrent.futures
import hashlib
import signal
import time

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import CHUNK, GcsOrigin, payload


def code_of(exc):
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def get(s3, key, **kw):
    return s3.get_object(Bucket="data", Key=key, **kw)["Body"].read()


def test_multi_chunk_read_through_exact_bytes(node, prefix):
    s3 = node.s3()
    data = payload(5 * CHUNK + 12345, seed=1)
    node.origin.put_direct(prefix + "obj", data)
    assert get(s3, prefix + "obj") == data
    first_origin = node.metric("cairn_origin_bytes_total")
    assert first_origin == len(data)
    # Second read: every chunk is a hit, nothing more from the origin.
    assert get(s3, prefix + "obj") == data
    assert node.metric("cairn_origin_bytes_total") == first_origin
    assert node.metric('cairn_chunk_hits_total{tier="ram"}') >= 6


@pytest.mark.parametrize(
    "header,lo,hi",
    [
        ("bytes=0-0", 0, 1),
        ("bytes=100-299", 100, 300),
        (f"bytes={CHUNK - 1}-{CHUNK}", CHUNK - 1, CHUNK + 1),
        (f"bytes={CHUNK}-{3 * CHUNK - 1}", CHUNK, 3 * CHUNK),
        ("bytes=-100", None, None),
        (f"bytes={2 * CHUNK + 7}-", 2 * CHUNK + 7, None),
        ("bytes=0-99999999", 0, None),
    ],
)
def test_ranged_get(node, prefix, header, lo, hi):
    data = payload(3 * CHUNK + 500, seed=2)
    node.origin.put_direct(prefix + "r", data)
    r = node.s3().get_object(Bucket="data", Key=prefix + "r", Range=header)
    body = r["Body"].read()
    want = data[-100:] if lo is None else data[lo:hi]
    assert body == want
    assert r["ContentLength"] == len(want)
    start = len(data) - 100 if lo is None else lo
    assert r["ContentRange"] == f"bytes {start}-{start + len(want) - 1}/{len(data)}"


def test_unsatisfiable_range(node, prefix):
    node.origin.put_direct(prefix + "small", b"x" * 100)
    with pytest.raises(ClientError) as e:
        node.s3().get_object(Bucket="data", Key=prefix + "small", Range="bytes=100-200")
    assert code_of(e) == ("InvalidRange", 416)


def test_head_and_missing(node, prefix):
    s3 = node.s3()
    node.origin.put_direct(prefix + "h", b"hello world")
    h = s3.head_object(Bucket="data", Key=prefix + "h")
    assert h["ContentLength"] == 11
    assert h["ETag"].startswith('"') and len(h["ETag"]) > 2
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="data", Key=prefix + "nope")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key=prefix + "nope")
    assert code_of(e) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert code_of(e) == ("NoSuchBucket", 404)


def test_overwrite_at_origin_is_seen_after_revalidation_never_mixed(node, prefix):
    s3 = node.s3()
    key = prefix + "ckpt"
    v1 = payload(4 * CHUNK, seed=10)
    v2 = payload(4 * CHUNK + 1000, seed=11)
    node.origin.put_direct(key, v1)
    assert get(s3, key) == v1
    # Read half of v1 so some chunks are cached and others are not, then change the object.
    assert get(s3, key, Range=f"bytes=0-{CHUNK - 1}") == v1[:CHUNK]
    node.origin.put_direct(key, v2)
    time.sleep(1.2)  # metadata policy of the test node is ttl:1s
    assert get(s3, key) == v2
    assert get(s3, key, Range=f"bytes={CHUNK}-{3 * CHUNK - 1}") == v2[CHUNK : 3 * CHUNK]


def test_always_policy_sees_overwrite_immediately(make_node, origin, prefix):
    n = make_node(origin.toml(), env=origin.env, metadata="always")
    s3 = n.s3()
    key = prefix + "always"
    v1, v2 = payload(2 * CHUNK, seed=20), payload(2 * CHUNK + 1, seed=21)
    origin.put_direct(key, v1)
    assert get(s3, key) == v1
    assert get(s3, key) == v1
    origin.put_direct(key, v2)
    assert get(s3, key) == v2
    assert n.metric('cairn_origin_requests_total{op="revalidate"}') >= 2


def test_reads_during_overwrites_return_one_version(make_node, origin, prefix):
    n = make_node(origin.toml(), env=origin.env, metadata="always")
    key = prefix + "flip"
    versions = [payload(3 * CHUNK, seed=s) for s in (30, 31)]
    origin.put_direct(key, versions[0])

    def reader():
        s3 = n.s3()
        seen = []
        for _ in range(6):
            try:
                seen.append(get(s3, key))
            except Exception:  # an aborted response is allowed; a mixed one is not
                pass
        return seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(reader) for _ in range(3)]
        for i in range(6):
            origin.put_direct(key, versions[i % 2])
            time.sleep(0.05)
        results = [b for f in futs for b in f.result()]
    assert results, "no read completed"
    for body in results:
        assert body in versions


def test_single_flight_concurrent_cold_readers(node, prefix):
    data = payload(32 * CHUNK, seed=40)
    key = prefix + "fan-out"
    node.origin.put_direct(key, data)
    digest = hashlib.sha256(data).hexdigest()

    def read(_):
        return hashlib.sha256(get(node.s3(), key)).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(read, range(8))) == [digest] * 8
    assert node.metric("cairn_origin_bytes_total") == len(data)
    assert node.metric('cairn_origin_requests_total{op="get_range"}') == 32


def test_corrupted_disk_chunks_are_refetched(node, prefix):
    data = payload(3 * CHUNK + 77, seed=50)
    key = prefix + "corrupt"
    node.origin.put_direct(key, data)
    assert get(node.s3(), key) == data
    time.sleep(0.3)  # disk writes are in the background
    files = node.chunk_files()
    assert len(files) == 4
    node.stop()
    for f in files:
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    node.start()
    assert get(node.s3(), key) == data
    assert node.metric("cairn_corrupt_chunks_total") == 4
    assert node.metric("cairn_origin_bytes_total") == len(data)


def test_restart_serves_disk_hits(node, prefix):
    data = payload(4 * CHUNK, seed=60)
    key = prefix + "warm"
    node.origin.put_direct(key, data)
    assert get(node.s3(), key) == data
    time.sleep(0.3)
    node.stop(signal.SIGKILL)
    node.start()
    assert get(node.s3(), key) == data
    assert node.metric('cairn_chunk_hits_total{tier="disk"}') == 4
    assert node.metric("cairn_origin_bytes_total") == 0
    assert node.metric('cairn_origin_requests_total{op="get_range"}') == 0


@pytest.mark.writes
def test_put_get_list_delete_through_cairn(node, prefix):
    s3 = node.s3()
    keys = [prefix + k for k in ("a/1", "a/2", "a/b/3", "ab", "c")]
    for i, k in enumerate(keys):
        s3.put_object(Bucket="data", Key=k, Body=payload(1000 + i, seed=i))
    for i, k in enumerate(keys):
        assert get(s3, k) == payload(1000 + i, seed=i)
    r = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert [c["Prefix"] for c in r.get("CommonPrefixes", [])] == [prefix + "a/"]
    assert [o["Key"] for o in r.get("Contents", [])] == [prefix + "ab", prefix + "c"]
    r = s3.list_objects_v2(Bucket="data", Prefix=prefix + "a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == [prefix + "a/1", prefix + "a/2"]
    assert [o["Size"] for o in r["Contents"]] == [1000, 1001]
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == [prefix + "a/b/"]
    # Pagination without a delimiter.
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="data", Prefix=prefix, MaxKeys=2, **kw)
        seen += [o["Key"] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert seen == sorted(keys)
    # Delete invalidates the cache: the next GET is a NoSuchKey, not a stale hit.
    s3.delete_object(Bucket="data", Key=keys[0])
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key=keys[0])
    assert code_of(e) == ("NoSuchKey", 404)
    r = s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": k} for k in keys[1:]]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(keys[1:])
    assert s3.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", []) == []


@pytest.mark.writes
def test_overwrite_through_cairn_is_read_back_at_once(node, prefix):
    s3 = node.s3()
    key = prefix + "rw"
    s3.put_object(Bucket="data", Key=key, Body=payload(2 * CHUNK, seed=70))
    assert get(s3, key) == payload(2 * CHUNK, seed=70)
    s3.put_object(Bucket="data", Key=key, Body=payload(CHUNK + 3, seed=71))
    assert get(s3, key) == payload(CHUNK + 3, seed=71)


def test_conditional_requests(node, prefix):
    s3 = node.s3()
    key = prefix + "cond"
    node.origin.put_direct(key, b"conditional")
    etag = s3.head_object(Bucket="data", Key=key)["ETag"]
    assert get(s3, key, IfMatch=etag) == b"conditional"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key=key, IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key=key, IfMatch='"not-the-etag"')
    assert code_of(e) == ("PreconditionFailed", 412)


@pytest.mark.writes
def test_multipart_upload_round_trip(node, prefix):
    s3 = node.s3()
    key = prefix + "mpu"
    parts = [payload(5 * 1024 * 1024, seed=80), payload(5 * 1024 * 1024, seed=81), payload(1234, seed=82)]
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    etags = []
    for i, p in enumerate(parts, 1):
        etags.append(s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=i, Body=p)["ETag"])
    listed = s3.list_parts(Bucket="data", Key=key, UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, len(parts[0])), (2, len(parts[1])), (3, 1234)]
    s3.complete_multipart_upload(
        Bucket="data", Key=key, UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]},
    )
    assert get(s3, key) == b"".join(parts)
    # The staging area is cleaned up.
    assert list((node.cache_dir / "uploads").iterdir()) == []


def test_healthz_and_metrics(node):
    import requests

    assert requests.get(f"http://127.0.0.1:{node.admin_port}/healthz", timeout=5).text == "ok\n"
    m = node.metrics()
    for name in ("cairn_chunk_misses_total", "cairn_bytes_served_total", "cairn_singleflight_waits_total",
                 'cairn_evictions_total{tier="ram"}', 'cairn_origin_requests_total{op="get_range"}'):
        assert name in m


@pytest.mark.writes
def test_start_after_inside_a_common_prefix_keeps_it(node, prefix):
    s3 = node.s3()
    for k in ("a", "d/x", "d/y", "e"):
        s3.put_object(Bucket="data", Key=prefix + k, Body=k.encode())
    r = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/", StartAfter=prefix + "d/x")
    assert [c["Prefix"] for c in r.get("CommonPrefixes", [])] == [prefix + "d/"]
    assert [o["Key"] for o in r["Contents"]] == [prefix + "e"]
    # Paging one entry at a time visits each entry once.
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/", MaxKeys=1, **kw)
        seen += [o["Key"] for o in r.get("Contents", [])] + [c["Prefix"] for c in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert seen == [prefix + "a", prefix + "d/", prefix + "e"]


def test_account_mode_missing_bucket_is_no_such_bucket(make_node, tmp_path):
    root = tmp_path / "account"
    root.mkdir()
    n = make_node(f'url = "file://{root}"\n')
    s3 = n.s3()
    for call in (
        lambda: s3.get_object(Bucket="missing", Key="k"),
        lambda: s3.head_bucket(Bucket="missing"),
        lambda: s3.list_objects_v2(Bucket="missing"),
        lambda: s3.put_object(Bucket="missing", Key="k", Body=b"x"),
        lambda: s3.delete_bucket(Bucket="missing"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert e.value.response["Error"]["Code"] in ("NoSuchBucket", "404")
    assert list(root.iterdir()) == []
    # A bucket created behind cairn's back is found.
    (root / "later").mkdir()
    s3.put_object(Bucket="later", Key="k", Body=b"late")
    assert s3.get_object(Bucket="later", Key="k")["Body"].read() == b"late"


def test_gcs_account_mode_serves_each_bucket(make_node, gcs_server, prefix):
    """`gs://` alone: S3 bucket names are GCS buckets, each reached through its own client."""
    GcsOrigin(gcs_server)  # bucket "data"
    other = requests.post(f"{gcs_server}/storage/v1/b", json={"name": "other"}, timeout=10)
    assert other.status_code in (200, 409)
    options = f'{{ google_base_url = "{gcs_server}", google_bearer_token = "emulator", allow_http = "true" }}'
    n = make_node(f'url = "gs://"\noptions = {options}\n')
    body = payload(3 * CHUNK + 17, seed=11)
    for bucket, data in (("data", body), ("other", b"other bytes")):
        r = requests.post(f"{gcs_server}/upload/storage/v1/b/{bucket}/o",
                          params={"uploadType": "media", "name": prefix + "k"}, data=data, timeout=30)
        r.raise_for_status()
    s3 = n.s3()
    assert s3.get_object(Bucket="data", Key=prefix + "k")["Body"].read() == body
    assert s3.get_object(Bucket="data", Key=prefix + "k", Range="bytes=262140-262150")["Body"].read() == \
        body[262140:262151]
    assert s3.get_object(Bucket="other", Key=prefix + "k")["Body"].read() == b"other bytes"
    listed = s3.list_objects_v2(Bucket="other", Prefix=prefix)
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(prefix + "k", 11)]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="other", Key=prefix + "missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
