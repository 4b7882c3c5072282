"""Do the inspector's decisions teach the detector? (issue 34) On real parts: a category's
train/good is split at random into a fitting part (``--fit``) and the rest; PatchCore is fitted on
the fitting part alone (a data root of its own, ``--target-fpr``); the lot is the rest of
train/good mixed with every test image (new names; the labels known to the bench only). A
simulated inspector decides the 10 highest-scored good parts of the lot OK; the detector is taught
(``cfx.teaching.teach``, the product's path: review store, results database, model versions)
and the lot inspected again. Prints a Markdown row per category: false alarms on the rest of the
lot (the good parts not decided) and escapes (defects called OK or doubtful) before and after.

Usage:
    python bench/bench_teach.py [--categories bottle screw] [--fit 0.5] [--target-fpr 0.1]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "mvtec-sample"


def run(category: str, fit: float, target_fpr: float, tmp: Path, seed: int = 0) -> dict:
    import numpy as np

    from cfx.data.mvtec import MVTecDataset
    from cfx.lots import inspect_lot
    from cfx.models.bundle import load_for_root
    from cfx.resultdb import ResultDB
    from cfx.review import ReviewStore
    from cfx.teaching import teach
    from cfx.training.patchcore import fit_patchcore
    from cfx.models.identity import dataset_name

    goods = sorted((SAMPLE / category / "train" / "good").glob("*.png"))
    perm = np.random.default_rng(seed).permutation(len(goods))
    n_fit = int(round(fit * len(goods)))
    root = tmp / f"root-{category}"
    (root / category / "train" / "good").mkdir(parents=True)
    for i in sorted(perm[:n_fit]):
        os.symlink(goods[i], root / category / "train" / "good" / goods[i].name)
    lot = tmp / f"lot-{category}"
    lot.mkdir()
    truth = {}
    for i in sorted(perm[n_fit:]):
        name = f"a{i:04d}.png"
        os.symlink(goods[i], lot / name)
        truth[name] = "good"
    for j, p in enumerate(sorted((SAMPLE / category / "test").rglob("*.png"))):
        name = f"b{j:04d}.png"
        os.symlink(p, lot / name)
        truth[name] = p.parent.name
    t0 = time.perf_counter()
    fit_patchcore(root, category, dataset_name(root), target_fpr=target_fpr, log=lambda m: None)
    fit_s = time.perf_counter() - t0
    db = ResultDB(tmp / f"results-{category}.sqlite")
    b = load_for_root(root, category, detector="patchcore")
    r = inspect_lot(b, lot, db)

    def counts(rows, exclude=()):
        fa = sum(x["verdict"] == "NG" for x in rows if truth[x["path"]] == "good" and x["path"] not in exclude)
        esc = sum(x["verdict"] != "NG" for x in rows if truth[x["path"]] != "good")
        return fa, esc

    good_rows = sorted((x for x in r["images"] if truth[x["path"]] == "good"), key=lambda x: -x["score"])
    decided_paths = [x["path"] for x in good_rows[:10]]
    store = ReviewStore(tmp / f"review-{category}.sqlite")
    for x in good_rows[:10]:
        store.record(b.dataset, category, f"{r['lot']}/{x['path']}", r["model"], "OK", reason="simulated inspector",
                     score=x["score"], threshold=x["threshold"], reviewer="bench")
    train = MVTecDataset(root, category, "train", image_size=b.image_size).arrays().images
    t0 = time.perf_counter()
    out = teach(b, train, r, lot, store.latest(b.dataset, category), reviewer="bench")
    teach_s = time.perf_counter() - t0
    r2 = inspect_lot(load_for_root(root, category, detector="patchcore"), lot, db)
    fa0, esc0 = counts(r["images"], decided_paths)
    fa1, esc1 = counts(r2["images"], decided_paths)
    old_thr = [dict(x, verdict="NG" if x["score"] > out["before"]["threshold"] else "OK") for x in r2["images"]]
    fa_bank, esc_bank = counts(old_thr, decided_paths)  # the bank's share: the new scores at the old threshold
    n_defects = sum(v != "good" for v in truth.values())
    return {"category": category, "fit_images": n_fit, "lot": len(truth), "lot_good": len(truth) - n_defects,
            "defects": n_defects, "fa_lot": counts(r["images"])[0], "taught": len(out["parts"]),
            "added": out["added_patches"], "fa_rest_before": fa0, "fa_rest_after": fa1,
            "escapes_before": esc0, "escapes_after": esc1,
            "fa_bank_only": fa_bank, "esc_bank_only": esc_bank, "thr_before": out["before"]["threshold"],
            "thr_after": out["after"]["threshold"], "fpr_after": out["after"]["expected_fpr"]["mean"],
            "tpr_before": (out["before"]["expected_tpr"] or {}).get("mean"),
            "tpr_after": out["after"]["expected_tpr"]["mean"], "fit_s": fit_s, "teach_s": teach_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["bottle", "screw"])
    ap.add_argument("--fit", type=float, default=0.5, help="share of train/good the detector is fitted on")
    ap.add_argument("--target-fpr", type=float, default=0.1)
    a = ap.parse_args()
    if not SAMPLE.is_dir():
        sys.exit("../shared/mvtec-sample is absent")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CFX_MODELS_DIR"] = str(Path(tmp) / "models")
        rows = [run(c, a.fit, a.target_fpr, Path(tmp)) for c in a.categories]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"<!-- {' '.join(sys.argv)}; commit {commit}; {platform.machine()} {os.cpu_count()} cores; "
          f"{_dt.date.today()} -->")
    print("| category | fitted on | lot (good / defects) | false alarms on the lot | taught (patches added) "
          "| false alarms on the rest: before -> after | escapes: before -> after | the new bank at the old threshold: false alarms, escapes | threshold | expected FPR after "
          "| synthetic TPR before -> after | teach s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fall = "" if not r["fa_rest_before"] else f" ({1 - r['fa_rest_after'] / r['fa_rest_before']:.0%} fewer)"
        print(f"| {r['category']} | {r['fit_images']} | {r['lot_good']} / {r['defects']} | {r['fa_lot']} "
              f"| {r['taught']} ({r['added']}) | {r['fa_rest_before']} -> {r['fa_rest_after']}{fall} "
              f"| {r['escapes_before']} -> {r['escapes_after']} | {r['fa_bank_only']}, {r['esc_bank_only']} | {r['thr_before']:.2f} -> {r['thr_after']:.2f} "
              f"| {r['fpr_after']:.3f} | {r['tpr_before']:.2f} -> {r['tpr_after']:.2f} | {r['teach_s']:.0f} |")


if __name__ == "__main__":
    main()
