#!/usr/bin/env python3
"""cairn checkpoint-write benchmark: fan-out writes acknowledged by cairn at `local` and
`replicated` durability, against the same shards written straight to the origin (Azurite), the
disk's own sequential write speed, and `rclone mount --vfs-cache-mode writes`, all in one run.

    CAIRN_BIN=target/release/cairn python3 bench/write_bench.py [--shard-mib 256] [--keep]

Needs Azurite (`cargo xtask deps` puts it in .test-deps), rclone, FUSE (`fuse3`), curl, dd, and the
azure-storage-blob Python package; runs as root (rclone mount). `cargo xtask bench` installs them.

Everything runs on loopback, in one temporary directory:

1. Disk: `dd if=/dev/zero bs=8M oflag=direct` of 16 x shard bytes into the temporary directory:
   the disk's sequential write speed without the page cache.
2. Direct: 16 `rclone copyto` processes (one per rank) write their shard to Azurite at once; the
   row's time is until the last one returns.
3. cairn local / cairn replicated: a 4-node cairn cluster (one map file, Azurite as the origin, 4
   ranks per node) takes 16 `curl -T` PUTs at once, each with `x-cairn-durability`; the row's time
   is until the last acknowledgement. Then `POST /v1/sync` on one node waits until the whole
   checkpoint is in Azurite: "in origin" is the time from the start to then.
4. rclone mount: `rclone mount --vfs-cache-mode writes` of the Azurite container; 16 `cp` at once
   into the mount; the time is until the last `cp` returns (rclone acknowledges at close, from its
   local cache). "In origin" is until every blob is in Azurite at full size.

Ratios: "vs direct" is the direct write's time over the row's time (how many times sooner the
writers are back to training); "vs disk" is the row's ack throughput over dd's. Every shard read
back from the origin at the end is checked against its sha256. "cairn CPU ns per byte acked" is the
CPU time of the 4 node processes from the start of a round to its last acknowledgement, over the
bytes written: the stable figure beside the throughput, which moves with the machine's load. The
table is printed and written to bench/write_results.md.
"""

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    ANOMALIES, AZURITE_BIN, MIB, NOTES, ROOT, Azurite, Cluster, anomaly, cairn_binary, clean_up, log, need_tools,
    ns_per_byte, set_log_tag, start, stop, table, tree_cpu_seconds, unmount, wait_mounted, wait_quiet,
)

set_log_tag("cluster-bench")

RANKS = 16
NODES = 4
CONTAINER = "ckpt"


def make_shards(tmp, shard_bytes):
    """16 distinct shard files; returns [(path, sha256)]."""
    out = []
    block = os.urandom(4 * MIB)
    for r in range(RANKS):
        p = tmp / f"shard-{r:02}.bin"
        h = hashlib.sha256()
        with open(p, "wb") as f:
            done = 0
            while done < shard_bytes:
                b = (r.to_bytes(2, "little") + block)[: min(4 * MIB, shard_bytes - done)]
                f.write(b)
                h.update(b)
                done += len(b)
        out.append((p, h.hexdigest()))
    return out


def dd_direct(tmp, total):
    p = tmp / "dd.bin"
    t = time.time()
    r = subprocess.run(["dd", "if=/dev/zero", f"of={p}", "bs=8M", f"count={total // (8 * MIB)}", "oflag=direct"],
                       capture_output=True, text=True)
    secs = time.time() - t
    p.unlink(missing_ok=True)
    if r.returncode != 0:
        sys.exit(f"dd failed: {r.stderr}")
    return secs


def rclone_remote(az):
    """rclone's Azure backend (1.60) reaches a non-default Azurite port only through a SAS URL."""
    return f":azureblob,sas_url='{az.container_sas_url(CONTAINER)}':{CONTAINER}/"


def parallel(cmds, env=None):
    """Starts every command at once; returns seconds until the last one returned."""
    t = time.time()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for c in cmds]
    for p, c in zip(procs, cmds):
        out, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"{' '.join(c)[:200]} failed: {err.decode()[-1500:]} {out.decode()[-500:]}")
    return time.time() - t


