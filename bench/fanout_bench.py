#!/usr/bin/env python3
"""Fan-out benchmark: every node of an 8-node cluster reads the same cold object at the same moment,
with peer-to-peer fan-out (cairn's default) and without it (`cluster.fanout = false`: each chunk's
owner sends one copy per reader), in the same run, on loopback.

    CAIRN_BIN=target/x86_64-unknown-linux-gnu/release/cairn python3 bench/fanout_bench.py

Two objects (fresh clusters for each row, so every read is cold):
1. 64 MiB in 32 MiB chunks: fewer chunks than readers, so without fan-out each of the two owners
   sends seven copies of its chunk (3.5x the object).
2. 1 GiB in 8 MiB chunks: owners are already balanced; fan-out should cost nothing.

Each row reports the time until the last of the 8 readers (`curl`, streamed through sha256sum,
every digest checked) has the whole object, the largest and the mean of
`cairn_peer_egress_bytes_total` per node as a multiple of the object, `cairn_origin_bytes_total`
summed over the nodes as a multiple of the object (target 1.00x), and the hand-offs and holder
reselections counted by the nodes. Targets: largest egress <= 2x the object with fan-out. The
Markdown table is printed and written to bench/fanout_results.md.
"""

import argparse
import concurrent.futures
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cluster_bench as cb  # noqa: E402

MIB = cb.MIB
NODES = 8


def egress(m):
    return sum(v for k, v in m.items() if k.startswith("cairn_peer_egress_bytes_total"))


def herd(bin_path, tmp, name, origin_dir, key, size, digest, chunk, fanout):
    origins = [f'[[origin]]\nbucket = "b"\nurl = "file://{origin_dir}"\nmetadata = "immutable"\nchunk_size = "{chunk}"\n']
    cluster = cb.Cluster(bin_path, tmp, name, NODES, origins, extra_cluster=f"fanout = {str(fanout).lower()}\n")
    try:
        barrier = threading.Barrier(NODES)

        def read(node):
            barrier.wait()
            return cb.curl_sha256(node.url(f"/b/{key}"))

        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(NODES) as pool:
            results = list(pool.map(read, cluster.nodes))
        took = time.time() - started
        for node, (got, n, code) in zip(cluster.nodes, results):
            if (got, n, code) != (digest, size, 200):
                raise RuntimeError(f"{name}/{node.id}: status {code}, {n} bytes, sha256 {got}")
        m = cluster.metrics()
        cluster.check_metrics()
        out = [egress(x) / size for x in m]
        return {
            "seconds": took,
            "max_egress": max(out),
            "mean_egress": sum(out) / len(out),
            "origin": cb.total(m, "cairn_origin_bytes_total") / size,
            "handoffs": cb.total(m, "cairn_p2p_handoffs_total"),
            "reselections": cb.total(m, "cairn_p2p_reselections_total"),
        }
    finally:
        cluster.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(cb.ROOT / "bench" / "fanout_results.md"))
    ap.add_argument("--max-wait", type=float, default=1800,
                    help="seconds to wait for other work to finish before starting")
    args = ap.parse_args()
    bin_path = str(pathlib.Path(os.environ.get("CAIRN_BIN", cb.ROOT / "target" / "release" / "cairn")).resolve())
    if shutil.which("curl") is None:
        sys.exit("curl not found")
    cb.wait_quiet(args.max_wait, "the benchmark", quiet_for=10.0)
    cb.FOREIGN = cb.ForeignLoad()
    cb.MONITOR = cb.Monitor()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-fanout-bench-"))
    rows = []
    try:
        shutil.copy2(bin_path, tmp / "cairn")
        bin_path = str(tmp / "cairn")
        origin = tmp / "origin"
        origin.mkdir()
        cases = [("64 MiB in 32 MiB chunks", "small.bin", 64 * MIB, "32MiB"),
                 ("1 GiB in 8 MiB chunks", "big.bin", 1024 * MIB, "8MiB")]
        for label, key, size, chunk in cases:
            digest = cb.gen_file(origin / key, size, size)
            for fanout in (False, True):
                name = f"{key}-{'p2p' if fanout else 'owner'}"
                mark = cb.mon_mark()
                r = herd(bin_path, tmp, name, origin, key, size, digest, chunk, fanout)
                cb.mon_check(mark, name)
                r.update(label=label, scheme="fan-out" if fanout else "owner only")
                rows.append(r)
                cb.log(f"{label} {r['scheme']}: {r}")
    finally:
        cb.stop_all()
        cb.MONITOR.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"8 nodes on loopback, every node reads the same cold object at once ({platform.node()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}).",
        "",
        "| object | scheme | all 8 done | max egress / object | mean egress / object | origin bytes / object | hand-offs | reselections |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['scheme']} | {r['seconds']:.2f} s | {r['max_egress']:.2f}x | {r['mean_egress']:.2f}x "
            f"| {r['origin']:.2f}x | {r['handoffs']:.0f} | {r['reselections']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
