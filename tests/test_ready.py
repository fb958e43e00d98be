"""Readiness (`/readyz`, Kubernetes' readiness probe) means what it says: a node is ready once it
has joined its pool and its origin answers, stops being ready while its origin cannot be reached
(and is ready again when it can), and stops being ready the moment a SIGTERM starts its graceful
leave. Liveness (`/healthz`) stays 200 throughout."""

import signal
import socket
import threading
import time

import pytest
import requests

from conftest import S3Origin, free_port
from test_cluster import Cluster
from test_writeback import with_durability


def ready(node):
    r = requests.get(f"http://{node.host}:{node.admin_port}/readyz", timeout=5)
    return r.status_code, r.text


def live(node):
    return requests.get(f"http://{node.host}:{node.admin_port}/healthz", timeout=5).status_code


def wait_ready(node, want, timeout, contains=""):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = ready(node)
        if last[0] == want and contains in last[1]:
            return last
        time.sleep(0.2)
    pytest.fail(f"/readyz not {want} ({contains!r}) within {timeout}s; last {last}")


class Switch:
    """A TCP forwarder to a real server that a test can turn off (connections refused and reset)."""

    def __init__(self, target_port):
        self.target = target_port
        self.on = True
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.open = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.on:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            self.open += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while self.on and (data := a.recv(65536)):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        self.on = False
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open.clear()

    def close(self):
        self.cut()
        self.sock.close()


def test_ready_only_once_joined(tmp_path):
    # A node whose seeds list another address that does not answer: alive, not ready.
    nowhere = f"127.0.0.1:{free_port()}"
    a = Cluster(tmp_path, 1, gossip=True, more_seeds=[nowhere], name="a")
    b = None
    try:
        (n,) = a.nodes
        status, text = wait_ready(n, 503, 10, "membership")
        assert "membership: no other member reached yet" in text, text
        assert live(n) == 200
        # Another node joins through it: both are ready.
        b = Cluster(tmp_path, 1, gossip=True, seeds=[a.peer_addr(0)], name="b", ips=["127.0.0.12"], id_prefix="b")
        assert wait_ready(n, 200, 15) == (200, "ready\n")
        assert wait_ready(b.nodes[0], 200, 15) == (200, "ready\n")
    finally:
        a.stop(signal.SIGKILL)
        if b:
            b.stop(signal.SIGKILL)


def test_a_node_alone_by_design_is_ready(tmp_path):
    c = Cluster(tmp_path, 1, gossip=True)
    try:
        assert wait_ready(c.nodes[0], 200, 15) == (200, "ready\n")
    finally:
        c.stop(signal.SIGKILL)


def test_not_ready_while_the_origin_cannot_be_reached(tmp_path, moto_server):
    switch = Switch(moto_server)
    origin = S3Origin(moto_server)

    class Switched(S3Origin):
        def __init__(self):
            self.__dict__.update(origin.__dict__)

        def toml(self):
            return S3Origin.toml(self).replace(f"127.0.0.1:{moto_server}", f"127.0.0.1:{switch.port}")

    c = Cluster(tmp_path, 1, gossip=True, origin=Switched())
    try:
        (n,) = c.nodes
        wait_ready(n, 200, 15)
        switch.cut()
        # Probes run every 10 s and give up after 5 s.
        status, text = wait_ready(n, 503, 30, "origin s3://data")
        assert text.startswith("origin s3://data: "), text
        assert live(n) == 200
        switch.on = True
        assert wait_ready(n, 200, 30) == (200, "ready\n")
    finally:
        c.stop(signal.SIGKILL)
        switch.close()


def test_sigterm_makes_the_node_unready_before_it_drains(tmp_path, origin_proxy, prefix):
    # Uploads refused: the drain lasts its whole drain_timeout; readiness must be off meanwhile.
    c = Cluster(tmp_path, 1, gossip=True, origin=origin_proxy.origin(),
                more_sections='[writeback]\ndrain_timeout = "6s"\nupload_defer = "0s"\n')  # fmt: skip
    try:
        (n,) = c.nodes
        wait_ready(n, 200, 15)
        origin_proxy.throttle = 503
        with_durability(n.s3(), "local").put_object(Bucket="data", Key=f"{prefix}pending.bin", Body=b"x" * 1000)
        n.proc.send_signal(signal.SIGTERM)
        status, text = wait_ready(n, 503, 3, "leaving")
        assert "leaving: this node is shutting down" in text
        assert n.proc.poll() is None, "the node exited before its drain"
    finally:
        c.stop(signal.SIGKILL)
