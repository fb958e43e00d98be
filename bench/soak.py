#!/usr/bin/env python3
"""cairn memory soak: a 3-node cluster under sustained mixed load, with every tier at its cap;
samples each node's RSS against the sizes cairn reports and the throughput per CPU second.

    CAIRN_BIN=target/release/cairn python3 bench/soak.py [--minutes 10] [--rate 48] [--keep]

Everything is started here, on free ports inside one temporary directory, and stopped at the end:
three cairn nodes on 127.0.0.11-13 (one cluster map, replicas = 1, S3, admin, peer and KV ports
each) over one local-folder origin. Small tiers, so little data fills them:
RAM 256 MiB, disk 384 MiB, KV RAM 256 MiB, KV disk 384 MiB per node (`--ram-mib`, `--disk-mib`,
`--kv-ram-mib`, `--kv-disk-mib`).

The load (`--workers` client threads, paced together to `--rate` MiB/s of payload; each request
goes to a random node):

- S3 GET of a whole object, and ranged GETs (4 KiB to 4 MiB at a random offset), anonymous, of a
  working set of `--objects` objects of odd sizes between 4 and 40 MiB (about 1.4 GiB by default,
  more than the RAM and the disk tiers of the cluster together); two thirds of the picks go to a
  hot quarter of the objects. Some GETs read recently written objects back.
- `local` writes (PUT with `x-cairn-durability: local`) of 1 to 24 MiB, odd sizes, and deletes of
  the oldest ones, so at most `WRITTEN_KEEP` written objects exist at a time.
- KV SET and GET of 64 KiB to 4 MiB values (odd sizes) over the Redis endpoint (redis-py), on a
  keyspace of three times the KV RAM of the cluster.

Before the load starts every object is read once and every KV key set once, so the tiers start
at their caps. Every `--interval` seconds it samples, per node: VmRSS (/proc/PID/status), the sizes
cairn reports on /metrics (`cairn_cache_bytes{tier}`, `cairn_kv_bytes{tier}`, `cairn_dirty_bytes`,
and the allocator's live heap `cairn_allocator_bytes{kind="allocated"}` when the binary reports
it) and the CPU time (/proc/PID/stat utime + stime). At the end it prints a table per sample, the
RSS slope over the last half of the run (least squares, MiB/min), RSS / configured RAM tiers
(cache RAM + KV RAM) and payload MB per CPU second (all three nodes' CPU) over the first and the
last fifth of the run.

Allocator experiments: `--node-env NAME=VALUE` (repeatable) goes into the nodes' environment only,
e.g. `--node-env MALLOC_ARENA_MAX=2 --node-env MALLOC_MMAP_THRESHOLD_=1048576` (glibc builds) or
`--node-env _RJEM_MALLOC_CONF=oversize_threshold:0` (jemalloc builds). The tables go to stdout and
are appended to bench/soak_results.md (`--out`).
"""

import argparse
import http.client
import os
import pathlib
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import (  # noqa: E402
    KIB, MIB, ROOT, cairn_binary, clean_up, free_ports, log, log_lines, private_copy, scrape, set_log_tag, start,
    table_head, table_row, tree_cpu_seconds, wait_map_version, wait_port, write_cluster_map,
)

set_log_tag("soak")

NODES = 3
SECRET = "soak-secret-0123456789abcdef"
KV_PASSWORD = "soak-kv-password"
BUCKET = "soak"
CHUNK = 8 * MIB
# Shares of the operations (they add up to 100).
MIX = [("get", 8), ("range", 26), ("put", 6), ("kv_set", 30), ("kv_get", 30)]
WRITTEN_KEEP = 24  # local-written objects kept before the oldest is deleted
WRITTEN_READ_SHARE = 0.1  # share of whole-object GETs that read a recently written object
HOT_SHARE = 0.25  # share of the objects that get HOT_PICKS of the picks
HOT_PICKS = 0.66
CLIENT_TIMEOUT = 120
KV_KEYSPACE_TIMES_RAM = 3  # the KV keyspace is this many times the cluster's KV RAM
KV_MIN_VALUE, KV_MAX_VALUE = 64 * KIB, 4 * MIB
# Mean of the log-uniform value sizes: (max - min) / ln(max / min), about 0.95 MiB.
KV_MEAN_VALUE = int((KV_MAX_VALUE - KV_MIN_VALUE) / 4.1589)


def odd_size(lo, hi, rng):
    """A log-uniform size in [lo, hi], made odd so buffers are never a power of two."""
    lo_l, hi_l = lo.bit_length(), hi.bit_length()
    n = int(2 ** rng.uniform(lo_l - 1, hi_l - 1))
    return max(lo, min(hi, n)) | 1


