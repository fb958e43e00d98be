"""The file objects of `Client.open()`: `io` classes over the native reader and writer.

Reads go straight into the caller's buffer (`readinto`) or into the `bytes` returned (`read`);
the native reader streams sequential reads through the client's readahead, so no
`io.BufferedReader` is put in front of it (it would copy every byte once more)."""

import io


class ObjectReader(io.RawIOBase):
    """A seekable, read-only binary file of one object at the version it was opened at."""

    def __init__(self, native, name):
        super().__init__()
        self._r = native
        self.name = name
        self.mode = "rb"

    @property
    def size(self):
        return self._r.size

    @property
    def etag(self):
        return self._r.etag

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        self._checkClosed()
        return self._r.readinto(b)

    def read(self, size=-1):
        self._checkClosed()
        return self._r.read(-1 if size is None else size)

    def readall(self):
        return self.read(-1)

    def read1(self, size=-1):
        return self.read(size)

    def seek(self, offset, whence=io.SEEK_SET):
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._r.tell() + offset
        elif whence == io.SEEK_END:
            pos = self._r.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        return self._r.seek(pos)

    def tell(self):
        self._checkClosed()
        return self._r.tell()

    def close(self):
        if not self.closed:
            self._r.close()
        super().close()

    def __repr__(self):
        return f"<cairn.ObjectReader name={self.name!r} size={self.size}>"


class ObjectWriter(io.RawIOBase):
    """A new object written as a stream; `close()` makes it visible and returns once it is
    acknowledged at the writer's durability. Leaving a `with` block by an exception, or
    dropping the file unclosed, aborts it: nothing half-written becomes visible."""

    def __init__(self, native, name):
        super().__init__()
        self._w = native
        self.name = name
        self.mode = "wb"
        self.etag = None

    def writable(self):
        return True

    def write(self, b):
        self._checkClosed()
        return self._w.write(b)

    def tell(self):
        return self._w.written

    def close(self):
        if not self.closed:
            try:
                self.etag = self._w.close()
            finally:
                super().close()

    def abort(self):
        """Gives the object up."""
        if not self.closed:
            try:
                self._w.abort()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass

    def __repr__(self):
        return f"<cairn.ObjectWriter name={self.name!r}>"
