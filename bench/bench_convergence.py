"""How LIME, SHAP and CLEAR converge with their number of model evaluations (issue 14).

For each demo defect (detected, with a mask) and each sample count, the method's map is compared
with the ground-truth mask (optimal Jaccard J*, :func:`cfx.metrics.optimal_jaccard`) and with the
map of a ``--reference``-sample run of the same method and seed (Spearman rank correlation over the
pixels). The "knee" of a method is the smallest count whose median J* is within 0.02 of the
reference's (the issue's quality target); the smallest count whose median rank correlation is at
least 0.9 is given beside it. Prints Markdown, writes the raw
numbers (``--json``) and a figure of the curves (``--png``).

Usage: python bench/bench_convergence.py [--detector vae] [--categories brick,tablet] [--images 3]
       [--methods lime,shap,clear] [--counts 50,100,200,400,800,1600] [--reference 5000]
       [--png docs/benchmarks/convergence.png] [--json out.json] [--params '{"shap": {"grid": 16}}']
       [--reference-params '{"shap": {"context": "both"}}']
       python bench/bench_convergence.py --replot "kernel=a.json,partition=b.json" --png out.png
       python bench/bench_convergence.py --table out.json [--reference 5000]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfx.config import device_label  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.explainers import explain, set_data_root  # noqa: E402
from cfx.metrics import explanation_map, optimal_jaccard  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402
from cfx.resolve import resolve_root  # noqa: E402

#: the parameter that sets each method's number of evaluations
COUNT_PARAM = {"lime": "num_samples", "shap": "max_evals", "clear": "n_samples"}
#: the study measures fixed counts: no early stop
NO_STOP = {"lime": {"early_stop": False}, "clear": {"early_stop": False}}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(np.ravel(a), np.ravel(b)).statistic
    return float(r) if np.isfinite(r) else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="vae")
    ap.add_argument("--categories", default="brick,tablet")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--methods", default="lime,shap,clear")
    ap.add_argument("--counts", default="50,100,200,400,800,1600")
    ap.add_argument("--reference", type=int, default=5000)
    ap.add_argument("--png")
    ap.add_argument("--json")
    ap.add_argument("--params", default="{}", help='fixed parameters per method as JSON, e.g. {"shap": {"grid": 16}}')
    ap.add_argument("--reference-params", default="{}",
                    help="parameters per method of the reference run only, over --params, e.g. "
                         '{"shap": {"context": "both"}}: an estimator measured against another one\'s reference')
    ap.add_argument("--replot", help="only draw --png from earlier --json files: LABEL=FILE[:METHOD],... "
                                     "(median J* and rank correlation per count, one line per label)")
    ap.add_argument("--table", help="only print the table of an earlier --json file")
    args = ap.parse_args()
    if args.table:
        data = json.loads(Path(args.table).read_text())
        raw = {m: {int(n): v for n, v in d.items()} for m, d in data.items()}
        print_table(raw, list(raw), [n for n in sorted({n for d in raw.values() for n in d}) if n != args.reference],
                    args.reference)
        return 0
    if args.replot:
        return replot(args.replot, args.png, args.reference)
    fixed = json.loads(args.params)
    ref_fixed = json.loads(args.reference_params)
    counts = [int(c) for c in args.counts.split(",")]
    methods = args.methods.split(",")
    root = resolve_root(None)
    raw: dict[str, dict[int, list[dict]]] = {m: {} for m in methods}
    for cat in args.categories.split(","):
        b = load_bundle("demo", cat, detector=args.detector)
        set_data_root(b, root)
        arr = MVTecDataset(root, cat, "test", image_size=b.image_size, channels=b.channels).arrays()
        s = b.score_numpy(arr.images)
        idx = [i for i in np.flatnonzero(arr.labels == 1) if s[i] > b.threshold_for("score") and arr.masks[i].any()]
        pick = [idx[int(k)] for k in np.unique(np.linspace(0, len(idx) - 1, args.images).round())]
        for i in pick:
            image, mask = arr.images[i], arr.masks[i]
            for m in methods:
                def par(n: int, m: str = m, extra: dict | None = None) -> dict:
                    return {m: {**NO_STOP.get(m, {}), **fixed.get(m, {}), **(extra or {}), COUNT_PARAM[m]: n}}

                ref = explain(b, image, [m], params=par(args.reference, extra=ref_fixed.get(m)), mask=mask)[m]
                ref_map = explanation_map(ref)
                if ref.error or ref_map is None:
                    print(f"{cat}/{arr.samples[i].name} {m} reference: {ref.error or 'no map'}", file=sys.stderr)
                    continue
                for n in counts + [args.reference]:
                    e = ref if n == args.reference else explain(b, image, [m], params=par(n), mask=mask)[m]
                    h = explanation_map(e)
                    row = {"image": f"{cat}/{arr.samples[i].name}", "evaluations": e.info.get("evaluations"),
                           "seconds": e.seconds, "jaccard": optimal_jaccard(h, mask).jaccard if h is not None else 0.0,
                           "rank_corr": spearman(h, ref_map) if h is not None else 0.0}
                    raw[m].setdefault(n, []).append(row)
                    print(f"{m} {n} {row}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"### Convergence with the number of evaluations ({_dt.date.today().isoformat()}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {device_label()}, {args.detector} detector, demo {args.categories}, "
          f"{args.images} detected defects each, reference {args.reference}, fixed parameters {fixed or 'none'}, "
          f"reference's parameters {ref_fixed or 'as the others'}, "
          f"no early stop, load average {load:.1f})\n")
    print_table(raw, methods, counts, args.reference)
    if args.json:
        Path(args.json).write_text(json.dumps({m: {str(n): v for n, v in d.items()} for m, d in raw.items()}, indent=1))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for m in methods:
            ns = [n for n in counts + [args.reference] if raw[m].get(n)]
            axes[0].plot(ns, [statistics.median(r["jaccard"] for r in raw[m][n]) for n in ns], "o-", label=m)
            axes[1].plot(ns, [statistics.median(r["rank_corr"] for r in raw[m][n]) for n in ns], "o-", label=m)
        for ax, title in zip(axes, ("median J* with the mask", f"median rank corr. with the {args.reference}-sample map")):
            ax.set_xscale("log")
            ax.set_xlabel("samples (the method's count parameter)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{args.detector} detector, demo {args.categories}", fontsize=10)
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.png).with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, args.png)
    return 0


def print_table(raw: dict[str, dict[int, list[dict]]], methods: list[str], counts: list[int], reference: int) -> None:
    """The Markdown table and the knees. Two ways to compare a count with the reference: the
    difference of the two medians over the images, and the median of each image's own deficit
    (reference J* - J* of the same image), with how many images are within 0.02 of theirs."""
    print("| method | count | evaluations | seconds | J* (median) | J* of the reference - J* | "
          "per-image deficit (median) | images within 0.02 | rank corr. with the reference (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    knees, image_knees, rank_knees = {}, {}, {}
    for m in methods:
        if reference not in raw[m]:
            continue
        ref_rows = {r["image"]: r["jaccard"] for r in raw[m][reference]}
        ref_j = statistics.median(ref_rows.values())
        for n in counts + [reference]:
            rows = raw[m].get(n, [])
            if not rows:
                continue
            j = statistics.median(r["jaccard"] for r in rows)
            rc = statistics.median(r["rank_corr"] for r in rows)
            deficits = [ref_rows[r["image"]] - r["jaccard"] for r in rows if r["image"] in ref_rows]
            per_image = statistics.median(deficits) if deficits else float("nan")
            within = sum(d <= 0.02 for d in deficits)
            if n != reference and m not in knees and ref_j - j <= 0.02:
                knees[m] = n
            if n != reference and m not in image_knees and per_image <= 0.02:
                image_knees[m] = n
            if n != reference and m not in rank_knees and rc >= 0.9:
                rank_knees[m] = n
            print(f"| {m} | {n} | {statistics.median(r['evaluations'] or 0 for r in rows):.0f} | "
                  f"{statistics.median(r['seconds'] for r in rows):.2f} | {j:.3f} | {ref_j - j:+.3f} | "
                  f"{per_image:+.3f} | {within} of {len(deficits)} | {rc:.3f} |")
    print("\nKnee (smallest count whose median J* is within 0.02 of the reference's): "
          + ", ".join(f"{m} {knees.get(m, 'none of the counts')}" for m in methods)
          + ". By the median per-image deficit: " + ", ".join(f"{m} {image_knees.get(m, 'none')}" for m in methods)
          + ". Rank correlation >= 0.9 from: " + ", ".join(f"{m} {rank_knees.get(m, 'none')}" for m in methods))


def replot(spec: str, png: str, reference: int) -> int:
    """Curves of earlier runs (their --json) side by side in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for item in spec.split(","):
        label, _, path = item.partition("=")
        path, _, method = path.partition(":")
        data = json.loads(Path(path).read_text())[method or "shap"]
        ns = sorted(int(n) for n in data)
        axes[0].plot(ns, [statistics.median(r["jaccard"] for r in data[str(n)]) for n in ns], "o-", label=label)
        axes[1].plot(ns, [statistics.median(r["rank_corr"] for r in data[str(n)]) for n in ns], "o-", label=label)
    for ax, title in zip(axes, ("median J* with the mask", f"median rank corr. with the {reference}-sample map")):
        ax.set_xscale("log")
        ax.set_xlabel("evaluations (the method's count parameter)")
        ticks = [200, 400, 800, 1600, reference]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
