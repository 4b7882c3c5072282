"""CUDA specifics that the CPU can check: the batch buckets, padding that leaves every real row's
result as it was (on the real demo detectors, padding forced on for the CPU), and no padding where
gradients flow or on the CPU by default."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfx import gpu
from cfx.data.mvtec import MVTecDataset


def test_bucket_is_the_next_power_of_two_up_to_the_cap():
    assert [gpu.bucket(n, 256) for n in (0, 1, 2, 3, 5, 45, 131, 256, 300)] == [0, 1, 2, 4, 8, 64, 256, 256, 300]
    assert gpu.bucket(20, 16) == 20 and gpu.bucket(9, 12) == 12
    assert len({gpu.bucket(n, 256) for n in range(1, 257)}) == 9  # 1, 2, 4, ..., 256: nine shapes


@pytest.mark.parametrize("detector", ["vae", "patchcore"])
def test_padding_leaves_each_image_its_own_result(demo_bundle, demo_root, detector):
    b = demo_bundle("tablet", detector)
    arr = MVTecDataset(demo_root, "tablet", "test", image_size=b.image_size, channels=b.channels).arrays()
    x = b.to_tensor(arr.images[:5])
    seen = []

    def fn(t):
        seen.append(len(t))
        return b.detector.analyse(t)

    with torch.inference_mode():
        ref = b.detector.analyse(x)
        got = gpu.padded(fn, x, 64, devices=("cpu",))
    assert seen == [8]
    assert set(got) == set(ref)
    # A padded batch may take another convolution kernel than an unpadded one, whose float32 sums
    # round differently: each network output may move by float32 rounding of its scale (1e-5).
    # The VAE's Mahalanobis score then amplifies its latent's rounding through the precision
    # matrix and the normal images' spread (7e-5 on some x86 CPUs for a latent that moved by 2e-6),
    # so its tolerance is that rounding carried through the score: first order, twice over.
    tol = {k: 1e-5 for k in ref}
    if detector == "vae":
        carried = 2 * _carried_to_mahalanobis(b.detector, ref["z"], got["z"]) + 1e-5
        tol["mahalanobis_score"] = carried
        tol["score"] = (1 - b.detector.alpha) * carried + 1e-5
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        err = np.abs(got[k].numpy() - ref[k].numpy())
        assert (err <= np.maximum(tol[k], 1e-5 * np.abs(ref[k].numpy()))).all(), (k, err.max(), np.max(tol[k]))


def _carried_to_mahalanobis(det, z_ref: torch.Tensor, z_got: torch.Tensor) -> np.ndarray:
    """Per image, how far the Mahalanobis score moves when its latent moves from ``z_ref`` to
    ``z_got`` (|gradient| . |change|, to first order)."""
    z = z_ref.clone().requires_grad_(True)
    m = (det.maha_raw(z) - det.norm[2]) / det.norm[3]
    (g,) = torch.autograd.grad(m.sum(), z)
    return (g.abs() * (z_got - z_ref).abs()).sum(1).detach().numpy()


def test_no_padding_on_the_cpu_by_default_nor_with_gradients():
    calls = []

    def fn(t):
        calls.append(len(t))
        return t.sum((1, 2, 3))

    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(gpu.padded(fn, x, 64), x.sum((1, 2, 3)))
    xg = x.clone().requires_grad_(True)
    gpu.padded(fn, xg, 64, devices=("cpu",)).sum().backward()
    assert calls == [3, 3] and torch.equal(xg.grad, torch.ones_like(x))
    with torch.no_grad():
        out = gpu.padded(fn, x, 64, devices=("cpu",))
    assert calls[-1] == 4 and out.shape == (3,)


def test_prepare_does_nothing_on_the_cpu(demo_bundle):
    assert gpu.prepare(demo_bundle("brick", "vae")) == 0.0
