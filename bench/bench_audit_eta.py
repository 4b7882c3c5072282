"""How good is the audit page's time estimate? (issue 36)

Runs the app's audit job (:class:`cfx.audit.AuditJob`, the local engine, nothing cached) on spread
anomalies of a demo category and, after every (image, method) unit, compares the job's estimate
(:meth:`AuditJob.eta`: each method's median measured cost per image times the units left) with the
time the run then really took. Prints a Markdown table for BENCHMARKS.md: the estimate's error at
10, 25, 50 and 75 % of the run, and when the first estimate and the first results appeared.

Usage:
    python bench/bench_audit_eta.py [--category brick] [--detector patchcore] [--methods recon,gradcam,lime,shap]
        [--limit 12]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfx.audit import AuditJob  # noqa: E402
from cfx.models.bundle import load_bundle  # noqa: E402
from cfx.resolve import resolve_root  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="brick")
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--methods", default="recon,gradcam,lime,shap")
    ap.add_argument("--limit", type=int, default=12)
    a = ap.parse_args()
    bundle = load_bundle("demo", a.category).using(a.detector)
    with tempfile.TemporaryDirectory() as cache:
        job = AuditJob(bundle, resolve_root(None), a.category, engine="local", methods=a.methods, limit=a.limit,
                       cache=cache)
        seen: list[tuple[float, int, int, float | None, int]] = []
        progress = job._progress
        t0 = time.perf_counter()

        def watch(done: int, total: int, message: str) -> None:
            progress(done, total, message)
            seen.append((time.perf_counter() - t0, done, total, job.eta(), len(job.partial().images)))

        job._progress = watch
        job.start().join()
        end = time.perf_counter() - t0
    if job.error:
        raise SystemExit(job.error)
    total = seen[-1][2]
    first_eta = next(t for t, _, _, e, _ in seen if e is not None)
    first_rows = next(t for t, _, _, _, n in seen if n > 0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"{_dt.date.today()}, commit {commit}, {platform.processor() or platform.machine()}, "
          f"`python bench/bench_audit_eta.py --category {a.category} --detector {a.detector} --methods {a.methods} "
          f"--limit {a.limit}`: {total} units in {end:.1f} s; the first estimate after {first_eta:.1f} s, "
          f"the first results on the page after {first_rows:.1f} s.\n")
    print("| share of the run done | estimate of the time left | time it really took | error |")
    print("|---:|---:|---:|---:|")
    for share in (0.1, 0.25, 0.5, 0.75):
        t, done, _, eta, _ = next(r for r in seen if r[1] >= share * total and r[3] is not None)
        real = end - t
        print(f"| {done}/{total} units ({share:.0%}) | {eta:.1f} s | {real:.1f} s | {100 * (eta - real) / real:+.0f} % |")


if __name__ == "__main__":
    main()
