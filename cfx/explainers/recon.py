"""The reconstruction heatmap: the detector's per-pixel error on one calibrated scale.

The map is the VAE's squared reconstruction error, averaged over channels and lightly smoothed
(the detector's Gaussian, sigma 2 px), divided by the heat scale of normal training images
(the 99.9th percentile of their per-pixel error). So 1.0 means "as hot as the hottest 0.1% of
pixels of normal images" on every image: normal images stay cool, and maps of two images
compare.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cfx.explainers._util import scores_from_analysis
from cfx.explainers.base import Explainer, Explanation, register


@register
class ReconHeatmap(Explainer):
    """The detector's calibrated reconstruction-error map (one forward pass)."""

    name: ClassVar[str] = "recon"
    kind: ClassVar[str] = "heatmap"
    label: ClassVar[str] = "Reconstruction heatmap"
    defaults: ClassVar[dict[str, Any]] = {}
    heavy: ClassVar[bool] = False

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        b = self.bundle
        a = b.analyse(image[None])
        exp = Explanation(self.name, target, image, float(scores_from_analysis(a, target)[0]), b.threshold_for(target))
        exp.heatmap = np.asarray(a["heatmap"][0], np.float32)
        exp.signed = False
        # 1.0 = the 99.9th percentile of normal per-pixel error: the end of the colour scale
        exp.info["heat_scale"] = 1.0
        exp.info["max_heat"] = float(exp.heatmap.max())
        if target == "classifier":
            exp.info["note"] = "the reconstruction map is the detector's; it does not depend on the classifier"
        return exp
