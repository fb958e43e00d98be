#!/usr/bin/env python3
"""cairn benchmark: cairn and its reference measured in the same run, on loopback.

    CAIRN_BIN=target/release/cairn python3 bench/bench.py [--quick] [--keep]

(`cargo xtask bench` installs nginx-light and wrk, builds the release binary and runs this.)

Everything is started here on 127.0.0.1 with free ports inside one temporary directory and
stopped again at the end: cairn nodes, nginx and Azurite. Measurements:

1. Cache-hit GET throughput of 16 MiB objects with wrk, 1 and 8 connections: cairn (RAM tier,
   anonymous access) against nginx serving the same files from the page cache with sendfile.
2. Cold read of one large object (1 GiB; 256 MiB with --quick) from Azurite through a fresh cairn
   node (readahead 16 chunks) against one streaming GET straight from Azurite, both with curl.
3. Request collapsing: 8 curl processes read the same cold large object at once through a fresh
   cairn node with a local-folder origin; origin bytes (cairn_origin_bytes_total) / object size.
4. p50 / p99 latency of a 4 KiB ranged GET (Range: bytes=4096-8191) on a hit, wrk --latency, 1 and
   8 connections, cairn against nginx.

The Markdown table is printed and written to bench/results.md.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    HIT_OBJECT, HIT_OBJECTS, HIT_RANGE, MIB, ROOT, Azurite, Cairn, ForeignLoad, Nginx, ServerCpu, anomalies_section,
    anomaly, busy_at_start, cairn_binary, clean_up, curl_sha256, finish, gen_file, http_get, load_note, log,
    machine, need_tools, private_copy, revision, table, wrk, wrk_script,
)

# ---------------------------------------------------------------------------------------------
# Clients


def curl_timed(url, sink="/dev/null"):
    """One streaming GET with curl; returns (seconds, http code, bytes)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        ["curl", "-s", "-o", sink, "-w", "%{http_code} %{size_download}", url],
        capture_output=True, text=True, timeout=600,
    )
    dt = time.perf_counter() - t0
    code, size = out.stdout.split()
    return dt, int(code), int(float(size))


# ---------------------------------------------------------------------------------------------
# Measurements


def bench_hits(cairn, nginx, tmp, seconds, rows):
    paths = [f"/bench/obj{i}" for i in range(HIT_OBJECTS)]
    script = wrk_script(tmp / "hits.lua", paths)
    origin = tmp / "origin"
    for p in paths:
        want = (origin / p.rsplit("/", 1)[1]).read_bytes()
        for name, server in (("cairn", cairn), ("nginx", nginx)):
            status, body = http_get(server.url(p))  # warms cairn's cache and nginx's page cache
            if status != 200 or body != want:
                msg = f"{name} GET {p}: status {status}, {len(body)} bytes, equal={body == want}"
                if name == "cairn":
                    anomaly(msg)
                else:
                    raise RuntimeError(msg)
    results = {}
    for conns in (1, 8):
        for name, server in (("nginx", nginx), ("cairn", cairn)):
            wrk(server.url(""), script, conns, 2)  # unmeasured warm-up of both
            r = wrk(server.url(""), script, conns, seconds)
            log(f"hit GET 16 MiB c={conns} {name}: {r['gbps']:.2f} GB/s, {r['requests']} requests, {r['errors']} errors")
            if r["errors"]:
                (anomaly if name == "cairn" else log)(f"wrk hit c={conns} {name}: errors {r}")
            results[(name, conns)] = r
        c, n = results[("cairn", conns)]["gbps"], results[("nginx", conns)]["gbps"]
        rows.append(
            (
                f"Hit GET 16 MiB, {conns} conn{'s' if conns > 1 else ''} (wrk)",
                f"{c:.2f} GB/s",
                f"{n:.2f} GB/s (nginx)",
                f"{c / n:.2f}×",
                "≥ 0.90×",
                "met" if c / n >= 0.9 else "not met",
            )
        )
    return results


