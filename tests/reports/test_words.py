"""cfx.reports.words: each kind of result, degenerate ones included, gets its own plain sentence."""
from __future__ import annotations

import numpy as np

from cfx.explainers.base import Counterfactual, Explanation
from cfx.reports.words import sentence

IMG = np.zeros((3, 32, 32), np.float32)
MASK = np.zeros((32, 32), bool)
MASK[4:10, 20:28] = True


def _map(where):
    h = np.zeros((32, 32), np.float32)
    h[where] = 1.0
    return h


def _exp(**kw):
    return Explanation(method="m", target="score", image=IMG, score_before=5.0, threshold=3.0, **kw)


def _cf(valid, **metrics):
    return Counterfactual(image=IMG, score_after=2.0 if valid else 4.0, valid=valid, detector_score=2.0,
                          detector_valid=valid, classifier_prob=float("nan"), classifier_valid=False, metrics=metrics)


def test_heatmaps_say_where_they_point():
    on = sentence(_exp(heatmap=_map((slice(4, 10), slice(20, 28)))), MASK)
    assert on.startswith("It points at the defect:") and "J* 1.00" in on and "pixel AUROC 1.000" in on
    off = sentence(_exp(heatmap=_map((slice(24, 30), slice(0, 6)))), MASK)
    assert off.startswith("It points elsewhere:") and "J* 0.00" in off and "the lower left" in off
    assert "the upper right" in sentence(_exp(heatmap=_map((slice(0, 5), slice(26, 32)))))


def test_a_map_that_separates_the_defect_is_never_said_to_point_elsewhere():
    """The demo tablet's crack under PatchCore: a calibrated map 80 times over the normal range on
    the defect with a wide halo put 8% of its weight on the mask and was called "pointing
    elsewhere" with pixel AUROC 0.996. The words follow J* and the pixel AUROC instead."""
    yy, xx = np.mgrid[:32, :32]
    halo = np.exp(-(((yy - 7) ** 2 + (xx - 24) ** 2) / 60.0)).astype(np.float32) * 80  # wide blob on the defect
    halo[MASK] += 5
    words = sentence(_exp(heatmap=halo), MASK)
    share = float(halo[MASK].sum() / halo.sum())
    assert share < 0.5 and words.startswith("It points at the defect:"), (share, words)
    partly = _map((slice(4, 16), slice(14, 28)))  # covers the defect and as much again
    assert sentence(_exp(heatmap=partly), MASK).startswith("It points at the defect:")


def test_degenerate_results_are_named_with_their_cause():
    empty = sentence(_exp(heatmap=np.zeros((32, 32), np.float32), info={"note": "all-zero map: no location carries "
                                                                                "positive evidence"}))
    assert empty.startswith("The map is empty: all-zero map") and "says nothing" in empty
    none = sentence(_exp(info={"message": "no counterfactual found: even the whole image stays anomalous"}))
    assert none.startswith("No edit this method tried") and "even the whole image" in none
    invalid = sentence(_exp(counterfactuals=[_cf(False)], info={"message": "no counterfactual found"}))
    assert invalid.startswith("No edit this method tried")
    failed = sentence(_exp(error="ModelMissingError: no latent ensemble: run python -m cfx train"))
    assert failed == "This method could not run: no latent ensemble: run python -m cfx train."


def test_counterfactuals_in_words():
    ok = sentence(_exp(counterfactuals=[_cf(True, edit_area=0.031, locality=0.9)]))
    assert ok.startswith("Changing 3.1% of the image mostly on the marked defect makes the detector call it normal")
    assert "5.00 → 2.00" in ok and "threshold 3.00" in ok
    away = sentence(_exp(counterfactuals=[_cf(True, edit_area=0.2, locality=0.1)]))
    assert "mostly away from the marked defect" in away
    normal = sentence(_exp(counterfactuals=[_cf(True, edit_area=0.0)],
                           info={"message": "already normal: the counterfactual is the image itself (no edit)"}))
    assert normal.startswith("The detector already calls this image normal")


def test_numbers_have_names_and_no_none():
    from cfx.reports.words import label, numbers, value

    info = {"regression_p_at_z0": 0.25, "heat_scale": 2.0, "traceback": "x", "search": "text",
            "ensemble_crossed_at": None, "step_clamped": True, "fidelity_detail": [1, 2]}
    pairs = dict(numbers(info))
    assert pairs == {"regression's P(anomalous) at the image": "0.25", "step where the ensemble crossed": "–",
                     "step clamped": "yes"}
    assert label("some_new_key") == "some new key"
    assert value(None) == value(float("nan")) == "–" and value(1 / 3) == "0.3333"
