"""Write-back: writes acknowledged at `local` and `replicated` durability, read back from every node
before they reach the origin, uploaded in the background through origin outages, crashes and a
lost writer, the sync barrier, the dirty-byte cap, a full disk and overwrite ordering."""

import concurrent.futures
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time

import botocore.exceptions
import pytest
import requests

from conftest import CAIRN_BIN, AzuriteOrigin, AzuriteProcess, LocalOrigin, payload
from test_cluster import Cluster

MIB = 1024 * 1024


def with_durability(client, durability):
    """Makes every request of a boto3 client carry `x-cairn-durability`."""

    def add(request, **_):
        request.headers["x-cairn-durability"] = durability

    client.meta.events.register("before-sign.s3.*", add)
    return client


def admin(node):
    return f"http://{node.host}:{node.admin_port}"


def sync(node, prefix="", timeout=None):
    """POST /v1/sync; returns (status code, answer)."""
    url = f"{admin(node)}/v1/sync?bucket=data&prefix={prefix}"
    if timeout:
        url += f"&timeout={timeout}"
    r = requests.post(url, timeout=300)
    return r.status_code, r.json()


def cli(node, *args, timeout=120):
    env = dict(os.environ, CAIRN_ADMIN=admin(node), CAIRN_ENDPOINT=node.endpoint, CAIRN_ACCESS_KEY="test-access",
               CAIRN_SECRET_KEY="test-secret-key")
    return subprocess.run([CAIRN_BIN, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def azurite(tmp_path):
    """An Azurite of the test's own, which the test may stop and start."""
    az = AzuriteProcess(tmp_path / "azurite")
    yield az
    az.stop()


def node_with_origin_down(make_node, azurite):
    """A node in front of the test's own Azurite, retrying uploads quickly, with Azurite stopped;
    returns the origin, the node and a boto3 client writing at `local`."""
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml(), env=origin.env,
                     sections='[writeback]\nretry_min = "100ms"\nretry_max = "500ms"\n')
    azurite.stop()
    return origin, node, with_durability(node.s3(), "local")


def wait_clean(nodes, timeout=10):
    """Waits until no node holds journal bytes (uploaded writes and their replicas are released)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(n.metric("cairn_dirty_bytes") for n in nodes):
        time.sleep(0.1)
    return {n.endpoint: n.metric("cairn_dirty_bytes") for n in nodes}


def blob(origin, key):
    return origin.container.download_blob(key).readall()


def blob_exists(origin, key):
    return origin.container.get_blob_client(key).exists()


def test_local_write_is_read_back_at_once_and_synced(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml() + 'durability = "local"\n')
    s3 = node.s3()
    body = payload(3 * MIB + 17, seed=1)
    r = s3.put_object(Bucket="data", Key=prefix + "ckpt.bin", Body=body)
    assert r["ETag"].strip('"').startswith("cairn-w-")
    got = s3.get_object(Bucket="data", Key=prefix + "ckpt.bin")["Body"].read()
    assert got == body
    ranged = s3.get_object(Bucket="data", Key=prefix + "ckpt.bin", Range="bytes=1000000-1000099")["Body"].read()
    assert ranged == body[1000000:1000100]
    p = cli(node, "sync", f"data/{prefix}")
    assert p.returncode == 0, p.stderr
    assert (origin.root / prefix / "ckpt.bin").read_bytes() == body
    # After the upload the object is served at the origin's version, with the same bytes.
    time.sleep(1.2)
    head = s3.head_object(Bucket="data", Key=prefix + "ckpt.bin")
    assert not head["ETag"].strip('"').startswith("cairn-w-")
    assert s3.get_object(Bucket="data", Key=prefix + "ckpt.bin")["Body"].read() == body
    status = cli(node, "status")
    assert status.returncode == 0 and "total: 0 objects" in status.stdout
    assert node.metric("cairn_uploads_total") == 1
    assert not any(wait_clean([node]).values())


def test_durability_header_is_checked(make_node, tmp_path, prefix):
    node = make_node(LocalOrigin(tmp_path / "origin").toml())
    s3 = with_durability(node.s3(), "sometimes")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="data", Key=prefix + "x", Body=b"abc")
    assert e.value.response["Error"]["Code"] == "InvalidArgument"
    assert "x-cairn-durability" in e.value.response["Error"]["Message"]
    # The default (origin) writes through: the file is there when the PUT returns.
    origin_root = tmp_path / "origin"
    node.s3().put_object(Bucket="data", Key=prefix + "y", Body=b"through")
    assert (origin_root / prefix / "y").read_bytes() == b"through"


def test_origin_outage_uploads_resume_and_sync_waits(make_node, azurite, prefix):
    origin, node, s3 = node_with_origin_down(make_node, azurite)
    bodies = {f"{prefix}shard-{i}": payload(MIB + i * 4099, seed=10 + i) for i in range(3)}
    for k, b in bodies.items():
        s3.put_object(Bucket="data", Key=k, Body=b)
    for k, b in bodies.items():
        assert s3.get_object(Bucket="data", Key=k)["Body"].read() == b
    code, answer = sync(node, prefix, timeout="1s")
    assert code == 504 and answer["objects"] == 3
    deadline = time.time() + 30
    while node.metric("cairn_upload_retries_total") < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert node.metric("cairn_upload_retries_total") >= 1
    status = cli(node, "status", "--json")
    assert '"objects": 3' in status.stdout and '"last_error": null' not in status.stdout
    azurite.start()
    p = cli(node, "sync", f"data/{prefix}", "--timeout", "60s")
    assert p.returncode == 0, p.stderr
    for k, b in bodies.items():
        assert blob(origin, k) == b


def test_kill_9_with_uploads_pending_resumes_after_restart(make_node, azurite, prefix):
    origin, node, s3 = node_with_origin_down(make_node, azurite)
    acked = payload(5 * MIB + 3, seed=21)
    s3.put_object(Bucket="data", Key=prefix + "acked.bin", Body=acked)
    # A write the client never finished is never acknowledged and must not appear anywhere.
    torn = subprocess.Popen(
        ["curl", "-sS", "-X", "PUT", "-H", "x-cairn-durability: local", "-H", "Content-Length: 4194304",
         "--data-binary", "@-", f"{node.endpoint}/data/{prefix}torn.bin"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    torn.stdin.write(b"x" * MIB)
    torn.stdin.flush()
    time.sleep(0.5)
    node.stop(signal.SIGKILL)
    torn.kill()
    node.start()
    azurite.start()
    p = cli(node, "sync", f"data/{prefix}", "--timeout", "60s")
    assert p.returncode == 0, p.stderr
    assert blob(origin, prefix + "acked.bin") == acked
    assert not blob_exists(origin, prefix + "torn.bin")
    assert node.s3().get_object(Bucket="data", Key=prefix + "acked.bin")["Body"].read() == acked


def test_kill_9_during_a_running_upload(make_node, azurite, prefix):
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml(), env=origin.env)
    s3 = with_durability(node.s3(), "local")
    body = payload(48 * MIB, seed=31)
    s3.put_object(Bucket="data", Key=prefix + "big.bin", Body=body)
    time.sleep(0.2)
    node.stop(signal.SIGKILL)
    node.start()
    p = cli(node, "sync", f"data/{prefix}", "--timeout", "120s")
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256(blob(origin, prefix + "big.bin")).digest() == hashlib.sha256(body).digest()


@pytest.fixture
def az_cluster(tmp_path, azurite):
    made = []

    def make(n, **kw):
        c = Cluster(tmp_path, n, origin=AzuriteOrigin(azurite.port), chunk=1 * MIB, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


WB = '[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "500ms"\ntakeover_after = "2s"\n'


def test_read_after_write_from_every_node_and_last_write_wins(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    azurite.stop()
    key = prefix + "weights.bin"
    first = payload(5 * MIB + 11, seed=41)
    with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=first)
    for n in c.nodes:
        assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == first
        assert n.s3().head_object(Bucket="data", Key=key)["ContentLength"] == len(first)
    second = payload(3 * MIB + 5, seed=42)
    with_durability(c.nodes[1].s3(), "local").put_object(Bucket="data", Key=key, Body=second)
    for n in c.nodes:
        assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == second
    azurite.start()
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="60s")
        assert code == 200, answer
    assert blob(c.origin, key) == second
    time.sleep(0.5)
    for n in c.nodes:
        assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == second


def test_replicated_write_survives_the_writer_and_its_disk(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    azurite.stop()
    key = prefix + "shard-0.bin"
    body = payload(6 * MIB + 1234, seed=51)
    with_durability(c.nodes[0].s3(), "replicated").put_object(Bucket="data", Key=key, Body=body)
    c.nodes[0].stop(signal.SIGKILL)
    shutil.rmtree(c.nodes[0].cache_dir)
    for n in c.nodes[1:]:
        assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
    c.write_map(2, down=(0,))
    azurite.start()
    code, answer = sync(c.nodes[1], prefix, timeout="60s")
    assert code == 200, answer
    assert blob(c.origin, key) == body
    assert c.nodes[1].metric("cairn_takeovers_total") + c.nodes[2].metric("cairn_takeovers_total") == 1
    assert not any(wait_clean(c.nodes[1:]).values()), "replicas were not released after the upload"


def test_concurrent_writers_of_one_key_never_interleave(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml() + 'durability = "local"\n')
    key = prefix + "contended.bin"
    bodies = [payload(2 * MIB + 999 * i, seed=60 + i) for i in range(8)]
    digests = {hashlib.sha256(b).hexdigest() for b in bodies}
    stop_reading = threading.Event()
    seen = []

    def reader():
        s3 = node.s3()
        while not stop_reading.is_set():
            try:
                seen.append(hashlib.sha256(s3.get_object(Bucket="data", Key=key)["Body"].read()).hexdigest())
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "NoSuchKey"

    t = threading.Thread(target=reader)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: node.s3().put_object(Bucket="data", Key=key, Body=b), bodies))
    stop_reading.set()
    t.join()
    assert seen and all(d in digests for d in seen)
    code, _ = sync(node, prefix, timeout="60s")
    assert code == 200
    final = node.s3().get_object(Bucket="data", Key=key)["Body"].read()
    assert hashlib.sha256(final).hexdigest() in digests
    assert (origin.root / key).read_bytes() == final


def test_dirty_cap_slows_writes_to_the_upload_rate(make_node, azurite, prefix):
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml(), env=origin.env,
                     sections='[writeback]\ndirty_max = "5MiB"\nretry_min = "100ms"\nretry_max = "300ms"\n')
    s3 = with_durability(node.s3(), "local")
    azurite.stop()
    s3.put_object(Bucket="data", Key=prefix + "a", Body=payload(4 * MIB, seed=71))
    done = threading.Event()

    def second():
        s3.put_object(Bucket="data", Key=prefix + "b", Body=payload(4 * MIB, seed=72))
        done.set()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(2)
    assert not done.is_set(), "a write past the dirty cap was acknowledged while nothing could be uploaded"
    assert node.metric("cairn_write_throttled_total") >= 1
    azurite.start()
    t.join(60)
    assert done.is_set()
    code, _ = sync(node, prefix, timeout="60s")
    assert code == 200
    assert blob(origin, prefix + "b") == payload(4 * MIB, seed=72)


def test_multipart_upload_at_local_durability(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml())
    s3 = with_durability(node.s3(), "local")
    key = prefix + "multi.bin"
    parts = [payload(5 * MIB, seed=81), payload(5 * MIB, seed=82), payload(MIB + 7, seed=83)]
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    etags = [s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    whole = b"".join(parts)
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == whole
    code, _ = sync(node, prefix, timeout="60s")
    assert code == 200
    assert (origin.root / key).read_bytes() == whole


def test_cli_put_with_durability(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml())
    src = tmp_path / "src.bin"
    body = payload(20 * MIB + 3, seed=91)
    src.write_bytes(body)
    p = cli(node, "put", "--durability", "local", str(src), f"s3://data/{prefix}src.bin")
    assert p.returncode == 0, p.stderr
    p = cli(node, "sync", f"s3://data/{prefix}")
    assert p.returncode == 0, p.stderr
    assert (origin.root / prefix / "src.bin").read_bytes() == body


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the suite runs as root): {r.stderr.decode()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_gives_a_clear_error_and_keeps_earlier_objects(make_node, azurite, small_disk, prefix):
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml() + 'durability = "local"\n', env=origin.env,
                     sections='[writeback]\nretry_min = "100ms"\nretry_max = "300ms"\n')
    # The journal lives under the cache dir: move it to the small disk.
    node.stop()
    node.config_path.write_text(node.config_path.read_text().replace(str(node.cache_dir), str(small_disk / "cache")))
    node.cache_dir = small_disk / "cache"
    node.start()
    azurite.stop()
    s3 = node.s3()
    kept = []
    error = None
    for i in range(8):
        b = payload(4 * MIB, seed=100 + i)
        try:
            s3.put_object(Bucket="data", Key=f"{prefix}o{i}", Body=b)
            kept.append((f"{prefix}o{i}", b))
        except botocore.exceptions.ClientError as e:
            error = e
            break
    assert error is not None, "24 MiB of disk took 32 MiB of objects"
    assert error.response["Error"]["Code"] == "InsufficientStorage"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 507
    assert kept
    for k, b in kept:
        assert s3.get_object(Bucket="data", Key=k)["Body"].read() == b
    azurite.start()
    code, _ = sync(node, prefix, timeout="60s")
    assert code == 200
    for k, b in kept:
        assert blob(origin, k) == b
    assert not blob_exists(origin, f"{prefix}o{len(kept)}")
    # With the journal drained the node takes writes again.
    s3.put_object(Bucket="data", Key=f"{prefix}after", Body=b"ok")
