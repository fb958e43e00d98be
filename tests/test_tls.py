"""TLS on the S3, KV and peer listeners (rustls), certificates rotated without a restart, mutual TLS
between peers against the cluster CA, and peer requests signed so that the cluster secret never
crosses the wire. Certificates are made here with `cryptography`; nodes are real processes."""

import datetime
import http.client
import ipaddress
import os
import pathlib
import socket
import ssl
import threading
import time

import boto3
import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import ACCESS_KEY, KV_PASSWORD, SECRET_KEY, LocalOrigin, client_config, payload, peer_auth
from test_cluster import SECRET, cluster_factory  # noqa: F401  (fixture)

MIB = 1024 * 1024
RELOAD = 0.3  # seconds, tls.reload_every of the rotation tests


# ---------------------------------------------------------------------------------------------
# A small PKI


class CA:
    def __init__(self, name):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name, ips=("127.0.0.1",), serial=None):
        """A node certificate (server and client use) for `ips`; returns (cert PEM, key PEM, serial)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = serial or x509.random_serial_number()
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, serial


class SecretVolume:
    """A folder laid out as Kubernetes mounts a Secret: `tls.crt`, `tls.key` and `ca.crt` are
    symlinks through `..data`, a symlink to a timestamped folder, and an update swaps `..data`
    in one rename."""

    def __init__(self, root, cert, key, ca):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True)
        self.version = 0
        self.update(cert, key, ca)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            os.symlink(f"..data/{name}", self.root / name)

    def update(self, cert, key, ca):
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        (folder / "tls.crt").write_bytes(cert)
        (folder / "tls.key").write_bytes(key)
        (folder / "ca.crt").write_bytes(ca)
        tmp = self.root / "..data_tmp"
        os.symlink(folder.name, tmp)
        os.replace(tmp, self.root / "..data")

    @property
    def cert(self):
        return self.root / "tls.crt"

    @property
    def key(self):
        return self.root / "tls.key"

    @property
    def ca(self):
        return self.root / "ca.crt"


def tls_section(vol, s3=False, kv=False, peer=False, client_ca=None, reload_every="5s"):
    lines = ["[tls]", f'cert = "{vol.cert}"', f'key = "{vol.key}"', f'ca = "{vol.ca}"',
             f"s3 = {str(s3).lower()}", f"kv = {str(kv).lower()}", f"peer = {str(peer).lower()}",
             f'reload_every = "{reload_every}"']
    if client_ca:
        lines.append(f'client_ca = "{client_ca}"')
    return "\n".join(lines) + "\n"


@pytest.fixture
def ca():
    return CA("cairn test cluster CA")


def secret_volume(tmp_path, ca, name, ips=("127.0.0.1",), serial=None):
    cert, key, _ = ca.issue(name, ips, serial)
    return SecretVolume(tmp_path / f"secret-{name}", cert, key, ca.pem())


def https_s3(node, ca_file, **kw):
    return boto3.client(
        "s3",
        endpoint_url=f"https://{node.host}:{node.port}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        verify=str(ca_file),
        config=client_config(**kw),
    )


def served_serial(host, port, ca_file):
    """The serial number of the certificate a new TLS connection to host:port is given."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def wait_for(check, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


# ---------------------------------------------------------------------------------------------
# S3 and KV endpoints


def test_s3_and_kv_over_tls_serve_exact_bytes_and_refuse_plain_clients(make_node, tmp_path, ca):
    vol = secret_volume(tmp_path, ca, "node")
    node = make_node(LocalOrigin(tmp_path / "origin").toml(), sections=tls_section(vol, s3=True, kv=True))
    s3 = https_s3(node, vol.ca)
    data = payload(3 * 256 * 1024 + 123, seed=1)
    s3.put_object(Bucket="data", Key="tls/obj.bin", Body=data)
    assert s3.get_object(Bucket="data", Key="tls/obj.bin")["Body"].read() == data
    part = s3.get_object(Bucket="data", Key="tls/obj.bin", Range="bytes=300000-300099")["Body"].read()
    assert part == data[300000:300100]
    # Plain HTTP to the TLS port gets no answer, and a client that does not trust the CA refuses.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{node.port}/data/tls/obj.bin", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{node.port}/data/tls/obj.bin", timeout=5)

    r = redis.Redis(host="127.0.0.1", port=node.kv_port, password=KV_PASSWORD, ssl=True,
                    ssl_ca_certs=str(vol.ca), socket_timeout=30)
    value = os.urandom(3 * MIB + 7)
    assert r.set("tls-key", value)
    assert r.get("tls-key") == value
    assert r.mget(["tls-key", "absent"]) == [value, None]
    r.close()
    with pytest.raises(redis.exceptions.RedisError):
        node.redis(socket_timeout=5).ping()
    # The admin endpoint stays plain (probes, Prometheus).
    m = node.metrics()
    assert m['cairn_tls_handshake_failures_total{listener="s3"}'] >= 2
    assert m['cairn_tls_handshake_failures_total{listener="kv"}'] >= 1


