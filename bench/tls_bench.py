#!/usr/bin/env python3
"""What TLS costs on cache hits: cairn's S3 endpoint over https and over http, and nginx over https
and http as the reference, all in the same run, with wrk.

    CAIRN_BIN=target/release/cairn python3 bench/tls_bench.py [--quick] [--keep]

(`cargo xtask bench tls` installs nginx-light and wrk, builds the release binary and runs this.)

One cairn node serves one S3 listener, so two nodes run side by side from the same binary with the
same configuration but `[tls] s3 = true` on one of them (a certificate made here with
`cryptography`, ECDSA P-256); one nginx process serves the same files on an http and an https port.
Both cairn nodes are warmed (every object read once and compared), so every measured request is a
RAM-tier hit. Each https run follows its http run directly, so drift hits both alike. Measurements:

1. Hit GET of 16 MiB objects (4 of them, cycled), 1 and 8 connections: GB/s.
2. 4 KiB ranged GET (Range: bytes=4096-8191) of a cached object, 1 and 8 connections: p50, p99
   and requests/s.

Connections are kept alive, so the rows measure the record layer (encryption, framing, copies),
not handshakes. The Markdown table is printed and written to bench/tls_results.md.
"""

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench as b  # noqa: E402  (process, wrk and file helpers shared with the single-node bench)

ROOT = b.ROOT
MIB = b.MIB


