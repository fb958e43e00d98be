"""Failures around write-back and peers, as an operator meets them: a writer rescheduled onto an
empty disk, a crash while the origin refuses uploads, a frozen node, a writer that is merely
unreachable, an origin that throttles, and a delete racing an upload that already started. Each
test checks exact bytes at the origin and through every node, and what `sync` reports."""

import concurrent.futures
import json
import signal
import shutil
import time

import botocore.exceptions
import pytest
import requests

from conftest import AzuriteOrigin, payload, peer_auth
from test_cluster import SECRET, Cluster
from test_writeback import (  # noqa: F401  (fixtures)
    az_cluster,
    azurite,
    blob,
    blob_exists,
    cli,
    sync,
    wait_clean,
    with_durability,
)

MIB = 1024 * 1024
WB = ('[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "500ms"\ntakeover_after = "3s"\n'
      'upload_defer = "0s"\n')


def get(node, key):
    return node.s3().get_object(Bucket="data", Key=key)


def missing(node, key):
    try:
        node.s3().head_object(Bucket="data", Key=key)
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return False


def test_writer_restarted_on_an_empty_disk_loses_no_replicated_write(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    azurite.stop()
    s3 = with_durability(c.nodes[0].s3(), "replicated")
    bodies = {f"{prefix}ckpt-{i}.bin": payload(6 * MIB + 1000 * i, seed=200 + i) for i in range(5)}
    for k, b in bodies.items():
        s3.put_object(Bucket="data", Key=k, Body=b)
    # A pod rescheduled onto a fresh disk: same id, empty cache directory.
    c.nodes[0].stop(signal.SIGKILL)
    shutil.rmtree(c.nodes[0].cache_dir)
    c.nodes[0].start()
    code, answer = sync(c.nodes[0], prefix, timeout="3s")
    assert code == 504, f"sync claimed the writes are in the origin: {answer}"
    assert answer["objects"] + answer["replicas"] >= 5
    for n in c.nodes:
        for k, b in bodies.items():
            assert get(n, k)["Body"].read() == b
    # The holders keep their replicas well past takeover_after: the new incarnation's "I do not
    # have it" means "take over", never "done".
    time.sleep(6)
    assert sum(n.metric("cairn_dirty_bytes") for n in c.nodes[1:]) >= sum(map(len, bodies.values()))
    azurite.start()
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="90s")
        assert code == 200, answer
    for k, b in bodies.items():
        assert blob(c.origin, k) == b
    assert sum(n.metric("cairn_takeovers_total") for n in c.nodes) == len(bodies)
    assert not any(wait_clean(c.nodes, timeout=20).values()), "replicas were not released after the upload"
    for n in c.nodes:
        for k, b in bodies.items():
            assert get(n, k)["Body"].read() == b


def test_a_replica_whose_other_holder_lost_its_disk_too_does_not_hold_sync_forever(az_cluster, azurite, prefix):
    """Two hosts lost after a `replicated` acknowledgement, more than it survives: the writer and the
    first replica holder both come back on empty disks. The remaining holder lacks chunks nobody can
    send; it must not wait for a holder that answers without the write (forever, before the fix:
    `sync` answered 504 until its timeout). It drops its replica, counted, and `sync` completes;
    nothing of the write reaches the origin."""
    c = az_cluster(3, more_sections=WB)
    azurite.stop()
    key = prefix + "lost.bin"
    body = payload(16 * MIB + 5, seed=250)   # 17 chunks: both other nodes hold some of them
    with_durability(c.nodes[0].s3(), "replicated").put_object(Bucket="data", Key=key, Body=body)
    records = [json.loads(p.read_text()) for n in c.nodes[1:]
               for p in (n.cache_dir / "writeback").glob("*/record.json")]
    assert len(records) == 2 and records[0]["holders"] == records[1]["holders"], records
    first, second = (int(h[1:]) for h in records[0]["holders"])
    for i in (0, first):
        c.nodes[i].stop(signal.SIGKILL)
        shutil.rmtree(c.nodes[i].cache_dir)
        c.nodes[i].start()
    azurite.start()
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="60s")
        assert code == 200, answer
    assert c.nodes[second].metric("cairn_replicas_orphaned_total") == 1
    assert c.nodes[second].metric("cairn_takeovers_total") == 0
    assert not any(wait_clean(c.nodes, timeout=20).values()), "the replica was not dropped"
    assert not blob_exists(c.origin, key)
    for n in c.nodes:
        try:
            got = get(n, key)["Body"].read()
        except botocore.exceptions.ClientError:
            continue   # NoSuchKey, or an error until the key's owners forget the pending write
        assert got == body, "a read served other bytes than the lost write's"


