#!/usr/bin/env python3
"""KV benchmark: cairn's Redis-protocol endpoint against Redis 7 (persistence off), same client
(redis-benchmark), same machine, same run.

    CAIRN_BIN=target/release/cairn python3 bench/kv_bench.py [--quick] [--keep] [--small-only]

Measures, for each server:
  1. SET and GET throughput, p99 latency and the server's CPU time per request for 1 KiB and 4 KiB
     values at 1, 8, 32 and 50 connections, each without and with pipelining (-P 16), and for 1 MiB
     and 32 MiB values at 1, 8 and 32 connections (redis-benchmark -t set, then -t get, random keys
     from a small keyspace so GETs hit);
  2. a 128-key EXISTS (LMCache's batch lookup; ~150-byte keys, half of them present): p50/p99;
  3. a working set twice the RAM tier (1 MiB values): cairn with a 1 GiB RAM tier and a disk tier,
     Redis with maxmemory 1 GiB (allkeys-lru): hit ratio and GET throughput.

Prints markdown tables (paste into BENCHMARKS.md) and writes them to bench/kv_results.md.
"""

import argparse
import csv
import io
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    MIB, ROOT, ServerCpu, cairn_binary, clean_up, free_port, need_tools, start, stop, table_head, table_row,
    wait_port,
)

SMALL = [(1024, "1 KiB"), (4096, "4 KiB")]
LARGE = [(MIB, "1 MiB"), (32 * MIB, "32 MiB")]
SMALL_CONNS = [1, 8, 32, 50]
LARGE_CONNS = [1, 8, 32]
# redis-benchmark -P: requests per round trip. 1 = no pipelining.
PIPELINES = {"small": [1, 16], "large": [1]}
# Requests per run and keyspace per value size: about 1-3 s per run on the reference machine
# (pipelined runs send PIPELINED_FACTOR times as many).
REQUESTS = {1024: 60000, 4096: 60000, MIB: 3000, 32 * MIB: 160}
PIPELINED_FACTOR = 4
KEYSPACE = {1024: 1000, 4096: 1000, MIB: 200, 32 * MIB: 16}
WORKING_SET_RAM = 1024 * MIB


class Server:
    """A Redis-protocol server (redis-server or cairn) on 127.0.0.1:`port`."""

    def __init__(self, name, args, port, log_path):
        self.name, self.port = name, port
        self.proc = start(args, log_path)
        wait_port(port, self.proc, timeout=30)
        self.pid = self.proc.pid

    def stop(self):
        stop(self.proc, timeout=20)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=60)
        return out.stdout

    def info_stat(self, field):
        for line in self.cli("INFO", "stats").splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":", 1)[1])
        return 0


def start_redis(work, maxmemory=None):
    port = free_port()
    d = work / f"redis-{port}"
    d.mkdir()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(d), "--protected-mode", "no", "--proto-max-bulk-len", "512mb"]
    if maxmemory:
        args += ["--maxmemory", str(maxmemory), "--maxmemory-policy", "allkeys-lru"]
    return Server("redis", args, port, d / "log")


def start_cairn(work, bin_path, ram, disk):
    port, s3, admin = free_port(), free_port(), free_port()
    d = work / f"cairn-{port}"
    d.mkdir()
    cfg = d / "cfg.toml"
    cfg.write_text(f"""[node]
listen = "127.0.0.1:{s3}"
admin_listen = "127.0.0.1:{admin}"
[cache]
dir = "{d / 'cache'}"
ram_capacity = "64MiB"
disk_capacity = "0"
[auth]
allow_anonymous = true
[kv]
listen = "127.0.0.1:{port}"
ram_capacity = "{ram}"
disk_capacity = "{disk}"
allow_anonymous = true
requirepass = ""
[[origin]]
url = "file://{d / 'origin'}"
""")
    (d / "origin").mkdir()
    return Server("cairn", [bin_path, "serve", "--config", str(cfg)], port, d / "log")


def benchmark(port, *args, n, c):
    """Runs redis-benchmark; returns {test: (rps, p50_ms, p99_ms)}."""
    cmd = ["redis-benchmark", "-p", str(port), "-n", str(n), "-c", str(c), "--csv", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr}")
    rows = {}
    for row in csv.DictReader(io.StringIO(out.stdout)):
        rows[row["test"]] = (float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]))
    return rows


