"""S3 details clients depend on: retried and failed multipart completions, ListMultipartUploads,
reads by part number, connections that stay usable after a refused request, conditional-read
headers, authentication errors and their logging, and keys a folder origin cannot hold."""

import http.client
import io
import json
import socket
import subprocess
import time
import urllib.parse

import botocore.exceptions
import pytest
import requests

from conftest import ACCESS_KEY, AzuriteOrigin, AzuriteProcess, LocalOrigin, SECRET_KEY, payload
from test_clients import aws_env

# The tests write through cairn (skipped on the GCS emulator, which takes no XML API writes).
pytestmark = pytest.mark.writes

MIB = 1024 * 1024


def error_of(excinfo):
    e = excinfo.value.response
    return e["ResponseMetadata"]["HTTPStatusCode"], e["Error"]["Code"], e["Error"].get("Message", "")


def upload_parts(s3, key, sizes, seed=0):
    """Creates an upload of `key` and uploads parts of these sizes; returns (id, parts, body)."""
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    parts, body = [], b""
    for i, size in enumerate(sizes, start=1):
        data = payload(size, seed=seed * 100 + i)
        r = s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=i, Body=data)
        parts.append({"PartNumber": i, "ETag": r["ETag"]})
        body += data
    return up, parts, body


# ---------------------------------------------------------------------------------------------
# CompleteMultipartUpload: retries and failures


def test_retried_completion_answers_the_same_etag(node, prefix):
    s3 = node.s3()
    key = f"{prefix}retried.bin"
    up, parts, body = upload_parts(s3, key, [5 * MIB, 1000])
    first = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    second = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert second["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert second["ETag"] == first["ETag"]
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == body
    # The upload itself is gone: its parts cannot be listed or added to.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_parts(Bucket="data", Key=key, UploadId=up)
    assert error_of(e)[:2] == (404, "NoSuchUpload")
    # A completion of that id under another key is no retry.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket="data", Key=key + "x", UploadId=up, MultipartUpload={"Parts": parts})
    assert error_of(e)[:2] == (404, "NoSuchUpload")


def test_retried_completion_survives_a_restart(make_node, tmp_path, prefix):
    node = make_node(LocalOrigin(tmp_path / "o").toml())
    s3 = node.s3()
    key = f"{prefix}restart.bin"
    up, parts, body = upload_parts(s3, key, [5 * MIB, 10])
    first = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    node.restart()
    again = node.s3().complete_multipart_upload(Bucket="data", Key=key, UploadId=up,
                                                MultipartUpload={"Parts": parts})
    assert again["ETag"] == first["ETag"]
    assert (tmp_path / "o" / key).read_bytes() == body


def test_concurrent_completions_of_one_upload_agree(make_node, tmp_path, prefix):
    import concurrent.futures

    node = make_node(LocalOrigin(tmp_path / "o").toml())
    s3 = node.s3()
    key = f"{prefix}concurrent.bin"
    up, parts, body = upload_parts(s3, key, [5 * MIB, 5 * MIB, 7])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda _: node.s3().complete_multipart_upload(Bucket="data", Key=key, UploadId=up,
                                                          MultipartUpload={"Parts": parts}),
            range(4)))
    assert len({a["ETag"] for a in answers}) == 1
    assert (tmp_path / "o" / key).read_bytes() == body


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_completion_with_a_wrong_part_etag_leaves_the_upload_completable(make_node, tmp_path, prefix, durability):
    origin = LocalOrigin(tmp_path / "o")
    node = make_node(origin.toml())
    s3 = node.s3()
    s3.meta.events.register("before-sign.s3.*",
                            lambda request, **_: request.headers.__setitem__("x-cairn-durability", durability))
    key = f"{prefix}wrong-etag.bin"
    up, parts, body = upload_parts(s3, key, [5 * MIB, 5 * MIB, 123])
    bad = [dict(p) for p in parts]
    bad[1]["ETag"] = '"00000000000000000000000000000000"'
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": bad})
    assert error_of(e)[:2] == (400, "InvalidPart")
    listed = s3.list_parts(Bucket="data", Key=key, UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    r = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == body


@pytest.fixture
def azurite(tmp_path):
    az = AzuriteProcess(tmp_path / "azurite")
    yield az
    az.stop()


def test_completion_while_the_origin_refuses_can_be_retried(make_node, azurite, prefix):
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml(), env=origin.env)
    s3 = node.s3()
    key = f"{prefix}outage.bin"
    up, parts, body = upload_parts(s3, key, [5 * MIB, 5 * MIB, 4321])
    azurite.stop()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    assert error_of(e)[:2] == (503, "ServiceUnavailable")
    azurite.start()
    r = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert origin.container.download_blob(key).readall() == body
    again = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    assert again["ETag"] == r["ETag"]


