"""How well a detector separates good from defective parts: the test-split evaluation of
``python -m cfx evaluate`` (image AUROC per score, pixel AUROC, F1, false-positive rate on good
parts and true-positive rate on defects at the stored threshold), the Detector page's ROC curves
and confusion matrices, and the standard error of an AUROC.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve

from cfx.data.mvtec import MVTecDataset
from cfx.atomic import clean_json
from cfx.config import LARGE_IMAGE_SIZE
from cfx.metrics.jaccard import auroc


def evaluate_category(bundle, root: str | Path, category: str) -> dict[str, Any]:
    """Scores every test image with the bundle.

    Returns:
        ``detector``, ``image_auroc`` (the detector's score), ``image_auroc_recon`` and
        ``image_auroc_mahalanobis`` (VAE detector only), ``classifier_auroc`` (when a classifier
        is trained), ``pixel_auroc`` (the detector's map over the images whose mask is known,
        good images included; None without any defect mask), ``f1``, ``accuracy``,
        ``fpr_good`` (share of test/good called anomalous) and ``tpr_defect`` (share of
        defective images called anomalous) at the stored ``threshold``, ``threshold_rule``,
        ``target_fpr``, ``expected_fpr`` and ``expected_tpr`` as the fit estimated them
        (:func:`expected_rates`; None for models fitted before),
        ``n_test``, ``n_with_mask``, ``per_defect_auroc``, and ``hint`` when the working
        resolution may be why the detector fails (:func:`resolution_hint`).
    """
    ds = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels)
    arr = ds.arrays()
    a = bundle.analyse(arr.images)
    y = arr.labels
    pred = a["anomalous"]
    out: dict[str, Any] = {
        "detector": bundle.detector_name,
        "image_auroc": auroc(y, a["score"]),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float((pred == y.astype(bool)).mean()),
        "fpr_good": float(pred[y == 0].mean()) if (y == 0).any() else None,
        "tpr_defect": float(pred[y == 1].mean()) if (y == 1).any() else None,
        "threshold": bundle.threshold,
        "threshold_rule": bundle.card.get("detectors", {}).get(bundle.detector_name, {}).get(
            "threshold_rule", bundle.card.get("threshold_rule")),
        **expected_rates(bundle.card, bundle.detector_name),
        "n_test": int(len(y)), "n_defective": int(y.sum()),
        "n_with_mask": int((arr.has_mask & (y == 1)).sum()),
    }
    for key, (name, _) in bundle.detector.parts.items():
        out[f"image_auroc_{name}"] = auroc(y, a[key])
    if "classifier" in a:
        out["classifier_auroc"] = auroc(y, a["classifier"])
        out["classifier_f1"] = float(f1_score(y, a["classifier_anomalous"], zero_division=0))
    sel = arr.has_mask
    if (sel & (y == 1)).any():
        heat = a["heatmap"][sel].ravel()
        truth = arr.masks[sel].ravel()
        out["pixel_auroc"] = auroc(truth, heat)
    else:
        out["pixel_auroc"] = None
    per = {}
    good = y == 0
    for d in sorted({s.defect for s in arr.samples} - {"good"}):
        m = np.array([s.defect == d for s in arr.samples])
        if good.any():
            per[d] = auroc(np.r_[np.zeros(good.sum()), np.ones(m.sum())], np.r_[a["score"][good], a["score"][m]])
    out["per_defect_auroc"] = per
    hint = resolution_hint(out["image_auroc"], bundle.image_size, ds.samples)
    if hint:
        out["hint"] = hint
    if arr.skipped:
        out["skipped"] = arr.skipped
    return out


def expected_rates(card: dict[str, Any], detector: str) -> dict[str, Any]:
    """What the fit expects of a detector on new parts: ``target_fpr``, ``expected_fpr`` (mean and
    95% bound, from normal images it was not fitted on) and ``expected_tpr`` (synthetic defects,
    with a 95% interval); None each for models fitted before thresholds had a stated rate."""
    info = card.get("detectors", {}).get(detector, {})
    return {k: info.get(k) for k in ("target_fpr", "expected_fpr", "expected_tpr")}


def expected_rates_text(card: dict[str, Any], detector: str) -> str | None:
    """:func:`expected_rates` in one sentence for a page or a report (None when not recorded)."""
    e = expected_rates(card, detector)
    if not e["expected_fpr"]:
        return None
    f, t = e["expected_fpr"], e["expected_tpr"] or {}
    text = (f"Threshold set for {e['target_fpr']:.0%} false alarms: expected on new good parts {f['mean']:.1%} "
            f"(95% bound {f['upper_95']:.1%})")
    if t.get("mean") is not None:
        text += (f"; synthetic defects caught {t['mean']:.0%} (95% {t['low_95']:.0%}-{t['high_95']:.0%}, an estimate "
                 "of real defects only as far as they resemble them)")
    return text + "."


#: below this test image AUROC, :func:`resolution_hint` looks at the working resolution
HINT_AUROC = 0.9


def resolution_hint(image_auroc: float | None, image_size: int, samples: Sequence[Any]) -> str | None:
    """Advice when a detector separates a category poorly and its models work on images less than
    half the originals' side: thin or small defects may be lost by the downscaling (measured on
    the real screw: image AUROC 0.33 at 128 px, 0.93 at 256 px; BENCHMARKS.md). None otherwise."""
    if image_auroc is None or image_auroc >= HINT_AUROC or image_size >= LARGE_IMAGE_SIZE or not samples:
        return None
    from PIL import Image

    try:
        with Image.open(samples[0].path) as im:
            side = min(im.size)
    except OSError:
        return None
    if side < 2 * image_size:
        return None
    return (f"image AUROC {image_auroc:.2f} on {image_size} px working images of {side} px originals: small "
            f"defects may be lost; models fitted at {LARGE_IMAGE_SIZE} px find them more often (about 10x "
            f"the CPU cost)")


def auroc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """The standard error of an AUROC (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / max(1, n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


#: the name of the selected detector's own score in evaluations (an inspector's word, not "combined")
DETECTOR_SCORE = "detector score"


def detector_scores(bundle) -> list[tuple[str, str, str]]:
    """(name, key of ``bundle.analyse`` output, target) of every score the bundle offers: the
    selected detector's score first (named ``detector score``), its parts, the classifier."""
    names = {"score": DETECTOR_SCORE, "recon": "reconstruction", "mahalanobis": "Mahalanobis", "classifier": "classifier"}
    return [(names.get(t.name, t.name), t.key, t.name) for t in bundle.targets().values()]


def detector_evaluation(bundle, labels: np.ndarray, analysis: Mapping[str, np.ndarray],
                        defects: Sequence[str] | None = None) -> dict[str, Any]:
    """ROC curves, AUROC and confusion matrices of every score of a category's test split.

    Args:
        bundle: the models (for thresholds, key and card).
        labels: 1 defective, 0 good, per image.
        analysis: ``bundle.analyse(images)`` (at least the four score arrays).
        defects: the defect type per image (for per-type AUROC).

    Returns:
        ``{"model", "n", "n_defective", "scores": {name: {"auroc", "threshold", "fpr", "tpr",
        "confusion": [[tn, fp], [fn, tp]], "normal": [...], "defective": [...]}}, "per_defect_auroc"}``.
    """

    y = np.asarray(labels).astype(int)
    both = len(np.unique(y)) == 2
    out: dict[str, Any] = {"model": bundle.key(), "category": bundle.category, "dataset": bundle.dataset,
                           "detector": bundle.detector_name, "detector_label": bundle.detector.label,
                           "n": int(len(y)), "n_defective": int(y.sum()), "scores": {}}
    for name, key, target in detector_scores(bundle):
        if key not in analysis:
            continue
        s = np.asarray(analysis[key], np.float64)
        thr = bundle.threshold_for(target)
        pred = (s > thr).astype(int)
        entry: dict[str, Any] = {"threshold": thr, "normal": s[y == 0].tolist(), "defective": s[y == 1].tolist(),
                                 "confusion": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
                                 "fpr_good": float(pred[y == 0].mean()) if (y == 0).any() else None,
                                 "tpr_defect": float(pred[y == 1].mean()) if (y == 1).any() else None}
        if both:
            fpr, tpr, _ = roc_curve(y, s)
            entry.update(auroc=float(roc_auc_score(y, s)), fpr=fpr.tolist(), tpr=tpr.tolist())
        else:
            entry.update(auroc=None, fpr=[], tpr=[])
        out["scores"][name] = entry
    per = {}
    if defects is not None and both:
        d = np.asarray(defects)
        for t in sorted(set(d[y == 1])):
            m = (y == 0) | (d == t)
            per[t] = float(roc_auc_score(y[m], np.asarray(analysis["score"])[m]))
    out["per_defect_auroc"] = per
    return clean_json(out)
