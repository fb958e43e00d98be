"""Reads after write-back stay hits: once a write's upload completes, the object's chunks are kept in
the cluster under the version the origin gave it, so reading it back (a checkpoint restored after
a trainer restarts) costs the origin nothing. Carried chunks are keyed by that version: a newer
version at the origin is never answered with them, and a forged or damaged chunk is refused."""

import time

import pytest
import requests

from conftest import payload, peer_auth
from test_cluster import SECRET, Cluster
from test_writeback import sync, with_durability

MIB = 1024 * 1024

# Every test here writes through cairn (skipped on the GCS emulator, which takes no XML API writes).
pytestmark = pytest.mark.writes


def origin_bytes(nodes):
    return sum(n.metric("cairn_origin_bytes_total") for n in nodes)


def test_a_checkpoint_read_back_after_its_upload_is_served_by_the_cluster(tmp_path, origin, prefix):
    c = Cluster(tmp_path, 3, origin=origin, chunk=1 * MIB)
    try:
        key = prefix + "ckpt/step-100.safetensors"
        body = payload(24 * MIB + 4321, seed=71)
        with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=body)
        code, answer = sync(c.nodes[0], prefix, timeout="60s")
        assert code == 200, answer
        assert c.nodes[0].metric("cairn_upload_carried_bytes_total") == len(body)
        before = origin_bytes(c.nodes)
        for n in c.nodes:
            got = n.s3().get_object(Bucket="data", Key=key)
            assert got["Body"].read() == body
            # Served under the origin's version, not the pending one.
            assert not got["ETag"].strip('"').startswith("cairn-w-")
        assert origin_bytes(c.nodes) == before, "reading the uploaded object back went to the origin"
    finally:
        c.stop()


def test_carried_chunks_are_never_served_for_a_newer_origin_version(tmp_path, prefix):
    c = Cluster(tmp_path, 2, chunk=1 * MIB, metadata="ttl:1s")
    try:
        key = prefix + "weights.bin"
        old = payload(5 * MIB + 17, seed=72)
        with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=old)
        code, answer = sync(c.nodes[0], prefix, timeout="60s")
        assert code == 200, answer
        assert c.nodes[1].s3().get_object(Bucket="data", Key=key)["Body"].read() == old
        # Another writer replaces the object at the origin, same size, other bytes.
        new = payload(5 * MIB + 17, seed=73)
        time.sleep(0.05)  # a later modification time than the upload's
        c.origin.put_direct(key, new)
        time.sleep(1.5)  # the metadata TTL
        for n in c.nodes:
            assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == new
    finally:
        c.stop()


def test_a_pushed_chunk_that_fails_its_checksum_is_refused(tmp_path, prefix):
    c = Cluster(tmp_path, 2, chunk=1 * MIB)
    try:
        key = prefix + "obj.bin"
        body = payload(2 * MIB, seed=74)
        c.origin.put_direct(key, body)
        etag = c.nodes[0].s3().head_object(Bucket="data", Key=key)["ETag"]
        # A chunk of the right length whose checksum does not match its bytes: refused, kept out.
        forged = b"\0" * MIB
        path = (f"/chunk?sum=0123456789abcdef&origin=data&bucket=data&key={key}&version={etag.strip(chr(34))}"
                f"&size={len(body)}&chunk_size={MIB}&index=0")
        url = f"http://{c.peer_addr(1)}{path}"
        r = requests.post(url, data=forged, headers=peer_auth("POST", path, SECRET), timeout=10)
        assert r.status_code == 400, r.text
        assert "checksum does not match" in r.text
        # Without the cluster secret: refused before the body is looked at.
        r = requests.post(url, data=forged, headers=peer_auth("POST", path, "not-the-secret"), timeout=10)
        assert r.status_code in (401, 403), r.text
        for n in c.nodes:
            assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
    finally:
        c.stop()


def test_a_frozen_owner_costs_the_carry_over_one_timeout_and_the_read_back_stays_exact(tmp_path, prefix):
    """An owner frozen (SIGSTOP: its kernel still accepts connections) while an upload's chunks are
    carried over: the push to it times out once, it is marked suspect and its chunks go to the next
    candidates, so the upload is not held for a timeout per chunk; reads of the object through the
    other nodes stay exact while it is frozen and after it resumes. (`sync` itself waits for the
    frozen node, which cannot say what it holds, until it answers or the map marks it down.)"""
    import signal

    c = Cluster(tmp_path, 3, chunk=1 * MIB)
    frozen = c.nodes[2]
    try:
        key = prefix + "ckpt/rank-0.bin"
        body = payload(32 * MIB + 99, seed=75)
        with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=body)
        frozen.proc.send_signal(signal.SIGSTOP)
        t = time.time()
        writer = c.nodes[0]
        while time.time() - t < 60:
            if writer.metric("cairn_pending_uploads") == 0:
                break
            time.sleep(0.2)
        took = time.time() - t
        # 33 chunks, about a third owned by the frozen node: one 1 s peer timeout, not eleven.
        assert writer.metric("cairn_pending_uploads") == 0
        assert took < 8, f"the upload and its carry-over took {took:.1f} s with one owner frozen"
        assert writer.metric("cairn_upload_carried_bytes_total") == len(body)
        before = origin_bytes(c.nodes[:2])
        for n in c.nodes[:2]:
            assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
        # The frozen owner's chunks were carried to the next candidates, whom readers ask next.
        assert origin_bytes(c.nodes[:2]) == before
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    try:
        for n in c.nodes:
            assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
    finally:
        c.stop()
