"""The one colour scale of every heatmap and difference map (app, reports, audit).

Heatmaps share :data:`HEAT_CMAP` on [-1, 1]; each map is divided by its scale (:func:`heat_scale`:
the largest absolute value), so unsigned maps use the upper half and signed maps both halves. The
app builds its Plotly colour scale from the same colormap (:func:`plotly_colorscale`).

A *calibrated* map, the detector's own (1.0 = the 99.9th percentile of normal pixels), is drawn
by :func:`calibrated_display` instead: the normal range 0..1 fills the lower half of the positive
scale and the range above it, up to the image's own peak, the upper half, with a contour where
the map crosses 1.0 (what a good part reaches). Divided by a fixed scale, a defect 80 times over
the normal range saturated into a red blob several times its size (the demo tablet's crack).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cfx.explainers.base import Explanation

#: The one colormap of every heatmap and difference map (app and reports), on [-1, 1].
HEAT_CMAP = "RdBu_r"


# ------------------------------------------------------------------ colour scale
def heat_scale(exp: Explanation) -> float:
    """The value that maps to the end of the colour scale for ``exp.heatmap`` (a calibrated
    map's 1.0, the top of the normal range, else the largest absolute value); recorded in the
    exports' numbers. A calibrated map is drawn with :func:`calibrated_display`."""
    s = exp.info.get("heat_scale") if exp.info else None
    if s:
        return float(s)
    return max_abs(exp.heatmap)


#: on a calibrated map, the share of the colour scale's positive half that the normal range fills
NORMAL_SHARE = 0.5
#: the colour of the contour where a calibrated map leaves the normal range (the mask's is green)
NORMAL_CONTOUR = "#ffd400"


def calibrated(exp: Explanation) -> bool:
    """Whether ``exp.heatmap`` is a calibrated map (1.0 = the most a normal part's pixels reach)."""
    return bool(exp.info and exp.info.get("heat_scale"))


def calibrated_display(heat: np.ndarray) -> np.ndarray:
    """A calibrated map on the colour scale's [0, 1]: the normal range 0..1 linearly onto
    0..:data:`NORMAL_SHARE`, the range above it linearly onto the rest up to the image's own peak
    (so a defect never saturates into its halo; a normal image stays pale)."""
    h = np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0, None)
    peak = float(h.max(initial=0.0))
    above = NORMAL_SHARE + (1 - NORMAL_SHARE) * (h - 1.0) / max(peak - 1.0, 1e-9)
    return np.where(h <= 1.0, NORMAL_SHARE * h, above).clip(0, 1).astype(np.float32)


def calibrated_caption(heat: np.ndarray) -> str:
    """What the colours of a calibrated map mean, in words."""
    peak = float(np.nanmax(heat)) if np.size(heat) else 0.0
    if peak <= 1.0:
        return "all within what a good part reaches (yellow line: none)"
    return (f"pale: within a good part's range; red: above it, up to this image's peak {peak:.3g} "
            "x the normal maximum; yellow line: where it leaves the normal range")


def max_abs(a: np.ndarray | None) -> float:
    if a is None:
        return 1.0
    m = float(np.nanmax(np.abs(a))) if np.size(a) else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def normalise(a: np.ndarray, scale: float) -> np.ndarray:
    """``a / scale`` clipped to [-1, 1] (NaN -> 0)."""
    return np.clip(np.nan_to_num(np.asarray(a, np.float32) / float(scale or 1.0)), -1.0, 1.0)


def _cmap():
    import matplotlib

    return matplotlib.colormaps[HEAT_CMAP]


def heat_rgb(normalised: np.ndarray) -> np.ndarray:
    """A map on [-1, 1] as uint8 RGB (H, W, 3) in the shared colour scale."""
    rgba = _cmap()((np.asarray(normalised, np.float64) + 1.0) / 2.0)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def heat_alpha(normalised: np.ndarray) -> np.ndarray:
    """Opacity of a map drawn over its image: faint near 0, opaque at the ends of the scale."""
    return np.clip(ALPHA_FLOOR + (1 - ALPHA_FLOOR) * np.abs(np.asarray(normalised, np.float64)) * 1.6, 0, 1)


#: Opacity of a zero value of a map drawn over an image.
ALPHA_FLOOR = 0.12


def heat_rgba(normalised: np.ndarray) -> np.ndarray:
    """A map on [-1, 1] as float RGBA (H, W, 4) for drawing over an image (see :func:`heat_alpha`)."""
    rgba = _cmap()((np.asarray(normalised, np.float64) + 1.0) / 2.0)
    rgba[..., 3] = heat_alpha(normalised)
    return rgba


def plotly_colorscale(n: int = 21, alpha: bool = False) -> list[list[Any]]:
    """The shared colour scale as a Plotly colorscale (use with zmin=-1, zmax=1); with ``alpha``,
    the opacity of :func:`heat_alpha` (for drawing over an image)."""
    cm = _cmap()
    out = []
    for t in np.linspace(0, 1, n):
        r, g, b, _ = cm(float(t))
        a = float(heat_alpha(np.array(2 * t - 1))) if alpha else 1.0
        out.append([float(t), f"rgba({int(r * 255 + .5)},{int(g * 255 + .5)},{int(b * 255 + .5)},{a:.3f})"])
    return out


def image_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float -> (H, W) or (H, W, 3) float for display."""
    a = np.clip(np.asarray(image, np.float32), 0, 1)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a