def test_a_crash_keeps_acknowledged_versions_visible_on_every_node(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    key, new_key = prefix + "ckpt.bin", prefix + "new.bin"
    old = payload(2 * MIB + 1, seed=300)
    c.origin.put_direct(key, old)
    azurite.stop()
    s3 = with_durability(c.nodes[0].s3(), "local")
    new = payload(3 * MIB + 7, seed=301)
    fresh = payload(MIB + 3, seed=302)
    etag = s3.put_object(Bucket="data", Key=key, Body=new)["ETag"]
    s3.put_object(Bucket="data", Key=new_key, Body=fresh)
    c.nodes[0].stop(signal.SIGKILL)
    c.nodes[0].start()
    for n in c.nodes:
        r = get(n, key)
        assert r["ETag"] == etag and r["Body"].read() == new
        assert get(n, new_key)["Body"].read() == fresh
    # The owners of the keys' metadata restart too, one at a time: each learns the pending
    # writes again before it serves.
    for i in (1, 2, 0):
        c.nodes[i].stop(signal.SIGKILL)
        c.nodes[i].start()
        for n in c.nodes:
            assert get(n, key)["Body"].read() == new
            assert get(n, new_key)["Body"].read() == fresh
    azurite.start()
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="60s")
        assert code == 200, answer
    assert blob(c.origin, key) == new and blob(c.origin, new_key) == fresh


def test_a_crash_keeps_acknowledged_versions_visible_on_a_single_node(make_node, azurite, prefix):
    origin = AzuriteOrigin(azurite.port)
    node = make_node(origin.toml(), env=origin.env, sections=WB)
    key = prefix + "ckpt.bin"
    origin.put_direct(key, payload(MIB, seed=310))
    azurite.stop()
    new = payload(2 * MIB + 5, seed=311)
    with_durability(node.s3(), "local").put_object(Bucket="data", Key=key, Body=new)
    with_durability(node.s3(), "local").put_object(Bucket="data", Key=prefix + "b", Body=b"fresh")
    node.stop(signal.SIGKILL)
    node.start()
    assert get(node, key)["Body"].read() == new
    assert get(node, prefix + "b")["Body"].read() == b"fresh"
    azurite.start()
    code, _ = sync(node, prefix, timeout="60s")
    assert code == 200
    assert blob(origin, key) == new


def test_a_frozen_node_does_not_stall_reads_through_the_others(tmp_path, prefix):
    c = Cluster(tmp_path, 3, chunk=MIB)
    try:
        objects = {f"{prefix}shard-{i}.bin": payload(4 * MIB + 17 * i, seed=400 + i) for i in range(8)}
        total = sum(map(len, objects.values()))
        for k, b in objects.items():
            c.origin.put_direct(k, b)
        frozen = c.nodes[2]
        # Warm the cache through the node about to freeze: every chunk is fetched from the origin
        # once, by its owner (single flight, no hedged requests when nothing is slow).
        for k, b in objects.items():
            assert get(frozen, k)["Body"].read() == b
        assert c.total("cairn_origin_bytes_total") == total
        assert c.total("cairn_peer_hedges_total") == 0
        before = sum(n.metric("cairn_origin_bytes_total") for n in c.nodes[:2])
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            worst = 0.0
            for n in c.nodes[:2]:
                for k, b in objects.items():
                    started = time.time()
                    assert get(n, k)["Body"].read() == b
                    worst = max(worst, time.time() - started)
            extra = sum(n.metric("cairn_origin_bytes_total") for n in c.nodes[:2]) - before
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        print(f"frozen node: slowest read {worst:.2f}s; origin bytes {1 + extra / total:.2f}x the data "
              f"(1.00x before the freeze; the frozen node's chunks are fetched again)")
        assert worst < 5, f"a read waited {worst:.1f}s on a frozen node"
        # Only the frozen node's share (about a third) is read from the origin again.
        assert extra < 0.6 * total
    finally:
        c.stop()


