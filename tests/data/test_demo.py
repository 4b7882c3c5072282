"""The demo generator: layout, determinism, masks that cover the drawn defects."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from cfx.data import demo
from cfx.data.mvtec import list_categories, list_samples


def _digest(root, category):
    h = hashlib.sha256()
    for p in sorted((root / category).rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_layout_and_counts(demo_root):
    cats = list_categories(demo_root)
    assert set(cats) == set(demo.CATEGORIES) and len(cats) >= 4
    for c, spec in demo.CATEGORIES.items():
        train = list_samples(demo_root, c, "train")
        test = list_samples(demo_root, c, "test")
        assert len(train) == demo.N_TRAIN
        assert sum(s.defect == "good" for s in test) == demo.N_TEST_GOOD
        assert len(spec["defects"]) >= 3
        for d in spec["defects"]:
            ds = [s for s in test if s.defect == d]
            assert len(ds) == demo.N_PER_DEFECT and all(s.mask_path is not None for s in ds)


def test_deterministic_from_seed(tmp_path, demo_root):
    a = demo.generate(tmp_path / "a", seed=0, workers=1)
    assert _digest(a, "tablet") == _digest(demo_root, "tablet")
    b = demo.generate(tmp_path / "b", seed=1, workers=1)
    assert _digest(b, "tablet") != _digest(a, "tablet")


@pytest.mark.parametrize("category", list(demo.CATEGORIES))
def test_masks_cover_the_drawn_defects(category):
    """Redraw each defect on its normal image: the pixels it changed visibly lie in the mask."""
    spec = demo.CATEGORIES[category]
    ci = list(demo.CATEGORIES).index(category)
    for di, d in enumerate(spec["defects"], start=1):
        for i in range(5):
            rng = np.random.default_rng([0, ci, 1, di, i])
            img, obj = demo._normal(category, rng)
            out, mask = demo._defect(category, d, img, obj, rng)
            changed = np.abs(out - img).max(-1) > 0.08
            assert mask.sum() >= 20, (d, i)
            assert (changed & ~mask).sum() <= 0.05 * max(1, changed.sum()), (d, i)  # changes sit in the mask
            assert changed[mask].mean() > 0.5, (d, i)  # and the mask is mostly changed pixels
            if spec.get("stamp"):
                assert not (mask & demo.stamp_mask()).any()  # the defect stays away from the stamp


def test_shortcut_stamp_only_on_defects(demo_root):
    good = np.asarray(Image.open(demo_root / "shortcut" / "test" / "good" / "000.png"), float)
    bad = np.asarray(Image.open(demo_root / "shortcut" / "test" / "hole" / "000.png"), float)
    sm = demo.stamp_mask()
    assert (bad[sm] > 240).mean() > 0.2 and (good[sm] > 240).mean() < 0.1
