#!/usr/bin/env python3
"""Fan-out benchmark: every node of an 8-node cluster reads the same cold object at the same moment,
with peer-to-peer fan-out (cairn's default) and without it (`cluster.fanout = false`: each chunk's
owner sends one copy per reader), in the same run, on loopback.

    CAIRN_BIN=target/x86_64-unknown-linux-gnu/release/cairn python3 bench/fanout_bench.py

Two objects (fresh clusters for each row, so every read is cold):
1. 64 MiB in 32 MiB chunks: fewer chunks than readers, so without fan-out each of the two owners
   sends seven copies of its chunk (3.5x the object).
2. 1 GiB in 8 MiB chunks: owners are already balanced; fan-out should cost nothing.

Then preloading: `cairn load` of a prefix of 64 objects of 16 MiB (1 GiB) into a fresh 8-node
cluster, against a plain parallel copy of the same prefix from the origin (`rclone copy
--transfers 16` of the origin folder to a scratch folder, `AWS_CA_BUNDLE` unset), and then a
read of every object of the prefix through one node (16 `curl` at a time): its time and the
origin bytes it cost (0 when the load put everything in the cluster).

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
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    MIB, ROOT, Cluster, cairn_binary, clean_up, curl_sha256sum, gen_file, log, mon_check, mon_mark, need_tools,
    private_copy, set_log_tag, table, total, wait_quiet, watch_machine,
)

set_log_tag("cluster-bench")

NODES = 8


def egress(m):
    return sum(v for k, v in m.items() if k.startswith("cairn_peer_egress_bytes_total"))


def herd(bin_path, tmp, name, origin_dir, key, size, digest, chunk, fanout):
    origins = [f'[[origin]]\nbucket = "bench"\nurl = "file://{origin_dir}"\nmetadata = "immutable"\nchunk_size = "{chunk}"\n']
    cluster = Cluster(bin_path, tmp, name, NODES, origins, extra_cluster=f"fanout = {str(fanout).lower()}\n")
    try:
        barrier = threading.Barrier(NODES)

        def read(node):
            barrier.wait()
            return curl_sha256sum(node.url(f"/bench/{key}"))

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
            "origin": total(m, "cairn_origin_bytes_total") / size,
            "handoffs": total(m, "cairn_p2p_handoffs_total"),
            "reselections": total(m, "cairn_p2p_reselections_total"),
        }
    finally:
        cluster.stop()


def load_rows(bin_path, tmp, origin_dir):
    """`cairn load` of a 1 GiB prefix against `rclone copy --transfers 16`, then a read of it."""
    prefix_dir = origin_dir / "pfx"
    prefix_dir.mkdir()
    digests = {}
    for i in range(64):
        digests[f"pfx/o{i:02d}"] = gen_file(prefix_dir / f"o{i:02d}", 16 * MIB, 5000 + i)
    size = 64 * 16 * MIB
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    copy_to = tmp / "rclone-copy"
    started = time.time()
    subprocess.run(["rclone", "copy", "--transfers", "16", str(prefix_dir), str(copy_to)], env=env, check=True,
                   capture_output=True)
    rclone_secs = time.time() - started
    origins = [f'[[origin]]\nbucket = "bench"\nurl = "file://{origin_dir}"\nmetadata = "immutable"\nchunk_size = "8MiB"\n']
    cluster = Cluster(bin_path, tmp, "load", NODES, origins)
    try:
        node = cluster.nodes[0]
        started = time.time()
        p = subprocess.run([bin_path, "load", "s3://bench/pfx/", "--admin", f"http://{node.ip}:{node.admin}"],
                           capture_output=True, text=True)
        load_secs = time.time() - started
        if p.returncode != 0:
            raise RuntimeError(f"cairn load failed: {p.stderr}")
        before = total(cluster.metrics(), "cairn_origin_bytes_total")
        reader = cluster.nodes[NODES - 1]
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda k: (k, curl_sha256sum(reader.url(f"/bench/{k}"))), sorted(digests)))
        read_secs = time.time() - started
        for k, (d, n, code) in got:
            if (d, n, code) != (digests[k], 16 * MIB, 200):
                raise RuntimeError(f"read of {k} after the load: status {code}, {n} bytes")
        after = total(cluster.metrics(), "cairn_origin_bytes_total")
        cluster.check_metrics()
    finally:
        cluster.stop()
    return {"size": size, "load_secs": load_secs, "rclone_secs": rclone_secs, "read_secs": read_secs,
            "read_origin": (after - before) / size, "load_origin": before / size}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "fanout_results.md"))
    ap.add_argument("--max-wait", type=float, default=1800,
                    help="seconds to wait for other work to finish before starting")
    args = ap.parse_args()
    bin_path = cairn_binary()
    need_tools(("curl",), "apt-get install -y curl")
    wait_quiet(args.max_wait, "the benchmark", quiet_for=10.0)
    _, monitor = watch_machine()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-fanout-bench-"))
    rows = []
    try:
        bin_path = private_copy(bin_path, tmp)
        origin = tmp / "origin"
        origin.mkdir()
        cases = [("64 MiB in 32 MiB chunks", "small.bin", 64 * MIB, "32MiB"),
                 ("1 GiB in 8 MiB chunks", "big.bin", 1024 * MIB, "8MiB")]
        for label, key, size, chunk in cases:
            digest = gen_file(origin / key, size, size)
            for fanout in (False, True):
                name = f"{key}-{'p2p' if fanout else 'owner'}"
                mark = mon_mark()
                r = herd(bin_path, tmp, name, origin, key, size, digest, chunk, fanout)
                mon_check(mark, name)
                r.update(label=label, scheme="fan-out" if fanout else "owner only")
                rows.append(r)
                log(f"{label} {r['scheme']}: {r}")
        mark = mon_mark()
        load = load_rows(bin_path, tmp, origin)
        mon_check(mark, "load")
        log(f"load: {load}")
    finally:
        clean_up(tmp)
        monitor.stop()

    lines = [
        f"8 nodes on loopback, every node reads the same cold object at once ({platform.node()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}).",
        "",
        table([(r["label"], r["scheme"], f"{r['seconds']:.2f} s", f"{r['max_egress']:.2f}x", f"{r['mean_egress']:.2f}x",
                f"{r['origin']:.2f}x", f"{r['handoffs']:.0f}", f"{r['reselections']:.0f}") for r in rows],
              ("object", "scheme", "all 8 done", "max egress / object", "mean egress / object",
               "origin bytes / object", "hand-offs", "reselections")),
    ]
    gb = load["size"] / 1e9
    lines += [
        "",
        "Preloading 64 objects of 16 MiB (1 GiB) into the 8 nodes, against a plain parallel copy of the prefix from the origin:",
        "",
        table([
            ("`cairn load s3://bench/pfx/`", f"{load['load_secs']:.2f} s", f"{gb / load['load_secs']:.2f}",
             f"{load['load_origin']:.2f}x"),
            ("`rclone copy --transfers 16` (reference)", f"{load['rclone_secs']:.2f} s",
             f"{gb / load['rclone_secs']:.2f}", "1.00x"),
            ("ratio cairn / rclone (throughput)", "", f"{load['rclone_secs'] / load['load_secs']:.2f}x", ""),
            ("then reading the prefix through one node", f"{load['read_secs']:.2f} s",
             f"{gb / load['read_secs']:.2f}", f"{load['read_origin']:.2f}x"),
        ], ("", "time", "GB/s", "origin bytes / prefix")),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
