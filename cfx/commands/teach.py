"""``python -m cfx teach``: the detector learns from the inspector's decisions on a lot
(:mod:`cfx.teaching`), and its versions are listed and restored (:mod:`cfx.models.versions`).

``--lot DIR`` teaches the category's PatchCore the lot's overruled false alarms (called NG,
decided OK in the review queue) as a new version, prints the expected rates before and after and
inspects the lot again with the new version; ``--versions`` lists the versions; ``--restore N``
puts version N back in use.
"""
from __future__ import annotations

import argparse
import json
import sys

from cfx.atomic import json_default


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cfx.cli import add_data_args, add_detector_arg

    add_data_args(p)
    add_detector_arg(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--lot", metavar="DIR", help="teach the lot's parts called NG and decided OK")
    what.add_argument("--versions", action="store_true", help="list the detector's versions")
    what.add_argument("--restore", type=int, metavar="N", help="put version N of the detector back in use")
    p.add_argument("--reviewer", default="", help="who teaches it (recorded in the model card)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _rate(r: dict, key: str) -> str:
    v = (r.get(key) or {}).get("mean")
    return "-" if v is None else f"{v:.3f}"


def run(args: argparse.Namespace) -> int:
    from cfx.errors import DataError
    from cfx.models.bundle import category_dir
    from cfx.models.card import read_card
    from cfx.models.identity import dataset_name
    from cfx.models.versions import restore, versions
    from cfx.resolve import categories_for, resolve_root

    root = resolve_root(args.data_root)
    if args.category in (None, "all"):
        raise DataError("teach needs one category: --category C")
    (category,) = categories_for(root, args.category)
    dataset = dataset_name(root)
    detector = args.detector or "patchcore"
    d = category_dir(dataset, category)
    if args.versions:
        rows = versions(d, detector, read_card(dataset, category))
        if args.json:
            print(json.dumps({"versions": rows}, indent=2, default=json_default))
            return 0
        for v in rows:
            print(f"{'*' if v['in_use'] else ' '} {v['version']:3d}  threshold {v['threshold']:.3f}  {v['made']}"
                  f"{' by ' + v['by'] if v['by'] else ''}  {v['at']}")
        return 0
    if args.restore is not None:
        card = restore(d, detector, args.restore)
        info = card["detectors"][detector]
        if args.json:
            print(json.dumps({"version": args.restore, "threshold": info.get("threshold")}, indent=2))
        else:
            print(f"{dataset}/{category}: {detector} version {args.restore} in use (threshold {info['threshold']:.3f})")
        return 0
    return _teach(args, root, category)


def _teach(args: argparse.Namespace, root, category: str) -> int:
    from cfx.data.mvtec import MVTecDataset
    from cfx.lots import inspect_lot, lot_files
    from cfx.models.bundle import load_for_root
    from cfx.resultdb import open_db
    from cfx.review import ReviewStore
    from cfx.teaching import teach

    lot_files(args.lot)  # a wrong folder is said before any model loads
    bundle = load_for_root(root, category, detector=args.detector)
    db = open_db()
    lot = inspect_lot(bundle, args.lot, db)
    decided = ReviewStore().latest(bundle.dataset, category)
    train = MVTecDataset(root, category, "train", image_size=bundle.image_size, channels=bundle.channels).arrays()
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    out = teach(bundle, train.images, lot, args.lot, decided, reviewer=args.reviewer, log=log)
    if "version" in out:  # the lot under the new version
        again = inspect_lot(load_for_root(root, category, detector=args.detector), args.lot, db)
        out["lot_before"], out["lot_after"] = lot["summary"], again["summary"]
    if args.json:
        print(json.dumps(out, indent=2, default=json_default))
        return 0
    if "marked" in out:
        print(f"{bundle.dataset}/{category}: the {out['detector']} detector is marked for retraining with "
              f"{len(out['marked'])} part(s); PatchCore learns at once")
        return 0
    b, a = out["before"], out["after"]
    print(f"{bundle.dataset}/{category}: PatchCore version {out['version']} (from {out['previous']}) taught "
          f"{len(out['parts'])} part(s), {out['added_patches']} patches added ({out['seconds']:.0f} s)")
    print(f"{'':32s}{'before':>10s}{'after':>10s}")
    for label, key in (("threshold", None), ("expected false-alarm rate", "expected_fpr"),
                       ("expected detection (synthetic)", "expected_tpr")):
        bv, av = (f"{b['threshold']:.3f}", f"{a['threshold']:.3f}") if key is None else (_rate(b, key), _rate(a, key))
        print(f"{label:32s}{bv:>10s}{av:>10s}")
    print(f"{'false alarms among decided OK':32s}{b['false_alarms']:>6d}/{b['decided_ok']:<3d}"
          f"{a['false_alarms']:>6d}/{a['decided_ok']:<3d}")
    print(f"{'escapes among decided NG':32s}{b['escapes']:>6d}/{b['decided_ng']:<3d}{a['escapes']:>6d}/{a['decided_ng']:<3d}")
    print(f"{'lot called NG':32s}{out['lot_before']['NG']:>10d}{out['lot_after']['NG']:>10d}")
    for p in a.get("escaped_parts", []):
        print(f"warning: {p} was decided NG and the new version calls it OK", file=sys.stderr)
    return 0
