"""The client routes smart clients use (`/_cairn/v1/members`, `stat`, `chunk`, `sync`), on the S3
listener and on the peer listener: signed with an access key (never the cluster secret), refused
in their own terms when they are not, pinned to the version they name, and limited for read-only
keys on S3 as well."""

import hashlib
import socket
import time
import urllib.parse

import botocore.exceptions
import pytest
import requests

from conftest import ACCESS_KEY, SECRET_KEY, CHUNK, LocalOrigin, client_auth, payload, peer_auth
from test_cluster import SECRET, Cluster

READER_KEY, READER_SECRET = "reader", "reader-secret-key"
KEYS = (f'keys = [{{ access_key = "{ACCESS_KEY}", secret_key = "{SECRET_KEY}" }}, '
        f'{{ access_key = "{READER_KEY}", secret_key = "{READER_SECRET}", read_only = true }}]')


def call(base, method, pq, key=ACCESS_KEY, secret=SECRET_KEY, headers=None, millis=None):
    h = client_auth(method, pq, key, secret, millis) if key else {}
    h.update(headers or {})
    return requests.request(method, base + pq, headers=h, timeout=30)


def q(**kw):
    return urllib.parse.urlencode(kw)


@pytest.fixture
def single(make_node, tmp_path):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml(), extra="")
    return node, origin


@pytest.fixture
def reader_node(make_node, tmp_path):
    """A node whose [auth] has a read-only key too."""
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml(), extra="")
    text = node.config_path.read_text()
    text = text.replace(f'keys = [{{ access_key = "{ACCESS_KEY}", secret_key = "{SECRET_KEY}" }}]', KEYS)
    node.config_path.write_text(text)
    node.restart()
    return node, origin


def test_unsigned_forged_unknown_and_stale_requests_are_refused_in_their_own_terms(single):
    node, _ = single
    base = node.endpoint
    pq = "/_cairn/v1/members"
    r = call(base, "GET", pq, key=None)
    assert (r.status_code, r.json()["code"]) == (403, "AccessDenied")
    r = call(base, "GET", pq, secret="not-the-secret")
    assert (r.status_code, r.json()["code"]) == (403, "SignatureDoesNotMatch")
    r = call(base, "GET", pq, key="nobody")
    assert (r.status_code, r.json()["code"]) == (403, "InvalidAccessKeyId")
    r = call(base, "GET", pq, millis=1_000)
    assert (r.status_code, r.json()["code"]) == (403, "RequestTimeTooSkewed")
    # Signed for another path: does not verify for this one.
    h = client_auth("GET", "/_cairn/v1/stat?bucket=x&key=y", ACCESS_KEY, SECRET_KEY)
    r = requests.get(base + pq, headers=h, timeout=10)
    assert (r.status_code, r.json()["code"]) == (403, "SignatureDoesNotMatch")
    assert node.metric("cairn_client_refused_total") == 5
    r = call(base, "GET", "/_cairn/v1/nothing")
    assert (r.status_code, r.json()["code"]) == (404, "NoSuchRoute")
    # A node alone routes nothing directly: its map is empty.
    m = call(base, "GET", pq).json()
    assert m["map"]["node"] == [] and m["peer_tls"] is False


