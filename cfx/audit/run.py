"""Running an audit: :func:`audit_category` (blocking, with a progress callback and a stop
flag), :class:`AuditJob` (the same in a background thread, for the app) and :func:`image_detail`
(one image and method, for the page's detail view)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cfx.audit.results import (
    DEFAULT_CUTOFF,
    AuditResult,
    ImageAudit,
    MethodResult,
    ProgressFn,
    _score,
)
from cfx.audit.store import legacy_key, results_db, store_explanation, unit_key
from cfx.data.mvtec import MVTecDataset
from cfx.errors import DataError
from cfx.metrics import JaccardCurve, explanation_map, optimal_jaccard, pixel_auroc
from cfx.resultdb import ResultDB

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- methods
def _run_unit(bundle, name: str, image: np.ndarray, method: str, target: str, params: dict[str, Any] | None,
              seed: int, db: ResultDB | None, compute: bool = True, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray | None, str | None, float, bool, bool]:
    """One method on one image: (map, error, seconds, cached, done), read from the results
    database when stored, else computed and stored. ``done`` is False only when ``compute`` is
    False and nothing is stored. ``mask``: the ground truth (counterfactuals' locality)."""
    if db is not None:
        key, _ = unit_key(bundle.key(), image, method, target, params, seed, mask)
        hit = db.get(key, legacy_key(bundle.key(), name, image, method, target, params, seed))
        if hit is not None:
            return hit.map, hit.error, hit.seconds, True, True
    if not compute:
        return None, None, 0.0, False, False
    from cfx.explainers import REGISTRY, explain

    t0 = time.perf_counter()
    error: str | None = None
    heat: np.ndarray | None = None
    with bundle.lock:
        if method in REGISTRY:
            exp = explain(bundle, image, [method], target, seed, {method: params or {}}, mask=mask)[method]
            heat = explanation_map(exp)
            if exp.error:  # a failure is not stored: the next run retries it
                error = exp.error
            else:  # "no map" from a method that ran is a result
                if heat is None:
                    error = "no map: the method found neither a heatmap nor a counterfactual"
                if db is not None:
                    store_explanation(db, bundle, image, exp, params, mask, name)
        else:
            error = f"unknown method {method!r}"
    seconds = time.perf_counter() - t0
    return heat, error, seconds, False, True


# -------------------------------------------------------------------- running
@dataclass
class _Anomalies:
    names: list[str]
    defects: list[str]
    indices: list[int]
    images: np.ndarray
    masks: np.ndarray
    total: int


def _anomalies(bundle, root: str | Path, category: str, images: Sequence[str] | None, limit: int | None) -> _Anomalies:
    ds = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels)
    arr = ds.arrays()
    sel = [i for i in range(len(arr)) if arr.labels[i] == 1 and arr.has_mask[i] and arr.masks[i].any()]
    total = len(sel)
    if images is not None:
        wanted = list(images)
        by_name = {arr.samples[i].name: i for i in sel}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise DataError(f"not a test anomaly with a mask in {category}: {', '.join(missing[:3])}")
        sel = [by_name[n] for n in wanted]
    if limit is not None and 0 <= limit < len(sel):
        # evenly spread over the list, so that every defect type is represented
        picks = np.unique(np.linspace(0, len(sel) - 1, limit).round().astype(int)) if limit else []
        sel = [sel[int(k)] for k in picks]
    return _Anomalies([arr.samples[i].name for i in sel], [arr.samples[i].defect for i in sel], sel,
                      arr.images[sel] if sel else arr.images[:0], arr.masks[sel] if sel else arr.masks[:0], total)