# ---------------------------------------------------------------------------------------------
# ListMultipartUploads


def test_list_multipart_uploads(make_node, tmp_path, prefix):
    node = make_node(LocalOrigin(tmp_path / "o").toml())
    s3 = node.s3()
    keys = [f"{prefix}a/1", f"{prefix}a/2", f"{prefix}b", f"{prefix}b", f"{prefix}c/d/e", "other/x"]
    ids = [s3.create_multipart_upload(Bucket="data", Key=k)["UploadId"] for k in keys]
    expected = sorted(zip(keys, ids))

    def listed(**kw):
        r = s3.list_multipart_uploads(Bucket="data", **kw)
        return r, [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]

    r, got = listed(Prefix=prefix)
    assert got == [e for e in expected if e[0].startswith(prefix)]
    assert r["IsTruncated"] is False
    assert all(u["Initiated"] and u["StorageClass"] == "STANDARD" for u in r["Uploads"])
    # Pages of two, following the markers, give the same list.
    pages, kw = [], {}
    while True:
        r, got = listed(Prefix=prefix, MaxUploads=2, **kw)
        pages += got
        assert len(got) <= 2
        if not r["IsTruncated"]:
            break
        kw = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
    assert pages == [e for e in expected if e[0].startswith(prefix)]
    # The delimiter rolls keys up into common prefixes.
    r, got = listed(Prefix=prefix, Delimiter="/")
    assert got == [e for e in expected if e[0] == f"{prefix}b"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == [f"{prefix}a/", f"{prefix}c/"]
    r, got = listed(Prefix=prefix, Delimiter="/", MaxUploads=1)
    assert got == [] and [p["Prefix"] for p in r["CommonPrefixes"]] == [f"{prefix}a/"]
    assert r["IsTruncated"] is True and r["NextKeyMarker"] == f"{prefix}a/"
    r, got = listed(Prefix=prefix, Delimiter="/", KeyMarker=r["NextKeyMarker"])
    assert got == [e for e in expected if e[0] == f"{prefix}b"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == [f"{prefix}c/"]
    # Completed and aborted uploads are gone from the list.
    s3.abort_multipart_upload(Bucket="data", Key=keys[0], UploadId=ids[0])
    part = s3.upload_part(Bucket="data", Key=keys[2], UploadId=ids[2], PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(Bucket="data", Key=keys[2], UploadId=ids[2],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    _, got = listed(Prefix=prefix)
    assert (keys[0], ids[0]) not in got and (keys[2], ids[2]) not in got and len(got) == 3
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_multipart_uploads(Bucket="nosuchbucket")
    assert error_of(e)[:2] == (404, "NoSuchBucket")

    # aws-cli, as cleanup scripts use it.
    p = subprocess.run(["aws", "--endpoint-url", node.endpoint, "s3api", "list-multipart-uploads", "--bucket", "data",
                        "--prefix", prefix, "--output", "json"],
                       env=aws_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cli = json.loads(p.stdout)
    assert sorted((u["Key"], u["UploadId"]) for u in cli["Uploads"]) == sorted(got)


# ---------------------------------------------------------------------------------------------
# GetObject / HeadObject with partNumber


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_read_by_part_number(node, prefix, durability):
    s3 = node.s3()
    s3.meta.events.register("before-sign.s3.*",
                            lambda request, **_: request.headers.__setitem__("x-cairn-durability", durability))
    key = f"{prefix}parts.bin"
    sizes = [5 * MIB + 1, 5 * MIB + 2, 777]
    up, parts, body = upload_parts(s3, key, sizes, seed=7)
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    start = 0
    for n, size in enumerate(sizes, start=1):
        r = s3.get_object(Bucket="data", Key=key, PartNumber=n)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert r["PartsCount"] == 3
        assert r["ContentRange"] == f"bytes {start}-{start + size - 1}/{len(body)}"
        assert r["Body"].read() == body[start:start + size]
        h = s3.head_object(Bucket="data", Key=key, PartNumber=n)
        assert h["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert h["PartsCount"] == 3 and h["ContentLength"] == size
        start += size
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="data", Key=key, PartNumber=4)
    assert error_of(e)[:2] == (416, "InvalidPartNumber")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket="data", Key=key, PartNumber=4)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    # A single-part object is its own part 1.
    s3.put_object(Bucket="data", Key=f"{prefix}single", Body=b"single-part body")
    r = s3.get_object(Bucket="data", Key=f"{prefix}single", PartNumber=1)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert r["Body"].read() == b"single-part body" and "PartsCount" not in r
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="data", Key=f"{prefix}single", PartNumber=2)
    assert error_of(e)[:2] == (416, "InvalidPartNumber")
    # Overwritten by a PutObject, the key is one part again.
    s3.put_object(Bucket="data", Key=key, Body=b"now small")
    r = s3.get_object(Bucket="data", Key=key, PartNumber=1)
    assert r["Body"].read() == b"now small" and "PartsCount" not in r


# ---------------------------------------------------------------------------------------------
# Connections after a refused request


def presigned(node, method, key, **kw):
    s3 = node.s3()
    op = {"PUT": "put_object", "GET": "get_object"}[method]
    return s3.generate_presigned_url(op, Params={"Bucket": "data", "Key": key}, ExpiresIn=kw.get("expires", 600))


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + "?" + u.query


def read_response(sock):
    """Reads one HTTP/1.1 response (Content-Length bodies); returns (status, headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response head; got {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a response body")
        rest += chunk
    return status, headers, rest[:n]


def send_get(sock, node, key):
    sock.sendall(f"GET {path_of(presigned(node, 'GET', key))} HTTP/1.1\r\nHost: {node.host}:{node.port}\r\n\r\n"
                 .encode())
    return read_response(sock)


def refused_puts(node):
    """Requests that are refused: (name, path and query, extra headers)."""
    bad_sig = presigned(node, "PUT", "conn/ok")
    bad_sig = bad_sig[:-4] + ("0000" if not bad_sig.endswith("0000") else "1111")
    return [
        ("bad key", path_of(presigned(node, "PUT", "conn//bad")), 400, "InvalidArgument"),
        ("bad signature", path_of(bad_sig), 403, "SignatureDoesNotMatch"),
        ("unsigned", "/data/conn/unsigned", 403, "AccessDenied"),
    ]


@pytest.fixture
def conn_node(make_node, tmp_path):
    node = make_node(LocalOrigin(tmp_path / "o").toml())
    node.s3().put_object(Bucket="data", Key="conn/existing", Body=b"existing bytes")
    return node


@pytest.mark.parametrize("size", [10, 300 * 1024])
def test_a_refused_put_leaves_the_connection_usable(conn_node, size):
    node = conn_node
    body = payload(size, seed=5)
    for name, path, status, code in refused_puts(node):
        with socket.create_connection((node.host, node.port), timeout=10) as sock:
            sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {node.host}:{node.port}\r\nContent-Length: {size}\r\n\r\n"
                         .encode() + body)
            st, headers, text = read_response(sock)
            assert (st, f"<Code>{code}</Code>" in text.decode()) == (status, True), (name, text)
            # The body was sent whole: it is read and dropped, and the connection stays open.
            assert headers.get("connection", "").lower() != "close", name
            st, _, got = send_get(sock, node, "conn/existing")
            assert (st, got) == (200, b"existing bytes"), name


def test_a_refused_put_with_expect_continue_closes_cleanly(conn_node):
    """The client waited for `100 Continue` and got a final answer instead: it may send its body
    or not, so the answer says `Connection: close` and the connection ends after it."""
    node = conn_node
    for send_body_anyway in (False, True):
        for name, path, status, code in refused_puts(node):
            with socket.create_connection((node.host, node.port), timeout=10) as sock:
                sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {node.host}:{node.port}\r\nContent-Length: 100000\r\n"
                             "Expect: 100-continue\r\n\r\n".encode())
                st, headers, text = read_response(sock)
                assert st == status and f"<Code>{code}</Code>" in text.decode(), (name, text)
                assert headers.get("connection", "").lower() == "close", (name, headers)
                if send_body_anyway:
                    try:
                        sock.sendall(payload(100000))
                    except OSError:
                        pass
                sock.settimeout(5)
                try:
                    rest = sock.recv(65536)
                except ConnectionResetError:
                    rest = b""
                assert rest == b"", (name, rest)
            with socket.create_connection((node.host, node.port), timeout=10) as sock:
                assert send_get(sock, node, "conn/existing")[::2] == (200, b"existing bytes")


def test_an_oversized_put_leaves_the_connection_usable_or_closes_it(conn_node):
    node = conn_node
    path = path_of(presigned(node, "PUT", "conn/huge"))
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {node.host}:{node.port}\r\nContent-Length: {100 * MIB}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        st, headers, text = read_response(sock)
        assert st == 400 and b"<Code>EntityTooLarge</Code>" in text
        assert headers.get("connection", "").lower() == "close"
        assert sock.recv(65536) == b""


def test_boto3_session_after_refused_puts(conn_node):
    node = conn_node
    s3 = node.s3()
    for body in (b"bytes body", io.BytesIO(payload(2 * MIB, seed=3))):  # a file object makes boto3 expect 100
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="data", Key="conn//bad", Body=body)
        assert error_of(e)[:2] == (400, "InvalidArgument")
        s3.put_object(Bucket="data", Key="conn/good", Body=b"good")
        assert s3.get_object(Bucket="data", Key="conn/good")["Body"].read() == b"good"
    # http.client through one connection: a refused PUT with a body, then a GET.
    c = http.client.HTTPConnection(node.host, node.port, timeout=10)
    c.request("PUT", path_of(presigned(node, "PUT", "conn//bad")), body=payload(50000))
    r = c.getresponse()
    assert r.status == 400 and b"InvalidArgument" in r.read()
    c.request("GET", path_of(presigned(node, "GET", "conn/existing")))
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"existing bytes")
    c.close()


# ---------------------------------------------------------------------------------------------
# Conditional reads, authentication errors and their logs


def test_not_modified_carries_etag_and_last_modified(node, prefix):
    s3 = node.s3()
    key = f"{prefix}cond"
    s3.put_object(Bucket="data", Key=key, Body=b"conditional")
    head = s3.head_object(Bucket="data", Key=key)
    etag, modified = head["ETag"], head["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
    for call in (s3.get_object, s3.head_object):
        for cond in ({"IfNoneMatch": etag}, {"IfModifiedSince": head["LastModified"]}):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call(Bucket="data", Key=key, **cond)
            meta = e.value.response["ResponseMetadata"]
            assert meta["HTTPStatusCode"] == 304
            assert meta["HTTPHeaders"]["etag"] == etag
            assert meta["HTTPHeaders"]["last-modified"] == modified


def test_authentication_errors_are_s3s(conn_node):
    node = conn_node
    unknown = node.s3(access_key="nobody")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        unknown.get_object(Bucket="data", Key="conn/existing")
    assert error_of(e) == (403, "InvalidAccessKeyId",
                           "The AWS Access Key Id you provided does not exist in our records.")
    wrong = node.s3(secret_key="wrong-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        wrong.get_object(Bucket="data", Key="conn/existing")
    assert error_of(e) == (403, "SignatureDoesNotMatch",
                           "The request signature we calculated does not match the signature you provided. "
                           "Check your key and signing method.")
    s3 = node.s3()
    week = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "conn/existing"},
                                     ExpiresIn=604800)
    assert requests.get(week, timeout=10).content == b"existing bytes"
    over = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "conn/existing"},
                                     ExpiresIn=604801)
    r = requests.get(over, timeout=10)
    assert r.status_code == 400
    assert "<Code>AuthorizationQueryParametersError</Code>" in r.text
    assert "X-Amz-Expires must be less than a week (in seconds) that is; 604800" in r.text
    short = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "conn/existing"}, ExpiresIn=1)
    time.sleep(2.2)
    r = requests.get(short, timeout=10)
    assert r.status_code == 403
    assert "<Code>AccessDenied</Code>" in r.text and "Request has expired" in r.text


def test_failed_authentications_are_not_logged_as_errors(conn_node):
    node = conn_node
    wrong = node.s3(secret_key="wrong-secret")
    log = node.workdir / "node.log"
    before = log.read_text()
    for _ in range(25):
        with pytest.raises(botocore.exceptions.ClientError):
            wrong.get_object(Bucket="data", Key="conn/existing")
    time.sleep(0.3)
    new = log.read_text()[len(before):]
    assert " ERROR " not in new and "ERROR" not in new, new[:2000]
    warns = [line for line in new.splitlines() if "WARN" in line and "failed authentications" in line]
    assert len(warns) == 1, new[:2000]


# ---------------------------------------------------------------------------------------------
# Keys a folder origin cannot hold


@pytest.mark.parametrize("durability", ["origin", "local"])
def test_folder_origin_key_conflicts_are_a_clear_409(make_node, tmp_path, prefix, durability):
    origin = LocalOrigin(tmp_path / "o")
    node = make_node(origin.toml())
    s3 = node.s3()
    s3.meta.events.register("before-sign.s3.*",
                            lambda request, **_: request.headers.__setitem__("x-cairn-durability", durability))
    s3.put_object(Bucket="data", Key=f"{prefix}a/b", Body=b"object a/b")
    s3.put_object(Bucket="data", Key=f"{prefix}d/", Body=b"")
    s3.put_object(Bucket="data", Key=f"{prefix}e/f", Body=b"under e")
    if durability == "local":
        p = requests.post(f"http://{node.host}:{node.admin_port}/v1/sync?bucket=data&prefix={prefix}", timeout=60)
        assert p.status_code == 200
    for key in (f"{prefix}a/b/c", f"{prefix}a/b/", f"{prefix}d", f"{prefix}e"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="data", Key=key, Body=b"conflict")
        status, code, message = error_of(e)
        assert (status, code) == (409, "KeyConflict"), key
        assert "conflicts with an existing key" in message
    assert s3.get_object(Bucket="data", Key=f"{prefix}a/b")["Body"].read() == b"object a/b"
    assert (tmp_path / "o" / prefix / "a" / "b").read_bytes() == b"object a/b"


def test_completion_whose_replication_fails_can_be_retried(tmp_path, prefix):
    """At `replicated`, a completion whose parts are already in the journal when pushing them to
    the other node fails: the upload keeps its parts, and the retry completes it."""
    import signal

    from test_cluster import Cluster

    wb = '[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "500ms"\n'
    c = Cluster(tmp_path, 2, more_sections=wb)
    try:
        s3 = c.nodes[0].s3()
        s3.meta.events.register("before-sign.s3.*",
                                lambda request, **_: request.headers.__setitem__("x-cairn-durability", "replicated"))
        key = f"{prefix}replicated.bin"
        up, parts, body = upload_parts(s3, key, [5 * MIB, 999], seed=9)
        c.nodes[1].stop(signal.SIGKILL)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
        assert error_of(e)[:2] == (503, "ServiceUnavailable")
        assert [p["PartNumber"] for p in s3.list_parts(Bucket="data", Key=key, UploadId=up)["Parts"]] == [1, 2]
        c.nodes[1].start()
        r = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={"Parts": parts})
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert s3.get_object(Bucket="data", Key=key)["Body"].read() == body
    finally:
        c.stop()
