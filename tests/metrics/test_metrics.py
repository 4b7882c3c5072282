"""cfx.metrics: the optimal Jaccard against a brute-force loop, ties, empty and perfect maps;
the explanation map of counterfactuals; pixel AUROC."""
from __future__ import annotations

import numpy as np
import pytest

from cfx.explainers.base import Counterfactual, Explanation
from cfx.metrics import NEGLIGIBLE, auroc, best_mask, explanation_map, jaccard, optimal_jaccard, pixel_auroc


def brute_force(heat: np.ndarray, mask: np.ndarray, positive_only: bool = True,
                floor: float = NEGLIGIBLE) -> tuple[float, float]:
    """J* by looping over every distinct candidate threshold (the definition, slowly)."""
    best, best_t = 0.0, float("inf")
    values = np.unique(heat[~np.isnan(heat)])
    for t in values[::-1]:  # descending, so that the first maximum is the highest threshold
        if positive_only and t <= max(0.0, floor * np.nanmax(heat)):
            continue
        sel = heat >= t
        j = np.logical_and(sel, mask).sum() / np.logical_or(sel, mask).sum()
        if j > best:
            best, best_t = j, float(t)
    return best, best_t


def random_case(seed: int, size: int, levels: int | None, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    heat = rng.normal(size=(size, size)) if signed else rng.random((size, size))
    if levels:  # quantise: many ties
        heat = np.round(heat * levels) / levels
    mask = np.zeros((size, size), bool)
    y, x = rng.integers(0, size - size // 3, 2)
    mask[y:y + size // 3, x:x + size // 4] = True
    heat = heat + 0.7 * mask * rng.random()  # some signal in the mask
    if levels:
        heat = np.round(heat * levels) / levels
    return heat, mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 4, 20])
@pytest.mark.parametrize("signed", [False, True])
def test_optimal_jaccard_matches_brute_force(seed, levels, signed):
    heat, mask = random_case(seed, 24, levels, signed)
    r = optimal_jaccard(heat, mask)
    j, t = brute_force(heat, mask)
    assert r.jaccard == pytest.approx(j, abs=1e-12)
    assert r.threshold == pytest.approx(t)
    # the curve is the Jaccard at every candidate threshold
    assert len(r.curve) == len(np.unique(heat[heat > NEGLIGIBLE * heat.max()]))
    for k in np.random.default_rng(seed).integers(0, len(r.curve), 5):
        assert r.curve[k] == pytest.approx(jaccard(heat >= r.thresholds[k], mask))
        assert r.selected[k] == pytest.approx((heat >= r.thresholds[k]).mean())
    assert jaccard(best_mask(heat, r.threshold), mask) == pytest.approx(r.jaccard)


def test_all_thresholds_when_not_positive_only():
    heat, mask = random_case(3, 20, 10, signed=True)
    r = optimal_jaccard(heat, mask, positive_only=False)
    j, t = brute_force(heat, mask, positive_only=False)
    assert r.jaccard == pytest.approx(j) and r.threshold == pytest.approx(t)
    assert len(r.curve) == len(np.unique(heat))
    assert r.curve[-1] == pytest.approx(mask.mean())  # the last threshold selects everything


def test_ties_enter_together():
    # four pixels share the top value, two of them in the mask: no threshold can take only those two
    heat = np.zeros((4, 4))
    heat[0, :4] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    r = optimal_jaccard(heat, mask)
    assert len(r.curve) == 1
    assert r.jaccard == pytest.approx(2 / 4)
    assert r.threshold == 1.0


def test_perfect_heat_is_one():
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), bool)
    mask[5:12, 20:30] = True
    heat = np.where(mask, 2 + rng.random(mask.shape), rng.random(mask.shape))
    r = optimal_jaccard(heat, mask)
    assert r.jaccard == 1.0
    assert best_mask(heat, r.threshold).tolist() == mask.tolist()
    assert r.best_selected == pytest.approx(mask.mean())
    assert optimal_jaccard(mask.astype(float), mask).jaccard == 1.0


def test_inverted_heat_is_low():
    mask = np.zeros((32, 32), bool)
    mask[:4, :4] = True
    heat = np.where(mask, 0.1, 1.0)
    # the best a threshold can do is select everything: J = |mask| / N
    assert optimal_jaccard(heat, mask).jaccard == pytest.approx(mask.mean())


@pytest.mark.parametrize("heat", [np.zeros((8, 8)), -np.ones((8, 8)), np.full((8, 8), np.nan)])
def test_empty_heat(heat):
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    r = optimal_jaccard(heat, mask)
    assert r.jaccard == 0.0 and r.threshold == float("inf")
    assert len(r.curve) == 0 and r.best_index is None and r.best_selected == 0.0
    assert not best_mask(heat, r.threshold).any()


