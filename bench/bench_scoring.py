"""Cost of one detector score on the CPU, the floor under every perturbation method (issue 3).

Side by side in one run, interleaved, on the shipped demo weights (models warm, random images):

* the error map's Gaussian smoothing: the detector's shifted-slice blur against the one-channel
  ``conv2d`` it replaced (same values);
* a whole combined score per image at forward batches of 8-128 (cfx scores in batches of
  :data:`cfx.config.FORWARD_BATCH`);
* its parts: VAE encoder, VAE decoder, AE decoder (CLEAR decodes every sample with it).

With ``--detector patchcore``: the PatchCore score per image at forward batches of 1-32, one batch
at a time on torch's threads and (cfx's default on the CPU) by one-thread workers
(:mod:`cfx.batches`), and its EfficientNet-Lite0 trunk as the package builds it against cfx's
(batch norms folded into the convolutions, channels-last), side by side. The VAE's combined score
is measured both ways too.

Usage: python bench/bench_scoring.py [--categories brick,tablet] [--repeats 7] [--n 256] [--detector patchcore]
"""
from __future__ import annotations

import argparse
import os
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cfx.models.bundle import load_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explainers import loadavg, machine  # noqa: E402


def conv_smooth(det, e: torch.Tensor) -> torch.Tensor:
    """The former smoothing: replicate padding and a one-channel separable conv2d."""
    k = det.kernel
    r = k.numel() // 2
    e = e[:, None]
    e = torch.nn.functional.conv2d(torch.nn.functional.pad(e, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    e = torch.nn.functional.conv2d(torch.nn.functional.pad(e, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return e[:, 0]


def per_image_ms(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000 / n


def interleaved(jobs: dict, repeats: int, n: int) -> dict[str, list[float]]:
    """ms per image of each job over ``repeats`` interleaved rounds (after one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    with torch.inference_mode():
        for fn in jobs.values():
            fn()  # warm
        for _ in range(repeats):
            for k, fn in jobs.items():
                times[k].append(per_image_ms(fn, n))
    return times


def one_at_a_time(b, x_np: np.ndarray, batch: int) -> np.ndarray:
    """``score_numpy`` with the batches scored one at a time on torch's threads (no workers)."""
    old = os.environ.get("CFX_BATCH_WORKERS")
    os.environ["CFX_BATCH_WORKERS"] = "1"
    try:
        return b.score_numpy(x_np, "score", batch=batch)
    finally:
        os.environ.pop("CFX_BATCH_WORKERS") if old is None else os.environ.__setitem__("CFX_BATCH_WORKERS", old)


def with_workers(b, x_np: np.ndarray, batch: int) -> list:
    """The VAE's batches through :func:`cfx.batches.map_batches`'s workers (which cfx does not use
    for the VAE: measured no faster)."""
    from cfx.batches import map_batches, workers_for

    chunks = [x_np[i:i + batch] for i in range(0, len(x_np), batch)]
    return map_batches(lambda c: b.score(b.to_tensor(c)), chunks, workers_for(b.device, len(chunks)))


def patchcore(args) -> int:
    from cfx.models.backbone import Lite0Features

    print(f"PatchCore scoring cost — {machine()}, load before {loadavg()}\n")
    print(f"Median of {args.repeats} interleaved repeats, {args.n} random images each, ms per image.\n")
    print("| category | measure | ms/image |")
    print("|---|---|---:|")
    plain = Lite0Features(optimise=False)
    for cat in args.categories.split(","):
        b = load_bundle("demo", cat, device="cpu", detector="patchcore")
        det = b.detector
        x_np = np.random.default_rng(0).random((args.n, b.channels, b.image_size, b.image_size), dtype=np.float32)
        x = b.to_tensor(x_np)
        jobs = {f"trunk as packaged (batch norms, contiguous), batch {bs}":
                (lambda bs=bs: [plain(x[i:i + bs], det.input_size) for i in range(0, args.n, bs)]) for bs in (4, 32)}
        jobs.update({f"trunk of cfx (folded, channels-last), batch {bs}":
                     (lambda bs=bs: [det.features(x[i:i + bs]) for i in range(0, args.n, bs)]) for bs in (4, 32)})
        jobs.update({f"PatchCore score, batch {bs}, one batch at a time on torch's threads"
                     + (" (cfx's CPU batch)" if bs == b.forward_batch else ""):
                     (lambda bs=bs: one_at_a_time(b, x_np, bs)) for bs in (1, 2, 4, 8, 16, 32)})
        jobs.update({f"PatchCore score, batch {bs}, one-thread workers (cfx.batches, cfx's default)":
                     (lambda bs=bs: b.score_numpy(x_np, "score", batch=bs)) for bs in (2, 4, 8)})
        times = interleaved(jobs, args.repeats, args.n)
        for k, v in times.items():
            print(f"| {cat} | {k} | {statistics.median(v):.1f} |")
    print(f"\nLoad after: {loadavg()}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", default="brick,tablet")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--n", type=int, default=256, help="images per measurement")
    p.add_argument("--detector", default="vae", choices=("vae", "patchcore"))
    args = p.parse_args(argv)
    if args.detector == "patchcore":
        return patchcore(args)
    print(f"Detector scoring cost — {_dt.date.today()}, {machine()}, load before {loadavg()}\n")
    print(f"Median of {args.repeats} interleaved repeats, {args.n} random images each, ms per image.\n")
    print("| category (alpha) | measure | ms/image |")
    print("|---|---|---:|")
    for cat in args.categories.split(","):
        b = load_bundle("demo", cat, device="cpu", detector="vae")
        det = b.detector
        rng = np.random.default_rng(0)
        x_np = rng.random((args.n, b.channels, b.image_size, b.image_size), dtype=np.float32)
        x = b.to_tensor(x_np)
        e = torch.rand(args.n, b.image_size, b.image_size)
        z = torch.randn(args.n, b.ae.latent_dim)
        jobs = {
            "smoothing: shifted slices (cfx)": lambda: det.smooth(e),
            "smoothing: one-channel conv2d (before)": lambda: conv_smooth(det, e),
            "VAE encoder": lambda: [det.vae.encode(x[i:i + 32]) for i in range(0, args.n, 32)],
            "VAE decoder": lambda: [det.vae.decode(det.lat_mean.expand(32, -1)) for _ in range(0, args.n, 32)],
            "AE decoder (CLEAR)": lambda: [b.ae.decode(z[i:i + 32]) for i in range(0, args.n, 32)],
        }
        for bs in (8, 16, 32, 64, 128):
            jobs[f"combined score, batch {bs}"] = lambda bs=bs: b.score_numpy(x_np, "score", batch=bs)
        for bs in (8, 32):
            jobs[f"combined score, batch {bs}, one-thread workers (not used for the VAE)"] = \
                lambda bs=bs: with_workers(b, x_np, bs)
        times = interleaved(jobs, args.repeats, args.n)
        for k, v in times.items():
            print(f"| {cat} ({det.alpha:g}) | {k} | {statistics.median(v):.3f} |")
    print(f"\nLoad after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
