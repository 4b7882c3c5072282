"""Benchmark of the distributed audit (issue 16): one demo category's audit (recon, Grad-CAM, LIME,
SHAP over all its anomalies) in this process, then on a LocalCluster of N worker processes, side
by side in one run, each into a fresh results database; prints both wall times, their ratio and
whether the deterministic methods' J* agree, as Markdown for BENCHMARKS.md. With ``--rounds 2``
each engine audits the category again into another fresh database (the same process, the same
cluster): the second round shows the engines warm (models loaded, shap's functions compiled on
every worker). For each round it also prints the sum of the units' own seconds (as stored in the
database), so that the engine's fixed costs show apart from the work.

Usage:
    python bench/bench_distributed.py [--category brick] [--detector vae] [--workers 2]
        [--methods recon,gradcam,lime,shap] [--limit N] [--rounds 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DETERMINISTIC = ("recon", "gradcam")


def main() -> int:
    from bench.bench_audit import machine
    from cfx.audit import audit_category
    from cfx.audit.distributed import audit_distributed, dask_client
    from cfx.data.demo import ensure_demo
    from cfx.explainers import set_data_root
    from cfx.models.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--category", default="brick")
    ap.add_argument("--detector", default="vae")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default="recon,gradcam,lime,shap")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--rounds", type=int, default=1, help="audits per engine, each into a fresh database")
    ap.add_argument("--json")
    args = ap.parse_args()
    root = ensure_demo()
    b = load_bundle("demo", args.category, detector=args.detector)
    set_data_root(b, root)
    methods = args.methods.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="cfx-bench-dist-"))
    t_single, t_dist, work_single, work_dist = [], [], [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        single = audit_category(b, root, args.category, methods, limit=args.limit, cache=tmp / f"single{r}")
        t_single.append(time.perf_counter() - t0)
        work_single.append(unit_seconds(tmp / f"single{r}"))
        print(f"single process, round {r + 1}: {t_single[-1]:.1f} s (units {work_single[-1]:.1f} s)",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with dask_client(workers=args.workers) as client:
        t_up = time.perf_counter() - t0
        for r in range(args.rounds):
            dist = audit_distributed(b, root, args.category, methods, limit=args.limit, cache=tmp / f"dask{r}",
                                     client=client)
            t_dist.append(time.perf_counter() - t0)
            work_dist.append(unit_seconds(tmp / f"dask{r}"))
            print(f"dask ({args.workers} workers), round {r + 1}: {t_dist[-1]:.1f} s (cluster start {t_up:.1f} s, "
                  f"units {work_dist[-1]:.1f} s)", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
    same = {m: all(x.methods[m].optimal_jaccard == y.methods[m].optimal_jaccard
                   for x, y in zip(single.images, dist.images)) for m in methods if m in DETERMINISTIC}
    mean = {m: (single.mean_optimal_jaccard(m), dist.mean_optimal_jaccard(m)) for m in methods}
    out = {"machine": machine(), "category": args.category, "detector": args.detector, "methods": methods,
           "anomalies": len(single.images), "units": len(single.images) * len(methods), "single_s": t_single[0],
           "dask_s": t_dist[0], "cluster_start_s": t_up, "workers": args.workers, "ratio": t_dist[0] / t_single[0],
           "rounds": {"single_s": t_single, "dask_s": t_dist, "single_unit_s": work_single,
                      "dask_unit_s": work_dist},
           "identical_deterministic": same, "mean_optimal_jaccard": mean}
    print(f"\n{out['machine']}\n")
    print("| engine | round | wall s | units' own s | ratio |\n|---|---|---|---|---|")
    for r in range(args.rounds):
        print(f"| this process | {r + 1} | {t_single[r]:.1f} | {work_single[r]:.1f} | 1.00 |")
        start = f" (start {t_up:.1f} s included)" if r == 0 else ""
        print(f"| LocalCluster, {args.workers} workers{start} | {r + 1} | {t_dist[r]:.1f} | {work_dist[r]:.1f} | "
              f"{t_dist[r] / t_single[r]:.2f} |")
    print(f"\n{out['units']} units ({out['anomalies']} anomalies x {len(methods)} methods); identical J* "
          f"for {', '.join(m for m, v in same.items() if v) or 'none'}; mean J* single/dask: "
          + ", ".join(f"{m} {a:.3f}/{c:.3f}" for m, (a, c) in mean.items() if a is not None and c is not None))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def unit_seconds(db: Path) -> float:
    """The sum of the stored units' own seconds in one run's results database."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db / "results.sqlite")) as con:
        return float(con.execute("SELECT COALESCE(SUM(seconds), 0) FROM results").fetchone()[0])


if __name__ == "__main__":
    sys.exit(main())
