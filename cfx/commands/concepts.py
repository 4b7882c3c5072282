"""``python -m cfx concepts``: the concept counterfactuals of one image (see :mod:`cfx.concepts`),
each walked from the original (alpha = 1) to its edit (alpha = 0).

Prints a table (concept x alpha: score, valid, L1, edit area, realism), or with ``--json`` one object::

    {"image": "<defect>/<file>",
     "concepts": [{"name", "description", "valid", "repair_properties",
                   "steps": [{"alpha", "score_after", "valid", "l1", "edit_area", "locality", "realism", "path"}]}],
     "metrics": {"score_before", "threshold", "anomalous", "k", "valid_fraction", "not_sufficient",
                 "diversity", "relative_diversity", "seconds", "model", "dataset", "category"}}

``path`` is the PNG written under ``--out`` (null without it). A concept that is not valid at
alpha = 0 is not sufficient on its own (no edit of its kind makes the detector call the image normal).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cfx.errors import DataError
from cfx.reports.encode import file_stem


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options (beside --data-root and --category)."""
    from cfx.cli import add_data_args, add_detector_arg

    add_data_args(p)
    add_detector_arg(p)
    p.add_argument("--image", help="test image: index, '<defect>/<file>' or a file path "
                                   "(default: the first defective test image)")
    p.add_argument("--alphas", default="1,0.5,0",
                   help="comma-separated positions on each concept's slider in [0, 1]: 1 = the original, "
                        "0 = the concept's edit (default: 1,0.5,0)")
    p.add_argument("--out", help="write the original and every step as PNG into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def parse_alphas(text: str) -> list[float]:
    """``"1,0.5,0"`` -> [1.0, 0.5, 0.0]; DataError when not numbers in [0, 1]."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DataError(f"--alphas must be comma-separated numbers in [0, 1], e.g. 1,0.5,0 (got {text!r})") from None
    if not vals or any(not (0.0 <= v <= 1.0) for v in vals):
        raise DataError(f"--alphas must be comma-separated numbers in [0, 1], e.g. 1,0.5,0 (got {text!r})")
    return vals


def _write_png(path: Path, image: np.ndarray) -> str:
    from cfx.atomic import atomic_path
    from cfx.data.imageio import array_to_pil

    with atomic_path(path, suffix=".png") as tmp:
        array_to_pil(image).save(tmp, format="PNG")
    return str(path)


def step_image(x: np.ndarray, edit: np.ndarray, alpha: float) -> np.ndarray:
    """A concept's slider at ``alpha``: the original (1) morphing into the concept's edit (0)."""
    return np.clip(x + (1.0 - float(alpha)) * (edit - x), 0, 1).astype(np.float32)


def concepts_json(bundle, name: str, exp, alphas: list[float], out: Path | None = None,
                  mask: np.ndarray | None = None) -> dict[str, Any]:
    """The command's JSON for the ``concepts`` method's Explanation of one image (writes PNGs under ``out``)."""
    from cfx.concepts import describe
    from cfx.explainers.counterfactual import counterfactual_metrics
    from cfx.explainers.edit import detector_heat

    x = exp.image
    stem = file_stem(name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_png(out / f"{stem}_original.png", x)
    concepts = []
    heat = detector_heat(bundle, x)  # the original's map, for every concept's repair properties
    for cf in exp.counterfactuals:
        imgs = np.stack([step_image(x, cf.image, a) for a in alphas])
        steps = []
        for a, img, c in zip(alphas, imgs, counterfactual_metrics(bundle, x, imgs, exp.target, mask, heat=heat)):
            p = None
            if out is not None:
                p = _write_png(out / f"{stem}_{cf.concept.replace(' ', '')}_alpha{a:.2f}.png", img)
            steps.append({"alpha": float(a), "score_after": c.score_after, "valid": c.valid, "l1": c.metrics["l1"],
                          "edit_area": c.metrics["edit_area"], "locality": c.metrics["locality"],
                          "realism": c.metrics["realism"], "path": p})
        concepts.append({"name": cf.concept, "valid": cf.valid, "score_after": cf.score_after,
                         "description": describe(cf.concept),
                         "repair_properties": cf.repair_properties, "steps": steps})
    metrics = {
        "score_before": exp.score_before, "threshold": exp.threshold, "anomalous": exp.score_before > exp.threshold,
        "k": len(concepts), "valid_fraction": float(np.mean([c["valid"] for c in concepts])) if concepts else 0.0,
        "not_sufficient": [c["name"] for c in concepts if not c["valid"]],
        "diversity": exp.info.get("diversity"), "relative_diversity": exp.info.get("relative_diversity"),
        "seconds": round(exp.seconds, 4), "model": bundle.key(), "dataset": bundle.dataset, "category": bundle.category,
        "message": exp.info.get("message"),
    }
    return {"image": name, "concepts": concepts, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    """Compute the concept counterfactuals of one image; exit 0 (2 on bad input)."""
    from cfx.explainers import REGISTRY, set_data_root
    from cfx.models.bundle import load_for_root
    from cfx.resolve import resolve_category, resolve_root, select_image

    alphas = parse_alphas(args.alphas)
    if args.out:
        from cfx.atomic import writable_dir

        writable_dir(args.out, "--out")
    root = resolve_root(args.data_root)
    category = resolve_category(root, args.category)
    bundle = load_for_root(root, category, detector=args.detector)
    set_data_root(bundle, root)
    sel = select_image(root, category, args.image, bundle.channels, bundle.image_size)
    exp = REGISTRY["concepts"](bundle).attribute(sel.image, mask=sel.mask)
    result = concepts_json(bundle, sel.name, exp, alphas, Path(args.out) if args.out else None, sel.mask)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["metrics"]
    print(f"{bundle.dataset}/{category} {sel.name}: score {m['score_before']:.3f} "
          f"({'anomalous' if m['anomalous'] else 'normal'}; threshold {m['threshold']:.3f}); "
          f"{m['k']} concepts in {exp.seconds:.2f} s")
    if m["message"]:
        print(m["message"])
    print(f"{'concept':>10} {'alpha':>6} {'score':>8} {'valid':>5} {'L1':>7} {'area':>6} {'realism':>7}  path")
    for c in result["concepts"]:
        for s in c["steps"]:
            print(f"{c['name']:>10} {s['alpha']:>6.2f} {s['score_after']:>8.3f} {'yes' if s['valid'] else 'no':>5} "
                  f"{s['l1']:>7.4f} {s['edit_area']:>6.3f} {s['realism']:>7.2f}  {s['path'] or '-'}")
    for name in m["not_sufficient"]:
        print(f"{name} alone is not sufficient: no edit of that kind makes the detector call the image normal")
    if m["relative_diversity"] is not None:
        print(f"relative diversity (mean pairwise L1 / mean L1 to the original): {m['relative_diversity']:.2f}")
    return 0
