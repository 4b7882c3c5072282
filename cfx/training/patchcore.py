"""Fitting the PatchCore detector (no training: a memory bank of train/good patch features, and a
threshold at a stated false-alarm rate from their out-of-fold scores)."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cfx import config
from cfx.atomic import writable_dir
from cfx.data.mvtec import MVTecDataset
from cfx.data.synth import synthesize
from cfx.detectors import PatchCore
from cfx.detectors.calibration import DEFAULT_TARGET_FPR, expected_tpr, threshold_at_fpr
from cfx.errors import DataError
from cfx.models.bundle import category_dir
from cfx.models.identity import data_record
from cfx.resolve import record_root
from cfx.training.common import (
    MIN_TRAIN_IMAGES,
    _versions,
    card_in,
    merge_card,
    same_models_data,
    seed_everything,
    synthetic_check,
)


def fit_patchcore(root: str | Path, category: str, dataset: str, seed: int = 0, out_dir: Path | None = None,
                  log: Callable[[str], None] = print, image_size: int = config.IMAGE_SIZE,
                  target_fpr: float = DEFAULT_TARGET_FPR, **kwargs: Any) -> dict[str, Any]:
    """Fit the PatchCore detector of a category (seconds to minutes on a CPU; no training).

    The memory bank comes from every train/good image; each of them is also scored out of fold
    (:meth:`PatchCore.fit`: against a bank searched without its fold), and those scores normalise
    the score and place the threshold at ``target_fpr``
    (:func:`~cfx.detectors.calibration.threshold_at_fpr`, with the expected FPR and its 95%
    bound). A synthetic defect made from each image, scored the same way, gives the expected TPR,
    recorded beside it.

    Args:
        image_size: side of the working images (the card's ``image_size``: every model of the
            category and every image explained use it).
        target_fpr: the false-alarm rate on good parts the threshold is set at.
        kwargs: :class:`~cfx.detectors.PatchCore` arguments (``input_size``, ``coreset_fraction``...).

    Returns:
        The model card (with ``detectors["patchcore"]``).
    """
    t0 = time.perf_counter()
    writable_dir(category_dir(dataset, category, out_dir), "the models folder")  # before minutes of fitting
    seed_everything(seed)
    ds = MVTecDataset(root, category, "train", image_size=image_size)
    arr = ds.arrays()
    if len(arr.images) < 3:
        raise DataError(f"{category} has {len(arr.images)} train/good image(s); PatchCore needs at least 3")
    x_all = torch.from_numpy(arr.images)
    det = PatchCore(**kwargs).to(config.device())
    raw = det.fit(x_all, seed=seed).numpy()
    det.eval()
    s_n = (raw - float(det.norm[0])) / float(det.norm[1])
    cal = threshold_at_fpr(s_n, target_fpr)
    thr = cal["threshold"]
    det.threshold.fill_(thr)
    s_a = _synthetic_out_of_fold(det, arr.images, seed)
    d = category_dir(dataset, category, out_dir)
    d.mkdir(parents=True, exist_ok=True)
    card = {"dataset": dataset, "category": category, "data_root": record_root(root),
            "data": data_record(root, category), "channels": ds.channels,
            "image_size": int(x_all.shape[-1]), "seed": seed}
    version = _archive_version(d, card)
    sha = det.save(d / det.filename)
    save_folds(d, det, folds_key(det, arr.images, seed))
    warnings = []
    if len(arr.images) < MIN_TRAIN_IMAGES:
        warnings.append(f"only {len(arr.images)} train/good images (< {MIN_TRAIN_IMAGES}): the threshold rests on "
                        f"their {len(arr.images)} out-of-fold scores and the detector may not hold on new good parts")
    if not cal["reached"]:
        warnings.append(f"{len(s_n)} normal images cannot place a threshold at a false-alarm rate of {target_fpr:g} "
                        f"(at least {int(1 / target_fpr)} are needed); expected FPR up to "
                        f"{cal['expected_fpr']['upper_95']:.3f}")
    info = {"file": det.filename, "sha256": sha, "version": version, "threshold": thr, "threshold_rule": cal["rule"],
            "target_fpr": target_fpr, "expected_fpr": cal["expected_fpr"],
            "expected_tpr": expected_tpr(thr, s_a),
            "calibration": {"normals": len(s_n), "folds": len(det.fold_of.unique()),
                            "scored": "each fold against a bank searched without it", "reached": cal["reached"]},
            "train_images": len(x_all), "config": det.config(),
            "memory_bank": list(det.memory_bank.shape), "fit_seconds": round(time.perf_counter() - t0, 1),
            "synthetic_check": synthetic_check(thr, s_n, s_a),
            "warnings": warnings, "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(config.device()), "versions": _versions()}
    card["files"] = {det.filename: sha}
    card = merge_card(d, card, "patchcore", info, overwrite=False)
    e_fpr, e_tpr = info["expected_fpr"], info["expected_tpr"]
    log(f"{dataset}/{category}: PatchCore fitted in {info['fit_seconds']} s (bank {info['memory_bank'][0]} x "
        f"{info['memory_bank'][1]}), threshold {thr:.3f} at a false-alarm rate of {target_fpr:g}: expected FPR "
        f"{e_fpr['mean']:.3f} (95% bound {e_fpr['upper_95']:.3f}), TPR on synthetic defects {e_tpr['mean']:.2f}")
    for w in warnings:
        log(f"{dataset}/{category}: warning: {w}")
    return card


#: the fold banks of a fit, kept beside the model for lessons (:mod:`cfx.teaching`) as the indices
#: of their rows among the training patches (a few kB): searching them is most of a fit's time (66
#: of 76 s of a lesson on the demo brick without them), recomputing the patches a few seconds
FOLDS_FILE = "patchcore-folds.pt"


def folds_key(det: PatchCore, train: np.ndarray, seed: int) -> dict[str, Any]:
    """What a fit's fold banks depend on: the train images, the seed and the bank's settings."""
    from cfx.inspection import image_sha

    return {"seed": int(seed), "train_sha": image_sha(train), "train_images": int(len(train)),
            "input_size": det.input_size, "coreset_fraction": det.coreset_fraction, "max_bank": det.max_bank}


def save_folds(d: Path, det: PatchCore, key: dict[str, Any]) -> None:
    """Write ``det``'s fold banks (:attr:`PatchCore.base_folds`) beside its model, atomically."""
    from cfx.detectors.base import write_checkpoint

    fold_of, rows = det.base_folds
    write_checkpoint(d / FOLDS_FILE, key, {"fold_of": fold_of, **{f"rows_{i}": r.int() for i, r in enumerate(rows)}})


