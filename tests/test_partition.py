"""A node cut off by a network partition: three nodes, each in a network namespace of its own made
here with `ip netns` and veth pairs on a bridge; one node's link is cut while reads go on through
the other two."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import bridge_forward
from test_cluster import MIB, Cluster, curl_sha256, write_big

BRIDGE = "cairnbr0"
NET = "169.254.231"


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the partition test needs root and iproute2 (ip netns)")
    names = [f"cairn-p{i}" for i in range(3)]
    cleanup()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for i, ns in enumerate(names):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"cairnv{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", f"cairnv{i}", "master", BRIDGE)
        sh("ip", "link", "set", f"cairnv{i}", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    bridge_forward(BRIDGE, True)
    yield names
    cleanup()


def cleanup():
    for i in range(3):
        subprocess.run(["ip", "netns", "del", f"cairn-p{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"cairnv{i}"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    bridge_forward(BRIDGE, False)


def test_reads_through_other_nodes_survive_a_partition(tmp_path, namespaces):
    ips = [f"{NET}.{10 + i}" for i in range(3)]
    wraps = [("ip", "netns", "exec", ns) for ns in namespaces]
    c = Cluster(tmp_path, 3, ips=ips, wraps=wraps, racks=["r0", "r0", "r0"])
    try:
        size = 128 * MIB
        digest = write_big(c.origin.root / "shard.bin", size, seed=9)
        # Warm: every node owns some chunks.
        assert curl_sha256(f"{c.nodes[0].endpoint}/data/shard.bin") == ("200", digest)
        assert c.nodes[2].metric("cairn_peer_served_total") > 0
        # Cut node 2 off: its link to the bridge goes down; the process keeps running.
        sh("ip", "link", "set", "cairnv2", "down")
        started = time.time()
        for n in c.nodes[:2]:
            assert curl_sha256(f"{n.endpoint}/data/shard.bin") == ("200", digest)
        assert time.time() - started < 60
        assert c.nodes[0].metric("cairn_peer_failovers_total") + c.nodes[1].metric("cairn_peer_failovers_total") >= 1
        assert c.nodes[2].alive()
        # Healed: node 2 serves again, and reads through it are correct.
        sh("ip", "link", "set", "cairnv2", "up")
        assert curl_sha256(f"{c.nodes[2].endpoint}/data/shard.bin") == ("200", digest)
    finally:
        c.stop()
