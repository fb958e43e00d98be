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
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 1 << 20
HIT_OBJECT = 16 * MIB
HIT_OBJECTS = 16
READERS_PER_NODE = 4
SECRET = "cluster-bench-secret-0123456789abcdef"
CHUNK = 8 * MIB  # cairn's default chunk size, set explicitly so the chunk counts below hold
PEER_TIMEOUT = None  # cluster.peer_timeout: cairn's default unless --peer-timeout is given

PROCS = []  # every process started here, stopped in reverse order at the end
MOUNTS = []  # rclone mount points still mounted
ANOMALIES = []  # anything in cairn's behaviour that looked wrong
NOTES = []  # things worth reporting that are not cairn's fault


def log(msg):
    print(f"[cluster-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def anomaly(msg):
    log("ANOMALY: " + msg)
    ANOMALIES.append(msg)


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, proc, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


def start(args, log_path, env=None):
    out = open(log_path, "wb")
    proc = subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    out.close()
    PROCS.append(proc)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in PROCS:
        PROCS.remove(proc)


def unmount(mnt):
    subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)
    if mnt in MOUNTS:
        MOUNTS.remove(mnt)


def stop_all():
    for mnt in list(MOUNTS):
        try:
            unmount(mnt)
        except Exception as e:  # keep going
            log(f"unmounting {mnt}: {e}")
    for proc in reversed(list(PROCS)):
        try:
            stop(proc)
        except Exception as e:  # keep stopping the others
            log(f"stopping {proc.args[0]}: {e}")


def others_running():
    """Processes of other work sharing this machine: cargo, cairn-sim, pytest runs (the suite
    starts clusters of its own) and cairn nodes that this script did not start."""
    mine = str(pathlib.Path(tempfile.gettempdir()) / "cairn-cluster-bench-")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if not args or not args[0]:
            continue
        exe = os.path.basename(args[0].decode(errors="replace"))
        line = b" ".join(args).decode(errors="replace")
        if (exe in ("cargo", "cairn-sim") or "cairn-sim" in line or "pytest" in line
                or (exe == "cairn" and " serve" in line and mine not in line)):
            found.append(pid)
    return found


def wait_quiet(max_wait, what, quiet_for=10.0):
    """Waits until, for `quiet_for` seconds in a row, no other work has been seen and the CPUs
    were at most 30% busy (other helpers' builds and benchmarks come in bursts of commands)."""
    t0 = time.time()
    quiet_since = t0
    told = False
    if FOREIGN:
        FOREIGN.pause()
    while time.time() - quiet_since < quiet_for:
        if others_running() or cpu_busy(0.5) > 0.30:
            quiet_since = time.time()
            if not told:
                log(f"waiting for other work (cargo, cairn-sim, pytest, other cairn nodes) to finish and the CPUs to go idle before {what}")
                told = True
        if time.time() - t0 > max_wait:
            msg = f"other work still running after {max_wait:.0f} s; measured {what} anyway"
            log("warning: " + msg)
            NOTES.append(msg)
            break
    if FOREIGN:
        FOREIGN.resume()
    waited = time.time() - t0
    if told:
        log(f"machine quiet after {waited:.0f} s")
    global WAITED
    WAITED += waited
    return waited


class Monitor:
    """Counts, once a second in the background, the samples in which cargo or cairn-sim ran, so a
    measurement that overlapped another helper's work is flagged."""

    def __init__(self):
        import threading

        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(1.0):
            if others_running():
                self.seen += 1

    def check(self, since, what):
        if self.seen > since:
            msg = f"other work ran during {what} ({self.seen - since} s sampled): numbers there are noisy"
            log("warning: " + msg)
            NOTES.append(msg)

    def stop(self):
        self._stop.set()


MONITOR = None
FOREIGN = None  # ForeignLoad of the run, paused while waiting for other helpers
WAITED = 0.0  # seconds spent waiting for other work to finish


def mon_mark():
    return MONITOR.seen if MONITOR else 0


def mon_check(mark, what):
    if MONITOR:
        MONITOR.check(mark, what)


def proc_cpu(pids):
    """user+system CPU seconds of these processes and their direct children (nginx workers)."""
    total, seen = 0.0, set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, IndexError, ValueError):
            pass
    return total


# ---------------------------------------------------------------------------------------------
# Servers


