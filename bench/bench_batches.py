"""One-thread workers against one batch at a time on torch's threads, inside the methods (cfx.batches).

For each detector on a demo category, LIME and SHAP (the methods that score hundreds of images in
large calls) and CLEAR run with their defaults on ``--images`` detected defect images, each run
once with ``CFX_BATCH_WORKERS=1`` (every batch in the calling thread on torch's threads) and once
with cfx's default (PatchCore's batches to one-thread workers), alternating, ``--repeats`` times,
after one warm-up run of each. Prints the median seconds both ways, their ratio, and the largest
difference between the two maps (the same batches; one thread sums in another order).

A tight loop of back-to-back batches (bench/bench_scoring.py) shows no difference: there torch's
threads never go idle between batches. Inside the methods each batch is preceded by their own
work (composing the masked images, the regressions), and that is where the workers pay.

``--balanced`` compares instead, both with the workers, a call split into forward batches (the
last one short; a call of one batch in the calling thread) with the default's balanced split
(:func:`cfx.batches.split_batches`: a multiple of the workers, sizes within one), which gives the
counterfactual searches' small calls of 2-7 images to both workers.

Usage: python bench/bench_batches.py [--category tablet] [--detectors patchcore,vae] [--images 2] [--repeats 3]
       [--methods lime,shap,clear] [--balanced]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.explainers import REGISTRY, set_data_root  # noqa: E402
import cfx.models.bundle as MB  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_counterfactuals import flagged_defects  # noqa: E402
from bench_explainers import loadavg, machine  # noqa: E402

MODES = {"one batch at a time (CFX_BATCH_WORKERS=1)": "1", "one-thread workers (default)": ""}
#: ``--balanced``: the workers with the calls split into forward batches as before
#: (:func:`cfx.batches.split_batches` with one worker's split) against the default's balanced split
BALANCED = {"workers, batches of the forward batch": "unbalanced", "workers, balanced (default)": ""}
SPLIT = MB.split_batches


def run(b, image, method: str, workers: str):
    MB.split_batches = (lambda items, batch, w: SPLIT(items, batch, 1)) if workers == "unbalanced" else SPLIT
    if workers and workers != "unbalanced":
        os.environ["CFX_BATCH_WORKERS"] = workers
    else:
        os.environ.pop("CFX_BATCH_WORKERS", None)
    b.loaded.edit_setups.clear()
    return REGISTRY[method](b).attribute(image)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--category", default="tablet")
    p.add_argument("--detectors", default="patchcore,vae")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="lime,shap,clear")
    p.add_argument("--balanced", action="store_true",
                   help="compare the workers' balanced split of a call with its forward batches instead")
    args = p.parse_args()
    modes = BALANCED if args.balanced else MODES
    root = ensure_demo()
    print(f"{machine()}, load before {loadavg()}\n")
    print(f"Median seconds over {args.images} detected {args.category} defects x {args.repeats} repeats, "
          "the two ways alternating, after a warm-up run of each.\n")
    print("| detector | method | " + " | ".join(modes) + " | ratio | largest map difference (of its maximum) |")
    print("|---|---|---:|---:|---:|---|")
    for det in args.detectors.split(","):
        b = load_bundle("demo", args.category, detector=det)
        set_data_root(b, root)
        images = [im for _, im, _ in flagged_defects(b, root, args.category, args.images)]
        for m in args.methods.split(","):
            for w in modes.values():
                run(b, images[0], m, w)  # warm-up
            secs: dict[str, list[float]] = {k: [] for k in modes}
            diff = 0.0
            for img in images:
                for _ in range(args.repeats):
                    maps = {}
                    for k, w in modes.items():
                        e = run(b, img, m, w)
                        secs[k].append(e.seconds)
                        maps[k] = e.heatmap
                    if all(v is not None for v in maps.values()):
                        a, c = maps.values()
                        diff = max(diff, float(np.abs(a - c).max() / max(np.abs(a).max(), 1e-12)))
            med = {k: statistics.median(v) for k, v in secs.items()}
            one, pooled = med.values()
            print(f"| {det} | {m} | {one:.2f} | {pooled:.2f} | {one / pooled:.2f} | "
                  f"{diff:.1e} |", flush=True)
    os.environ.pop("CFX_BATCH_WORKERS", None)
    MB.split_batches = SPLIT
    print(f"\nLoad after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