def check_origin(container, prefix, shards):
    for r, (_, digest) in enumerate(shards):
        data = container.download_blob(f"{prefix}shard-{r:02}.bin").readall()
        if hashlib.sha256(data).hexdigest() != digest:
            anomaly(f"{prefix}shard-{r:02}.bin in the origin does not match what was written")


def cairn_round(cluster, durability, prefix, shards, total):
    nodes = cluster.nodes
    cmds = []
    for r, (path, _) in enumerate(shards):
        n = nodes[r % NODES]
        cmds.append(["curl", "-sS", "-f", "-T", str(path), "-H", f"x-cairn-durability: {durability}",
                     n.url(f"/{CONTAINER}/{prefix}shard-{r:02}.bin")])
    pids = [n.proc.pid for n in nodes]
    cpu0, t0 = tree_cpu_seconds(pids), time.time()
    ack = parallel(cmds)
    cpu = tree_cpu_seconds(pids) - cpu0
    req = urllib.request.Request(
        f"http://{nodes[0].ip}:{nodes[0].admin}/v1/sync?bucket={CONTAINER}&prefix={prefix}&timeout=30m", method="POST")
    with urllib.request.urlopen(req, timeout=3600) as resp:
        if resp.status != 200:
            anomaly(f"sync of {prefix} answered {resp.status}")
    in_origin = time.time() - t0
    return ack, in_origin, ns_per_byte(cpu, total)


