"""What every fit shares: seeding, the train/validation split of train/good (the same for every model of a category), the card's records (versions, merging a detector's entry, the synthetic check) and the too-little-data limit.
"""
from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from cfx.atomic import write_json
from cfx.detectors import (
    rates_at,
)
from cfx.models.identity import fitted_root
from cfx.models.versions import VERSIONS

VAL_FRACTION = 0.15


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def split_indices(n: int, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices of ``n`` normal images (deterministic)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(2, int(round(n * val_fraction))) if n >= 6 else max(1, n // 3)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("torch", "numpy", "scikit-learn", "scikit-image", "pillow"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int = 128) -> torch.Tensor:
    return torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)])


def card_in(d: Path) -> dict[str, Any]:
    """The card in the models folder ``d`` as JSON ({} when absent or unreadable: a fit replaces it)."""
    try:
        card = json.loads((d / "card.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def same_models_data(old: dict[str, Any], card: dict[str, Any]) -> bool:
    """Whether two cards describe models of the same data: root, channels and image size (models
    of other data are removed, not kept beside new ones)."""
    return (old.get("channels") == card.get("channels") and old.get("image_size") == card.get("image_size")
            and fitted_root(old) == fitted_root(card))


def merge_card(d: Path, card: dict[str, Any], detector: str, info: dict[str, Any],
               overwrite: bool = True) -> dict[str, Any]:
    """Write ``card`` to ``d/card.json`` atomically, keeping the other detectors' records of the
    card already there; ``info`` becomes ``card["detectors"][detector]``. With ``overwrite``
    False, top-level keys already in the card keep their values. Returns the card written."""
    path = d / "card.json"
    old = card_in(d)
    same_data = same_models_data(old, card)
    if old and not same_data:  # models of other data or another size: none of them is kept
        for f in d.glob("*.pt"):
            if f.name not in card.get("files", {}):
                f.unlink(missing_ok=True)
        shutil.rmtree(d / VERSIONS, ignore_errors=True)  # earlier versions of those models
    dets = dict(old.get("detectors", {})) if same_data else {}
    dets[detector] = info
    kept = old if same_data else {}
    merged = {**kept, **card} if overwrite else {**card, **kept}
    if "data" in card:
        merged["data"] = card["data"]  # the data of the latest fit (same root; its train/good as now)
    merged["detectors"] = dets
    merged["files"] = {**(old.get("files", {}) if same_data else {}), **card.get("files", {})}
    write_json(path, merged)
    return merged


#: train/good images below which a category's detector is flagged as fitted on too little data.
MIN_TRAIN_IMAGES = 30


def synthetic_check(threshold: float, normal_scores: np.ndarray, synthetic_scores: np.ndarray) -> dict[str, Any]:
    """The card's secondary check of a threshold: FPR on held-out normals, TPR and AUROC on
    synthetic anomalies made from them."""
    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(synthetic_scores))]
    return {**rates_at(threshold, normal_scores, synthetic_scores),
            "auroc": float(roc_auc_score(y, np.r_[normal_scores, synthetic_scores]))}


class _StateHolder(nn.Module):
    """Wraps a plain state dict so that :func:`save_module` can write it."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._sd = sd

    def state_dict(self, *a, **k):  # type: ignore[override]
        return dict(self._sd)