def test_client_certificates_are_required_when_a_client_ca_is_set(make_node, tmp_path, ca):
    vol = secret_volume(tmp_path, ca, "node")
    clients = CA("clients CA")
    (tmp_path / "clients-ca.pem").write_bytes(clients.pem())
    cert, key, _ = clients.issue("trainer")
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    node_cert, node_key, _ = ca.issue("intruder")  # a certificate, but not of the clients' CA
    (tmp_path / "other.crt").write_bytes(node_cert)
    (tmp_path / "other.key").write_bytes(node_key)
    node = make_node(LocalOrigin(tmp_path / "origin").toml(),
                     sections=tls_section(vol, s3=True, client_ca=tmp_path / "clients-ca.pem"))
    ok = https_s3(node, vol.ca, client_cert=(str(tmp_path / "client.crt"), str(tmp_path / "client.key")))
    ok.put_object(Bucket="data", Key="mtls.bin", Body=b"x" * 1000)
    assert ok.get_object(Bucket="data", Key="mtls.bin")["Body"].read() == b"x" * 1000
    for client_cert in (None, (str(tmp_path / "other.crt"), str(tmp_path / "other.key"))):
        kw = {"client_cert": client_cert} if client_cert else {}
        with pytest.raises(Exception) as e:
            https_s3(node, vol.ca, **kw).head_object(Bucket="data", Key="mtls.bin")
        assert "ClientError" not in type(e.value).__name__, "the node answered a client without a valid certificate"


# ---------------------------------------------------------------------------------------------
# Certificate rotation