def rclone_mount_round(tmp, az, prefix, shards, container):
    mnt = tmp / "rclone-mnt"
    cache = tmp / "rclone-cache"
    mnt.mkdir()
    cache.mkdir()
    conf = tmp / "rclone.conf"
    conf.touch()
    proc = start(["rclone", "mount", rclone_remote(az), str(mnt), "--vfs-cache-mode", "writes",
                  "--cache-dir", str(cache), "--config", str(conf), "--transfers", "16"],
                 tmp / "rclone-mount.log")
    wait_mounted(mnt, proc, tmp / "rclone-mount.log")
    (mnt / prefix.rstrip("/")).mkdir(exist_ok=True)
    cmds = [["cp", str(p), str(mnt / f"{prefix}shard-{r:02}.bin")] for r, (p, _) in enumerate(shards)]
    t0 = time.time()
    ack = parallel(cmds)
    want = shards[0][0].stat().st_size
    while True:
        sizes = {b.name: b.size for b in container.list_blobs(name_starts_with=prefix)}
        if len(sizes) == RANKS and all(s == want for s in sizes.values()):
            break
        if time.time() - t0 > 3600:
            anomaly("rclone mount did not upload every shard within an hour")
            break
        time.sleep(0.2)
    in_origin = time.time() - t0
    unmount(mnt)
    stop(proc)
    return ack, in_origin


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-mib", type=int, default=256, help="bytes per rank (the issue asks 256 MiB to 1 GiB)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "write_results.md"))
    ap.add_argument("--max-wait", type=float, default=600)
    args = ap.parse_args()
    bin_path = cairn_binary()
    need_tools(("rclone", "curl", "dd", "fusermount"), "apt-get install -y rclone curl fuse3")
    if not AZURITE_BIN.exists():
        sys.exit(f"{AZURITE_BIN} is missing: run `cargo xtask deps`")
    shard = args.shard_mib * MIB
    total = shard * RANKS
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-cluster-bench-write-"))
    log(f"working in {tmp}; {RANKS} ranks x {args.shard_mib} MiB over {NODES} nodes")
    rows = []
    try:
        wait_quiet(args.max_wait, "the write benchmark", quiet_for=10.0)
        shards = make_shards(tmp, shard)
        az = Azurite(tmp)
        container = az.service.get_container_client(CONTAINER)
        container.create_container()
        os.environ["AZURITE_BLOB_STORAGE_URL"] = f"http://127.0.0.1:{az.port}"

        dd_secs = dd_direct(tmp, total)
        dd_mbs = total / dd_secs / 1e6
        log(f"dd O_DIRECT: {dd_mbs:.0f} MB/s")

        conf = tmp / "rclone.conf"
        conf.touch()
        cmds = [["rclone", "copyto", "--config", str(conf), "--azureblob-chunk-size", "8M", str(p),
                 f"{rclone_remote(az)}direct/shard-{r:02}.bin"] for r, (p, _) in enumerate(shards)]
        direct = parallel(cmds)
        check_origin(container, "direct/", shards)
        log(f"direct to Azurite: {direct:.1f} s")

        origin_toml = (f'[[origin]]\nbucket = "{CONTAINER}"\nurl = "az://{CONTAINER}"\n'
                       'options = { azure_storage_use_emulator = "true" }\n')
        cluster = Cluster(bin_path, tmp, "cluster", NODES, [origin_toml])
        results = {}
        for durability in ("local", "replicated"):
            wait_quiet(args.max_wait, f"cairn {durability}", quiet_for=5.0)
            ack, in_origin, cpu = cairn_round(cluster, durability, f"{durability}/", shards, total)
            check_origin(container, f"{durability}/", shards)
            results[durability] = (ack, in_origin, cpu)
            log(f"cairn {durability}: ack {ack:.1f} s, in origin {in_origin:.1f} s, {cpu:.2f} ns of CPU per byte")
        cluster.check_metrics()
        cluster.stop()

        wait_quiet(args.max_wait, "rclone mount", quiet_for=5.0)
        rc_ack, rc_origin = rclone_mount_round(tmp, az, "rclone/", shards, container)
        check_origin(container, "rclone/", shards)
        log(f"rclone mount: ack {rc_ack:.1f} s, in origin {rc_origin:.1f} s")

        def row(name, ack, in_origin, cpu=None):
            mbs = total / ack / 1e6
            rows.append((name, f"{ack:.2f}", f"{mbs:.0f}", f"{direct / ack:.2f}x", f"{mbs / dd_mbs:.2f}x",
                         f"{in_origin:.1f}" if in_origin else "-", f"{cpu:.2f}" if cpu is not None else "-"))

        row("direct to Azurite (16 x rclone copyto)", direct, direct)
        row("cairn, durability local", *results["local"])
        row("cairn, durability replicated (R=2)", *results["replicated"])
        row("rclone mount --vfs-cache-mode writes", rc_ack, rc_origin)
        rows.append(("disk: dd bs=8M oflag=direct", f"{dd_secs:.2f}", f"{dd_mbs:.0f}", "-", "1.00x", "-", "-"))
        (local, _, _), (replicated, _, _) = results["local"], results["replicated"]
        targets = [
            ("ack at `local` / the disk's sequential write", total / local / 1e6 / dd_mbs, 0.8, True),
            ("ack time `replicated` / `local`", replicated / local, 1.3, False),
        ]
    finally:
        clean_up(tmp, args.keep)
    head = ("writer", "time to ack (s)", "ack MB/s", "vs direct", "vs disk", "in origin after (s)",
            "cairn CPU ns per byte acked")
    text = (f"{RANKS} ranks x {args.shard_mib} MiB ({total / 2**30:.1f} GiB) over {NODES} nodes, "
            f"Azurite as the origin, {os.cpu_count()} CPUs.\n\n" + table(rows, head) + "\n\n")
    for what, got, target, at_least in targets:
        met = got >= target if at_least else got <= target
        text += f"- {what} = {got:.2f}x (target {'>=' if at_least else '<='} {target}x: {'met' if met else 'missed'})\n"
    if ANOMALIES:
        text += "\nAnomalies:\n" + "\n".join(f"- {a}" for a in ANOMALIES) + "\n"
    if NOTES:
        text += "\nNotes:\n" + "\n".join(f"- {n}" for n in NOTES) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
