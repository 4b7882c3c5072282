"""A detector's threshold at a stated false-alarm rate, estimated from normal images it was not
fitted on, with the estimate's uncertainty.

Split-conformal rule: with n scores of normal images that the detector did not see (PatchCore:
out-of-fold scores of every train/good image; the VAE: its held-out normals), the threshold is
their k-th smallest score, k = ceil((n + 1)(1 - alpha)). A new good part, exchangeable with those,
then scores above it with probability at most alpha. Given the n scores, the false-alarm rate
at that threshold is itself random: Beta(n + 1 - k, k) distributed, whose mean and 95th
percentile the card reports as the expected FPR and its upper bound.

When n is too small for alpha (k > n: fewer than 1/alpha - 1 normals), no order statistic
reaches it; the threshold is then the largest score plus one standard deviation (a guard band)
and the card says the target was not reachable, with the bound 1/(n + 1) of the largest score.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: the false-alarm rate a threshold is set at unless ``cfx train --target-fpr`` says otherwise
DEFAULT_TARGET_FPR = 0.01
#: the guard band, in standard deviations, when the target cannot be reached with the normals at hand
GUARD_SD = 1.0


def threshold_rule(target_fpr: float, n: int, reached: bool) -> str:
    """The rule in words, for the card."""
    if reached:
        return (f"the {math.ceil((n + 1) * (1 - target_fpr))}th smallest of {n} scores of normal training images the "
                f"detector was not fitted on (split conformal: a new good part scores above it with probability "
                f"<= {target_fpr:g})")
    return (f"{n} normal images cannot place a threshold at a false-alarm rate of {target_fpr:g}: the largest of "
            f"their scores plus {GUARD_SD:g} standard deviation")


def threshold_at_fpr(normal_scores: np.ndarray, target_fpr: float = DEFAULT_TARGET_FPR) -> dict[str, Any]:
    """The threshold at ``target_fpr`` from scores of normal images the detector was not fitted on.

    Returns:
        ``{"threshold", "target_fpr", "normals", "reached", "expected_fpr": {"mean", "upper_95"},
        "rule"}``; an image is anomalous when its score > threshold.

    Raises:
        ValueError: no scores, or a target outside (0, 1).
    """
    from scipy.stats import beta

    s = np.sort(np.asarray(normal_scores, np.float64))
    n = len(s)
    if n == 0:
        raise ValueError("no normal scores to place a threshold on")
    if not 0 < target_fpr < 1:
        raise ValueError(f"the target false-alarm rate must lie in (0, 1), not {target_fpr}")
    k = math.ceil((n + 1) * (1 - target_fpr))
    reached = k <= n
    if reached:
        thr = float(s[k - 1])
    else:
        k = n
        sd = float(s.std(ddof=1)) if n > 1 else 0.0
        thr = float(s[-1] + GUARD_SD * sd)
    thr += 1e-6 * max(1.0, abs(thr))  # "above", not "at": the k-th score itself is a normal part
    a, b = n + 1 - k, k
    return {"threshold": thr, "target_fpr": float(target_fpr), "normals": n, "reached": reached,
            "expected_fpr": {"mean": a / (a + b), "upper_95": float(beta.ppf(0.95, a, b))},
            "rule": threshold_rule(target_fpr, n, reached)}


def fpr_at(normal_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The expected false-alarm rate of a given ``threshold`` from n normal scores, as
    :func:`threshold_at_fpr` states it for its own: with k of them at or below it, Beta(n + 1 - k, k)
    (k at least 1): ``{"mean", "upper_95"}``."""
    from scipy.stats import beta

    s = np.asarray(normal_scores, np.float64)
    n = len(s)
    k = max(1, int((s <= threshold).sum()))
    a, b = n + 1 - k, k
    return {"mean": a / (a + b), "upper_95": float(beta.ppf(0.95, a, b))}


def expected_tpr(threshold: float, synthetic_scores: np.ndarray) -> dict[str, Any]:
    """The share of synthetic defects (scored as new parts) above ``threshold``, with a 95% Wilson
    interval; an estimate of the TPR on real defects only as far as the synthetic ones resemble them."""
    s = np.asarray(synthetic_scores, np.float64)
    n = len(s)
    if n == 0:
        return {"mean": None, "low_95": None, "high_95": None, "defects": 0}
    p = float((s > threshold).mean())
    z = 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "low_95": max(0.0, centre - half), "high_95": min(1.0, centre + half), "defects": n}
