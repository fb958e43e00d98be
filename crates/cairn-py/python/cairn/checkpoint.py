"""Per-rank checkpoints and safetensors weights in a cairn pool, with numpy and safetensors
(imported when used; no torch).

    ckpt = "cairn://ckpt/run-7/step-1000"
    cairn.checkpoint.save({"w": w, "b": b}, ckpt, rank=rank, durability="local")  # rank-N.safetensors
    cairn.checkpoint.sync(ckpt)                            # every rank's shard is in the origin
    state = cairn.checkpoint.load(ckpt, rank=rank)         # {"w": ndarray, "b": ndarray}
    cairn.checkpoint.load_into(ckpt, {"w": w, "b": b})     # into preallocated arrays, in place

A mapping of numpy arrays is stored as safetensors (`rank-N.safetensors`); bytes are stored as
they are (`rank-N.bin`). `save` returns once the shard is acknowledged at `durability`
(`local`: on the writing node's disk; `replicated`; `origin`), and `sync` waits until every
shard under the prefix is in the origin."""

import json
import os
import struct

from . import Client, split_path

#: safetensors dtype names and the numpy dtypes they are.
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}

_default = {}


def _client(client):
    if client is not None:
        return client
    pid = os.getpid()
    if pid not in _default:
        _default.clear()
        _default[pid] = Client()
    return _default[pid]


def _rank(rank):
    return int(os.environ.get("RANK", 0)) if rank is None else rank


def shard_path(url, rank=None, raw=False):
    """(bucket, key) of a rank's shard under the checkpoint prefix `url`."""
    bucket, prefix = split_path(url)
    name = f"rank-{_rank(rank)}.{'bin' if raw else 'safetensors'}"
    return bucket, f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name


def save(state, url, rank=None, durability="local", client=None, metadata=None):
    """Writes this rank's shard (a mapping of numpy arrays as safetensors, or bytes as they are);
    returns its `cairn://` path once acknowledged at `durability`."""
    raw = isinstance(state, (bytes, bytearray, memoryview))
    if raw:
        data = state
    else:
        from safetensors.numpy import save as st_save

        data = st_save(dict(state), metadata=metadata)
    bucket, key = shard_path(url, rank, raw)
    _client(client).put(bucket, key, data, durability)
    return f"cairn://{bucket}/{key}"


def sync(url, timeout=None, client=None):
    """Waits until every shard written under the checkpoint prefix is in the origin."""
    bucket, prefix = split_path(url)
    _client(client).sync(bucket, prefix, timeout)


def load(url, rank=None, client=None):
    """This rank's shard: a dict of numpy arrays (safetensors), or bytes for a raw shard."""
    c = _client(client)
    bucket, key = shard_path(url, rank)
    try:
        data = c.get(bucket, key)
    except FileNotFoundError:
        bucket, key = shard_path(url, rank, raw=True)
        return c.get(bucket, key)
    from safetensors.numpy import load as st_load

    return st_load(data)


def header(url, client=None):
    """The safetensors header of the object `url` (a dict) and where its data starts."""
    c = _client(client)
    bucket, key = split_path(url)
    (n,) = struct.unpack("<Q", c.read_range(bucket, key, 0, 8))
    return json.loads(c.read_range(bucket, key, 8, n)), 8 + n


def load_file(url, client=None):
    """Every tensor of the safetensors object `url` (model weights, say) as numpy arrays that
    are views into one buffer the object was read into in parallel: no copy but the one from
    the network (the arrays are writable and share that buffer)."""
    import numpy as np

    c = _client(client)
    bucket, key = split_path(url)
    size = c.stat(bucket, key).size
    buf = np.empty(size, dtype=np.uint8)
    c.get(bucket, key, out=buf)
    (n,) = struct.unpack("<Q", buf[:8].tobytes())
    hdr = json.loads(buf[8:8 + n].tobytes())
    start = 8 + n
    out = {}
    for name, meta in hdr.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"{name}: dtype {meta['dtype']} has no numpy equivalent")
        begin, end = meta["data_offsets"]
        out[name] = buf[start + begin:start + end].view(dtype).reshape(meta["shape"])
    return out


def load_into(url, arrays, rank=None, client=None, strict=True):
    """Fills preallocated numpy arrays (name -> C-contiguous array of the saved dtype and shape)
    from this rank's shard under `url`, all tensors in parallel, each straight into its array.
    `strict`: every tensor of the shard must be given."""
    c = _client(client)
    bucket, key = shard_path(url, rank)
    hdr, start = header(f"cairn://{bucket}/{key}", c)
    names = set(hdr) - {"__metadata__"}
    if strict and names != set(arrays):
        raise KeyError(f"the shard holds {sorted(names)}, arrays given for {sorted(arrays)}")
    ranges = []
    for name, arr in arrays.items():
        if name not in hdr:
            raise KeyError(f"{name}: not in cairn://{bucket}/{key}")
        meta = hdr[name]
        begin, end = meta["data_offsets"]
        want = DTYPES.get(meta["dtype"])
        if want is not None and str(arr.dtype) != want:
            raise ValueError(f"{name}: saved as {want}, array is {arr.dtype}")
        if list(arr.shape) != list(meta["shape"]) or arr.nbytes != end - begin:
            raise ValueError(f"{name}: saved with shape {meta['shape']}, array has {list(arr.shape)}")
        ranges.append((bucket, key, start + begin, arr))
    c.read_ranges_into(ranges)
    return arrays
