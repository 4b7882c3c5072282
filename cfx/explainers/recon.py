"""The detector's own anomaly map on one calibrated scale (registry name ``recon``).

Whatever the selected detector (:meth:`cfx.detectors.base.Detector.analyse`): PatchCore's
nearest-neighbour patch distances, or the VAE's squared reconstruction error (averaged over
channels, smoothed by the detector's Gaussian, sigma 2 px), each divided by the heat scale of
held-out normal images (the 99.9th percentile of their map values). So 1.0 means "as hot as
the hottest 0.1% of pixels of normal images" on every image: normal images stay cool, and maps
of two images compare.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cfx.explainers.base import Explainer, Explanation, register


@register
class ReconHeatmap(Explainer):
    """The selected detector's calibrated anomaly map (one forward pass)."""

    name: ClassVar[str] = "recon"
    order: ClassVar[int] = 0
    heavy: ClassVar[bool] = False
    kind: ClassVar[str] = "heatmap"
    label: ClassVar[str] = "Detector's anomaly map"
    defaults: ClassVar[dict[str, Any]] = {}

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        b = self.bundle
        a = b.analyse(image[None])
        t = b.target(target)
        exp = Explanation(self.name, target, image, float(t.read(a)[0]), t.threshold)
        exp.heatmap = np.asarray(a["heatmap"][0], np.float32)
        exp.signed = False
        # 1.0 = the 99.9th percentile of normal per-pixel error: the end of the colour scale
        exp.info["heat_scale"] = 1.0
        exp.info["max_heat"] = float(exp.heatmap.max())
        exp.info["detector"] = b.detector_name
        if target == "classifier":
            exp.info["note"] = "the anomaly map is the detector's; it does not depend on the classifier"
        return exp
