"""Fitting the PatchCore detector (no training: a memory bank of train/good patch features and a threshold on held-out normals).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cfx import config
from cfx.data.mvtec import MVTecDataset
from cfx.data.synth import synthesize
from cfx.detectors import (
    THRESHOLD_RULE,
    PatchCore,
    threshold_on_normals,
)
from cfx.errors import DataError
from cfx.models.bundle import category_dir
from cfx.models.identity import data_record
from cfx.resolve import record_root
from cfx.training.common import (
    MIN_TRAIN_IMAGES,
    VAL_FRACTION,
    _batched,
    _versions,
    merge_card,
    seed_everything,
    split_indices,
    synthetic_check,
)


def fit_patchcore(root: str | Path, category: str, dataset: str, seed: int = 0, out_dir: Path | None = None,
                  log: Callable[[str], None] = print, image_size: int = config.IMAGE_SIZE,
                  **kwargs: Any) -> dict[str, Any]:
    """Fit the PatchCore detector of a category (seconds to a minute on a CPU; no training).

    The memory bank comes from the same 85% of train/good that trains the other models; the
    held-out 15% normalise the score and choose the threshold (:data:`THRESHOLD_RULE`); synthetic
    anomalies made from the held-out images are a secondary check recorded in the card.

    Args:
        image_size: side of the working images (the card's ``image_size``: every model of the
            category and every image explained use it).
        kwargs: :class:`~cfx.detectors.PatchCore` arguments (``input_size``, ``coreset_fraction``...).

    Returns:
        The model card (with ``detectors["patchcore"]``).
    """
    t0 = time.perf_counter()
    seed_everything(seed)
    ds = MVTecDataset(root, category, "train", image_size=image_size)
    arr = ds.arrays()
    if len(arr.images) < 3:
        raise DataError(f"{category} has {len(arr.images)} train/good image(s); PatchCore needs at least 3")
    x_all = torch.from_numpy(arr.images)
    tr, va = split_indices(len(x_all), seed)
    det = PatchCore(**kwargs).to(config.device())
    det.fit(x_all[tr], x_all[va], seed=seed)
    det.eval()
    s_n = _batched(det.score, x_all[va].to(det.memory_bank.device), 16).cpu().numpy()
    thr = threshold_on_normals(s_n)
    det.threshold.fill_(thr)
    syn, _, _ = synthesize(arr.images[va], np.random.default_rng(seed + 7), per_image=3)
    s_a = _batched(det.score, torch.from_numpy(syn).to(det.memory_bank.device), 16).cpu().numpy()
    d = category_dir(dataset, category, out_dir)
    d.mkdir(parents=True, exist_ok=True)
    sha = det.save(d / det.filename)
    warnings = []
    if len(arr.images) < MIN_TRAIN_IMAGES:
        warnings.append(f"only {len(arr.images)} train/good images (< {MIN_TRAIN_IMAGES}): the threshold rests on "
                        f"{len(va)} held-out images and the detector may not hold on new good parts")
    info = {"file": det.filename, "sha256": sha, "threshold": thr, "threshold_rule": THRESHOLD_RULE,
            "heldout_normals": len(va), "train_images": len(tr), "config": det.config(),
            "memory_bank": list(det.memory_bank.shape), "fit_seconds": round(time.perf_counter() - t0, 1),
            "synthetic_check": synthetic_check(thr, s_n, s_a),
            "warnings": warnings, "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(config.device()), "versions": _versions()}
    card = {"dataset": dataset, "category": category, "data_root": record_root(root),
            "data": data_record(root, category), "channels": ds.channels,
            "image_size": int(x_all.shape[-1]), "seed": seed,
            "split": {"train": len(tr), "validation": len(va), "source": "train/good", "val_fraction": VAL_FRACTION},
            "files": {det.filename: sha}}
    card = merge_card(d, card, "patchcore", info, overwrite=False)
    log(f"{dataset}/{category}: PatchCore fitted in {info['fit_seconds']} s (bank {info['memory_bank'][0]} x "
        f"{info['memory_bank'][1]}), threshold {thr:.3f}; synthetic check TPR {info['synthetic_check']['tpr']:.2f}")
    for w in warnings:
        log(f"{dataset}/{category}: warning: {w}")
    return card
