"""Counterfactuals as local edits (issues 12 and 35): validity, locality, edit area, realism by two
measures, AR-Pro's four repair properties, relative diversity and the concepts' validity.

For each demo category and both detectors, on ``--per-category`` defect test images that the
detector calls anomalous (spread over the defect types) (and on the ``../shared/mvtec-sample`` bottle
defects when that folder exists and bottle is fitted), every counterfactual method runs with its
defaults and every counterfactual is measured: validity (the detector calls the shown image
normal), locality (share of the change inside the mask dilated by 4 px), edit area over mask area,
realism (PatchCore's nearest-normal-patch distance of the edited region over real normal pixels)
and pixel realism (no network: 5x5 pixel patches against good parts), the seam (gradient on the
edit's border over the original's), AR-Pro's ``overall``, ``similarity``, ``localized`` and
``non_degradation`` (the detector's top-10% region; ``mask``: the ground truth), and the relative
diversity of a method's K counterfactuals (mean pairwise L1 over mean L1 to the original).

    python bench/bench_counterfactuals.py [--per-category 4] [--categories brick,gravel,tablet,shortcut]
        [--detectors patchcore,vae] [--methods clear,dice,gradient,concepts] [--params JSON] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.explainers import REGISTRY, set_data_root  # noqa: E402
from cfx.models.bundle import load_bundle, model_exists, dataset_name  # noqa: E402

METHODS = ("clear", "dice", "gradient", "concepts")


def flagged_defects(b, root: Path, cat: str, per: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``per`` defect test images with masks that the bundle's detector flags, spread over the
    defect types: (name, image, mask (H, W))."""
    ds = MVTecDataset(root, cat, "test", image_size=b.image_size, channels=b.channels).arrays()
    bad = [i for i in range(len(ds)) if ds.labels[i] == 1 and ds.has_mask[i]]
    a = b.analyse(ds.images[bad])
    flagged = [i for i, an in zip(bad, a["anomalous"]) if an]
    return [(ds.samples[i].name, ds.images[i], ds.masks[i][0] if ds.masks[i].ndim == 3 else ds.masks[i])
            for i in flagged[::max(1, len(flagged) // per)][:per]]


def good_part_spread(b, x: np.ndarray, k: int = 4) -> float | None:
    """How much k valid minimal repairs of ``x`` can differ at all: the relative diversity of the
    smallest valid edits filled with each of the ``k`` good parts nearest to ``x`` (aligned), the
    natural spread of repairs in that spot (None when fewer than two are valid)."""
    from cfx.explainers import edit as E
    from cfx.explainers._util import train_images
    from cfx.metrics.edits import edit_diversity

    heat = E.detector_heat(b, x)
    normals = train_images(b)
    w = (1.0 - E.scaled(heat)).astype(np.float32)
    d = (((normals - x[None]) ** 2).mean(1) * w[None]).reshape(len(normals), -1).sum(1)
    conts = [E.aligned(normals[i], x, w)[0] for i in np.argsort(d)[:k]]
    edits = [e.image for e in E.minimal_edits(b, x, "score", heat, [{"n": c} for c in conts], [None] * k) if e.valid]
    return edit_diversity(x, edits)["relative_diversity"] if len(edits) > 1 else None


def run(dataset: str, root: Path, cat: str, det: str, per: int, methods, params: dict | None = None) -> list[dict]:
    b = load_bundle(dataset, cat, detector=det)
    set_data_root(b, root)
    chosen = flagged_defects(b, root, cat, per)
    rows = []
    for m in methods:
        if m in ("clear", "gradient") and not b.has("ae"):
            continue
        for name, image, mask in chosen:
            t0 = time.perf_counter()
            e = REGISTRY[m](b).attribute(image, mask=mask, **(params or {}).get(m, {}))
            c = e.best
            area = max(float((mask > 0.5).mean()), 1e-6)
            valid = [x for x in e.counterfactuals if x.valid]
            rows.append({"category": cat, "detector": det, "method": m, "image": name,
                         "seconds": time.perf_counter() - t0, "evaluations": e.info.get("evaluations"),
                         "valid": bool(c is not None and c.valid),
                         "locality": c.metrics["locality"] if c else float("nan"),
                         "area_ratio": c.metrics["edit_area"] / area if c else float("nan"),
                         "realism": c.metrics["realism"] if c else float("nan"),
                         "realism_pixels": c.metrics.get("realism_pixels", float("nan")) if c else float("nan"),
                         "seam": c.metrics.get("seam", float("nan")) if c else float("nan"),
                         "content": c.content if c else "",
                         "rp": [x.repair_properties for x in valid],
                         "relative_diversity": e.info.get("relative_diversity"),
                         "concepts": {x.concept: x.valid for x in e.counterfactuals if x.concept},
                         "spread": good_part_spread(b, image) if m == "dice" else None})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _groups(rows: list[dict]):
    keys = sorted({(r["data"], r["detector"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for k in keys:
        yield k, [r for r in rows if (r["data"], r["detector"], r["method"]) == k]


def table(rows: list[dict]) -> str:
    out = ["| data | detector | method | n | validity | locality | edit area / mask | realism (PatchCore) | "
           "realism (pixels) | seam | s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (d, det, m), rs in _groups(rows):
        ok = [r for r in rs if r["valid"]]
        med = lambda k: float(np.nanmedian([r[k] for r in ok])) if ok else float("nan")  # noqa: E731
        out.append(f"| {d} | {det} | {m} | {len(rs)} | {len(ok) / max(1, len(rs)):.2f} | {med('locality'):.2f} | "
                   f"{med('area_ratio'):.2f} | {med('realism'):.2f} | {med('realism_pixels'):.2f} | {med('seam'):.2f} | "
                   f"{float(np.median([r['seconds'] for r in rs])):.1f} |")
    return "\n".join(out)


def repair_table(rows: list[dict]) -> str:
    """AR-Pro's properties of every valid counterfactual: medians, and the worst (largest) value of
    localized and non-degradation, with the detector's region and with the mask."""
    out = ["| data | detector | method | valid counterfactuals | overall | similarity | localized (worst) | "
           "non-degradation (worst) | mask: localized (worst) | mask: non-degradation (worst) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (d, det, m), rs in _groups(rows):
        rp = [p for r in rs for p in r["rp"]]
        if not rp:
            continue
        v = lambda k, src=None: np.array([(p[src] if src else p)[k] for p in rp if not src or src in p])  # noqa: E731
        f = lambda a: f"{np.median(a):+.3f} ({a.max():+.3f})" if len(a) else "–"  # noqa: E731
        out.append(f"| {d} | {det} | {m} | {len(rp)} | {np.median(v('overall')):.2f} | {np.median(v('similarity')):.4f} | "
                   f"{f(v('localized'))} | {f(v('non_degradation'))} | {f(v('localized', 'mask'))} | "
                   f"{f(v('non_degradation', 'mask'))} |")
    return "\n".join(out)


def diversity_table(rows: list[dict]) -> str:
    """Relative diversity of the methods with K counterfactuals, and each concept's validity."""
    out = ["| data | detector | method | images | relative diversity: median (min) | the 4 nearest good parts' "
           "repairs: median (min) | concepts: valid share each |",
           "|---|---|---|---:|---:|---:|---|"]
    for (d, det, m), rs in _groups(rows):
        rd = np.array([r["relative_diversity"] for r in rs if r["relative_diversity"] is not None], float)
        if not len(rd):
            continue
        names: dict[str, list[bool]] = {}
        for r in rs:
            for k, ok in r["concepts"].items():
                names.setdefault(k, []).append(ok)
        conc = ", ".join(f"{k} {np.mean(v):.2f} ({len(v)})" for k, v in names.items()) or "–"
        sp = np.array([r["spread"] for r in rs if r.get("spread") is not None], float)
        spread = f"{np.median(sp):.2f} ({sp.min():.2f})" if len(sp) else "–"
        out.append(f"| {d} | {det} | {m} | {len(rd)} | {np.median(rd):.2f} ({rd.min():.2f}) | {spread} | {conc} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--per-category", type=int, default=4)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--categories", default="brick,gravel,tablet,shortcut")
    p.add_argument("--detectors", default="patchcore,vae")
    p.add_argument("--params", default="{}", help='parameters per method as JSON, e.g. {"dice": {"max_iterations": 15}}')
    p.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                   help="also the real sample's bottle defects when bottle is fitted")
    p.add_argument("--json")
    args = p.parse_args()
    methods = args.methods.split(",")
    params = json.loads(args.params)
    rows = []
    demo = ensure_demo()
    for cat in args.categories.split(","):
        for det in args.detectors.split(","):
            for r in run("demo", demo, cat, det, args.per_category, methods, params):
                rows.append({**r, "data": "demo" if cat != "shortcut" else "demo shortcut"})
    real = Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"
    if args.real and real.is_dir() and model_exists(dataset_name(real), "bottle"):
        for r in run(dataset_name(real), real, "bottle", "patchcore", 8, methods, params):
            rows.append({**r, "data": "bottle"})
    print(f"\n{time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, torch CPU; "
          f"parameters {params or 'the defaults'}\n")
    print(table(rows))
    print()
    print(repair_table(rows))
    print()
    print(diversity_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
