"""SHAP's estimators on real MVTec images (issue 14): Kernel SHAP (400 samples) against shap's
Partition explainer (1,500 evaluations, the default) and LIME, by the optimal
Jaccard J* of each map with the ground-truth mask, on detected defects of real categories.

Needs the categories fitted (``python -m cfx train --data-root DIR --category C --detector
patchcore``; use ``CFX_MODELS_DIR`` to keep those weights out of the project).

    python bench/bench_shap_real.py --data-root ../shared/mvtec-sample --categories bottle,screw [--images 5]
        [--settings '{"LIME 1000, no early stop": ["lime", {"num_samples": 1000, "early_stop": false}]}']

``--settings`` replaces the compared settings (label -> [method, parameters]).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.explainers import explain, set_data_root  # noqa: E402
from cfx.metrics import explanation_map, optimal_jaccard  # noqa: E402
from cfx.models.bundle import dataset_name, load_bundle  # noqa: E402

SETTINGS = {"SHAP kernel 400": ("shap", {"estimator": "kernel", "max_evals": 400}),
            "SHAP partition 1500 (the default)": ("shap", {"estimator": "partition", "max_evals": 1500}),
            "LIME (default)": ("lime", {})}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--categories", default="bottle,screw")
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--settings", help="JSON: label -> [method, parameters] (default: the SHAP comparison)")
    args = ap.parse_args()
    settings = {k: tuple(v) for k, v in json.loads(args.settings).items()} if args.settings else SETTINGS
    root = Path(args.data_root)
    rows = []
    for cat in args.categories.split(","):
        b = load_bundle(dataset_name(root), cat, detector=args.detector)
        set_data_root(b, root)
        arr = MVTecDataset(root, cat, "test", image_size=b.image_size, channels=b.channels).arrays()
        s = b.score_numpy(arr.images)
        idx = [i for i in np.flatnonzero(arr.labels == 1) if s[i] > b.threshold and arr.masks[i].any()]
        pick = [idx[int(k)] for k in np.unique(np.linspace(0, len(idx) - 1, args.images).round())]
        for i in pick:
            for label, (m, p) in settings.items():
                t0 = time.perf_counter()
                e = explain(b, arr.images[i], [m], params={m: p}, mask=arr.masks[i])[m]
                h = explanation_map(e)
                j = optimal_jaccard(h, arr.masks[i]).jaccard if h is not None else 0.0
                rows.append({"category": cat, "image": arr.samples[i].name, "setting": label, "jaccard": j,
                             "seconds": time.perf_counter() - t0, "evaluations": e.info.get("evaluations")})
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"### {'SHAP' if settings is SETTINGS else 'Settings'} on real images ({time.strftime('%Y-%m-%d')}, {args.detector}, "
          f"{args.data_root}, {args.images} detected defects per category)\n")
    print("| category | setting | n | J* (median) | J* per image | median s | evaluations |")
    print("|---|---|---:|---:|---|---:|---:|")
    for cat in args.categories.split(","):
        for label in settings:
            rs = [r for r in rows if r["category"] == cat and r["setting"] == label]
            if rs:
                print(f"| {cat} | {label} | {len(rs)} | {statistics.median(r['jaccard'] for r in rs):.3f} | "
                      f"{', '.join(format(r['jaccard'], '.2f') for r in rs)} | "
                      f"{statistics.median(r['seconds'] for r in rs):.1f} | "
                      f"{statistics.median(r['evaluations'] or 0 for r in rs):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
