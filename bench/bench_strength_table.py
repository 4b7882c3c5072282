"""The counterfactual searches' table of the score by edit strength, against scoring every strength.

Inside CLEAR, DiCE and the latent gradient every candidate is an edit ``x + a R* (C - x)``, a
function of its strength ``a`` alone (:class:`cfx.explainers.edit_model.EditModel`). With
``strength_cells`` K the search reads ``s(a)`` from a table: exact scores at the ends of the
1/K-wide cell of each strength, more inside a cell where the threshold is crossed, and the rest
read between them. This benchmark runs each method twice on the same images, side by side,
``strength_cells`` 0 (every distinct strength scored) and K, and reports:

* the method's evaluations and seconds both ways;
* **side errors**: every strength the table read, scored exactly afterwards; how many lie on the
  other side of the threshold from the one the table gave (the only way the table can change a
  search's decisions);
* whether the shown counterfactual is the same image, and its validity, locality, edit area
  and realism both ways.

Images: as bench/bench_counterfactuals.py (defect test images the detector flags, spread over the
defect types), on the demo and, where fitted, the real sample's bottle and screw
(``CFX_MODELS_DIR``; methods whose models are missing are skipped).

    python bench/bench_strength_table.py [--categories brick,tablet] [--detectors patchcore,vae]
        [--per-category 3] [--methods clear,dice,gradient] [--cells 32] [--real bottle,screw] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfx.data.demo import ensure_demo  # noqa: E402
from cfx.errors import ModelMissingError  # noqa: E402
from cfx.explainers import REGISTRY, set_data_root  # noqa: E402
from cfx.explainers import edit as E  # noqa: E402
from cfx.explainers.edit_model import EditModel  # noqa: E402
from cfx.models.bundle import dataset_name, load_bundle, model_exists  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_counterfactuals import flagged_defects  # noqa: E402
from bench_explainers import loadavg, machine  # noqa: E402


class Recorder:
    """Wraps :meth:`EditModel.score_strengths` to keep every strength a table read, with its score."""

    def __init__(self) -> None:
        self.read: list[tuple[EditModel, str, float, float]] = []
        self._orig = EditModel.score_strengths

    def __enter__(self) -> "Recorder":
        rec, orig = self, self._orig

        def wrapped(em, bundle, a, target, batch=None, exact=False):
            out = orig(em, bundle, a, target, batch, exact)
            for v, s in zip(np.asarray(a, np.float64), out):
                if (target, float(v)) not in em.memo:
                    rec.read.append((em, target, float(v), float(s)))
            return out

        EditModel.score_strengths = wrapped
        return self

    def __exit__(self, *exc) -> None:
        EditModel.score_strengths = self._orig

    def side_errors(self, bundle) -> tuple[int, int]:
        """(strengths read, of them on the wrong side of the threshold once scored exactly)."""
        wrong = 0
        for em in {id(r[0]): r[0] for r in self.read}.values():
            rs = [r for r in self.read if r[0] is em]
            for target in {r[1] for r in rs}:
                v = np.array([r[2] for r in rs if r[1] == target], np.float32)
                s = np.array([r[3] for r in rs if r[1] == target])
                exact = bundle.score_numpy(E.compose(em.x, em.content, v[:, None, None] * em.region[None]), target)
                thr = bundle.threshold_for(target)
                wrong += int(((exact > thr) != (s > thr)).sum())
        return len(self.read), wrong


def run(dataset: str, root: Path, cat: str, det: str, per: int, methods, cells: int) -> list[dict]:
    b = load_bundle(dataset, cat, detector=det)
    set_data_root(b, root)
    rows = []
    for name, img, mask in flagged_defects(b, root, cat, per):
        for m in methods:
            out = {}
            try:
                for k in (0, cells):
                    b.loaded.edit_setups.clear()  # each run computes its own setup
                    with Recorder() as rec:
                        t0 = time.perf_counter()
                        e = REGISTRY[m](b).attribute(img, mask=mask, strength_cells=k)
                        dt = time.perf_counter() - t0
                    out[k] = (e, dt, rec.side_errors(b))
            except ModelMissingError as exc:
                print(f"skip {m} on {dataset}/{cat}: {exc}", flush=True)
                break
            (e0, t0_, _), (e1, t1, (n_read, wrong)) = out[0], out[cells]
            c0, c1 = e0.best, e1.best
            same = c0 is not None and c1 is not None and np.array_equal(c0.image, c1.image)

            def metr(c):
                return {} if c is None else {"valid": bool(c.valid), **{k: round(float(c.metrics[k]), 4)
                                                                        for k in ("locality", "edit_area", "realism")}}
            rows.append({"data": dataset, "category": cat, "detector": det, "method": m, "image": name,
                         "evaluations": [e0.info["evaluations"], e1.info["evaluations"]],
                         "seconds": [round(t0_, 2), round(t1, 2)], "read": n_read, "side_errors": wrong,
                         "same_image": bool(same), "exact": metr(c0), "table": metr(c1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], cells: int) -> str:
    out = [f"| data | detector | method | n | evaluations, every strength | evaluations, table of {cells} | "
           "median seconds (every / table) | strengths read | side errors | same image | valid (every / table) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["data"] if r["data"] == "demo" else r["category"], r["detector"], r["method"]) for r in rows})
    for d, det, m in keys:
        rs = [r for r in rows if (r["data"] if r["data"] == "demo" else r["category"], r["detector"], r["method"]) == (d, det, m)]
        ev = np.array([r["evaluations"] for r in rs])
        sec = np.array([r["seconds"] for r in rs])
        out.append(f"| {d} | {det} | {m} | {len(rs)} | {int(np.median(ev[:, 0]))} ({ev[:, 0].min()}-{ev[:, 0].max()}) | "
                   f"{int(np.median(ev[:, 1]))} ({ev[:, 1].min()}-{ev[:, 1].max()}) | "
                   f"{np.median(sec[:, 0]):.2f} / {np.median(sec[:, 1]):.2f} | {sum(r['read'] for r in rs)} | "
                   f"{sum(r['side_errors'] for r in rs)} | {sum(r['same_image'] for r in rs)} of {len(rs)} | "
                   f"{sum(r['exact'].get('valid', False) for r in rs)} / {sum(r['table'].get('valid', False) for r in rs)} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--categories", default="brick,tablet")
    p.add_argument("--detectors", default="patchcore,vae")
    p.add_argument("--per-category", type=int, default=3)
    p.add_argument("--methods", default="clear,dice,gradient")
    p.add_argument("--cells", type=int, default=E.STRENGTH_CELLS)
    p.add_argument("--real", default="bottle,screw", help="real sample categories, where fitted ('' for none)")
    p.add_argument("--json")
    args = p.parse_args()
    methods = args.methods.split(",")
    rows = []
    demo = ensure_demo()
    for cat in filter(None, args.categories.split(",")):
        for det in args.detectors.split(","):
            rows += run("demo", demo, cat, det, args.per_category, methods, args.cells)
    real = Path(__file__).resolve().parents[2] / "shared" / "mvtec-sample"
    for cat in filter(None, args.real.split(",")):
        if real.is_dir() and model_exists(dataset_name(real), cat):
            rows += run(dataset_name(real), real, cat, "patchcore", args.per_category, methods, args.cells)
    print(f"\n{machine()}, load {loadavg()}\n")
    print(table(rows, args.cells))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
