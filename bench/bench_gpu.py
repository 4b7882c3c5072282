"""One detector evaluation on the device the models run on, by forward batch and precision (issue 14's GPU path).

For each detector (VAE, PatchCore) and demo category, on the category's real demo test images
(repeated to fill the largest batch), side by side in one run:

* the precision each variant reaches: the largest absolute difference of the combined score from
  strict float32 (TF32 off for matrix products and convolutions, cfx's setting on CUDA:
  :func:`cfx.gpu.strict_float32`), for TF32 in convolutions and matrix products (torch's default
  has it in cuDNN's convolutions), float16 and bfloat16 autocast of the network part
  (:mod:`cfx.precision`), and which one the detector settles on (:func:`cfx.precision.settle`);
* milliseconds per image at forward batches 1-512 in strict float32, in TF32 and in the settled
  precision (device-synchronised, median of ``--repeats`` after a warm-up);
* the first call at a batch size not seen before against the next call at that size (cuDNN plans
  each new shape; :func:`cfx.gpu.padded` keeps to :func:`cfx.gpu.bucket`'s sizes, which
  :func:`cfx.gpu.prepare` warms when the models load: the load's time is given);
* where the models live (the memory bank's device and dtype).

On the CPU it runs too (small batches only, a check of the script), but the figures that matter
are a GPU's: ``bash bench/device_run.sh`` runs it on a lent device.

Usage: python bench/bench_gpu.py [--categories brick,tablet] [--detectors vae,patchcore] [--repeats 5]
    [--out bench/out/gpu.md]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cfx import config, precision  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explainers import machine  # noqa: E402


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 in CUDA matrix products and cuDNN convolutions on or off."""
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.inference_mode()
def scores(det, x: torch.Tensor, amp) -> torch.Tensor:
    prev = det.amp
    det.amp = amp
    try:
        return det.score(x).double().cpu()
    finally:
        det.amp = prev


@torch.inference_mode()
def ms_per_call(det, x: torch.Tensor) -> float:
    sync(x.device)
    t = time.perf_counter()
    det.score(x)
    sync(x.device)
    return 1000 * (time.perf_counter() - t)


@torch.inference_mode()
def ms_per_image(det, x: torch.Tensor, amp, repeats: int) -> float:
    prev, det.amp = det.amp, amp
    try:
        det.score(x)
        sync(x.device)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            det.score(x)
            sync(x.device)
            ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts) / len(x)
    finally:
        det.amp = prev


def bench(detector: str, category: str, root, batches: list[int], repeats: int) -> list[str]:
    t0 = time.perf_counter()
    b = load_bundle(config.DEMO_NAME, category, detector=detector)
    load_s = time.perf_counter() - t0
    det, dev = b.detector, b.device
    arr = MVTecDataset(root, category, "test", image_size=b.image_size, channels=b.channels).arrays()
    reps = -(-max(batches) // len(arr.images))
    x_all = b.to_tensor(np.concatenate([arr.images] * reps)[:max(batches)])
    x_chk = x_all[:min(len(x_all), b.forward_batch)]
    cold = [n for n in (37, 93, 131) if n < len(x_all)]
    cold_ms = [(ms_per_call(det, x_all[:n]), ms_per_call(det, x_all[:n])) for n in cold]
    with tf32(False):
        ref = scores(det, x_chk, None)
    dev_of = {}
    for name, amp, allow in (("TF32 (convolutions and matrix products)", None, True),
                             ("float16 autocast", torch.float16, False), ("bfloat16 autocast", torch.bfloat16, False)):
        if dev.type not in precision.AMP_DEVICES:
            continue
        with tf32(allow):
            got = scores(det, x_chk, amp)
        dev_of[name] = float((got - ref).abs().max()) if bool(torch.isfinite(got).all()) else float("inf")
    settled = precision.settle(det, x_chk)
    bank = getattr(det, "memory_bank", None)
    where = f"models on {dev}" + ("" if bank is None else f", memory bank {tuple(bank.shape)} {bank.dtype} on {bank.device}")
    lines = [f"**{detector}, {category}** ({where}; forward batch {b.forward_batch}; settles on "
             f"{precision.label(det)}; threshold {b.threshold:.3f}; load with cfx.gpu.prepare {load_s:.2f} s)", "",
             "| precision | max abs score deviation from strict float32 (n=" + f"{len(x_chk)}) |", "|---|---:|"]
    lines += [f"| {k} | {v:.2e} |" for k, v in dev_of.items()]
    lines += ["", "| forward batch | strict float32 ms/image | TF32 ms/image | settled ms/image |", "|---:|---:|---:|---:|"]
    for n in batches:
        with tf32(False):
            f32 = ms_per_image(det, x_all[:n], None, repeats)
            st = ms_per_image(det, x_all[:n], settled, repeats) if settled is not None else f32
        with tf32(True):
            t32 = ms_per_image(det, x_all[:n], None, repeats)
        lines.append(f"| {n} | {f32:.3f} | {t32:.3f} | {st:.3f} |")
    lines += ["", "| batch size not seen before | first call ms | next call ms |", "|---:|---:|---:|"]
    lines += [f"| {n} | {a:.1f} | {c:.1f} |" for n, (a, c) in zip(cold, cold_ms)]
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", default="brick,tablet")
    ap.add_argument("--detectors", default="vae,patchcore")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", help="comma-separated forward batches (default: 1-512 on CUDA, 1-32 on the CPU)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from cfx.data.demo import ensure_demo

    root = ensure_demo()
    cuda = config.device().type == "cuda"
    batches = [int(v) for v in (args.batches or ("1,8,32,64,128,256,512" if cuda else "1,8,32")).split(",")]
    lines = [f"### One evaluation by forward batch and precision: {machine()}", ""]
    for det in args.detectors.split(","):
        for cat in args.categories.split(","):
            block = bench(det, cat, root, batches, args.repeats)
            print("\n".join(block), file=sys.stderr, flush=True)
            lines += block
    md = "\n".join(lines)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
