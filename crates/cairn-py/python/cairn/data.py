"""Datasets over the objects under a prefix, for PyTorch-style data loading without torch at
import time.

- `ObjectDataset`: map-style; `len()` objects, `ds[i]` the bytes of the i-th (sorted by key),
  or `transform(bytes)`.
- `ObjectIterableDataset`: iterable; each (rank, worker) pair reads its own share of the
  objects, fetched in parallel batches.

When torch is already imported, instances are also instances of `torch.utils.data.Dataset` /
`IterableDataset`, so `DataLoader` treats them as it should; nothing here imports torch."""

import os
import random
import sys

from . import Client, split_path

#: Objects one iterator asks for at once (one `read_ranges` call).
BATCH = 16


def _torch_base(name):
    """torch.utils.data.<name> when torch is already imported (never imports it)."""
    if "torch" not in sys.modules:
        return None
    try:
        import torch.utils.data as tud
    except ImportError:
        return None
    return getattr(tud, name, None)


_with_torch = {}


class _TorchAware:
    """Adds the torch base class to the instance's class when torch is loaded."""

    _torch_base_name = "Dataset"

    def __new__(cls, *args, **kwargs):
        base = _torch_base(cls._torch_base_name)
        if base is not None and not issubclass(cls, base):
            key = (cls, base)
            if key not in _with_torch:
                _with_torch[key] = type(cls.__name__, (cls, base), {"__module__": cls.__module__, "_plain_cls": cls})
            cls = _with_torch[key]
        obj = object.__new__(cls)
        obj._init_args = (args, kwargs)
        return obj

    def __reduce__(self):
        # Rebuilt from the arguments (the torch-aware class is made again in the worker).
        plain = type(self).__dict__.get("_plain_cls", type(self))
        args, kwargs = self._init_args
        # The keys as listed here: every worker shards the same list.
        return (_rebuild, (plain, args, dict(kwargs, keys=self.keys)))


def _rebuild(cls, args, kwargs):
    return cls(*args, **kwargs)


def _client(client, client_kwargs):
    if client is not None:
        return client
    return Client(**(client_kwargs or {}))


def _keys(client, bucket, prefix):
    return sorted(e["name"] for e in client.ls(bucket, prefix, True) if e["type"] == "file")


class ObjectDataset(_TorchAware):
    """The objects under `cairn://bucket/prefix`, in key order: `ds[i]` is the i-th object's
    bytes (or `transform(bytes)`, or `transform(key, bytes)` when `with_key`)."""

    _torch_base_name = "Dataset"

    def __init__(self, url, transform=None, with_key=False, client=None, client_kwargs=None, keys=None):
        self.bucket, self.prefix = split_path(url)
        self.transform = transform
        self.with_key = with_key
        self._client_obj = client
        self.client_kwargs = client_kwargs
        self.keys = list(keys) if keys is not None else _keys(self.client, self.bucket, self.prefix)

    @property
    def client(self):
        if self._client_obj is None:
            self._client_obj = _client(None, self.client_kwargs)
        return self._client_obj

    def __len__(self):
        return len(self.keys)

    def _apply(self, key, data):
        if self.transform is None:
            return data
        return self.transform(key, data) if self.with_key else self.transform(data)

    def __getitem__(self, i):
        key = self.keys[i]
        return self._apply(key, self.client.get(self.bucket, key))

    def __getitems__(self, indices):
        """A batch in one parallel fetch (DataLoader calls this for batched map-style reads)."""
        keys = [self.keys[i] for i in indices]
        datas = self.client.read_ranges([(self.bucket, k, 0, None) for k in keys])
        return [self._apply(k, d) for k, d in zip(keys, datas)]


def shard_info(rank=None, world_size=None, worker_id=None, num_workers=None):
    """(shard index, shard count) of this process: rank and world size from the arguments or
    `RANK`/`WORLD_SIZE`, the data loader worker from the arguments, torch's worker info, or
    `CAIRN_WORKER_ID`/`CAIRN_NUM_WORKERS`."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if worker_id is None or num_workers is None:
        info = None
        if "torch" in sys.modules:
            try:
                from torch.utils.data import get_worker_info

                info = get_worker_info()
            except ImportError:
                info = None
        if info is not None:
            worker_id, num_workers = info.id, info.num_workers
        else:
            worker_id = int(os.environ.get("CAIRN_WORKER_ID", 0)) if worker_id is None else worker_id
            num_workers = int(os.environ.get("CAIRN_NUM_WORKERS", 1)) if num_workers is None else num_workers
    return rank * num_workers + worker_id, world_size * num_workers


class ObjectIterableDataset(_TorchAware):
    """The objects under `cairn://bucket/prefix`, each yielded once across all ranks and
    workers: this process's share is every `count`-th key from `index` (see `shard_info`),
    optionally shuffled (the same order on every process for one `seed` and `epoch`)."""

    _torch_base_name = "IterableDataset"

    def __init__(self, url, transform=None, with_key=False, shuffle=False, seed=0, rank=None, world_size=None,
                 worker_id=None, num_workers=None, client=None, client_kwargs=None, keys=None, batch=BATCH):
        self.bucket, self.prefix = split_path(url)
        self.transform = transform
        self.with_key = with_key
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = rank, world_size
        self.worker_id, self.num_workers = worker_id, num_workers
        self._client_obj = client
        self.client_kwargs = client_kwargs
        self.batch = max(1, batch)
        self.keys = list(keys) if keys is not None else _keys(self.client, self.bucket, self.prefix)

    client = ObjectDataset.client

    def set_epoch(self, epoch):
        self.epoch = epoch

    def shard(self):
        """The keys this process reads, in order."""
        keys = list(self.keys)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(keys)
        index, count = shard_info(self.rank, self.world_size, self.worker_id, self.num_workers)
        return keys[index::count]

    def __iter__(self):
        keys = self.shard()
        for at in range(0, len(keys), self.batch):
            batch = keys[at:at + self.batch]
            datas = self.client.read_ranges([(self.bucket, k, 0, None) for k in batch])
            for k, d in zip(batch, datas):
                if self.transform is None:
                    yield d
                else:
                    yield self.transform(k, d) if self.with_key else self.transform(d)
