"""Load the next optimizer step's batches on a background thread while this one trains.

Batch loading is a pure function of (batch, epoch, step, position), so loading early changes
nothing but the wall clock: results and resume stay exact. With ``workers = 0`` everything
loads on the training thread (useful for debugging).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class Prefetcher:
    def __init__(self, load: Callable[..., list], workers: int = 1):
        self.load = load
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="sdft-batches") if workers > 0 else None
        self.pending: dict[tuple, Future] = {}

    def request(self, key: tuple, *args) -> None:
        """Start loading ``key`` in the background (no-op without workers)."""
        if self.executor is not None and key not in self.pending:
            self.pending[key] = self.executor.submit(self.load, *args)

    def get(self, key: tuple, *args) -> list:
        """The batches for ``key``: the prefetched result, or loaded now."""
        future = self.pending.pop(key, None)
        if future is not None:
            return future.result()
        return self.load(*args)

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
