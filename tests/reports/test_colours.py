"""cfx.reports.colours: the detector's calibrated map drawn so that a defect does not saturate
into its halo, on the demo tablet's crack (the case the old fixed scale drew as a blob 20 times
the defect's size)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from cfx.models.bundle import load_bundle
from cfx.reports.colours import NORMAL_SHARE, calibrated_caption, calibrated_display
from cfx.resolve import select_image


def test_normal_range_is_the_lower_half_and_the_peak_the_top():
    h = np.array([[0.0, 0.5, 1.0, 5.5, 10.0]])
    d = calibrated_display(h)
    assert np.allclose(d, [[0.0, 0.25, NORMAL_SHARE, 0.75, 1.0]])
    normal = np.array([[0.2, 0.9]])
    assert calibrated_display(normal).max() < NORMAL_SHARE and "within" in calibrated_caption(normal)


@pytest.mark.parametrize("detector", ["patchcore", "vae"])
def test_the_red_of_the_detector_s_map_lies_on_the_defect(detector, demo_root):
    b = load_bundle("demo", "tablet", detector=detector)
    sel = select_image(demo_root, "tablet", "crack/003.png", b.channels, b.image_size)
    heat = b.analyse(sel.image[None])["heatmap"][0]
    mask = sel.mask > 0.5
    shown = calibrated_display(heat)
    near = binary_dilation(mask, iterations=4)
    hottest = shown >= 0.95
    assert hottest.any() and near[hottest].mean() >= 0.9  # the top of the scale sits on the defect
    # the old display (map / 2, clipped) saturated far beyond the defect under PatchCore
    old = np.clip(heat / 2.0, 0, 1) >= 0.99
    assert hottest.mean() <= max(2 * mask.mean(), 0.2 * old.mean())
    assert shown[~binary_dilation(heat > 1.0, iterations=1)].max() <= NORMAL_SHARE + 1e-6  # pale where normal
