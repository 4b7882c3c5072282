"""Detectors side by side: quality at the stored threshold, fit time and scoring speed.

Usage: python bench/bench_detectors.py [--sample ../shared/mvtec-sample] [--repeats 5]

For every demo category (shipped weights) and, when the real sample is beside the project, its
bottle, screw and grid (PatchCore fitted here, into a temporary models folder: weights derived
from the sample are never written into models/), prints image AUROC, pixel AUROC, the FPR on
test/good and the TPR on defects at the stored threshold, PatchCore's fit time, and the time to
score one image with its map (batched, models warm; medians of ``--repeats`` runs, both
detectors measured in the same run). Writes bench/out/detectors.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cfx import config  # noqa: E402
from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.metrics.detection import evaluate_category  # noqa: E402
from cfx.models.bundle import dataset_name, load_bundle, model_exists  # noqa: E402
from cfx.training import fit_patchcore  # noqa: E402


def fmt(x, p=3):
    return "n/a" if x is None else f"{x:.{p}f}"


def per_image_ms(bundle, images: np.ndarray, repeats: int) -> float:
    """Median wall time of ``bundle.analyse`` (score + map) over the batch, per image."""
    bundle.analyse(images[:2])  # warm
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bundle.analyse(images)
        t.append((time.perf_counter() - t0) / len(images) * 1000)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default=str(Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    jobs = [(ensure_demo(), c, None) for c in ("brick", "gravel", "tablet", "shortcut")]
    sample = Path(args.sample)
    tmp = tempfile.mkdtemp(prefix="cfx-bench-models-")
    if (sample / "bottle").is_dir():
        jobs += [(sample, c, tmp) for c in ("bottle", "screw", "grid")]
    rows, out = [], {}
    for root, cat, models in jobs:
        ds = dataset_name(root)
        fit_s = None
        if models is not None:
            os.environ["CFX_MODELS_DIR"] = models
            t0 = time.perf_counter()
            fit_patchcore(root, cat, ds, log=lambda s: None)
            fit_s = time.perf_counter() - t0
        else:
            os.environ.pop("CFX_MODELS_DIR", None)
        if not model_exists(ds, cat):
            rows.append(f"| {ds}/{cat} | no model |")
            continue
        base = load_bundle(ds, cat)
        test = MVTecDataset(root, cat, "test", image_size=base.image_size, channels=base.channels).arrays()
        batch = test.images[:32]
        n_train = len(MVTecDataset(root, cat, "train").samples)
        for name in base.detectors:
            b = base.using(name)
            r = evaluate_category(b, root, cat)
            ms = per_image_ms(b, batch, args.repeats)
            info = b.card.get("detectors", {}).get(name, {})
            key = f"{ds}/{cat}/{name}"
            out[key] = {**r, "ms_per_image": ms, "fit_seconds": fit_s if name == "patchcore" else None,
                        "bank": info.get("memory_bank"), "n_train": n_train}
            rows.append(f"| {ds}/{cat} | {name} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | "
                        f"{fmt(r['fpr_good'], 2)} | {fmt(r['tpr_defect'], 2)} | {r['threshold']:.2f} | "
                        f"{fmt(fit_s, 1) if name == 'patchcore' and fit_s else '-'} | {ms:.1f} | {n_train} |")
    dev = config.device_label()
    print(f"Measured {dt.date.today()} on {platform.machine()} {platform.processor() or ''}, {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| dataset/category | detector | image AUROC | pixel AUROC | FPR test/good | TPR defects | threshold | "
          "fit s (here) | ms / image (batch 32, with map) | train images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/detectors.json").write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
