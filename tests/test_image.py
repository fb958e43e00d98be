"""The container image, run as Kubernetes would run it: containers of the real image on a
user-defined Docker network find each other through one DNS name that resolves to all of them (as
a headless Service does), form a cluster by gossip, and serve S3 and RESP with exact bytes; a
container killed, and one disconnected from the network (a partition), do not stop reads through
the others; both come back into one view."""

import json
import os
import shutil
import subprocess
import time
import uuid

import boto3
import pytest
import redis
import requests
from botocore.config import Config

from conftest import CAIRN_BIN, ROOT, payload

ACCESS, SECRET_KEY, KV_PASSWORD = "img-access", "img-secret-key", "img-kv-password"
CLUSTER_SECRET = "image-test-cluster-secret-0123456789"
MIB = 1024 * 1024
SEEDS = "cairn-seeds"
NODES = ["c0", "c1", "c2"]


def docker(*args, check=True, timeout=120):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


@pytest.fixture(scope="module")
def image():
    """The image under test: $CAIRN_IMAGE (built by `cargo xtask test`), else built here from the
    static $CAIRN_BIN with `cargo xtask image`."""
    tag = os.environ.get("CAIRN_IMAGE")
    if not tag:
        kind = subprocess.run(["file", "-L", CAIRN_BIN], capture_output=True, text=True).stdout
        if "static" not in kind or "dynamically" in kind:
            pytest.fail(f"{CAIRN_BIN} is not static: build with `cargo xtask image` or set CAIRN_IMAGE")
        tag = "cairn:test-local"
        subprocess.run(
            ["cargo", "xtask", "image", "--tag", tag, "--bin", CAIRN_BIN], cwd=ROOT, check=True, capture_output=True
        )
    if shutil.which("docker") is None or subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode:
        pytest.fail(f"image {tag} not found (cargo xtask image --tag {tag})")
    return tag


class Pool:
    """Containers of the image on one Docker network, sharing a `file://` origin folder."""

    def __init__(self, image, tmp_path):
        self.image = image
        self.tag = uuid.uuid4().hex[:6]
        self.net = f"cairn-it-{self.tag}"
        docker("network", "create", self.net)
        self.origin = tmp_path / "origin"
        (self.origin / "data").mkdir(parents=True)
        # The node runs as 65532: the shared origin folder must be writable for it.
        os.chmod(self.origin, 0o777)
        os.chmod(self.origin / "data", 0o777)
        self.config = tmp_path / "cairn.toml"
        self.config.write_text(
            "[cluster]\nprobe_period = \"500ms\"\nsuspect_timeout = \"3s\"\n"
            "[writeback]\ndrain_timeout = \"2s\"\n"
        )
        os.chmod(self.config, 0o644)
        self.names = {}

    def name(self, node):
        return f"cairn-{self.tag}-{node}"

    def start(self, node):
        name = self.name(node)
        self.names[node] = name
        docker(
            "run", "-d", "--name", name, "--hostname", name,
            "--network", self.net, "--network-alias", SEEDS,
            "-v", f"{self.origin}:/origin",
            "-v", f"{self.config}:/etc/cairn/cairn.toml:ro",
            "-e", f"CAIRN_NODE_ID={node}",
            "-e", f"CAIRN_SEEDS={SEEDS}:9100",
            "-e", f"CAIRN_ADVERTISE={name}:9100",
            "-e", f"CAIRN_CLUSTER_SECRET={CLUSTER_SECRET}",
            "-e", f"CAIRN_ACCESS_KEY={ACCESS}",
            "-e", f"CAIRN_SECRET_KEY={SECRET_KEY}",
            "-e", "CAIRN_KV_LISTEN=0.0.0.0:6379",
            "-e", f"CAIRN_KV_PASSWORD={KV_PASSWORD}",
            "-e", "CAIRN_ORIGIN=file:///origin",
            "-e", "CAIRN_CHUNK_SIZE=1MiB",
            "-e", "CAIRN_METADATA=immutable",
            "-e", "CAIRN_RAM_CAPACITY=64MiB",
            "-e", "CAIRN_DISK_CAPACITY=256MiB",
            self.image, "serve", "--config", "/etc/cairn/cairn.toml",
        )  # fmt: skip
        return name

    def ip(self, node):
        out = docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", self.names[node])
        nets = json.loads(out)
        return nets[self.net]["IPAddress"] if self.net in nets else None

    def admin(self, node, path, timeout=3):
        return requests.get(f"http://{self.ip(node)}:9001{path}", timeout=timeout)

    def s3(self, node):
        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.ip(node)}:9000",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, read_timeout=30),
        )

    def alive(self, node):
        """Ids `node` lists as alive (newest generation of each)."""
        rows = {}
        for r in self.admin(node, "/v1/members").json()["members"]:
            rows.setdefault(r["id"], r["state"])
        return sorted(i for i, s in rows.items() if s == "alive")

    def logs(self):
        return "\n".join(
            f"--- {n}\n" + subprocess.run(["docker", "logs", "--tail", "40", c], capture_output=True, text=True).stderr
            for n, c in self.names.items()
        )

    def close(self):
        for name in self.names.values():
            docker("rm", "-f", name, check=False)
        docker("network", "rm", self.net, check=False)


@pytest.fixture
def pool(image, tmp_path):
    p = Pool(image, tmp_path)
    yield p
    p.close()


def wait_for(what, check, timeout, pool):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, KeyError, TypeError) as e:
            last = e
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout}s; last {last!r}\n{pool.logs()}")


def form(pool, nodes=NODES):
    for n in nodes:
        pool.start(n)
    for n in nodes:
        wait_for(f"{n} sees all alive", lambda n=n: pool.alive(n) == sorted(nodes), 30, pool)
        wait_for(f"{n} ready", lambda n=n: pool.admin(n, "/readyz").status_code == 200, 30, pool)


