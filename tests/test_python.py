"""The `cairn` Python package (crates/cairn-py) against real nodes: a 3-node gossip cluster on a
folder origin with 1 MiB chunks. Exact bytes through every read path (file objects with random
seeks across chunk boundaries, ranges, `get` into a numpy array), writes at each durability and
read-after-write from another node, `sync` into the origin folder, errors as Python exceptions,
read-only keys, direct routing to the chunks' owners, failover when a node is killed, fsspec
with pandas / pyarrow / Hugging Face datasets, checkpoints with safetensors, and the datasets.

The package is installed by `cargo xtask deps` (a wheel built with maturin); without it the
module is skipped with the command that builds it."""

import asyncio
import io
import os
import pickle
import random
import signal
import tracemalloc

import pytest

import test_cluster
from conftest import ACCESS_KEY, SECRET_KEY, Node, payload
from test_cluster import Cluster
from test_gossip import all_alive, ids, wait_for

cairn = pytest.importorskip(
    "cairn", reason="the cairn wheel is not installed: maturin build -m crates/cairn-py/Cargo.toml && pip install it"
)
np = pytest.importorskip("numpy")

MIB = 1024 * 1024
RO_ACCESS, RO_SECRET = "reader", "reader-secret-key"
WB = '[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "500ms"\n'
CHUNKS = "cairn_client_chunks_total"


class KeyedNode(Node):
    """A node that also accepts a read-only access key."""

    def start(self):
        text = self.config_path.read_text()
        rw = f'{{ access_key = "{ACCESS_KEY}", secret_key = "{SECRET_KEY}" }}'
        ro = f'{{ access_key = "{RO_ACCESS}", secret_key = "{RO_SECRET}", read_only = true }}'
        if RO_ACCESS not in text:
            self.config_path.write_text(text.replace(f"keys = [{rw}]", f"keys = [{rw}, {ro}]"))
        super().start()


def make_cluster(tmp, n=3):
    """A gossip cluster of KeyedNodes, 1 MiB chunks, every member alive in every view."""
    orig = test_cluster.Node
    test_cluster.Node = KeyedNode
    try:
        c = Cluster(tmp, n, gossip=True, chunk=MIB, more_sections=WB)
    finally:
        test_cluster.Node = orig
    wait_for("the cluster to form", lambda: all_alive(c.nodes, ids(c)), 30)
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("py-cluster"))
    yield c
    c.stop(signal.SIGKILL)


def client(node, **kw):
    kw.setdefault("access_key", ACCESS_KEY)
    kw.setdefault("secret_key", SECRET_KEY)
    return cairn.Client(node.endpoint, **kw)


@pytest.fixture(scope="module")
def objects(cluster):
    """Objects in the origin folder: larger than a chunk, not chunk-aligned, and small ones."""
    sizes = [5 * MIB + 12345, 3 * MIB, MIB - 1, 1, 0, 2 * MIB + 7]
    objs = {f"py-objs/obj-{i}.bin": payload(s, seed=700 + i) for i, s in enumerate(sizes)}
    for k, b in objs.items():
        cluster.origin.put_direct(k, b)
    return objs


@pytest.fixture(scope="module")
def c(cluster):
    return client(cluster.nodes[0])


def fsspec_options(node):
    return {"endpoint": node.endpoint, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY}


# ---------------------------------------------------------------------------------------------
# Reads


