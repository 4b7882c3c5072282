"""Concept counterfactuals: several distinct, named ways in which an anomaly could become normal,
each walked with a slider (the idea of Liznerski et al., "Reimagining Anomalies: What If
Anomalies Were Normal?": not one repair but the different kinds of change that each would do).

A concept is a *kind of change* of the real image towards the nearest normal content ``N`` (the
real good part the counterfactual methods fill their edits with, :mod:`cfx.explainers.edit`),
split by spatial frequency with a Gaussian of :func:`band_sigma` (the image's side / 32):

* **colour** (``x + L(N - x)``): only the shade and colour change, the original's fine detail
  (edges, texture, the defect's outline) stays;
* **structure** (``L(x) + N - L(N)``): only the fine detail changes (edges, texture, shape), the
  original's shade and colour stay;
* **whole** (``N``): both;
* **region i** (``N`` inside one connected region where the detector's map exceeds what a normal
  part reaches, :func:`abnormal_regions`), one concept per region, the largest
  :data:`MAX_REGIONS` first, when the map shows more than one.

Each becomes the smallest local edit of its kind that the *selected* detector calls normal
(:class:`cfx.explainers.counterfactual.CounterfactualExplainer`; a region concept's edit stays in
its region). A concept no edit of its kind makes normal is reported as *not sufficient on its
own*, which is an answer too ("colour alone does not make it normal"). Measured on the demo and
on real bottle: BENCHMARKS.md (the trained latent generator this replaced gave three copies of
one edit under PatchCore, relative diversity 0.004).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, label

#: the kinds of change, in display order (region concepts follow)
KINDS = ("colour", "structure", "whole")
#: what each kind changes, in words (pages, reports)
DESCRIPTIONS = {
    "colour": "only the shade and colour, as on a good part; the fine detail stays",
    "structure": "only the fine detail (edges, texture, shape), as on a good part; the shade stays",
    "whole": "shade and detail, as on a good part",
    "region": "only this one abnormal region, as on a good part",
}
#: at most this many region concepts (the largest abnormal regions by their summed map)
MAX_REGIONS = 3
#: the detector's calibrated map above this is beyond what a normal part reaches (1.0: the 99.9th
#: percentile of normal pixels)
NORMAL_LEVEL = 1.0
#: a region concept may reach this many pixels beyond its region (the map's halo; × side / 128)
REGION_MARGIN = 3


@dataclass
class Concept:
    """One kind of change: its ``name`` (``colour``, ``structure``, ``whole`` or ``region 1``...),
    the ``content`` its edit fills with (C, H, W) and where the edit may lie (``allowed``, H, W
    bool, or None for anywhere)."""

    name: str
    content: np.ndarray
    allowed: np.ndarray | None = None

    @property
    def description(self) -> str:
        return describe(self.name)


def describe(name: str) -> str:
    """What the concept called ``name`` changes, in words (:data:`DESCRIPTIONS`)."""
    return DESCRIPTIONS["region" if name.startswith("region") else name]


def band_sigma(side: int) -> float:
    """The Gaussian sigma (px) that splits shade and colour from fine detail: side / 32."""
    return max(1.0, side / 32.0)


def lowpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """Each channel of (C, H, W) blurred with a Gaussian of ``sigma`` px (edges reflected)."""
    return np.stack([gaussian_filter(np.asarray(c, np.float32), sigma, mode="reflect") for c in image])


def abnormal_regions(heat: np.ndarray, level: float = NORMAL_LEVEL, max_regions: int = MAX_REGIONS) -> list[np.ndarray]:
    """The connected regions (8-neighbourhood) where the detector's calibrated map exceeds
    ``level``, largest summed map first, at most ``max_regions``; each dilated by
    :data:`REGION_MARGIN` px (scaled with the side). Regions under 0.1% of the image are left out."""
    h = np.asarray(heat, np.float64)
    lab, n = label(h > level, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    weight = np.bincount(lab.ravel(), weights=h.ravel(), minlength=n + 1)[1:]
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    keep = [i + 1 for i in np.argsort(-weight) if size[i] >= 0.001 * h.size][:max_regions]
    grow = max(1, int(round(REGION_MARGIN * h.shape[0] / 128)))
    return [binary_dilation(lab == i, iterations=grow) for i in keep]


def named_concepts(x: np.ndarray, normal: np.ndarray, heat: np.ndarray, max_regions: int = MAX_REGIONS) -> list[Concept]:
    """The concepts of image ``x`` (C, H, W) with the nearest normal content ``normal`` and the
    detector's calibrated map ``heat`` (H, W): :data:`KINDS`, then one per abnormal region when
    there are at least two (see the module docstring)."""
    x = np.asarray(x, np.float32)
    n = np.asarray(normal, np.float32)
    s = band_sigma(x.shape[-1])
    lx, ln = lowpass(x, s), lowpass(n, s)
    out = [Concept("colour", np.clip(x + ln - lx, 0, 1)),
           Concept("structure", np.clip(lx + n - ln, 0, 1)),
           Concept("whole", n)]
    regions = abnormal_regions(heat, max_regions=max_regions)
    if len(regions) >= 2:
        out += [Concept(f"region {i + 1}", n, r) for i, r in enumerate(regions)]
    return out
