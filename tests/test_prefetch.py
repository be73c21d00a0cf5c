"""The engine's one prefetcher: keyed requests for training, an ordered read-ahead for labelling."""

from __future__ import annotations

import threading

import pytest

from engine.prefetch import Prefetcher, read_ahead


def test_read_ahead_yields_in_order_and_loads_ahead():
    loaded: list[int] = []
    gate = threading.Event()

    def load(item: int) -> int:
        loaded.append(item)
        if item == 0:
            gate.wait(5)
        return item * 10

    results = read_ahead(load, [0, 1, 2, 3], depth=2)
    gate.set()
    assert list(results) == [0, 10, 20, 30]
    assert loaded == [0, 1, 2, 3]


def test_read_ahead_raises_the_loaders_error_in_the_consumer():
    def load(item: int) -> int:
        if item == 1:
            raise ValueError("bad item 1")
        return item

    results = read_ahead(load, [0, 1, 2], depth=1)
    assert next(results) == 0
    with pytest.raises(ValueError, match="bad item 1"):
        next(results)


def test_closing_read_ahead_early_stops_its_thread_and_loads_no_more():
    loaded: list[int] = []
    results = read_ahead(lambda item: loaded.append(item) or item, list(range(50)), depth=2, name="sdft-test-ahead")
    next(results)
    results.close()
    assert len(loaded) <= 4
    assert not [t for t in threading.enumerate() if t.name.startswith("sdft-test-ahead")]


def test_prefetcher_without_workers_loads_on_the_calling_thread():
    threads: list[str] = []
    with Prefetcher(lambda x: threads.append(threading.current_thread().name) or x, workers=0) as prefetch:
        prefetch.request(("a",), 1)
        assert prefetch.get(("a",), 1) == 1
    assert threads == [threading.current_thread().name]


def test_prefetcher_returns_the_requested_result_once():
    calls: list[int] = []
    with Prefetcher(lambda x: calls.append(x) or x * 2, workers=1) as prefetch:
        prefetch.request(("k",), 3)
        assert prefetch.get(("k",), 3) == 6
        assert prefetch.get(("k",), 4) == 8     # not pending any more: loaded now with the new args
    assert calls == [3, 4]
