"""cairn: the Python client of a cairn pool.

    import cairn
    c = cairn.Client("http://127.0.0.1:9000")      # or CAIRN_ENDPOINT and friends
    with c.open("cairn://data/train/shard-0000.bin") as f:
        f.seek(1 << 20)
        head = f.read(4096)
    parts = c.read_ranges([("data", "a.bin", 0, 4096), ("data", "b.bin", 8192, 4096)])

Each chunk is read from its owner node directly (`route="direct"`, the default) or through the
endpoint node (`route="local"`); the GIL is released during every request. `cairn.fsspec`
registers `cairn://` with fsspec (pandas, pyarrow, Hugging Face datasets), `cairn.data` has
map-style and iterable datasets over a prefix, `cairn.checkpoint` saves and loads per-rank
safetensors checkpoints.
"""

from ._native import Error, Stat
from ._native import Client as _NativeClient
from ._file import ObjectReader, ObjectWriter

__all__ = ["Client", "AsyncClient", "Error", "Stat", "ObjectReader", "ObjectWriter", "split_path"]

_SCHEMES = ("cairn://", "s3://")


def split_path(path):
    """`cairn://bucket/key`, `s3://bucket/key`, `bucket/key` or `(bucket, key)` as (bucket, key)."""
    if isinstance(path, (tuple, list)):
        bucket, key = path
        return bucket, key
    path = str(path)
    for scheme in _SCHEMES:
        if path.startswith(scheme):
            path = path[len(scheme):]
            break
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        raise ValueError(f"{path!r} names no bucket: expected cairn://BUCKET/KEY")
    return bucket, key


class Client(_NativeClient):
    """A connection to a cairn pool. Arguments left out come from `CAIRN_ENDPOINT`,
    `CAIRN_ACCESS_KEY`, `CAIRN_SECRET_KEY`, `CAIRN_REGION` and `CAIRN_ROUTE`.

    Blocking calls (each with an `*_async` twin that returns an awaitable): `stat`,
    `read_range`, `read_ranges`, `get` (with `out=` a caller's buffer), `read_into`,
    `read_ranges_into`, `put`, `delete`, `ls`, `sync`, `load`; and `open` for file objects."""

    def open(self, path, mode="rb", durability=None):
        """A binary file object: `"rb"` a seekable reader of the object's current version,
        `"wb"` a streaming writer whose `close()` returns once the object is acknowledged at
        `durability` (`"local"`, `"replicated"`, `"origin"`; None: the origin's default)."""
        bucket, key = split_path(path)
        if not key:
            raise ValueError(f"{path!r} names no object")
        name = f"cairn://{bucket}/{key}"
        if mode in ("rb", "r"):
            return ObjectReader(self.reader(bucket, key), name)
        if mode in ("wb", "w", "xb"):
            return ObjectWriter(self.writer(bucket, key, durability), name)
        raise ValueError(f"mode {mode!r}: cairn files open as 'rb' or 'wb'")

    def __reduce__(self):
        # A data loader's worker gets a client of its own, connected on first use there.
        return (_reconnect, self._args())


def _reconnect(endpoint, access_key, secret_key, route, region, timeout, parallel):
    return Client(endpoint, access_key, secret_key, route, region=region, timeout=timeout, parallel=parallel)


class AsyncClient:
    """The client's calls as coroutines for asyncio (the requests run on cairn's own I/O
    threads; the event loop is never blocked)."""

    def __init__(self, *args, client=None, **kwargs):
        self.client = client if client is not None else Client(*args, **kwargs)

    async def stat(self, bucket, key):
        return await self.client.stat_async(bucket, key)

    async def read_range(self, bucket, key, offset=0, length=None):
        return await self.client.read_range_async(bucket, key, offset, length)

    async def read_ranges(self, ranges):
        return await self.client.read_ranges_async(list(ranges))

    async def get(self, bucket, key):
        return await self.client.get_async(bucket, key)

    async def put(self, bucket, key, data, durability=None):
        return await self.client.put_async(bucket, key, data, durability)

    async def delete(self, bucket, key):
        return await self.client.delete_async(bucket, key)

    async def ls(self, bucket, prefix="", recursive=False):
        return await self.client.ls_async(bucket, prefix, recursive)

    async def sync(self, bucket, prefix="", timeout=None):
        return await self.client.sync_async(bucket, prefix, timeout)

    async def load(self, bucket, prefix=""):
        return await self.client.load_async(bucket, prefix)
