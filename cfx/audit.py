"""The mask-Jaccard audit of a category: which anomalies were detected for the wrong reason.

For every test anomaly whose ground-truth mask is known, every chosen method explains the chosen
target (the detector's anomaly score, or the classifier's P(anomalous)) through
:func:`cfx.explainers.explain`; the explanation's map (its heatmap, or the absolute difference of
its closest counterfactual) is compared with the mask by the optimal Jaccard J*
(:func:`cfx.metrics.optimal_jaccard`). An image is *flagged* for a method when the target's model
calls it anomalous and J* < the cutoff (default 0.1): it was detected, but the explanation points
elsewhere than the defect.

Each method's map is cached on disk per (model key, image content, method, target, parameters,
seed) under ``cache_dir()/audit``, so a long run that was stopped resumes where it stopped and a
finished one reloads in a moment. The cutoff is applied after the cache, so changing it never
recomputes anything.

Use :func:`audit_category` (blocking, with a progress callback and a stop flag) or
:class:`AuditJob` (the same in a background thread, for the app).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cfx import config
from cfx.atomic import atomic_path
from cfx.data.mvtec import MVTecDataset
from cfx.errors import DataError
from cfx.metrics import JaccardCurve, explanation_map, optimal_jaccard, pixel_auroc

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CUTOFF", "CACHE_VERSION", "MethodResult", "ImageAudit", "AuditResult", "ImageDetail",
           "audit_category", "with_cutoff", "image_detail", "overlay", "detail_png", "resolve_methods",
           "cache_root", "AuditJob", "ProgressFn"]

DEFAULT_CUTOFF = 0.1
CACHE_VERSION = 1

#: progress(done, total, message): called after every (image, method) unit, cached ones included.
ProgressFn = Callable[[int, int, str], None]


@dataclass
class MethodResult:
    """One method on one image.

    Attributes:
        optimal_jaccard: J* of the method's map against the mask (None when there is no map).
        threshold: the map value reaching J* (the selection is ``map >= threshold``).
        flagged: detected (by the target's model) and J* < cutoff; None when there is no map.
        best_selected: the share of pixels selected at the optimal threshold.
        status: ``ok``, ``error`` (the method failed or gave no map) or ``pending`` (not run yet:
            a stopped run, or a cache-only look-up).
        error: the one-line error, if any.
        seconds: the method's time when it was computed (0 for a cache hit is not implied: the
            time of the original computation is kept).
        cached: whether it came from the disk cache.
    """

    optimal_jaccard: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    best_selected: float | None = None
    status: str = "pending"
    error: str | None = None
    seconds: float = 0.0
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"optimal_jaccard": self.optimal_jaccard, "threshold": self.threshold, "flagged": self.flagged}
        if self.status != "ok":
            out["status"] = self.status
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class ImageAudit:
    """One audited anomaly.

    Attributes:
        image: ``<defect>/<file>``, the test image's name.
        defect: the defect type.
        index: its index among the category's test images (as in :func:`cfx.resolve.select_image`).
        score: the audited target's value (the detector's score, or the classifier's P(anomalous)).
        threshold: that target's decision threshold.
        anomalous: whether the target's model calls the image anomalous (detected).
        detector_score, detector_anomalous, classifier_prob, classifier_anomalous: both models' outputs.
        mask_fraction: the share of pixels in the defect mask.
        methods: method name -> :class:`MethodResult`.
    """

    image: str
    defect: str
    index: int
    score: float
    threshold: float
    anomalous: bool
    detector_score: float
    detector_anomalous: bool
    classifier_prob: float
    classifier_anomalous: bool
    mask_fraction: float
    methods: dict[str, MethodResult] = field(default_factory=dict)

    @property
    def flagged_by(self) -> list[str]:
        """The methods that flag this image (they agree that it was detected for the wrong reason)."""
        return [m for m, r in self.methods.items() if r.flagged]

    @property
    def complete(self) -> bool:
        return all(r.status != "pending" for r in self.methods.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "defect": self.defect, "score": self.score, "anomalous": self.anomalous,
            "methods": {m: r.to_json() for m, r in self.methods.items()},
            "index": self.index, "threshold": self.threshold, "flagged_by": self.flagged_by,
            "detector_score": self.detector_score, "detector_anomalous": self.detector_anomalous,
            "classifier_prob": self.classifier_prob, "classifier_anomalous": self.classifier_anomalous,
        }


@dataclass
class AuditResult:
    """A category's audit.

    Attributes:
        category, dataset, model: where and with which weights (``bundle.key()``).
        target, cutoff, methods, params, seed: how.
        images: one :class:`ImageAudit` per audited anomaly, in test-split order.
        pixel_auroc: per method, pixel AUROC of its maps against the masks, pooled over the
            audited images (None when not computable).
        total: the number of anomalies with a mask in the category (``len(images)`` may be
            smaller after ``limit`` or ``images``).
        stopped: whether the run was stopped before the end (some entries are ``pending``).
        seconds: wall time of the run.
    """

    category: str
    dataset: str
    model: str
    target: str
    cutoff: float
    methods: list[str]
    params: dict[str, dict[str, Any]]
    seed: int
    images: list[ImageAudit]
    pixel_auroc: dict[str, float | None]
    total: int
    stopped: bool = False
    seconds: float = 0.0

    # ---------------------------------------------------------------- summary
    def _ok(self, m: str, detected_only: bool = False) -> list[ImageAudit]:
        return [r for r in self.images if r.methods.get(m) is not None and r.methods[m].status == "ok"
                and (r.anomalous or not detected_only)]

    def flagged_fraction(self, m: str) -> float | None:
        """Share of the detected anomalies (with a map for ``m``) that ``m`` flags."""
        rows = self._ok(m, detected_only=True)
        return float(np.mean([bool(r.methods[m].flagged) for r in rows])) if rows else None

    def mean_optimal_jaccard(self, m: str, detected_only: bool = False) -> float | None:
        rows = self._ok(m, detected_only)
        return float(np.mean([r.methods[m].optimal_jaccard for r in rows])) if rows else None

    def count_below(self, m: str, level: float) -> tuple[int, int]:
        """(detected anomalies with J* < level, detected anomalies with a map) for ``m``
        (the seed study's figure, with level 0.2)."""
        rows = self._ok(m, detected_only=True)
        return sum(r.methods[m].optimal_jaccard < level for r in rows), len(rows)

    def agreement(self) -> dict[str, Any]:
        """How the methods agree on the detected anomalies where every method has a map:
        ``n`` such images, ``all_agree`` (share where every method gives the same flag),
        ``flagged_by_all`` and ``flagged_by_any`` (counts), and ``pairwise`` (share of equal flags
        for each pair of methods)."""
        rows = [r for r in self.images if r.anomalous and all(
            r.methods.get(m) is not None and r.methods[m].status == "ok" for m in self.methods)]
        flags = np.array([[bool(r.methods[m].flagged) for m in self.methods] for r in rows], bool).reshape(
            len(rows), len(self.methods))
        out: dict[str, Any] = {"n": len(rows)}
        if rows:
            out["all_agree"] = float((flags.all(1) | ~flags.any(1)).mean())
            out["flagged_by_all"] = int(flags.all(1).sum())
            out["flagged_by_any"] = int(flags.any(1).sum())
        else:
            out.update(all_agree=None, flagged_by_all=0, flagged_by_any=0)
        out["pairwise"] = {
            a: {b: (float((flags[:, i] == flags[:, j]).mean()) if rows else None)
                for j, b in enumerate(self.methods) if b != a}
            for i, a in enumerate(self.methods)}
        return out

    @property
    def n_detected(self) -> int:
        return sum(r.anomalous for r in self.images)

    def summary(self) -> dict[str, Any]:
        """``flagged_fraction`` and ``mean_optimal_jaccard`` per method (the issue's JSON), plus
        ``mean_optimal_jaccard_detected``, ``pixel_auroc``, ``n_flagged``, ``n_evaluated``
        (detected anomalies with a map), ``n_errors``, ``n_images``, ``n_detected``,
        ``agreement``."""
        s: dict[str, Any] = {
            "flagged_fraction": {m: self.flagged_fraction(m) for m in self.methods},
            "mean_optimal_jaccard": {m: self.mean_optimal_jaccard(m) for m in self.methods},
            "mean_optimal_jaccard_detected": {m: self.mean_optimal_jaccard(m, True) for m in self.methods},
            "pixel_auroc": dict(self.pixel_auroc),
            "n_flagged": {m: sum(bool(r.methods[m].flagged) for r in self._ok(m, True)) for m in self.methods},
            "n_evaluated": {m: len(self._ok(m, True)) for m in self.methods},
            "n_errors": {m: sum(r.methods[m].status == "error" for r in self.images if m in r.methods)
                         for m in self.methods},
            "n_images": len(self.images), "n_detected": self.n_detected,
            "agreement": self.agreement(),
        }
        return s

    def to_json(self) -> dict[str, Any]:
        """``{"category", "images": [{"image", "defect", "score", "anomalous", "methods": {m:
        {"optimal_jaccard", "threshold", "flagged"}}}], "summary": {"flagged_fraction",
        "mean_optimal_jaccard"}}`` with a few more keys (target, cutoff, model, per-image
        both models' outputs and ``flagged_by``, more summary figures)."""
        return {
            "category": self.category, "dataset": self.dataset, "model": self.model, "target": self.target,
            "cutoff": self.cutoff, "methods": list(self.methods), "seed": self.seed,
            "total": self.total, "stopped": self.stopped, "seconds": round(self.seconds, 3),
            "images": [r.to_json() for r in self.images],
            "summary": self.summary(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per image (for a table): image, defect, score, anomalous, J* and flag
        per method (``J*:<m>``, ``flag:<m>``) and the flagging methods."""
        out = []
        for r in self.images:
            d: dict[str, Any] = {"image": r.image, "defect": r.defect, "score": r.score, "anomalous": r.anomalous}
            for m in self.methods:
                mr = r.methods.get(m, MethodResult())
                d[f"J*:{m}"] = mr.optimal_jaccard
                d[f"flag:{m}"] = mr.flagged
            d["flagged_by"] = ", ".join(r.flagged_by)
            out.append(d)
        return out


def _effective_params(method: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(implementation, parameters with the method's defaults filled in). The implementation is
    identified by a hash of the source of the method's module, so that a changed method is
    recomputed instead of read from the cache."""
    from cfx.explainers import REGISTRY

    if method in REGISTRY:
        return f"registry:{_source_hash(REGISTRY[method])}", {**REGISTRY[method].defaults, **(params or {})}
    return "fallback", dict(params or {})


_SOURCE_HASHES: dict[type, str] = {}


def _source_hash(cls: type) -> str:
    if cls not in _SOURCE_HASHES:
        import inspect
        import sys as _sys

        try:
            src = inspect.getsource(_sys.modules[cls.__module__])
        except (OSError, TypeError, KeyError):
            src = f"{cls.__module__}.{cls.__qualname__}"
        _SOURCE_HASHES[cls] = hashlib.sha1(src.encode()).hexdigest()[:12]
    return _SOURCE_HASHES[cls]


# -------------------------------------------------------------------- methods
def resolve_methods(methods: str | Sequence[str] | None) -> list[str]:
    """The registry's :func:`cfx.explainers.base.resolve_methods` (imported here lazily: the
    method modules pull in lime, shap and dice-ml)."""
    from cfx.explainers import resolve_methods as resolve

    return resolve(methods)


# -------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``cache_dir()/audit``."""
    return config.cache_dir() / "audit"


def _unit_key(model_key: str, name: str, image: np.ndarray, method: str, target: str,
              params: dict[str, Any] | None, seed: int) -> tuple[str, str]:
    impl, p = _effective_params(method, params)
    ident = {"v": CACHE_VERSION, "model": model_key, "image": name,
             "image_sha": hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16],
             "method": method, "impl": impl, "target": target, "params": p, "seed": int(seed)}
    text = json.dumps(ident, sort_keys=True, default=repr)
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_key)
    return folder, hashlib.sha1(text.encode()).hexdigest()


def _cache_file(root: Path, model_key: str, name: str, image: np.ndarray, method: str, target: str,
                params: dict[str, Any] | None, seed: int) -> Path:
    folder, h = _unit_key(model_key, name, image, method, target, params, seed)
    return root / folder / f"{h}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray | None, str | None, float] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            heat = z["map"] if meta.get("has_map") else None
            heat = None if heat is None else np.asarray(heat, np.float32)
            return heat, meta.get("error"), float(meta.get("seconds", 0))
    except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
        log.warning("ignoring damaged audit cache entry %s: %s", path, exc)
        return None


def _write_cache(path: Path, heat: np.ndarray | None, error: str | None, seconds: float, info: dict) -> None:
    meta = json.dumps({"has_map": heat is not None, "error": error, "seconds": seconds, **info}, default=repr)
    buf = io.BytesIO()
    np.savez_compressed(buf, map=np.zeros(0, np.float32) if heat is None else np.asarray(heat, np.float32),
                        meta=np.array(meta))
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(buf.getvalue())


def _run_unit(bundle, name: str, image: np.ndarray, method: str, target: str, params: dict[str, Any] | None,
              seed: int, root: Path | None, compute: bool = True) -> tuple[np.ndarray | None, str | None, float, bool, bool]:
    """One method on one image: (map, error, seconds, cached, done). ``done`` is False only when
    ``compute`` is False and nothing is cached. ``heatmap``: the detector's heatmap of the image
    when already computed (used by the ``recon`` stand-in)."""
    path = _cache_file(root, bundle.key(), name, image, method, target, params, seed) if root else None
    if path is not None:
        hit = _read_cache(path)
        if hit is not None:
            return hit[0], hit[1], hit[2], True, True
    if not compute:
        return None, None, 0.0, False, False
    from cfx.explainers import REGISTRY, explain

    t0 = time.perf_counter()
    error: str | None = None
    failed = False
    heat: np.ndarray | None = None
    with bundle.lock:
        if method in REGISTRY:
            exp = explain(bundle, image, [method], target, seed, {method: params or {}})[method]
            heat = explanation_map(exp)
            if exp.error:
                error, failed = exp.error, True
            elif heat is None:
                error = "no map: the method found neither a heatmap nor a counterfactual"
        else:
            error, failed = f"unknown method {method!r}", True
    seconds = time.perf_counter() - t0
    # a failure is not cached (the next run retries it); "no map" from a method that ran is a result
    if path is not None and not failed:
        _write_cache(path, heat, error, seconds, {"image": name, "method": method, "target": target})
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
                   cache: str | Path | bool = True, compute: bool = True) -> AuditResult:
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
        cache: True (``cache_dir()/audit``), a folder, or False (no disk cache).
        compute: False to assemble only what is cached (the rest stays ``pending``).

    Returns:
        An :class:`AuditResult`.

    Raises:
        DataError: unknown methods or images.
    """
    from cfx.explainers.base import check_target

    check_target(bundle, target)
    t0 = time.perf_counter()
    methods = resolve_methods(methods)
    params = {m: dict((params or {}).get(m, {})) for m in methods}
    root_cache = cache_root() if cache is True else (Path(cache) if cache else None)
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
            methods={m: MethodResult() for m in methods})
        rows.append(row)
        for m in methods:
            if stop is not None and stop.is_set():
                stopped = True
                break
            heat, error, secs, cached, ok = _run_unit(bundle, name, an.images[i], m, target, params[m], seed,
                                                      root_cache, compute=compute)
            done += 1
            if ok:
                row.methods[m] = _score(heat, an.masks[i], error, secs, cached, row.anomalous, cutoff)
                if heat is not None:
                    maps[m].append((heat, an.masks[i]))
            if progress is not None:
                progress(done, total, f"{name} · {m}" + (" (cached)" if cached else ""))
        if stopped:
            break
    if stopped:
        rows = [r for r in rows if r.complete] + [r for r in rows if not r.complete and any(
            x.status != "pending" for x in r.methods.values())]
        rows.sort(key=lambda r: r.index)
    aurocs = {m: pixel_auroc([h for h, _ in maps[m]], [k for _, k in maps[m]]) for m in methods}
    return AuditResult(category=category, dataset=bundle.dataset, model=bundle.key(), target=target,
                       cutoff=float(cutoff), methods=methods, params=params, seed=seed, images=rows,
                       pixel_auroc=aurocs, total=an.total, stopped=stopped, seconds=time.perf_counter() - t0)


def _score(heat, mask, error, secs, cached, anomalous, cutoff) -> MethodResult:
    if heat is None:
        return MethodResult(status="error", error=error or "no map", seconds=secs, cached=cached)
    c = optimal_jaccard(heat, mask)
    j = float(c.jaccard)
    return MethodResult(optimal_jaccard=j, threshold=float(c.threshold) if np.isfinite(c.threshold) else None,
                        flagged=bool(anomalous and j < cutoff), best_selected=c.best_selected, status="ok",
                        seconds=secs, cached=cached)


def with_cutoff(result: AuditResult, cutoff: float) -> AuditResult:
    """The same audit with another cutoff (no recomputation)."""
    import copy

    out = copy.deepcopy(result)
    out.cutoff = float(cutoff)
    for r in out.images:
        for mr in r.methods.values():
            if mr.status == "ok":
                mr.flagged = bool(r.anomalous and mr.optimal_jaccard < cutoff)
    return out


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
                 params: dict[str, Any] | None = None, seed: int = 0, cache: str | Path | bool = True,
                 compute: bool = True) -> ImageDetail | None:
    """The map and J* curve of one method on one test anomaly, from the audit's cache (computed
    and cached when absent and ``compute``; None when absent and not ``compute``).

    Raises:
        DataError: when ``image`` is not a test anomaly with a mask.
    """
    an = _anomalies(bundle, root, category, [image], None)
    root_cache = cache_root() if cache is True else (Path(cache) if cache else None)
    heat, error, _, cached, ok = _run_unit(bundle, image, an.images[0], method, target, params, seed, root_cache,
                                           compute=compute)
    if not ok:
        return None
    curve = optimal_jaccard(heat, an.masks[0]) if heat is not None else None
    return ImageDetail(image, an.images[0], an.masks[0], heat, curve, error, cached)


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float] = (1.0, 0.15, 0.1),
            alpha: float = 0.45) -> np.ndarray:
    """An image (C, H, W) in [0, 1] as RGB (H, W, 3) with ``mask`` tinted in ``colour``."""
    img = np.asarray(image, np.float32)
    rgb = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[:3]
    rgb = rgb.transpose(1, 2, 0).copy()
    m = np.asarray(mask, bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 1)


def detail_png(detail: ImageDetail, method: str, title: str = "", dpi: int = 110) -> bytes:
    """A report figure of one audited image and method: the image with the best-threshold
    selection, with the truth, the map, and the J* curve (PNG bytes; Matplotlib's object API,
    safe from several threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.9))
    axes = fig.subplots(1, 4)
    img = overlay(detail.image, np.zeros(detail.mask.shape, bool))
    axes[0].imshow(overlay(detail.image, detail.best_mask, (1.0, 0.6, 0.0)))
    j = detail.curve.jaccard if detail.curve is not None else float("nan")
    axes[0].set_title(f"{method}: best selection (J* {j:.3f})", fontsize=8)
    axes[1].imshow(overlay(detail.image, detail.mask, (0.1, 0.9, 0.2)))
    axes[1].set_title("ground truth", fontsize=8)
    if detail.map is not None:
        axes[2].imshow(img)
        axes[2].imshow(detail.map, cmap="inferno", alpha=0.7)
        axes[2].set_title(f"{method} map", fontsize=8)
    else:
        axes[2].text(0.5, 0.5, detail.error or "no map", ha="center", va="center", wrap=True, fontsize=7)
    for ax in axes[:3]:
        ax.set_axis_off()
    if detail.curve is not None and len(detail.curve.curve):
        _, c, s = detail.curve.downsampled(600)
        axes[3].plot(s, c, lw=1.2)
        axes[3].plot([detail.curve.best_selected], [j], "o", color="C3")
        axes[3].set_xscale("log")
        axes[3].set_xlabel("share of pixels selected", fontsize=8)
        axes[3].set_ylabel("Jaccard", fontsize=8)
        axes[3].tick_params(labelsize=7)
    else:
        axes[3].set_axis_off()
    fig.suptitle(title or detail.name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# -------------------------------------------------------------------- background job
class AuditJob:
    """:func:`audit_category` in a daemon thread, with progress to poll and a stop flag.

    Args:
        **kwargs: the arguments of :func:`audit_category` (``progress`` and ``stop`` are set by the job).

    Attributes:
        done, total, message: the latest progress.
        result: the :class:`AuditResult` once finished (also after a stop).
        error: a one-line error if the run failed.
    """

    def __init__(self, bundle, root, category, **kwargs: Any) -> None:
        self.stop_event = threading.Event()
        self.done, self.total, self.message = 0, 0, "starting"
        self.result: AuditResult | None = None
        self.error: str | None = None
        self.started = time.time()
        self._args = (bundle, root, category)
        self._kwargs = kwargs
        self._thread = threading.Thread(target=self._run, name=f"cfx-audit-{category}", daemon=True)

    def start(self) -> "AuditJob":
        self._thread.start()
        return self

    def _progress(self, done: int, total: int, message: str) -> None:
        self.done, self.total, self.message = done, total, message

    def _run(self) -> None:
        try:
            self.result = audit_category(*self._args, progress=self._progress, stop=self.stop_event, **self._kwargs)
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
