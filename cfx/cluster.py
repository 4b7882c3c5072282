"""Dask distributed for cfx's batch work (:mod:`cfx.audit.distributed`, :mod:`cfx.inspection`):
the client (:func:`dask_client`: an existing scheduler, or a LocalCluster of one single-threaded
process per core on loopback), and the worker side: the run's models loaded once per worker
process and content hash (:func:`worker_bundle`; never pickled per task) and its images read once
(:func:`worker_arrays`). Local workers are niced (:data:`WORKER_NICE`) so that the app's other
sessions keep their share of the CPU; on a CUDA machine a worker's models load on its GPU.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cfx.errors import DataError

log = logging.getLogger(__name__)
#: niceness of the local workers (the app's own sessions keep their share of the CPU)
WORKER_NICE = 10


def default_workers() -> int:
    """One worker per core."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` on ``scheduler`` (or ``$CFX_DASK_SCHEDULER``), else on a new
    LocalCluster of ``workers`` single-threaded processes on loopback, closed on exit."""
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("CFX_DASK_SCHEDULER")
    if address:
        with Client(address, timeout="20s") as client:
            yield client
        return
    import dask

    logging.getLogger("distributed").setLevel(logging.WARNING)
    n = int(workers or default_workers())
    # the workers' statistical profiler samples the running task's stack every 10 ms: measured
    # 14.6 -> 12.4 s per image of LIME + SHAP on a worker without it
    dask.config.set({"distributed.worker.profile.enabled": False})
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


# -------------------------------------------------------------------- the worker side
@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the run's models and data (small; sent with each task)."""

    models_dir: str
    dataset: str
    category: str
    detector: str
    model_key: str
    data_root: str
    db_path: str
    threads: int = 1
    nice: int = WORKER_NICE


_BUNDLES: dict[tuple, Any] = {}
_ARRAYS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _prepare_process(spec: WorkerSpec) -> None:
    import torch

    if not getattr(_prepare_process, "done", False):
        with contextlib.suppress(OSError):
            if spec.nice and os.nice(0) < spec.nice:
                os.nice(spec.nice - os.nice(0))
        torch.set_num_threads(max(1, spec.threads))
        _prepare_process.done = True  # type: ignore[attr-defined]


def worker_bundle(spec: WorkerSpec):
    """The run's models in this worker process, loaded once per content hash."""
    key = (spec.models_dir, spec.dataset, spec.category, spec.detector, spec.model_key)
    with _LOCK:
        if key not in _BUNDLES:
            _prepare_process(spec)
            from cfx.explainers import set_data_root
            from cfx.models.bundle import load_bundle

            os.environ["CFX_MODELS_DIR"] = spec.models_dir
            b = load_bundle(spec.dataset, spec.category, detector=spec.detector)
            if b.key() != spec.model_key:
                raise DataError(f"the models of {spec.dataset}/{spec.category} changed since the run started "
                                f"({b.key()} is not {spec.model_key})")
            set_data_root(b, spec.data_root)
            _BUNDLES[key] = b
        return _BUNDLES[key]


def worker_arrays(spec: WorkerSpec, bundle, split: str = "test"):
    """(the split's arrays, name -> index) in this worker process, read once."""
    key = (spec.data_root, spec.category, split, bundle.image_size, bundle.channels)
    with _LOCK:
        if key not in _ARRAYS:
            from cfx.data.mvtec import MVTecDataset

            arr = MVTecDataset(spec.data_root, spec.category, split, image_size=bundle.image_size,
                               channels=bundle.channels).arrays()
            _ARRAYS[key] = (arr, {s.name: i for i, s in enumerate(arr.samples)})
        return _ARRAYS[key]


