"""Pixel AUROC by mid-ranks (:func:`cfx.metrics.auroc`) against scikit-learn's ``roc_auc_score``,
side by side in one run, on a demo category's real maps: the detector's heatmaps of every test
image against their masks, pooled as the audit and ``python -m cfx evaluate`` pool them. Prints
both medians, their ratio and the largest difference between the values, as Markdown.

Usage: python bench/bench_auroc.py [--category brick] [--detector vae] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from sklearn.metrics import roc_auc_score

    from bench.bench_audit import machine
    from cfx.data.demo import ensure_demo
    from cfx.data.mvtec import MVTecDataset
    from cfx.metrics import auroc
    from cfx.models.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--category", default="brick")
    ap.add_argument("--detector", default="vae")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = ensure_demo()
    b = load_bundle("demo", args.category, detector=args.detector)
    arr = MVTecDataset(root, args.category, "test", image_size=b.image_size, channels=b.channels).arrays()
    heat = np.asarray(b.analyse(arr.images)["heatmap"], np.float32).ravel()
    truth = arr.masks.ravel() > 0
    times: dict[str, list[float]] = {"scikit-learn": [], "cfx": []}
    values: dict[str, float] = {}
    for _ in range(args.repeats):  # alternated, so that both see the same machine
        for name, fn in (("scikit-learn", lambda: float(roc_auc_score(truth, heat))), ("cfx", lambda: auroc(truth, heat))):
            t0 = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{machine()}; demo/{args.category}, {args.detector} heatmaps of {len(arr.images)} test images "
          f"({heat.size:,} pixels), median of {args.repeats}\n")
    print("| implementation | pixel AUROC | median s |\n|---|---:|---:|")
    for k in times:
        print(f"| {k} | {values[k]:.12f} | {med[k]:.3f} |")
    print(f"\nratio cfx / scikit-learn: {med['cfx'] / med['scikit-learn']:.2f}; "
          f"difference {abs(values['cfx'] - values['scikit-learn']):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