def throughput(servers, quick, small_only):
    """GET/SET rows; beside each throughput, the server's CPU time per request (all its threads,
    from the scheduler), which moves much less than throughput when the machine is shared."""
    lines = table_head(("value", "conns", "pipeline", "op", "Redis req/s", "cairn req/s", "ratio", "Redis CPU µs/req",
                        "cairn CPU µs/req", "CPU ratio", "Redis p99 ms", "cairn p99 ms", "cairn MB/s"))
    groups = [(SMALL, SMALL_CONNS, PIPELINES["small"])]
    if not small_only:
        groups.append((LARGE, LARGE_CONNS, PIPELINES["large"]))
    for sizes, conns, pipelines in groups:
        for size, label in sizes:
            for c in conns:
                for p in pipelines:
                    n = REQUESTS[size] // (4 if quick else 1)
                    if c == 1:
                        n //= 3
                    if p > 1:
                        n *= PIPELINED_FACTOR
                    n = max(n, 2 * c * p)
                    res = {}
                    for s in servers:
                        # SET first (fills the keyspace), then GET of the same keys; each measured alone.
                        for op in ("set", "get"):
                            with ServerCpu(s.pid) as m:
                                row = benchmark(s.port, "-t", op, "-P", str(p), "-d", str(size), "-r",
                                                str(KEYSPACE[size]), n=n, c=c)
                            res[(s.name, op.upper())] = row[op.upper()] + (m.per(n),)
                    for op in ("SET", "GET"):
                        r, k = res[("redis", op)], res[("cairn", op)]
                        mbs = k[0] * size / 1e6
                        lines.append(table_row((label, c, p, op, f"{r[0]:,.0f}", f"{k[0]:,.0f}", f"{k[0] / r[0]:.2f}×",
                                                f"{r[3]:.1f}", f"{k[3]:.1f}", f"{k[3] / r[3]:.2f}×", f"{r[2]:.2f}",
                                                f"{k[2]:.2f}", f"{mbs:,.0f}")))
                    print(lines[-2] + "\n" + lines[-1], flush=True)
    return lines


def exists_batch(servers, quick):
    keys = [f"meta-llama/Llama-3.1-8B-Instruct@1@0@{i:064x}@bfloat16metadata" for i in range(128)]
    lines = table_head(("server", "128-key EXISTS req/s", "p50 ms", "p99 ms"))
    for s in servers:
        pipe = "".join(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$2\r\nok\r\n" for k in keys[::2])
        subprocess.run(["redis-cli", "-p", str(s.port), "--pipe"], input=pipe, capture_output=True, text=True,
                       timeout=60)
        rows = benchmark(s.port, "EXISTS", *keys, n=5000 if quick else 20000, c=8)
        (rps, p50, p99), = rows.values()
        lines.append(table_row((s.name, f"{rps:,.0f}", f"{p50:.3f}", f"{p99:.3f}")))
        print(lines[-1], flush=True)
    return lines


def working_set(work, bin_path, quick):
    size = MIB
    keys = 2 * WORKING_SET_RAM // size
    lines = table_head(("server", "RAM limit", "GET req/s", "hit ratio", "note"))
    setups = [
        ("redis", lambda: start_redis(work, maxmemory=WORKING_SET_RAM), "maxmemory 1 GiB, allkeys-lru"),
        ("cairn", lambda: start_cairn(work, bin_path, "1GiB", "8GiB"), "RAM tier 1 GiB + disk tier"),
    ]
    for name, launch, note in setups:
        s = launch()
        try:
            # Fill: every key once, in order (2 GiB).
            fill_keys(s, keys, size)
            h0, m0 = s.info_stat("keyspace_hits"), s.info_stat("keyspace_misses")
            n = 1000 if quick else 4000
            rows = benchmark(s.port, "-t", "get", "-r", str(keys), n=n, c=8)
            h1, m1 = s.info_stat("keyspace_hits"), s.info_stat("keyspace_misses")
            rps = rows["GET"][0]
            ratio = (h1 - h0) / max(1, (h1 - h0) + (m1 - m0))
            lines.append(table_row((name, "1 GiB", f"{rps:,.0f}", f"{ratio:.1%}", note)))
            print(lines[-1], flush=True)
        finally:
            s.stop()
    return lines


def fill_keys(s, keys, size):
    """Writes key:000000000000 .. key:<keys-1> (redis-benchmark's key names) once each, in order."""
    import redis

    r = redis.Redis(port=s.port)
    value = os.urandom(size)
    for i in range(keys):
        r.set(f"key:{i:012d}", value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--skip-working-set", action="store_true")
    ap.add_argument("--only-working-set", action="store_true")
    ap.add_argument("--small-only", action="store_true",
                    help="only the 1 KiB and 4 KiB GET/SET rows (no large values, EXISTS or working set)")
    args = ap.parse_args()
    bin_path = cairn_binary()
    need_tools(("redis-server", "redis-benchmark", "redis-cli"),
               "run `cargo xtask deps`; apt: redis-server, redis-tools")
    work = pathlib.Path(tempfile.mkdtemp(prefix="cairn-kv-bench-"))
    out = [f"redis-benchmark {subprocess.run(['redis-benchmark', '--version'], capture_output=True, text=True).stdout.strip()}, "
           f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
           f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}", ""]
    try:
        if not args.only_working_set:
            servers = [start_redis(work), start_cairn(work, bin_path, "8GiB", "0")]
            try:
                out += ["### GET/SET throughput, p99 and CPU per request", ""]
                out += throughput(servers, args.quick, args.small_only) + [""]
                if not args.small_only:
                    out += ["### 128-key EXISTS (8 connections)", ""] + exists_batch(servers, args.quick) + [""]
            finally:
                for s in servers:
                    s.stop()
        if not (args.skip_working_set or args.small_only):
            out += ["### Working set twice the RAM limit (1 MiB values, 2 GiB of keys, random GETs, 8 connections)",
                    ""] + working_set(work, bin_path, args.quick) + [""]
    finally:
        clean_up(work, args.keep)
    out.append(f"Load average at the end: {os.getloadavg()[0]:.1f} (above ~2 on 2 CPUs: the machine was shared and "
               "the numbers are noisy).")
    text = "\n".join(out)
    if not args.only_working_set:
        (ROOT / "bench" / "kv_results.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
