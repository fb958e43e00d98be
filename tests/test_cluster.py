"""Multi-process clusters on 127.0.0.x: chunks spread over owners by placement, one origin fetch per
chunk cluster-wide, failover when an owner dies, stale maps, and the peer port's secret."""

import concurrent.futures
import hashlib
import os
import signal
import subprocess
import time

import pytest
import requests

from conftest import LocalOrigin, Node, free_port, payload, peer_auth

SECRET = "cluster-secret-for-tests-0123456789"
MIB = 1024 * 1024


class Cluster:
    """N cairn processes, each on its own loopback address, sharing one origin folder. Each node
    reads its own copy of the map file, so a test can leave one node on an old version.

    With `gossip=True` there is no map file: each node is given `seeds` (by default node 0's peer
    address only) and the same zone, rack and weight the map file would list, and the membership
    forms by gossip with short probe and suspicion times; new nodes own their full share at once
    (join_ramp 0s). `secrets` gives a node another cluster secret, `cells` each node's cell,
    `node_sections` more TOML for each node (its own `[tls]` files, say)."""

    def __init__(self, tmp_path, n, replicas=1, racks=None, chunk=8 * MIB, ips=None, wraps=None, origin=None,
                 more_sections="", origin_extra="", limits="", metadata="immutable", gossip=False, seeds=None,
                 probe_period="500ms", suspect_timeout="3s", secrets=None, more_seeds=(), name="", cells=None,
                 node_sections=None, id_prefix=""):
        self.origin = origin or LocalOrigin(tmp_path / "origin")
        self.tmp = tmp_path
        self.gossip = gossip
        self.ips = ips or [f"127.0.0.{11 + i}" for i in range(n)]
        wraps = wraps or [()] * n
        self.peer_ports = [free_port(ip) if not wraps[i] else free_port() for i, ip in enumerate(self.ips)]
        self.racks = racks or [f"r{i % 2}" for i in range(n)]
        self.secrets = secrets or [SECRET] * n
        self.map_paths = [tmp_path / f"{name}map-n{i}.toml" for i in range(n)]
        self.seeds = (seeds if seeds is not None else [self.peer_addr(0)]) + list(more_seeds)
        if not gossip:
            self.write_map(1)
        self.nodes = []
        for i, ip in enumerate(self.ips):
            if gossip:
                membership = f"""seeds = [{", ".join(f'"{s}"' for s in self.seeds)}]
zone = "z1"
rack = "{self.racks[i]}"
cell = "{cells[i] if cells else 'z1'}"
weight = 100
probe_period = "{probe_period}"
suspect_timeout = "{suspect_timeout}"
join_ramp = "0s"
"""
            else:
                membership = f'map = "{self.map_paths[i]}"\nmap_poll = "200ms"\n'
            sections = f"""
[cluster]
{membership}
node_id = "{id_prefix}n{i}"
peer_listen = "{ip}:{self.peer_ports[i]}"
secret = "{self.secrets[i]}"
replicas = {replicas}
peer_timeout = "1s"
{more_sections}
{node_sections[i] if node_sections else ""}
"""
            node = Node(tmp_path / f"{name}n{i}", self.origin.toml() + origin_extra, host=ip, chunk=chunk,
                        metadata=metadata, extra="allow_anonymous = true", sections=sections, wrap=wraps[i],
                        env=self.origin.env, limits=limits)
            self.nodes.append(node)

    def peer_addr(self, i):
        return f"{self.ips[i]}:{self.peer_ports[i]}"

    def map_text(self, version, down=()):
        lines = [f"version = {version}"]
        for i, ip in enumerate(self.ips):
            state = "down" if i in down else "up"
            lines += ["[[node]]", f'id = "n{i}"', f'addr = "{ip}:{self.peer_ports[i]}"', 'zone = "z1"',
                      f'rack = "{self.racks[i]}"', "weight = 100", f'state = "{state}"']
        return "\n".join(lines) + "\n"

    def write_map(self, version, down=(), only=None):
        for i, p in enumerate(self.map_paths):
            if only is None or i in only:
                tmp = p.with_suffix(".tmp")
                tmp.write_text(self.map_text(version, down))
                os.replace(tmp, p)

    def total(self, metric):
        return sum(n.metric(metric) for n in self.nodes if n.alive())

    def stop(self, sig=signal.SIGTERM):
        for n in self.nodes:
            n.stop(sig)