def make_cert(folder):
    """A CA and a server certificate for 127.0.0.1 signed by it; returns (cert, key, ca) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cairn bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "tls.crt", folder / "tls.key", folder / "ca.crt"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


class NginxBoth:
    """nginx serving the same folder on an http and an https port (OpenSSL, sendfile where it can)."""

    def __init__(self, tmp, origin, cert, key):
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port, self.tls_port = b.free_port(), b.free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"  {d}_temp_path {self.dir / d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""{user}worker_processes 2;
daemon off;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
{temp}  server {{
    listen 127.0.0.1:{self.port};
    listen 127.0.0.1:{self.tls_port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    location /bench/ {{ alias {origin}/; }}
  }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = b.start(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                            self.dir / "stdout.log")
        b.wait_port(self.port, self.proc)
        b.wait_port(self.tls_port, self.proc)

    def stop(self):
        b.stop(self.proc)


def fetch(url, ctx, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120, context=ctx) as r:
        return r.status, r.read()


def negotiated(port, ctx):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return f"{s.version()} {s.cipher()[0]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s wrk runs instead of 10 s")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "tls_results.md"))
    args = ap.parse_args()

    bin_path = str(pathlib.Path(os.environ.get("CAIRN_BIN", str(ROOT / "target" / "release" / "cairn"))).resolve())
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (cargo xtask bench installs nginx-light and wrk)")
    busy_before = b.cpu_busy()
    seconds = 3 if args.quick else 10
    started = time.time()
    foreign = b.ForeignLoad()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-tls-bench-"))
    rows = []
    cipher = "?"
    try:
        shutil.copy2(bin_path, tmp / "cairn")
        origin = tmp / "origin"
        origin.mkdir()
        for i in range(b.HIT_OBJECTS):
            b.gen_file(origin / f"obj{i}", b.HIT_OBJECT, i)
        cert, key, ca = make_cert(tmp)
        ctx = ssl.create_default_context(cafile=str(ca))
        bucket = f'[[origin]]\nbucket = "bench"\nurl = "file://{origin}"\nmetadata = "immutable"\n'
        tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\ns3 = true\n'
        plain = b.Cairn(str(tmp / "cairn"), tmp, "cairn-http", [bucket])
        secure = b.Cairn(str(tmp / "cairn"), tmp, "cairn-https", [bucket, tls])
        nginx = NginxBoth(tmp, origin, cert, key)
        servers = {
            ("cairn", "http"): f"http://127.0.0.1:{plain.port}",
            ("cairn", "https"): f"https://127.0.0.1:{secure.port}",
            ("nginx", "http"): f"http://127.0.0.1:{nginx.port}",
            ("nginx", "https"): f"https://127.0.0.1:{nginx.tls_port}",
        }
        cipher = f"cairn {negotiated(secure.port, ctx)}, nginx {negotiated(nginx.tls_port, ctx)}"
        paths = [f"/bench/obj{i}" for i in range(b.HIT_OBJECTS)]
        lo, hi = b.RANGE
        for p in paths:
            want = (origin / p.rsplit("/", 1)[1]).read_bytes()
            for (name, scheme), base in servers.items():
                status, body = fetch(base + p, ctx)  # warms the caches
                if status != 200 or body != want:
                    b.anomaly(f"{name} {scheme} GET {p}: status {status}, {len(body)} bytes, equal={body == want}")
                status, body = fetch(base + p, ctx, {"Range": f"bytes={lo}-{hi}"})
                if status != 206 or body != want[lo : hi + 1]:
                    b.anomaly(f"{name} {scheme} ranged GET {p}: status {status}, {len(body)} bytes")
        hits = b.wrk_script(tmp / "hits.lua", paths)
        ranges = b.wrk_script(tmp / "range.lua", [paths[0]], {"Range": f"bytes={lo}-{hi}"})
        results = {}
        for what, script, latency in (("hit", hits, False), ("range", ranges, True)):
            for conns in (1, 8):
                for key_ in (("nginx", "http"), ("nginx", "https"), ("cairn", "http"), ("cairn", "https")):
                    b.wrk(servers[key_], script, conns, 2)  # unmeasured warm-up
                    r = b.wrk(servers[key_], script, conns, seconds, latency=latency)
                    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
                    b.log(f"{what} c={conns} {key_[0]} {key_[1]}: {r['gbps']:.2f} GB/s, {r['rps']:.0f} req/s, "
                          f"p50 {r['p50_us']} us, p99 {r['p99_us']} us, {r['errors']} errors")
                    if r["errors"]:
                        b.anomaly(f"wrk {what} c={conns} {key_}: errors {r}")
                    results[(what, conns) + key_] = r

        def row(label, value, fmt, lower_is_better=False):
            ch, cs = value(results[label + ("cairn", "http")]), value(results[label + ("cairn", "https")])
            nh, ns = value(results[label + ("nginx", "http")]), value(results[label + ("nginx", "https")])
            what, conns = label
            name = ("Hit GET 16 MiB" if what == "hit" else "4 KiB ranged GET hit") + f", {conns} conn"
            name += "s" if conns > 1 else ""
            return (name + fmt[1], fmt[0](ch), fmt[0](cs), f"{cs / ch:.2f}×", fmt[0](nh), fmt[0](ns), f"{ns / nh:.2f}×")

        gbps = (lambda v: f"{v:.2f} GB/s", "")
        rps = (lambda v: f"{v:,.0f} req/s", ", throughput")
        ms50 = (lambda v: f"{v / 1000:.3f} ms", ", p50 latency")
        ms99 = (lambda v: f"{v / 1000:.3f} ms", ", p99 latency")
        for conns in (1, 8):
            rows.append(row(("hit", conns), lambda r: r["gbps"], gbps))
        for conns in (1, 8):
            rows.append(row(("range", conns), lambda r: r["p50_us"], ms50))
            rows.append(row(("range", conns), lambda r: r["p99_us"], ms99))
            rows.append(row(("range", conns), lambda r: r["rps"], rps))
        for c in (plain, secure):
            c.check_metrics()
        nginx.stop()
        plain.stop()
        secure.stop()
    finally:
        b.stop_all()
        if args.keep:
            b.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    head = ("Benchmark", "cairn http", "cairn https", "cairn https/http", "nginx http", "nginx https",
            "nginx https/http")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    header = (
        f"cairn TLS benchmark{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {rev.stdout.strip() or '?'}, {os.cpu_count()} CPUs, {platform.machine()} Linux "
        f"{platform.release()}, wrk runs {seconds} s, wall time {time.time() - started:.0f} s, "
        f"negotiated: {cipher}, CPU busy before start {busy_before:.0%}, "
        f"CPU used by other processes during the run ≈ {foreign.cores():.2f} cores"
    )
    notes = "\n".join(f"- {a}" for a in b.ANOMALIES) or "- none"
    text = f"{header}\n\n" + "\n".join(lines) + f"\n\nAnomalies seen in cairn's behaviour:\n{notes}\n"
    print(text)
    pathlib.Path(args.out).write_text(text)
    b.log(f"wrote {args.out}")
    return 1 if b.ANOMALIES else 0


if __name__ == "__main__":
    sys.exit(main())
