"""``python -m cfx explain``: explain one image with one or all methods.

Writes PNGs under ``--out`` (``original.png``; per method ``<method>_heatmap.png``,
``<method>_cf<k>.png`` and ``<method>_cf<k>_diff.png``; the report files) and, with ``--json``,
prints one object::

    {"image": ..., "detector": {"score", "threshold", "anomalous", ...},
     "methods": {name: {"seconds", "heatmap": path or null,
                        "counterfactuals": [{"path", "score_after", "valid", "l1", "edit_area", "locality", "realism", ...}],
                        "error": null or one line, ...}}, ...}

Without ``--image`` it takes the first defective test image of the category. A method that fails
reports its error in its own entry and the others still run (exit 0; 1 when every method failed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cfx.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options (beside --data-root and --category)."""
    from cfx.cli import add_data_args, add_detector_arg
    from cfx.detectors import TARGETS

    add_data_args(p)
    add_detector_arg(p)
    p.add_argument("--image", help="a test image's index or <defect>/<file> name, or an image file "
                                   "(default: the first defective test image)")
    p.add_argument("--method", default="all",
                   help="a registered method (recon, gradcam, lime, shap, clear, dice, gradient, ...), several "
                        "separated by commas, or all (default: all, in display order)")
    p.add_argument("--target", default="score", choices=list(TARGETS),
                   help="explain the detector's anomaly score (or one of its parts) or the classifier's "
                        "P(anomalous) (default: score)")
    p.add_argument("--out", help="output folder (default: out/explain/<category>/<image>)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", help='per-method parameters as JSON, e.g. \'{"lime": {"num_samples": 300}}\'')
    p.add_argument("--report", default="png,json",
                   help="report files to write besides the PNGs: png,json,pdf,html or none (default: png,json)")


def resolve_methods(text: str) -> list[str]:
    """``all`` -> every registered method (display order); else the named ones, checked."""
    from cfx.explainers import resolve_methods as resolve

    return resolve(text.strip())


def parse_params(text: str | None) -> dict:
    """``--params``: JSON mapping method names to parameter objects (DataError otherwise)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DataError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise DataError('--params must map method names to objects, e.g. {"lime": {"num_samples": 300}}')
    return value


def _formats(text: str) -> tuple[str, ...]:
    from cfx.reports import FORMATS

    if text.strip() in ("", "none"):
        return ()
    fm = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    bad = [f for f in fm if f not in FORMATS]
    if bad:
        raise DataError(f"unknown report format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)} or none")
    return fm


def run(args: argparse.Namespace) -> int:
    """Explain the image; print the JSON (``--json``) or a short table. Exit 0 (1: every method failed)."""
    from cfx.atomic import writable_dir
    from cfx.explainers import REGISTRY, explain, set_data_root
    from cfx.reports import Report, export_explanations, safe_name
    from cfx.models.bundle import load_for_root
    from cfx.resolve import resolve_category, resolve_root, select_image

    methods = resolve_methods(args.method)
    params = parse_params(args.params)
    unknown = set(params) - set(methods)
    if unknown:
        raise DataError(f"--params names method(s) not being run: {', '.join(sorted(unknown))}")
    formats = _formats(args.report)
    root = resolve_root(args.data_root)
    category = resolve_category(root, args.category)
    bundle = load_for_root(root, category, detector=args.detector)
    set_data_root(bundle, root)
    sel = select_image(root, category, args.image, bundle.channels, bundle.image_size)
    out = writable_dir(args.out if args.out else Path("out") / "explain" / category /
                       safe_name(sel.name.replace("/", "_")), "--out")
    results = explain(bundle, sel.image, methods, target=args.target, seed=args.seed, params=params, mask=sel.mask)
    report = Report.from_bundle(bundle, sel.image, sel.name, results, mask=sel.mask, target=args.target,
                                params={"seed": args.seed}, with_detector_maps=False)
    doc = export_explanations(report, out, formats)
    doc["out"] = str(out)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        det = doc["detector"]
        print(f"{doc['image']}: score {det['score']:.3f} (threshold {det['threshold']:.3f}) -> "
              f"{'ANOMALOUS' if det['anomalous'] else 'normal'}; target {args.target}; files in {out}")
        for name, m in doc["methods"].items():
            if m.get("error"):
                print(f"  {name:<9} FAILED {m['error']}")
                continue
            cfs = m["counterfactuals"]
            what = f"heatmap {Path(m['heatmap']).name}" if m["heatmap"] else ""
            if cfs:
                c = cfs[0]
                what += (f"{len(cfs)} counterfactual(s), best: score {c['score_after']:.3f} "
                         f"{'valid' if c['valid'] else 'NOT valid'}, L1 {c['l1']:.4f}, edit area {c['edit_area']:.3f}, "
                         f"locality {c['locality']:.2f}, realism {c['realism']:.2f}")
            elif name in REGISTRY and REGISTRY[name].kind == "counterfactual":
                what += results[name].info.get("message", "no counterfactual found")
            print(f"  {name:<9} {m['seconds']:7.2f} s  {what}")
    failed = [n for n, e in results.items() if e.error]
    if failed and len(failed) == len(results):
        print(f"cfx: every method failed ({', '.join(failed)})", file=sys.stderr)
        return 1
    return 0