def test_sync_waits_for_a_frozen_node_and_names_it(tmp_path, prefix):
    """A node frozen (SIGSTOP) with an acknowledged write it has not uploaded: `sync` through another
    node cannot know what the frozen one holds, so it must not succeed; it answers 504 naming the
    node and why. Thawed, the node uploads and `sync` succeeds with the exact bytes in the origin."""
    sections = WB.replace('upload_defer = "0s"', 'upload_defer = "60s"')
    assert sections != WB
    c = Cluster(tmp_path, 3, chunk=MIB, more_sections=sections)
    try:
        key, body = prefix + "held.bin", payload(3 * MIB + 5, seed=260)
        with_durability(c.nodes[1].s3(), "local").put_object(Bucket="data", Key=key, Body=body)
        c.nodes[1].proc.send_signal(signal.SIGSTOP)
        try:
            code, answer = sync(c.nodes[0], prefix, timeout="4s")
            assert code == 504 and answer["unreachable"] == ["n1"], answer
            assert "probe" in answer["why"]["n1"], answer
            p = cli(c.nodes[0], "sync", f"data/{prefix}", "--timeout", "3s")
            assert p.returncode == 1 and "node n1 could not be asked what it holds" in p.stderr, p.stderr
            p = cli(c.nodes[0], "status")
            assert p.returncode == 0 and "unreachable: peer n1" in p.stdout, p.stdout
            assert not (c.origin.root / key).exists()
        finally:
            c.nodes[1].proc.send_signal(signal.SIGCONT)
        code, answer = sync(c.nodes[0], prefix, timeout="60s")
        assert code == 200 and answer["unreachable"] == [], answer
        assert (c.origin.root / key).read_bytes() == body
    finally:
        c.stop()


def test_takeover_when_the_writer_is_unreachable_but_not_marked_down(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    azurite.stop()
    key = prefix + "shard.bin"
    body = payload(5 * MIB + 99, seed=500)
    with_durability(c.nodes[0].s3(), "replicated").put_object(Bucket="data", Key=key, Body=body)
    writer = c.nodes[0]
    writer.proc.send_signal(signal.SIGSTOP)
    try:
        azurite.start()
        deadline = time.time() + 60
        while not blob_exists(c.origin, key) and time.time() < deadline:
            time.sleep(0.5)
        assert blob_exists(c.origin, key), "no holder took over from an unreachable writer"
        assert blob(c.origin, key) == body
        assert c.nodes[1].metric("cairn_takeovers_total") + c.nodes[2].metric("cairn_takeovers_total") == 1
        for n in c.nodes[1:]:
            assert get(n, key)["Body"].read() == body
    finally:
        writer.proc.send_signal(signal.SIGCONT)
    # The writer comes back and finds its write done: it drops it without a second upload.
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="60s")
        assert code == 200, answer
    assert blob(c.origin, key) == body
    assert not any(wait_clean(c.nodes, timeout=20).values())


def test_uploads_retry_through_an_origin_that_throttles(make_node, origin_proxy, prefix):
    origin = origin_proxy.origin()
    node = make_node(origin.toml(), sections=WB)
    s3 = with_durability(node.s3(), "local")
    origin_proxy.throttle = 503
    small, big = payload(MIB + 1, seed=600), payload(12 * MIB + 5, seed=601)
    s3.put_object(Bucket="data", Key=prefix + "small.bin", Body=small)
    s3.put_object(Bucket="data", Key=prefix + "big.bin", Body=big)
    deadline = time.time() + 30
    while node.metric("cairn_upload_retries_total") < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert node.metric("cairn_upload_retries_total") >= 2
    code, answer = sync(node, prefix, timeout="1s")
    assert code == 504 and answer["objects"] == 2
    assert any(n["last_error"] for n in answer["nodes"])
    origin_proxy.throttle = 429
    retries = node.metric("cairn_upload_retries_total")
    deadline = time.time() + 30
    # A retry counted just before the switch may still have met a 503: wait for a 429 and one
    # more retry after it.
    while 429 not in {s for _, _, s in origin_proxy.writes_seen} and time.time() < deadline:
        time.sleep(0.2)
    retries_at_429 = node.metric("cairn_upload_retries_total")
    while node.metric("cairn_upload_retries_total") <= retries_at_429 and time.time() < deadline:
        time.sleep(0.2)
    assert node.metric("cairn_upload_retries_total") > max(retries, retries_at_429 - 1)
    assert {s for _, _, s in origin_proxy.writes_seen} >= {503, 429}
    # Reads go on meanwhile.
    assert get(node, prefix + "big.bin")["Body"].read() == big
    origin_proxy.throttle = None
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    direct = origin.client
    assert direct.get_object(Bucket="data", Key=prefix + "small.bin")["Body"].read() == small
    assert direct.get_object(Bucket="data", Key=prefix + "big.bin")["Body"].read() == big


