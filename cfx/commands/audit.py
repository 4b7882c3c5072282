"""``python -m cfx audit``: the mask-Jaccard audit of a category (see :mod:`cfx.audit`).

Prints a table of the test anomalies (J* per method, flags) and a summary, or with ``--json`` one
object ``{"category", "images": [{"image", "defect", "score", "anomalous", "methods": {m:
{"optimal_jaccard", "threshold", "flagged"}}}], "summary": {"flagged_fraction",
"mean_optimal_jaccard"}}`` (plus a few more keys); with ``--category all`` one object
``{"categories": {category: ...}}``. The (image, method) units run as tasks on Dask distributed
(a LocalCluster of one process per core, two on a CUDA machine; ``--workers N``; an existing
cluster with ``--scheduler`` or ``$CFX_DASK_SCHEDULER``; ``--workers 0`` in this process).
Every result goes into the results database (:mod:`cfx.resultdb`): an interrupted run (Ctrl-C, a
killed worker) resumes where it stopped. ``--out DIR`` writes each category's JSON and CSV and
the summary table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading

from cfx.atomic import json_default
from cfx.commands.explain import parse_params
from cfx.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The audit's options (beside --data-root and --category)."""
    from cfx.audit import DEFAULT_CUTOFF
    from cfx.cli import add_cluster_args, add_data_args, add_detector_arg

    add_data_args(p, category_all=True)
    add_detector_arg(p)
    add_cluster_args(p)
    p.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default: all)")
    p.add_argument("--target", default="score", choices=["score", "classifier"],
                   help="explain the detector's anomaly score or the classifier's P(anomalous) (default: score)")
    p.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF,
                   help=f"flag detected anomalies whose J* is below this (default {DEFAULT_CUTOFF})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, help="audit at most N anomalies, spread over the defect types")
    p.add_argument("--params", help='per-method parameters as JSON, e.g. \'{"lime": {"num_samples": 300}}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the results database (runs in this process)")
    p.add_argument("--out", help="write audit-<dataset>-<category>-<target>.json/.csv and summary.csv to this folder")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Run the audit; exit 0 (2 on bad input, through cfx.cli)."""
    from cfx.audit import audit_category
    from cfx.audit.distributed import audit_distributed, dask_client
    from cfx.explainers import resolve_methods
    from cfx.cli import runs_locally
    from cfx.models.bundle import dataset_name, load_for_root
    from cfx.resolve import fitted_categories, resolve_root

    if not 0 <= args.cutoff <= 1:
        raise DataError(f"--cutoff must lie in [0, 1], not {args.cutoff}")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be at least 1, not {args.limit}")
    local = runs_locally(args) or args.no_cache
    params = parse_params(args.params)
    if args.out:
        from cfx.atomic import writable_dir

        writable_dir(args.out, "--out")
    root = resolve_root(args.data_root)
    dataset = dataset_name(root)
    cats = fitted_categories(root, args.category, dataset)
    methods = resolve_methods(args.methods)
    stop = threading.Event()
    results = []
    with contextlib.ExitStack() as stack:
        client = None if local else stack.enter_context(dask_client(args.scheduler, args.workers))
        for category in cats:
            bundle = load_for_root(root, category, detector=args.detector)
            bar = stack.enter_context(_Progress(category, not args.quiet and sys.stderr.isatty()))
            kw = dict(target=args.target, cutoff=args.cutoff, params=params, seed=args.seed, limit=args.limit,
                      progress=bar, stop=stop)
            if local:
                results.append(audit_category(bundle, root, category, methods, cache=not args.no_cache, **kw))
            else:
                results.append(audit_distributed(bundle, root, category, methods, client=client, **kw))
            bar.close()
    if args.out:
        from cfx.audit.export import write_run

        for path in write_run(results, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        doc = {"categories": {r.category: r.to_json() for r in results}} if args.category == "all" else results[0].to_json()
        print(json.dumps(doc, indent=2, default=json_default))
        return 0
    for r in results:
        _print_table(r)
    return 0


class _Progress:
    """A tqdm bar on stderr (done / total units, ETA) used as the audit's progress callback."""

    def __init__(self, category: str, show: bool) -> None:
        self.category, self.show, self.bar = category, show, None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.show:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.category, unit="unit", file=sys.stderr, dynamic_ncols=True)
        self.bar.n = done
        self.bar.set_postfix_str(message[:40], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
    print(f"{'method':<10} {'flagged':>8} {'mean J*':>8} {'pixel AUROC':>12} {'explainer/detector at fault':>28}"
          f"   ({s['n_detected']} detected)")
    for m in ms:
        f = s["fault"][m]
        print(f"{m:<10} {_fmt(s['flagged_fraction'][m], '.1%'):>8} {_fmt(s['mean_optimal_jaccard'][m]):>8} "
              f"{_fmt(s['pixel_auroc'][m]):>12} {str(f['explainer']) + ' / ' + str(f['detector']):>28}")
    a = s["agreement"]
    if a["n"] and len(ms) > 1:
        print(f"all methods agree on {a['all_agree']:.0%} of {a['n']} detected anomalies; "
              f"flagged by all: {a['flagged_by_all']}, by any: {a['flagged_by_any']}")
    if r.stopped:
        print("stopped before the end: run again to resume from the cache")
