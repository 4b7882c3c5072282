"""The first SHAP of a fresh process, cold and after :mod:`cfx.warm` (issue 14).

Runs itself twice as a child process: ``cold`` explains a detected demo defect with SHAP twice;
``warm`` first starts the background warm-up, meanwhile times the detector's answer for one image
(analyse + Grad-CAM, as the Compare page's first answer) every 0.2 s, then explains. Prints seconds.

Usage: python bench/bench_warm.py [--detector vae] [--category brick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(mode: str, detector: str, category: str) -> None:
    from cfx.data.mvtec import MVTecDataset
    from cfx.explainers import explain, set_data_root
    from cfx.models.bundle import load_bundle
    from cfx.resolve import resolve_root

    root = resolve_root(None)
    b = load_bundle("demo", category, detector=detector)
    set_data_root(b, root)
    arr = MVTecDataset(root, category, "test", image_size=b.image_size, channels=b.channels).arrays()
    b.analyse(arr.images[:1])
    if mode == "warm":
        from cfx import warm

        th, lat = warm.start(), []
        while th.is_alive():
            t = time.perf_counter()
            b.analyse(arr.images[len(lat) % 20][None])
            explain(b, arr.images[0], ["gradcam"])
            lat.append(time.perf_counter() - t)
            time.sleep(0.2)
        print(f"warm-up {warm.report}; one image's answer meanwhile: median {np.median(lat):.3f} s, "
              f"max {max(lat):.3f} s, n {len(lat)}")
    s = b.score_numpy(arr.images)
    i = [k for k in np.flatnonzero(arr.labels == 1) if s[k] > b.threshold_for("score")][0]
    for which in ("first", "second"):
        print(f"{mode}: {which} SHAP {explain(b, arr.images[i], ['shap'])['shap'].seconds:.2f} s", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("cold", "warm"):
        child(*sys.argv[1:4])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="vae")
    ap.add_argument("--category", default="brick")
    args = ap.parse_args()
    for mode in ("cold", "warm"):
        subprocess.run([sys.executable, __file__, mode, args.detector, args.category], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
