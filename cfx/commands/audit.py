"""``python -m cfx audit``: the mask-Jaccard audit of a category (see :mod:`cfx.audit`).

Prints a table of the test anomalies (J* per method, flags) and a summary, or with ``--json`` one
object ``{"category", "images": [{"image", "defect", "score", "anomalous", "methods": {m:
{"optimal_jaccard", "threshold", "flagged"}}}], "summary": {"flagged_fraction",
"mean_optimal_jaccard"}}`` (plus a few more keys). Results are cached on disk: an interrupted
run (Ctrl-C) resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading

from cfx.atomic import json_default
from cfx.commands.explain import parse_params
from cfx.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The audit's options (beside --data-root and --category)."""
    from cfx.audit import DEFAULT_CUTOFF
    from cfx.cli import add_data_args, add_detector_arg

    add_data_args(p)
    add_detector_arg(p)
    p.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default: all)")
    p.add_argument("--target", default="score", choices=["score", "classifier"],
                   help="explain the detector's anomaly score or the classifier's P(anomalous) (default: score)")
    p.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF,
                   help=f"flag detected anomalies whose J* is below this (default {DEFAULT_CUTOFF})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, help="audit at most N anomalies, spread over the defect types")
    p.add_argument("--params", help='per-method parameters as JSON, e.g. \'{"lime": {"num_samples": 300}}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the disk cache")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Run the audit; exit 0 (2 on bad input, through cfx.cli)."""
    from cfx.audit import audit_category
    from cfx.explainers import resolve_methods
    from cfx.models.bundle import dataset_name, load_bundle
    from cfx.resolve import resolve_category, resolve_root

    if not 0 <= args.cutoff <= 1:
        raise DataError(f"--cutoff must lie in [0, 1], not {args.cutoff}")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be at least 1, not {args.limit}")
    params = parse_params(args.params)
    root = resolve_root(args.data_root)
    category = resolve_category(root, args.category)
    methods = resolve_methods(args.methods)
    bundle = load_bundle(dataset_name(root), category, detector=args.detector)
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int, message: str) -> None:
        if show:
            print(f"\r[{done}/{total}] {message[:60]:<60}", end="", file=sys.stderr, flush=True)

    stop = threading.Event()
    result = audit_category(bundle, root, category, methods, target=args.target, cutoff=args.cutoff,
                            params=params, seed=args.seed, limit=args.limit, progress=progress, stop=stop,
                            cache=not args.no_cache)
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=json_default))
        return 0
    _print_table(result)
    return 0


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _print_table(r) -> None:
    ms = r.methods
    print(f"{r.dataset}/{r.category}: {len(r.images)} anomalies with a mask (of {r.total}), target {r.target}, "
          f"cutoff {r.cutoff}, model {r.model}")
    head = f"{'image':<28} {'score':>8} {'det':>3} " + " ".join(f"{m:>9}" for m in ms) + "  flagged by"
    print(head)
    for row in r.images:
        cells = []
        for m in ms:
            mr = row.methods[m]
            value = "err" if mr.status == "error" else _fmt(mr.optimal_jaccard)
            cells.append(f"{value:>8}{'*' if mr.flagged else ' '}")
        print(f"{row.image[:28]:<28} {row.score:>8.3f} {'yes' if row.anomalous else 'no':>3} " + " ".join(cells)
              + "  " + ", ".join(row.flagged_by))
    s = r.summary()
    print()
    print(f"{'method':<10} {'flagged':>8} {'mean J*':>8} {'pixel AUROC':>12}   ({s['n_detected']} detected)")
    for m in ms:
        print(f"{m:<10} {_fmt(s['flagged_fraction'][m], '.1%'):>8} {_fmt(s['mean_optimal_jaccard'][m]):>8} "
              f"{_fmt(s['pixel_auroc'][m]):>12}")
    a = s["agreement"]
    if a["n"] and len(ms) > 1:
        print(f"all methods agree on {a['all_agree']:.0%} of {a['n']} detected anomalies; "
              f"flagged by all: {a['flagged_by_all']}, by any: {a['flagged_by_any']}")
    if r.stopped:
        print("stopped before the end: run again to resume from the cache")
