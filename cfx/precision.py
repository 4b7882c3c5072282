"""Mixed precision for the detectors' networks, only where the scores stay within 1e-3 of float32.

On CUDA a detector's network part (the VAE's encoder and decoder, PatchCore's trunk) can run under
``torch.autocast`` in float16 or bfloat16; the rest of the score (the reconstruction error, the
Mahalanobis distance, the nearest-neighbour search) always runs in float32. Whether it may is
measured, not assumed: :func:`settle` scores the first batch a detector is asked to score in both
precisions and keeps the first candidate whose every score (the combined one and its parts) lies
within :data:`TOLERANCE` of float32's; otherwise the detector stays in float32. On CUDA that
float32 is strict (:func:`cfx.gpu.strict_float32`: no TF32, which alone moved the demo detectors'
scores by up to 0.08; on an H200 no demo detector passed the check). The CPU always stays in
float32 (no fast half-precision path on the CPUs cfx targets; measured: no bf16).

The check calls the detector directly, so its forward passes are not counted as an explanation's
evaluations (:mod:`cfx.meter` counts :meth:`cfx.models.bundle.ModelBundle.score`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

#: largest absolute difference from float32 allowed on any score (the issue's bound)
TOLERANCE = 1e-3
#: tried in this order
CANDIDATES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
#: device types on which the check runs at all
AMP_DEVICES: tuple[str, ...] = ("cuda",)


def network(detector, x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context a detector runs its network part in: autocast to its settled dtype for the
    evaluations (no gradient), else nothing (gradients, as Grad-CAM's and the gradient method's,
    always flow in float32)."""
    dtype = getattr(detector, "amp", None)
    if dtype is None or torch.is_grad_enabled():
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=dtype)


def _scores(detector, x: torch.Tensor) -> torch.Tensor:
    """The combined score and every part (N, 1 + parts), float64."""
    out = [detector.score(x)] + [detector.part_score(x, key) for key in detector.parts]
    return torch.stack([s.double() for s in out], 1)


@contextlib.contextmanager
def _amp(detector, dtype: torch.dtype | None) -> Iterator[None]:
    prev = getattr(detector, "amp", None)
    detector.amp = dtype
    try:
        yield
    finally:
        detector.amp = prev


@torch.inference_mode()
def deviation(detector, x: torch.Tensor, dtype: torch.dtype) -> float:
    """The largest absolute difference between the scores of ``x`` under ``dtype`` and in float32
    (inf when a score is not finite)."""
    with _amp(detector, None):
        ref = _scores(detector, x)
    with _amp(detector, dtype):
        got = _scores(detector, x)
    if not bool(torch.isfinite(got).all()):
        return float("inf")
    return float((got - ref).abs().max()) if got.numel() else 0.0


def choose(detector, x: torch.Tensor, tolerance: float | None = None, candidates: Sequence[torch.dtype] | None = None,
           devices: Sequence[str] | None = None) -> tuple[torch.dtype | None, dict[str, float]]:
    """The first of ``candidates`` whose scores of the batch ``x`` stay within ``tolerance`` of
    float32 (None: float32), and each tried candidate's deviation.

    Args:
        detector: a :class:`~cfx.detectors.base.Detector`.
        x: images (N, C, H, W) on the detector's device (a batch it is asked to score).
        tolerance: the bound on every score's absolute difference (default :data:`TOLERANCE`).
        candidates: autocast dtypes, tried in order (default :data:`CANDIDATES`).
        devices: the device types the check runs on (default :data:`AMP_DEVICES`); elsewhere
            float32 without a check.
    """
    tolerance = TOLERANCE if tolerance is None else tolerance
    candidates = CANDIDATES if candidates is None else candidates
    if x.device.type not in (AMP_DEVICES if devices is None else devices) or len(x) == 0:
        return None, {}
    tried: dict[str, float] = {}
    for dtype in candidates:
        tried[str(dtype).removeprefix("torch.")] = dev = deviation(detector, x, dtype)
        if dev <= tolerance:
            return dtype, tried
    return None, tried


def settle(detector, x: torch.Tensor, **kwargs) -> torch.dtype | None:
    """Decide a detector's precision once, on the first batch it scores (:func:`choose`); later
    calls return the decision. The deviations tried are kept in ``detector.amp_check``."""
    if not getattr(detector, "amp_settled", False):
        detector.amp, detector.amp_check = choose(detector, x, **kwargs)  # detector.score: never metered
        detector.amp_settled = True
    return detector.amp


def label(detector) -> str:
    """The precision a detector's network runs in, in words."""
    dtype = getattr(detector, "amp", None)
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast (network), float32 (rest)"
