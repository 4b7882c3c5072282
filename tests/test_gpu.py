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
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=1e-5, atol=1e-5, err_msg=k)


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
