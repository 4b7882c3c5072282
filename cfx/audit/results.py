"""What an audit finds: per method and image (:class:`MethodResult`), per image (:class:`ImageAudit`),
per category (:class:`AuditResult`, its summary and JSON); the cutoff applied after the fact
(:func:`with_cutoff`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cfx.metrics import optimal_jaccard

DEFAULT_CUTOFF = 0.1

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
        fault: for a flagged image, who is at fault: ``explainer`` when the detector's own map
            localises the defect (its J* reaches the cutoff: the detector looked at the right
            thing and this method's map misses it), ``detector`` when it does not either; None
            when not flagged or when the explained model has no map of its own (the classifier).
    """

    optimal_jaccard: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    best_selected: float | None = None
    status: str = "pending"
    error: str | None = None
    seconds: float = 0.0
    cached: bool = False
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"optimal_jaccard": self.optimal_jaccard, "threshold": self.threshold, "flagged": self.flagged}
        if self.fault:
            out["fault"] = self.fault
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
        detector_jaccard: J* of the detector's own calibrated map (None when the audited target
            is the classifier, which has none): tells an explainer that misses the defect from a
            detector that looks elsewhere (:attr:`MethodResult.fault`).
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
    detector_jaccard: float | None = None

    def blame(self, flagged: bool | None, cutoff: float) -> str | None:
        """Who is at fault for a flag (see :attr:`MethodResult.fault`)."""
        if not flagged or self.detector_jaccard is None:
            return None
        return "explainer" if self.detector_jaccard >= cutoff else "detector"

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
            "detector_jaccard": self.detector_jaccard,
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
        seconds: wall time of this call (a re-read of stored results takes a moment; the time the
            results took to compute is :attr:`compute_seconds`).
        run: the id of its row in the results database's ``runs`` table, if recorded.
        engine: ``local`` (this process) or ``dask`` (tasks on a Dask cluster).
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
    run: str | None = None
    engine: str = "local"

    @property
    def compute_seconds(self) -> float:
        """The summed time of every method on every image when it was computed (stored results
        keep their original time)."""
        return float(sum(mr.seconds for r in self.images for mr in r.methods.values() if mr.status != "pending"))

    def flag_rows(self) -> list[dict[str, Any]]:
        """One row per (image, method): the results database's ``flags`` table."""
        return [{"image": r.image, "method": m, "defect": r.defect, "score": r.score, "anomalous": int(r.anomalous),
                 "optimal_jaccard": mr.optimal_jaccard, "threshold": mr.threshold,
                 "flagged": None if mr.flagged is None else int(mr.flagged), "status": mr.status, "error": mr.error}
                for r in self.images for m, mr in r.methods.items()]

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
        ``agreement``, ``fault`` (per method, its flags where the explainer is at fault and where
        the detector is: :attr:`MethodResult.fault`)."""
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
            "fault": {m: {who: sum(r.methods[m].fault == who for r in self._ok(m, True))
                          for who in ("explainer", "detector")} for m in self.methods},
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
            "compute_seconds": round(self.compute_seconds, 3), "run": self.run, "engine": self.engine,
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
                d[f"fault:{m}"] = mr.fault
            d["detector J*"] = r.detector_jaccard
            d["flagged_by"] = ", ".join(r.flagged_by)
            out.append(d)
        return out


def _score(heat, mask, error, secs, cached, row: ImageAudit, cutoff) -> MethodResult:
    if heat is None:
        return MethodResult(status="error", error=error or "no map", seconds=secs, cached=cached)
    c = optimal_jaccard(heat, mask)
    j = float(c.jaccard)
    flagged = bool(row.anomalous and j < cutoff)
    return MethodResult(optimal_jaccard=j, threshold=float(c.threshold) if np.isfinite(c.threshold) else None,
                        flagged=flagged, best_selected=c.best_selected, status="ok",
                        seconds=secs, cached=cached, fault=row.blame(flagged, cutoff))


def with_cutoff(result: AuditResult, cutoff: float) -> AuditResult:
    """The same audit with another cutoff (no recomputation)."""
    import copy

    out = copy.deepcopy(result)
    out.cutoff = float(cutoff)
    for r in out.images:
        for mr in r.methods.values():
            if mr.status == "ok":
                mr.flagged = bool(r.anomalous and mr.optimal_jaccard < cutoff)
                mr.fault = r.blame(mr.flagged, cutoff)
    return out