class Node:
    """One `cairn serve` process of a cluster, on its own loopback address."""

    def __init__(self, cluster, index):
        self.cluster = cluster
        self.id = f"n{index}"
        self.ip = f"127.0.0.{11 + index}"
        self.dir = cluster.dir / self.id
        self.dir.mkdir()
        self.port, self.admin, self.peer_port = free_port(self.ip), free_port(self.ip), free_port(self.ip)
        while len({self.port, self.admin, self.peer_port}) < 3:
            self.admin, self.peer_port = free_port(self.ip), free_port(self.ip)
        self.log_path = self.dir / "cairn.log"
        self.proc = None

    def write_config(self):
        c = self.cluster
        cfg = f"""[node]
listen = "{self.ip}:{self.port}"
admin_listen = "{self.ip}:{self.admin}"

[cache]
dir = "{self.dir / "cache"}"
ram_capacity = "3GiB"
disk_capacity = "4GiB"

[auth]
allow_anonymous = true

[kv]
listen = ""

[cluster]
map = "{c.map_path}"
node_id = "{self.id}"
peer_listen = "{self.ip}:{self.peer_port}"
secret = "{SECRET}"
replicas = 1
map_poll = "1s"
""" + (f'peer_timeout = "{PEER_TIMEOUT}"\n' if PEER_TIMEOUT else "") + c.extra_cluster + "\n" + "\n".join(c.origins)
        self.config = self.dir / "cfg.toml"
        self.config.write_text(cfg)

    def start(self, bin_path):
        self.proc = start([bin_path, "serve", "--config", str(self.config)], self.log_path)

    def wait_ready(self):
        wait_port(self.ip, self.port, self.proc)
        wait_port(self.ip, self.admin, self.proc)

    def url(self, path=""):
        return f"http://{self.ip}:{self.port}{path}"

    def metrics(self):
        with urllib.request.urlopen(f"http://{self.ip}:{self.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                pass
        return values


class Cluster:
    """N cairn nodes sharing one map file and the benchmark's origin folders."""

    def __init__(self, bin_path, tmp, name, n, origins, extra_cluster=""):
        self.dir = tmp / name
        self.dir.mkdir()
        self.name = name
        self.origins = origins
        self.extra_cluster = extra_cluster
        self.reported = {}
        self.map_path = self.dir / "map.toml"
        self.nodes = [Node(self, i) for i in range(n)]
        lines = ["version = 1"]
        for i, node in enumerate(self.nodes):
            lines += [
                "[[node]]",
                f'id = "{node.id}"',
                f'addr = "{node.ip}:{node.peer_port}"',
                'zone = "z1"',
                f'rack = "r{i % 2}"',
                "weight = 100",
                'state = "up"',
            ]
        self.map_path.write_text("\n".join(lines) + "\n")
        for node in self.nodes:
            node.write_config()
            node.start(bin_path)
        for node in self.nodes:
            node.wait_ready()
        deadline = time.time() + 10
        while time.time() < deadline:
            if all(nd.metrics().get("cairn_cluster_map_version", 0) == 1 for nd in self.nodes):
                break
            time.sleep(0.1)
        else:
            anomaly(f"{name}: not every node reports cairn_cluster_map_version 1 after 10 s")

    def metrics(self):
        return [n.metrics() for n in self.nodes]

    def check_metrics(self):
        for node, m in zip(self.nodes, self.metrics()):
            errs = {k: v for k, v in m.items() if k.startswith("cairn_s3_errors_total") and v}
            if errs:
                anomaly(f"{self.name}/{node.id}: S3 errors in metrics: {errs}")
            for key in ("cairn_origin_errors_total", "cairn_disk_write_errors_total", "cairn_peer_failovers_total",
                        "cairn_peer_refused_total", "cairn_corrupt_chunks_total"):
                seen = self.reported.get((node.id, key), 0)
                if m.get(key, 0) > seen:  # each increase once, not again at every later check
                    anomaly(f"{self.name}/{node.id}: {key} = {m[key]:.0f}")
                    self.reported[(node.id, key)] = m[key]

    def stop(self):
        for node in self.nodes:
            if node.proc is not None:
                stop(node.proc)
        for node in self.nodes:
            # tracing colours its levels even into a file: strip the escapes before matching
            text = re.sub(r"\x1b\[[0-9;]*m", "", node.log_path.read_text(errors="replace"))
            bad = [l for l in text.splitlines() if " ERROR " in l or "panicked" in l]
            if bad:
                anomaly(f"{self.name}/{node.id}: {len(bad)} ERROR/panic line(s) in its log, first: {bad[0][:300]}")
            warns = [l for l in text.splitlines() if " WARN " in l]
            if warns:
                anomaly(f"{self.name}/{node.id}: {len(warns)} WARN line(s) in its log, first: {warns[0][:300]}")


def total(metrics, key):
    return sum(m.get(key, 0) for m in metrics)


def delta(after, before, key):
    return [a.get(key, 0) - b.get(key, 0) for a, b in zip(after, before)]


class Nginx:
    def __init__(self, tmp, origin):
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = free_port()
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
    location /hot/ {{ alias {origin}/; }}
  }}
}}
"""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = start(["nginx", "-c", str(self.conf), "-p", str(self.dir)], self.dir / "stdout.log")
        wait_port("127.0.0.1", self.port, self.proc)

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"


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
        MOUNTS.append(self.mnt)
        deadline = time.time() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"rclone mount {self.mnt} failed: {(self.dir / 'rclone.log').read_text()[-2000:]}")
            time.sleep(0.1)
        wait_port("127.0.0.1", self.rc_port, self.proc)

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
# Clients

WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d}\\n',
    summary.duration, summary.requests, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"""


