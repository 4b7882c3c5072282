"""Benchmark of the mask-Jaccard audit (issue 6): per category, target and method, the share of
detected anomalies flagged "detected for the wrong reason" (J* < cutoff), mean J*, pixel AUROC,
and the seed study's figure (detected anomalies with J* < 0.2), printed as Markdown tables for
BENCHMARKS.md.

Runs on every demo category with a model and on ../shared/mvtec-sample (bottle, screw, grid: the
anomalies that have masks) where that folder and its models exist; anything missing is skipped
with a line saying why. Results are cached on disk like the app's (a stopped run resumes);
``--no-cache`` recomputes everything (then the seconds column is this run's).

Usage:
    python bench/bench_audit.py [--methods all|m1,m2] [--targets score,classifier] [--limit N]
        [--categories brick,shortcut] [--no-cache] [--cutoff 0.1] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfx import config  # noqa: E402
from cfx.audit import DEFAULT_CUTOFF, audit_category  # noqa: E402
from cfx.explainers import resolve_methods  # noqa: E402
from cfx.data.mvtec import list_categories  # noqa: E402
from cfx.models.bundle import load_bundle, model_exists  # noqa: E402

SHARED = ROOT.parent / "shared" / "mvtec-sample"
SHARED_CATEGORIES = ("bottle", "screw", "grid")
#: Rashid et al.: detected anomalies with J* < 0.2 (of the detected ones)
SEED_STUDY = {("hazelnut", "lime"): (16, 62), ("hazelnut", "shap"): (7, 62),
              ("screw", "lime"): (47, 97), ("screw", "shap"): (16, 97)}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{_dt.date.today().isoformat()}, {platform.node() or 'host'}: {cpu}, "
            f"{torch.get_num_threads()} torch threads, {config.device_label()}, torch {torch.__version__}")


def _f(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def run(dataset: str, root: Path, category: str, methods, targets, args, rows, failures) -> None:
    if not model_exists(dataset, category):
        print(f"- skipped {dataset}/{category}: no trained model in {config.models_dir() / dataset / category}",
              flush=True)
        return
    bundle = load_bundle(dataset, category)
    for target in targets:
        t0 = time.perf_counter()
        last = [t0]

        def progress(done, total, msg):
            if time.perf_counter() - last[0] > 20:
                last[0] = time.perf_counter()
                print(f"  ... {dataset}/{category} {target}: {done}/{total}", file=sys.stderr, flush=True)

        r = audit_category(bundle, root, category, methods, target=target, cutoff=args.cutoff, limit=args.limit,
                           progress=progress, cache=not args.no_cache)
        wall = time.perf_counter() - t0
        s = r.summary()
        for m in r.methods:
            below, det = r.count_below(m, 0.2)
            secs = [x.methods[m].seconds for x in r.images if x.methods[m].status != "pending"]
            rows.append({
                "dataset": dataset, "category": category, "target": target, "method": m,
                "images": len(r.images), "total": r.total, "detected": r.n_detected,
                "flagged_fraction": s["flagged_fraction"][m], "n_flagged": s["n_flagged"][m],
                "n_evaluated": s["n_evaluated"][m], "mean_optimal_jaccard": s["mean_optimal_jaccard"][m],
                "mean_optimal_jaccard_detected": s["mean_optimal_jaccard_detected"][m],
                "pixel_auroc": s["pixel_auroc"][m], "below_0.2": below, "detected_evaluated": det,
                "errors": s["n_errors"][m], "median_seconds": float(np.median(secs)) if secs else None,
                "agreement": s["agreement"]["all_agree"],
            })
            if s["n_errors"][m]:
                err = next(x.methods[m].error for x in r.images if x.methods[m].status == "error")
                failures.append(f"{dataset}/{category} {target} {m}: {s['n_errors'][m]} errors, e.g. {err}")
        print(f"  {dataset}/{category} target {target}: {len(r.images)} anomalies, {wall:.1f} s", file=sys.stderr,
              flush=True)


def markdown(rows, cutoff: float) -> str:
    out = [f"| dataset/category | target | method | anomalies (detected) | flagged (J* < {cutoff}) | mean J* | "
           "mean J* detected | pixel AUROC | detected with J* < 0.2 | median s/image |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ff = r["flagged_fraction"]
        out.append(
            f"| {r['dataset']}/{r['category']} | {r['target']} | {r['method']} | {r['images']} ({r['detected']}) | "
            f"{_f(ff, '.0%')} ({r['n_flagged']}/{r['n_evaluated']}) | {_f(r['mean_optimal_jaccard'])} | "
            f"{_f(r['mean_optimal_jaccard_detected'])} | {_f(r['pixel_auroc'])} | "
            f"{r['below_0.2']}/{r['detected_evaluated']} | {_f(r['median_seconds'], '.2f')} |")
    return "\n".join(out)


def seed_table(rows) -> str:
    out = ["| study | category | method | detected anomalies with J* < 0.2 |", "|---|---|---|---|"]
    for (cat, m), (k, n) in SEED_STUDY.items():
        out.append(f"| Rashid et al. (VAE-GAN, score) | {cat} | {m.upper()} | {k}/{n} ({k / n:.0%}) |")
    for r in rows:
        if r["method"] in ("lime", "shap") and r["dataset"] != config.DEMO_NAME:
            k, n = r["below_0.2"], r["detected_evaluated"]
            out.append(f"| cfx ({r['target']}) | {r['category']} | {r['method'].upper()} | {k}/{n}"
                       f"{f' ({k / n:.0%})' if n else ''} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all")
    p.add_argument("--targets", default="score,classifier")
    p.add_argument("--categories", help="only these (demo or shared) categories")
    p.add_argument("--limit", type=int, help="at most N anomalies per category")
    p.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--no-shared", action="store_true", help="skip ../shared/mvtec-sample")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    methods = resolve_methods(args.methods)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    only = set(args.categories.split(",")) if args.categories else None
    print(f"Mask-Jaccard audit benchmark — {machine()}")
    print(f"methods {', '.join(methods)}; cutoff {args.cutoff}; "
          f"{'all anomalies with a mask' if args.limit is None else f'at most {args.limit} anomalies per category'}; "
          f"models {config.models_dir()}\n")
    rows, failures = [], []
    from cfx.data.demo import ensure_demo

    demo = ensure_demo()
    for cat in list_categories(demo):
        if only is None or cat in only:
            run(config.DEMO_NAME, demo, cat, methods, targets, args, rows, failures)
    if args.no_shared:
        pass
    elif not (SHARED / "bottle").is_dir():
        print(f"- skipped ../shared/mvtec-sample: {SHARED} is absent")
    else:
        for cat in SHARED_CATEGORIES:
            if only is None or cat in only:
                run(SHARED.name, SHARED, cat, methods, targets, args, rows, failures)
    print()
    print(markdown(rows, args.cutoff))
    print()
    print(seed_table(rows))
    for f in failures:
        print(f"- {f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
