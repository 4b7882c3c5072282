"""What cfx does differently on CUDA: strict float32 and few batch shapes.

Measured on an NVIDIA H200 (BENCHMARKS.md, "GPU"):

* **Strict float32.** With torch's defaults cuDNN runs float32 convolutions in TF32, which moved
  the demo detectors' scores by 2e-3 to 8e-2 from float32 (PatchCore's threshold is about 3.5):
  more than the 1e-3 that cfx allows any faster precision (:mod:`cfx.precision`). So on CUDA
  :func:`strict_float32` turns TF32 off for convolutions and matrix products; the detectors' own
  evaluations are a small part of an explanation's time there, so this costs little.
* **Few batch shapes.** One evaluation costs 0.01 ms (VAE) to 0.09 ms (PatchCore) per image at the
  device's forward batch, but the first call at a batch size cuDNN has not seen costs far more
  (it chooses and builds a plan for every convolution), and the explainers' calls come in every
  size (SHAP's 375 or 387 evaluations, CLEAR's rounds). :func:`padded` rounds each call's batch
  up to a power of two (:func:`bucket`) by repeating its last image and drops the extra rows from
  the result; scores are per image, so the real rows' results do not depend on the padding.
  :func:`prepare` builds every bucket's plans once, when a category's models load.

On the CPU nothing here changes anything: :func:`padded` calls the function as it is.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import torch

R = TypeVar("R")


def strict_float32() -> None:
    """No TF32 in CUDA convolutions and matrix products (float32 means float32)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def bucket(n: int, cap: int) -> int:
    """The batch size a call of ``n`` images is padded to: the smallest power of two >= ``n``,
    at most ``cap`` (a call larger than ``cap`` keeps its size)."""
    if n <= 1:
        return max(n, 0)
    return n if n >= cap else min(cap, 1 << (n - 1).bit_length())


def _head(out: Any, n: int, m: int) -> Any:
    """The first ``n`` rows of a result of ``m`` rows (a tensor, or a dict of them)."""
    if isinstance(out, dict):
        return {k: _head(v, n, m) for k, v in out.items()}
    return out[:n] if isinstance(out, torch.Tensor) and out.ndim and len(out) == m else out


def padded(fn: Callable[[torch.Tensor], R], x: torch.Tensor, cap: int, devices: Collection[str] = ("cuda",)) -> R:
    """``fn(x)`` for a per-image function ``fn`` of a batch (N, ...), computed on CUDA at the
    batch size :func:`bucket` (``x``'s last image repeated) without gradients; elsewhere, or with
    gradients enabled, ``fn(x)`` itself.

    Args:
        fn: returns a tensor (N, ...) or a dict of them, row i depending on image i alone.
        x: the batch, on the device ``fn`` runs on.
        cap: the largest bucket (the device's forward batch).
        devices: the device types it pads on.
    """
    n = len(x)
    m = bucket(n, cap)
    if x.device.type not in devices or m == n or torch.is_grad_enabled():
        return fn(x)
    fill = x[-1:].expand(m - n, *x.shape[1:])
    xp = torch.cat([x, fill]).contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.contiguous_format)
    return _head(fn(xp), n, m)


@torch.inference_mode()
def prepare(bundle) -> float:
    """On CUDA: strict float32, then one call at every bucket size of the bundle's detectors'
    scores and its classifier, on random images, so that no explanation pays for cuDNN's plans (a
    detector's ``analyse`` runs the same convolutions).
    Not counted as evaluations (the models are called directly). Returns the seconds it took
    (0 elsewhere)."""
    if bundle.device.type != "cuda":
        return 0.0
    strict_float32()
    t0 = time.perf_counter()
    cap = bundle.forward_batch
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(1, bundle.channels, bundle.image_size, bundle.image_size, generator=g).to(bundle.device)
    fns = [det.score for det in bundle.detectors.values()]
    if "classifier" in bundle.parts:
        fns.append(bundle.parts["classifier"].proba)
    sizes = sorted({bucket(n, cap) for n in range(1, cap + 1)})
    for size in sizes:
        xs = x.expand(size, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        for f in fns:
            f(xs)
    torch.cuda.synchronize(bundle.device)
    return time.perf_counter() - t0