def wrk_script(path, paths):
    lines = ["local paths = {" + ", ".join(f'"{p}"' for p in paths) + "}", "local i = 0"]
    lines += [
        "init = function(args)",
        "  i = math.random(#paths)",  # the wrk processes do not all start on the same object
        "end",
        "request = function()",
        "  i = i % #paths + 1",
        '  return wrk.format("GET", paths[i])',
        "end",
    ]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def wrk_parallel(base_urls, script, seconds):
    """One `wrk -t1 -c4` per URL, all at once; returns the per-process summaries."""
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", "-c4", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for url in base_urls
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 60)
        for line in out.splitlines():
            if line.startswith("WRKJSON "):
                r = json.loads(line[len("WRKJSON "):])
                r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
                r["gbps"] = r["bytes"] / (r["duration_us"] / 1e6) / 1e9
                results.append(r)
                break
        else:
            raise RuntimeError(f"wrk printed no summary:\n{out}\n{err}")
    return results


def curl_sha256(url):
    """Streams one GET through curl into sha256sum; returns (hexdigest, bytes, http code)."""
    p = subprocess.run(
        ["bash", "-c", f"set -o pipefail; curl -sS -o - -w '%{{stderr}}\\n%{{http_code}} %{{size_download}}' '{url}' | sha256sum"],
        capture_output=True, text=True, timeout=1800,
    )
    digest = p.stdout.split()[0] if p.stdout.strip() else ""
    last = p.stderr.strip().splitlines()[-1].split() if p.stderr.strip() else ["0", "0"]
    code, size = int(last[0]), int(float(last[1]))
    if p.returncode != 0:
        log(f"curl {url}: exit {p.returncode}, {p.stderr.strip()[:300]}")
    return digest, size, code


def file_sha256(path):
    """sha256sum of one file (through a mount); returns (hexdigest, bytes, exit code)."""
    p = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        log(f"sha256sum {path}: exit {p.returncode}, {p.stderr.strip()[:300]}")
    digest = p.stdout.split()[0] if p.stdout.strip() else ""
    return digest, os.stat(path).st_size if p.returncode == 0 else 0, p.returncode


def http_get(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.status, r.read()


# ---------------------------------------------------------------------------------------------
# Measurements


def gen_file(path, size, seed):
    """Writes `size` pseudo-random bytes, every 4 MiB block different, and returns the sha256."""
    h = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            b = (seed * 1_000_003 + i).to_bytes(8, "little") + block[8:]
            f.write(b)
            h.update(b)
    return h.hexdigest()


def cold_cairn(cluster, big_name, big_sha, size):
    """4 readers per node of the same cold object; origin bytes summed over the nodes."""
    n = len(cluster.nodes)
    before = cluster.metrics()
    urls = [node.url(f"/big/{big_name}") for node in cluster.nodes for _ in range(READERS_PER_NODE)]
    mark = mon_mark()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(curl_sha256, urls))
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
        cpu0 = proc_cpu(pids)
        mark = mon_mark()
        rs = wrk_parallel(urls, script, seconds)
        mon_check(mark, f"the {name} hit run with {n} wrk")
        cpu = proc_cpu(pids) - cpu0
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


def cpu_busy(seconds=2.0):
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


class ForeignLoad:
    """CPU used on this machine by processes that are not ours, over a span of time, in cores:
    user+system time from /proc/stat minus the rusage of this process and its (waited-for)
    children. Softirq time (loopback networking) is counted in neither."""

    def __init__(self):
        self.t0, self.cpu0, self.own0 = time.time(), self._cpu(), self._own()
        self.skip_wall = self.skip_cpu = 0.0  # time spent waiting for other helpers, left out
        self._paused = None

    def pause(self):
        self._paused = (time.time(), self._cpu() - self._own())

    def resume(self):
        if self._paused:
            t, foreign = self._paused
            self.skip_wall += time.time() - t
            self.skip_cpu += (self._cpu() - self._own()) - foreign
            self._paused = None

    @staticmethod
    def _cpu():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def cores(self):
        wall = max(1e-6, time.time() - self.t0 - self.skip_wall)
        return max(0.0, (self._cpu() - self.cpu0) - (self._own() - self.own0) - self.skip_cpu) / wall


