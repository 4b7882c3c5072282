"""Mixed precision: kept only where every score stays within the tolerance of float32, never on the
CPU by default, never for gradients, its check not counted as evaluations. CPU autocast in bfloat16
stands in for CUDA's half precision (the same check and the same bound)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfx import precision
from cfx.data.mvtec import MVTecDataset
from cfx.meter import metered


@pytest.fixture(params=["vae", "patchcore"])
def scored(request, demo_bundle, demo_root):
    b = demo_bundle("tablet", request.param)
    arr = MVTecDataset(demo_root, "tablet", "test", image_size=b.image_size, channels=b.channels).arrays()
    return b, arr.images[:4]


def test_the_cpu_stays_in_float32(scored, monkeypatch):
    b, images = scored
    pooled = b.score_numpy(images)  # PatchCore: halves on the one-thread workers (cfx.batches)
    assert b.detector.amp_settled and b.detector.amp is None
    monkeypatch.setenv("CFX_BATCH_WORKERS", "1")  # one batch in this thread: the very same sums
    s = b.score_numpy(images)
    with torch.inference_mode():
        ref = b.detector.score(b.to_tensor(images)).double().numpy()
    assert np.array_equal(s, ref)
    np.testing.assert_allclose(pooled, ref, rtol=1e-5, atol=1e-4)  # other sums: float32 rounding only


def test_a_candidate_is_kept_only_within_the_tolerance(scored):
    b, images = scored
    det, x = b.detector, b.to_tensor(images)
    dev = precision.deviation(det, x, torch.bfloat16)
    assert 0 < dev < float("inf") and det.amp is None
    cpu = {"candidates": (torch.bfloat16,), "devices": ("cpu",)}
    assert precision.choose(det, x, tolerance=2 * dev, **cpu) == (torch.bfloat16, {"bfloat16": dev})
    assert precision.choose(det, x, tolerance=dev / 2, **cpu) == (None, {"bfloat16": dev})
    assert precision.choose(det, x, tolerance=2 * dev, candidates=(torch.bfloat16,)) == (None, {})  # not on the CPU
    assert det.amp is None  # choosing leaves the detector as it was
    with torch.inference_mode():
        ref = det.score(x)
    try:
        det.amp = torch.bfloat16
        with torch.inference_mode():
            assert 0 < float((det.score(x).double() - ref.double()).abs().max()) <= dev  # as deviation(): float64
        xg = x.clone().requires_grad_(True)
        s = det.score(xg)  # with gradients: float32
        s.sum().backward()
        assert torch.allclose(s.detach(), ref, atol=1e-5) and xg.grad.dtype == torch.float32
    finally:
        det.amp = None


def test_settled_once_on_the_first_batch_and_not_counted(scored, monkeypatch):
    b, images = scored
    det = b.detector
    monkeypatch.setattr(det, "amp", None)
    monkeypatch.setattr(det, "amp_settled", False)
    monkeypatch.setattr(precision, "AMP_DEVICES", ("cpu",))
    monkeypatch.setattr(precision, "CANDIDATES", (torch.bfloat16,))
    monkeypatch.setattr(precision, "TOLERANCE", 1e6)
    with metered() as m:
        b.score_numpy(images)
    assert m.evaluations == len(images)  # the check's passes are not the explanation's evaluations
    assert det.amp is torch.bfloat16 and "bfloat16" in det.amp_check
    assert "bfloat16" in precision.label(det)
    monkeypatch.setattr(precision, "TOLERANCE", 0.0)
    b.score_numpy(images)
    assert det.amp is torch.bfloat16  # decided once
