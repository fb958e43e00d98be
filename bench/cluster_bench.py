#!/usr/bin/env python3
"""cairn cluster benchmark: cairn clusters and their references measured in the same run, on loopback.

    CAIRN_BIN=target/release/cairn python3 bench/cluster_bench.py [--quick] [--keep]

Needs nginx, wrk, curl, sha256sum, rclone and FUSE (`apt-get install -y nginx-light wrk rclone fuse3`)
and the release binary (`cargo build --release -p cairn`). Runs as root (rclone mount).

Everything is started here, on free ports inside one temporary directory, and stopped again at the
end: cairn nodes on 127.0.0.11, 127.0.0.12, ... (one loopback address per node, each with its S3,
admin and peer port), nginx on 127.0.0.1 and rclone mounts. Traffic goes to 127.0.0.x only.
Measurements:

1. Origin offload. A cluster of N = 2 and then 4 fresh cairn nodes (one map file, replicas = 1,
   a shared local-folder origin, anonymous access) gets 4 `curl` readers per node, all started at
   once, of the same cold object (1 GiB; 256 MiB with --quick). The row reports the increase of
   `cairn_origin_bytes_total` summed over the nodes / object size (target 1.00×). The reference is
   N per-node caches that do not cooperate: N independent `rclone mount` processes of the same
   origin folder (`--vfs-cache-mode full`, each with its own `--cache-dir`, `--read-only`), with 4
   `sha256sum` readers per mount, all started at once. Its origin bytes are the bytes rclone's VFS
   downloader read from the origin, from each mount's `core/stats` (remote control API) `bytes`,
   summed; the allocated size of the files in each cache dir is logged as a cross-check. Every
   reader's sha256 is checked, for cairn and for rclone.
2. Aggregate hit throughput. Clusters of 1, 2 and 4 nodes serve 16 objects of 16 MiB (so every node
   owns some chunks), warmed and checked first on every node. One `wrk -t1 -c4` per node runs in
   parallel, each cycling through the 16 paths; the row reports the summed GB/s. The reference is
   nginx (worker_processes 2, sendfile on) serving the same files from the page cache, loaded by
   the same number of `wrk -t1 -c4` processes, all against the one nginx.

Before starting, and again before each measurement, the script waits until for some seconds no
other work has run on the machine (cargo, cairn-sim, pytest, cairn nodes it did not start) and the
CPUs were mostly idle; a background monitor flags any measurement that other work overlapped
anyway. The Markdown table is printed and written to bench/cluster_results.md.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    MIB, NOTES, ROOT, Cluster, Nginx, anomalies_section, anomaly, busy_at_start, cairn_binary, clean_up,
    curl_sha256sum, delta, file_sha256, finish, free_port, gen_file, http_get, load_note, log, machine, mon_check,
    mon_mark, need_tools, private_copy, revision, set_log_tag, start, stop, table, tree_cpu_seconds, unmount,
    wait_mounted, wait_port, wait_quiet, waited_total, watch_machine, wrk_parallel, wrk_script,
)

set_log_tag("cluster-bench")

HIT_OBJECT = 16 * MIB
HIT_OBJECTS = 16
READERS_PER_NODE = 4
CHUNK = 8 * MIB  # cairn's default chunk size, set explicitly so the chunk counts below hold


# ---------------------------------------------------------------------------------------------
# The reference of the origin-offload rows


class RcloneMount:
    """`rclone mount` of the origin folder with a full VFS cache of its own: one per-node cache
    that does not cooperate with the others."""

    def __init__(self, tmp, name, origin_dir):
        self.dir = tmp / name
        self.mnt = self.dir / "mnt"
        self.cache = self.dir / "cache"
        self.mnt.mkdir(parents=True)
        self.cache.mkdir()
        self.rc_port = free_port()
        conf = tmp / "rclone.conf"
        conf.touch()
        self.proc = start(
            [
                "rclone", "mount", str(origin_dir), str(self.mnt),
                "--read-only",
                "--vfs-cache-mode", "full",
                "--cache-dir", str(self.cache),
                "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth",
                "--config", str(conf),
            ],
            self.dir / "rclone.log",
        )
        wait_mounted(self.mnt, self.proc, self.dir / "rclone.log")
        wait_port(self.rc_port, self.proc)

    def stats(self):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.rc_port}/core/stats", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def cached_bytes(self):
        """Allocated bytes of the data files in the VFS cache (sparse files: what was downloaded)."""
        n = 0
        for p in (self.cache / "vfs").rglob("*"):
            if p.is_file():
                n += p.stat().st_blocks * 512
        return n

    def stop(self):
        unmount(self.mnt)
        stop(self.proc)


# ---------------------------------------------------------------------------------------------
# Measurements


def cold_cairn(cluster, big_name, big_sha, size):
    """4 readers per node of the same cold object; origin bytes summed over the nodes."""
    n = len(cluster.nodes)
    before = cluster.metrics()
    urls = [node.url(f"/big/{big_name}") for node in cluster.nodes for _ in range(READERS_PER_NODE)]
    mark = mon_mark()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(curl_sha256sum, urls))
    wall = time.perf_counter() - t0
    mon_check(mark, f"the cairn cold readers on {n} nodes")
    after = cluster.metrics()
    origin_bytes = sum(delta(after, before, "cairn_origin_bytes_total"))
    ranges = delta(after, before, 'cairn_origin_requests_total{op="get_range"}')
    served = delta(after, before, "cairn_peer_served_total")
    peer_bytes = delta(after, before, "cairn_peer_bytes_total")
    failovers = sum(delta(after, before, "cairn_peer_failovers_total"))
    ratio = origin_bytes / size
    bad = [(u, r) for u, r in zip(urls, results) if r != (big_sha, size, 200)]
    log(
        f"cairn {n} nodes × {READERS_PER_NODE} cold readers of {size // MIB} MiB: origin bytes {origin_bytes:.0f} "
        f"= {ratio:.3f}× object, {wall:.1f} s wall ({len(urls) * size / wall / 1e6:.0f} MB/s served in total), "
        f"{len(bad)} bad downloads; origin range GETs per node {[int(x) for x in ranges]} "
        f"(chunks: {size // CHUNK}), peer requests served per node {[int(x) for x in served]}, "
        f"peer bytes received per node {[round(x / MIB) for x in peer_bytes]} MiB, failovers {failovers:.0f}"
    )
    if bad:
        anomaly(f"cairn {n} nodes cold readers: {len(bad)} of {len(urls)} downloads wrong, first {bad[0]}")
    if ratio > 1.0 + 1e-9:
        anomaly(f"cairn {n} nodes cold readers: origin bytes {ratio:.3f}× the object size (> 1.00×)")
    if sum(ranges) != size // CHUNK:
        anomaly(f"cairn {n} nodes cold readers: {sum(ranges):.0f} origin range GETs for {size // CHUNK} chunks")
    if failovers:
        anomaly(f"cairn {n} nodes cold readers: {failovers:.0f} peer failovers with no node down")
    cluster.check_metrics()
    return {"ratio": ratio, "origin_bytes": origin_bytes, "wall_s": wall, "bad": len(bad),
            "ranges_per_node": ranges, "failovers": failovers}


def cold_rclone(tmp, n, big_path, big_sha, size):
    """N independent rclone mounts with a full VFS cache each, 4 readers per mount."""
    mounts = []
    try:
        for k in range(n):
            mounts.append(RcloneMount(tmp, f"rclone-{n}x-{k}", big_path.parent))
        files = [m.mnt / big_path.name for m in mounts for _ in range(READERS_PER_NODE)]
        mark = mon_mark()
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
            results = list(pool.map(file_sha256, files))
        wall = time.perf_counter() - t0
        mon_check(mark, f"the rclone cold readers on {n} mounts")
        stats = [m.stats() for m in mounts]
        per_mount = [s.get("bytes", 0) for s in stats]
        cached = [m.cached_bytes() for m in mounts]
        errors = sum(s.get("errors", 0) for s in stats)
    finally:
        for m in mounts:
            m.stop()
    origin_bytes = sum(per_mount)
    ratio = origin_bytes / size
    bad = [(str(f), r) for f, r in zip(files, results) if r != (big_sha, size, 0)]
    log(
        f"rclone {n} mounts × {READERS_PER_NODE} cold readers of {size // MIB} MiB: origin bytes (core/stats) "
        f"{origin_bytes:.0f} = {ratio:.3f}× object, per mount {[round(b / size, 3) for b in per_mount]}×; "
        f"allocated in the cache dirs {[round(c / size, 3) for c in cached]}×; {wall:.1f} s wall "
        f"({len(files) * size / wall / 1e6:.0f} MB/s read in total), {len(bad)} bad reads, {errors} rclone errors"
    )
    if bad or errors:
        raise RuntimeError(f"reference (rclone) read wrong bytes or failed: {bad[:2]}, {errors} errors")
    return {"ratio": ratio, "origin_bytes": origin_bytes, "wall_s": wall, "per_mount": per_mount,
            "cached": cached}


def warm_hits(cluster, hot_dir, names):
    """Every object through every node once, compared with the file; reports which nodes fetched
    which chunks from the origin (the owners)."""
    before = cluster.metrics()
    for node in cluster.nodes:
        for name in names:
            want = (hot_dir / name).read_bytes()
            status, body = http_get(node.url(f"/hot/{name}"))
            if status != 200 or body != want:
                anomaly(f"{cluster.name}/{node.id} GET /hot/{name}: status {status}, {len(body)} bytes, "
                        f"equal={body == want}")
    after = cluster.metrics()
    fetched = [int(x) for x in delta(after, before, 'cairn_origin_requests_total{op="get_range"}')]
    chunks = len(names) * (HIT_OBJECT // CHUNK)
    log(f"{cluster.name}: warmed {len(names)} × 16 MiB on {len(cluster.nodes)} node(s); chunks fetched from "
        f"the origin per node {fetched} (of {chunks})")
    if sum(fetched) != chunks:
        anomaly(f"{cluster.name}: {sum(fetched)} origin range GETs while warming {chunks} chunks")
    if len(cluster.nodes) > 1 and min(fetched) == 0:
        NOTES.append(f"{cluster.name}: a node owns none of the {chunks} hot chunks ({fetched})")
    return fetched


def hit_throughput(cluster, nginx, script, seconds, warmup):
    n = len(cluster.nodes)
    res = {}
    for name in ("nginx", "cairn"):
        urls = [nginx.url()] * n if name == "nginx" else [node.url() for node in cluster.nodes]
        pids = [nginx.proc.pid] if name == "nginx" else [node.proc.pid for node in cluster.nodes]
        wait_quiet(600, f"hit throughput {name} {n}")
        wrk_parallel(urls, script, warmup)  # unmeasured warm-up
        m0 = cluster.metrics()
        cpu0 = tree_cpu_seconds(pids)
        mark = mon_mark()
        rs = wrk_parallel(urls, script, seconds)
        mon_check(mark, f"the {name} hit run with {n} wrk")
        cpu = tree_cpu_seconds(pids) - cpu0
        m1 = cluster.metrics()
        gbps = sum(r["gbps"] for r in rs)
        gbytes = sum(r["bytes"] for r in rs) / 1e9
        errors = sum(r["errors"] for r in rs)
        log(
            f"hit GET 16 MiB, {n} × wrk -t1 -c4 against {name}: {gbps:.2f} GB/s "
            f"({', '.join(format(r['gbps'], '.2f') for r in rs)}), {sum(r['requests'] for r in rs)} requests, "
            f"{errors} errors, server CPU {cpu:.1f} s = {cpu / max(gbytes, 1e-9):.2f} s/GB"
        )
        if errors:
            (anomaly if name == "cairn" else log)(f"wrk hit {n} × {name}: errors {rs}")
        if name == "cairn":
            peer = sum(delta(m1, m0, "cairn_peer_requests_total"))
            origin = sum(delta(m1, m0, "cairn_origin_bytes_total"))
            log(f"  during the cairn run: {peer:.0f} peer requests, {origin:.0f} origin bytes")
            if origin:
                anomaly(f"{cluster.name}: {origin:.0f} origin bytes read during the hit run (all warm)")
            if peer:
                NOTES.append(f"{cluster.name}: {peer:.0f} peer requests during the hit run (near-cache misses)")
        res[name] = {"gbps": gbps, "cpu_s_per_gb": cpu / max(gbytes, 1e-9), "runs": rs}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB, 3 s wrk runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cluster_results.md"))
    ap.add_argument("--max-wait", type=float, default=1800,
                    help="seconds to wait for other work (cargo, cairn-sim, pytest, other cairn nodes) to finish before starting")
    ap.add_argument("--peer-timeout", default=None,
                    help="cluster.peer_timeout of the nodes (default: not set, cairn's own default)")
    args = ap.parse_args()
    peer_timeout = args.peer_timeout

    need_tools(("nginx", "wrk", "curl", "sha256sum", "rclone", "fusermount"),
               "apt-get install -y nginx-light wrk curl rclone fuse3")
    if not os.path.exists("/dev/fuse"):
        sys.exit("/dev/fuse is missing: rclone mount (the reference of the origin-offload rows) needs FUSE")
    bin_path = cairn_binary()

    waited = wait_quiet(args.max_wait, "the benchmark", quiet_for=20.0)
    busy_before = busy_at_start()
    bin_mtime = os.stat(bin_path).st_mtime
    big = (256 if args.quick else 1024) * MIB
    seconds = 3 if args.quick else 10
    warmup = 1 if args.quick else 2
    started = time.time()
    foreign, monitor = watch_machine()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-cluster-bench-"))
    offload, hits = {}, {}
    try:
        bin_path = private_copy(bin_path, tmp)
        hot_dir = tmp / "origin-hot"
        hot_dir.mkdir()
        names = [f"obj{i}" for i in range(HIT_OBJECTS)]
        for i, name in enumerate(names):
            gen_file(hot_dir / name, HIT_OBJECT, i)
        big_dir = tmp / "origin-big"
        big_dir.mkdir()
        big_path = big_dir / "big.bin"
        log(f"generating {big // MIB} MiB object")
        big_sha = gen_file(big_path, big, 1000)
        origins = [
            f'[[origin]]\nbucket = "big"\nurl = "file://{big_dir}"\nmetadata = "immutable"\nchunk_size = "8MiB"\n',
            f'[[origin]]\nbucket = "hot"\nurl = "file://{hot_dir}"\nmetadata = "immutable"\nchunk_size = "8MiB"\n',
        ]
        script = wrk_script(tmp / "hits.lua", [f"/hot/{n}" for n in names], random_start=True)
        nginx = Nginx(tmp, hot_dir, location="hot")
        for name in names:
            status, body = http_get(nginx.url(f"/hot/{name}"))
            if status != 200 or body != (hot_dir / name).read_bytes():
                raise RuntimeError(f"nginx GET /hot/{name}: status {status}, {len(body)} bytes")

        for n in (1, 2, 4):
            cluster = Cluster(bin_path, tmp, f"cluster{n}", n, origins, peer_timeout=peer_timeout)
            try:
                if n > 1:
                    wait_quiet(600, f"cold readers on {n} nodes")
                    offload[n] = {"cairn": cold_cairn(cluster, big_path.name, big_sha, big)}
                warm_hits(cluster, hot_dir, names)
                hits[n] = hit_throughput(cluster, nginx, script, seconds, warmup)
                cluster.check_metrics()
            finally:
                cluster.stop()
        for n in (2, 4):
            wait_quiet(600, f"rclone reference with {n} mounts")
            offload[n]["rclone"] = cold_rclone(tmp, n, big_path, big_sha, big)
    finally:
        monitor.stop()
        clean_up(tmp, args.keep)

    rows = []
    for n in (2, 4):
        c, r = offload[n]["cairn"]["ratio"], offload[n]["rclone"]["ratio"]
        rows.append(
            (
                f"Origin offload: {n} nodes × {READERS_PER_NODE} concurrent cold readers of {big // MIB} MiB "
                "(local-folder origin), origin bytes / object size",
                f"{c:.2f}×",
                f"{r:.2f}× ({n} × rclone mount, vfs-cache-mode full)",
                f"{c / r:.2f}×",
                "cairn = 1.00×",
                "met" if abs(c - 1.0) < 0.005 else "not met",
            )
        )
    for n in (1, 2, 4):
        c, x = hits[n]["cairn"]["gbps"], hits[n]["nginx"]["gbps"]
        rows.append(
            (
                f"Aggregate hit GET 16 MiB, {n} node{'s' if n > 1 else ''} ({n} × wrk -t1 -c4)",
                f"{c:.2f} GB/s",
                f"{x:.2f} GB/s (one nginx, {n} × wrk -t1 -c4)",
                f"{c / x:.2f}×",
                "(reported)",
                "—",
            )
        )

    wall = time.time() - started
    md = table(rows)
    rev = revision()
    all_waits = waited_total()
    header = (
        f"cairn cluster benchmark{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {rev}, binary built {time.strftime('%Y-%m-%d %H:%M', time.localtime(bin_mtime))}, "
        f"{machine()}, "
        f"wrk runs {seconds} s, peer_timeout {peer_timeout or 'cairn default'}, wall time {wall - (all_waits - waited):.0f} s "
        f"(not counting {all_waits:.0f} s spent waiting for other work to finish), "
        f"{load_note(busy_before, foreign.cores(), waits_left_out=True)}"
    )
    details = []
    for n in (2, 4):
        c, r = offload[n]["cairn"], offload[n]["rclone"]
        details.append(
            f"- {n} nodes, cold readers: cairn {c['origin_bytes']:.0f} origin bytes, range GETs per node "
            f"{[int(x) for x in c['ranges_per_node']]}, {c['wall_s']:.1f} s for all readers; rclone "
            f"{r['origin_bytes']:.0f} origin bytes (per mount {[int(b) for b in r['per_mount']]}), "
            f"{r['wall_s']:.1f} s for all readers"
        )
    for n in (1, 2, 4):
        h = hits[n]
        details.append(
            f"- {n} node(s), hits: per wrk process cairn "
            f"{', '.join(format(r['gbps'], '.2f') for r in h['cairn']['runs'])} GB/s, nginx "
            f"{', '.join(format(r['gbps'], '.2f') for r in h['nginx']['runs'])} GB/s"
        )
    other = "\n".join(f"- {a}" for a in NOTES) or "- none"
    text = (f"{header}\n\n{md}\n\nDetails:\n" + "\n".join(details)
            + f"\n\n{anomalies_section()}\nOther notes:\n{other}\n")
    return finish(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