def bench_ranges(cairn, nginx, tmp, seconds, rows):
    path = "/bench/obj0"
    lo, hi = HIT_RANGE
    want = (tmp / "origin" / "obj0").read_bytes()[lo : hi + 1]
    hdr = {"Range": f"bytes={lo}-{hi}"}
    for name, server in (("cairn", cairn), ("nginx", nginx)):
        status, body = http_get(server.url(path), hdr)
        if status != 206 or body != want:
            msg = f"{name} ranged GET: status {status}, {len(body)} bytes, equal={body == want}"
            if name == "cairn":
                anomaly(msg)
            else:
                raise RuntimeError(msg)
    script = wrk_script(tmp / "range.lua", [path], hdr)
    results = {}
    for conns in (1, 8):
        for name, server in (("nginx", nginx), ("cairn", cairn)):
            wrk(server.url(""), script, conns, 2)
            # The server's CPU per request (all its threads, or nginx's workers): steadier than
            # requests/s when the machine is shared.
            with ServerCpu(server.proc.pid) as m:
                r = wrk(server.url(""), script, conns, seconds, latency=True)
            rps = r["requests"] / (r["duration_us"] / 1e6)
            r["cpu_us"] = m.per(r["requests"])
            log(
                f"4 KiB range c={conns} {name}: p50 {r['p50_us']} us, p99 {r['p99_us']} us, "
                f"{rps:.0f} req/s, {r['cpu_us']:.1f} us CPU/request, {r['errors']} errors"
            )
            if r["errors"]:
                (anomaly if name == "cairn" else log)(f"wrk range c={conns} {name}: errors {r}")
            expected = r["requests"] * 4096
            if r["bytes"] < expected:
                (anomaly if name == "cairn" else log)(
                    f"wrk range c={conns} {name}: {r['bytes']} bytes for {r['requests']} requests"
                )
            r["rps"] = rps
            results[(name, conns)] = r
        c, n = results[("cairn", conns)], results[("nginx", conns)]
        for q in ("p50", "p99"):
            cv, nv = c[f"{q}_us"], n[f"{q}_us"]
            rows.append(
                (
                    f"4 KiB ranged GET hit, {conns} conn{'s' if conns > 1 else ''}, {q} latency (wrk)",
                    f"{cv / 1000:.3f} ms",
                    f"{nv / 1000:.3f} ms (nginx)",
                    f"{cv / nv:.2f}× (lower is better)",
                    "(reported)",
                    "—",
                )
            )
        rows.append(
            (
                f"4 KiB ranged GET hit, {conns} conn{'s' if conns > 1 else ''}, throughput (wrk)",
                f"{c['rps']:,.0f} req/s",
                f"{n['rps']:,.0f} req/s (nginx)",
                f"{c['rps'] / n['rps']:.2f}×",
                "≥ 0.90×",
                "met" if c["rps"] / n["rps"] >= 0.9 else "not met",
            )
        )
        rows.append(
            (
                f"4 KiB ranged GET hit, {conns} conn{'s' if conns > 1 else ''}, server CPU per request",
                f"{c['cpu_us']:.1f} µs",
                f"{n['cpu_us']:.1f} µs (nginx)",
                f"{c['cpu_us'] / n['cpu_us']:.2f}× (lower is better)",
                "(reported)",
                "—",
            )
        )
    return results


def bench_azure_cold(bin_path, tmp, big_path, big_sha, size, rows):
    az = Azurite(tmp)
    try:
        container = az.service.get_container_client("bench")
        container.create_container()
        log(f"uploading {size // MIB} MiB to Azurite")
        t0 = time.perf_counter()
        with open(big_path, "rb") as f:
            container.upload_blob("big.bin", f, length=size, overwrite=True, max_concurrency=4)
        log(f"uploaded in {time.perf_counter() - t0:.1f} s")

        url = az.sas_url("bench", "big.bin")
        direct = []
        for _ in range(2):
            dt, code, n = curl_timed(url)
            if code != 200 or n != size:
                raise RuntimeError(f"direct Azurite GET: status {code}, {n} bytes")
            direct.append(size / dt / 1e6)
            log(f"direct Azurite GET: {direct[-1]:.0f} MB/s ({dt:.2f} s)")

        origin = (
            '[[origin]]\nbucket = "azbench"\nurl = "az://bench"\nmetadata = "immutable"\n'
            'options = { azure_storage_use_emulator = "true" }\n'
        )
        env = {"AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{az.port}"}
        through = []
        origin_ratio = []
        for i in range(2):
            node = Cairn(bin_path, tmp, f"cairn-az{i}", [origin], readahead=16, env=env)
            try:
                dt, code, n = curl_timed(node.url("/azbench/big.bin"))
                if code != 200 or n != size:
                    anomaly(f"cold GET through cairn from Azurite: status {code}, {n} of {size} bytes")
                through.append(size / dt / 1e6)
                m = node.check_metrics()
                origin_ratio.append(m.get("cairn_origin_bytes_total", 0) / size)
                gets = m.get('cairn_origin_requests_total{op="get_range"}', 0)
                log(
                    f"cold GET via cairn (Azurite): {through[-1]:.0f} MB/s ({dt:.2f} s), "
                    f"origin bytes {origin_ratio[-1]:.3f}× the object, {gets:.0f} range GETs"
                )
            finally:
                node.stop()

        # Byte check, untimed: a cold read on a fresh node streamed into sha256, then a hit.
        node = Cairn(bin_path, tmp, "cairn-az-verify", [origin], readahead=16, env=env)
        try:
            for what in ("cold", "hit"):
                digest, n, code = curl_sha256(node.url("/azbench/big.bin"))
                ok = digest == big_sha and n == size and code == 200
                log(f"verify {what} read via cairn (Azurite): status {code}, {n} bytes, sha256 ok={ok}")
                if not ok:
                    anomaly(f"{what} read via cairn from Azurite: status {code}, {n} bytes, sha256 mismatch")
            node.check_metrics()
        finally:
            node.stop()
    finally:
        az.stop()

    d, c = max(direct), max(through)
    rows.append(
        (
            f"Cold read {size // MIB} MiB from Azurite (curl, 1 stream)",
            f"{c:.0f} MB/s",
            f"{d:.0f} MB/s (Azurite direct)",
            f"{c / d:.2f}×",
            "≥ 3×",
            "met" if c / d >= 3 else "not met",
        )
    )
    return {"direct_mbps": direct, "cairn_mbps": through, "origin_ratio": origin_ratio}