def test_open_read_and_random_seeks_across_chunk_boundaries(c, objects):
    rnd = random.Random(5)
    for key, data in objects.items():
        with c.open(f"cairn://data/{key}") as f:
            assert f.seekable() and f.readable() and f.size == len(data)
            assert f.read() == data
            assert f.read(10) == b""
            for _ in range(40):
                # Positions next to chunk boundaries and anywhere.
                boundary = rnd.randrange(0, max(len(data) // MIB, 1) + 1) * MIB
                pos = rnd.choice([boundary - 3, boundary, boundary + 1, rnd.randrange(0, len(data) + 1)])
                pos = min(max(pos, 0), len(data))
                n = rnd.choice([1, 7, 4096, MIB, MIB + 3, 3 * MIB])
                assert f.seek(pos) == pos
                assert f.read(n) == data[pos:pos + n], (key, pos, n)
                assert f.tell() == min(pos + n, len(data))
            back = min(5, len(data))
            f.seek(-back, io.SEEK_END)
            assert f.read() == data[len(data) - back:]
            f.seek(0)
            f.seek(3, io.SEEK_CUR)
            assert f.read(4) == data[3:7]
        assert f.closed


def test_sequential_readinto_streams_exact_bytes(c, objects):
    key = "py-objs/obj-0.bin"
    data = objects[key]
    out = bytearray()
    with c.open(("data", key)) as f:
        buf = bytearray(300_000)  # not a divisor of the chunk size
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            out += view[:n]
    assert bytes(out) == data
    # And through io.BufferedReader / TextIOWrapper, which call readinto.
    with io.BufferedReader(c.open(f"data/{key}"), buffer_size=65536) as f:
        assert f.read(100) == data[:100]
        assert f.read() == data[100:]


def test_read_range_and_read_ranges_in_parallel(c, objects):
    d0 = objects["py-objs/obj-0.bin"]
    assert c.read_range("data", "py-objs/obj-0.bin", MIB - 10, 20) == d0[MIB - 10:MIB + 10]
    assert c.read_range("data", "py-objs/obj-0.bin", 5 * MIB) == d0[5 * MIB:]
    assert c.read_range("data", "py-objs/obj-0.bin", len(d0) + 5, 10) == b""
    rnd = random.Random(9)
    reqs = []
    for _ in range(60):
        key = rnd.choice(list(objects))
        size = len(objects[key])
        off = rnd.randrange(0, size + 1)
        length = rnd.choice([None, 1, 1000, MIB + 17])
        reqs.append(("data", key, off, length))
    got = c.read_ranges(reqs)
    for (b, k, off, length), g in zip(reqs, got):
        assert g == objects[k][off:None if length is None else off + length]


def test_get_into_a_numpy_array_fills_it_in_place(c, objects):
    key = "py-objs/obj-0.bin"
    data = objects[key]
    arr = np.zeros(len(data) + 100, dtype=np.uint8)
    before = arr.ctypes.data
    tracemalloc.start()
    try:
        n = c.get("data", key, out=arr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(data)
    assert arr.ctypes.data == before
    assert arr[:n].tobytes() == data and not arr[n:].any()
    # No Python object the size of the data was made on the way (bytes of 5 MiB would show).
    assert peak < 256 * 1024, peak
    # Any dtype and a memoryview work; a buffer too small or read-only is refused.
    f32 = np.empty(len(data) // 4 + 1, dtype=np.float32)
    assert c.get("data", key, out=f32) == len(data)
    assert f32.tobytes()[:len(data)] == data
    ba = bytearray(len(data))
    assert c.get("data", key, out=memoryview(ba)) == len(data) and bytes(ba) == data
    with pytest.raises(ValueError):
        c.get("data", key, out=np.empty(10, dtype=np.uint8))
    with pytest.raises(ValueError):
        c.get("data", key, out=b"x" * len(data))
    assert c.get("data", key) == data
    # read_into / read_ranges_into: ranges straight into slices of one array.
    out = np.zeros(3 * MIB, dtype=np.uint8)
    counts = c.read_ranges_into([("data", key, 0, out[:MIB]), ("data", key, 4 * MIB, out[MIB:2 * MIB]),
                                 ("data", "py-objs/obj-1.bin", 10, out[2 * MIB:])])
    assert counts == [MIB, MIB, MIB]
    assert out[:MIB].tobytes() == data[:MIB]
    assert out[MIB:2 * MIB].tobytes() == data[4 * MIB:5 * MIB]
    assert out[2 * MIB:].tobytes() == objects["py-objs/obj-1.bin"][10:MIB + 10]


def test_stat_ls_and_load(c, objects):
    st = c.stat("data", "py-objs/obj-0.bin")
    assert st.size == len(objects["py-objs/obj-0.bin"]) and st.chunk_size == MIB and st.etag
    assert st.as_dict()["key"] == "py-objs/obj-0.bin"
    names = {e["name"]: e["size"] for e in c.ls("data", "py-objs/", recursive=True)}
    assert names == {k: len(v) for k, v in objects.items()}
    top = c.ls("data", "", recursive=False)
    assert {"name": "py-objs/", "size": 0, "type": "directory"} in top
    assert c.load("data", "py-objs/") == sum(len(v) for v in objects.values())


def test_async_variants(c, objects):
    key = "py-objs/obj-2.bin"
    data = objects[key]
    ac = cairn.AsyncClient(client=c)

    async def main():
        st, whole, part, many, listing = await asyncio.gather(
            ac.stat("data", key), ac.get("data", key), ac.read_range("data", key, 10, 100),
            ac.read_ranges([("data", key, 0, 5), ("data", "py-objs/obj-0.bin", MIB, 5)]),
            ac.ls("data", "py-objs/", True))
        assert st.size == len(data) and whole == data and part == data[10:110]
        assert many == [data[:5], objects["py-objs/obj-0.bin"][MIB:MIB + 5]]
        assert len(listing) == len(objects)
        with pytest.raises(FileNotFoundError):
            await ac.get("data", "py-objs/missing")
        etag = await ac.put("data", "py-async/x.bin", b"async bytes", "local")
        assert etag and await ac.get("data", "py-async/x.bin") == b"async bytes"
        await ac.sync("data", "py-async/", 60)
        await ac.delete("data", "py-async/x.bin")

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Writes


@pytest.mark.parametrize("durability", ["local", "replicated"])
def test_put_then_read_from_another_node_and_sync_into_the_origin(cluster, c, durability):
    key = f"py-writes/{durability}.bin"
    data = payload(3 * MIB + 99, seed=81)
    assert c.put("data", key, data, durability)
    other = client(cluster.nodes[2])
    assert other.get("data", key) == data
    with other.open(f"cairn://data/{key}") as f:
        f.seek(MIB + 5)
        assert f.read(MIB) == data[MIB + 5:2 * MIB + 5]
    c.sync("data", "py-writes/", timeout=120)
    assert (cluster.origin.root / key).read_bytes() == data


def test_streaming_writer_acknowledges_on_close_and_aborts_on_error(cluster, c):
    key = "py-writes/streamed.bin"
    data = payload(37 * MIB + 3, seed=82)  # several 16 MiB parts
    with c.open(f"cairn://data/{key}", "wb", durability="local") as f:
        for at in range(0, len(data), 5 * MIB):
            f.write(memoryview(data)[at:at + 5 * MIB])
    assert f.etag
    assert client(cluster.nodes[1]).get("data", key) == data
    with pytest.raises(RuntimeError, match="boom"):
        with c.open("cairn://data/py-writes/aborted.bin", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError):
        c.stat("data", "py-writes/aborted.bin")
    c.sync("data", "py-writes/", timeout=120)
    assert (cluster.origin.root / key).read_bytes() == data
    c.delete("data", key)
    with pytest.raises(FileNotFoundError):
        c.stat("data", key)


# ---------------------------------------------------------------------------------------------
# Errors and credentials


def test_missing_key_and_bucket_are_file_not_found(c):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        c.stat("data", "py-objs/nope.bin")
    with pytest.raises(FileNotFoundError):
        c.open("cairn://data/py-objs/nope.bin")
    with pytest.raises(FileNotFoundError):
        c.read_range("nobucket", "x", 0, 1)
    with pytest.raises(FileNotFoundError):
        c.ls("nobucket", "")


def test_wrong_secret_is_permission_error_and_unreachable_is_connection_error(cluster):
    with pytest.raises(PermissionError) as e:
        client(cluster.nodes[0], secret_key="not-the-secret")
    assert "\n" not in str(e.value)
    with pytest.raises(PermissionError):
        client(cluster.nodes[0], access_key="nobody")
    from conftest import free_port

    with pytest.raises(ConnectionError) as e:
        cairn.Client(f"http://127.0.0.1:{free_port()}", ACCESS_KEY, SECRET_KEY)
    assert "\n" not in str(e.value)
    assert issubclass(cairn.Error, RuntimeError)


def test_read_only_key_reads_but_cannot_write(cluster, objects):
    ro = client(cluster.nodes[1], access_key=RO_ACCESS, secret_key=RO_SECRET)
    assert ro.get("data", "py-objs/obj-1.bin") == objects["py-objs/obj-1.bin"]
    assert ro.ls("data", "py-objs/", True)
    with pytest.raises(PermissionError):
        ro.put("data", "py-ro/x.bin", b"nope")
    with pytest.raises(PermissionError):
        with ro.open("cairn://data/py-ro/y.bin", "wb") as f:
            f.write(b"nope")
    with pytest.raises(PermissionError):
        ro.sync("data", "py-ro/", 5)


# ---------------------------------------------------------------------------------------------
# Routing and failover


def chunk_counts(cluster):
    return [n.metric(CHUNKS) for n in cluster.nodes]


def test_direct_route_reads_chunks_from_their_owners(cluster):
    data = {f"py-route/direct-{i}.bin": payload(4 * MIB, seed=900 + i) for i in range(4)}
    for k, b in data.items():
        cluster.origin.put_direct(k, b)
    d = client(cluster.nodes[0], route="direct")
    assert d.route == "direct" and d.direct_members() == 3
    before = chunk_counts(cluster)
    for k, b in data.items():
        assert d.get("data", k) == b
    grown = [a - b for a, b in zip(chunk_counts(cluster), before)]
    assert sum(grown) >= 16, grown
    # 16 chunks ranked over 3 nodes: the other nodes served their share, not the endpoint alone.
    assert sum(1 for g in grown if g > 0) >= 2 and grown[1] + grown[2] > 0, grown

    # route="local": every chunk through the endpoint node.
    local = client(cluster.nodes[0], route="local")
    assert local.direct_members() == 0
    before = chunk_counts(cluster)
    for k, b in data.items():
        assert local.get("data", k) == b
    grown = [a - b for a, b in zip(chunk_counts(cluster), before)]
    assert grown[0] >= 16 and grown[1] == grown[2] == 0, grown


def test_reads_fail_over_when_a_node_is_killed(tmp_path):
    cl = make_cluster(tmp_path)
    try:
        data = {f"py-failover/obj-{i}.bin": payload(3 * MIB + i, seed=950 + i) for i in range(6)}
        for k, b in data.items():
            cl.origin.put_direct(k, b)
        c = client(cl.nodes[0])
        assert c.direct_members() == 3
        f = c.open("cairn://data/py-failover/obj-0.bin")
        assert f.read(MIB) == data["py-failover/obj-0.bin"][:MIB]
        cl.nodes[2].stop(signal.SIGKILL)
        # Mid-read, and every other object: the killed node's chunks come from the next candidates.
        assert f.read() == data["py-failover/obj-0.bin"][MIB:]
        for k, b in data.items():
            assert c.get("data", k) == b
        got = c.read_ranges([("data", k, MIB - 5, MIB + 10) for k in data])
        assert got == [b[MIB - 5:2 * MIB + 5] for b in data.values()]
    finally:
        cl.stop(signal.SIGKILL)


def test_a_frozen_owner_costs_reads_a_hedge_delay_not_a_timeout(tmp_path):
    """An owner stopped with SIGSTOP still accepts connections (its kernel answers), so only the
    client's hedging keeps reads going: each chunk it owns is asked of the next candidate after
    the hedge delay (at most 2 s), never after the 30 s request deadline."""
    import time

    cl = make_cluster(tmp_path)
    frozen = cl.nodes[2]
    try:
        data = {f"py-frozen/obj-{i}.bin": payload(4 * MIB + i, seed=970 + i) for i in range(4)}
        for k, b in data.items():
            cl.origin.put_direct(k, b)
        c = client(cl.nodes[0])
        assert c.direct_members() == 3
        frozen.proc.send_signal(signal.SIGSTOP)
        t = time.time()
        for k, b in data.items():
            assert c.get("data", k) == b
        took = time.time() - t
        # 20 chunks, about a third owned by the frozen node, fetched 16 at a time.
        assert took < 15, f"reads took {took:.1f} s with one owner frozen"
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        cl.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# fsspec, pandas, pyarrow, datasets


def test_fsspec_filesystem(cluster, objects):
    fsspec = pytest.importorskip("fsspec")
    opts = fsspec_options(cluster.nodes[0])
    with fsspec.open("cairn://data/py-objs/obj-0.bin", "rb", **opts) as f:
        f.seek(MIB - 1)
        assert f.read(2) == objects["py-objs/obj-0.bin"][MIB - 1:MIB + 1]
    fs = fsspec.filesystem("cairn", **opts)
    assert type(fs).__name__ == "CairnFileSystem"
    assert fs.info("cairn://data/py-objs/obj-1.bin")["size"] == 3 * MIB
    assert fs.info("data/py-objs")["type"] == "directory"
    assert fs.isdir("data/py-objs") and fs.isfile("data/py-objs/obj-1.bin") and not fs.exists("data/py-objs/none")
    assert sorted(fs.ls("data/py-objs", detail=False)) == sorted(f"data/{k}" for k in objects)
    assert fs.find("cairn://data/py-objs") == sorted(f"data/{k}" for k in objects)
    assert sorted(fs.glob("data/py-objs/obj-[01].bin")) == ["data/py-objs/obj-0.bin", "data/py-objs/obj-1.bin"]
    d0 = objects["py-objs/obj-0.bin"]
    assert fs.cat_file("data/py-objs/obj-0.bin", 10, 20) == d0[10:20]
    assert fs.cat_file("data/py-objs/obj-0.bin", -10) == d0[-10:]
    assert fs.cat_ranges(["data/py-objs/obj-0.bin"] * 2 + ["data/py-objs/none"], [0, MIB, 0], [5, MIB + 5, 1]) [:2] == \
        [d0[:5], d0[MIB:MIB + 5]]
    assert isinstance(fs.cat_ranges(["data/py-objs/none"], [0], [1])[0], FileNotFoundError)
    fs.pipe_file("data/py-fs/a.bin", b"piped")
    assert fs.cat("cairn://data/py-fs/a.bin") == b"piped"
    src = cluster.tmp / "py-local.bin"
    src.write_bytes(payload(2 * MIB + 1, seed=3))
    fs.put_file(str(src), "data/py-fs/b.bin")
    dst = cluster.tmp / "py-local-back.bin"
    fs.get_file("data/py-fs/b.bin", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    fs.rm("data/py-fs", recursive=True)
    assert not fs.exists("data/py-fs/a.bin")


@pytest.fixture(scope="module")
def parquet(cluster):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frames = []
    c = client(cluster.nodes[0])
    for i in range(3):
        df = pd.DataFrame({"id": np.arange(i * 1000, (i + 1) * 1000), "x": np.random.default_rng(i).random(1000),
                           "s": [f"row-{j}" for j in range(i * 1000, (i + 1) * 1000)]})
        buf = io.BytesIO()
        df.to_parquet(buf, row_group_size=300)
        c.put("data", f"py-parquet/part-{i}.parquet", buf.getvalue(), "local")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_pandas_and_pyarrow_dataset_read_parquet(cluster, parquet):
    import pandas as pd
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    opts = fsspec_options(cluster.nodes[1])
    df = pd.read_parquet("cairn://data/py-parquet/part-1.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(df, parquet.iloc[1000:2000].reset_index(drop=True))
    import fsspec

    fs = fsspec.filesystem("cairn", **opts)
    table = ds.dataset("data/py-parquet", filesystem=PyFileSystem(FSSpecHandler(fs)), format="parquet").to_table()
    got = table.to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, parquet)
    # pyarrow wraps an fsspec filesystem itself too; a filter reads only some row groups.
    t2 = ds.dataset("data/py-parquet", filesystem=fs, format="parquet").to_table(filter=ds.field("id") < 150)
    assert sorted(t2.column("id").to_pylist()) == list(range(150))


def test_hugging_face_datasets_load_parquet(cluster, parquet, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    d = datasets.load_dataset("parquet", data_files="cairn://data/py-parquet/part-*.parquet",
                              storage_options=fsspec_options(cluster.nodes[0]), cache_dir=str(tmp_path / "hf"),
                              split="train")
    assert len(d) == len(parquet)
    assert sorted(d["id"]) == list(range(len(parquet)))


# ---------------------------------------------------------------------------------------------
# Checkpoints and datasets


def test_checkpoint_save_sync_load_with_safetensors(cluster):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save as st_save

    import cairn.checkpoint as ckpt

    c = client(cluster.nodes[0])
    url = "cairn://data/py-ckpt/step-10"
    states = {}
    for rank in range(2):
        rng = np.random.default_rng(rank)
        states[rank] = {"w": rng.random((300, 700), dtype=np.float32), "b": rng.integers(0, 9, 1000, dtype=np.int64),
                        "m": np.arange(12, dtype=np.float64).reshape(3, 4)}
        path = ckpt.save(states[rank], url, rank=rank, durability="replicated", client=c)
        assert path == f"cairn://data/py-ckpt/step-10/rank-{rank}.safetensors"
    ckpt.save(b"raw optimizer bytes", url, rank=5, client=c)
    ckpt.sync(url, timeout=120, client=c)
    for rank in range(2):
        on_disk = (cluster.origin.root / f"py-ckpt/step-10/rank-{rank}.safetensors").read_bytes()
        assert on_disk == st_save(states[rank])
    other = client(cluster.nodes[2])
    for rank in range(2):
        back = ckpt.load(url, rank=rank, client=other)
        assert set(back) == set(states[rank])
        for k, v in states[rank].items():
            np.testing.assert_array_equal(back[k], v)
        # Into preallocated arrays, in place.
        arrays = {k: np.empty_like(v) for k, v in states[rank].items()}
        addrs = {k: a.ctypes.data for k, a in arrays.items()}
        ckpt.load_into(url, arrays, rank=rank, client=other)
        for k, v in states[rank].items():
            np.testing.assert_array_equal(arrays[k], v)
            assert arrays[k].ctypes.data == addrs[k]
        with pytest.raises(ValueError):
            ckpt.load_into(url, {**arrays, "w": np.empty((700, 300), np.float32)}, rank=rank, client=other)
    assert ckpt.load(url, rank=5, client=other) == b"raw optimizer bytes"
    # Model weights from one safetensors file, as views into one buffer read in parallel.
    weights = ckpt.load_file("cairn://data/py-ckpt/step-10/rank-1.safetensors", client=other)
    for k, v in states[1].items():
        np.testing.assert_array_equal(weights[k], v)


def test_map_and_iterable_datasets_shard_by_rank_and_worker(cluster, objects):
    from cairn.data import ObjectDataset, ObjectIterableDataset

    c = client(cluster.nodes[0])
    keys = sorted(objects)
    ds = ObjectDataset("cairn://data/py-objs/", client=c)
    assert len(ds) == len(objects) and ds.keys == keys
    assert ds[0] == objects[keys[0]] and ds[-1] == objects[keys[-1]]
    assert ds.__getitems__([1, 2]) == [objects[keys[1]], objects[keys[2]]]
    sized = ObjectDataset("cairn://data/py-objs/", transform=len, client=c)
    assert [sized[i] for i in range(len(sized))] == [len(objects[k]) for k in keys]

    # 2 ranks x 2 workers: every object exactly once, none twice.
    seen = []
    for rank in range(2):
        for worker in range(2):
            it = ObjectIterableDataset("cairn://data/py-objs/", transform=lambda k, b: (k, b), with_key=True,
                                       rank=rank, world_size=2, worker_id=worker, num_workers=2, client=c, batch=2)
            got = list(it)
            assert all(objects[k] == b for k, b in got)
            seen += [k for k, _ in got]
    assert sorted(seen) == keys
    # From the environment, shuffled the same way on every process.
    os.environ.update(RANK="1", WORLD_SIZE="2")
    try:
        a = ObjectIterableDataset("cairn://data/py-objs/", client=c, shuffle=True, seed=3)
        b = ObjectIterableDataset("cairn://data/py-objs/", client=c, shuffle=True, seed=3)
        assert a.shard() == b.shard() and len(a.shard()) == len(keys) // 2
    finally:
        del os.environ["RANK"], os.environ["WORLD_SIZE"]
    # Picklable (spawned data loader workers), with the keys listed once.
    again = pickle.loads(pickle.dumps(ds))
    assert again.keys == keys and again[1] == objects[keys[1]]


_FORKED = {}


def _read_in_child(i):
    ds = _FORKED["ds"]
    return i, ds[i]


def test_a_forked_data_loader_worker_and_threads_read_through_the_parents_client(cluster, objects):
    """A data loader forks its workers after the dataset (and its client) exist: a child has
    the parent's client but not its I/O threads, and connects again on its first call."""
    import multiprocessing
    import threading

    from cairn.data import ObjectDataset

    c = client(cluster.nodes[0])
    ds = ObjectDataset("cairn://data/py-objs/", client=c)
    assert ds[0] == objects[ds.keys[0]]  # the parent's runtime and connections exist now
    _FORKED["ds"] = ds
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = dict(pool.map(_read_in_child, range(len(ds)), chunksize=1))
    assert got == {i: objects[k] for i, k in enumerate(ds.keys)}
    # Threads share one client (the GIL is released while each waits).
    results, errors = {}, []

    def read(k):
        try:
            results[k] = c.get("data", k)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(k,)) for k in objects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == objects
