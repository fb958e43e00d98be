"""`cairn://` for fsspec: `fsspec.open("cairn://bucket/key")`, `pandas.read_parquet`,
`pyarrow.dataset` (through fsspec's `ArrowFSWrapper` or `PyFileSystem(FSSpecHandler(fs))`) and
`datasets.load_dataset(..., data_files="cairn://...")` read through the native client.

Registered with fsspec by the package's entry point (`fsspec.specs`), so nothing needs importing
first. Storage options: `endpoint`, `access_key`, `secret_key`, `route` (default from the
`CAIRN_*` environment) and `durability` for writes."""

import datetime
import os

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem

from . import Client

#: Bytes per request when a file is copied to or from local disk.
COPY_BLOCK = 16 << 20


def _mtime(text):
    try:
        return datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


class CairnFileSystem(AbstractFileSystem):
    """Objects of a cairn pool as files: paths are `bucket/key` (with or without `cairn://`)."""

    protocol = ("cairn",)
    root_marker = ""

    def __init__(self, endpoint=None, access_key=None, secret_key=None, route=None, durability=None, client=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.client = client if client is not None else Client(endpoint, access_key, secret_key, route)
        self.durability = durability

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, (list, tuple)):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        for scheme in ("cairn://", "cairn::"):
            if path.startswith(scheme):
                path = path[len(scheme):]
        return path.strip("/")

    def _split(self, path):
        bucket, _, key = self._strip_protocol(path).partition("/")
        return bucket, key

    @staticmethod
    def _entry(bucket, e):
        out = dict(e)
        out["name"] = f"{bucket}/{e['name'].rstrip('/')}"
        if e["type"] == "file":
            out["mtime"] = _mtime(e.get("last_modified"))
        return out

    def _file_info(self, st):
        return {
            "name": f"{st.bucket}/{st.key}",
            "size": st.size,
            "type": "file",
            "etag": st.etag,
            "ETag": st.etag,
            "last_modified": st.last_modified,
            "mtime": _mtime(st.last_modified),
            "content_type": st.content_type,
        }

    # Reading metadata

    def info(self, path, **kwargs):
        bucket, key = self._split(path)
        if not bucket:
            return {"name": "", "size": 0, "type": "directory"}
        if key:
            try:
                return self._file_info(self.client.stat(bucket, key))
            except FileNotFoundError:
                pass
        # A bucket, or a prefix with objects below it.
        below = self.client.ls(bucket, key + "/" if key else "", False)
        if below or not key:
            return {"name": f"{bucket}/{key}".rstrip("/"), "size": 0, "type": "directory"}
        raise FileNotFoundError(self._strip_protocol(path))

    def ls(self, path, detail=True, **kwargs):
        bucket, key = self._split(path)
        if not bucket:
            raise NotImplementedError("cairn cannot list buckets: name one (cairn://BUCKET/...)")
        out = [self._entry(bucket, e) for e in self.client.ls(bucket, key + "/" if key else "", False)]
        if not out and key:
            info = self.info(path)  # a file, or FileNotFoundError
            out = [info] if info["type"] == "file" else []
        return out if detail else [e["name"] for e in out]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Every object under `path` from one recursive listing (not a walk of `ls` calls)."""
        path = self._strip_protocol(path)
        bucket, key = self._split(path)
        if not bucket:
            raise NotImplementedError("cairn cannot list buckets: name one (cairn://BUCKET/...)")
        out = {}
        if withdirs and self.isdir(path):
            out[path] = self.info(path)
        for e in self.client.ls(bucket, key + "/" if key else "", True):
            entry = self._entry(bucket, e)
            rel = entry["name"][len(path) + 1:]
            parts = rel.split("/")
            if maxdepth is None or len(parts) <= maxdepth:
                out[entry["name"]] = entry
            if withdirs:
                for i in range(1, len(parts)):
                    if maxdepth is not None and i > maxdepth:
                        break
                    d = f"{path}/{'/'.join(parts[:i])}"
                    out.setdefault(d, {"name": d, "size": 0, "type": "directory"})
        if not out and key:
            try:
                info = self.info(path)
            except FileNotFoundError:
                info = None
            if info is not None and info["type"] == "file":
                out[path] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def ukey(self, path):
        return self.info(path)["etag"]

    def modified(self, path):
        return self.info(path)["mtime"]

    def checksum(self, path):
        return int(self.ukey(path).replace("-", "")[:15] or "0", 16)

    # Reading bytes

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode:
            return self.client.open(self._split(path), "rb")
        if "w" in mode or "x" in mode:
            return self.client.open(self._split(path), "wb", durability=kwargs.get("durability", self.durability))
        raise NotImplementedError(f"mode {mode!r}: cairn objects open for reading or writing, not appending")

    def _range(self, path, start, end):
        """(bucket, key, offset, length) for fsspec's start/end (negative: from the end)."""
        bucket, key = self._split(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.client.stat(bucket, key).size
            start = size + start if start is not None and start < 0 else start
            end = size + end if end is not None and end < 0 else end
        start = max(start or 0, 0)
        length = None if end is None else max(end - start, 0)
        return bucket, key, start, length

    def cat_file(self, path, start=None, end=None, **kwargs):
        bucket, key, offset, length = self._range(path, start, end)
        return self.client.read_range(bucket, key, offset, length)

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        """Every range in parallel with one native call (the way data loaders read samples)."""
        n = len(paths)
        starts = starts if isinstance(starts, (list, tuple)) else [starts] * n
        ends = ends if isinstance(ends, (list, tuple)) else [ends] * n
        if not (len(starts) == len(ends) == n):
            raise ValueError("paths, starts and ends must have the same length")
        try:
            return self.client.read_ranges([self._range(p, s, e) for p, s, e in zip(paths, starts, ends)])
        except Exception:
            if on_error == "raise":
                raise
        # One failed: each on its own, so the others still arrive and the failure is in its place.
        out = []
        for p, s, e in zip(paths, starts, ends):
            try:
                out.append(self.cat_file(p, s, e))
            except Exception as ex:
                out.append(ex)
        return out

    def get_file(self, rpath, lpath, callback=DEFAULT_CALLBACK, outfile=None, **kwargs):
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        with self.open(rpath, "rb") as src:
            callback.set_size(src.size)
            buf = bytearray(min(COPY_BLOCK, max(src.size, 1)))
            view = memoryview(buf)
            dst = outfile if outfile is not None else open(lpath, "wb")
            try:
                while True:
                    n = src.readinto(view)
                    if not n:
                        break
                    dst.write(view[:n])
                    callback.relative_update(n)
            finally:
                if outfile is None:
                    dst.close()

    # Writing

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        bucket, key = self._split(path)
        self.client.put(bucket, key, value, kwargs.get("durability", self.durability))
        self.invalidate_cache(self._parent(path))

    def put_file(self, lpath, rpath, callback=DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        if os.path.isdir(lpath):
            return
        bucket, key = self._split(rpath)
        size = os.path.getsize(lpath)
        callback.set_size(size)
        w = self.client.writer(bucket, key, kwargs.get("durability", self.durability))
        try:
            with open(lpath, "rb") as src:
                while True:
                    block = src.read(COPY_BLOCK)
                    if not block:
                        break
                    w.write(block)
                    callback.relative_update(len(block))
        except BaseException:
            w.abort()
            raise
        w.close()

    def rm_file(self, path):
        bucket, key = self._split(path)
        try:
            self.client.delete(bucket, key)
        except FileNotFoundError:
            pass

    def _rm(self, path):
        self.rm_file(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        """Object storage has no directories: nothing to make."""

    def makedirs(self, path, exist_ok=False):
        """Object storage has no directories: nothing to make."""

    def rmdir(self, path):
        """Object storage has no directories: nothing to remove."""
