"""Overhead of each explanation method over its model evaluations (issue 14), side by side in one run.

For each detector on a demo category: the cost of one batched evaluation of the target on this
device (median of ``--repeats`` batches of the bundle's forward batch), then every heavy method
with its default parameters on ``--images`` detected defect images (after one warm-up call per
method on another image). Each run counts the images it scored (``info["evaluations"]``,
:mod:`cfx.meter`); its overhead ratio is wall time / (evaluations x the batched cost). The issue's
target is at most 1.15. Gradient-based methods also run backward passes, which the forward cost
does not include (their ratio is reported, marked). CLEAR decodes every latent it scores with the
AE (its generator) before the target sees it; a second ratio counts those decodings at the AE's
batched cost (``info["decodes"]``), measured at the start of the run too: whole images, and for
the latents it only decodes within R*'s bounding box (``info["decodes_cropped"]``,
``info["decode_box"]``), the cost of that crop, measured after the run.

Usage: python bench/bench_overhead.py [--category brick] [--detectors vae,patchcore] [--images 2]
       [--methods lime,shap,clear,dice,gradient,concepts] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfx.config import device_label  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.explainers import explain, set_data_root  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402
from cfx.resolve import resolve_root  # noqa: E402

BACKWARD = {"gradient", "concepts"}


def batched_cost(bundle, image: np.ndarray, repeats: int = 7) -> float:
    """Median seconds per image of four batches of the bundle's forward batch scored in one call
    (after a warm-up): with PatchCore on the CPU these go to single-threaded workers
    (:mod:`cfx.batches`), the fastest rate the methods' large calls get, so the ratios are not
    flattered by a slower single batch."""
    n = 4 * int(bundle.forward_batch)
    batch = np.repeat(image[None], n, axis=0)
    bundle.score_numpy(batch)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bundle.score_numpy(batch)
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def decode_cost(bundle, image: np.ndarray, repeats: int = 7, box=None) -> float:
    """Median seconds per latent of the AE's decoding (CLEAR's generator) at the bundle's forward
    batch, as CLEAR decodes its samples (after a warm-up): whole images, or their crop to ``box``."""
    import torch

    from cfx.explainers.clear import decode_numpy

    with torch.inference_mode():
        z = bundle.ae.encode(bundle.to_tensor(image[None])).double().cpu().numpy()
    zs = np.repeat(z, int(bundle.forward_batch), axis=0)
    decode_numpy(bundle, zs, box)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_numpy(bundle, zs, box)
        out.append((time.perf_counter() - t0) / len(zs))
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--category", default="brick")
    ap.add_argument("--detectors", default="vae,patchcore")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--methods", default="lime,shap,clear,dice,gradient,concepts")
    ap.add_argument("--json")
    args = ap.parse_args()
    root = resolve_root(None)
    methods = args.methods.split(",")
    rows, raw = [], {}
    for det in args.detectors.split(","):
        b = load_bundle("demo", args.category, detector=det)
        set_data_root(b, root)
        arr = MVTecDataset(root, args.category, "test", image_size=b.image_size, channels=b.channels).arrays()
        s = b.score_numpy(arr.images)
        idx = [i for i in np.flatnonzero(arr.labels == 1) if s[i] > b.threshold_for("score")]
        pick = [idx[int(k)] for k in np.linspace(0, len(idx) - 1, args.images + 1).round()]
        warm, imgs = pick[0], pick[1:]
        explain(b, arr.images[warm], methods, mask=arr.masks[warm])  # imports, PCA, first compile
        cost = batched_cost(b, arr.images[imgs[0]])
        dcost = decode_cost(b, arr.images[imgs[0]])
        for m in methods:
            walls, evals, decs, ndecs = [], [], [], []
            for i in imgs:
                b.loaded.edit_setups.clear()  # each run computes its own counterfactual setup
                e = explain(b, arr.images[i], [m], mask=arr.masks[i])[m]
                if e.error:
                    print(f"{det} {m}: {e.error}", file=sys.stderr)
                    continue
                walls.append(e.seconds)
                evals.append(e.info["evaluations"])
                if "decodes" in e.info:  # decodings at the cost of the AE's batched decoding (whole or cropped)
                    n_crop, box = e.info["decodes_cropped"], tuple(map(tuple, e.info["decode_box"]))
                    decs.append((e.info["decodes"] - n_crop) * dcost
                                + n_crop * decode_cost(b, arr.images[imgs[0]], box=box))
                    ndecs.append(e.info["decodes"])
                else:
                    decs.append(None)
            if not walls:
                continue
            ratio = statistics.median(w / (n * cost) for w, n in zip(walls, evals))
            with_dec = None if None in decs else statistics.median(
                w / (n * cost + d) for w, n, d in zip(walls, evals, decs))
            rows.append((det, m, statistics.median(evals), statistics.median(walls), cost * 1e3, ratio, with_dec,
                         statistics.median(ndecs) if ndecs else None))
            raw[f"{det}/{m}"] = {"walls": walls, "evaluations": evals, "decodes": ndecs, "decode_s": decs,
                                 "cost_s": cost, "decode_cost_s": dcost}
            print(f"{det} {m}: {rows[-1]}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"### Method overhead over its evaluations ({_dt.date.today().isoformat()}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {device_label()}, demo/{args.category}, {args.images} defects, "
          f"load average {load:.1f})\n")
    print("| detector | method | evaluations (median) | wall s (median) | ms per image, batched | "
          "wall / (evaluations x batched) | with the AE's decodings counted | target |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for det, m, n, w, c, r, rd, nd in rows:
        mark = " (plus backward passes)" if m in BACKWARD else ""
        dec = "–" if rd is None else f"{rd:.2f} ({nd:.0f} decodings)"
        print(f"| {det} | {m} | {n:.0f} | {w:.2f} | {c:.2f} | {r:.2f}{mark} | {dec} | <= 1.15 |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
