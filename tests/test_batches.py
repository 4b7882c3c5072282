"""cfx.batches: a call's batches scored by single-threaded workers on the CPU."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cfx import batches as B
from cfx.meter import Cancelled, metered


def test_map_batches_keeps_the_order_and_runs_each_worker_on_one_thread():
    seen: list[tuple[str, int, bool]] = []

    def fn(b):
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled()))
        time.sleep(0.02)
        return b * 10

    threads = torch.get_num_threads()
    taken: list[int] = []
    out = B.map_batches(fn, list(range(6)), 2, before=lambda b: taken.append(b))
    assert out == [0, 10, 20, 30, 40, 50] and taken == list(range(6))
    assert all(name.startswith("cfx-batch") and n == 1 and inference for name, n, inference in seen)
    assert len({name for name, _, _ in seen}) == 2  # both workers took batches
    assert torch.get_num_threads() == threads  # the caller's threads are untouched
    # one worker: the calling thread, one batch at a time
    here = []
    assert B.map_batches(lambda b: here.append(threading.current_thread()) or b, [1, 2], 1) == [1, 2]
    assert here == [threading.current_thread()] * 2


def test_map_batches_stops_taking_results_when_before_raises():
    def before(b):
        if b == 2:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        B.map_batches(lambda b: b, list(range(8)), 2, before=before)


def test_workers_for(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("CFX_BATCH_WORKERS", raising=False)
    n = torch.get_num_threads()
    assert B.workers_for(cpu, 1) == 1 and B.workers_for(cuda, 10) == 1
    assert B.workers_for(cpu, 10) == n and B.workers_for(cpu, 2) == min(n, 2)
    monkeypatch.setenv("CFX_BATCH_WORKERS", "1")
    assert B.workers_for(cpu, 10) == 1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 33])
def test_split_batches_balances_the_workers_and_keeps_every_item_in_order(n):
    items = list(range(n))
    one = B.split_batches(items, 4, 1)
    assert [len(c) for c in one] == [4] * (n // 4) + ([n % 4] if n % 4 else [])  # one at a time: as before
    two = B.split_batches(items, 4, 2)
    assert [x for c in two for x in c] == items and all(1 <= len(c) <= 4 for c in two)
    sizes = [len(c) for c in two]
    assert not sizes or (max(sizes) - min(sizes) <= 1 and (len(two) % 2 == 0 or n == 1))
    full = -(-n // 4)  # the batches of 4 it needs, rounded up to pairs
    assert len(two) == min(n, full + full % 2)


def test_patchcore_scores_the_same_counted_and_cancellable_with_workers(demo_bundle, monkeypatch):
    """PatchCore's batches go to the workers: the same scores as one batch at a time (to float32
    rounding), every image counted once, and a cancelled computation stops."""
    b = demo_bundle("brick", "patchcore")
    assert "cpu" in b.detector.parallel_batches and "cpu" not in b.using("vae").detector.parallel_batches
    images = np.random.default_rng(0).uniform(0, 1, (10, b.channels, b.image_size, b.image_size)).astype(np.float32)
    monkeypatch.setenv("CFX_BATCH_WORKERS", "1")
    one = b.score_numpy(images)
    monkeypatch.delenv("CFX_BATCH_WORKERS")
    with metered() as m:
        pooled = b.score_numpy(images)
    assert m.evaluations == 10
    np.testing.assert_allclose(pooled, one, rtol=1e-5, atol=1e-4)
    with metered() as m:  # a call of one batch goes to both workers, halved
        small = b.score_numpy(images[:4])
    assert m.evaluations == 4
    np.testing.assert_allclose(small, one[:4], rtol=1e-5, atol=1e-4)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled), metered(stop):
        b.score_numpy(images)
