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
import pathlib
import ssl
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    HIT_OBJECT, HIT_OBJECTS, HIT_RANGE, ROOT, Cairn, ForeignLoad, Nginx, anomalies_section, anomaly, cairn_binary,
    clean_up, cpu_busy, finish, gen_file, http_get, load_note, log, machine, need_tools, private_copy, revision,
    table, wrk, wrk_script,
)



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

    bin_path = cairn_binary()
    need_tools(("nginx", "wrk"), "cargo xtask bench installs nginx-light and wrk")
    busy_before = cpu_busy()
    seconds = 3 if args.quick else 10
    started = time.time()
    foreign = ForeignLoad()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-tls-bench-"))
    rows = []
    cipher = "?"
    try:
        bin_path = private_copy(bin_path, tmp)
        origin = tmp / "origin"
        origin.mkdir()
        for i in range(HIT_OBJECTS):
            gen_file(origin / f"obj{i}", HIT_OBJECT, i)
        cert, key, ca = make_cert(tmp)
        ctx = ssl.create_default_context(cafile=str(ca))
        bucket = f'[[origin]]\nbucket = "bench"\nurl = "file://{origin}"\nmetadata = "immutable"\n'
        tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\ns3 = true\n'
        plain = Cairn(bin_path, tmp, "cairn-http", [bucket])
        secure = Cairn(bin_path, tmp, "cairn-https", [bucket, tls])
        nginx = Nginx(tmp, origin, tls=(cert, key))
        servers = {
            ("cairn", "http"): f"http://127.0.0.1:{plain.port}",
            ("cairn", "https"): f"https://127.0.0.1:{secure.port}",
            ("nginx", "http"): f"http://127.0.0.1:{nginx.port}",
            ("nginx", "https"): f"https://127.0.0.1:{nginx.tls_port}",
        }
        cipher = f"cairn {negotiated(secure.port, ctx)}, nginx {negotiated(nginx.tls_port, ctx)}"
        paths = [f"/bench/obj{i}" for i in range(HIT_OBJECTS)]
        lo, hi = HIT_RANGE
        for p in paths:
            want = (origin / p.rsplit("/", 1)[1]).read_bytes()
            for (name, scheme), base in servers.items():
                status, body = http_get(base + p, context=ctx)  # warms the caches
                if status != 200 or body != want:
                    anomaly(f"{name} {scheme} GET {p}: status {status}, {len(body)} bytes, equal={body == want}")
                status, body = http_get(base + p, {"Range": f"bytes={lo}-{hi}"}, ctx)
                if status != 206 or body != want[lo : hi + 1]:
                    anomaly(f"{name} {scheme} ranged GET {p}: status {status}, {len(body)} bytes")
        hits = wrk_script(tmp / "hits.lua", paths)
        ranges = wrk_script(tmp / "range.lua", [paths[0]], {"Range": f"bytes={lo}-{hi}"})
        results = {}
        for what, script, latency in (("hit", hits, False), ("range", ranges, True)):
            for conns in (1, 8):
                for key_ in (("nginx", "http"), ("nginx", "https"), ("cairn", "http"), ("cairn", "https")):
                    wrk(servers[key_], script, conns, 2)  # unmeasured warm-up
                    r = wrk(servers[key_], script, conns, seconds, latency=latency)
                    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
                    log(f"{what} c={conns} {key_[0]} {key_[1]}: {r['gbps']:.2f} GB/s, {r['rps']:.0f} req/s, "
                          f"p50 {r['p50_us']} us, p99 {r['p99_us']} us, {r['errors']} errors")
                    if r["errors"]:
                        anomaly(f"wrk {what} c={conns} {key_}: errors {r}")
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
        clean_up(tmp, args.keep)

    head = ("Benchmark", "cairn http", "cairn https", "cairn https/http", "nginx http", "nginx https",
            "nginx https/http")
    header = (
        f"cairn TLS benchmark{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {revision()}, {machine()}, wrk runs {seconds} s, wall time {time.time() - started:.0f} s, "
        f"negotiated: {cipher}, {load_note(busy_before, foreign.cores())}"
    )
    return finish(f"{header}\n\n{table(rows, head)}\n\n{anomalies_section()}", args.out)


if __name__ == "__main__":
    sys.exit(main())
