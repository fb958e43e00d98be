"""CPU time a server process tree spends, for "CPU per request" figures beside throughputs.

Throughput on a shared 2-core machine moves with whatever else runs; the CPU a server spends on
a fixed request mix moves much less, so a benchmark reports both. The time comes from the
scheduler's per-thread run time (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds) of the process
and its children (nginx's workers), read before and after a measured run. A thread that exits
between the two readings loses its time; the servers measured here keep their threads.
"""

import pathlib


def _children(pid):
    kids = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def tree(pid):
    """`pid` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def cpu_ns(pid):
    """Nanoseconds of CPU run by every thread of `pid` and of its descendants."""
    total = 0
    for p in tree(pid):
        for task in pathlib.Path(f"/proc/{p}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


class Meter:
    """CPU of a process tree over a span: `with Meter(pid) as m: ...`, then `m.ns` and `m.per(n)`."""

    def __init__(self, pid):
        self.pid = pid
        self.ns = 0

    def __enter__(self):
        self._start = cpu_ns(self.pid)
        return self

    def __exit__(self, *exc):
        self.ns = cpu_ns(self.pid) - self._start
        return False

    def per(self, n):
        """Microseconds of CPU per unit (request) over the span."""
        return self.ns / 1e3 / max(1, n)