def test_negative_attribution_never_selected():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True
    heat = -np.ones((8, 8))
    heat[0, 0] = -0.5  # highest, but negative
    heat[7, 7] = 0.2
    r = optimal_jaccard(heat, mask)
    assert r.jaccard == 0.0 and r.threshold == pytest.approx(0.2)


def test_empty_mask_is_nan_and_shape_checked():
    assert np.isnan(optimal_jaccard(np.ones((4, 4)), np.zeros((4, 4), bool)).jaccard)
    with pytest.raises(ValueError, match="shape"):
        optimal_jaccard(np.ones((4, 4)), np.zeros((4, 5), bool))


def test_nan_pixels_never_selected():
    mask = np.zeros((6, 6), bool)
    mask[:2] = True
    heat = mask.astype(float)
    heat[0, 0] = np.nan
    r = optimal_jaccard(heat, mask)
    assert r.jaccard == pytest.approx(11 / 12)


def test_negligible_attribution_is_not_selected():
    # the map's evidence is elsewhere (peak 1.0); a speck of noise (0.5 % of the peak) lies on the
    # defect: it must not earn the map a J* (4/13: the speck and the 3x3 peak, without the floor)
    mask = np.zeros((16, 16), bool)
    mask[10:12, 10:12] = True
    heat = np.zeros((16, 16))
    heat[0:3, 0:3] = 1.0
    heat[10:12, 10:12] = 0.005
    assert optimal_jaccard(heat, mask).jaccard == 0.0
    assert optimal_jaccard(heat, mask, floor=0.0).jaccard == pytest.approx(4 / 13)
    heat[10:12, 10:12] = 0.05  # 5 % of the peak is weak evidence, but evidence
    assert optimal_jaccard(heat, mask).jaccard == pytest.approx(4 / 13)


def test_downsampled_keeps_the_optimum():
    heat, mask = random_case(1, 64, None, signed=False)
    r = optimal_jaccard(heat, mask)
    t, c, s = r.downsampled(50)
    assert len(c) <= 51 and c.max() == r.jaccard


def _explanation(heatmap=None, cf=None):
    img = np.zeros((1, 8, 8), np.float32)
    e = Explanation("m", "score", img, 1.0, 0.5, heatmap=heatmap)
    if cf is not None:
        e.counterfactuals.append(Counterfactual(cf, 0.0, True, 0.0, True, 0.0, True))
    return e


def test_explanation_map_of_counterfactual_is_absolute_difference():
    cf = np.zeros((1, 8, 8), np.float32)
    cf[0, 2, 3] = -0.4  # the counterfactual darkens a pixel: its map is positive there
    cf[0, 5, 5] = 0.1
    m = explanation_map(_explanation(cf=cf))
    assert m[2, 3] == pytest.approx(0.4) and m[5, 5] == pytest.approx(0.1) and m.min() == 0
    mask = np.zeros((8, 8), bool)
    mask[2, 3] = True
    assert optimal_jaccard(m, mask).jaccard == 1.0
    heat = np.ones((8, 8), np.float32)
    assert explanation_map(_explanation(heatmap=heat, cf=cf)) is not None
    assert explanation_map(_explanation(heatmap=heat)).sum() == 64
    assert explanation_map(_explanation()) is None
    failed = _explanation(heatmap=heat)
    failed.error = "RuntimeError: boom"
    assert explanation_map(failed) is None


def test_pixel_auroc():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[:, 4:8, 4:8] = True
    perfect = masks + 0.1 * rng.random(masks.shape)
    assert pixel_auroc(perfect, masks) == 1.0
    assert pixel_auroc(1 - perfect, masks) == 0.0
    noise = rng.random(masks.shape)
    assert 0.3 < pixel_auroc(noise, masks) < 0.7
    assert pixel_auroc([None, perfect[0]], masks[:2]) == 1.0
    assert pixel_auroc(noise, np.zeros_like(masks)) is None
    assert pixel_auroc([], []) is None


@pytest.mark.parametrize("ties", ["none", "rounded", "half zero", "all equal"])
def test_auroc_equals_scikit_learn(ties):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(len(ties))
    y = rng.random(20000) < 0.07
    s = (rng.random(20000) + 0.4 * y).astype(np.float32)
    if ties == "rounded":
        s = np.round(s, 1)
    elif ties == "half zero":
        s[: len(s) // 2] = 0
    elif ties == "all equal":
        s[:] = 0.5
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_edges():
    assert auroc([0, 1], [0.2, 0.9]) == 1.0
    assert auroc([1, 0], [0.2, 0.9]) == 0.0
    assert auroc([1, 1], [0.2, 0.9]) is None
    assert auroc([], []) is None
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="labels against"):
        auroc([0, 1, 1], [0.2, 0.3])


