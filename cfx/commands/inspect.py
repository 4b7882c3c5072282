"""``python -m cfx inspect``: score every test image of a category (or of every fitted category)
and store its verdict, score and anomaly map in the results database (:mod:`cfx.inspection`);
with ``--lot DIR``, every image of a folder of new, unlabeled parts against one fitted category
(:mod:`cfx.lots`), printed as the inspector's queue: NG first, then the doubtful parts (in this
process, or on Dask with ``--workers N`` or a scheduler: a big lot).

The batches run as Dask tasks (by default a LocalCluster of one process per core, two on a CUDA
machine; ``--workers``; ``--scheduler`` or ``$CFX_DASK_SCHEDULER`` for a running cluster;
``--workers 0`` in this process). Prints one line per category (images, called anomalous, FPR on
good parts, TPR on defects), or with ``--json`` ``{"categories": {category: {"images": [...],
"summary": {...}}}}``; ``--out DIR`` writes ``inspect-<dataset>-<category>.csv`` and the maps as
``.npz``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

from cfx.atomic import json_default


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cfx.cli import add_cluster_args, add_data_args, add_detector_arg

    add_data_args(p, category_all=True)
    add_detector_arg(p)
    add_cluster_args(p)
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--lot", metavar="DIR",
                   help="a folder of new part images (any names, nested folders, no labels) to inspect against "
                        "--category's models instead of a split")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="with --lot: keep watching the folder and inspect images as they arrive, checking every "
                        "SECONDS (Ctrl-C ends it)")
    p.add_argument("--report", metavar="FORMATS",
                   help="with --lot and --out: the lot report as pdf,html,csv,json (any of them, comma-separated), "
                        "with the review queue's decisions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="write inspect-<dataset>-<category>.csv and -maps.npz to this folder")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from cfx.cluster import dask_client
    from cfx.commands.audit import _Progress
    from cfx.inspection import inspect_category
    from cfx.cli import runs_locally
    from cfx.models.bundle import dataset_name, load_for_root
    from cfx.resolve import fitted_categories, resolve_root
    from cfx.resultdb import open_db

    local = runs_locally(args)
    if args.lot:
        return _run_lot(args)
    if args.report:
        from cfx.errors import DataError

        raise DataError("--report is the lot report: use it with --lot DIR")
    if args.out:
        from cfx.atomic import writable_dir

        writable_dir(args.out, "--out")
    root = resolve_root(args.data_root)
    dataset = dataset_name(root)
    cats = fitted_categories(root, args.category, dataset, " --detector patchcore")
    db = open_db()
    out = {}
    with contextlib.ExitStack() as stack:
        client = None if local else stack.enter_context(dask_client(args.scheduler, args.workers))
        for category in cats:
            bundle = load_for_root(root, category, detector=args.detector)
            with _Progress(category, not args.quiet and sys.stderr.isatty()) as bar:
                out[category] = inspect_category(bundle, root, category, db, args.split, client, bar)
            if args.out:
                _write(args.out, dataset, category, out[category], db, bundle.key(), args.split)
    if args.json:
        print(json.dumps({"categories": out}, indent=2, default=json_default))
        return 0
    for c, r in out.items():
        s = r["summary"]
        fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        print(f"{dataset}/{c}: {s['images']} images, {s['anomalous']} called anomalous; good parts called anomalous "
              f"{fmt(s['fpr_good'])}, defects found {fmt(s['tpr_defect'])} (model {r['model']}, {r['seconds']:.1f} s)")
        for msg in r["skipped"]:
            print(f"{dataset}/{c}: not read: {msg}", file=sys.stderr)
    return 0


def _write(folder: str, dataset: str, category: str, result: dict, db, model: str, split: str) -> None:
    import numpy as np

    from cfx.atomic import write_bytes
    from cfx.audit.export import csv_text
    from cfx.inspection import COLUMNS
    from cfx.reports.encode import safe_name

    stem = safe_name(f"inspect-{dataset}-{category}")
    path = write_bytes(os.path.join(folder, f"{stem}.csv"), csv_text(result["images"], COLUMNS).encode())
    wanted = {(r["path"], r["image_sha"]) for r in result["images"]}
    maps = {r["path"]: r["map"] for r in db.images(model, with_maps=True, split=split, category=category)
            if (r["path"], r["image_sha"]) in wanted}
    buf = io.BytesIO()
    np.savez_compressed(buf, **{safe_name(k): v for k, v in maps.items() if v is not None})
    write_bytes(os.path.join(folder, f"{stem}-maps.npz"), buf.getvalue())
    print(f"wrote {path} and {stem}-maps.npz", file=sys.stderr)


def _run_lot(args: argparse.Namespace) -> int:
    from cfx.errors import DataError
    from cfx.lots import inspect_lot, lot_files
    from cfx.models.bundle import load_for_root
    from cfx.resolve import categories_for, resolve_root
    from cfx.resultdb import open_db

    from cfx.commands.audit import _Progress

    if args.category in (None, "all"):
        raise DataError("--lot needs the category whose models inspect it: --category C")
    if args.out:
        from cfx.atomic import writable_dir

        writable_dir(args.out, "--out")
    if args.report and not args.out:
        raise DataError("--report needs --out DIR (where the lot report is written)")
    if args.report:
        from cfx.reports.lot import LOT_FORMATS

        formats = [f.strip() for f in args.report.split(",") if f.strip()]
        bad = [f for f in formats if f not in LOT_FORMATS]
        if bad or not formats:
            raise DataError(f"unknown report format(s) {', '.join(bad) or '(none)'}; choose from {', '.join(LOT_FORMATS)}")
    if args.watch is not None and not args.watch > 0:
        raise DataError(f"--watch takes the seconds between checks (more than 0), not {args.watch}")
    if args.watch is None:
        lot_files(args.lot)  # a wrong folder is said before any model loads (a watched one may start empty)
    elif not os.path.isdir(args.lot):
        raise DataError(f"{args.lot} is not a folder of part images")
    root = resolve_root(args.data_root)
    (category,) = categories_for(root, args.category)
    bundle = load_for_root(root, category, detector=args.detector)
    if args.watch is not None:
        return _watch(args, bundle)
    with contextlib.ExitStack() as stack:  # a lot runs in this process unless --workers N or a scheduler is named
        from cfx.cli import runs_locally

        dask = not runs_locally(args) and (args.workers or args.scheduler or os.environ.get("CFX_DASK_SCHEDULER"))
        if dask:
            from cfx.cluster import dask_client

            client = stack.enter_context(dask_client(args.scheduler, args.workers))
        bar = stack.enter_context(_Progress(f"lot {args.lot}", not args.quiet and sys.stderr.isatty()))
        r = inspect_lot(bundle, args.lot, open_db(), bar, client=client if dask else None)
    if args.out:
        from cfx.atomic import write_bytes
        from cfx.audit.export import csv_text
        from cfx.lots import COLUMNS
        from cfx.reports.encode import safe_name

        path = write_bytes(os.path.join(args.out, f"{safe_name(r['lot'].replace(':', '-'))}.csv"),
                           csv_text(r["images"], COLUMNS).encode())
        print(f"wrote {path}", file=sys.stderr)
    if args.report:
        from cfx.reports.lot import LOT_FORMATS, lot_report
        from cfx.review import ReviewStore

        rep = lot_report(bundle, r, ReviewStore().latest(bundle.dataset, category))
        for fmt in formats:
            path = write_bytes(os.path.join(args.out, f"{safe_name(r['lot'].replace(':', '-'))}-report.{fmt}"),
                               LOT_FORMATS[fmt](rep))
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=2, default=json_default))
        return 0
    s = r["summary"]
    print(f"{r['folder']}: {s['images']} parts against {bundle.dataset}/{category} ({bundle.detector.label}): "
          f"{s['NG']} NG, {s['doubtful']} doubtful, {s['OK']} OK ({r['seconds']:.1f} s)")
    for row in r["images"]:
        if row["verdict"] == "OK":
            break
        print(f"  {row['verdict']:8s} {row['score']:8.3f} (threshold {row['threshold']:.3f})  {row['path']}")
    for msg in r["skipped"]:
        print(f"not read: {msg}", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace, bundle) -> int:
    """``--lot DIR --watch S``: one line per part as it arrives, until Ctrl-C."""
    import threading

    from cfx.lots import watch_lot
    from cfx.resultdb import open_db

    def show(rows) -> None:
        for row in rows:
            print(f"{row['verdict']:8s} {row['score']:8.3f} (threshold {row['threshold']:.3f})  {row['path']}", flush=True)

    print(f"watching {args.lot} for {bundle.dataset}/{bundle.category} every {args.watch:g} s (Ctrl-C ends it)",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    try:
        watch_lot(bundle, args.lot, open_db(), show, stop, interval=args.watch)
    except KeyboardInterrupt:
        stop.set()
    return 0
