"""The detector on every shared real category at the default settings: fit, then evaluate, by the
command line of one or two checkouts side by side (before / after).

    python bench/bench_real.py --trees /path/to/before,. --data-root ../shared/mvtec-sample

Each tree fits PatchCore into its own temporary models folder (``cfx train --detector patchcore``),
then ``cfx evaluate --json``; the table has image and pixel AUROC, FPR on test/good and TPR on
defects at the stored threshold, the card's expected FPR/TPR where it has them, and the fit time
(the card's ``fit_seconds``). Categories without train/good images are listed and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(tree: Path, models: Path, args: list[str]) -> str:
    env = {**os.environ, "CFX_MODELS_DIR": str(models)}
    r = subprocess.run([sys.executable, "-m", "cfx", *args], cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: cfx {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", default=".", help="checkouts to compare, separated by commas")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"))
    p.add_argument("--categories", default="", help="comma-separated (default: every one with train/good images)")
    p.add_argument("--extra", default="", help="more arguments of cfx train, e.g. '--image-size 256'")
    p.add_argument("--json", help="write the rows to this file")
    a = p.parse_args()
    root = Path(a.data_root).resolve()
    cats = [c for c in a.categories.split(",") if c] or sorted(
        d.name for d in root.iterdir() if (d / "train" / "good").is_dir() and any((d / "train" / "good").iterdir()))
    rows = []
    for cat in cats:
        for tree in [Path(t).resolve() for t in a.trees.split(",")]:
            models = Path(tempfile.mkdtemp(prefix="cfx-bench-real-"))
            run(tree, models, ["train", "--data-root", str(root), "--category", cat, "--detector", "patchcore",
                               "--quiet", *a.extra.split()])
            ev = json.loads(run(tree, models, ["evaluate", "--data-root", str(root), "--category", cat, "--json"]))
            (card_path,) = models.glob(f"*/{cat}/card.json")
            info = json.loads(card_path.read_text())["detectors"]["patchcore"]
            row = {"category": cat, "tree": tree.name, "image_auroc": ev["image_auroc"],
                   "pixel_auroc": ev["pixel_auroc"], "fpr_good": ev["fpr_good"], "tpr_defect": ev["tpr_defect"],
                   "expected_fpr": (info.get("expected_fpr") or {}).get("mean"),
                   "expected_fpr_95": (info.get("expected_fpr") or {}).get("upper_95"),
                   "expected_tpr": (info.get("expected_tpr") or {}).get("mean"),
                   "threshold_normals": (info.get("calibration") or {}).get("normals", info.get("heldout_normals")),
                   "fit_s": info["fit_seconds"], "n_test": ev["n_test"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n| category | tree | image AUROC | pixel AUROC | FPR test/good | TPR defects | expected FPR (95%) | "
          "expected TPR | normals | fit s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['category']} | {r['tree']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | {f(r['fpr_good'])} | "
              f"{f(r['tpr_defect'])} | {f(r['expected_fpr'])} ({f(r['expected_fpr_95'])}) | {f(r['expected_tpr'])} | "
              f"{r['threshold_normals']} | {r['fit_s']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