class Node:
    def __init__(self, tmp, index, map_path, origin, args):
        self.id = f"n{index}"
        self.ip = f"127.0.0.{11 + index}"
        self.dir = tmp / self.id
        self.dir.mkdir()
        self.port, self.admin, self.peer_port, self.kv_port = free_ports(4, self.ip)
        self.map_path, self.origin, self.args = map_path, origin, args
        self.log_path = self.dir / "cairn.log"
        self.proc = None

    def write_config(self):
        a = self.args
        (self.dir / "cfg.toml").write_text(f"""[node]
listen = "{self.ip}:{self.port}"
admin_listen = "{self.ip}:{self.admin}"

[cache]
dir = "{self.dir / "cache"}"
ram_capacity = "{a.ram_mib}MiB"
disk_capacity = "{a.disk_mib}MiB"

[auth]
allow_anonymous = true

[writeback]
dirty_max = "{a.dirty_mib}MiB"
upload_defer = "2s"

[kv]
listen = "{self.ip}:{self.kv_port}"
ram_capacity = "{a.kv_ram_mib}MiB"
disk_capacity = "{a.kv_disk_mib}MiB"
max_value_size = "8MiB"
requirepass = "{KV_PASSWORD}"

[cluster]
map = "{self.map_path}"
node_id = "{self.id}"
peer_listen = "{self.ip}:{self.peer_port}"
secret = "{SECRET}"
replicas = 1
map_poll = "1s"

[[origin]]
url = "file://{self.origin}"
chunk_size = "{CHUNK // MIB}MiB"
metadata = "ttl:30s"
""")

    def start(self, bin_path, env):
        self.proc = start([str(bin_path), "serve", "--config", str(self.dir / "cfg.toml")], self.log_path, env)

    def wait_ready(self):
        for port in (self.port, self.admin, self.kv_port):
            wait_port(port, self.proc, host=self.ip)

    def metrics(self):
        return scrape(self.ip, self.admin)

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
        return 0

    def cpu(self):
        return tree_cpu_seconds([self.proc.pid])


