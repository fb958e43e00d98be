"""A node in a Kubernetes pod takes its zone and rack from its Node's labels: one authenticated
`GET /api/v1/nodes/NAME` over TLS against the service account's CA, at start. The API server here
is a stand-in HTTPS server that answers that one call as the API server does (bearer token,
Node JSON, 403/404 Status objects); the chart's RBAC and manifests are checked in test_chart.py."""

import http.server
import json
import ssl
import subprocess
import threading

import pytest
import requests

from conftest import CAIRN_BIN, free_port, stop, wait_port

TOKEN = "eyJhbGciOiJSUzI1NiJ9.pod-service-account-token"
NODES = {
    "aks-gpu-17": {
        "topology.kubernetes.io/zone": "westus3-2",
        "example.com/rack": "rack-0417",
        "kubernetes.io/hostname": "aks-gpu-17",
    },
    "aks-gpu-18": {"kubernetes.io/hostname": "aks-gpu-18"},
}


@pytest.fixture
def api(tmp_path):
    """The stand-in API server on https://127.0.0.1:PORT, its CA, the token file; records calls."""
    # A cluster CA and the API server's certificate signed by it, as a cluster has them.
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.crt", "api.key", "api.csr", "api.crt"))
    openssl = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)  # noqa: E731
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
            "-subj", "/CN=kubernetes-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver")
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
            "-extfile", ext)  # fmt: skip
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.reply(403, {"kind": "Status", "status": "Failure", "reason": "Forbidden",
                                        "message": "nodes is forbidden", "code": 403})  # fmt: skip
            name = self.path.removeprefix("/api/v1/nodes/")
            if not self.path.startswith("/api/v1/nodes/") or name not in NODES:
                return self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                                        "message": f'nodes "{name}" not found', "code": 404})  # fmt: skip
            self.reply(200, {"kind": "Node", "apiVersion": "v1",
                             "metadata": {"name": name, "labels": NODES[name]}, "spec": {}, "status": {}})  # fmt: skip

        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"https://127.0.0.1:{server.server_address[1]}", "ca": ca, "token": token, "calls": calls}
    server.shutdown()


def node_cmd(tmp_path, api, node_name, *, ca=None, token=None, extra=()):
    peer, admin = free_port(), free_port()
    cfg = tmp_path / f"{node_name}.toml"
    cfg.write_text(
        "[kubernetes]\n"
        f'api = "{api["url"]}"\n'
        f'ca_file = "{ca or api["ca"]}"\n'
        f'token_file = "{token or api["token"]}"\n'
        'rack_label = "example.com/rack"\n'
    )
    (tmp_path / "origin").mkdir(exist_ok=True)
    cmd = [
        CAIRN_BIN, "serve", "--config", str(cfg),
        "--origin", f"file://{tmp_path / 'origin'}", "--cache-dir", str(tmp_path / f"cache-{node_name}"),
        "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{admin}",
        "--kv-listen", "", "--node-id", node_name, "--peer-listen", f"127.0.0.1:{peer}",
        "--seeds", f"127.0.0.1:{peer}", "--cluster-secret", "kube-test-secret-0123456789",
        "--k8s-node-name", node_name, *extra,
    ]  # fmt: skip
    return cmd, admin


def me(admin):
    rows = requests.get(f"http://127.0.0.1:{admin}/v1/members", timeout=5).json()["members"]
    return next(r for r in rows if r["this_node"])


def test_zone_and_rack_come_from_the_node_labels(tmp_path, api):
    cmd, admin = node_cmd(tmp_path, api, "aks-gpu-17")
    p = subprocess.Popen(cmd, stderr=open(tmp_path / "node.log", "w"))
    try:
        wait_port(admin, p)
        row = me(admin)
        assert (row["zone"], row["rack"]) == ("westus3-2", "rack-0417")
        assert api["calls"] == [("/api/v1/nodes/aks-gpu-17", f"Bearer {TOKEN}")]
        # The first node of its pool is ready once its origin answered.
        r = requests.get(f"http://127.0.0.1:{admin}/readyz", timeout=5)
        assert (r.status_code, r.text) == (200, "ready\n")
    finally:
        stop(p)


def test_flags_win_over_labels_and_missing_labels_give_default(tmp_path, api):
    cmd, admin = node_cmd(tmp_path, api, "aks-gpu-18", extra=["--zone", "z-explicit"])
    p = subprocess.Popen(cmd, stderr=open(tmp_path / "node.log", "w"))
    try:
        wait_port(admin, p)
        row = me(admin)
        assert (row["zone"], row["rack"]) == ("z-explicit", "default")
    finally:
        stop(p)
    assert "has no such label" in (tmp_path / "node.log").read_text()


@pytest.mark.parametrize(
    "case, expect",
    [("wrong-token", "403 Forbidden"), ("unknown-node", "404 Not Found"), ("untrusted-ca", "GET https://")],
)
def test_a_node_that_cannot_read_its_labels_does_not_start(tmp_path, api, case, expect):
    name, token, ca = "aks-gpu-17", None, None
    if case == "wrong-token":
        token = tmp_path / "bad-token"
        token.write_text("not-the-token")
    elif case == "unknown-node":
        name = "aks-gpu-99"
    else:
        # A CA that did not sign the API server's certificate: the connection is refused, retried
        # for a while, then start-up fails. Here the retries are cut short by a short timeout.
        other = tmp_path / "other"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{other}.key", "-out",
             f"{other}.crt", "-days", "1", "-subj", "/CN=other"], check=True, capture_output=True,
        )  # fmt: skip
        ca = f"{other}.crt"
    cmd, _ = node_cmd(tmp_path, api, name, ca=ca, token=token)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10 if case != "untrusted-ca" else 45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the node neither started nor gave up")
    assert r.returncode != 0
    assert "kubernetes: reading node" in r.stderr and expect in r.stderr, r.stderr[-2000:]
    if case != "untrusted-ca":
        # Refusals are final: one call, no retry loop.
        assert len(api["calls"]) == 1
    else:
        assert not api["calls"]
