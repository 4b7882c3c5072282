"""What a report holds (:class:`Report`), the detector's verdict in it and its numbers as JSON.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cfx.atomic import clean_json, json_default  # noqa: F401  (clean_json re-exported)
from cfx.explainers.base import Explanation
from cfx.metrics.edits import diversity
from cfx.reports.colours import heat_scale

#: Formats :func:`write_report` knows.
FORMATS = ("png", "json", "pdf", "html")
MIME = {"png": "image/png", "json": "application/json", "pdf": "application/pdf", "html": "text/html"}


# ------------------------------------------------------------------ the report
@dataclass
class Report:
    """Everything a report shows.

    Attributes:
        image: the original, float32 (C, H, W) in [0, 1].
        name: the image's name (``defect/file.png`` or the uploaded file's name).
        explanations: results by method name (failed methods are listed with their error).
        mask: bool (H, W) ground truth, or None when unknown.
        dataset, category: where the models come from.
        model_key: ``bundle.key()`` (dataset/category@hash).
        detector: the detector's verdict: ``score``, ``threshold``, ``anomalous``,
            ``recon_score``, ``mahalanobis_score``, ``classifier_prob``, ``classifier_threshold``,
            ``classifier_anomalous`` (any subset).
        target: the explained target.
        reconstruction: the detector's reconstruction (C, H, W), shown when given.
        detector_heatmap: the detector's calibrated error map (H, W), shown when given.
        params: page or command parameters worth recording (e.g. the chosen step).
        created: ISO date and time (UTC) of the report.
        title: a heading; default ``"<dataset>/<category>: <name>"``.
        detector_label: the detector's name for a reader (e.g. ``PatchCore (EfficientNet-Lite0)``).
        reviewer: who reviewed the part ("" when nobody is named: the report leaves a line to sign).
    """

    image: np.ndarray
    name: str
    explanations: dict[str, Explanation] = field(default_factory=dict)
    mask: np.ndarray | None = None
    dataset: str = ""
    category: str = ""
    model_key: str = ""
    detector: dict[str, Any] = field(default_factory=dict)
    target: str = "score"
    reconstruction: np.ndarray | None = None
    detector_heatmap: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    title: str = ""
    detector_label: str = ""
    reviewer: str = ""

    @property
    def model_hash(self) -> str:
        return self.model_key.rsplit("@", 1)[-1] if "@" in self.model_key else ""

    @property
    def heading(self) -> str:
        if self.title:
            return self.title
        where = "/".join(p for p in (self.dataset, self.category) if p)
        return f"{where}: {self.name}" if where else self.name

    @classmethod
    def from_bundle(cls, bundle, image: np.ndarray, name: str, explanations: Mapping[str, Explanation] | None = None,
                    mask: np.ndarray | None = None, target: str = "score", params: dict[str, Any] | None = None,
                    analysis: Mapping[str, np.ndarray] | None = None, with_detector_maps: bool = False,
                    title: str = "", reviewer: str = "") -> "Report":
        """A report with the detector's verdict filled in from the models.

        Args:
            bundle: the :class:`~cfx.models.bundle.ModelBundle` that explained the image.
            image: (C, H, W) float32 in [0, 1].
            name: the image's name.
            explanations: the results to show.
            mask: the ground-truth mask, if known.
            target: the explained target.
            params: extra parameters to record.
            analysis: ``bundle.analyse(image[None])`` if already computed (saves a forward pass).
            with_detector_maps: also show the reconstruction and the detector's heatmap.
            title: optional heading.
            reviewer: who reviewed the part (shown in the header).
        """
        a = analysis if analysis is not None else bundle.analyse(np.asarray(image, np.float32)[None])
        det = detector_summary(bundle, a)
        return cls(image=np.asarray(image, np.float32), name=name, explanations=dict(explanations or {}),
                   mask=None if mask is None else np.asarray(mask, bool), dataset=bundle.dataset,
                   category=bundle.category, model_key=bundle.key(), detector=det, target=target,
                   reconstruction=np.asarray(a["recon"][0]) if with_detector_maps and "recon" in a else None,
                   detector_heatmap=np.asarray(a["heatmap"][0]) if with_detector_maps else None,
                   params=dict(params or {}), title=title, detector_label=bundle.detector.label,
                   reviewer=reviewer)


def detector_summary(bundle, analysis: Mapping[str, np.ndarray], i: int = 0) -> dict[str, Any]:
    """The detector's and classifier's numbers for image ``i`` of ``bundle.analyse(...)``."""
    a = analysis
    out: dict[str, Any] = {"detector": bundle.detector_name, "score": float(a["score"][i]),
                           "threshold": bundle.threshold, "anomalous": bool(a["anomalous"][i])}
    for key in bundle.detector.parts:
        out[key] = float(a[key][i])
    if "classifier" in a:
        out.update(classifier_prob=float(a["classifier"][i]), classifier_threshold=float(bundle.classifier_threshold),
                   classifier_anomalous=bool(a["classifier_anomalous"][i]))
    return out


# ------------------------------------------------------------------ numbers
def report_dict(report: Report) -> dict[str, Any]:
    """The numbers of a report (no arrays), JSON-serialisable."""
    methods: dict[str, Any] = {}
    for name, exp in report.explanations.items():
        d = exp.to_dict()
        d["info"] = {k: v for k, v in (d.get("info") or {}).items() if k != "traceback"}
        if exp.heatmap is not None:
            h = np.asarray(exp.heatmap, np.float64)
            d["heatmap_stats"] = {"min": float(np.nanmin(h)), "max": float(np.nanmax(h)),
                                  "mean": float(np.nanmean(h)), "scale": heat_scale(exp)}
            if report.mask is not None and report.mask.any() and (~report.mask).any():
                d["heatmap_stats"]["mean_inside_mask"] = float(np.nanmean(h[report.mask]))
                d["heatmap_stats"]["mean_outside_mask"] = float(np.nanmean(h[~report.mask]))
        if len(exp.counterfactuals) > 1:
            d["diversity"] = diversity(c.image for c in exp.counterfactuals)
            d["relative_diversity"] = exp.info.get("relative_diversity")
        methods[name] = d
    mask = None
    if report.mask is not None:
        mask = {"known": True, "area_fraction": float(np.asarray(report.mask).mean())}
    return clean_json({
        "image": report.name, "dataset": report.dataset, "category": report.category,
        "model": {"key": report.model_key, "hash": report.model_hash, "detector": report.detector_label},
        "created": report.created, "reviewer": report.reviewer,
        "target": report.target, "detector": dict(report.detector), "mask": mask or {"known": False},
        "params": report.params, "methods": methods,
    })


def json_bytes(report: Report) -> bytes:
    """:func:`report_dict` as indented UTF-8 JSON."""
    return (json.dumps(report_dict(report), indent=2, sort_keys=True, default=json_default, allow_nan=False)
            + "\n").encode()