def test_a_delete_is_not_undone_by_an_upload_already_running(tmp_path, origin_proxy, prefix):
    origin = origin_proxy.origin()
    c = Cluster(tmp_path, 3, chunk=MIB, origin=origin, more_sections=WB)
    try:
        key = prefix + "ckpt.bin"
        origin_proxy.write_delay = 3.0
        with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=payload(4 * MIB, seed=700))
        deadline = time.time() + 15
        while origin_proxy.writes_in_flight == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert origin_proxy.writes_in_flight > 0, "the upload did not start"
        c.nodes[1].s3().delete_object(Bucket="data", Key=key)
        origin_proxy.write_delay = 0
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="60s")
            assert code == 200, answer
        with pytest.raises(botocore.exceptions.ClientError):
            origin.client.head_object(Bucket="data", Key=key)
        for n in c.nodes:
            assert missing(n, key)
        assert "Contents" not in c.nodes[2].s3().list_objects_v2(Bucket="data", Prefix=prefix)

        # Mixed: overwrites at `local` through one node, deletes 0.1 s later through another.
        for i in range(6):
            k = f"{prefix}mixed-{i}.bin"
            with_durability(c.nodes[i % 3].s3(), "local").put_object(Bucket="data", Key=k,
                                                                     Body=payload(2 * MIB + i, seed=710 + i))
            time.sleep(0.1)
            c.nodes[(i + 1) % 3].s3().delete_object(Bucket="data", Key=k)
        # And the other order: the write after the delete wins.
        last = payload(MIB + 11, seed=720)
        k = prefix + "after.bin"
        c.nodes[0].s3().delete_object(Bucket="data", Key=k)
        with_durability(c.nodes[1].s3(), "local").put_object(Bucket="data", Key=k, Body=last)
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="60s")
            assert code == 200, answer
        listed = {o["Key"] for o in origin.client.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", [])}
        assert listed == {k}, listed
        assert origin.client.get_object(Bucket="data", Key=k)["Body"].read() == last
    finally:
        c.stop()


def test_a_local_write_lost_with_its_disk_stops_hiding_the_origin_version(az_cluster, azurite, prefix):
    c = az_cluster(3, more_sections=WB)
    key = prefix + "ckpt.bin"
    old = payload(MIB + 9, seed=800)
    c.origin.put_direct(key, old)
    azurite.stop()
    with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=payload(MIB, seed=801))
    # `local` survives a crash, not the loss of the disk: the write is gone with it.
    c.nodes[0].stop(signal.SIGKILL)
    shutil.rmtree(c.nodes[0].cache_dir)
    c.nodes[0].start()
    azurite.start()
    # Nobody announces the lost write any more: its owners forget it within the pending lease, and
    # every node serves the origin's version again (never other bytes meanwhile). The lease is
    # 30 s; the deadline leaves room for a loaded machine.
    deadline = time.time() + 120
    served = {}
    while time.time() < deadline:
        served = {}
        for n in c.nodes:
            try:
                served[n.endpoint] = get(n, key)["Body"].read()
            except botocore.exceptions.ClientError as e:
                served[n.endpoint] = e.response["Error"]["Code"]
        assert all(v == old or isinstance(v, str) for v in served.values()), "a node served bytes of no version"
        if all(v == old for v in served.values()):
            break
        time.sleep(1)
    assert all(v == old for v in served.values()), {k: v if isinstance(v, str) else len(v) for k, v in served.items()}
    for n in c.nodes:
        code, answer = sync(n, prefix, timeout="30s")
        assert code == 200, answer
    assert blob(c.origin, key) == old