def audit_category(bundle, root: str | Path, category: str, methods: str | Sequence[str] | None = "all",
                   target: str = "score", cutoff: float = DEFAULT_CUTOFF,
                   params: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                   images: Sequence[str] | None = None, limit: int | None = None,
                   progress: ProgressFn | None = None, stop: threading.Event | None = None,
                   cache: str | Path | bool | ResultDB = True, compute: bool = True,
                   record: bool = True, on_image: Callable[[ImageAudit], None] | None = None) -> AuditResult:
    """Audit every test anomaly of a category that has a ground-truth mask.

    Args:
        bundle: the category's models (:func:`cfx.models.bundle.load_bundle`).
        root: the data root.
        category: the category.
        methods: ``"all"``, a comma-separated string or a list of registered methods.
        target: ``score`` (the detector) or ``classifier`` (also ``recon``, ``mahalanobis``):
            what the methods explain and whose decision counts as "detected".
        cutoff: J* below which a detected anomaly is flagged (detected for the wrong reason).
        params: per-method parameters, e.g. ``{"lime": {"num_samples": 300}}``.
        seed: the methods' random seed.
        images: only these test images (``<defect>/<file>`` names).
        limit: at most this many anomalies, spread evenly over the (defect-sorted) list.
        progress: called as ``progress(done, total, message)`` after each (image, method) unit.
        stop: when set, the run ends after the current unit; the result has ``stopped`` True and
            ``pending`` entries, and a later run resumes from the cache.
        cache: True (the default results database, :mod:`cfx.resultdb`), a folder or file for another
            one, a :class:`~cfx.resultdb.ResultDB`, or False (nothing stored).
        compute: False to assemble only what is stored (the rest stays ``pending``).
        record: write the run and its flags into the database (when it computes).
        on_image: called with each image's :class:`ImageAudit` once its methods are done (the
            app's table fills in as the run goes).

    Returns:
        An :class:`AuditResult`.

    Raises:
        DataError: unknown methods or images.
    """
    from cfx.explainers.base import check_target, resolve_methods

    check_target(bundle, target)
    t0 = time.perf_counter()
    methods = resolve_methods(methods)
    params = {m: dict((params or {}).get(m, {})) for m in methods}
    db = results_db(cache)
    an = _anomalies(bundle, root, category, images, limit)
    a = bundle.analyse(an.images) if len(an.names) else None
    thr = bundle.threshold_for(target)
    if a is not None:
        tscore = bundle.target(target).read(a)
        nan = np.full(len(tscore), np.nan)
        clf_p, clf_a = a.get("classifier", nan), a.get("classifier_anomalous", np.zeros(len(tscore), bool))
    rows: list[ImageAudit] = []
    maps: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in methods}
    total, done, stopped = len(an.names) * len(methods), 0, False
    for i, name in enumerate(an.names):
        row = ImageAudit(
            image=name, defect=an.defects[i], index=an.indices[i], score=float(tscore[i]), threshold=thr,
            anomalous=bool(tscore[i] > thr), detector_score=float(a["score"][i]),
            detector_anomalous=bool(a["anomalous"][i]), classifier_prob=float(clf_p[i]),
            classifier_anomalous=bool(clf_a[i]), mask_fraction=float(an.masks[i].mean()),
            methods={m: MethodResult() for m in methods},
            detector_jaccard=None if target == "classifier" else float(optimal_jaccard(a["heatmap"][i], an.masks[i]).jaccard))
        rows.append(row)
        for m in methods:
            if stop is not None and stop.is_set():
                stopped = True
                break
            heat, error, secs, cached, ok = _run_unit(bundle, name, an.images[i], m, target, params[m], seed,
                                                      db, compute=compute, mask=an.masks[i])
            done += 1
            if ok:
                row.methods[m] = _score(heat, an.masks[i], error, secs, cached, row, cutoff)
                if heat is not None:
                    maps[m].append((heat, an.masks[i]))
            if progress is not None:
                progress(done, total, f"{name} · {m}" + (" (cached)" if cached else ""))
        if stopped:
            break
        if on_image is not None:
            on_image(row)
    if stopped:
        rows = [r for r in rows if r.complete] + [r for r in rows if not r.complete and any(
            x.status != "pending" for x in r.methods.values())]
        rows.sort(key=lambda r: r.index)
    aurocs = {m: pixel_auroc([h for h, _ in maps[m]], [k for _, k in maps[m]]) for m in methods}
    result = AuditResult(category=category, dataset=bundle.dataset, model=bundle.key(), target=target,
                         cutoff=float(cutoff), methods=methods, params=params, seed=seed, images=rows,
                         pixel_auroc=aurocs, total=an.total, stopped=stopped, seconds=time.perf_counter() - t0)
    if db is not None and compute and record:
        record_run(db, result)
    return result


def record_run(db: ResultDB, result: AuditResult) -> str:
    """Write a finished (or stopped) audit into the database: its ``runs`` row and its ``flags``."""
    rid = db.start_run("audit", dataset=result.dataset, category=result.category, model=result.model,
                       target=result.target, methods=result.methods, params=result.params, seed=result.seed,
                       total=result.total * len(result.methods), engine=result.engine)
    db.put_flags(rid, result.flag_rows())
    db.finish_run(rid, "stopped" if result.stopped else "done", seconds=result.seconds, summary=result.summary())
    result.run = rid
    return rid


# -------------------------------------------------------------------- one image in detail
@dataclass
class ImageDetail:
    """One method on one audited image, for plots: the image, its mask, the method's map and the
    Jaccard curve (None map with ``error`` when the method failed)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    map: np.ndarray | None
    curve: JaccardCurve | None
    error: str | None
    cached: bool

    @property
    def best_mask(self) -> np.ndarray:
        """The selection at the optimal threshold (all False without a map)."""
        from cfx.metrics import best_mask

        if self.map is None or self.curve is None:
            return np.zeros(self.mask.shape, bool)
        return best_mask(self.map, self.curve.threshold)


def image_detail(bundle, root: str | Path, category: str, image: str, method: str, target: str = "score",
                 params: dict[str, Any] | None = None, seed: int = 0, cache: str | Path | bool | ResultDB = True,
                 compute: bool = True) -> ImageDetail | None:
    """The map and J* curve of one method on one test anomaly, from the audit's cache (computed
    and cached when absent and ``compute``; None when absent and not ``compute``).

    Raises:
        DataError: when ``image`` is not a test anomaly with a mask.
    """
    an = _anomalies(bundle, root, category, [image], None)
    heat, error, _, cached, ok = _run_unit(bundle, image, an.images[0], method, target, params, seed,
                                           results_db(cache), compute=compute, mask=an.masks[0])
    if not ok:
        return None
    curve = optimal_jaccard(heat, an.masks[0]) if heat is not None else None
    return ImageDetail(image, an.images[0], an.masks[0], heat, curve, error, cached)


# -------------------------------------------------------------------- background job
def _nice_this_thread(nice: int = 10) -> None:
    """Lower this thread's CPU priority (Linux: per thread), so that a background audit in the
    app's process leaves the other sessions their share."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