def table(rows):
    head = ("Benchmark", "cairn", "reference", "ratio (cairn/ref)", "target", "result")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main():
    global PEER_TIMEOUT, MONITOR, FOREIGN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB, 3 s wrk runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cluster_results.md"))
    ap.add_argument("--max-wait", type=float, default=1800,
                    help="seconds to wait for other work (cargo, cairn-sim, pytest, other cairn nodes) to finish before starting")
    ap.add_argument("--peer-timeout", default=None,
                    help="cluster.peer_timeout of the nodes (default: not set, cairn's own default)")
    args = ap.parse_args()
    PEER_TIMEOUT = args.peer_timeout

    bin_path = os.environ.get("CAIRN_BIN", str(ROOT / "target" / "release" / "cairn"))
    bin_path = str(pathlib.Path(bin_path).resolve())
    for tool in ("nginx", "wrk", "curl", "sha256sum", "rclone", "fusermount"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y nginx-light wrk curl rclone fuse3)")
    if not os.path.exists("/dev/fuse"):
        sys.exit("/dev/fuse is missing: rclone mount (the reference of the origin-offload rows) needs FUSE")
    if not os.access(bin_path, os.X_OK):
        sys.exit(f"cairn binary not found at {bin_path} (cargo build --release -p cairn)")

    waited = wait_quiet(args.max_wait, "the benchmark", quiet_for=20.0)
    busy_before = cpu_busy()
    if busy_before > 0.10:
        log(f"warning: the machine is {busy_before:.0%} busy before the benchmark starts; numbers will be noisy")
    bin_mtime = os.stat(bin_path).st_mtime
    big = (256 if args.quick else 1024) * MIB
    seconds = 3 if args.quick else 10
    warmup = 1 if args.quick else 2
    started = time.time()
    foreign = FOREIGN = ForeignLoad()
    MONITOR = Monitor()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-cluster-bench-"))
    offload, hits = {}, {}
    try:
        # A private copy, so a rebuild of target/release during the run cannot swap binaries.
        shutil.copy2(bin_path, tmp / "cairn")
        bin_path = str(tmp / "cairn")
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
        script = wrk_script(tmp / "hits.lua", [f"/hot/{n}" for n in names])
        nginx = Nginx(tmp, hot_dir)
        for name in names:
            status, body = http_get(nginx.url(f"/hot/{name}"))
            if status != 200 or body != (hot_dir / name).read_bytes():
                raise RuntimeError(f"nginx GET /hot/{name}: status {status}, {len(body)} bytes")

        for n in (1, 2, 4):
            cluster = Cluster(bin_path, tmp, f"cluster{n}", n, origins)
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
        MONITOR.stop()
        stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

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
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        rev = rev.stdout.strip() or "?"
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crates"], capture_output=True, text=True
        )
        if dirty.stdout.strip():
            rev += " (+ uncommitted changes under crates/)"
    except OSError:
        rev = "?"
    header = (
        f"cairn cluster benchmark{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {rev}, binary built {time.strftime('%Y-%m-%d %H:%M', time.localtime(bin_mtime))}, "
        f"{os.cpu_count()} CPUs, {platform.machine()} Linux {platform.release()}, "
        f"wrk runs {seconds} s, peer_timeout {PEER_TIMEOUT or 'cairn default'}, wall time {wall - (WAITED - waited):.0f} s "
        f"(not counting {WAITED:.0f} s spent waiting for other work to finish), "
        f"CPU busy before start {busy_before:.0%}, "
        f"CPU used by other processes during the run (waits left out) ≈ {foreign.cores():.2f} cores"
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
    notes = "\n".join(f"- {a}" for a in ANOMALIES) or "- none"
    other = "\n".join(f"- {a}" for a in NOTES) or "- none"
    text = (f"{header}\n\n{md}\n\nDetails:\n" + "\n".join(details)
            + f"\n\nAnomalies seen in cairn's behaviour:\n{notes}\n\nOther notes:\n{other}\n")
    print(text)
    pathlib.Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    return 1 if ANOMALIES else 0


if __name__ == "__main__":
    sys.exit(main())
