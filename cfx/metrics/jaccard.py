"""How well an explanation map matches a ground-truth defect mask.

The optimal Jaccard J* (after Rashid et al., "Can I trust my anomaly detection system? A case
study"): rank the pixels by the map, positive attribution first, and sweep a threshold ``t``
over the distinct values; at each, compare the selected pixels ``{map >= t}`` with the mask by
their Jaccard index (intersection over union). J* is the best of these, reached at the optimal
threshold. A detector that calls an image anomalous while every threshold of its explanation
misses the defect (low J*) was right for the wrong reason.

Everything is vectorised: one sort and cumulative sums give the whole curve; ties (pixels of
equal value) enter the selection together, since no threshold can split them.

Negligible attribution is no attribution: a value below ``floor`` (1 %) of the map's peak does
not enter the sweep. Perturbation methods (LIME, SHAP) give every region a small non-zero weight
(regression noise; round-off where the model's output saturates), about half of them positive.
Without a floor the sweep reaches down into that noise, and a noise superpixel that happens to lie
on the defect earns the map a J* it did not deserve: on the demo ``shortcut`` category, where the
classifier looks only at a stamp, LIME's J* was reached at thresholds of 0.01-0.8 % of its peak
and 35 % of those maps escaped the flag. The floor moved no J* on the honest demo categories
(brick, gravel: identical up to a floor of 5 %).

Counterfactual methods have no heatmap: their map is the absolute difference between the
counterfactual and the original (:func:`explanation_map`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: attributions below this share of the map's largest value count as none (see the module docstring)
NEGLIGIBLE = 0.01


@dataclass
class JaccardCurve:
    """The optimal Jaccard of one map against one mask.

    Attributes:
        jaccard: J*, the maximum Jaccard over the thresholds (0.0 when the map has no candidate
            pixel, i.e. no positive value with ``positive_only``; NaN when the mask is empty).
        threshold: the threshold reaching J* (the selection is ``map >= threshold``); ``inf``
            when there is no candidate. The highest such threshold (smallest selection) when
            several reach J*.
        thresholds: (K,) the distinct candidate values, descending (the sweep).
        curve: (K,) the Jaccard at each threshold.
        selected: (K,) the share of the image's pixels selected at each threshold.
        mask_fraction: the share of pixels in the mask.
    """

    jaccard: float
    threshold: float
    thresholds: np.ndarray
    curve: np.ndarray
    selected: np.ndarray
    mask_fraction: float

    @property
    def best_index(self) -> int | None:
        """Index of J* in ``curve`` (None without candidates)."""
        if not len(self.curve) or not np.isfinite(self.jaccard):
            return None
        return int(np.flatnonzero(self.curve == self.jaccard)[0])

    @property
    def best_selected(self) -> float:
        """The share of pixels selected at the optimal threshold (0 without candidates)."""
        i = self.best_index
        return 0.0 if i is None else float(self.selected[i])

    def downsampled(self, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At most ``points`` samples of (thresholds, curve, selected), J* included (for plots)."""
        n = len(self.curve)
        if n <= points:
            return self.thresholds, self.curve, self.selected
        idx = np.unique(np.r_[np.linspace(0, n - 1, points).round().astype(int), self.best_index or 0])
        return self.thresholds[idx], self.curve[idx], self.selected[idx]