def load_folds(d: Path, key: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The fold banks saved for ``key`` (None when absent, unreadable or made for other data)."""
    from cfx.errors import ModelMissingError
    from cfx.models.bundle import load_checkpoint

    try:
        ck = load_checkpoint(d / FOLDS_FILE)
    except ModelMissingError:
        return None
    if ck.get("config") != key:
        return None
    sd = ck["state_dict"]
    n = sum(k.startswith("rows_") for k in sd)
    return sd["fold_of"].long(), [sd[f"rows_{i}"].long() for i in range(n)]


def _archive_version(d: Path, card: dict[str, Any]) -> int:
    """Archive the PatchCore in use before a refit replaces it (:mod:`cfx.models.versions`), when it
    was fitted on the data of the new ``card`` at its size; the new fit's version number."""
    from cfx.models.versions import archive, next_version

    old = card_in(d)
    if not old or not same_models_data(old, card):
        return 1  # merge_card removes those models and their versions
    archive(d, "patchcore", old)
    return next_version(d, "patchcore", old)


def _synthetic_out_of_fold(det: PatchCore, images: np.ndarray, seed: int) -> np.ndarray:
    """Scores of a synthetic defect made from each training image (pasting from that image itself),
    each scored against the bank searched without its fold: as a new defective part would score."""
    rng = np.random.default_rng(seed + 7)
    fold_of = det.fold_of.numpy()
    out = []
    for f in range(int(fold_of.max()) + 1):
        own = np.flatnonzero(fold_of == f)
        syn = np.concatenate([synthesize(images[i:i + 1], rng, per_image=1)[0] for i in own])
        _, raw = det.score_out_of_fold(torch.from_numpy(syn), f)
        out.append(((raw - det.norm[0]) / det.norm[1]).cpu().numpy())
    return np.concatenate(out)
