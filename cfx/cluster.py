"""Dask distributed for cfx's batch work (:mod:`cfx.audit.distributed`, :mod:`cfx.inspection`):
the client (:func:`dask_client`: an existing scheduler, or a LocalCluster on loopback of one
single-threaded process per core, :data:`GPU_WORKERS` on a CUDA machine), and the worker side:
the run's models loaded once per worker process and content hash (:func:`worker_bundle`; never
pickled per task) and its images read once (:func:`worker_arrays`). Local workers are niced
(:data:`WORKER_NICE`) so that the app's other sessions keep their share of the CPU; on a CUDA
machine a worker's models load on its default GPU (a cluster with one worker per GPU, such as
dask-cuda's, can be used through ``--scheduler``).
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
#: local workers on a CUDA machine, all on its default GPU. Measured on an H200 with 16 cores
#: (BENCHMARKS.md, issue 16): warm, 2 workers took 0.70-0.73 of one process's time, their units
#: 1.26x as long as alone (the GPU is shared); cold, each worker's own CUDA start (about 20 s)
#: outweighs a category's work, and 4 workers were no faster than 2. One worker per core would
#: start 16 CUDA contexts on one GPU.
GPU_WORKERS = 2


def cores() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def default_workers() -> int:
    """One worker per core; on a CUDA machine :data:`GPU_WORKERS` (at most one per core)."""
    import torch

    return min(cores(), GPU_WORKERS) if torch.cuda.is_available() else cores()


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` on ``scheduler`` (or ``$CFX_DASK_SCHEDULER``), else on a new
    LocalCluster of ``workers`` single-threaded processes on loopback (:func:`local_cluster`),
    closed on exit.

    Raises:
        DataError: the scheduler cannot be reached, or the local cluster did not start.
    """
    from distributed import Client

    address = scheduler or os.environ.get("CFX_DASK_SCHEDULER")
    with contextlib.ExitStack() as stack:
        if not address:
            address = stack.enter_context(local_cluster(workers))
        try:
            client = stack.enter_context(Client(address, timeout="30s"))
        except OSError as exc:
            raise DataError(f"cannot reach the Dask scheduler at {address} ({exc})") from None
        yield client


@contextlib.contextmanager
def local_cluster(workers: int | None = None, start_timeout: float = 120.0) -> Iterator[str]:
    """A LocalCluster of ``workers`` single-threaded processes on loopback, yielding its scheduler
    address; closed on exit.

    The cluster lives in a child process (``python -m cfx.cluster``), not in this one: worker
    processes are spawned, and a spawned process re-runs its parent's main module. Where that is a
    Streamlit page script (the app, or a test after AppTest ran one), the workers would run the
    page and never start. The child also goes when this process dies (its stdin closes).

    Raises:
        DataError: the cluster did not start (its last error line).
    """
    import subprocess
    import sys
    import tempfile

    n = int(workers or default_workers())
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cfx.cluster", "--workers", str(n)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            address = _read_address(proc, start_timeout)
            if not address:
                err.seek(0)
                lines = [x for x in err.read().splitlines() if x.strip()]
                raise DataError("the local Dask cluster did not start" + (f": {lines[-1].strip()}" if lines else ""))
            yield address
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child closes its cluster and exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_address(proc, timeout: float) -> str | None:
    """The scheduler address the cluster process prints first, or None (it exited or timed out)."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    line = box[0].strip() if box else ""
    return line if line.startswith(("tcp://", "tls://", "inproc://")) else None


def _serve(workers: int) -> None:
    """The cluster process: start the LocalCluster, print its address, and keep it until stdin
    closes (the parent closed it or died)."""
    import sys

    import dask
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    # the workers' statistical profiler samples the running task's stack every 10 ms: measured
    # 14.6 -> 12.4 s per image of LIME + SHAP on a worker without it
    dask.config.set({"distributed.worker.profile.enabled": False})
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the
    # OS); setting it switches off glibc's dynamic mmap threshold, so every large array of an
    # explanation (batches of perturbed images, activations) is mmap'ed and faulted in afresh:
    # measured 16.5 / 15.6 s against 13.0 / 13.0 s per image of recon + Grad-CAM + LIME + SHAP
    # in one single-threaded process with and without it (BENCHMARKS.md, issue 16)
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()


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


def worker_spec(bundle, db_path: str | os.PathLike, data_root: str | os.PathLike | None) -> WorkerSpec:
    """The :class:`WorkerSpec` of a run with ``bundle``'s models, storing into ``db_path``."""
    from cfx import config

    return WorkerSpec(models_dir=str(config.models_dir(bundle.dataset)), dataset=bundle.dataset,
                      category=bundle.category, detector=bundle.detector_name, model_key=bundle.key(),
                      data_root="" if data_root is None else str(data_root), db_path=str(db_path))


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




if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(description="a LocalCluster for cfx (started by cfx.cluster.local_cluster)")
    _p.add_argument("--workers", type=int, help="worker processes (default: default_workers())")
    _serve(max(1, _p.parse_args().workers or default_workers()))
