"""The detector's map in pixels and in words (issue 35), printed as Markdown tables for BENCHMARKS.md.

Per demo category and detector, on every defect test image with a mask:

* **words**: how often the detector's own map is described as pointing *elsewhere*, by the old
  rule (under half of its positive weight on the mask) and by :func:`cfx.reports.words.map_sentence`
  (J* and the image's pixel AUROC), and how many of those maps have J* >= 0.3 (the target: none
  said "elsewhere");
* **display**: the share of the image drawn at the top of the colour scale, by the old fixed
  scale (map / 2, clipped: saturated) and by :func:`cfx.reports.colours.calibrated_display` (>= 0.95),
  over the mask's share, medians;
* **blame**: the audit of ``--blame-category`` under PatchCore with the detector's map and
  Grad-CAM: flags, and how many blame the explainer and the detector.

    python bench/bench_maps.py [--categories brick,gravel,tablet,shortcut] [--blame-category shortcut]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfx.audit.run import audit_category  # noqa: E402
from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.metrics import optimal_jaccard  # noqa: E402
from cfx.models.bundle import load_bundle, model_exists  # noqa: E402
from cfx.reports.colours import calibrated_display  # noqa: E402
from cfx.reports.words import map_sentence  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--categories", default="brick,gravel,tablet,shortcut")
    p.add_argument("--blame-category", default="shortcut")
    args = p.parse_args()
    root = ensure_demo()
    rows = []
    for cat in args.categories.split(","):
        for det in ("patchcore", "vae"):
            if not model_exists("demo", cat):
                continue
            b = load_bundle("demo", cat, detector=det)
            ds = MVTecDataset(root, cat, "test", image_size=b.image_size, channels=b.channels).arrays()
            idx = [i for i in range(len(ds)) if ds.labels[i] == 1 and ds.has_mask[i]]
            heat = b.analyse(ds.images[idx])["heatmap"]
            old_else = new_else = new_else_high = high = 0
            old_sat, new_top = [], []
            for h, i in zip(heat, idx):
                m = (ds.masks[i][0] if ds.masks[i].ndim == 3 else ds.masks[i]) > 0.5
                pos = np.clip(h, 0, None)
                j = optimal_jaccard(h, m).jaccard
                high += j >= 0.3
                old_else += pos[m].sum() / max(pos.sum(), 1e-12) < 0.5
                said = map_sentence(h, m).startswith("It points elsewhere")
                new_else += said
                new_else_high += said and j >= 0.3
                old_sat.append((np.clip(h / 2.0, 0, 1) >= 0.99).mean() / m.mean())
                new_top.append((calibrated_display(h) >= 0.95).mean() / m.mean())
            rows.append((cat, det, len(idx), high, int(old_else), int(new_else), int(new_else_high),
                         float(np.median(old_sat)), float(np.median(new_top))))
    print(f"\n{time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}\n")
    print("| category | detector | defects | J* >= 0.3 | 'elsewhere' (old rule) | 'elsewhere' (J*, AUROC) | "
          "of them J* >= 0.3 | top-of-scale area / mask: old | new |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.1f} | {r[8]:.1f} |")
    cat = args.blame_category
    b = load_bundle("demo", cat, detector="patchcore")
    r = audit_category(b, root, cat, ["recon", "gradcam"], target="score", cache=False)
    s = r.summary()
    print(f"\nAudit of {cat} (PatchCore, {s['n_detected']} detected of {len(r.images)}):\n")
    print("| method | flagged | explainer at fault | detector at fault | mean J* |")
    print("|---|---:|---:|---:|---:|")
    for m in r.methods:
        print(f"| {m} | {s['n_flagged'][m]}/{s['n_evaluated'][m]} | {s['fault'][m]['explainer']} | "
              f"{s['fault'][m]['detector']} | {s['mean_optimal_jaccard'][m]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
