"""One heavy method with numpy's BLAS held at one thread (cfx's default, :mod:`cfx.blas`) and left
at its own thread count, alternated on one detected demo defect (issue 14). Prints the medians.

Usage: python bench/bench_blas.py [--detector vae] [--method lime] [--category brick] [--repeats 4]
       [--params '{"max_evals": 400}']
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cfx.explainers.base as base  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.explainers import explain, set_data_root  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402
from cfx.resolve import resolve_root  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="vae")
    ap.add_argument("--method", default="lime")
    ap.add_argument("--category", default="brick")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--params", default="{}")
    args = ap.parse_args()
    params = {args.method: json.loads(args.params)}
    root = resolve_root(None)
    b = load_bundle("demo", args.category, detector=args.detector)
    set_data_root(b, root)
    arr = MVTecDataset(root, args.category, "test", image_size=b.image_size, channels=b.channels).arrays()
    s = b.score_numpy(arr.images)
    idx = [i for i in np.flatnonzero(arr.labels == 1) if s[i] > b.threshold_for("score")]
    explain(b, arr.images[idx[0]], [args.method], mask=arr.masks[idx[0]], params=params)  # imports, compiles
    i = idx[len(idx) // 2]
    quiet, walls = base.quiet_blas, {"one BLAS thread": [], "BLAS's own threads": []}
    try:
        for _ in range(args.repeats):
            for label in walls:
                base.quiet_blas = quiet if label == "one BLAS thread" else contextlib.nullcontext
                e = explain(b, arr.images[i], [args.method], mask=arr.masks[i], params=params)[args.method]
                walls[label].append(e.seconds)
                print(label, round(e.seconds, 3), e.info.get("evaluations"), file=sys.stderr, flush=True)
    finally:
        base.quiet_blas = quiet
    print(f"{args.detector} {args.method} {args.category}/{arr.samples[i].name}: "
          + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in walls.items()) + f" (medians of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
