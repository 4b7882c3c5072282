"""Many forward batches on the CPU: one single-threaded worker per torch thread, not one batch at a time.

On the CPU torch splits each operation of a batch over its threads. PatchCore's EfficientNet trunk
is mostly depthwise convolutions on small maps, where those threads spend much of each operation
waiting for each other: measured on the 2-core CPU (BENCHMARKS.md), two workers of one thread
each, every one scoring whole batches, scored PatchCore's batches of 4 1.3-1.5x faster than one
batch at a time on two threads; the VAE's scoring was as fast either way. So when a call has
several batches to score on the CPU with a detector that asks for it
(:attr:`cfx.detectors.base.Detector.parallel_batches`: PatchCore), :func:`map_batches` hands them
to a pool of ``torch.get_num_threads()`` workers that each run torch on one thread.

The batches are the same as one at a time, so are the images in each; a score may differ in its
last float32 bits, since one thread sums in another order than two (measured: 3e-5 on PatchCore's
z-scores of about 10).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _one_thread() -> None:
    torch.set_num_threads(1)


def pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` single-threaded torch workers (created on first use)."""
    with _LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="cfx-batch", initializer=_one_thread)
        return _POOLS[workers]


def workers_for(device: torch.device, batches: int, devices: Collection[str] = ("cpu",)) -> int:
    """How many workers score ``batches`` batches on ``device``: one per torch thread of the
    calling thread on the CPU when there are at least two batches (at most ``$CFX_BATCH_WORKERS``)
    and ``devices`` (the detector's :attr:`~cfx.detectors.base.Detector.parallel_batches`) holds
    the CPU, else 1 (the calling thread)."""
    if device.type != "cpu" or device.type not in devices or batches < 2:
        return 1
    cap = int(os.environ.get("CFX_BATCH_WORKERS") or 0) or torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), cap, batches))


def split_batches(items: Sequence[T], batch: int, workers: int) -> list[Sequence[T]]:
    """``items`` in batches of ``batch`` (the last one shorter). For ``workers`` > 1 the number of
    batches is rounded up to a multiple of ``workers`` (at most one item each) and their sizes
    differ by at most one, so no worker waits on another's longer batch: 5 images for 2 workers
    go as 2 + 3, not 4 + 1, and 4 as 2 + 2, not as one batch in the calling thread (measured with
    PatchCore's batches of 4 on the 2-core CPU: calls of 4-6 images 1.3-1.5x faster per image)."""
    n, batch = len(items), max(1, batch)
    if workers <= 1:
        return [items[i:i + batch] for i in range(0, n, batch)]
    full = -(-n // batch)
    k = min(n, -(-full // workers) * workers)
    edges = [n * i // k for i in range(k + 1)] if k else [0]
    return [items[a:b] for a, b in zip(edges[:-1], edges[1:])]


def map_batches(fn: Callable[[T], R], batches: Sequence[T], workers: int,
                before: Callable[[T], None] | None = None) -> list[R]:
    """``[fn(b) for b in batches]``, computed by ``workers`` single-threaded workers.

    Args:
        fn: runs in a worker thread (under ``torch.inference_mode``: no gradient there).
        batches: the inputs, in order.
        workers: the pool's size (1: in the calling thread, one at a time).
        before: called in the calling thread before each batch's result is taken, in order (the
            evaluation count and the cancel check of :func:`cfx.meter.tick`); if it raises, the
            batches not started are dropped and the error propagates.

    Returns:
        The results, in the order of ``batches``.
    """
    if workers <= 1:
        out = []
        for b in batches:
            if before is not None:
                before(b)
            out.append(fn(b))
        return out

    def run(b: T) -> R:
        with torch.inference_mode():
            return fn(b)

    ex = pool(workers)
    futures: list[Future] = [ex.submit(run, b) for b in batches]
    try:
        out = []
        for b, f in zip(batches, futures):
            if before is not None:
                before(b)
            out.append(f.result())
        return out
    except BaseException:
        for f in futures:
            f.cancel()
        raise