def put_origin(pool, objs):
    for k, b in objs.items():
        path = pool.origin / "data" / k
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b)


def read_all(pool, node, objs):
    s3 = pool.s3(node)
    for k, b in objs.items():
        got = s3.get_object(Bucket="data", Key=k)["Body"].read()
        assert got == b, f"{k} through {node}: {len(got)} bytes, not the {len(b)} written"


def test_containers_form_a_cluster_by_dns_and_serve_s3_and_resp(pool):
    form(pool)
    # Runs as the image's non-root user, with no shell in the image.
    assert docker("inspect", "-f", "{{.Config.User}}", pool.names["c0"]) == "65532:65532"
    uids = [line.split()[1] for line in docker("top", pool.names["c0"], "-o", "pid,uid").splitlines()[1:]]
    assert uids and set(uids) == {"65532"}, uids
    assert subprocess.run(["docker", "exec", pool.names["c0"], "/bin/sh", "-c", "true"], capture_output=True).returncode
    # Reads of objects in the origin through every container: exact bytes, chunks from owners.
    objs = {f"set/obj-{i}.bin": payload(3 * MIB + 17 * i, seed=40 + i) for i in range(4)}
    put_origin(pool, objs)
    for n in NODES:
        read_all(pool, n, objs)
    # A write through one container is read back through the others and is in the origin.
    body = payload(2 * MIB + 5, seed=77)
    pool.s3("c0").put_object(Bucket="data", Key="written/by-c0.bin", Body=body)
    for n in NODES[1:]:
        assert pool.s3(n).get_object(Bucket="data", Key="written/by-c0.bin")["Body"].read() == body
    assert (pool.origin / "data" / "written" / "by-c0.bin").read_bytes() == body
    # RESP: a value set through one container is read through the others.
    value = payload(MIB + 3, seed=5)
    r0 = redis.Redis(host=pool.ip("c0"), port=6379, password=KV_PASSWORD)
    assert r0.set("kv:block:1", value)
    for n in NODES[1:]:
        rn = redis.Redis(host=pool.ip(n), port=6379, password=KV_PASSWORD)
        assert rn.get("kv:block:1") == value
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=pool.ip("c1"), port=6379, password="wrong").get("kv:block:1")


def test_a_killed_and_a_partitioned_container_do_not_stop_reads(pool):
    form(pool)
    objs = {f"shard/{i:03d}.bin": payload(2 * MIB + i, seed=90 + i) for i in range(6)}
    put_origin(pool, objs)
    read_all(pool, "c0", objs)

    # kill: reads through the two others keep exact bytes while c2 is declared dead.
    docker("kill", pool.names["c2"])
    deadline = time.time() + 8
    while time.time() < deadline:
        read_all(pool, "c0", objs)
        read_all(pool, "c1", objs)
    wait_for("c2 declared dead", lambda: pool.alive("c0") == ["c0", "c1"] and pool.alive("c1") == ["c0", "c1"], 20, pool)
    read_all(pool, "c1", objs)
    # Restarted (same name, same disk): it rejoins.
    docker("start", pool.names["c2"])
    wait_for("c2 rejoined", lambda: all(pool.alive(n) == NODES for n in NODES), 30, pool)
    read_all(pool, "c2", objs)

    # Partition: c1 disconnected from the network; c0 and c2 keep serving exact bytes.
    ip1 = pool.ip("c1")
    docker("network", "disconnect", pool.net, pool.names["c1"])
    deadline = time.time() + 8
    while time.time() < deadline:
        read_all(pool, "c0", objs)
        read_all(pool, "c2", objs)
    wait_for("c1 declared dead across the partition", lambda: pool.alive("c0") == ["c0", "c2"], 20, pool)
    assert ip1 and pool.ip("c1") is None
    # Healed: one view again, with c1 found through the seed name.
    docker("network", "connect", "--alias", SEEDS, pool.net, pool.names["c1"])
    wait_for("one view after the partition heals", lambda: all(pool.alive(n) == NODES for n in NODES), 40, pool)
    read_all(pool, "c1", objs)


def test_prepare_dir_hands_a_root_owned_host_directory_to_the_node_user(image, tmp_path):
    # What the chart's init container does to a hostPath the kubelet created as root, with a file
    # left by an earlier run as root in it; then the node runs as 65532 on it.
    host = tmp_path / "hostpath"
    (host / "store").mkdir(parents=True)
    (host / "store" / "old").write_bytes(b"x")
    os.chmod(host, 0o755)
    docker("run", "--rm", "--user", "0:0", "-v", f"{host}:/var/lib/cairn", image,
           "prepare-dir", "--owner", "65532:65532", "/var/lib/cairn")  # fmt: skip
    for p in (host, host / "store", host / "store" / "old"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (65532, 65532), p
    # The node (as 65532) locks and uses the directory.
    name = f"cairn-prep-{uuid.uuid4().hex[:6]}"
    docker("run", "-d", "--name", name, "-v", f"{host}:/var/lib/cairn", "-e", "CAIRN_ORIGIN=file:///var/lib/cairn/o",
           image)  # fmt: skip
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not (host / "incarnation").exists():
            time.sleep(0.2)
        assert os.stat(host / "incarnation").st_uid == 65532
        assert docker("inspect", "-f", "{{.State.Running}}", name) == "true", docker("logs", name)
    finally:
        docker("rm", "-f", name, check=False)
    bad = subprocess.run(["docker", "run", "--rm", "--user", "0:0", image, "prepare-dir", "--owner", "x", "/d"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "expected UID:GID" in bad.stderr
