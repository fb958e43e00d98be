"""Peer-to-peer fan-out: when every node reads the same object at once, a chunk's owner sends it a
bounded number of times and hands the other requesters to nodes that already fetched it, whose
bytes are checked against the owner's digest. Frozen or dead holders cost a retry, never a read."""

import concurrent.futures
import hashlib
import signal
import threading

import requests

from conftest import payload
from test_cluster import MIB, cluster_factory  # noqa: F401

OBJECT = 32 * MIB
CHUNK = 16 * MIB


def egress(node):
    m = node.metrics()
    return sum(v for k, v in m.items() if k.startswith("cairn_peer_egress_bytes_total"))


def read_all_at_once(nodes, key):
    """Every node in `nodes` GETs `key` at the same moment; returns their sha256 digests."""
    barrier = threading.Barrier(len(nodes))

    def read(node):
        barrier.wait()
        h = hashlib.sha256()
        with requests.get(f"{node.endpoint}/data/{key}", stream=True, timeout=120) as r:
            assert r.status_code == 200, r.text
            for block in r.iter_content(1 << 20):
                h.update(block)
        return h.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(read, nodes))


def herd(cluster_factory, fanout):  # noqa: F811
    c = cluster_factory(8, chunk=CHUNK, more_sections=f"fanout = {str(fanout).lower()}")
    data = payload(OBJECT, seed=41)
    c.origin.put_direct("weights.bin", data)
    digests = read_all_at_once(c.nodes, "weights.bin")
    assert digests == [hashlib.sha256(data).hexdigest()] * 8
    return c, [egress(n) for n in c.nodes]


def test_herd_of_readers_spreads_the_sending(cluster_factory):  # noqa: F811
    # The same herd without fan-out: each chunk's owner sends one copy per reader (7 of its
    # chunk), far over twice the object.
    c, owner_only = herd(cluster_factory, fanout=False)
    assert max(owner_only) >= 3 * OBJECT, owner_only
    assert c.total("cairn_origin_bytes_total") == OBJECT
    c.stop()

    c, p2p = herd(cluster_factory, fanout=True)
    print(f"egress per node / object: owner only {[round(e / OBJECT, 2) for e in owner_only]}, "
          f"fan-out {[round(e / OBJECT, 2) for e in p2p]}")
    # No node sends more than twice the object, the origin is read once, and the rest came from
    # holders the owners handed readers to.
    assert max(p2p) <= 2 * OBJECT, p2p
    assert c.total("cairn_origin_bytes_total") == OBJECT
    assert c.total("cairn_p2p_handoffs_total") > 0
    assert c.total('cairn_peer_ingress_bytes_total{source="holder"}') > 0
    assert c.total("cairn_p2p_bad_copies_total") == 0
    # Every byte that left a node arrived somewhere as a chunk of the object.
    received = c.total('cairn_peer_ingress_bytes_total{source="owner"}') + c.total(
        'cairn_peer_ingress_bytes_total{source="holder"}')
    assert received == sum(p2p)


def holder_fails(cluster_factory, sig):  # noqa: F811
    """A node reads the object first, so every owner records it as a holder and (its direct
    budget spent) hands the next readers to it; then it is frozen or killed before they read."""
    c = cluster_factory(8, chunk=CHUNK)
    victim, others = c.nodes[7], c.nodes[:7]
    data = payload(OBJECT, seed=43)
    want = hashlib.sha256(data).hexdigest()
    # An object none of whose chunks the victim owns (it fetches those from the origin itself).
    for attempt in range(20):
        key = f"ckpt-{attempt}.bin"
        c.origin.put_direct(key, data)
        before = victim.metric("cairn_origin_bytes_total")
        assert read_all_at_once([victim], key) == [want]
        if victim.metric("cairn_origin_bytes_total") == before:
            break
    else:
        raise AssertionError("no object of 20 avoids the victim as owner")
    origin_before = sum(n.metric("cairn_origin_bytes_total") for n in others)
    victim.proc.send_signal(sig)
    try:
        assert read_all_at_once(others, key) == [want] * 7
        assert sum(n.metric("cairn_p2p_reselections_total") for n in others) > 0
        # The owners still read the origin once, for the victim's read.
        assert sum(n.metric("cairn_origin_bytes_total") for n in others) == origin_before
    finally:
        if sig == signal.SIGSTOP:
            victim.proc.send_signal(signal.SIGCONT)


def test_a_frozen_holder_costs_a_retry_not_a_read(cluster_factory):  # noqa: F811
    holder_fails(cluster_factory, signal.SIGSTOP)


def test_a_dead_holder_costs_a_retry_not_a_read(cluster_factory):  # noqa: F811
    holder_fails(cluster_factory, signal.SIGKILL)
