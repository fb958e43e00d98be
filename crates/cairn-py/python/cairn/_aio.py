"""Helpers the native module calls to complete asyncio futures from its I/O threads."""


def resolve(future, ok, value):
    """Completes `future` (on its loop's thread) unless it was cancelled meanwhile."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