@pytest.fixture
def cluster_factory(tmp_path):
    made = []

    def make(n, **kw):
        c = Cluster(tmp_path, n, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def curl_sha256(url):
    """Streams a GET through sha256 without holding the body; returns (status, digest)."""
    p = subprocess.run(f"curl -sS -f -o >(sha256sum > /dev/stderr) -w '%{{http_code}}' '{url}'",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=300)
    return p.stdout.strip(), p.stderr.strip().split(" ")[0]


def write_big(path, size, seed):
    """Writes `size` deterministic bytes and returns their sha256, without holding them all."""
    h = hashlib.sha256()
    block = payload(4 * MIB, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        done, i = 0, 0
        while done < size:
            b = (block[i % 7:] + block[: i % 7])[: min(len(block), size - done)]
            f.write(b)
            h.update(b)
            done += len(b)
            i += 1
    return h.hexdigest()


def test_sixteen_readers_on_four_nodes_read_the_origin_once(cluster_factory):
    c = cluster_factory(4)
    size = 1024 * MIB
    digest = write_big(c.origin.root / "model.bin", size, seed=1)
    urls = [f"{n.endpoint}/data/model.bin" for n in c.nodes for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(curl_sha256, urls))
    assert results == [("200", digest)] * 16
    assert c.total("cairn_origin_bytes_total") == size
    assert c.total('cairn_origin_requests_total{op="get_range"}') == size // (8 * MIB)
    # Every node owns some chunks and served some to its peers.
    assert all(n.metric("cairn_peer_served_total") > 0 for n in c.nodes)


def test_kill_an_owner_mid_read(cluster_factory):
    c = cluster_factory(3)
    size = 256 * MIB
    digest = write_big(c.origin.root / "ckpt.bin", size, seed=2)
    survivors = c.nodes[:2]
    urls = [f"{n.endpoint}/data/ckpt.bin" for n in survivors for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(curl_sha256, u) for u in urls]
        time.sleep(0.3)
        c.nodes[2].stop(signal.SIGKILL)
        results = [f.result() for f in futs]
    assert results == [("200", digest)] * 6
    # And reads started after the kill, before any map change, complete too.
    assert curl_sha256(f"{survivors[0].endpoint}/data/ckpt.bin") == ("200", digest)
    assert survivors[0].metric("cairn_peer_failovers_total") + survivors[1].metric("cairn_peer_failovers_total") >= 1


def test_node_with_a_stale_map_reads_correctly_without_loops(cluster_factory):
    c = cluster_factory(3, racks=["r0", "r0", "r1"])
    size = 64 * MIB
    digest = write_big(c.origin.root / "data.bin", size, seed=3)
    # Nodes 1 and 2 learn version 2, where node 1 is down; node 0 keeps version 1.
    c.write_map(2, down=(1,), only=(1, 2))
    time.sleep(1.0)
    chunks = size // (8 * MIB)
    # Requests sent before the reads (start-up recovery asks each peer once) are not counted.
    holder = 'cairn_peer_ingress_bytes_total{source="holder"}'
    before = [(n.metric("cairn_peer_requests_total"), n.metric(holder)) for n in c.nodes]
    for n in c.nodes:
        assert curl_sha256(f"{n.endpoint}/data/data.bin") == ("200", digest)
    # A node only ever sends a chunk request on; receivers serve it themselves. Each node asked
    # its peers at most once per chunk (plus a metadata request), and once more for each chunk
    # an owner handed it to a holder for (fan-out: the owner had just sent it to another node).
    for n, (b, h) in zip(c.nodes, before):
        from_holders = round((n.metric(holder) - h) / (8 * MIB))
        assert n.metric("cairn_peer_requests_total") - b <= chunks + 1 + from_holders
    assert c.total("cairn_peer_served_total") <= c.total("cairn_peer_requests_total")
    assert c.total("cairn_origin_bytes_total") <= size * 2


def test_peer_port_requires_requests_signed_with_the_secret(cluster_factory):
    c = cluster_factory(2)
    base = f"http://{c.ips[0]}:{c.peer_ports[0]}"
    r = requests.get(f"{base}/healthz", timeout=5)
    assert r.status_code == 403
    chunk = "/chunk?origin=data&bucket=data&key=x&version=v&size=10&chunk_size=10&index=0"
    r = requests.get(f"{base}{chunk}", headers=peer_auth("GET", chunk, "wrong" * 8), timeout=5)
    assert r.status_code == 403
    # The old scheme, the secret itself in a header, is refused too.
    assert requests.get(f"{base}/healthz", headers={"x-cairn-secret": SECRET}, timeout=5).status_code == 403
    assert requests.get(f"{base}/healthz", headers=peer_auth("GET", "/healthz", SECRET), timeout=5).status_code == 200
    assert c.nodes[0].metric("cairn_peer_refused_total") == 3


def test_map_file_changes_are_adopted_without_restart(cluster_factory):
    c = cluster_factory(2)
    assert c.nodes[0].metric("cairn_cluster_map_version") == 1
    c.write_map(5)
    deadline = time.time() + 10
    while time.time() < deadline and c.nodes[0].metric("cairn_cluster_map_version") != 5:
        time.sleep(0.1)
    assert c.nodes[0].metric("cairn_cluster_map_version") == 5
    # An older version offered later is ignored.
    c.write_map(3)
    time.sleep(0.8)
    assert c.nodes[0].metric("cairn_cluster_map_version") == 5
