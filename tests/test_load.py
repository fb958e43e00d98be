"""`cairn load`: every chunk under a prefix (or of a list of keys) fetched from the origin into its
owner before anyone reads it, paced, resumable after a restart, optionally copied to every node of
a set; `cairn status` shows the loads."""

import hashlib
import signal
import time

import requests

from conftest import payload
from test_cluster import MIB, cluster_factory  # noqa: F401
from test_writeback import admin, cli

CHUNK = 256 * 1024


def objects(c, prefix, count, seed):
    """`count` objects of 1 byte to ~1.3 MiB (0 to 6 chunks) under `prefix`; returns key -> bytes."""
    out = {}
    for i in range(count):
        size = [1, CHUNK, CHUNK + 7, 5 * CHUNK + 3, 0][i % 5] + i
        data = payload(size, seed=seed + i)
        key = f"{prefix}obj-{i:03d}"
        c.origin.put_direct(key, data)
        out[key] = data
    return out


def origin_reads(c):
    return sum(n.metric("cairn_origin_bytes_total") for n in c.nodes if n.alive())


def read_everywhere(c, want):
    for n in c.nodes:
        for key, data in want.items():
            r = requests.get(f"{n.endpoint}/data/{key}", timeout=30)
            assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest(), key


def test_load_a_prefix_then_every_read_is_a_hit(cluster_factory):  # noqa: F811
    c = cluster_factory(3, chunk=CHUNK)
    want = objects(c, "models/llama/", 12, seed=100)
    objects(c, "other/", 3, seed=200)  # not under the prefix: not loaded
    total = sum(len(d) for d in want.values())
    p = cli(c.nodes[0], "load", "s3://data/models/llama/")
    assert p.returncode == 0, p.stderr
    assert "loaded s3://data/models/llama/: 12 objects" in p.stdout, p.stdout
    # Exactly the prefix's bytes came from the origin, once.
    assert origin_reads(c) == total
    # Reads through every node are hits: no further origin byte.
    read_everywhere(c, want)
    assert origin_reads(c) == total
    # The job is listed as done, with its totals.
    loads = requests.get(f"{admin(c.nodes[0])}/v1/loads", timeout=5).json()
    assert [(s["state"], s["objects_done"], s["bytes_done"], s["bytes_total"]) for s in loads] == [
        ("done", 12, total, total)]
    status = cli(c.nodes[0], "status")
    assert status.returncode == 0 and "s3://data/models/llama/" in status.stdout and "done" in status.stdout


def test_load_a_list_of_keys_and_replicate_to_all(cluster_factory, tmp_path):  # noqa: F811
    c = cluster_factory(3, chunk=CHUNK)
    want = objects(c, "w/", 6, seed=300)
    chosen = sorted(want)[:4]
    lst = tmp_path / "keys.txt"
    lst.write_text("\n".join([f"s3://data/{chosen[0]}"] + chosen[1:]) + "\n\n")
    p = cli(c.nodes[1], "load", "data", "--list", str(lst), "--replicate", "all")
    assert p.returncode == 0, p.stderr
    assert "4 objects" in p.stdout and "a copy on each of 3 nodes" in p.stdout, p.stdout
    loaded = sum(len(want[k]) for k in chosen)
    assert origin_reads(c) == loaded
    # Every node holds every chunk itself: reads need no peer.
    peer_before = [n.metric("cairn_peer_bytes_total") for n in c.nodes]
    read_everywhere(c, {k: want[k] for k in chosen})
    assert [n.metric("cairn_peer_bytes_total") for n in c.nodes] == peer_before
    assert origin_reads(c) == loaded


def test_bad_loads_are_refused_clearly(cluster_factory):  # noqa: F811
    c = cluster_factory(1, chunk=CHUNK)
    p = cli(c.nodes[0], "load", "s3://nosuchbucket/x")
    assert p.returncode != 0 and 'bucket "nosuchbucket" does not exist' in p.stderr, p.stderr
    p = cli(c.nodes[0], "load", "s3://data/x", "--replicate", "everywhere")
    assert p.returncode != 0 and "replicate must be" in p.stderr, p.stderr
    r = requests.post(f"{admin(c.nodes[0])}/v1/load", data=b"{not json", timeout=5)
    assert r.status_code == 400 and "malformed load" in r.json()["error"]
    r = requests.post(f"{admin(c.nodes[0])}/v1/load", json={"bucket": "data", "parallel": 0}, timeout=5)
    assert r.status_code == 400 and "parallel" in r.json()["error"]
    # A key that does not exist fails the job, naming the key, and loads the rest.
    c.origin.put_direct("real", b"x" * 1000)
    lst = c.tmp / "missing.txt"
    lst.write_text("real\nmissing-key\n")
    p = cli(c.nodes[0], "load", "data", "--list", str(lst))
    assert p.returncode == 1 and "missing-key" in p.stderr and "1 of 2 objects loaded" in p.stderr, p.stderr


def test_a_paced_load_resumes_after_a_restart(cluster_factory):  # noqa: F811
    c = cluster_factory(2, chunk=CHUNK)
    want = objects(c, "ckpt/", 20, seed=500)
    total = sum(len(d) for d in want.values())
    node = c.nodes[0]
    # 256 KiB/s over ~7 MiB: about half a minute unless interrupted.
    p = cli(node, "load", "data/ckpt/", "--rate", "256KiB", "--parallel", "2", "--detach")
    assert p.returncode == 0 and "started" in p.stdout, p.stdout
    url = f"{admin(node)}/v1/loads"
    deadline = time.time() + 60
    while True:
        (s,) = requests.get(url, timeout=5).json()
        if s["objects_done"] >= 5:
            break
        assert s["state"] == "running" and time.time() < deadline, s
        time.sleep(0.2)
    # The pace holds: no faster than the rate (one chunk of slack).
    assert s["bytes_done"] <= 256 * 1024 * s["elapsed_secs"] + 2 * CHUNK, s
    node.stop(signal.SIGKILL)
    node.start()
    deadline = time.time() + 90
    while True:
        try:
            loads = requests.get(url, timeout=5).json()
        except requests.ConnectionError:
            loads = []
        if loads and loads[0]["state"] != "running":
            break
        assert time.time() < deadline, loads
        time.sleep(0.3)
    (s,) = loads
    assert s["state"] == "done", s
    assert s["objects_done"] == 20 and s["bytes_done"] == total, s
    assert s["objects_skipped"] >= 3, s
    read_everywhere(c, want)