def test_a_replica_of_a_write_never_acknowledged_is_dropped(tmp_path, prefix):
    """The writer died between committing its replica at one holder and at the next: the write was
    never acknowledged. The holder that has its record must not retry a takeover forever (and hold
    `sync` up), nor upload a write nobody was told succeeded."""
    c = Cluster(tmp_path, 3, chunk=256 * 1024, more_sections=WB)
    try:
        wid = "ab" * 16
        chunk = payload(256 * 1024, seed=77)
        peer = f"http://{c.ips[0]}:{c.peer_ports[0]}"
        path = f"/wb/chunk?wid={wid}&index=0"
        r = requests.put(f"{peer}{path}", data=chunk, headers=peer_auth("PUT", path, SECRET), timeout=10)
        assert r.status_code == 204, r.text
        key = prefix + "never-acked.bin"
        record = {
            "wid": wid, "origin": "data", "bucket": "data", "key": key, "size": 2 * len(chunk),
            "chunk_size": len(chunk), "content_type": None, "version": f"cairn-w-{wid}-n2", "writer": "n2",
            # An incarnation the writer no longer has: the holders must act without it.
            "writer_incarnation": "00" * 16, "durability": "replicated", "ticket": time.time_ns(),
            "sums": [0, 0], "holders": ["n0", "n1"], "role": {"replica": {"chunks": [0]}},
        }
        r = requests.post(f"{peer}/wb/commit", data=json.dumps(record),
                          headers=peer_auth("POST", "/wb/commit", SECRET), timeout=10)
        assert r.status_code in (200, 204), r.text
        assert c.nodes[0].metric("cairn_replicas_held") == 1
        # n1, the other holder, never got its commit: the write was not acknowledged anywhere.
        deadline = time.time() + 30
        while time.time() < deadline and c.nodes[0].metric("cairn_replicas_orphaned_total") < 1:
            time.sleep(0.3)
        assert c.nodes[0].metric("cairn_replicas_orphaned_total") == 1
        assert c.nodes[0].metric("cairn_replicas_held") == 0
        for n in c.nodes:
            code, answer = sync(n, "", timeout="10s")
            assert code == 200, answer
        assert c.nodes[0].metric("cairn_takeovers_total") == 0
        assert not (c.origin.root / key).exists()
        for n in c.nodes:
            assert missing(n, key)
    finally:
        c.stop()


def served(node, key):
    """(ETag, body) of a GET through `node`, or the S3 error code."""
    try:
        r = get(node, key)
        return r["ETag"], r["Body"].read()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]


def check_for(nodes, seconds, expected):
    """GETs every key of `expected` ({key: (etag or None, bytes)}) through every node, again and
    again for `seconds`; fails on the first answer that is not exactly the expected version."""
    deadline = time.time() + seconds
    rounds = 0
    while True:
        for n in nodes:
            for k, (etag, body) in expected.items():
                got = served(n, k)
                assert not isinstance(got, str), f"{n.endpoint} answered {got} for {k} (round {rounds})"
                assert got[1] == body, (f"{n.endpoint} served {len(got[1])} bytes of another version of {k} "
                                        f"(ETag {got[0]}, round {rounds})")
                if etag is not None:
                    assert got[0] == etag, f"{n.endpoint} served ETag {got[0]} for {k}, not {etag} (round {rounds})"
        rounds += 1
        if time.time() >= deadline:
            return rounds
        time.sleep(0.2)


