"""PatchCore's out-of-fold calibration against new good parts, and what the fit costs.

    python bench/bench_calibration.py --category bottle

One process: the category's train/good at the default size, fitted as shipped (each fold scored
against a bank searched without it); the test split against the final bank. Prints the raw
scores' quantiles of both, the threshold at 1% false alarms, the test split's FPR and TPR there,
and the fit's seconds with and without the fold banks.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cfx.data.mvtec import MVTecDataset
from cfx.detectors import PatchCore, threshold_at_fpr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--target-fpr", type=float, default=0.01)
    a = p.parse_args()
    torch.manual_seed(0)
    train = MVTecDataset(a.data_root, a.category, "train").arrays()
    test = MVTecDataset(a.data_root, a.category, "test", channels=3 if train.images.shape[1] == 3 else 1).arrays()
    x = torch.from_numpy(train.images)
    t0 = time.perf_counter()
    plain = PatchCore()  # what a fit without fold banks costs: the features and the final bank
    with torch.no_grad():
        f = torch.cat([plain.features(x[i:i + 16]).permute(0, 2, 3, 1).reshape(-1, 152) for i in range(0, len(x), 16)])
    plain._coreset(f, 0)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det = PatchCore()
    oof = det.fit(x).numpy()
    fit_s = time.perf_counter() - t0
    with torch.no_grad():
        test_raw = torch.cat([det.raw(torch.from_numpy(test.images[i:i + 16]))[1]
                              for i in range(0, len(test.images), 16)]).numpy()
    good = test.labels == 0
    q = [0.5, 0.9, 0.99, 1.0]
    thr = threshold_at_fpr(oof, a.target_fpr)["threshold"]
    print(f"{a.category}: {len(x)} train/good, {good.sum()} test/good, {(~good).sum()} defects; fit with "
          f"{det.fold_of.max() + 1} fold banks {fit_s:.1f} s, without them {plain_s:.1f} s")
    print("| scores | raw quantiles 50/90/99/100% | threshold at 1% (raw) | FPR test/good | TPR defects |")
    print("|---|---|---:|---:|---:|")
    print(f"| train/good, out of fold | {' / '.join(f'{v:.3f}' for v in np.quantile(oof, q))} | {thr:.3f} | "
          f"{(test_raw[good] > thr).mean():.3f} | {(test_raw[~good] > thr).mean():.3f} |")
    print(f"| test/good, final bank | {' / '.join(f'{v:.3f}' for v in np.quantile(test_raw[good], q))} | | | |")


if __name__ == "__main__":
    main()