def bench_collapse(bin_path, tmp, big_path, big_sha, size, rows):
    node = Cairn(
        bin_path, tmp, "cairn-collapse",
        [f'[[origin]]\nbucket = "bench"\nurl = "file://{big_path.parent}"\nmetadata = "immutable"\n'],
    )
    try:
        before = node.metrics().get("cairn_origin_bytes_total", 0)
        url = node.url(f"/bench/{big_path.name}")
        digests = [None] * 8

        def reader(i):
            digests[i] = curl_sha256(url)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        m = node.check_metrics()
        origin_bytes = m.get("cairn_origin_bytes_total", 0) - before
        ratio = origin_bytes / size
        bad = [d for d in digests if d != (big_sha, size, 200)]
        log(
            f"8 concurrent cold readers: origin bytes {origin_bytes:.0f} = {ratio:.3f}× object, "
            f"{dt:.1f} s wall ({8 * size / dt / 1e6:.0f} MB/s served in total), "
            f"{len(bad)} bad downloads, singleflight waits {m.get('cairn_singleflight_waits_total', 0):.0f}"
        )
        if bad:
            anomaly(f"8 concurrent cold readers: {len(bad)} downloads wrong: {bad[:2]}")
        if ratio > 1.0 + 1e-9:
            anomaly(f"8 concurrent cold readers: origin bytes {ratio:.3f}× the object size (> 1.00×)")
    finally:
        node.stop()
    rows.append(
        (
            f"8 concurrent cold readers of {size // MIB} MiB (local-folder origin): origin bytes / object size",
            f"{ratio:.2f}×",
            "1.00× (ideal)",
            f"{ratio:.2f}×",
            "= 1.00×",
            "met" if abs(ratio - 1.0) < 0.005 else "not met",
        )
    )
    return {"ratio": ratio, "origin_bytes": origin_bytes, "wall_s": dt, "bad": len(bad)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB, 3 s wrk runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    ap.add_argument("--hits-only", action="store_true",
                    help="only the hit rows (16 MiB GETs and 4 KiB ranged GETs), no cold reads")
    args = ap.parse_args()

    need_tools(("nginx", "wrk", "curl"), "cargo xtask bench installs nginx-light and wrk")
    bin_path = cairn_binary()

    busy_before = busy_at_start()
    bin_mtime = os.stat(bin_path).st_mtime
    big = (256 if args.quick else 1024) * MIB
    seconds = 3 if args.quick else 10
    started = time.time()
    foreign = ForeignLoad()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    rows = []
    try:
        bin_path = private_copy(bin_path, tmp)
        origin = tmp / "origin"
        origin.mkdir()
        for i in range(HIT_OBJECTS):
            gen_file(origin / f"obj{i}", HIT_OBJECT, i)
        bigdir = tmp / "origin-big"
        bigdir.mkdir()
        big_path = bigdir / "big.bin"
        if not args.hits_only:
            log(f"generating {big // MIB} MiB object")
            big_sha = gen_file(big_path, big, 1000)

        cairn = Cairn(
            bin_path, tmp, "cairn-hit",
            [f'[[origin]]\nbucket = "bench"\nurl = "file://{origin}"\nmetadata = "immutable"\n'],
        )
        nginx = Nginx(tmp, origin)
        try:
            bench_hits(cairn, nginx, tmp, seconds, rows)
            bench_ranges(cairn, nginx, tmp, seconds, rows)
            cairn.check_metrics()
        finally:
            nginx.stop()
            cairn.stop()

        if not args.hits_only:
            bench_azure_cold(bin_path, tmp, big_path, big_sha, big, rows)
            bench_collapse(bin_path, tmp, big_path, big_sha, big, rows)
    finally:
        clean_up(tmp, args.keep)

    wall = time.time() - started
    md = table(rows)
    rev = revision()
    header = (
        f"cairn benchmark{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {rev}, binary built {time.strftime('%Y-%m-%d %H:%M', time.localtime(bin_mtime))}, "
        f"{machine()}, "
        f"wrk runs {seconds} s, wall time {wall:.0f} s, {load_note(busy_before, foreign.cores())}"
    )
    return finish(f"{header}\n\n{md}\n\n{anomalies_section()}", args.out)


if __name__ == "__main__":
    sys.exit(main())
