"""Hardening against hostile connections and operator mistakes, with real processes.

- Idle-connection floods: 4,000 TCP connections that never send a byte, held against a node's
  peer, admin or S3 port, must neither stall that node's service to everyone else (reads through
  other nodes of chunks it owns, requests with the cluster secret, /healthz, S3 reads) nor keep
  their slots: the node closes them at accept (over a limit) or after `limits.header_read_timeout`.
- Two nodes on one cache directory: the second refuses to start, naming the directory and the pid
  holding it, and touches nothing of the first's; a node killed with -9 leaves no stale lock.
- The cache directory's incarnation id survives a restart and changes when the directory is wiped.
"""

import hashlib
import pathlib
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests

from conftest import CAIRN_BIN, LocalOrigin, free_port, payload, peer_auth
from test_cluster import SECRET, cluster_factory  # noqa: F401  (fixture)

MIB = 1024 * 1024
FLOOD = 4000
# The flood comes from an address of its own, as from another host; the test's own requests and
# the nodes' peer requests come from 127.0.0.1.
ATTACKER = "127.0.0.200"
HEAD_TIMEOUT = 4
# A connection limit below the flood's size, so that a listener that waits for a free slot before
# it accepts (as cairn did) is filled by the flood, and new connections then wait in the kernel's
# accept queue; per-source limits below the global one.
LIMITS = f"""max_connections = 3500
max_connections_per_source = 200
header_read_timeout = "{HEAD_TIMEOUT}s"
"""
# Defaults of `limits.max_unauthenticated_per_source`.
UNAUTH_PER_SOURCE = 64


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = soft if hard != resource.RLIM_INFINITY and hard < need else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors the flood needs")


@pytest.fixture(autouse=True)
def enough_descriptors():
    # Raised before the nodes start, so they inherit it too.
    raise_nofile(2 * FLOOD + 1024)


class Flood:
    """`n` TCP connections from `source` to `ip:port` that never send anything."""

    def __init__(self, ip, port, n=FLOOD, source=ATTACKER, batch=100):
        self.source = source
        self.socks = []
        self.unconnected = 0
        # Opened in batches, each waited for, as connections from a network arrive: a burst of
        # thousands at once on loopback overflows the node's accept queue, and the kernel then
        # completes many handshakes with SYN cookies that the node never sees.
        while len(self.socks) < n:
            poller = select.poll()
            pending = min(batch, n - len(self.socks))
            for _ in range(pending):
                s = socket.socket()
                s.setblocking(False)
                s.bind((source, 0))
                s.connect_ex((ip, port))
                self.socks.append(s)
                poller.register(s.fileno(), select.POLLOUT)
            deadline = time.time() + 2
            while pending and time.time() < deadline:
                for fd, _ in poller.poll(50):
                    poller.unregister(fd)
                    pending -= 1
            self.unconnected += pending
            time.sleep(0.01)
        self.opened = time.time()

    def held_by_node(self, ip, port):
        """How many of the connections the node at `ip:port` still holds open, by its socket table.
        (The client side is no guide: a handshake the kernel completed with a SYN cookie while the
        node's accept queue was full looks established to the client, yet the node never got it.)"""
        out = subprocess.run(["ss", "-Htan"], capture_output=True, text=True, check=True).stdout
        n = 0
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 5 and f[0] in ("ESTAB", "CLOSE-WAIT") and f[3] == f"{ip}:{port}" \
                    and f[4].rsplit(":", 1)[0] == self.source:
                n += 1
        return n

    def wait_released(self, ip, port, timeout):
        """Seconds from the flood's last handshake until the node held none of it; None if it still
        held some after `timeout`."""
        while time.time() < self.opened + timeout:
            if self.held_by_node(ip, port) == 0:
                return time.time() - self.opened
            time.sleep(0.2)
        return None

    def close(self):
        for s in self.socks:
            s.close()


