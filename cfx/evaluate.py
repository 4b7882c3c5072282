"""Test-split evaluation of a category's models (image AUROC per score, pixel AUROC, F1)."""
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
        ``image_auroc`` (combined score), ``image_auroc_recon``, ``image_auroc_mahalanobis``,
        ``classifier_auroc``, ``pixel_auroc`` (reconstruction heatmap over the images whose mask
        is known, good images included; None without any defect mask), ``f1`` and ``accuracy``
        at the stored threshold, ``threshold``, ``n_test``, ``n_with_mask``, ``per_defect`` AUROC.
    """
    ds = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels)
    arr = ds.arrays()
    a = bundle.analyse(arr.images)
    y = arr.labels
    out: dict[str, Any] = {
        "image_auroc": _auroc(y, a["score"]),
        "image_auroc_recon": _auroc(y, a["recon_score"]),
        "image_auroc_mahalanobis": _auroc(y, a["mahalanobis_score"]),
        "classifier_auroc": _auroc(y, a["classifier"]),
        "f1": float(f1_score(y, a["anomalous"], zero_division=0)),
        "accuracy": float((a["anomalous"] == y.astype(bool)).mean()),
        "classifier_f1": float(f1_score(y, a["classifier_anomalous"], zero_division=0)),
        "threshold": bundle.threshold,
        "n_test": int(len(y)), "n_defective": int(y.sum()),
        "n_with_mask": int((arr.has_mask & (y == 1)).sum()),
    }
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
