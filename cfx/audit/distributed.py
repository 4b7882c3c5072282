"""The audit on Dask distributed: one task per (image, method) unit, run by worker processes that
load the models once (cached by their content hash, never pickled per task) and write each
result into the shared results database (:mod:`cfx.resultdb`) the moment it is done.

A unit already stored is not submitted, and a unit's task key is its database key, so the same
unit never runs twice; a worker that dies loses only the unit it was computing (Dask reruns it on
another worker), and a killed run resumes from the database. The result is then assembled from
the database by :func:`cfx.audit.run.audit_category` with ``compute=False``, exactly as a
single-process audit would read it back.

The cluster and the workers' model cache are :mod:`cfx.cluster`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cfx import config
from cfx.audit.results import DEFAULT_CUTOFF, AuditResult, ProgressFn
from cfx.cluster import (
    WorkerSpec,
    cores,
    dask_client,
    worker_arrays,
    worker_bundle,
)
from cfx.errors import DataError

log = logging.getLogger(__name__)


def audit_unit(spec: WorkerSpec, name: str, method: str, target: str, params: dict[str, Any] | None,
               seed: int) -> dict[str, Any]:
    """One (image, method) unit on a worker: computed and stored, or found stored. Returns
    ``{"image", "method", "cached", "seconds", "error", "pid"}``."""
    from cfx.audit.run import _run_unit
    from cfx.resultdb import open_db

    b = worker_bundle(spec)
    arr, index = worker_arrays(spec, b, "test")
    i = index[name]
    _, error, secs, cached, _ = _run_unit(b, name, arr.images[i], method, target, params, seed,
                                          open_db(spec.db_path), mask=arr.masks[i])
    return {"image": name, "method": method, "cached": cached, "seconds": secs, "error": error, "pid": os.getpid()}


# -------------------------------------------------------------------- the client side
def audit_distributed(bundle, root: str | Path, category: str, methods: str | Sequence[str] | None = "all",
                      target: str = "score", cutoff: float = DEFAULT_CUTOFF,
                      params: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                      images: Sequence[str] | None = None, limit: int | None = None,
                      progress: ProgressFn | None = None, stop: threading.Event | None = None,
                      cache: Any = True, client: Any = None, scheduler: str | None = None,
                      workers: int | None = None) -> AuditResult:
    """:func:`cfx.audit.run.audit_category` with its units as tasks on a Dask cluster.

    Args:
        bundle, root, category, methods, target, cutoff, params, seed, images, limit, progress,
            stop: as for :func:`~cfx.audit.run.audit_category` (``progress`` counts stored units first).
        cache: the results database (True: the default one; a folder or file; not False: the
            workers hand their results over through it).
        client: a :class:`distributed.Client` to use (else one on ``scheduler`` or a new LocalCluster
            of ``workers`` processes, closed at the end).

    Returns:
        The :class:`AuditResult`, read back from the database (``engine`` ``dask``).

    Raises:
        DataError: bad methods, images or target; ``cache`` False.
    """
    from cfx.audit.run import _anomalies, audit_category, record_run
    from cfx.audit.store import legacy_key, results_db, unit_key
    from cfx.explainers.base import check_target, resolve_methods

    if cache is False:
        raise DataError("the distributed audit hands its results over through the results database; "
                        "it cannot run without one")
    t0 = time.perf_counter()
    check_target(bundle, target)
    methods = resolve_methods(methods)
    params = {m: dict((params or {}).get(m, {})) for m in methods}
    db = results_db(cache)
    an = _anomalies(bundle, root, category, images, limit)
    model = bundle.key()
    units = [(unit_key(model, an.images[i], m, target, params[m], seed, an.masks[i])[0], i, m)
             for i in range(len(an.names)) for m in methods]
    stored = db.present([k for k, _, _ in units])  # one query; migrated rows only for the rest
    todo = [(k, an.names[i], m) for k, i, m in units if k not in stored and db.get(
        k, legacy_key(model, an.names[i], an.images[i], m, target, params[m], seed)) is None]
    done = len(units) - len(todo)
    total = len(an.names) * len(methods)
    if progress is not None and done:
        progress(done, total, f"{done} stored")
    stopped = False
    if todo:
        spec = WorkerSpec(models_dir=str(config.models_dir(bundle.dataset)), dataset=bundle.dataset, category=category,
                          detector=bundle.detector_name, model_key=model, data_root=str(Path(root).resolve()),
                          db_path=str(db.path))
        with (contextlib.nullcontext(client) if client is not None else dask_client(scheduler, workers)) as c:
            stopped = _run_tasks(c, spec, todo, target, params, seed, done, total, progress, stop)
    result = audit_category(bundle, root, category, methods, target=target, cutoff=cutoff, params=params, seed=seed,
                            images=images, limit=limit, cache=db, compute=False)
    result.stopped = stopped or any(not r.complete for r in result.images)
    result.engine, result.seconds = "dask", time.perf_counter() - t0
    record_run(db, result)
    return result


def _run_tasks(client, spec: WorkerSpec, todo: list[tuple[str, str, str]], target: str,
               params: dict[str, dict[str, Any]], seed: int, done: int, total: int,
               progress: ProgressFn | None, stop: threading.Event | None) -> bool:
    """Submit the units, report each as it finishes; True when stopped before the end."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
    spec = replace(spec, threads=max(1, cores() // n_workers))  # each worker's share of the cores
    futures = [client.submit(audit_unit, spec, name, m, target, params[m], seed, key=f"cfx-unit-{key}",
                             pure=False, retries=2) for key, name, m in todo]
    stopped = False
    try:
        for fut in as_completed(futures):
            if stop is not None and stop.is_set():
                stopped = True
                break
            try:
                r = fut.result()
                msg = f"{r['image']} · {r['method']}"
            except Exception as exc:  # noqa: BLE001 - a lost unit stays pending; a rerun retries it
                log.warning("an audit task failed: %s", exc)
                msg = f"failed: {type(exc).__name__}"
            done += 1
            if progress is not None:
                progress(done, total, msg)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return stopped
