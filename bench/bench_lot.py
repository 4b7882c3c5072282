"""How fast is a lot inspected? (issue 34): ``inspect_lot`` on N part images (copies of a demo
category's test images under new names in nested folders, 256 px files read at the models' 128 px),
PatchCore by default, a fresh results database; then the same lot again (everything stored: read
back, nothing scored). Prints a Markdown table row per run for BENCHMARKS.md.

Usage:
    python bench/bench_lot.py [--n 1000] [--category brick] [--detector patchcore] [--repeat 3]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfx.lots import inspect_lot  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402
from cfx.resolve import resolve_root  # noqa: E402
from cfx.resultdb import ResultDB  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--category", default="brick")
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    bundle = load_bundle("demo", a.category).using(a.detector)
    src = sorted((resolve_root(None) / a.category / "test").rglob("*.png"))
    first, again = [], []
    with tempfile.TemporaryDirectory() as tmp:
        lot = Path(tmp) / "lot"
        for i in range(a.n):
            dest = lot / f"station-{i % 4}" / f"part {i:05d}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src[i % len(src)], dest)
        for k in range(a.repeat):
            db = ResultDB(Path(tmp) / f"r{k}.sqlite")
            r = inspect_lot(bundle, lot, db)
            first.append(r["seconds"])
            again.append(inspect_lot(bundle, lot, db)["seconds"])
        s = r["summary"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"{_dt.date.today()}, commit {commit}, {platform.processor() or platform.machine()} ({a.repeat} runs, median), "
          f"`python bench/bench_lot.py --n {a.n} --category {a.category} --detector {a.detector}`\n")
    print("| lot | detector | first inspection | per part | again (all stored) | NG / doubtful / OK |")
    print("|---|---|---:|---:|---:|---|")
    med = statistics.median(first)
    print(f"| {a.n} parts ({a.category} copies) | {bundle.detector.label} | {med:.1f} s | {1000 * med / a.n:.1f} ms | "
          f"{statistics.median(again):.1f} s | {s['NG']} / {s['doubtful']} / {s['OK']} |")


if __name__ == "__main__":
    main()
