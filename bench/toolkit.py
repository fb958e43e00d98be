"""What every cairn benchmark script needs: processes, ports, cairn nodes, the cloud-like origin,
test data, CPU accounting and the report's header.

Imported by the scripts in bench/ (they run as `python3 bench/NAME.py`, so this folder is on
sys.path). Every process started through `start` is stopped by `stop_all`, in reverse order.
"""

import hashlib
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 1 << 20
GIB = 1 << 30

PROCS = []  # every process started here, stopped in reverse order at the end
ANOMALIES = []  # anything in cairn's behaviour that looked wrong


def log(msg, tag="bench"):
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def anomaly(msg):
    log("ANOMALY: " + msg)
    ANOMALIES.append(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60.0, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
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


def stop_all():
    for proc in reversed(list(PROCS)):
        try:
            stop(proc)
        except Exception as e:  # keep stopping the others
            log(f"stopping {proc.args[0]}: {e}")


def cairn_binary():
    """The cairn binary under test ($CAIRN_BIN or target/release/cairn), checked to exist."""
    path = pathlib.Path(os.environ.get("CAIRN_BIN", str(ROOT / "target" / "release" / "cairn"))).resolve()
    if not os.access(path, os.X_OK):
        sys.exit(f"cairn binary not found at {path} (cargo build --release -p cairn)")
    return str(path)


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
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
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
        log_text = self.log_path.read_text(errors="replace")
        bad = [l for l in log_text.splitlines() if " ERROR " in l or "panicked" in l]
        if bad:
            anomaly(f"{self.name}: {len(bad)} ERROR/panic line(s) in its log, first: {bad[0][:300]}")


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


def ns_per_byte(cpu_seconds, nbytes):
    return cpu_seconds * 1e9 / max(1, nbytes)


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
        wall = max(1e-6, time.time() - self.t0)
        return max(0.0, (self._cpu() - self.cpu0) - (self._own() - self.own0)) / wall


def table(rows, head=("Benchmark", "cairn", "reference", "ratio (cairn/ref)", "target", "result")):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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