def wait_metric(node, name, at_least, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = node.metric(name)
        if v >= at_least:
            return v
        time.sleep(0.05)
    return node.metric(name)


def timed_get(url, **kw):
    t = time.time()
    r = requests.get(url, timeout=60, **kw)
    return r, time.time() - t


def test_idle_flood_on_a_peer_port_does_not_stall_reads_through_other_nodes(cluster_factory):
    c = cluster_factory(3, chunk=256 * 1024, limits=LIMITS)
    victim = c.nodes[0]
    ip, port = c.ips[0], c.peer_ports[0]
    objects = {f"flood/obj{i}.bin": payload(4 * MIB, seed=100 + i) for i in range(8)}
    for k, d in objects.items():
        c.origin.put_direct(k, d)
    served_before = victim.metric("cairn_peer_served_total")

    flood = Flood(ip, port)
    try:
        # The attacker's budget of unauthenticated connections is taken while the reads run.
        held = wait_metric(victim, 'cairn_listener_connections{listener="peer_unauthenticated"}', UNAUTH_PER_SOURCE)
        assert held >= UNAUTH_PER_SOURCE
        times = []
        for i, (key, data) in enumerate(objects.items()):
            reader = c.nodes[1 + i % 2]
            r, took = timed_get(f"{reader.endpoint}/data/{key}")
            assert r.status_code == 200 and r.content == data, key
            times.append(took)
        r, secret_took = timed_get(f"http://{ip}:{port}/healthz", headers=peer_auth("GET", "/healthz", SECRET))
        assert r.status_code == 200
        print(f"reads through other nodes under the flood: max {max(times):.3f}s, "
              f"sum {sum(times):.3f}s; signed peer request {secret_took:.3f}s")
        assert max(times) < 5, times
        assert secret_took < 5
        # The reads needed the flooded node (it owns some of every object's chunks), and it served
        # them: no reader gave up on it and went to the origin instead.
        assert victim.metric("cairn_peer_served_total") - served_before >= len(objects)
        assert c.nodes[1].metric("cairn_peer_failovers_total") == 0
        assert c.nodes[2].metric("cairn_peer_failovers_total") == 0
        # Every flood connection is closed by the node: over the source's budget at once, the
        # others when the header read timeout passes.
        released = flood.wait_released(ip, port, HEAD_TIMEOUT + 5)
        assert released is not None, f"the node still holds {flood.held_by_node(ip, port)} flood connections"
        print(f"the node held none of the flood's connections {released:.1f}s after they opened")
    finally:
        flood.close()
    m = victim.metrics()
    refused = m['cairn_connections_refused_total{listener="peer_unauthenticated",reason="source_limit"}']
    timed_out = m['cairn_connections_timed_out_total{listener="peer_unauthenticated"}']
    assert refused >= FLOOD // 2
    assert timed_out >= UNAUTH_PER_SOURCE
    # The node's peers were never refused, and still get answers.
    assert m['cairn_connections_refused_total{listener="peer",reason="limit"}'] == 0
    r, _ = timed_get(f"{c.nodes[1].endpoint}/data/flood/obj0.bin")
    assert r.content == objects["flood/obj0.bin"]


def test_a_request_without_the_secret_closes_the_peer_connection(cluster_factory):
    c = cluster_factory(2, limits=LIMITS)
    with socket.create_connection((c.ips[0], c.peer_ports[0]), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            got += part
    head = got.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 403"), head
    assert "connection: close" in head
    # A connection that sends nothing is closed after the header read timeout.
    with socket.create_connection((c.ips[0], c.peer_ports[0]), timeout=HEAD_TIMEOUT + 5) as s:
        t = time.time()
        assert s.recv(1) == b""
        assert time.time() - t <= HEAD_TIMEOUT + 2
    # And one whose requests are signed keeps its connection for the next request.
    with requests.Session() as session:
        url = f"http://{c.ips[0]}:{c.peer_ports[0]}/healthz"
        for _ in range(3):
            assert session.get(url, headers=peer_auth("GET", "/healthz", SECRET), timeout=5).status_code == 200
        # Counted among the authenticated peer connections (with the nodes' own).
        assert c.nodes[0].metric('cairn_listener_connections{listener="peer"}') >= 1


def raw_request(sock, path, headers=""):
    """Sends a GET on a kept-alive raw socket and reads one response (bodies here are short);
    returns the head, lowercased."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        part = sock.recv(65536)
        assert part, "connection closed before a response"
        got += part
    head, body = got.split(b"\r\n\r\n", 1)
    head = head.decode().lower()
    length = int(re.search(r"content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_idle_keep_alive_is_closed_after_the_header_timeout_but_peers_may_idle(cluster_factory):
    c = cluster_factory(2, limits=LIMITS)
    node = c.nodes[0]
    # Admin (and S3) port: an idle keep-alive connection goes after the header read timeout.
    with socket.create_connection((node.host, node.admin_port)) as s:
        assert raw_request(s, "/healthz").startswith("http/1.1 200")
        s.settimeout(HEAD_TIMEOUT + 5)
        t = time.time()
        assert s.recv(1) == b""
        idle = time.time() - t
    assert HEAD_TIMEOUT - 0.5 <= idle <= HEAD_TIMEOUT + 2, idle
    # Peer port: a connection that passed the signature check outlives it, as peers' pools need.
    with socket.create_connection((c.ips[0], c.peer_ports[0])) as s:
        def signed():
            return "".join(f"{k}: {v}\r\n" for k, v in peer_auth("GET", "/healthz", SECRET).items())

        assert raw_request(s, "/healthz", signed()).startswith("http/1.1 200")
        time.sleep(HEAD_TIMEOUT + 1.5)
        assert raw_request(s, "/healthz", signed()).startswith("http/1.1 200")


def test_idle_flood_on_the_admin_port_does_not_stall_healthz(make_node, tmp_path):
    node = make_node(LocalOrigin(tmp_path / "origin").toml(), limits=LIMITS)
    flood = Flood("127.0.0.1", node.admin_port)
    try:
        held = wait_metric(node, 'cairn_listener_connections{listener="admin"}', 200)
        assert held >= 200
        took = []
        for _ in range(10):
            r, t = timed_get(f"http://127.0.0.1:{node.admin_port}/healthz")
            assert r.status_code == 200 and r.text == "ok\n"
            took.append(t)
        print(f"/healthz under the flood: max {max(took):.3f}s")
        assert max(took) < 5
        released = flood.wait_released("127.0.0.1", node.admin_port, HEAD_TIMEOUT + 5)
        assert released is not None, f"the node still holds {flood.held_by_node('127.0.0.1', node.admin_port)} connections"
    finally:
        flood.close()
    m = node.metrics()
    assert m['cairn_connections_refused_total{listener="admin",reason="source_limit"}'] >= FLOOD // 2
    assert m['cairn_connections_timed_out_total{listener="admin"}'] >= 200


def test_idle_flood_on_the_s3_port_does_not_stall_reads(make_node, tmp_path):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml(), limits=LIMITS, extra="allow_anonymous = true")
    objects = {f"flood/s3-{i}.bin": payload(2 * MIB, seed=200 + i) for i in range(6)}
    for k, d in objects.items():
        origin.put_direct(k, d)
    flood = Flood("127.0.0.1", node.port)
    try:
        assert wait_metric(node, 'cairn_listener_connections{listener="s3"}', 200) >= 200
        took = []
        for key, data in objects.items():
            r, t = timed_get(f"{node.endpoint}/data/{key}")
            assert r.status_code == 200 and r.content == data, key
            took.append(t)
        print(f"S3 reads under the flood: max {max(took):.3f}s")
        assert max(took) < 5
        released = flood.wait_released("127.0.0.1", node.port, HEAD_TIMEOUT + 5)
        assert released is not None, f"the node still holds {flood.held_by_node('127.0.0.1', node.port)} connections"
    finally:
        flood.close()
    m = node.metrics()
    assert m['cairn_connections_refused_total{listener="s3",reason="source_limit"}'] >= FLOOD // 2
    assert m['cairn_connections_timed_out_total{listener="s3"}'] >= 200


# ---------------------------------------------------------------------------------------------
# The cache directory's lock and incarnation


def unreachable_s3_origin():
    """An S3 origin nobody listens for: uploads keep failing, so `local` writes stay journaled."""
    port = free_port()
    return (
        'bucket = "data"\nurl = "s3://data"\n'
        f'options = {{ aws_endpoint = "http://127.0.0.1:{port}", aws_allow_http = "true", '
        'aws_access_key_id = "x", aws_secret_access_key = "x", aws_region = "us-east-1", '
        'aws_virtual_hosted_style_request = "false" }\n'
    )


def tree(root):
    """Every file under `root` with its content's digest."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_second_node_on_the_same_cache_dir_refuses_to_start(make_node):
    first = make_node(unreachable_s3_origin(), extra="allow_anonymous = true",
                      sections='[writeback]\nretry_min = "100ms"\nretry_max = "500ms"\n')
    data = payload(3 * MIB, seed=7)
    url = f"{first.endpoint}/data/ckpt/shard-0.bin"
    r = requests.put(url, data=data, headers={"x-cairn-durability": "local"}, timeout=30)
    assert r.status_code == 200, r.text
    journal = tree(first.cache_dir / "writeback")
    assert journal, "the local write is not in the journal"

    second = subprocess.run(
        [CAIRN_BIN, "serve", "--config", str(first.config_path), "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{free_port()}", "--kv-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )
    assert second.returncode != 0
    assert "in use by another cairn node" in second.stderr, second.stderr
    assert str(first.cache_dir) in second.stderr
    assert f"pid {first.proc.pid}" in second.stderr

    # The first node's journal is as it was, and its write is still served.
    assert first.alive()
    assert tree(first.cache_dir / "writeback") == journal
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and r.content == data


def test_a_node_killed_with_sigkill_leaves_no_stale_lock(make_node, tmp_path):
    node = make_node(LocalOrigin(tmp_path / "origin").toml(), extra="allow_anonymous = true")
    data = payload(MIB + 5, seed=8)
    url = f"{node.endpoint}/data/after-kill.bin"
    assert requests.put(url, data=data, headers={"x-cairn-durability": "local"}, timeout=30).status_code == 200
    killed = node.proc.pid
    node.stop(signal.SIGKILL)
    assert (node.cache_dir / "lock").read_text().strip() == str(killed)
    node.start()
    assert (node.cache_dir / "lock").read_text().strip() == str(node.proc.pid)
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and r.content == data


def test_incarnation_survives_a_restart_and_changes_when_the_cache_dir_is_wiped(make_node, tmp_path):
    node = make_node(LocalOrigin(tmp_path / "origin").toml())
    path = node.cache_dir / "incarnation"
    first = path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    node.restart()
    assert path.read_text().strip() == first
    node.stop()
    shutil.rmtree(node.cache_dir)
    node.start()
    second = path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", second) and second != first
    node.log.flush()
    log = (node.workdir / "node.log").read_text()
    assert first in log and second in log