class Load:
    """Client threads paced together to a payload rate; counts bytes, operations and errors."""

    def __init__(self, nodes, objects, args):
        self.nodes, self.objects, self.args = nodes, objects, args
        self.rate = args.rate * MIB
        self.lock = threading.Lock()
        self.next_at = time.monotonic()
        self.bytes = 0
        self.ops = {name: 0 for name, _ in MIX}
        self.ops["delete"] = 0
        self.errors = {}
        self.written = []  # (key, size), oldest first
        self.write_seq = 0
        self.stop = threading.Event()
        self.payload = os.urandom(32 * MIB)  # slices of it are the PUT bodies and KV values
        self.kv_keys = args.kv_keys
        self.hot = max(1, int(len(objects) * HOT_SHARE))
        self.threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(args.workers)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT)

    def pace(self, nbytes):
        with self.lock:
            now = time.monotonic()
            self.next_at = max(self.next_at, now - 1.0) + nbytes / self.rate
            wait = self.next_at - now
        if wait > 0:
            self.stop.wait(wait)

    def count(self, op, nbytes):
        with self.lock:
            self.bytes += nbytes
            self.ops[op] += 1

    def error(self, op, what):
        with self.lock:
            key = f"{op}: {what}"[:160]
            first = key not in self.errors
            self.errors[key] = self.errors.get(key, 0) + 1
        if first:
            log(f"error (first of its kind) {key}")

    def pick_object(self, rng):
        if rng.random() < HOT_PICKS:
            return self.objects[rng.randrange(self.hot)]
        return self.objects[rng.randrange(len(self.objects))]

    def worker(self, n):
        import redis

        rng = random.Random(n * 7919 + 1)
        conns = {}
        kvs = {nd.id: redis.Redis(host=nd.ip, port=nd.kv_port, password=KV_PASSWORD, socket_timeout=CLIENT_TIMEOUT)
                for nd in self.nodes}
        buf = bytearray(MIB)
        weights = [w for _, w in MIX]
        names = [name for name, _ in MIX]

        def request(node, method, path, body=None, headers=None):
            c = conns.get(node.id)
            if c is None:
                c = conns[node.id] = http.client.HTTPConnection(node.ip, node.port, timeout=CLIENT_TIMEOUT)
            try:
                c.request(method, path, body=body, headers=headers or {})
                r = c.getresponse()
                got = 0
                view = memoryview(buf)
                while True:
                    k = r.readinto(view)
                    if not k:
                        break
                    got += k
                return r.status, got
            except Exception:
                c.close()
                conns.pop(node.id, None)
                raise

        while not self.stop.is_set():
            op = rng.choices(names, weights)[0]
            node = rng.choice(self.nodes)
            try:
                if op == "get":
                    with self.lock:
                        recent = self.written[-WRITTEN_KEEP // 2:]
                    if recent and rng.random() < WRITTEN_READ_SHARE:
                        key, size = rng.choice(recent)
                    else:
                        key, size = self.pick_object(rng)
                    self.pace(size)
                    status, got = request(node, "GET", f"/{BUCKET}/{key}")
                    if status == 404 and key.startswith("w/"):
                        continue  # deleted by another thread since it was picked
                    if status != 200 or got != size:
                        self.error(op, f"status {status}, {got} of {size} bytes")
                        continue
                    self.count(op, got)
                elif op == "range":
                    key, size = self.pick_object(rng)
                    length = min(odd_size(4 * KIB, 4 * MIB, rng), size)
                    start = rng.randrange(0, size - length + 1)
                    self.pace(length)
                    status, got = request(node, "GET", f"/{BUCKET}/{key}",
                                       headers={"Range": f"bytes={start}-{start + length - 1}"})
                    if status != 206 or got != length:
                        self.error(op, f"status {status}, {got} of {length} bytes")
                        continue
                    self.count(op, got)
                elif op == "put":
                    size = odd_size(MIB, 24 * MIB, rng)
                    off = rng.randrange(0, len(self.payload) - size)
                    with self.lock:
                        self.write_seq += 1
                        key = f"w/{n}-{self.write_seq}"
                    self.pace(size)
                    status, _ = request(node, "PUT", f"/{BUCKET}/{key}", body=memoryview(self.payload)[off:off + size],
                                     headers={"x-cairn-durability": "local", "Content-Length": str(size)})
                    if status != 200:
                        self.error(op, f"status {status}")
                        continue
                    self.count(op, size)
                    with self.lock:
                        self.written.append((key, size))
                        old = self.written.pop(0) if len(self.written) > WRITTEN_KEEP else None
                    if old:
                        status, _ = request(rng.choice(self.nodes), "DELETE", f"/{BUCKET}/{old[0]}")
                        if status not in (200, 204):
                            self.error("delete", f"status {status}")
                        else:
                            self.count("delete", 0)
                elif op == "kv_set":
                    size = odd_size(KV_MIN_VALUE, KV_MAX_VALUE, rng)
                    off = rng.randrange(0, len(self.payload) - size)
                    self.pace(size)
                    kvs[node.id].set(f"kv:{rng.randrange(self.kv_keys)}", memoryview(self.payload)[off:off + size])
                    self.count(op, size)
                elif op == "kv_get":
                    self.pace(KV_MEAN_VALUE)
                    v = kvs[node.id].get(f"kv:{rng.randrange(self.kv_keys)}")
                    self.count(op, len(v) if v else 0)
            except Exception as e:  # count and go on: a soak reports errors, it does not stop
                self.error(op, f"{type(e).__name__}: {e}")
                if op.startswith("kv"):
                    kvs[node.id].close()
                    kvs[node.id] = redis.Redis(host=node.ip, port=node.kv_port, password=KV_PASSWORD,
                                               socket_timeout=CLIENT_TIMEOUT)


def prefill(nodes, objects, load):
    """Reads every object once and sets every KV key once, so the tiers start at their caps."""
    import concurrent.futures

    import redis

    t = time.monotonic()
    local = threading.local()

    def kv(i):
        nd = nodes[i % NODES]
        if not hasattr(local, "kv"):
            local.kv = {n.id: redis.Redis(host=n.ip, port=n.kv_port, password=KV_PASSWORD) for n in nodes}
        size = odd_size(KV_MIN_VALUE, KV_MAX_VALUE, random.Random(i))
        local.kv[nd.id].set(f"kv:{i}", memoryview(load.payload)[:size])

    def get(i):
        nd = nodes[i % NODES]
        key, _ = objects[i]
        with urllib.request.urlopen(f"http://{nd.ip}:{nd.port}/{BUCKET}/{key}", timeout=CLIENT_TIMEOUT) as r:
            while r.read(MIB):
                pass

    with concurrent.futures.ThreadPoolExecutor(load.args.workers) as pool:
        list(pool.map(get, range(len(objects))))
        list(pool.map(kv, range(load.kv_keys)))
    log(f"prefill: {len(objects)} objects read, {load.kv_keys} KV keys set in {time.monotonic() - t:.0f} s")


def make_origin(origin, args):
    """`--objects` objects of odd sizes (4-40 MiB) in bucket `soak`: slices of one random block
    with a distinct first 4 KiB each, so no two chunks are alike."""
    rng = random.Random(42)
    block = os.urandom(40 * MIB + 4 * KIB)
    bucket = origin / BUCKET
    bucket.mkdir(parents=True)
    objects = []
    for i in range(args.objects):
        size = rng.randrange(4 * MIB, 40 * MIB) | 1
        key = f"obj/{i:04d}.bin"
        path = bucket / key
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            f.write(os.urandom(4 * KIB))
            off = rng.randrange(0, 4 * KIB)
            f.write(block[off:off + size - 4 * KIB])
        objects.append((key, size))
    return objects


def slope(points):
    """Least-squares slope of (minutes, MiB) points."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def fmt_mib(b):
    return f"{b / MIB:,.0f}"


def heap_cell(heap):
    return "—" if None in heap else fmt_mib(sum(heap))


def interrupted(*_):
    raise KeyboardInterrupt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=48.0, help="payload MiB/s offered, all workers together")
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--kv-keys", type=int, default=0,
                   help="KV keyspace (default: three times the cluster's KV RAM in values of the mean size)")
    p.add_argument("--ram-mib", type=int, default=256)
    p.add_argument("--disk-mib", type=int, default=384)
    p.add_argument("--kv-ram-mib", type=int, default=256)
    p.add_argument("--kv-disk-mib", type=int, default=384)
    p.add_argument("--dirty-mib", type=int, default=512)
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of the cairn nodes (allocator experiments)")
    p.add_argument("--label", default="", help="names the run in the table's title")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--out", default=str(ROOT / "bench" / "soak_results.md"))
    args = p.parse_args()
    if not args.kv_keys:
        args.kv_keys = KV_KEYSPACE_TIMES_RAM * NODES * args.kv_ram_mib * MIB // KV_MEAN_VALUE
    # SIGTERM unwinds like Ctrl-C, so the nodes are stopped and the directory removed.
    signal.signal(signal.SIGTERM, interrupted)

    bin_src = cairn_binary()
    env = dict(kv.split("=", 1) for kv in args.node_env)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cairn-soak-"))
    bin_path = private_copy(bin_src, tmp)
    tiers = (args.ram_mib + args.kv_ram_mib) * MIB
    samples = []  # (t, [rss], [reported], [cpu], client bytes)
    load = None
    try:
        origin = tmp / "origin"
        objects = make_origin(origin, args)
        log(f"origin: {len(objects)} objects, {sum(s for _, s in objects) / MIB:,.0f} MiB; node env {env or 'default'}")
        map_path = tmp / "map.toml"
        nodes = [Node(tmp, i, map_path, origin, args) for i in range(NODES)]
        write_cluster_map(map_path, nodes)
        for nd in nodes:
            nd.write_config()
            nd.start(bin_path, env)
        for nd in nodes:
            nd.wait_ready()
        wait_map_version(nodes)

        load = Load(nodes, objects, args)
        prefill(nodes, objects, load)
        t0 = time.monotonic()
        load.start()
        end = t0 + args.minutes * 60
        log(f"load started: {args.workers} workers at {args.rate} MiB/s for {args.minutes} min, "
            f"sample every {args.interval:.0f} s")
        while True:
            t = time.monotonic() - t0
            ms = [nd.metrics() for nd in nodes]
            reported = [m.get('cairn_cache_bytes{tier="ram"}', 0) + m.get('cairn_kv_bytes{tier="ram"}', 0) for m in ms]
            on_disk = [m.get('cairn_cache_bytes{tier="disk"}', 0) + m.get('cairn_kv_bytes{tier="disk"}', 0)
                       for m in ms]
            dirty = [m.get("cairn_dirty_bytes", 0) for m in ms]
            # Live heap bytes, when the binary's allocator reports them (jemalloc builds do).
            heap = [m.get('cairn_allocator_bytes{kind="allocated"}') for m in ms]
            with load.lock:
                nbytes = load.bytes
            samples.append((t, [nd.rss() for nd in nodes], reported, [nd.cpu() for nd in nodes], nbytes, on_disk,
                            dirty, heap))
            s = samples[-1]
            log(f"t={t / 60:5.1f} min  RSS MiB " + " ".join(fmt_mib(r) for r in s[1])
                + "  reported RAM MiB " + " ".join(fmt_mib(r) for r in s[2])
                + "  disk MiB " + " ".join(fmt_mib(r) for r in on_disk)
                + "  dirty MiB " + " ".join(fmt_mib(r) for r in dirty)
                + ("  live heap MiB " + " ".join(fmt_mib(h) for h in heap) if None not in heap else ""))
            if any(nd.proc.poll() is not None for nd in nodes):
                log("a node exited: stopping")
                break
            if time.monotonic() >= end:
                break
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
        load.join()
        report(args, samples, load, tiers, env, nodes)
    finally:
        clean_up(tmp, args.keep)


def report(args, samples, load, tiers, env, nodes):
    if len(samples) < 3:
        sys.exit("too few samples")
    out = []
    title = args.label or ("node env: " + " ".join(f"{k}={v}" for k, v in env.items()) if env else "default allocator")
    out.append(f"### Soak: {title}\n")
    out.append(f"{args.minutes:g} min, {args.workers} workers offering {args.rate:g} MiB/s; tiers per node: RAM "
               f"{args.ram_mib} MiB + KV RAM {args.kv_ram_mib} MiB = {tiers / MIB:.0f} MiB (disk {args.disk_mib} + "
               f"KV disk {args.kv_disk_mib} MiB); {args.objects} origin objects.\n")
    head = (["min"] + [f"{nd.id} RSS MiB" for nd in nodes] + ["reported RAM MiB (sum)", "live heap MiB (sum)",
            "disk MiB (sum)", "dirty MiB (sum)", "payload MiB/s", "MB per CPU-s"])
    out += table_head(head, "r" * len(head))
    for prev, cur in zip(samples, samples[1:]):
        dt = cur[0] - prev[0]
        cpu = sum(cur[3]) - sum(prev[3])
        db = cur[4] - prev[4]
        out.append(table_row([f"{cur[0] / 60:.1f}"] + [fmt_mib(r) for r in cur[1]] + [
            fmt_mib(sum(cur[2])), heap_cell(cur[7]), fmt_mib(sum(cur[5])), fmt_mib(sum(cur[6])),
            f"{db / dt / MIB:.1f}", f"{db / cpu / 1e6 if cpu else float('nan'):.1f}"]))
    half = samples[0][0] + (samples[-1][0] - samples[0][0]) / 2
    last_half = [s for s in samples if s[0] >= half]
    out.append("")
    out += table_head(("node", "RSS start MiB (first sample after 1 min)", "RSS end MiB",
                       "slope over the last half MiB/min", "RSS end / tiers", "RSS end − tiers MiB"), "lrrrrr")
    first = next((s for s in samples if s[0] >= 60), samples[1])
    for i, nd in enumerate(nodes):
        sl = slope([(s[0] / 60, s[1][i] / MIB) for s in last_half])
        out.append(table_row((nd.id, fmt_mib(first[1][i]), fmt_mib(samples[-1][1][i]), f"{sl:+.1f}",
                              f"{samples[-1][1][i] / tiers:.2f}×", fmt_mib(samples[-1][1][i] - tiers))))

    def per_cpu(a, b):
        cpu = sum(b[3]) - sum(a[3])
        return (b[4] - a[4]) / cpu / 1e6 if cpu else float("nan")

    # Throughput per CPU second over the first and the last fifth of the run.
    k = max(2, len(samples) // 5)
    start_tp, end_tp = per_cpu(samples[0], samples[k - 1]), per_cpu(samples[-k], samples[-1])
    out.append("")
    out.append(f"Payload per CPU second (3 nodes' CPU): first fifth {start_tp:.1f} MB/CPU-s, last fifth "
               f"{end_tp:.1f} MB/CPU-s ({(end_tp / start_tp - 1) * 100:+.0f}%).")
    if load:
        out.append("Operations: " + ", ".join(f"{k} {v:,}" for k, v in load.ops.items()) + ".")
        out.append("Errors: " + (", ".join(f"{k} ×{v}" for k, v in load.errors.items()) if load.errors else "none")
                   + ".")
    bad = []
    for nd in nodes:
        try:
            lines = log_lines(nd.log_path, " ERROR ", "panicked")
        except OSError:
            continue
        if lines:
            bad.append(f"{nd.id}: {len(lines)} ERROR/panic line(s), first: {lines[0][:200]}")
    if bad:
        out.append("Node logs: " + "; ".join(bad))
    text = "\n".join(out) + "\n"
    print(text)
    with open(args.out, "a") as f:
        f.write(f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->\n" + text + "\n")


if __name__ == "__main__":
    main()
