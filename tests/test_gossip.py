"""Gossip membership with real processes: a cluster formed from one seed, a node killed and
restarted, a node cut off by a network partition and healed, a graceful exit with write-back
pending, nodes and packets without the cluster secret, and the same placement as a map file.

Nodes run on 127.0.0.x (the partition test: one node in a network namespace of its own) with a
500 ms probe period and a 3 s suspect timeout, so failures are detected within seconds."""

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import botocore.exceptions
import pytest
import requests

from conftest import LocalOrigin, bridge_forward, payload
from test_cluster import SECRET, Cluster
from test_writeback import sync, with_durability

MIB = 1024 * 1024
PROBE, SUSPECT = 0.5, 3.0
GET_RANGE = 'cairn_origin_requests_total{op="get_range"}'
DISK_HITS = 'cairn_chunk_hits_total{tier="disk"}'
REJECTED = "cairn_gossip_rejected_total"


@pytest.fixture
def gossip_cluster(tmp_path):
    """Makes gossip clusters (1 MiB chunks); their nodes are killed with SIGKILL at the end (a
    SIGTERM would drain write-back for up to drain_timeout)."""
    made = []

    def make(n, **kw):
        kw.setdefault("chunk", MIB)
        c = Cluster(tmp_path, n, gossip=True, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop(signal.SIGKILL)


def admin_get(node, path, timeout=5):
    """GET on a node's admin port; from inside its network namespace when it runs in one, so that
    it works while the node is cut off."""
    url = f"http://{node.host}:{node.admin_port}{path}"
    if node.wrap:
        p = subprocess.run(node.wrap + ["curl", "-sS", "-f", "-m", str(timeout), url], capture_output=True,
                           timeout=timeout + 5)
        assert p.returncode == 0, p.stderr.decode()
        return p.stdout.decode()
    r = requests.get(url, timeout=timeout)
    r.raise_for_status()
    return r.text


def members(node):
    return json.loads(admin_get(node, "/v1/members"))


def view(node):
    """A node's view: (map_version, {id: (state, map)}), the newest generation of each id."""
    m = members(node)
    assert m["mode"] == "gossip"
    seen = {}
    for row in m["members"]:  # sorted by id, newest generation first
        seen.setdefault(row["id"], (row["state"], row["map"]))
    return m["map_version"], seen


def row(node, member_id):
    rows = [r for r in members(node)["members"] if r["id"] == member_id]
    return max(rows, key=lambda r: r["generation"]) if rows else None


def wait_for(what, check, timeout, every=0.1):
    """Polls `check` until it returns a true value; fails with the last value seen."""
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            last = check()
        except (requests.RequestException, AssertionError, subprocess.SubprocessError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.time() > deadline:
            pytest.fail(f"{what}: not within {timeout}s; last seen: {last!r}")
        time.sleep(every)


def all_alive(nodes, ids):
    """Every node lists exactly `ids`, once each (no record of an older generation left), all alive
    and up in its map, and all report one map version; returns that version (None while not so)."""
    versions = set()
    for n in nodes:
        version, seen = view(n)
        if seen != {i: ("alive", "up") for i in ids} or len(members(n)["members"]) != len(ids):
            return None
        versions.add(version)
    return versions.pop() if len(versions) == 1 else None


def ids(c, idx=None):
    return [f"n{i}" for i in (range(len(c.nodes)) if idx is None else idx)]


def put_objects(origin, prefix, sizes, seed):
    """Writes objects straight into the origin; returns {key: bytes}."""
    objs = {f"{prefix}obj-{i}.bin": payload(size, seed=seed + i) for i, size in enumerate(sizes)}
    for k, b in objs.items():
        origin.put_direct(k, b)
    return objs


def chunks_of(objs):
    return sum(-(-len(b) // MIB) for b in objs.values())


def read_all(node, objs):
    s3 = node.s3()
    for k, b in objs.items():
        got = s3.get_object(Bucket="data", Key=k)["Body"].read()
        assert got == b, f"{k} through {node.endpoint}: {len(got)} bytes, not the {len(b)} written"


def read_in_ns(node, key):
    """The object's bytes, read with curl from inside the node's network namespace."""
    p = subprocess.run(node.wrap + ["curl", "-sS", "-f", "-m", "30", f"{node.endpoint}/data/{key}"],
                       capture_output=True, timeout=40)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def ns_metric(node, name):
    """A metric read through admin_get (from inside the node's namespace if it has one)."""
    for line in admin_get(node, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def log_lines(node, text):
    return [line for line in (node.workdir / "node.log").read_text(errors="replace").splitlines() if text in line]


def test_five_nodes_from_one_seed_form_one_cluster(gossip_cluster, prefix):
    started = time.time()
    c = gossip_cluster(5)
    up = time.time()
    version = wait_for("all 5 alive on every node with one map version", lambda: all_alive(c.nodes, ids(c)), 10)
    formed = time.time()
    for i, n in enumerate(c.nodes):
        m = members(n)
        assert m["node"] == f"n{i}"
        rows = {r["id"]: r for r in m["members"]}
        assert [r["id"] for r in m["members"] if r["this_node"]] == [f"n{i}"]
        for j in range(5):
            r = rows[f"n{j}"]
            assert (r["addr"], r["zone"], r["rack"], r["weight"]) == (c.peer_addr(j), "z1", c.racks[j], 100)
            assert r["generation"] > 0
        metrics = n.metrics()
        assert metrics['cairn_members{state="alive"}'] == 5
        assert metrics['cairn_members{state="dead"}'] == metrics['cairn_members{state="suspect"}'] == 0
        assert metrics['cairn_cluster_nodes{state="up"}'] == 5
        assert metrics["cairn_gossip_packets_received_total"] > 0 and metrics[REJECTED] == 0
    assert len({members(n)["map_version"] for n in c.nodes}) == 1 and version
    objs = put_objects(c.origin, prefix, [3 * MIB + 5, 5 * MIB - 3, 2 * MIB, 4 * MIB + 100], seed=1)
    for n in c.nodes:
        read_all(n, objs)
    # One placement on every node: each chunk was fetched from the origin once, cluster-wide.
    assert c.total(GET_RANGE) == chunks_of(objs)
    assert c.total("cairn_peer_served_total") > 0
    print(f"5 nodes started in {up - started:.1f}s; formed {formed - up:.1f}s after the last one started")


def test_kill_9_is_declared_dead_and_the_restart_rejoins_with_its_disk(gossip_cluster, prefix):
    c = gossip_cluster(4)
    version = wait_for("4 alive", lambda: all_alive(c.nodes, ids(c)), 10)
    objs = put_objects(c.origin, prefix, [3 * MIB + 1, 4 * MIB, 2 * MIB + 77, 5 * MIB - 9], seed=10)
    for n in c.nodes:
        read_all(n, objs)
    assert c.total(GET_RANGE) == chunks_of(objs)
    wait_for("every chunk on its owner's disk",
             lambda: sum(len(n.chunk_files()) for n in c.nodes) == chunks_of(objs), 5)
    # The victim: the node (other than the seed) that owns most chunks.
    v = max((1, 2, 3), key=lambda i: len(c.nodes[i].chunk_files()))
    victim, survivors, vid = c.nodes[v], [n for i, n in enumerate(c.nodes) if i != v], f"n{v}"
    held = len(victim.chunk_files())
    assert held > 0
    gen_before = {n.endpoint: row(n, vid)["generation"] for n in survivors}

    stop_reading = threading.Event()
    reads, failures = [0], []

    def reader():
        # Each round reads a new object (its metadata and chunk owned by any node, the victim
        # included, so never in a survivor's RAM yet) and one of the warm ones, through each
        # survivor.
        clients = [n.s3() for n in survivors]
        j = 0
        while not stop_reading.is_set():
            for s3 in clients:
                j += 1
                fresh = (f"{prefix}fresh-{j}", payload(256 * 1024 + j, seed=1000 + j))
                c.origin.put_direct(*fresh)
                warm = list(objs.items())[j % len(objs)]
                for k, b in (fresh, warm):
                    try:
                        got = s3.get_object(Bucket="data", Key=k)["Body"].read()
                        if got != b:
                            failures.append(f"{k}: wrong bytes ({len(got)})")
                    except Exception as e:  # noqa: BLE001 (any failed read counts)
                        failures.append(f"{k}: {e!r}")
                    reads[0] += 1

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        killed = time.time()
        victim.stop(signal.SIGKILL)

        def declared_dead():
            return all(view(n)[1].get(vid) == ("dead", "down") for n in survivors)

        wait_for(f"{vid} dead and down on every survivor", declared_dead, PROBE + SUSPECT + 4)
        detected = time.time() - killed
        others = {view(n)[0] for n in survivors}
        assert len(others) == 1 and version not in others, "survivors disagree on the map without the victim"
        for n in survivors:
            assert view(n)[1] == {i: ("dead", "down") if i == vid else ("alive", "up") for i in ids(c)}
            assert n.metric('cairn_members{state="dead"}') == 1
        assert any(log_lines(n, "member declared dead") and
                   any(f"node={vid}" in line for line in log_lines(n, "member declared dead")) for n in survivors)
        time.sleep(1.0)  # reads go on with the victim down in the map
        victim.start()  # same id, same cache directory
        wait_for("the victim back, alive everywhere, with the map version of before the kill",
                 lambda: all_alive(c.nodes, ids(c)) == version, 15)
        rejoined = time.time() - killed
        time.sleep(0.5)
    finally:
        stop_reading.set()
        t.join(60)
    assert not failures, f"{len(failures)} of {reads[0]} reads failed: {failures[:5]}"
    assert reads[0] >= 3 * len(objs)
    for n in survivors:
        assert row(n, vid)["generation"] > gen_before[n.endpoint]
        assert any(f"node={vid}" in line for line in log_lines(n, "member restarted"))
    # The restarted node serves the chunks it owns from its disk: no new origin reads.
    assert len(victim.chunk_files()) >= held
    origin_reads, disk_hits = c.total(GET_RANGE), victim.metric(DISK_HITS)
    for n in c.nodes:
        read_all(n, objs)
    assert c.total(GET_RANGE) == origin_reads
    assert victim.metric(DISK_HITS) > disk_hits
    print(f"{vid} declared dead {detected:.1f}s after kill -9, back {rejoined:.1f}s after; "
          f"{reads[0]} reads, none failed")


# ---------------------------------------------------------------------------------------------
# Partition: n0-n2 on the host side of a bridge, n3 in a network namespace behind a veth pair.

BRIDGE, VETH, NS, NET = "cairngbr0", "cairngv3", "cairn-g3", "10.213.77"


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def partition_cleanup():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "link", "del", VETH], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    bridge_forward(BRIDGE, False)


@pytest.fixture
def partition_net():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the partition test needs root and iproute2 (ip netns)")
    partition_cleanup()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    for i in range(3):
        sh("ip", "addr", "add", f"{NET}.{11 + i}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NS)
    sh("ip", "link", "set", VETH, "master", BRIDGE)
    sh("ip", "link", "set", VETH, "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NET}.14/24", "dev", "eth0")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
    bridge_forward(BRIDGE, True)
    yield [f"{NET}.{11 + i}" for i in range(4)], [(), (), (), ("ip", "netns", "exec", NS)]
    partition_cleanup()


def test_partitioned_node_and_the_rest_keep_serving_and_heal(partition_net, gossip_cluster, prefix):
    # (partition_net first: the nodes are killed before their namespace is deleted.)
    ips, wraps = partition_net
    c = gossip_cluster(4, ips=ips, wraps=wraps, racks=["r0", "r1", "r0", "r1"])
    cut = c.nodes[3]
    version = wait_for("4 alive across the bridge", lambda: all_alive(c.nodes, ids(c)), 15)
    # 30 chunks: n3 owns some of them (all but certainly) and not all.
    objs = put_objects(c.origin, prefix, [2 * MIB + 1000 * i + 1 for i in range(10)], seed=20)
    read_all(c.nodes[0], objs)
    assert cut.metric("cairn_peer_served_total") > 0, "n3 owns nothing: the partition would test nothing"
    owned = cut.metric(GET_RANGE)

    sh("ip", "link", "set", VETH, "down")
    cut_at = time.time()
    # At once, while the two sides only suspect each other: reads through both sides work.
    for n in c.nodes[:3]:
        read_all(n, objs)
    for k, b in objs.items():
        assert read_in_ns(cut, k) == b

    def split():
        majority = all(view(n)[1].get("n3") == ("dead", "down") for n in c.nodes[:3])
        minority = view(cut)[1] == {"n0": ("dead", "down"), "n1": ("dead", "down"), "n2": ("dead", "down"),
                                    "n3": ("alive", "up")}
        return majority and minority

    wait_for("each side declares the other dead", split, PROBE + SUSPECT + 5)
    assert time.time() - cut_at > SUSPECT
    # Both sides serve every object; the cut-off node read the chunks it does not own from the
    # origin, once each.
    for n in c.nodes[:3]:
        read_all(n, objs)
    for k, b in objs.items():
        assert read_in_ns(cut, k) == b
    assert 0 < owned < chunks_of(objs)
    assert ns_metric(cut, GET_RANGE) == chunks_of(objs)
    partitioned_for = time.time() - cut_at

    sh("ip", "link", "set", VETH, "up")
    healed_at = time.time()
    healed = wait_for("after healing, all 4 alive on every node with one map version",
                      lambda: all_alive(c.nodes, ids(c)) or print([members(n) for n in c.nodes]), 30, every=1)
    heal_time = time.time() - healed_at
    assert healed == version, "the healed cluster derives another map than before the partition"
    for n in c.nodes:
        read_all(n, objs)
    print(f"partitioned {partitioned_for:.1f}s; healed in {heal_time:.1f}s")


# ---------------------------------------------------------------------------------------------
# SIGTERM with write-back pending

WB = ('[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "500ms"\nupload_defer = "0s"\n'
      'drain_timeout = "{drain}"\n')


def origin_bytes(origin, key):
    return origin.client.get_object(Bucket="data", Key=key)["Body"].read()


def sigterm(node, within):
    """SIGTERM; returns the exit code and how long the node took to exit."""
    t = time.time()
    node.proc.send_signal(signal.SIGTERM)
    try:
        code = node.proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node did not exit within {within}s of SIGTERM")
    return code, time.time() - t


def test_sigterm_hands_pending_writes_over_and_nothing_acknowledged_is_lost(gossip_cluster, origin_proxy, prefix):
    c = gossip_cluster(3, origin=origin_proxy.origin(), more_sections=WB.format(drain="3s"))
    wait_for("3 alive", lambda: all_alive(c.nodes, ids(c)), 10)
    writer, rest = c.nodes[2], c.nodes[:2]
    origin_proxy.throttle = 503  # the origin refuses every upload
    s3 = with_durability(writer.s3(), "local")
    bodies = {f"{prefix}ckpt-{i}.bin": payload(2 * MIB + 1000 * i + 1, seed=30 + i) for i in range(4)}
    for k, b in bodies.items():
        s3.put_object(Bucket="data", Key=k, Body=b)
    wait_for("upload attempts refused", lambda: origin_proxy.writes_seen, 10)
    assert writer.metric("cairn_pending_uploads") == len(bodies)

    code, took = sigterm(writer, 15)
    assert code == 0
    assert took >= 2, "the node did not wait for its drain timeout"
    handed = log_lines(writer, "pending write handed over")
    assert log_lines(writer, "handing them over"), "no handover logged"
    for n in rest:
        wait_for(f"n2 left on {n.endpoint}", lambda n=n: view(n)[1].get("n2") == ("left", "removed"), 5)
        assert n.metric('cairn_members{state="left"}') == 1
        assert any("n2" in line for line in log_lines(n, "member left"))
    for k in bodies:
        with pytest.raises(botocore.exceptions.ClientError):
            origin_bytes(c.origin, k)  # nothing reached the origin yet
    origin_proxy.throttle = None
    for n in rest:
        code, answer = sync(n, prefix, timeout="60s")
        assert code == 200, answer
    for k, b in bodies.items():
        assert origin_bytes(c.origin, k) == b, k
    # Uploaded by the replica holders, once each.
    assert sum(n.metric("cairn_takeovers_total") for n in rest) == len(bodies)
    for n in rest:
        for k, b in bodies.items():
            assert n.s3().get_object(Bucket="data", Key=k)["Body"].read() == b
    print(f"exit {took:.1f}s after SIGTERM; {len(handed)} writes handed over")


def test_sigterm_with_the_origin_up_finishes_uploads_before_exit(gossip_cluster, origin_proxy, prefix):
    c = gossip_cluster(3, origin=origin_proxy.origin(), more_sections=WB.format(drain="15s"))
    wait_for("3 alive", lambda: all_alive(c.nodes, ids(c)), 10)
    writer, rest = c.nodes[2], c.nodes[:2]
    origin_proxy.write_delay = 1.5  # a slow origin: uploads are still running at SIGTERM
    s3 = with_durability(writer.s3(), "local")
    bodies = {f"{prefix}w-{i}.bin": payload(MIB + 17 * i, seed=40 + i) for i in range(3)}
    for k, b in bodies.items():
        s3.put_object(Bucket="data", Key=k, Body=b)
    assert writer.metric("cairn_pending_uploads") > 0
    code, took = sigterm(writer, 20)
    assert code == 0
    assert log_lines(writer, "every pending upload reached the origin")
    assert not log_lines(writer, "handing them over")
    # In the origin when the process is gone, without any other node's help.
    for k, b in bodies.items():
        assert origin_bytes(c.origin, k) == b, k
    assert sum(n.metric("cairn_takeovers_total") for n in rest) == 0
    for n in rest:
        wait_for(f"n2 left on {n.endpoint}", lambda n=n: view(n)[1].get("n2") == ("left", "removed"), 5)
    print(f"exit {took:.1f}s after SIGTERM")


# ---------------------------------------------------------------------------------------------
# The cluster secret

OTHER_SECRET = "another-secret-entirely-9876543210"


def gossip_key(secret):
    return hmac.new(secret.encode(), b"cairn gossip v1", hashlib.sha256).digest()


def seal(secret, ts_ms, body):
    head = b"\x01" + struct.pack(">Q", ts_ms)
    return head + hmac.new(gossip_key(secret), head + body, hashlib.sha256).digest()[:16] + body


def test_a_node_with_another_secret_cannot_join(gossip_cluster):
    c = gossip_cluster(4, secrets=[SECRET] * 3 + [OTHER_SECRET])
    legit, foreign = c.nodes[:3], c.nodes[3]
    wait_for("n0-n2 alive", lambda: all_alive(legit, ids(c, range(3))), 10)
    wait_for("n0 rejects n3's packets", lambda: c.nodes[0].metric(REJECTED) > 0, 10)
    time.sleep(2 * PROBE + 2)
    for n in legit:
        assert all_alive([n], ids(c, range(3))), f"{n.endpoint} lists n3: {members(n)}"
        assert n.metric('cairn_members{state="alive"}') == 3
    assert c.nodes[0].metric(REJECTED) >= 2
    assert [r["id"] for r in members(foreign)["members"]] == ["n3"]
    assert foreign.metric('cairn_members{state="alive"}') == 1


def test_forged_and_replayed_packets_are_rejected_and_change_nothing(gossip_cluster):
    # A test socket listed as one more seed receives the nodes' join announcements: genuine
    # packets to tamper with.
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind(("127.0.0.1", 0))
    trap.settimeout(10)
    try:
        c = gossip_cluster(3, more_seeds=[f"127.0.0.1:{trap.getsockname()[1]}"])
        version = wait_for("3 alive", lambda: all_alive(c.nodes, ids(c)), 10)
        genuine, _ = trap.recvfrom(65536)
    finally:
        trap.close()
    # The documented wire format: version 1, sender's clock, HMAC-SHA256 tag (16 bytes) keyed
    # from the cluster secret.
    ts = struct.unpack(">Q", genuine[1:9])[0]
    assert genuine[0] == 1 and abs(ts - time.time() * 1000) < 60_000
    body = genuine[25:]
    assert seal(SECRET, ts, body) == genuine
    target = c.nodes[1]
    now = int(time.time() * 1000)
    flipped = bytearray(genuine)
    flipped[-1] ^= 1
    retimed = bytearray(genuine)
    retimed[8] ^= 1
    bad = [
        os.urandom(7),                                             # too short for a header
        os.urandom(300),                                           # noise
        b"\x02" + genuine[1:],                                     # unknown version
        b"\x01" + struct.pack(">Q", now) + os.urandom(16) + body,  # fresh header, forged tag
        bytes(flipped),                                            # genuine packet, payload altered
        bytes(retimed),                                            # genuine packet, clock altered
        seal(SECRET, now - 120_000, body),                         # genuine, replayed two minutes late
        seal(OTHER_SECRET, now, body),                             # sealed with another secret
        seal(SECRET, now, os.urandom(200)),                        # sealed, but not a gossip message
    ]
    rejected = target.metric(REJECTED)
    received = target.metric("cairn_gossip_packets_received_total")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for p in bad:
        sender.sendto(p, (target.host, c.peer_ports[1]))
        time.sleep(0.02)
    sender.close()
    wait_for("every bad packet counted", lambda: target.metric(REJECTED) - rejected >= len(bad), 5)
    time.sleep(2 * PROBE)
    assert target.metric(REJECTED) - rejected == len(bad)
    assert target.metric("cairn_gossip_packets_received_total") - received >= len(bad)
    assert all_alive(c.nodes, ids(c)) == version
    for n in c.nodes:
        assert n.metric("cairn_gossip_suspicions_total") == 0
    assert target.alive()


# ---------------------------------------------------------------------------------------------
# Placement


def test_gossip_and_map_file_place_chunks_on_the_same_nodes(tmp_path, gossip_cluster, prefix):
    """Chunks are kept on disk by their owner only (a node reading through a peer keeps a RAM
    copy), so the chunk files on each node show which node owns what."""
    origin = LocalOrigin(tmp_path / "origin")
    racks = ["r0", "r1", "r0", "r1", "r2"]
    objs = put_objects(origin, prefix, [4 * MIB + 3, 3 * MIB, 5 * MIB - 1, 2 * MIB + 2], seed=50)

    def owners(c):
        for n in c.nodes:
            read_all(n, objs)
        wait_for("every chunk on its owner's disk",
                 lambda: sum(len(n.chunk_files()) for n in c.nodes) == chunks_of(objs), 10)
        return {f"n{i}": sorted(p.name for p in n.chunk_files()) for i, n in enumerate(c.nodes)}

    mapped = Cluster(tmp_path, 5, racks=racks, chunk=MIB, origin=origin, name="map-")
    try:
        by_map = owners(mapped)
    finally:
        mapped.stop(signal.SIGKILL)
    g = gossip_cluster(5, racks=racks, origin=origin, name="gossip-")
    wait_for("5 alive", lambda: all_alive(g.nodes, ids(g)), 10)
    by_gossip = owners(g)
    assert sum(1 for files in by_map.values() if files) >= 3
    assert by_gossip == by_map


def test_a_node_frozen_for_less_than_the_suspect_timeout_is_not_declared_dead(gossip_cluster):
    c = gossip_cluster(3, suspect_timeout="4s")
    wait_for("all 3 alive", lambda: all_alive(c.nodes, ids(c)), 10)
    before = {r["id"]: r["generation"] for r in members(c.nodes[0])["members"]}
    # A GC pause or a frozen VM: the process stops answering anything for 2 s.
    c.nodes[2].proc.send_signal(signal.SIGSTOP)
    time.sleep(2.0)
    c.nodes[2].proc.send_signal(signal.SIGCONT)
    time.sleep(6.0)
    assert all_alive(c.nodes, ids(c)), [view(n) for n in c.nodes]
    assert {r["id"]: r["generation"] for r in members(c.nodes[0])["members"]} == before, "n2 had to rejoin"
    for n in c.nodes:
        assert n.metric("cairn_gossip_confirmations_total") == 0
        assert not log_lines(n, "member declared dead")
    # The freeze was noticed: probes of n2 failed while it was stopped.
    assert sum(n.metric("cairn_gossip_suspicions_total") for n in c.nodes[:2]) >= 1


def test_a_cell_that_dies_whole_is_declared_dead_by_the_other_cell(gossip_cluster, prefix):
    c = gossip_cluster(4, cells=["a", "a", "b", "b"])
    wait_for("all 4 alive", lambda: all_alive(c.nodes, ids(c)), 10)
    objs = put_objects(c.origin, prefix, [3 * MIB + 5, 2 * MIB], seed=90)
    read_all(c.nodes[0], objs)
    # Cell b loses power: nobody is left in it to run its probes.
    c.nodes[2].stop(signal.SIGKILL)
    c.nodes[3].stop(signal.SIGKILL)
    started = time.time()

    def cell_b_dead():
        return all(view(n)[1].get(i) == ("dead", "down") for n in c.nodes[:2] for i in ("n2", "n3"))

    wait_for("n2 and n3 dead on n0 and n1", cell_b_dead, 25)
    took = time.time() - started
    # Cross-cell probes run every 5 s; a failed one is then given the suspect timeout (3 s).
    assert took < 20, took
    assert view(c.nodes[0])[0] == view(c.nodes[1])[0]
    read_all(c.nodes[0], objs)
    read_all(c.nodes[1], objs)
