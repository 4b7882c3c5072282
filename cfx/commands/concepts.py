"""``python -m cfx concepts``: concept counterfactuals of one image along alpha (see :mod:`cfx.concepts`).

Prints a table (concept x alpha: target, score, valid, L1, realism), or with ``--json`` one object::

    {"image": "<defect>/<file>",
     "concepts": [{"k": 0, "steps": [{"alpha", "score_after", "valid", "l1", "realism", "path"}]}],
     "metrics": {"score_before", "threshold", "anomalous", "s_normal", "valid_fraction_at_min_alpha",
                 "diversity_at_min_alpha", "seconds", "model", "k", ...}}

``path`` is the PNG written under ``--out`` (null without it). ``--train`` (re)trains the
category's concept generator first and saves ``concepts.pt`` beside its other models.
"""
from __future__ import annotations

import argparse
import json
import time
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
                   help="comma-separated positions on the path in [0, 1]: 1 = the image's own score, "
                        "0 = clearly normal (default: 1,0.5,0)")
    p.add_argument("--out", help="write the original and every step as PNG into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--train", action="store_true",
                   help="(re)train the category's concept generator first and save concepts.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of --train (default 0)")
    p.add_argument("--steps", type=int, help="optimiser steps of --train (default: cfx.training.concepts.DEFAULT_STEPS)")


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


def concepts_json(bundle, name: str, path, out: Path | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
    """The command's JSON for a computed :class:`cfx.concepts.ConceptPath` (writes PNGs under ``out``)."""
    from cfx.explainers.counterfactual import counterfactual_metrics

    stem = file_stem(name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_png(out / f"{stem}_original.png", path.image)
    concepts = []
    for k in range(path.k):
        cfs = counterfactual_metrics(bundle, path.image, path.images[k], "score", mask)
        steps = []
        for i, (a, cf) in enumerate(zip(path.alphas, cfs)):
            p = None
            if out is not None:
                p = _write_png(out / f"{stem}_concept{k}_alpha{a:.2f}.png", path.images[k, i])
            steps.append({"alpha": float(a), "score_after": cf.score_after, "valid": cf.valid,
                          "l1": cf.metrics["l1"], "edit_area": cf.metrics["edit_area"],
                          "locality": cf.metrics["locality"], "realism": cf.metrics["realism"], "path": p})
        concepts.append({"k": k, "steps": steps})
    last = int(np.argmin(path.alphas))
    metrics = {
        "score_before": path.score, "threshold": path.threshold, "anomalous": path.anomalous,
        "s_normal": path.s_normal, "k": path.k, "min_alpha": float(path.alphas[last]),
        "target_at_min_alpha": float(path.targets[last]),
        "valid_fraction_at_min_alpha": float(np.mean([c["steps"][last]["valid"] for c in concepts])),
        "diversity_at_min_alpha": path.diversity(last), "seconds": round(path.seconds, 4), "model": bundle.key(),
        "dataset": bundle.dataset, "category": bundle.category,
    }
    return {"image": name, "concepts": concepts, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    """Compute (and optionally train) concept counterfactuals; exit 0 (2 on bad input)."""
    from cfx.concepts import concept_path, load_concepts
    from cfx.training.concepts import DEFAULT_STEPS, train_concepts
    from cfx.models.bundle import load_for_root
    from cfx.resolve import resolve_category, resolve_root, select_image

    alphas = parse_alphas(args.alphas)
    if args.out:
        from cfx.atomic import writable_dir

        writable_dir(args.out, "--out")
    root = resolve_root(args.data_root)
    category = resolve_category(root, args.category)
    bundle = load_for_root(root, category, detector=args.detector)
    if args.train:
        t0 = time.perf_counter()
        _, info = train_concepts(bundle, root, category, seed=args.seed, steps=args.steps or DEFAULT_STEPS,
                                 progress=not args.json)
        if not args.json:
            print(f"trained {info['k']} concepts in {time.perf_counter() - t0:.1f} s -> {info['path']} "
                  f"(held-out synthetic anomalies: {info['val_validity']:.0%} normal at alpha=0, "
                  f"concept accuracy {info['val_concept_accuracy']:.0%})")
    from cfx.concepts import local_steps
    from cfx.explainers import REGISTRY, set_data_root

    set_data_root(bundle, root)
    vb = bundle.using("vae")  # the detector the generator was trained against
    gen = load_concepts(vb)
    sel = select_image(root, category, args.image, bundle.channels, bundle.image_size)
    raw = concept_path(vb, sel.image, alphas, generator=gen)
    exp = REGISTRY["concepts"](bundle).attribute(sel.image, seed=args.seed, mask=sel.mask)
    path = local_steps(bundle, raw, exp, sel.mask)  # every step a local edit, scored by the chosen detector
    result = concepts_json(bundle, sel.name, path, Path(args.out) if args.out else None, sel.mask)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["metrics"]
    print(f"{bundle.dataset}/{category} {sel.name}: score {m['score_before']:.3f} "
          f"({'anomalous' if m['anomalous'] else 'normal'}; threshold {m['threshold']:.3f}), "
          f"alpha=0 targets {m['s_normal']:.3f}; {path.k} concepts in {path.seconds:.2f} s")
    print(f"{'concept':>7} {'alpha':>6} {'target':>8} {'score':>8} {'valid':>5} {'L1':>7} {'realism':>7}  path")
    for c in result["concepts"]:
        for i, s in enumerate(c["steps"]):
            print(f"{c['k']:>7} {s['alpha']:>6.2f} {path.targets[i]:>8.3f} {s['score_after']:>8.3f} "
                  f"{'yes' if s['valid'] else 'no':>5} {s['l1']:>7.4f} {s['realism']:>7.2f}  {s['path'] or '-'}")
    print(f"valid at alpha={m['min_alpha']:g}: {m['valid_fraction_at_min_alpha']:.0%} of concepts; "
          f"diversity (mean pairwise L1) {m['diversity_at_min_alpha']:.4f}")
    return 0
