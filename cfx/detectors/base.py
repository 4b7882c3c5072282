"""The one Detector interface every anomaly detector of cfx implements.

A detector is a plain ``nn.Module`` with:

* :meth:`Detector.fit` on normal training images and a held-out split of normal images;
* :meth:`Detector.score` ``(N, C, H, W) -> (N,)``, higher = more anomalous, on a scale normalised
  on the held-out normals (z-scores), differentiable where :attr:`Detector.differentiable`;
* :meth:`Detector.analyse`: the score, its parts (if any) and the calibrated anomaly map
  ``(N, H, W)`` at the input's resolution (1.0 = the 99.9th percentile of held-out normal pixels);
* a stored ``threshold`` buffer (an image is anomalous when its score > threshold), placed at a
  stated false-alarm rate on *real* normal images the detector was not fitted on
  (:mod:`cfx.detectors.calibration`);
* its own atomic save and ``weights_only`` load (:meth:`Detector.save`, :func:`load_detector`).

Explainers, the audit, export, the CLI and the pages talk to a detector only through this
interface (via :class:`cfx.models.bundle.ModelBundle`), so none of them special-cases one.
"""
from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cfx.atomic import write_bytes
from cfx.errors import ModelMissingError


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def blur_axis(e: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D convolution of (N, H, W) maps with the odd kernel ``k`` along ``dim`` (-1 or -2),
    replicate padding."""
    r = k.numel() // 2
    pad = (r, r, 0, 0) if dim == -1 else (0, 0, r, r)
    p = nn.functional.pad(e[:, None], pad, mode="replicate")[:, 0]
    n = e.shape[dim]
    w = k.tolist()
    out = p.narrow(dim, 0, n) * w[0]  # a new tensor: the in-place sums below are safe for autograd
    for i in range(1, len(w)):
        out.add_(p.narrow(dim, i, n), alpha=w[i])
    return out


def choose_threshold(scores_normal: np.ndarray, scores_anomalous: np.ndarray, rule: str = "f1") -> float:
    """A decision threshold between normal and anomalous scores.

    Args:
        rule: ``"f1"`` (maximise F1 of the anomalous class) or ``"gmean"`` (maximise
            sqrt(TPR * (1 - FPR))).

    Returns:
        The threshold t; an image is anomalous when its score > t.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.r_[np.zeros(len(scores_normal)), np.ones(len(scores_anomalous))]
    s = np.r_[scores_normal, scores_anomalous].astype(np.float64)
    if rule == "f1":
        p, r, t = precision_recall_curve(y, s)
        f1 = 2 * p * r / np.clip(p + r, 1e-12, None)
        i = int(np.argmax(f1[:-1]))
        thr = t[i]
    elif rule == "gmean":
        fpr, tpr, t = roc_curve(y, s)
        i = int(np.argmax(np.sqrt(tpr * (1 - fpr))))
        thr = t[i]
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    # put the threshold midway to the next lower score so that "score > threshold" holds at t
    lower = s[s < thr]
    return float((thr + lower.max()) / 2) if len(lower) else float(thr - 1e-6)


def rates_at(threshold: float, normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> dict[str, float | None]:
    """False-positive rate on normals and true-positive rate on anomalies at ``threshold``."""
    n, a = np.asarray(normal_scores), np.asarray(anomalous_scores)
    return {"fpr": float((n > threshold).mean()) if n.size else None,
            "tpr": float((a > threshold).mean()) if a.size else None}


class Detector(nn.Module):
    """Base class of the detectors (see the module docstring).

    Subclasses set :attr:`name`, :attr:`label`, :attr:`differentiable`, :attr:`parts` and
    implement :meth:`analyse`, :meth:`fit` and :meth:`config`. They register buffers for their
    fitted state, which :meth:`save` writes and :func:`load_detector` restores.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    #: whether :meth:`score` can be back-propagated to the image
    differentiable: ClassVar[bool] = True
    #: extra scores of :meth:`analyse` besides ``score``: analysis key -> (target name, label)
    parts: ClassVar[dict[str, tuple[str, str]]] = {}
    #: the file of its checkpoint in a category's model folder
    filename: ClassVar[str] = ""
    #: images per forward pass by device type where the default (:data:`cfx.config.FORWARD_BATCH`)
    #: does not suit the detector
    forward_batches: ClassVar[dict[str, int]] = {}
    #: device types where a call's several batches are scored by single-threaded workers
    #: (:mod:`cfx.batches`), where that was measured faster than one batch at a time
    parallel_batches: ClassVar[frozenset[str]] = frozenset()
    #: the autocast dtype of the network part of a score (None: float32), decided once per loaded
    #: detector by :func:`cfx.precision.settle` (CUDA only, where the scores stay within 1e-3)
    amp: torch.dtype | None = None
    amp_settled: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(0.0))

    # ------------------------------------------------------------------ interface
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly score (N,) of images (N, C, H, W) in [0, 1]."""
        return self.analyse(x)["score"]

    def analyse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``score`` (N,), ``heatmap`` (N, H, W) and the :attr:`parts`."""
        raise NotImplementedError

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """The calibrated anomaly map (N, H, W) at the input's resolution."""
        return self.analyse(x)["heatmap"]

    def part_score(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """One of :attr:`parts` (N,) (subclasses may compute it more cheaply)."""
        return self.analyse(x)[key]

    def fit(self, train: torch.Tensor, val_normal: torch.Tensor) -> None:
        """Fit on normal ``train`` images; normalise the score and the map on ``val_normal``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable) that rebuild this detector."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)

    # ------------------------------------------------------------------ persistence
    def state_to_save(self) -> dict[str, torch.Tensor]:
        """The tensors written by :meth:`save` (default: the whole state dict)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def checkpoint_config(self) -> dict[str, Any]:
        """The checkpoint's ``config`` (default: the registry name and :meth:`config`)."""
        return {"detector": self.name, "kwargs": self.config()}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """Write ``{"config", "state_dict"}`` atomically; returns the file's sha256."""
        return write_checkpoint(path, {**self.checkpoint_config(), **(extra or {})}, self.state_to_save())

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> "Detector":
        """Rebuild from a loaded checkpoint (float16 tensors already float32)."""
        det = cls(**ck["config"]["kwargs"])
        det.load_state_dict(ck["state_dict"])
        return det


def write_checkpoint(path: str | Path, cfg: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """Write ``{"config": cfg, "state_dict": state_dict}`` atomically (``torch.load(weights_only=True)``
    reads it back); returns the file's sha256."""
    buf = io.BytesIO()
    torch.save({"config": cfg, "state_dict": state_dict}, buf)
    data = buf.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with float16 tensors brought back to float32.

    Raises:
        ModelMissingError: when the file is missing or unreadable (one line naming the file).
    """
    path = Path(path)
    if not path.exists():
        raise ModelMissingError(f"missing model file {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one readable line
        raise ModelMissingError(f"cannot read model file {path} ({type(exc).__name__}); "
                                f"retrain it with python -m cfx train") from exc
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise ModelMissingError(f"{path} is not a cfx checkpoint; retrain it with python -m cfx train")
    ck["state_dict"] = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in ck["state_dict"].items()}
    return ck