class AuditJob:
    """An audit in a daemon thread, with progress to poll and a stop flag.

    Args:
        engine: ``dask`` (default: the units as tasks on a LocalCluster of niced worker processes,
            :func:`cfx.audit.distributed.audit_distributed`) or ``local`` (:func:`audit_category`
            in this thread, niced). The app uses ``local``: on a 2-core machine one process with
            two torch threads already keeps both cores busy, and the cluster's processes measured
            slower (BENCHMARKS.md); the cluster itself runs in a child process
            (:func:`cfx.cluster.local_cluster`), so ``dask`` works from the app too.
        workers: the LocalCluster's processes (default: :func:`cfx.cluster.default_workers`).
        **kwargs: the arguments of :func:`audit_category` (``progress`` and ``stop`` are set by the job).

    Attributes:
        done, total, message: the latest progress.
        result: the :class:`AuditResult` once finished (also after a stop).
        error: a one-line error if the run failed.
    """

    def __init__(self, bundle, root, category, engine: str = "dask", workers: int | None = None,
                 **kwargs: Any) -> None:
        if engine not in ("dask", "local"):
            raise ValueError(f"unknown audit engine {engine!r}")
        self.stop_event = threading.Event()
        self.done, self.total, self.message = 0, 0, "starting"
        self.result: AuditResult | None = None
        self.error: str | None = None
        self.started = time.time()
        self.engine, self.workers = engine, workers
        self._args = (bundle, root, category)
        self._kwargs = kwargs
        #: the images audited so far, in order (the local engine; :meth:`partial`)
        self.rows: list[ImageAudit] = []
        #: seconds of each computed (not cached) unit, by method (:meth:`eta`)
        self.costs: dict[str, list[float]] = {}
        self._last = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"cfx-audit-{category}", daemon=True)

    def start(self) -> "AuditJob":
        self._thread.start()
        return self

    def _progress(self, done: int, total: int, message: str) -> None:
        now = time.perf_counter()
        method = message.rsplit(" · ", 1)[-1]
        if not method.endswith(" (cached)") and done > self.done:
            self.costs.setdefault(method, []).append((now - self._last) / (done - self.done))
        self._last = now
        self.done, self.total, self.message = done, total, message

    @property
    def methods(self) -> list[str]:
        from cfx.explainers.base import resolve_methods

        return resolve_methods(self._kwargs.get("methods", "all"))

    def eta(self) -> float | None:
        """Seconds left, from the measured cost of each method (the median of its computed units
        so far) times its units still to do; None until every method has one measured unit. An
        upper bound when some of the rest is stored already (those cost nothing)."""
        ms = self.methods
        if not self.total or any(m not in self.costs for m in ms):
            return None
        per_image = sum(float(np.median(self.costs[m])) for m in ms)
        return max(0.0, (self.total - self.done) / len(ms) * per_image)

    def partial(self) -> AuditResult:
        """What the run has audited so far (whole images), as a result to show while it runs; no
        pixel AUROC (it needs every map)."""
        bundle, _, category = self._args
        rows = list(self.rows)
        ms = self.methods
        target = self._kwargs.get("target", "score")
        return AuditResult(category=category, dataset=bundle.dataset, model=bundle.key(), target=target,
                           cutoff=float(self._kwargs.get("cutoff", DEFAULT_CUTOFF)), methods=ms,
                           params=dict(self._kwargs.get("params") or {}), seed=int(self._kwargs.get("seed", 0)),
                           images=rows, pixel_auroc={m: None for m in ms}, total=self.total // max(1, len(ms)),
                           seconds=time.time() - self.started)

    def _run(self) -> None:
        try:
            if self.engine == "dask":
                from cfx.audit.distributed import audit_distributed

                self.message = "starting the workers"
                self.result = audit_distributed(*self._args, progress=self._progress, stop=self.stop_event,
                                                workers=self.workers, **self._kwargs)
            else:
                _nice_this_thread()
                self.result = audit_category(*self._args, progress=self._progress, stop=self.stop_event,
                                             on_image=self.rows.append, **self._kwargs)
        except Exception as exc:  # noqa: BLE001 - shown by the caller
            log.exception("audit failed")
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def stop(self) -> None:
        """Ask the run to end after its current unit."""
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0