def test_reads_after_a_crash_never_return_the_previous_version(tmp_path, origin_proxy, prefix):
    """The origin keeps serving reads (its old version) but refuses uploads; every node has the old
    version's metadata and chunks cached and revalidates every second. A `local` write, then a
    kill -9 of its writer and of each metadata owner in turn: no node ever serves the old bytes."""
    origin = origin_proxy.origin()
    c = Cluster(tmp_path, 3, chunk=MIB, origin=origin, more_sections=WB, metadata="ttl:1s")
    try:
        key, new_key = prefix + "ckpt.bin", prefix + "new.bin"
        old = payload(3 * MIB + 5, seed=900)
        origin.put_direct(key, old)
        old_etag = origin.client.head_object(Bucket="data", Key=key)["ETag"]
        for n in c.nodes:
            assert served(n, key) == (old_etag, old)
        origin_proxy.throttle = 503
        s3 = with_durability(c.nodes[0].s3(), "local")
        new = payload(3 * MIB + 77, seed=901)
        fresh = payload(MIB + 3, seed=902)
        etag = s3.put_object(Bucket="data", Key=key, Body=new)["ETag"]
        fresh_etag = s3.put_object(Bucket="data", Key=new_key, Body=fresh)["ETag"]
        acked = time.time()
        assert etag.strip('"').startswith("cairn-w-") and etag != old_etag
        expected = {key: (etag, new), new_key: (fresh_etag, fresh)}
        c.nodes[0].stop(signal.SIGKILL)
        c.nodes[0].start()
        # SEMANTICS: a non-owner that cached the previous metadata may serve it for one ttl after
        # the write; from then on only the new version.
        time.sleep(max(0.0, acked + 1.5 - time.time()))
        assert check_for(c.nodes, 4, expected) > 3
        assert any(s == 503 for _, _, s in origin_proxy.writes_seen), "the origin was never asked to take the upload"
        for i in (1, 2, 0):
            c.nodes[i].stop(signal.SIGKILL)
            c.nodes[i].start()
            check_for(c.nodes, 2.5, expected)
        assert origin.client.get_object(Bucket="data", Key=key)["Body"].read() == old
        origin_proxy.throttle = None
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="60s")
            assert code == 200, answer
        assert origin.client.get_object(Bucket="data", Key=key)["Body"].read() == new
        assert origin.client.get_object(Bucket="data", Key=new_key)["Body"].read() == fresh
        listed = {o["Key"] for o in origin.client.list_objects_v2(Bucket="data", Prefix=prefix)["Contents"]}
        assert listed == {key, new_key}
        time.sleep(1.5)
        check_for(c.nodes, 0, {key: (None, new), new_key: (None, fresh)})
    finally:
        c.stop()


@pytest.mark.parametrize("later", ["local", "origin"])
def test_an_upload_already_running_does_not_land_after_a_later_write(tmp_path, origin_proxy, prefix, later):
    """An upload of the first write is held at the origin for 3 s; meanwhile another node takes a
    second write of the key (at `local`, or written through). The first must never land last."""
    origin = origin_proxy.origin()
    c = Cluster(tmp_path, 3, chunk=MIB, origin=origin, more_sections=WB, metadata="ttl:1s")
    try:
        key = prefix + "ckpt.bin"
        first, second = payload(4 * MIB, seed=950), payload(3 * MIB + 21, seed=951)
        origin_proxy.write_delay = 3.0
        with_durability(c.nodes[0].s3(), "local").put_object(Bucket="data", Key=key, Body=first)
        deadline = time.time() + 15
        while origin_proxy.writes_in_flight == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert origin_proxy.writes_in_flight > 0, "the upload did not start"
        with_durability(c.nodes[1].s3(), later).put_object(Bucket="data", Key=key, Body=second)
        origin_proxy.write_delay = 0
        for n in c.nodes:
            assert served(n, key)[1] == second
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="60s")
            assert code == 200, answer
        # Let any upload still held by the proxy finish before looking at the origin.
        deadline = time.time() + 10
        while origin_proxy.writes_in_flight and time.time() < deadline:
            time.sleep(0.05)
        assert origin_proxy.writes_in_flight == 0
        # Both writes reached the origin: the held one did land, and before the later one.
        landed = [s for m, p, s in origin_proxy.writes_seen if m == "PUT" and key in p and s == 200]
        assert len(landed) == 2, origin_proxy.writes_seen
        assert origin.client.get_object(Bucket="data", Key=key)["Body"].read() == second
        time.sleep(1.5)
        for n in c.nodes:
            assert served(n, key)[1] == second
        assert origin.client.get_object(Bucket="data", Key=key)["Body"].read() == second
    finally:
        c.stop()