def test_resolution_hint_only_for_a_poor_detector_on_downscaled_images(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from cfx.metrics.detection import resolution_hint

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("L", (300, 256)).save(big)
    Image.new("L", (128, 128)).save(small)
    originals = [SimpleNamespace(path=big)]
    assert "fitted at 256 px" in resolution_hint(0.33, 128, originals)
    assert resolution_hint(0.95, 128, originals) is None  # the detector is fine
    assert resolution_hint(0.33, 256, originals) is None  # already at the larger size
    assert resolution_hint(0.33, 128, [SimpleNamespace(path=small)]) is None  # nothing lost by reading
    assert resolution_hint(None, 128, originals) is None
    assert resolution_hint(0.33, 128, [SimpleNamespace(path=tmp_path / "gone.png")]) is None


# ---------------------------------------------------------------- edits: realism without a network, seam, AR-Pro
def _parts(n=24, seed=0):
    """Good parts: one smooth shading with sensor noise; the test image is another one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48] / 48.0
    base = (0.3 + 0.4 * yy * xx)[None].repeat(3, 0)
    return np.clip(base[None] + rng.normal(0, 0.02, (n + 1, 3, 48, 48)), 0, 1).astype(np.float32)


def test_pixel_realism_tells_a_good_fill_from_a_blob():
    from cfx.metrics.edits import pixel_realism

    parts = _parts()
    normals, x = parts[1:], parts[0].copy()
    x[:, 20:28, 20:28] = 0.95  # the defect
    good = x.copy()
    good[:, 18:30, 18:30] = normals[5][:, 18:30, 18:30]  # filled with a good part
    blob = x.copy()
    blob[:, 18:30, 18:30] = 0.05  # filled with something no good part has
    r = pixel_realism(normals, x, np.stack([good, blob, x]))
    assert r[0] < 1.5 and r[1] > 5 and np.isnan(r[2])  # copied good texture: as normal as a good part or more


def test_seam_is_visible_where_a_fill_adds_an_edge():
    from cfx.metrics.edits import seam_visibility

    x = _parts(1)[0]
    smooth = x.copy()
    smooth[:, 18:30, 18:30] += 0.06  # changed, but as smooth as the original at its border
    hard = x.copy()
    hard[:, 18:30, 18:30] = 0.95  # a bright square: an edge all round
    assert seam_visibility(x, hard) > 3 * seam_visibility(x, smooth)
    assert np.isnan(seam_visibility(x, x))


def test_repair_properties_follow_ar_pro():
    from cfx.metrics.edits import repair_properties, top_region

    x = np.zeros((1, 10, 10), np.float32)
    heat_x = np.zeros((10, 10))
    heat_x[2:4, 2:7] = 5.0  # the hot region: 10 pixels, the top 10%
    w = top_region(heat_x)
    assert w.sum() == 10 and w[2:4, 2:7].all()
    cf = x.copy()
    cf[0, 2:4, 2:7] = 0.5  # a repair inside the region
    heat_cf = heat_x.copy()
    heat_cf[2:4, 2:7] = 0.5
    heat_cf[8, 8] = 1.0  # and a new hot pixel elsewhere
    rp = repair_properties(x, cf, heat_x, heat_cf, 0.7, w)
    assert rp["overall"] == 0.7 and rp["similarity"] == 0.0
    assert rp["localized"] == pytest.approx(10 * -4.5 / 100)
    assert rp["non_degradation"] == pytest.approx(1.0 / 100)
    cf[0, 9, 0] = 1.0  # a change outside the region
    assert repair_properties(x, cf, heat_x, heat_cf, 0.7, w)["similarity"] == pytest.approx(np.sqrt(1 / 100))


def test_coinciding_edits_are_named_once_per_pair():
    from cfx.metrics.edits import coinciding, edit_diversity

    x = np.zeros((1, 8, 8), np.float32)
    a = x.copy()
    a[0, 2:4, 2:4] = 1.0
    b = a.copy()
    b[0, 2, 2] = 0.99  # the same edit up to rounding
    c = x.copy()
    c[0, 5:7, 5:7] = 1.0  # another edit
    assert coinciding(x, {"clear": a, "dice": b, "gradient": c}) == [("clear", "dice")]
    assert coinciding(x, {"clear": x, "dice": x}) == []  # no change is no edit
    assert edit_diversity(x, [a, b])["relative_diversity"] < 0.01
    assert edit_diversity(x, [a, c])["relative_diversity"] == pytest.approx(2.0)
