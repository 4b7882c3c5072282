"""Anomaly detectors behind one interface (:class:`cfx.detectors.base.Detector`), found by name.

* ``patchcore``: PatchCore on ImageNet EfficientNet-Lite0 features (:mod:`cfx.detectors.patchcore`),
  no training; the default wherever it is fitted.
* ``vae``: the multi-score VAE detector (:mod:`cfx.detectors.vae`), trained with the autoencoder
  and the classifier.
"""
from __future__ import annotations

from pathlib import Path

from cfx.detectors.base import (Detector, blur_axis, choose_threshold, gaussian_kernel, rates_at, read_checkpoint,
                                write_checkpoint)
from cfx.detectors.calibration import DEFAULT_TARGET_FPR, threshold_at_fpr
from cfx.detectors.patchcore import PatchCore
from cfx.detectors.vae import MultiScoreDetector

#: The detectors by name, in the order the app offers them (the first fitted one is the default).
DETECTORS: dict[str, type[Detector]] = {"patchcore": PatchCore, "vae": MultiScoreDetector}
#: Every target name an explainer may be asked for (which ones a bundle offers: ``bundle.targets()``).
TARGETS = ("score", "recon", "mahalanobis", "classifier")


def detector_class(name: str) -> type[Detector]:
    """The detector class registered as ``name`` (ValueError naming the known ones otherwise)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


def load_detector(name: str, path: str | Path) -> Detector:
    """Read a detector's checkpoint (``weights_only``) and rebuild it, in eval mode on the CPU."""
    det = detector_class(name).from_checkpoint(read_checkpoint(path))
    return det.eval().requires_grad_(False)


__all__ = ["DETECTORS", "TARGETS", "DEFAULT_TARGET_FPR", "Detector", "MultiScoreDetector", "PatchCore", "blur_axis",
           "choose_threshold", "detector_class", "gaussian_kernel", "load_detector", "rates_at", "read_checkpoint",
           "threshold_at_fpr", "write_checkpoint"]