def test_a_rotated_certificate_is_used_for_new_connections_only(make_node, tmp_path, ca):
    vol = secret_volume(tmp_path, ca, "node", serial=1001)
    origin = LocalOrigin(tmp_path / "origin")
    origin.put_direct("obj.bin", payload(100_000, seed=2))
    node = make_node(origin.toml(), extra="allow_anonymous = true",
                     sections=tls_section(vol, s3=True, reload_every=f"{int(RELOAD * 1000)}ms"))
    assert served_serial("127.0.0.1", node.port, vol.ca) == 1001
    ctx = ssl.create_default_context(cafile=str(vol.ca))
    old = http.client.HTTPSConnection("127.0.0.1", node.port, context=ctx, timeout=10)

    def get(conn):
        conn.request("GET", "/data/obj.bin")
        r = conn.getresponse()
        return r.status, r.read()

    assert get(old) == (200, payload(100_000, seed=2))
    old_sock = old.sock

    cert, key, _ = ca.issue("node", serial=2002)
    vol.update(cert, key, ca.pem())
    started = time.time()
    assert wait_for(lambda: served_serial("127.0.0.1", node.port, vol.ca) == 2002, timeout=RELOAD * 10)
    print(f"new connections got the new certificate {time.time() - started:.2f}s after the swap")
    # The connection opened before the swap goes on with its session.
    assert get(old) == (200, payload(100_000, seed=2))
    assert old.sock is old_sock
    assert x509.load_der_x509_certificate(old.sock.getpeercert(binary_form=True)).serial_number == 1001

    # A corrupt replacement is refused: the current certificate stays, and new connections work.
    vol.update(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", key, ca.pem())
    assert wait_for(lambda: node.metric('cairn_tls_reloads_total{result="error"}') >= 1, timeout=RELOAD * 10)
    assert served_serial("127.0.0.1", node.port, vol.ca) == 2002
    fresh = http.client.HTTPSConnection("127.0.0.1", node.port, context=ctx, timeout=10)
    assert get(fresh) == (200, payload(100_000, seed=2))
    # A key that does not go with the certificate is refused too.
    other_cert, _, _ = ca.issue("node", serial=3003)
    vol.update(other_cert, key, ca.pem())
    assert wait_for(lambda: node.metric('cairn_tls_reloads_total{result="error"}') >= 2, timeout=RELOAD * 10)
    assert served_serial("127.0.0.1", node.port, vol.ca) == 2002
    log = (node.workdir / "node.log").read_text()
    assert "do not load" in log and "does not go with" in log
    # Once a good pair comes, it is taken.
    cert, key, _ = ca.issue("node", serial=4004)
    vol.update(cert, key, ca.pem())
    assert wait_for(lambda: served_serial("127.0.0.1", node.port, vol.ca) == 4004, timeout=RELOAD * 10)
    assert get(old) == (200, payload(100_000, seed=2))
    assert node.metric('cairn_tls_reloads_total{result="ok"}') == 2
    old.close()
    fresh.close()


# ---------------------------------------------------------------------------------------------
# Peer transport: mutual TLS


def peer_tls_sections(tmp_path, ca, n, reload_every="5s", first=11):
    sections, vols = [], []
    for i in range(n):
        ip = f"127.0.0.{first + i}"
        vol = secret_volume(tmp_path, ca, f"n{i}", ips=(ip,))
        vols.append(vol)
        sections.append(tls_section(vol, peer=True, reload_every=reload_every))
    return sections, vols


def signed_peer_get(ip, port, path, cert, key, ca_file):
    """A signed GET on the peer port over TLS with the given client certificate; the status, or
    the exception the handshake (or first read) raised."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            head = "".join(f"{k}: {v}\r\n" for k, v in peer_auth("GET", path, SECRET).items())
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\n{head}Connection: close\r\n\r\n".encode())
            got = s.recv(64)
            if not got:
                return ConnectionError("closed without an answer")
            return int(got.split(b" ")[1])
    except (ssl.SSLError, OSError) as e:
        return e


def test_three_nodes_with_peer_mtls_serve_every_read(cluster_factory, tmp_path, ca):
    sections, vols = peer_tls_sections(tmp_path, ca, 3)
    c = cluster_factory(3, chunk=1 * MIB, node_sections=sections)
    data = payload(24 * MIB, seed=3)
    c.origin.put_direct("model.bin", data)
    # (Start-up recovery may have found later nodes not yet listening.)
    failovers_before = c.total("cairn_peer_failovers_total")
    for n in c.nodes:
        r = requests.get(f"{n.endpoint}/data/model.bin", timeout=60)
        assert r.status_code == 200 and r.content == data
        r = requests.get(f"{n.endpoint}/data/model.bin", headers={"Range": "bytes=5000000-5004095"}, timeout=60)
        assert r.status_code == 206 and r.content == data[5000000:5004096]
    # Every node served chunks to its peers, and the origin was read once per chunk.
    assert all(n.metric("cairn_peer_served_total") > 0 for n in c.nodes)
    assert c.total("cairn_origin_bytes_total") == len(data)
    assert c.total("cairn_peer_failovers_total") == failovers_before
    # KV values forwarded to their owners over the same transport.
    values = {f"kv-{i}": os.urandom(64 * 1024 + i) for i in range(24)}
    c.nodes[0].redis().mset(values)
    for n in c.nodes[1:]:
        assert n.redis().mget(list(values)) == list(values.values())
    assert c.total('cairn_tls_handshake_failures_total{listener="peer"}') == 0
    # The peer port speaks TLS only and wants a certificate of the cluster CA.
    ip, port = c.ips[0], c.peer_ports[0]
    assert signed_peer_get(ip, port, "/healthz", vols[1].cert, vols[1].key, vols[1].ca) == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{ip}:{port}/healthz", headers=peer_auth("GET", "/healthz", SECRET), timeout=5)


def test_a_node_with_a_certificate_of_another_ca_is_kept_out(cluster_factory, tmp_path, ca):
    sections, vols = peer_tls_sections(tmp_path, ca, 3)
    rogue_ca = CA("another CA")
    # The rogue node trusts the pool's CA: only its own certificate is of another CA.
    cert, key, _ = rogue_ca.issue("n3", ("127.0.0.14",))
    rogue = SecretVolume(tmp_path / "secret-n3", cert, key, ca.pem())
    sections.append(tls_section(rogue, peer=True))
    c = cluster_factory(4, chunk=1 * MIB, node_sections=sections)
    data = payload(32 * MIB, seed=4)
    c.origin.put_direct("data.bin", data)
    good, bad = c.nodes[:3], c.nodes[3]
    served_before = [n.metric("cairn_peer_served_total") for n in good]
    r = requests.get(f"{bad.endpoint}/data/data.bin", timeout=60)
    assert r.status_code == 200 and r.content == data  # from the origin, by itself
    # The pool refused its handshakes and served it nothing.
    assert [n.metric("cairn_peer_served_total") for n in good] == served_before
    assert sum(n.metric('cairn_tls_handshake_failures_total{listener="peer"}') for n in good) >= 1
    assert bad.metric("cairn_peer_failovers_total") >= 1
    assert bad.metric("cairn_origin_bytes_total") == len(data)
    # Reads through the pool are right too: the rogue's chunks are fetched around it.
    for n in good:
        r = requests.get(f"{n.endpoint}/data/data.bin", timeout=60)
        assert r.status_code == 200 and r.content == data
    assert bad.metric("cairn_peer_served_total") == 0
    # Directly: a signed request with the rogue certificate gets no answer; with a pool one it does.
    ip, port = c.ips[0], c.peer_ports[0]
    refused = signed_peer_get(ip, port, "/healthz", rogue.cert, rogue.key, vols[0].ca)
    assert isinstance(refused, Exception), refused
    assert signed_peer_get(ip, port, "/healthz", vols[2].cert, vols[2].key, vols[2].ca) == 200


# ---------------------------------------------------------------------------------------------
# Peer request signatures


class RecordingProxy:
    """A TCP proxy in front of one port that keeps every byte its clients send."""

    def __init__(self, target):
        self.target = target
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, record):
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self.lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()


def test_peer_requests_are_signed_and_the_secret_never_crosses_the_wire(cluster_factory):
    c = cluster_factory(2, chunk=256 * 1024)
    base = f"http://{c.ips[0]}:{c.peer_ports[0]}"
    now = int(time.time() * 1000)
    ok = requests.get(f"{base}/healthz", headers=peer_auth("GET", "/healthz", SECRET), timeout=5)
    assert ok.status_code == 200
    refused = {
        "stale": peer_auth("GET", "/healthz", SECRET, millis=now - 120_000),
        "future": peer_auth("GET", "/healthz", SECRET, millis=now + 120_000),
        "other key": peer_auth("GET", "/healthz", "another-cluster-secret-0123"),
        "other path": peer_auth("GET", "/members", SECRET),
        "other method": peer_auth("POST", "/healthz", SECRET),
        "malformed": {"x-cairn-auth": "v1 12 34"},
        "the secret itself": {"x-cairn-secret": SECRET, "x-cairn-auth": SECRET},
    }
    for why, headers in refused.items():
        r = requests.get(f"{base}/healthz", headers=headers, timeout=5)
        assert r.status_code == 403, why
    assert c.nodes[0].metric("cairn_peer_refused_total") == len(refused)

    # Node 0 reaches node 1 through a proxy that records what node 0 sends.
    proxy = RecordingProxy((c.ips[1], c.peer_ports[1]))
    try:
        text = c.map_text(2).replace(c.peer_addr(1), f"127.0.0.1:{proxy.port}")
        c.map_paths[0].write_text(text)
        assert wait_for(lambda: c.nodes[0].metric("cairn_cluster_map_version") == 2, timeout=10)
        data = payload(4 * MIB, seed=5)
        c.origin.put_direct("secret-check.bin", data)
        served_before = c.nodes[1].metric("cairn_peer_served_total")
        r = requests.get(f"{c.nodes[0].endpoint}/data/secret-check.bin", timeout=60)
        assert r.status_code == 200 and r.content == data
        values = {f"k{i}": os.urandom(1000) for i in range(32)}
        c.nodes[0].redis().mset(values)
        assert c.nodes[0].redis().mget(list(values)) == list(values.values())
        assert c.nodes[1].metric("cairn_peer_served_total") > served_before
        with proxy.lock:
            sent = bytes(proxy.sent)
        assert b"x-cairn-auth: v1 " in sent
        assert b"GET /chunk?" in sent and b"POST /kv" in sent
        assert SECRET.encode() not in sent
        assert b"x-cairn-secret" not in sent
    finally:
        proxy.close()
