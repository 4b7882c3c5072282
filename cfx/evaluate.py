"""Test-split evaluation of a category's selected detector (image AUROC per score, pixel AUROC, F1,
false-positive rate on good parts and true-positive rate on defects at the stored threshold)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from cfx.data.mvtec import MVTecDataset


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def evaluate_category(bundle, root: str | Path, category: str) -> dict[str, Any]:
    """Scores every test image with the bundle.

    Returns:
        ``detector``, ``image_auroc`` (the detector's score), ``image_auroc_recon`` and
        ``image_auroc_mahalanobis`` (VAE detector only), ``classifier_auroc`` (when a classifier
        is trained), ``pixel_auroc`` (the detector's map over the images whose mask is known,
        good images included; None without any defect mask), ``f1``, ``accuracy``,
        ``fpr_good`` (share of test/good called anomalous) and ``tpr_defect`` (share of
        defective images called anomalous) at the stored ``threshold``, ``threshold_rule``,
        ``n_test``, ``n_with_mask``, ``per_defect_auroc``.
    """
    ds = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels)
    arr = ds.arrays()
    a = bundle.analyse(arr.images)
    y = arr.labels
    pred = a["anomalous"]
    out: dict[str, Any] = {
        "detector": bundle.detector_name,
        "image_auroc": _auroc(y, a["score"]),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float((pred == y.astype(bool)).mean()),
        "fpr_good": float(pred[y == 0].mean()) if (y == 0).any() else None,
        "tpr_defect": float(pred[y == 1].mean()) if (y == 1).any() else None,
        "threshold": bundle.threshold,
        "threshold_rule": bundle.card.get("detectors", {}).get(bundle.detector_name, {}).get(
            "threshold_rule", bundle.card.get("threshold_rule")),
        "n_test": int(len(y)), "n_defective": int(y.sum()),
        "n_with_mask": int((arr.has_mask & (y == 1)).sum()),
    }
    for key, (name, _) in bundle.detector.parts.items():
        out[f"image_auroc_{name}"] = _auroc(y, a[key])
    if "classifier" in a:
        out["classifier_auroc"] = _auroc(y, a["classifier"])
        out["classifier_f1"] = float(f1_score(y, a["classifier_anomalous"], zero_division=0))
    sel = arr.has_mask
    if (sel & (y == 1)).any():
        heat = a["heatmap"][sel].ravel()
        truth = arr.masks[sel].ravel()
        out["pixel_auroc"] = float(roc_auc_score(truth, heat))
    else:
        out["pixel_auroc"] = None
    per = {}
    good = y == 0
    for d in sorted({s.defect for s in arr.samples} - {"good"}):
        m = np.array([s.defect == d for s in arr.samples])
        if good.any():
            per[d] = _auroc(np.r_[np.zeros(good.sum()), np.ones(m.sum())], np.r_[a["score"][good], a["score"][m]])
    out["per_defect_auroc"] = per
    if arr.skipped:
        out["skipped"] = arr.skipped
    return out
