"""Exact cuts in the counterfactual methods, against the old way, alternating in one process.

* **CLEAR's cropped decoding.** A latent's edit strength is read inside the bounding box of R*
  only, so CLEAR decodes just that crop of the latents it samples
  (:meth:`cfx.models.nets.ConvAutoencoder.decode_crop`). The old way decodes the whole image and
  crops it (the same pixels to float rounding).
* **DiCE's precisions.** dice-ml computes each feature's decimal precision from the modes of the
  reference table, one pandas column at a time, and rounds its counterfactuals to it; cfx now
  passes it the same numbers (:func:`cfx.explainers.dice.decimal_precisions`). The old way lets
  dice-ml compute them.
* **The proposals' edits in lockstep** (all methods with several proposals: DiCE's 4). Each
  proposal's smallest valid edit is scanned a forward batch at a time from the smallest region
  up; :func:`cfx.explainers.edit.minimal_edits` scans them together, one call per round, and the
  sliders' images of all counterfactuals are scored in one call. The old way scans (and scores
  the sliders of) one proposal after another.

For each detector and demo category, each method runs with its defaults on ``--images`` detected
defects, ``--repeats`` times each way, alternating, after a warm-up of each way; every timed run
computes its own setup. Prints the median seconds both ways, their ratio, the evaluations, and
whether every run's counterfactual images were the same both ways.

Usage: python bench/bench_exact_cuts.py [--categories brick,tablet] [--detectors vae,patchcore]
       [--images 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cfx.explainers.clear as C  # noqa: E402
import cfx.explainers.dice as D  # noqa: E402
from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.explainers import edit as E  # noqa: E402
from cfx.explainers.counterfactual import CounterfactualExplainer  # noqa: E402
from cfx.explainers import REGISTRY, set_data_root  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_counterfactuals import flagged_defects  # noqa: E402
from bench_explainers import loadavg, machine  # noqa: E402

CROPPED, PRECISIONS, LOCKSTEP, PATHS = C.decode_numpy, D.decimal_precisions, E.minimal_edits, \
    CounterfactualExplainer._path_scores


def one_after_another(bundle, x, target, heat, contents, changes, margin_levels=E.MARGIN_LEVELS, chunk=None,
                      scored=None):
    """The old way: each proposal's scan in turn."""
    return [LOCKSTEP(bundle, x, target, heat, [c], [ch], margin_levels, chunk, scored)[0]
            for c, ch in zip(contents, changes)]


def paths_one_by_one(self, x, score_x, cfs, target):
    """The old way: each slider scored in its own call."""
    for c in cfs:
        PATHS(self, x, score_x, [c], target)


def whole_then_crop(bundle, Z, box=None):
    """The old way: decode whole images, then crop them."""
    g = CROPPED(bundle, Z)
    if box is None:
        return g
    (r0, r1), (c0, c1) = box
    return g[:, :, r0:r1, c0:c1]


def set_way(new: bool) -> None:
    C.decode_numpy = CROPPED if new else whole_then_crop
    D.decimal_precisions = PRECISIONS if new else (lambda table, cols: {})
    E.minimal_edits = LOCKSTEP if new else one_after_another
    CounterfactualExplainer._path_scores = PATHS if new else paths_one_by_one


def run(b, image, method: str, new: bool):
    set_way(new)
    b.loaded.edit_setups.clear()
    return REGISTRY[method](b).attribute(image)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--categories", default="brick,tablet")
    p.add_argument("--detectors", default="vae,patchcore")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = ensure_demo()
    print(f"{machine()}, load before {loadavg()}\n")
    print(f"Median seconds over {args.images} detected defects x {args.repeats} repeats, the two ways "
          "alternating, after a warm-up run of each.\n")
    print("| category | detector | method | old way | new way | ratio | evaluations (median, old / new) | same images |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for cat in args.categories.split(","):
        for det in args.detectors.split(","):
            b = load_bundle("demo", cat, detector=det)
            set_data_root(b, root)
            images = [im for _, im, _ in flagged_defects(b, root, cat, args.images)]
            for m in ("clear", "dice"):
                for new in (False, True):
                    run(b, images[0], m, new)  # warm-up
                secs: dict[bool, list[float]] = {False: [], True: []}
                evals: dict[bool, list[int]] = {False: [], True: []}
                same = True
                for img in images:
                    for _ in range(args.repeats):
                        out = {}
                        for new in (False, True):
                            e = out[new] = run(b, img, m, new)
                            secs[new].append(e.seconds)
                            evals[new].append(e.info["evaluations"])
                        a, c = out[False].counterfactuals, out[True].counterfactuals
                        same &= len(a) == len(c) and all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
                old, new_ = statistics.median(secs[False]), statistics.median(secs[True])
                print(f"| {cat} | {det} | {m} | {old:.2f} | {new_:.2f} | {old / new_:.2f} | "
                      f"{statistics.median(evals[False]):.0f} / {statistics.median(evals[True]):.0f} | "
                      f"{'yes' if same else 'NO'} |", flush=True)
    set_way(True)
    print(f"\nLoad after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
