"""What every cairn benchmark script needs: processes, ports, mounts, cairn nodes and clusters, the
origins (local folder, Azurite, cairn-emu) and reference servers (nginx), load generators (wrk,
curl), waiting for a quiet machine, test data, CPU accounting and the report's table and header.

Imported by the scripts in bench/ (they run as `python3 bench/NAME.py`, so this folder is on
sys.path); no script imports another. Every process started through `start` is stopped by
`stop_all`, in reverse order, after every mount in `MOUNTS` is unmounted.
"""

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
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# The objects of the single-node hit rows (bench.py, tls_bench.py): 16 MiB each, and the 4 KiB
# range read of one of them.
HIT_OBJECT = 16 * MIB
HIT_OBJECTS = 4
HIT_RANGE = (4096, 8191)

PROCS = []  # every process started here, stopped in reverse order at the end
MOUNTS = []  # FUSE mount points still mounted, unmounted first at the end
ANOMALIES = []  # anything in cairn's behaviour that looked wrong
NOTES = []  # things worth reporting that are not cairn's fault

LOG_TAG = "bench"  # names the script in its log lines; see set_log_tag


def set_log_tag(tag):
    global LOG_TAG
    LOG_TAG = tag


def log(msg, tag=None):
    print(f"[{tag or LOG_TAG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def anomaly(msg):
    log("ANOMALY: " + msg)
    ANOMALIES.append(msg)


# ---------------------------------------------------------------------------------------------
# Processes, ports and mounts


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n, host="127.0.0.1"):
    """`n` distinct free ports on `host`."""
    ports = set()
    while len(ports) < n:
        ports = {free_port(host) for _ in range(n)}
    return sorted(ports)


def wait_port(port, proc, timeout=60.0, host="127.0.0.1"):
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


def start(args, log_path, env=None, cwd=None):
    out = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(a) for a in args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    out.close()
    PROCS.append(proc)
    return proc


def stop(proc, timeout=10):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in PROCS:
        PROCS.remove(proc)


def wait_mounted(mnt, proc, log_path, timeout=30.0):
    """Waits until a FUSE process has mounted `mnt` (and records it in MOUNTS)."""
    MOUNTS.append(mnt)
    deadline = time.time() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{proc.args[0]} mount {mnt} failed: {pathlib.Path(log_path).read_text()[-2000:]}")
        time.sleep(0.1)


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


def clean_up(tmp, keep=False):
    """The end of every run: stops what it started (stop_all), then removes its folder unless `keep`."""
    stop_all()
    if keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def cairn_binary():
    """The cairn binary under test ($CAIRN_BIN or target/release/cairn), checked to exist."""
    path = pathlib.Path(os.environ.get("CAIRN_BIN", str(ROOT / "target" / "release" / "cairn"))).resolve()
    if not os.access(path, os.X_OK):
        sys.exit(f"cairn binary not found at {path} (cargo build --release -p cairn)")
    return str(path)


def private_copy(bin_path, tmp):
    """A copy of the binary in the run's folder, so a rebuild of target/release during the run
    cannot swap binaries."""
    shutil.copy2(bin_path, tmp / "cairn")
    return str(tmp / "cairn")


def need_tools(tools, hint):
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found ({hint})")


def scrape(host, admin_port):
    """A node's /metrics as {series: value}."""
    with urllib.request.urlopen(f"http://{host}:{admin_port}/metrics", timeout=10) as r:
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


