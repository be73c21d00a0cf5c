"""Work done ahead on background threads: the one prefetcher of the engine.

Training loads the next optimizer step's batches while this one trains (keyed requests:
:class:`Prefetcher`); labelling decodes the next image batches while the model runs
(:func:`read_ahead`, an ordered iterator over the same class). Loading is a pure function of
its arguments, so loading early changes nothing but the wall clock: results and resume stay
exact. With ``workers = 0`` everything loads on the calling thread (useful for debugging).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Prefetcher:
    def __init__(self, load: Callable[..., object], workers: int = 1, *, name: str = "sdft-batches"):
        self.load = load
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else None
        self.pending: dict[tuple, Future] = {}

    def request(self, key: tuple, *args) -> None:
        """Start loading ``key`` in the background (no-op without workers)."""
        if self.executor is not None and key not in self.pending:
            self.pending[key] = self.executor.submit(self.load, *args)

    def get(self, key: tuple, *args):
        """The result for ``key``: the prefetched one (its exception re-raised here), or loaded now."""
        future = self.pending.pop(key, None)
        if future is not None:
            return future.result()
        return self.load(*args)

    def close(self) -> None:
        """Cancel what has not started; wait for the one load in progress."""
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_ahead(load: Callable[[Item], Result], items: Sequence[Item], depth: int = 2, *,
               name: str = "sdft-read-ahead") -> Iterator[Result]:
    """``load(item)`` for each item in order, up to ``depth`` items loaded ahead on one thread.

    Closing the iterator early (``break``, an exception, ``.close()``) cancels what is queued.
    """
    depth = max(1, depth)
    with Prefetcher(load, 1, name=name) as ahead:
        for index in range(min(depth, len(items))):
            ahead.request((index,), items[index])
        for index, item in enumerate(items):
            if index + depth < len(items):
                ahead.request((index + depth,), items[index + depth])
            yield ahead.get((index,), item)
