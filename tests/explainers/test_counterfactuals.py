"""Counterfactuals as local edits of the real image (issue 12; cfx.explainers.edit and
cfx.explainers.counterfactual).

Validity on the real detector for >= 90% of flagged demo defects, per method and detector; an
already-normal image is its own counterfactual; edits of a planted defect stay on it (locality);
realism is measured without the generator (a blurred AE decoding is not realistic); the edit's
geometry and metrics on toy arrays.
"""
from __future__ import annotations

import numpy as np
import pytest

from cfx.explainers import REGISTRY
from cfx.explainers import edit as E
from cfx.explainers.edit_model import EditModel
from cfx.metrics import edits as M

CF_METHODS = ("clear", "dice", "gradient", "concepts")
#: quick settings: validity and locality are properties of the edit, not of long searches
QUICK = {"clear": {"n_samples": 150, "fidelity_dims": -1, "path_steps": 3},
         "dice": {"max_iterations": 5, "total_cfs": 2}, "gradient": {"max_steps": 120}, "concepts": {"path_steps": 3}}
PER_CATEGORY = 5  # brick + tablet: 10 flagged defects per method and detector


@pytest.fixture(scope="module")
def bundle(demo_bundle):
    return demo_bundle


def _test_split(b, demo_root, category):
    from cfx.data.mvtec import MVTecDataset

    return MVTecDataset(demo_root, category, "test", image_size=b.image_size, channels=b.channels).arrays()