def test_stat_and_chunk_ranges_are_exact_and_pinned_to_the_version(single, prefix):
    node, origin = single
    s3 = node.s3()
    bucket, key = "data", f"{prefix}obj"
    body = payload(3 * CHUNK + 1234, seed=7)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    st = call(node.endpoint, "GET", "/_cairn/v1/stat?" + q(bucket=bucket, key=key)).json()
    head = s3.head_object(Bucket=bucket, Key=key)
    assert st["size"] == len(body) and st["chunk_size"] == CHUNK
    assert st["etag"] == head["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    assert st["bucket"] == bucket and st["key"] == key

    def chunk(index, version=None, **extra):
        params = dict(origin=st["origin"], bucket=bucket, key=key, version=version or st["version"],
                      size=st["size"], chunk_size=st["chunk_size"], index=index, **extra)
        return call(node.endpoint, "GET", "/_cairn/v1/chunk?" + q(**params))

    for i in range(4):
        r = chunk(i)
        assert r.status_code == 200 and r.content == body[i * CHUNK:(i + 1) * CHUNK]
    r = chunk(1, start=100, end=5000)
    assert r.content == body[CHUNK + 100:CHUNK + 5000]
    r = chunk(3, start=0, end=1235)
    assert (r.status_code, r.json()["code"]) == (416, "InvalidRange")
    r = chunk(4)
    assert (r.status_code, r.json()["code"]) == (416, "InvalidRange")
    r = chunk(0, start=10, end=5)
    assert (r.status_code, r.json()["code"]) == (400, "InvalidArgument")
    r = call(node.endpoint, "GET", "/_cairn/v1/chunk?" + q(origin=st["origin"], bucket=bucket, key=key,
                                                         version=st["version"], size=st["size"],
                                                         chunk_size=CHUNK * 2, index=0))
    assert (r.status_code, r.json()["code"]) == (400, "InvalidArgument")
    # Replaced behind the node's back: the old version's chunks not cached yet are refused, not
    # served from the new bytes.
    origin.put_direct(key, payload(3 * CHUNK + 1234, seed=8))
    node2_chunk = chunk(2, version='"0123456789abcdef0123456789abcdef"')
    assert (node2_chunk.status_code, node2_chunk.json()["code"]) == (412, "VersionChanged")
    r = call(node.endpoint, "GET", "/_cairn/v1/stat?" + q(bucket=bucket, key=f"{prefix}missing"))
    assert (r.status_code, r.json()["code"]) == (404, "NoSuchKey")
    r = call(node.endpoint, "GET", "/_cairn/v1/stat?" + q(bucket="no-such-bucket-here", key="k"))
    assert (r.status_code, r.json()["code"]) in ((404, "NoSuchBucket"), (404, "NoSuchKey"))


def test_a_read_only_key_reads_but_cannot_write_or_sync(reader_node, prefix):
    node, origin = reader_node
    bucket, key = "data", f"{prefix}weights"
    body = payload(CHUNK + 5, seed=3)
    node.s3().put_object(Bucket=bucket, Key=key, Body=body)
    reader = node.s3(access_key=READER_KEY, secret_key=READER_SECRET)
    assert reader.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]] == [key]
    for attempt in (lambda: reader.put_object(Bucket=bucket, Key=f"{prefix}new", Body=b"x"),
                    lambda: reader.delete_object(Bucket=bucket, Key=key),
                    lambda: reader.create_multipart_upload(Bucket=bucket, Key=f"{prefix}mp")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            attempt()
        assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert node.s3().get_object(Bucket=bucket, Key=key)["Body"].read() == body
    st = call(node.endpoint, "GET", "/_cairn/v1/stat?" + q(bucket=bucket, key=key),
              key=READER_KEY, secret=READER_SECRET)
    assert st.status_code == 200 and st.json()["size"] == len(body)
    r = call(node.endpoint, "POST", "/_cairn/v1/sync?" + q(bucket=bucket, prefix=prefix),
             key=READER_KEY, secret=READER_SECRET)
    assert (r.status_code, r.json()["code"]) == (403, "AccessDenied")
    r = call(node.endpoint, "POST", "/_cairn/v1/sync?" + q(bucket=bucket, prefix=prefix))
    assert r.status_code == 200


def test_client_routes_on_the_peer_port_take_an_access_key_never_the_cluster_secret(tmp_path, prefix):
    c = Cluster(tmp_path, 3, chunk=1024 * 1024, gossip=True)
    try:
        # The test clusters allow anonymous S3 requests; node 1 does not.
        n1 = c.nodes[1]
        n1.config_path.write_text(n1.config_path.read_text().replace("allow_anonymous = true", ""))
        n1.restart()
        body = payload(5 * 1024 * 1024 + 17, seed=11)
        key = f"{prefix}obj"
        c.nodes[1].s3().put_object(Bucket="data", Key=key, Body=body)
        peer = f"http://{c.peer_addr(1)}"
        deadline = time.time() + 30
        while True:
            m = call(peer, "GET", "/_cairn/v1/members").json()
            ids = sorted(n["id"] for n in m["map"]["node"])
            if ids == ["n0", "n1", "n2"] or time.time() > deadline:
                break
            time.sleep(0.2)
        assert ids == ["n0", "n1", "n2"] and m["node"] == "n1"
        st = call(peer, "GET", "/_cairn/v1/stat?" + q(bucket="data", key=key)).json()
        got = b""
        for i in range(6):
            params = dict(origin=st["origin"], bucket="data", key=key, version=st["version"],
                          size=st["size"], chunk_size=st["chunk_size"], index=i)
            got += call(f"http://{c.peer_addr(i % 3)}", "GET", "/_cairn/v1/chunk?" + q(**params)).content
        assert got == body
        # The cluster's own signature does not open the client routes.
        pq = "/_cairn/v1/members"
        r = requests.get(peer + pq, headers=peer_auth("GET", pq, SECRET), timeout=10)
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "AccessDenied", r.text
        assert r.headers.get("connection") == "close"
        # Nor does an access key open the peer routes.
        pq = "/status"
        r = requests.get(peer + pq, headers=client_auth("GET", pq, ACCESS_KEY, SECRET_KEY), timeout=10)
        assert r.status_code == 403
        # Node 0 allows anonymous S3 requests; its peer port still takes only signed client
        # requests, so an unsigned connection never holds one of its authenticated slots.
        r = requests.get(f"http://{c.peer_addr(0)}/_cairn/v1/members", timeout=10)
        assert (r.status_code, r.json()["code"]) == (403, "AccessDenied")
        assert requests.get(c.nodes[0].endpoint + "/_cairn/v1/members", timeout=10).status_code == 200
        # A refused client request closes its connection, so it keeps no slot.
        host, port = c.peer_addr(1).rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /_cairn/v1/members HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
            assert data.startswith(b"HTTP/1.1 403")
    finally:
        c.stop()