def log_lines(path, *needles):
    """The lines of a node's log that hold one of `needles` (" ERROR ", "panicked"); tracing
    colours its levels when it writes to a terminal, so escapes are stripped before matching."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", pathlib.Path(path).read_text(errors="replace"))
    return [l for l in text.splitlines() if any(x in l for x in needles)]


# ---------------------------------------------------------------------------------------------
# cairn nodes


class Cairn:
    """One cairn node on loopback with anonymous S3 access; `cache` adds lines to [cache]."""

    def __init__(self, bin_path, tmp, name, origins, readahead=None, env=None, cache=None):
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        self.port, self.admin = free_port(), free_port()
        lines = [f'dir = "{self.dir / "cache"}"', 'ram_capacity = "4GiB"', 'disk_capacity = "8GiB"']
        if readahead is not None:
            lines.append(f"readahead_chunks = {readahead}")
        for extra in cache or []:
            key = extra.split("=")[0].strip()
            lines = [l for l in lines if l.split("=")[0].strip() != key] + [extra]
        cfg = (
            f'[node]\nlisten = "127.0.0.1:{self.port}"\nadmin_listen = "127.0.0.1:{self.admin}"\n\n'
            "[cache]\n" + "\n".join(lines) + "\n\n[auth]\nallow_anonymous = true\n\n[kv]\nlisten = \"\"\n\n"
            + "\n".join(origins)
        )
        self.config = self.dir / "cfg.toml"
        self.config.write_text(cfg)
        self.log_path = self.dir / "cairn.log"
        self.proc = start([bin_path, "serve", "--config", str(self.config)], self.log_path, env=env)
        wait_port(self.port, self.proc)
        wait_port(self.admin, self.proc)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self):
        return scrape("127.0.0.1", self.admin)

    def check_metrics(self, expect_origin_errors=0):
        m = self.metrics()
        errs = {k: v for k, v in m.items() if k.startswith("cairn_s3_errors_total") and v}
        if errs:
            anomaly(f"{self.name}: S3 errors in metrics: {errs}")
        if m.get("cairn_origin_errors_total", 0) > expect_origin_errors:
            anomaly(f"{self.name}: cairn_origin_errors_total = {m['cairn_origin_errors_total']:.0f}")
        for key in ("cairn_disk_write_errors_total",):
            if m.get(key, 0):
                anomaly(f"{self.name}: {key} = {m[key]:.0f}")
        return m

    def stop(self):
        stop(self.proc)
        bad = log_lines(self.log_path, " ERROR ", "panicked")
        if bad:
            anomaly(f"{self.name}: {len(bad)} ERROR/panic line(s) in its log, first: {bad[0][:300]}")


# ---------------------------------------------------------------------------------------------
# cairn clusters

CLUSTER_SECRET = "cluster-bench-secret-0123456789abcdef"


def write_cluster_map(path, nodes):
    """A cluster map (version 1) of nodes that have `id`, `ip` and `peer_port`, all up, in one
    zone, alternating between two racks."""
    lines = ["version = 1"]
    for i, node in enumerate(nodes):
        lines += [
            "[[node]]",
            f'id = "{node.id}"',
            f'addr = "{node.ip}:{node.peer_port}"',
            'zone = "z1"',
            f'rack = "r{i % 2}"',
            "weight = 100",
            'state = "up"',
        ]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def wait_map_version(nodes, version=1, timeout=10.0):
    """Waits until every node reports the map version; False if some did not within `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(nd.metrics().get("cairn_cluster_map_version", 0) == version for nd in nodes):
            return True
        time.sleep(0.1)
    return False


class Node:
    """One `cairn serve` process of a cluster, on its own loopback address (127.0.0.11, ...)."""

    def __init__(self, cluster, index):
        self.cluster = cluster
        self.id = f"n{index}"
        self.ip = f"127.0.0.{11 + index}"
        self.dir = cluster.dir / self.id
        self.dir.mkdir()
        self.port, self.admin, self.peer_port = free_ports(3, self.ip)
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
secret = "{c.secret}"
replicas = 1
map_poll = "1s"
""" + (f'peer_timeout = "{c.peer_timeout}"\n' if c.peer_timeout else "") + c.extra_cluster + "\n" + "\n".join(c.origins)
        self.config = self.dir / "cfg.toml"
        self.config.write_text(cfg)

    def start(self, bin_path):
        self.proc = start([bin_path, "serve", "--config", str(self.config)], self.log_path)

    def wait_ready(self):
        wait_port(self.port, self.proc, host=self.ip)
        wait_port(self.admin, self.proc, host=self.ip)

    def url(self, path=""):
        return f"http://{self.ip}:{self.port}{path}"

    def metrics(self):
        return scrape(self.ip, self.admin)


class Cluster:
    """N cairn nodes sharing one map file (replicas = 1, anonymous access) and the given origins
    (`[[origin]]` tables); `extra_cluster` adds lines to [cluster]."""

    def __init__(self, bin_path, tmp, name, n, origins, extra_cluster="", peer_timeout=None, secret=CLUSTER_SECRET):
        self.dir = tmp / name
        self.dir.mkdir()
        self.name = name
        self.origins = origins
        self.extra_cluster = extra_cluster
        self.peer_timeout = peer_timeout
        self.secret = secret
        self.reported = {}
        self.map_path = self.dir / "map.toml"
        self.nodes = [Node(self, i) for i in range(n)]
        write_cluster_map(self.map_path, self.nodes)
        for node in self.nodes:
            node.write_config()
            node.start(bin_path)
        for node in self.nodes:
            node.wait_ready()
        if not wait_map_version(self.nodes):
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
            bad = log_lines(node.log_path, " ERROR ", "panicked")
            if bad:
                anomaly(f"{self.name}/{node.id}: {len(bad)} ERROR/panic line(s) in its log, first: {bad[0][:300]}")
            warns = log_lines(node.log_path, " WARN ")
            if warns:
                anomaly(f"{self.name}/{node.id}: {len(warns)} WARN line(s) in its log, first: {warns[0][:300]}")


def total(metrics, key):
    """A series summed over the nodes' metrics."""
    return sum(m.get(key, 0) for m in metrics)


def delta(after, before, key):
    """A series' increase per node between two readings of every node's metrics."""
    return [a.get(key, 0) - b.get(key, 0) for a, b in zip(after, before)]


# ---------------------------------------------------------------------------------------------
# Waiting for a quiet machine (other engineers' builds and test runs share it)

MONITOR = None  # Monitor of the run, when watch_machine started one
FOREIGN = None  # ForeignLoad of the run, paused while waiting for other work
WAITED = 0.0  # seconds spent waiting for other work to finish


def others_running(mine_prefix="cairn-cluster-bench-"):
    """Processes of other work sharing this machine: cargo, cairn-sim, pytest runs (the suite
    starts clusters of its own) and cairn nodes not started from a folder named `mine_prefix`..."""
    mine = str(pathlib.Path(tempfile.gettempdir()) / mine_prefix)
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
    global WAITED
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
    WAITED += waited
    return waited


class Monitor:
    """Counts, once a second in the background, the samples in which other work ran, so a
    measurement that overlapped another helper's work is flagged."""

    def __init__(self):
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


def watch_machine():
    """Starts the run's ForeignLoad (paused by wait_quiet) and its Monitor; returns both."""
    global FOREIGN, MONITOR
    FOREIGN, MONITOR = ForeignLoad(), Monitor()
    return FOREIGN, MONITOR


def mon_mark():
    return MONITOR.seen if MONITOR else 0


def mon_check(mark, what):
    if MONITOR:
        MONITOR.check(mark, what)


def waited_total():
    return WAITED


# ---------------------------------------------------------------------------------------------
# Reference servers and origins: nginx, Azurite

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_BIN = ROOT / ".test-deps" / "node_modules" / ".bin" / "azurite-blob"


class Nginx:
    """nginx (2 workers, sendfile, keep-alive) serving `origin` under /LOCATION/ on 127.0.0.1;
    with `tls=(cert, key)` also on an https port (TLS 1.3), `tls_port`."""

    def __init__(self, tmp, origin, location="bench", tls=None):
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"  {d}_temp_path {self.dir / d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        listen = f"    listen 127.0.0.1:{self.port};\n"
        if tls:
            listen += (f"    listen 127.0.0.1:{self.tls_port} ssl;\n    ssl_certificate {tls[0]};\n"
                       f"    ssl_certificate_key {tls[1]};\n    ssl_protocols TLSv1.3;\n")
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
{listen}    location /{location}/ {{ alias {origin}/; }}
  }}
}}
"""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = start(["nginx", "-c", str(self.conf), "-p", str(self.dir)], self.dir / "stdout.log")
        wait_port(self.port, self.proc)
        if tls:
            wait_port(self.tls_port, self.proc)

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        stop(self.proc)


class Azurite:
    """Azurite's blob service (installed into .test-deps when missing) with a client for it."""

    def __init__(self, tmp):
        from azure.storage.blob import BlobServiceClient

        if not AZURITE_BIN.exists():
            log("installing Azurite into .test-deps")
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(ROOT / ".test-deps"), "azurite@3.37.0"],
                check=True,
            )
        self.port = free_port()
        loc = tmp / "azurite"
        loc.mkdir()
        self.proc = start(
            [
                str(AZURITE_BIN),
                "--blobHost", "127.0.0.1",
                "--blobPort", str(self.port),
                "--location", str(loc),
                "--silent", "--skipApiVersionCheck", "--loose",
            ],
            loc / "azurite.log",
        )
        wait_port(self.port, self.proc)
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};"
        )
        self.service = BlobServiceClient.from_connection_string(conn)

    def sas_url(self, container, blob):
        """A read-only URL of one blob, valid for 2 hours."""
        from datetime import datetime, timedelta, timezone

        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            AZURITE_ACCOUNT,
            container,
            blob,
            account_key=AZURITE_KEY,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(hours=2),
        )
        return f"{self.endpoint}/{container}/{blob}?{sas}"

    def container_sas_url(self, container):
        """A read-write URL of one container, valid for 12 hours."""
        from datetime import datetime, timedelta, timezone

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
            expiry=datetime.now(timezone.utc) + timedelta(hours=12),
        )
        return f"{self.endpoint}/{container}?{sas}"

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------------------------------------
# The cloud-like origin (crates/cairn-emu)


def emu_binary():
    """Builds (if needed) and returns the cloud-like origin server, `cairn-emu`."""
    path = os.environ.get("CAIRN_EMU_BIN")
    if path:
        return path
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "cairn-emu"], cwd=ROOT, check=True)
    return str(target / "release" / "cairn-emu")


class Emu:
    """`cairn-emu` on a folder: S3 with a first-byte latency per request and a bandwidth cap per
    connection. Buckets are the folder's sub-folders; files put there before start are indexed."""

    ACCESS, SECRET = "cairn-emu", "cairn-emu-secret"

    def __init__(self, tmp, root, latency="30ms", bandwidth="60MB", bin_path=None):
        self.root = root
        self.port = free_port()
        self.latency, self.bandwidth = latency, bandwidth
        self.proc = start(
            [bin_path or emu_binary(), "--root", root, "--listen", f"127.0.0.1:{self.port}",
             "--latency", latency, "--bandwidth", bandwidth],
            tmp / f"emu-{self.port}.log",
        )
        wait_port(self.port, self.proc, timeout=600)  # indexing large files takes a while

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        """Credentials for AWS tools (s5cmd, aws-cli, boto3)."""
        return {
            "AWS_ACCESS_KEY_ID": self.ACCESS,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def origin_toml(self, bucket):
        return (
            f'[[origin]]\nbucket = "{bucket}"\nurl = "s3://{bucket}"\n'
            f'options = {{ aws_endpoint = "{self.endpoint}", aws_allow_http = "true", '
            f'aws_access_key_id = "{self.ACCESS}", aws_secret_access_key = "{self.SECRET}", '
            'aws_region = "us-east-1", aws_virtual_hosted_style_request = "false" }\n'
        )

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS, aws_secret_access_key=self.SECRET,
            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, max_pool_connections=64),
        )

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------------------------------------
# Data and measurement


def gen_file(path, size, seed):
    """Writes `size` pseudo-random bytes (cheap to generate, incompressible enough) and returns
    their sha256 hex."""
    h = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            # vary every block so no two chunks are identical
            b = (seed * 1_000_003 + i).to_bytes(8, "little") + block[8:]
            f.write(b)
            h.update(b)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


# ---------------------------------------------------------------------------------------------
# Readers and load generators: urllib, curl, wrk


def file_sha256(path):
    """sha256sum of one file (through a mount); returns (hexdigest, bytes, exit code)."""
    p = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        log(f"sha256sum {path}: exit {p.returncode}, {p.stderr.strip()[:300]}")
    digest = p.stdout.split()[0] if p.stdout.strip() else ""
    return digest, os.stat(path).st_size if p.returncode == 0 else 0, p.returncode


def http_get(url, headers=None, context=None):
    """One GET read whole; returns (status, body)."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120, context=context) as r:
        return r.status, r.read()


def curl_sha256(url):
    """Streams a GET through curl into sha256 (hashed here, with OpenSSL's SHA-256); returns
    (hexdigest, bytes, http code)."""
    proc = subprocess.Popen(
        ["curl", "-s", "-o", "-", "-w", "%{stderr}%{http_code}", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    h, n = hashlib.sha256(), 0
    while True:
        buf = proc.stdout.read(4 * MIB)
        if not buf:
            break
        h.update(buf)
        n += len(buf)
    code = proc.stderr.read().decode().strip()
    proc.wait()
    return h.hexdigest(), n, int(code or 0)


def curl_sha256sum(url):
    """Streams one GET through curl into the sha256sum tool; returns (hexdigest, bytes, http code).
    The cluster and fan-out rows are measured with it. coreutils' sha256sum (9.1 here) does not use
    the CPU's SHA instructions and costs about five times the CPU of curl_sha256, which shows in
    those rows' wall times on a busy machine; kept so that they stay comparable with earlier runs."""
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


# wrk's summary as one JSON line (latency in microseconds), parsed by _wrk_summary.
WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.duration, summary.requests, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(path, paths, headers=None, random_start=False):
    """A wrk script cycling through `paths`; `random_start`: each thread starts at a random one
    (so parallel wrk processes do not all start on the same object)."""
    lines = ["local paths = {" + ", ".join(f'"{p}"' for p in paths) + "}", "local i = 0"]
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    if random_start:
        lines += [
            "init = function(args)",
            "  i = math.random(#paths)",
            "end",
        ]
    lines += [
        "request = function()",
        "  i = i % #paths + 1",
        '  return wrk.format("GET", paths[i])',
        "end",
    ]
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def _wrk_summary(out, err):
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[len("WRKJSON "):])
            r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
            r["gbps"] = r["bytes"] / (r["duration_us"] / 1e6) / 1e9
            return r
    raise RuntimeError(f"wrk printed no summary:\n{out}\n{err}")


def wrk(base_url, script, conns, seconds, latency=False):
    """One wrk run (up to 2 threads); returns its summary with `errors` and `gbps` added."""
    threads = min(2, conns)
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    if latency:
        args.append("--latency")
    args.append(base_url)
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    return _wrk_summary(out.stdout, out.stderr)


def wrk_parallel(base_urls, script, seconds):
    """One `wrk -t1 -c4` per URL, all at once; returns the per-process summaries."""
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", "-c4", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for url in base_urls
    ]
    return [_wrk_summary(*p.communicate(timeout=seconds + 60)) for p in procs]


# ---------------------------------------------------------------------------------------------
# CPU accounting and the machine's load


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a running process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """User + system CPU seconds of this process's waited-for children so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds used over a span by given running processes (by pid) and by the child
    processes this script waits for in that span: the stable companion of a throughput, since
    it hardly depends on what else the machine runs. (Instruction counters are not available on
    every VM; CPU time is.)"""

    def __init__(self, pids=()):
        self.pids = list(pids)
        self.t0 = [proc_cpu_seconds(p) for p in self.pids]
        self.c0 = children_cpu_seconds()

    def seconds(self):
        own = sum(proc_cpu_seconds(p) - t for p, t in zip(self.pids, self.t0))
        return own + (children_cpu_seconds() - self.c0)


def process_tree(pid):
    """`pid` and its descendants (nginx's workers, for example)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        for task in pathlib.Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                pass
    return out


def tree_cpu_seconds(pids):
    """User + system CPU seconds of these processes and their descendants (/proc/PID/stat, which
    keeps the time of threads that have exited)."""
    total = 0.0
    for pid in {p for root in pids for p in process_tree(root)}:
        try:
            total += proc_cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_cpu_ns(pid):
    """Nanoseconds of CPU run by every thread of `pid` and of its descendants, from the scheduler
    (/proc/PID/task/TID/schedstat): finer than clock ticks, but a thread that exits takes its
    time with it (the servers measured this way keep their threads)."""
    total = 0
    for p in process_tree(pid):
        for task in pathlib.Path(f"/proc/{p}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


class ServerCpu:
    """CPU of a server's process tree over a span, for "CPU per request" beside a throughput
    (which moves with whatever else the shared machine runs; the CPU a server spends on a fixed
    request mix moves much less): `with ServerCpu(pid) as m: ...`, then `m.ns` and `m.per(n)`."""

    def __init__(self, pid):
        self.pid = pid
        self.ns = 0

    def __enter__(self):
        self._start = tree_cpu_ns(self.pid)
        return self

    def __exit__(self, *exc):
        self.ns = tree_cpu_ns(self.pid) - self._start
        return False

    def per(self, n):
        """Microseconds of CPU per unit (request) over the span."""
        return self.ns / 1e3 / max(1, n)


def ns_per_byte(cpu_seconds, nbytes):
    return cpu_seconds * 1e9 / max(1, nbytes)


def busy_at_start():
    """cpu_busy, with a warning when the machine is not idle before a benchmark starts."""
    busy = cpu_busy()
    if busy > 0.10:
        log(f"warning: the machine is {busy:.0%} busy before the benchmark starts; numbers will be noisy")
    return busy


def load_note(busy_before, foreign_cores, waits_left_out=False):
    """The report header's words on how busy the machine was."""
    waits = " (waits left out)" if waits_left_out else ""
    return (f"CPU busy before start {busy_before:.0%}, "
            f"CPU used by other processes during the run{waits} ≈ {foreign_cores:.2f} cores")


def cpu_busy(seconds=2.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), to flag a machine that is not idle."""

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

    def __init__(self, own_pids=()):
        self.own_pids = list(own_pids)
        self.t0, self.cpu0, self.own0 = time.time(), self._cpu(), self._own()
        self.skip_wall = self.skip_cpu = 0.0  # spans left out (waiting for other work), see pause
        self._paused = None

    def pause(self):
        """Leaves the span until `resume` out of the figure."""
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


# ---------------------------------------------------------------------------------------------
# The report


def table_row(cells):
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def table_head(head, align=None):
    """The head and rule lines of a Markdown table; `align` has an "l" or "r" per column."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in (align or "l" * len(head))) + "|"
    return [table_row(head), rule]


def table(rows, head=("Benchmark", "cairn", "reference", "ratio (cairn/ref)", "target", "result"), align=None):
    return "\n".join(table_head(head, align) + [table_row(r) for r in rows])


def anomalies_section():
    notes = "\n".join(f"- {a}" for a in ANOMALIES) or "- none"
    return f"Anomalies seen in cairn's behaviour:\n{notes}\n"


def finish(text, out):
    """Prints the report, writes it to `out`; the exit status says whether cairn misbehaved."""
    print(text)
    pathlib.Path(out).write_text(text)
    log(f"wrote {out}")
    return 1 if ANOMALIES else 0


def revision():
    """The commit measured, marked when crates/ has uncommitted changes."""
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
    return rev


def machine():
    return f"{os.cpu_count()} CPUs, {platform.machine()} Linux {platform.release()}"