def flagged(b, demo_root, category, n):
    """n flagged defects with masks, spread over the defect types: (images, masks (H, W))."""
    arr = _test_split(b, demo_root, category)
    a = b.analyse(arr.images)
    idx = [i for i, s in enumerate(arr.samples) if s.defect != "good" and arr.has_mask[i] and a["anomalous"][i]]
    idx = idx[::max(1, len(idx) // n)][:n]
    masks = arr.masks[idx]
    return arr.images[idx], (masks[:, 0] if masks.ndim == 4 else masks) > 0.5


# ------------------------------------------------------------------ validity on the real detector
@pytest.mark.parametrize("detector", ["patchcore", "vae"])
@pytest.mark.parametrize("method", CF_METHODS)
def test_valid_on_the_real_detector_for_90_percent(bundle, demo_root, method, detector):
    valid = []
    for category in ("brick", "tablet"):
        b = bundle(category, detector)
        images, masks = flagged(b, demo_root, category, PER_CATEGORY)
        for img, m in zip(images, masks):
            e = REGISTRY[method](b).attribute(img, "score", seed=0, mask=m, **QUICK[method])
            assert e.ok, e.error
            c = e.best
            ok = c is not None and c.valid
            if ok:  # the image the user sees really scores normal on the explained detector
                assert float(b.score_numpy(c.image[None])[0]) <= b.threshold
                outside = c.region is not None and np.abs(c.image - img).max(0)[c.region == 0].max() < 1e-6
                assert outside, "the counterfactual changed pixels outside its edit region"
                assert c.path_images is not None and np.array_equal(c.path_images[0], img)
            valid.append(ok)
    assert np.mean(valid) >= 0.9, f"{method} on {detector}: valid on {sum(valid)}/{len(valid)} flagged defects"


# ------------------------------------------------------------------ one setup per image
def test_the_searches_on_one_image_share_their_setup(bundle, demo_root):
    """CLEAR after DiCE on the same image reuses the map, the normal content and R* (fewer
    evaluations, ``setup_shared``) and shows the same counterfactual as on its own."""
    b = bundle("brick", "patchcore")
    images, masks = flagged(b, demo_root, "brick", 1)
    b.loaded.edit_setups.clear()
    alone = REGISTRY["clear"](b).attribute(images[0], mask=masks[0], **QUICK["clear"])
    assert alone.info["setup_shared"] is False and len(b.loaded.edit_setups) == 1
    b.loaded.edit_setups.clear()
    REGISTRY["dice"](b).attribute(images[0], mask=masks[0], **QUICK["dice"])
    after = REGISTRY["clear"](b).attribute(images[0], mask=masks[0], **QUICK["clear"])
    assert after.info["setup_shared"] is True
    assert after.info["evaluations"] < alone.info["evaluations"]
    assert np.array_equal(after.best.image, alone.best.image) and after.best.valid
    assert after.info["normal_content"] == alone.info["normal_content"]
    other = REGISTRY["clear"](b.using("vae")).attribute(images[0], mask=masks[0], **QUICK["clear"])
    assert other.info["setup_shared"] is False  # another detector: its own setup


# ------------------------------------------------------------------ already normal: no edit
@pytest.mark.parametrize("detector", ["patchcore", "vae"])
def test_a_normal_image_is_its_own_counterfactual(bundle, demo_root, detector):
    b = bundle("brick", detector)
    arr = _test_split(b, demo_root, "brick")
    good = arr.images[[i for i, s in enumerate(arr.samples) if s.defect == "good"]]
    img = good[int(np.argmin(b.score_numpy(good)))]
    for method in CF_METHODS:
        e = REGISTRY[method](b).attribute(img, "score", **QUICK[method])
        assert e.ok and len(e.counterfactuals) == 1, (method, e.error)
        c = e.best
        assert c.valid and np.array_equal(c.image, img) and c.metrics["edit_area"] == 0 and c.metrics["l1"] == 0
        assert "already normal" in e.info["message"]


# ------------------------------------------------------------------ locality on a planted defect
def _planted(b, demo_root, category):
    """A normal test image with a dark 12x12 blot planted off-centre (the detector flags it)."""
    arr = _test_split(b, demo_root, category)
    good = arr.images[[i for i, s in enumerate(arr.samples) if s.defect == "good"]]
    img = good[int(np.argmin(b.score_numpy(good)))].copy()
    mask = np.zeros(img.shape[1:], bool)
    mask[30:42, 70:82] = True
    img[:, mask] = 0.05
    assert b.score_numpy(img[None])[0] > b.threshold, "the planted blot is not flagged"
    return img, mask


@pytest.mark.parametrize("method", CF_METHODS)
def test_edits_of_a_planted_defect_stay_on_it(bundle, demo_root, method):
    b = bundle("tablet", "patchcore")
    img, mask = _planted(b, demo_root, "tablet")
    e = REGISTRY[method](b).attribute(img, "score", seed=0, mask=mask, **QUICK[method])
    c = e.best
    assert c is not None and c.valid, e.info.get("message")
    assert c.metrics["locality"] >= 0.6, c.metrics
    assert c.metrics["edit_area"] <= 3 * mask.mean(), c.metrics


# ------------------------------------------------------------------ realism without the generator
def test_realism_is_independent_of_the_generator(bundle, demo_root):
    """Real good parts score about 1; the AE's own blurred decoding of them does not pass as real."""
    import torch

    b = bundle("tablet", "vae")
    arr = _test_split(b, demo_root, "tablet")
    good = arr.images[[i for i, s in enumerate(arr.samples) if s.defect == "good"]][:6]
    real = [M.independent_realism(b, g, g[None])[0] for g in good]
    with torch.inference_mode():
        rec = b.ae(b.to_tensor(good)).float().cpu().numpy()
    fake = [M.independent_realism(b, g, r[None])[0] for g, r in zip(good, rec)]
    assert 0.6 < np.median(real) < 1.4, real
    assert np.median(fake) > 1.5 * np.median(real), (real, fake)


# ------------------------------------------------------------------ the edit on toy arrays
class _Toy:
    """A detector that scores the mean brightness of a 10x10 patch (anomalous above 0.5)."""

    channels, image_size = 1, 32

    def threshold_for(self, target):
        return 0.5

    def score_numpy(self, images, target="score", batch=None):
        return np.asarray(images)[:, 0, 10:20, 10:20].mean((1, 2))


def test_minimal_edit_is_the_smallest_valid_region():
    x = np.zeros((1, 32, 32), np.float32)
    x[0, 12:18, 12:18] = 1.0  # the "defect": bright, inside the scored patch
    heat = np.zeros((32, 32), np.float32)
    heat[12:18, 12:18] = 1.0
    heat += np.linspace(0, 0.1, 32)[None]  # an order outside the defect
    edit = E.minimal_edit(_Toy(), x, "score", heat, {"nearest normal": np.zeros_like(x)}, None, margin_levels=0)
    assert edit.valid and edit.score <= 0.5
    assert edit.share < 0.1  # far from the whole image
    changed = np.abs(edit.image - x)[0] > 0
    assert changed[12:18, 12:18].any() and not changed[:, 26:].any()


def test_minimal_edit_scans_levels_in_batches_with_the_result_of_scoring_all_at_once():
    """The levels are scored from the smallest up a forward batch at a time: the edit is the one
    that scoring every level and content in one batch picks (smallest valid level, preferred
    content, margin levels), and a defect that a small region fixes costs fewer evaluations."""

    class Counting(_Toy):
        def __init__(self, forward_batch, thr):
            self.forward_batch, self.thr, self.calls = forward_batch, thr, 0

        def threshold_for(self, target):
            return self.thr

        def score_numpy(self, images, target="score", batch=None):
            self.calls += len(images)
            return super().score_numpy(images, target, batch)

    rng = np.random.default_rng(0)
    cheaper = 0
    for t in range(60):
        x = rng.random((1, 32, 32)).astype(np.float32)
        heat = rng.random((32, 32)).astype(np.float32)
        contents = {"a": rng.random((1, 32, 32)).astype(np.float32) * rng.random(),
                    "b": rng.random((1, 32, 32)).astype(np.float32) * rng.random()}
        thr, margin = float(rng.uniform(0.2, 0.6)), int(t % 3)
        every = E.minimal_edit(Counting(10_000, thr), x, "score", heat, contents, None, margin_levels=margin)
        b = Counting(int(rng.choice([1, 2, 4])), thr)
        scan = E.minimal_edit(b, x, "score", heat, contents, None, margin_levels=margin)
        assert np.array_equal(scan.image, every.image) and (scan.share, scan.content, scan.score, scan.valid) == (
            every.share, every.content, every.score, every.valid)
        assert every.evaluations == 2 * len(E.SHARES) and scan.evaluations == b.calls <= every.evaluations
        cheaper += scan.evaluations < every.evaluations
    assert cheaper > 10


def test_edits_of_one_explanation_score_each_composition_once():
    """Proposals whose priority maps agree compose the same images: with a shared ``scored``
    the second search scores none of them again and finds the same edit."""

    class Counting(_Toy):
        forward_batch = 4
        calls = 0

        def score_numpy(self, images, target="score", batch=None):
            self.calls += len(images)
            return super().score_numpy(images, target, batch)

    x = np.zeros((1, 32, 32), np.float32)
    x[0, 12:18, 12:18] = 1.0  # a bright defect in the scored patch
    heat = np.zeros((32, 32))
    heat[12:18, 12:18] = 1.0
    contents = {"nearest normal": np.zeros_like(x)}
    b, scored = Counting(), {}
    first = E.minimal_edit(b, x, "score", heat, contents, None, scored=scored)
    n = b.calls
    again = E.minimal_edit(b, x, "score", heat, contents, None, scored=scored)
    assert first.valid and n == first.evaluations > 0
    assert b.calls == n and again.evaluations == 0 and np.array_equal(again.image, first.image)
    assert again.score == first.score and again.share == first.share


def test_the_proposals_scans_in_lockstep_find_each_ones_edit_in_fewer_calls():
    """minimal_edits runs the proposals' scans together, a chunk of each per call: every edit is
    the one its scan alone finds, the images scored are the same (shared ones once), and the
    calls are fewer and larger."""

    class Calls(_Toy):
        forward_batch = 4

        def __init__(self):
            self.calls, self.images = 0, 0

        def score_numpy(self, images, target="score", batch=None):
            self.calls, self.images = self.calls + 1, self.images + len(images)
            return super().score_numpy(images, target, batch)

    rng = np.random.default_rng(4)
    for _ in range(10):
        x = rng.random((1, 32, 32)).astype(np.float32)
        heat = rng.random((32, 32)).astype(np.float32)
        normal = rng.random((1, 32, 32)).astype(np.float32) * 0.6
        contents = [{"nearest normal": normal, "generator": rng.random((1, 32, 32)).astype(np.float32) * rng.random()}
                    for _ in range(4)]
        changes = [None, None] + [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
        alone, together = Calls(), Calls()
        one_by_one = [E.minimal_edit(alone, x, "score", heat, c, ch, scored={}) for c, ch in zip(contents, changes)]
        memo: dict = {}
        lockstep = E.minimal_edits(together, x, "score", heat, contents, changes, scored=memo)
        for a, c in zip(one_by_one, lockstep):
            assert np.array_equal(a.image, c.image) and (a.share, a.content, a.score, a.valid) == (
                c.share, c.content, c.score, c.valid)
        assert together.images == sum(c.evaluations for c in lockstep) == len(memo)
        assert together.calls < alone.calls
    assert sum(c.evaluations for c in lockstep) <= sum(a.evaluations for a in one_by_one)


def test_edit_model_scores_each_distinct_edit_once():
    """A search's edit is a function of its strength alone: generator images that give the same
    strength (all those clipped at 1 above all) are one image, scored once, with the scores that
    scoring every edited image would give."""

    class Counting(_Toy):
        calls = 0

        def score_numpy(self, images, target="score", batch=None):
            self.calls += len(images)
            return super().score_numpy(images, target, batch)

    rng = np.random.default_rng(1)
    x = np.ones((1, 32, 32), np.float32)
    g0 = np.zeros_like(x)
    region = np.zeros((32, 32), np.float32)
    region[8:24, 8:24] = 1.0
    em = EditModel(x, g0, np.zeros_like(x), region, np.full_like(x, 0.5))  # tau: half of 0.5
    g = np.concatenate([rng.uniform(0, 0.2, (5, 1, 32, 32)), rng.uniform(0.5, 1, (7, 1, 32, 32)),
                        np.full((3, 1, 32, 32), 0.1)]).astype(np.float32)
    b = Counting()
    s = em.scores(b, g, "score")
    assert np.allclose(s, _Toy().score_numpy(em.images(g)))
    distinct = len(np.unique(em.strength(g)))
    assert distinct == 5 + 1 + 1 and b.calls == em.evaluations == distinct  # 7 clipped at 1, 3 equal
    again = em.scores(b, g[:4], "score")
    assert b.calls == distinct and np.array_equal(again, s[:4])  # seen before: no new evaluation


def test_the_edit_model_reads_a_crop_to_its_box_as_the_whole_image():
    """CLEAR decodes only R*'s bounding box: the strengths of those crops are those of the whole
    images (the region's weights are 0 outside the box)."""
    rng = np.random.default_rng(2)
    x = np.ones((3, 32, 32), np.float32)
    region = np.zeros((32, 32), np.float32)
    region[5:12, 20:30] = rng.uniform(0.1, 1, (7, 10))
    em = EditModel(x, np.zeros_like(x), np.zeros_like(x), region, np.ones_like(x))
    assert em.box == ((5, 12), (20, 30))
    g = rng.uniform(0, 0.3, (6, 3, 32, 32)).astype(np.float32)
    a = em.strength(g)
    assert ((a > 0) & (a < 1)).all() and np.array_equal(em.strength(g[:, :, 5:12, 20:30]), a)
    assert not np.array_equal(em.strength(g[:, :, 4:11, 20:30]), em.strength(g))  # a crop elsewhere differs


def test_dice_precisions_are_those_dice_ml_computes():
    """DiCE passes dice-ml the precision it would compute itself (it rounds its counterfactuals to
    it): the same numbers, from float32 modes of distinct and repeated values, at any scale."""
    import dice_ml
    import pandas as pd

    from cfx.explainers.dice import decimal_precisions

    rng = np.random.default_rng(3)
    table = rng.normal(0, 1, (141, 6)) * np.array([1e-3, 0.1, 1, 10, 300, 1])
    table[:50, 5] = 0.25  # a repeated value is the column's only mode
    table[::7, 2] = table[0, 2]
    cols = [f"pc{i}" for i in range(6)]
    df = pd.DataFrame(table, columns=cols).astype(np.float64)
    df["y"] = (table[:, 0] > 0).astype(int)
    theirs = dice_ml.Data(dataframe=df, continuous_features=cols, outcome_name="y")
    assert decimal_precisions(table, cols) == dict(theirs.get_decimal_precisions(output_type="dict"))
    assert decimal_precisions(table, cols)["pc5"] == 2


class _Wavy(_Toy):
    """Scores an edit of a white image towards black by its strength a: 0.5 + 0.4 sin(7 (1 - a)),
    which crosses the threshold 0.5 at a = 1, 0.551 and 0.102; counts the images it scores."""

    def __init__(self):
        self.calls = 0

    def score_numpy(self, images, target="score", batch=None):
        self.calls += len(images)
        return 0.5 + 0.4 * np.sin(7 * super().score_numpy(images, target, batch))


def _wavy_model(cells):
    x = np.ones((1, 32, 32), np.float32)
    return EditModel(x, np.zeros_like(x), np.zeros_like(x), np.ones((32, 32), np.float32), np.ones_like(x),
                       cells=cells)


def test_the_strength_table_gives_every_strength_its_exact_side_for_far_fewer_evaluations():
    """A search's edits lie on one line of images, so the score is a function s(a) of the strength:
    with a table of 32 cells, 400 strengths get the side of the threshold that scoring each gives,
    from the cells' ends and a few strengths inside the cells where s crosses; the strengths next
    to each crossing are scored, and a strength read lies between exact scores one cell apart."""
    a = np.random.default_rng(0).uniform(0, 1, 400)
    exact_b, table_b = _Wavy(), _Wavy()
    exact = _wavy_model(0).score_strengths(exact_b, a, "score")
    em = _wavy_model(32)
    s = em.score_strengths(table_b, a, "score")
    assert exact_b.calls == 400
    assert table_b.calls == em.evaluations < 60  # 33 cell ends and a few inside the 3 crossing cells
    assert em.read == sum(("score", float(v)) not in em.memo for v in a) > 350
    assert np.array_equal(s > 0.5, exact > 0.5)
    known = np.array(sorted(v for _, v in em.memo))
    order = np.argsort(a)
    side = (exact > 0.5)[order]
    for i in np.flatnonzero(side[1:] != side[:-1]):  # the strengths either side of a crossing
        assert ("score", float(a[order][i])) in em.memo and ("score", float(a[order][i + 1])) in em.memo
    for v, got in zip(a, s):
        if ("score", float(v)) in em.memo:
            assert got == exact[a == v][0]
            continue
        j = int(np.searchsorted(known, v))
        lo, hi = known[j - 1], known[j]
        assert hi - lo <= 1 / 32 + 1e-12
        assert got == pytest.approx(np.interp(v, [lo, hi], [em.memo[("score", lo)], em.memo[("score", hi)]]))


def test_the_strength_table_scores_exactly_when_asked():
    """``exact`` scores every new strength, and a strength seen before is not scored again."""
    b = _Wavy()
    em = _wavy_model(32)
    many = np.linspace(0.2, 0.3, 50)
    assert np.allclose(em.score_strengths(b, many, "score", exact=True), 0.5 + 0.4 * np.sin(7 * (1 - many)), atol=1e-6)
    assert b.calls == 50 and em.read == 0
    em.score_strengths(b, many, "score")  # all seen: nothing new
    assert b.calls == 50 and em.read == 0


def test_locality_and_edit_area():
    x = np.zeros((3, 20, 20), np.float32)
    cf = x.copy()
    cf[:, 5:7, 5:7] = 0.5
    mask = np.zeros((20, 20), bool)
    mask[5:7, 5:7] = True
    assert M.locality(x, cf, mask) == pytest.approx(1.0)
    assert M.edit_area(x, cf) == pytest.approx(4 / 400)
    far = x.copy()
    far[:, 15:17, 15:17] = 0.5
    assert M.locality(x, far, mask) == pytest.approx(0.0)
    assert np.isnan(M.locality(x, cf, None)) and np.isnan(M.locality(x, x, mask))
