"""Detector quality: `python -m cfx evaluate` figures for the demo and the real sample, as markdown.

Usage: python bench/bench_core.py [--sample ../shared/mvtec-sample]
Prints one table row per category (categories without a trained model are listed as such).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.errors import ModelMissingError  # noqa: E402
from cfx.metrics.detection import evaluate_category  # noqa: E402
from cfx.models.bundle import dataset_name, load_bundle  # noqa: E402


def fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default=str(Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"))
    args = ap.parse_args()
    rows = []
    targets = [(ensure_demo(), c) for c in ("brick", "gravel", "tablet", "shortcut")]
    sample = Path(args.sample)
    if (sample / "bottle").is_dir():
        targets += [(sample, c) for c in ("bottle", "screw", "grid")]
    results = {}
    for root, cat in targets:
        ds = dataset_name(root)
        try:
            b = load_bundle(ds, cat, device="cpu", detector="vae")
        except ModelMissingError as exc:
            rows.append(f"| {ds}/{cat} | no model: {exc} |")
            continue
        r = evaluate_category(b, root, cat)
        results[f"{ds}/{cat}"] = r
        rows.append(f"| {ds}/{cat} | {fmt(r['image_auroc'])} | {fmt(r['image_auroc_recon'])} | "
                    f"{fmt(r['image_auroc_mahalanobis'])} | {fmt(r['classifier_auroc'])} | {fmt(r['pixel_auroc'])} | "
                    f"{r['f1']:.3f} | {b.card['alpha']} | {b.card.get('kl_weight', 2e-5):g} | {r['n_test']} ({r['n_with_mask']} masks) | "
                    f"{b.card.get('train_seconds')} |")
    print(f"Measured {dt.date.today()} on {platform.machine()} {platform.processor() or ''}, CPU\n")
    print("| dataset/category | image AUROC (combined) | recon | Mahalanobis | classifier | pixel AUROC | F1 | alpha | VAE KL weight | n test | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/core.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
