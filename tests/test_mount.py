"""`cairn mount` over a 3-node gossip cluster with a local-folder origin and 1 MiB chunks: reads
through cat, dd, Python file objects and random seeks give the objects' exact bytes; `ls -l` shows
sizes and prefixes as directories; a file written with `cp` reads back through the mount and
through S3, and is in the origin folder when close returns (durability origin); what object
storage cannot do fails with the documented errno; SIGTERM unmounts; a sequential read survives a
kill -9 and restart of the mount's endpoint node; an object changed at the origin reads as its
new version once the metadata TTLs have passed.

Needs root and /dev/fuse (the mount is fuser's pure-Rust mount(2), no libfuse)."""

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import ACCESS_KEY, CAIRN_BIN, SECRET_KEY, payload
from test_cluster import Cluster

MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="cairn mount needs root and /dev/fuse (fuser mounts with mount(2) itself)",
)


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Mount:
    """A `cairn mount` process on `dir`, through `node`."""

    def __init__(self, node, dir, *args, source="s3://data"):
        self.dir = str(dir)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(os.path.dirname(self.dir), os.path.basename(self.dir) + ".log")
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, CAIRN_ACCESS_KEY=ACCESS_KEY, CAIRN_SECRET_KEY=SECRET_KEY, CAIRN_LOG="info")
        self.proc = subprocess.Popen(
            [CAIRN_BIN, "mount", source, self.dir, "--endpoint", node.endpoint, *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + 30
        while not mounted(self.dir):
            if self.proc.poll() is not None:
                raise RuntimeError(f"cairn mount exited {self.proc.returncode}: {self.text()}")
            if time.time() > deadline:
                raise RuntimeError(f"not mounted after 30 s: {self.text()}")
            time.sleep(0.05)

    def text(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if mounted(self.dir):
            subprocess.run(["umount", "-l", self.dir], capture_output=True)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 3, gossip=True, chunk=MIB, metadata="ttl:1s")
    yield c
    c.stop(signal.SIGKILL)


@pytest.fixture
def mount(cluster, tmp_path):
    made = []

    def make(*args, node=1, **kw):
        m = Mount(cluster.nodes[node], tmp_path / f"mnt{len(made)}", *args, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def put(cluster, key, size, seed):
    data = payload(size, seed=seed)
    cluster.origin.put_direct(key, data)
    return data


def test_reads_give_exact_bytes(cluster, mount):
    big = put(cluster, "ds/big.bin", 21 * MIB + 4321, seed=1)
    small = put(cluster, "ds/sub/small.txt", 1000, seed=2)
    m = mount("--metadata-ttl", "1s")
    path = os.path.join(m.dir, "ds", "big.bin")

    out = subprocess.run(["cat", path], capture_output=True, check=True).stdout
    assert out == big
    dd = subprocess.run(["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True, check=True).stdout
    assert dd == big
    with open(path, "rb") as f:
        assert f.read() == big
    with open(os.path.join(m.dir, "ds", "sub", "small.txt"), "rb") as f:
        assert f.read() == small

    # Random reads across chunk boundaries, through an unbuffered descriptor.
    rng = random.Random(7)
    with open(path, "rb", buffering=0) as f:
        for _ in range(60):
            off = rng.randrange(0, len(big))
            n = rng.choice([1, 4096, 100_000, MIB, 3 * MIB + 17])
            f.seek(off)
            assert f.read(n) == big[off:off + n], (off, n)
        for off in (MIB - 1, 2 * MIB - 10, len(big) - 5):
            assert os.pread(f.fileno(), 64, off) == big[off:off + 64]
    # A missing file is ENOENT.
    with pytest.raises(FileNotFoundError):
        open(os.path.join(m.dir, "ds", "missing.bin"), "rb")


def test_ls_shows_sizes_and_prefixes_as_directories(cluster, mount):
    put(cluster, "top.bin", 3 * MIB + 1, seed=3)
    put(cluster, "a/b/c/deep.bin", 12345, seed=4)
    put(cluster, "a/one.txt", 5, seed=5)
    m = mount()
    assert sorted(os.listdir(m.dir)) == ["a", "top.bin"]
    assert sorted(os.listdir(os.path.join(m.dir, "a"))) == ["b", "one.txt"]
    assert os.path.isdir(os.path.join(m.dir, "a", "b", "c"))
    assert os.stat(os.path.join(m.dir, "a", "b", "c", "deep.bin")).st_size == 12345
    assert os.stat(os.path.join(m.dir, "top.bin")).st_size == 3 * MIB + 1
    ls = subprocess.run(["ls", "-l", m.dir], capture_output=True, check=True, text=True).stdout
    rows = {line.split()[-1]: line.split() for line in ls.splitlines() if not line.startswith("total")}
    assert rows["a"][0].startswith("d")
    assert rows["top.bin"][0].startswith("-") and rows["top.bin"][4] == str(3 * MIB + 1)
    ls = subprocess.run(["ls", "-lR", m.dir], capture_output=True, check=True, text=True).stdout
    assert "deep.bin" in ls and "12345" in ls


def test_a_copied_file_reads_back_and_is_in_the_origin_at_close(cluster, mount, tmp_path):
    m = mount("--durability", "origin", "--metadata-ttl", "1s")
    data = payload(37 * MIB + 99, seed=6)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    os.makedirs(os.path.join(m.dir, "out", "run1"))
    dst = os.path.join(m.dir, "out", "run1", "ckpt.bin")
    subprocess.run(["cp", str(src), dst], check=True)
    # Durability origin: in the origin folder when close (cp) returned.
    assert (cluster.origin.root / "out" / "run1" / "ckpt.bin").read_bytes() == data
    with open(dst, "rb") as f:
        assert f.read() == data
    assert os.stat(dst).st_size == len(data)
    s3 = cluster.nodes[0].s3()
    assert s3.get_object(Bucket="data", Key="out/run1/ckpt.bin")["Body"].read() == data
    # A small file written from Python, and an empty one.
    with open(os.path.join(m.dir, "out", "note.txt"), "wb") as f:
        f.write(b"hello\n")
    assert (cluster.origin.root / "out" / "note.txt").read_bytes() == b"hello\n"
    open(os.path.join(m.dir, "out", "empty"), "wb").close()
    assert (cluster.origin.root / "out" / "empty").read_bytes() == b""
    assert sorted(os.listdir(os.path.join(m.dir, "out"))) == ["empty", "note.txt", "run1"]
    # Replacing a file whole (O_TRUNC) is a new object.
    with open(os.path.join(m.dir, "out", "note.txt"), "wb") as f:
        f.write(b"bye\n")
    assert (cluster.origin.root / "out" / "note.txt").read_bytes() == b"bye\n"
    # unlink deletes the object.
    os.unlink(os.path.join(m.dir, "out", "empty"))
    assert not (cluster.origin.root / "out" / "empty").exists()
    assert "empty" not in os.listdir(os.path.join(m.dir, "out"))


def test_what_object_storage_cannot_do_fails_with_the_documented_errno(cluster, mount):
    put(cluster, "d/x.bin", 1000, seed=8)
    m = mount("--durability", "origin")
    d = os.path.join(m.dir, "d")
    # Renames: EXDEV (a directory or a file).
    with pytest.raises(OSError) as e:
        os.rename(d, os.path.join(m.dir, "d2"))
    assert e.value.errno == errno.EXDEV
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(d, "x.bin"), os.path.join(d, "y.bin"))
    assert e.value.errno == errno.EXDEV
    # Writing into an existing object in place, or appending: EOPNOTSUPP.
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as e:
            os.open(os.path.join(d, "x.bin"), flags)
        assert e.value.errno == errno.EOPNOTSUPP, flags
    assert "cannot be changed in place" in m.text()
    # A random write into a new file: EOPNOTSUPP, and nothing is uploaded.
    fd = os.open(os.path.join(d, "holes.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"a" * 10)
    with pytest.raises(OSError) as e:
        os.pwrite(fd, b"b", 100)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError):
        os.close(fd)
    assert not (cluster.origin.root / "d" / "holes.bin").exists()
    # mkdir makes a directory of this mount; rmdir of an empty one works; of a full one fails.
    os.mkdir(os.path.join(m.dir, "fresh"))
    assert os.path.isdir(os.path.join(m.dir, "fresh"))
    os.rmdir(os.path.join(m.dir, "fresh"))
    assert not os.path.exists(os.path.join(m.dir, "fresh"))
    with pytest.raises(OSError) as e:
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY
    # `mv` of a directory falls back to copy and delete, which the mount supports.
    subprocess.run(["mv", d, os.path.join(m.dir, "moved")], check=True)
    assert (cluster.origin.root / "moved" / "x.bin").read_bytes() == payload(1000, seed=8)
    assert not (cluster.origin.root / "d" / "x.bin").exists()


def test_sigterm_unmounts_and_exits_0(cluster, mount):
    m = mount()
    assert mounted(m.dir)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0
    assert not mounted(m.dir)
    assert "unmounted" in m.text()


def test_a_sequential_read_survives_a_restart_of_the_endpoint_node(cluster, mount):
    size = 96 * MIB + 7
    data = put(cluster, "big/restart.bin", size, seed=9)
    put(cluster, "later/x.txt", 10, seed=10)
    m = mount("--retry-for", "60s")
    endpoint = cluster.nodes[1]
    progress, got, failure = threading.Event(), bytearray(), []

    def reader():
        try:
            with open(os.path.join(m.dir, "big", "restart.bin"), "rb", buffering=0) as f:
                while True:
                    b = f.read(MIB)
                    if not b:
                        return
                    got.extend(b)
                    if len(got) >= 8 * MIB:
                        progress.set()
                        time.sleep(0.05)  # keep the read going while the node restarts
        except Exception as e:  # noqa: BLE001 (reported below)
            failure.append(e)
            progress.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert progress.wait(60)
    endpoint.stop(signal.SIGKILL)
    at_kill = len(got)
    # A listing while the endpoint is down (listings go through it) waits for it to return.
    listed = []
    lister = threading.Thread(target=lambda: listed.append(os.listdir(os.path.join(m.dir, "later"))), daemon=True)
    lister.start()
    time.sleep(2.0)
    endpoint.start()  # same config, same cache directory
    at_restart = len(got)
    t.join(180)
    lister.join(60)
    assert listed == [["x.txt"]]
    print(f"read {at_kill >> 20} MiB at the kill, {at_restart >> 20} MiB at the restart, of {size >> 20} MiB")
    assert at_restart < size, "the read ended before the node was back: the test proves nothing"
    assert not t.is_alive(), "the read did not finish"
    assert not failure, failure
    assert len(got) == size
    assert bytes(got) == data


def test_a_changed_object_reads_as_its_new_version_after_the_metadata_ttl(cluster, mount):
    v1 = put(cluster, "ch/obj.bin", 3 * MIB + 5, seed=11)
    m = mount("--metadata-ttl", "1s")
    path = os.path.join(m.dir, "ch", "obj.bin")
    with open(path, "rb") as f:
        assert f.read() == v1
    with open(path, "rb") as f:  # same version: served from the kernel's page cache
        assert f.read() == v1
    v2 = put(cluster, "ch/obj.bin", 2 * MIB + 77, seed=12)
    time.sleep(2.5)  # the node's metadata TTL (1 s) and the mount's (1 s)
    assert os.stat(path).st_size == len(v2)
    with open(path, "rb") as f:
        assert f.read() == v2
    v3 = put(cluster, "ch/obj.bin", 5 * MIB + 1, seed=13)  # and a longer one
    time.sleep(2.5)
    with open(path, "rb") as f:
        assert f.read() == v3
