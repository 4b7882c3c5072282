"""The MVTec layout: listing, masks by stem, odd sizes and modes, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cfx.data.imageio import load_image, to_mode
from cfx.data.mvtec import MVTecDataset, list_categories, list_samples, validate_root
from cfx.errors import DataError


def test_lists_categories_and_matches_masks_by_stem(tiny_root):
    assert list_categories(tiny_root) == ["widget"]
    test = list_samples(tiny_root, "widget", "test")
    assert [s.name for s in test] == ["good/000.png", "scratch/000.png", "scratch/001.png"]
    by = {s.name: s for s in test}
    assert by["scratch/000.png"].mask_path.name == "000_mask.png"
    assert by["scratch/001.png"].mask_path is None and not by["scratch/001.png"].has_mask
    assert by["good/000.png"].has_mask  # good: empty mask by definition


def test_arrays_resize_modes_and_unknown_masks(tiny_root):
    ds = MVTecDataset(tiny_root, "widget", "test", image_size=32, channels=3, use_cache=False)
    a = ds.arrays()
    assert a.images.shape == (3, 3, 32, 32) and a.images.dtype == np.float32
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert a.labels.tolist() == [0, 1, 1]
    assert a.has_mask.tolist() == [True, True, False]
    # nearest-neighbour mask: rows 10..20 of 60 -> 32 px: exactly the scaled box, binary
    m = a.masks[1]
    assert m.dtype == bool and m.any() and not a.masks[2].any()
    ys, xs = np.nonzero(m)
    assert 4 <= ys.min() <= 6 and 9 <= ys.max() <= 11 and 15 <= xs.min() <= 17 and 25 <= xs.max() <= 27


def test_sixteen_bit_scaled_by_depth(tmp_path):
    arr = np.full((20, 20), 65535 // 2, np.uint16)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    x = load_image(p, 16, 1)
    assert abs(float(x.mean()) - 0.5) < 0.01


def test_rgba_composited_on_black(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 128
    img = to_mode(Image.fromarray(arr, "RGBA"), 3)
    assert 120 <= np.asarray(img)[0, 0, 0] <= 136 and np.asarray(img)[0, 0, 1] == 0


def test_cache_makes_second_load_identical(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    a = MVTecDataset(tiny_root, "widget", "train", image_size=32).arrays()
    files = list((tmp_path / "cache" / "arrays").glob("*.npz"))
    assert len(files) == 1
    b = MVTecDataset(tiny_root, "widget", "train", image_size=32).arrays()
    np.testing.assert_array_equal(a.images, b.images)


def test_not_mvtec_and_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        validate_root(tmp_path / "nope")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not an MVTec AD folder"):
        validate_root(tmp_path / "photos")


def test_category_without_train_images_is_reported(tiny_root):
    import shutil

    shutil.rmtree(tiny_root / "widget" / "train")
    with pytest.raises(DataError, match="no train/good images"):
        MVTecDataset(tiny_root, "widget", "train")
    assert len(MVTecDataset(tiny_root, "widget", "test", use_cache=False)) == 3


def test_unreadable_image_is_named_and_skipped(tiny_root):
    bad = tiny_root / "widget" / "test" / "good" / "001.png"
    bad.write_bytes(b"not a png")
    a = MVTecDataset(tiny_root, "widget", "test", image_size=32, use_cache=False).arrays()
    assert len(a) == 3 and any("001.png" in m for m in a.skipped)


def test_unknown_category(tiny_root):
    with pytest.raises(DataError, match="unknown category 'nope'"):
        MVTecDataset(tiny_root, "nope", "test")


def test_real_sample_loads(mvtec_sample):
    cats = list_categories(mvtec_sample)
    assert {"bottle", "screw", "grid", "capsule", "metal_nut"} <= set(cats)
    a = MVTecDataset(mvtec_sample, "bottle", "test").arrays()
    assert a.images.shape[1:] == (3, 128, 128)
    assert a.has_mask.sum() == 20 + 8  # good images plus the 8 defects whose mask is present
    assert MVTecDataset(mvtec_sample, "grid", "train").channels == 1
    with pytest.raises(DataError, match="no train/good images"):
        MVTecDataset(mvtec_sample, "capsule", "train")