def _check(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat = np.asarray(heat, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if heat.shape != mask.shape:
        raise ValueError(f"map shape {heat.shape} does not match mask shape {mask.shape}")
    return heat.ravel(), mask.ravel()


def optimal_jaccard(heat: np.ndarray, mask: np.ndarray, positive_only: bool = True,
                    floor: float = NEGLIGIBLE) -> JaccardCurve:
    """The optimal Jaccard J* of a map against a mask, with its threshold and the whole curve.

    Args:
        heat: the map (H, W); higher = more responsible for the anomaly. NaN pixels are never
            selected.
        mask: the ground truth (H, W), bool or 0/1.
        positive_only: sweep only thresholds > 0, so that pixels of zero or negative attribution
            (evidence against the anomaly, or none) are never counted as the explanation.
            Set False for maps whose scale has no meaningful zero.
        floor: with ``positive_only``, values at or below ``floor`` times the map's largest
            value are negligible and never selected (0: any positive value counts).

    Returns:
        A :class:`JaccardCurve`. J* is NaN for an empty mask (Jaccard is undefined against
        nothing) and 0.0 for a map without any candidate pixel (an empty explanation).

    Raises:
        ValueError: when the shapes differ.
    """
    h, m = _check(heat, mask)
    n = h.size
    n_mask = int(m.sum())
    mask_fraction = n_mask / n if n else 0.0
    if positive_only:
        finite = np.isfinite(h)
        peak = float(h[finite].max()) if finite.any() else 0.0
        keep = finite & (h > max(0.0, float(floor) * peak))
    else:
        keep = ~np.isnan(h)
    hv, mv = h[keep], m[keep]
    order = np.argsort(-hv, kind="stable")
    hs, ms = hv[order], mv[order]
    # the last index of each group of equal values: a threshold at that value selects the group whole
    if hs.size:
        ends = np.flatnonzero(np.r_[hs[1:] != hs[:-1], True])
    else:
        ends = np.zeros(0, dtype=int)
    inter = np.cumsum(ms, dtype=np.int64)[ends] if hs.size else np.zeros(0, np.int64)
    sel = ends + 1
    union = sel + n_mask - inter
    curve = inter / np.maximum(union, 1)
    thresholds = hs[ends]
    selected = sel / n if n else sel.astype(float)
    if n_mask == 0:
        best, thr = float("nan"), float("inf")
    elif not len(curve):
        best, thr = 0.0, float("inf")
    else:
        i = int(np.argmax(curve))
        best, thr = float(curve[i]), float(thresholds[i])
    return JaccardCurve(best, thr, thresholds, curve.astype(np.float64), selected.astype(np.float64), mask_fraction)


def jaccard(selection: np.ndarray, mask: np.ndarray) -> float:
    """The Jaccard index of two boolean maps (NaN when both are empty)."""
    a, b = np.asarray(selection, bool), np.asarray(mask, bool)
    if a.shape != b.shape:
        raise ValueError(f"selection shape {a.shape} does not match mask shape {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def best_mask(heat: np.ndarray, threshold: float) -> np.ndarray:
    """The selection ``heat >= threshold`` (bool; all False for an infinite threshold)."""
    h = np.asarray(heat, dtype=np.float64)
    if not np.isfinite(threshold):
        return np.zeros(h.shape, bool)
    return np.nan_to_num(h, nan=-np.inf) >= threshold


def explanation_map(explanation, k: int = 0) -> np.ndarray | None:
    """The map an explanation is judged by: its heatmap, else the absolute difference of its
    ``k``-th counterfactual (:meth:`~cfx.explainers.base.Explanation.difference`).

    Args:
        explanation: an :class:`~cfx.explainers.base.Explanation`.
        k: which counterfactual (0 = the closest valid one).

    Returns:
        float32 (H, W), or None when the method failed or produced neither.
    """
    if getattr(explanation, "error", None):
        return None
    if explanation.heatmap is not None:
        return np.asarray(explanation.heatmap, dtype=np.float32)
    d = explanation.difference(k)
    return None if d is None else np.abs(np.asarray(d, dtype=np.float32))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The area under the ROC curve by mid-ranks (the Mann-Whitney U over positives times negatives):
    the value of scikit-learn's ``roc_auc_score`` (ties count half), from one sort and no threshold
    sweep: 2.6-5 times faster on a category's pooled pixels (2 M; BENCHMARKS.md, issue 16).

    Args:
        labels: truth (N,), boolean or 0/1.
        scores: finite scores (N,); higher means more likely positive.

    Returns:
        The AUROC, or None when the labels are all of one class (or there are none).

    Raises:
        ValueError: scores that are not finite, or shapes that differ.
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels against {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError("the scores contain NaN or infinity")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s)  # tied scores are grouped below, so their order does not matter
    ss = s[order]
    new = np.empty(ss.size, bool)
    new[0] = True
    np.not_equal(ss[1:], ss[:-1], out=new[1:])
    starts = np.flatnonzero(new)  # first index of each run of tied scores
    counts = np.diff(np.append(starts, ss.size))
    mid_rank = starts + (counts + 1) / 2.0  # 1-based mean rank of each run
    pos = np.add.reduceat(y[order].astype(np.float64), starts)  # positives in each run
    return float((pos @ mid_rank - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(heats: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> float | None:
    """Pixel-level AUROC of maps against masks, pooled over images (:func:`auroc`).

    Args:
        heats: maps (H, W) (a stacked array or a list; None entries are left out).
        masks: the matching masks.

    Returns:
        The AUROC, or None when the pooled pixels are all of one class (or there are none).
        NaN map values count as the lowest score.
    """
    hs, ms = [], []
    for h, m in zip(heats, masks):
        if h is None:
            continue
        h, m = _check(h, m)
        hs.append(h)
        ms.append(m)
    if not hs:
        return None
    h, m = np.concatenate(hs), np.concatenate(ms)
    if m.all() or not m.any():
        return None
    finite = h[np.isfinite(h)]
    low = (finite.min() - 1.0) if finite.size else 0.0
    h = np.where(np.isnan(h), low, h)
    return auroc(m, h)
