"""Speed of the seven explanation methods (issue 3), models warm, with the library-default
baselines measured side by side in the same run.

Per category (demo brick = gray, tablet = RGB, where models exist) and target: the median wall
time of each method over ``--images`` detected defect images x ``--repeats`` (after one warm-up
call per method on another image, which pays for imports, numba's first compile in shap, the
PCA fit and the latent ensemble), the median of all seven in one ``explain`` call, and for four
methods the library used as its documentation shows, at the same sample counts:

* LIME: ``LimeImageExplainer.explain_instance`` with its default ``batch_size=10`` and its own
  ``data_labels`` loop (same superpixels, same reconstruction fill, same scoring function);
* SHAP: ``shap.PartitionExplainer`` with an Image masker over the pixels (same fill),
  ``batch_size=50``;
* CLEAR: the seed's procedure, n=8000 latents decoded and scored one at a time in a plain loop,
  then the same regression;
* DiCE: dice-ml's default method (``random``) on the same model and table.

Each timed call starts without a stored counterfactual setup (:meth:`CounterfactualExplainer.setup`):
a method alone pays for its own, and in the call of all seven the counterfactual methods share one.

Prints Markdown (and writes it to ``--out``) for BENCHMARKS.md, with the date, the machine, the
load average (the CPU is shared; side-by-side ratios are more stable than absolute times).

Usage:
    python bench/bench_explainers.py [--categories brick,tablet] [--targets score,classifier]
        [--images 3] [--repeats 2] [--threads N] [--no-baselines] [--clear-baseline-n 8000] [--detector patchcore]
        [--out bench/out/explainers.md] [--json bench/out/explainers.json]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cfx import config  # noqa: E402
from cfx.data.mvtec import MVTecDataset  # noqa: E402
from cfx.models.bundle import load_bundle, model_exists  # noqa: E402

METHODS = ("recon", "gradcam", "lime", "shap", "clear", "dice", "gradient")
#: the issue's budgets on the CPU (seconds, per method, models warm)
BUDGET = {"recon": 0.1, "gradcam": 0.1, "lime": 2.5, "shap": 2.5, "clear": 2.5, "dice": 2.5}
TOTAL_BUDGET = 10.0
#: issue 14's budget for all seven by detector (CPU)
TOTAL_BUDGETS = {"vae": 10.0, "patchcore": 25.0}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{_dt.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{config.device_label()}, torch {torch.__version__}")


def loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------ baselines
def lime_default(bundle, image, target, seed=0, num_samples=1000):
    """lime as its docs show: default batch_size=10 and its own data_labels (same segments and fill)."""
    from lime import lime_image

    from cfx.explainers._util import fill_image
    from cfx.explainers.lime import lime_classifier_fn, superpixels

    segments = superpixels(image, 100, "slic", seed)
    fill = fill_image(bundle, image, "recon")
    ex = lime_image.LimeImageExplainer(random_state=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        res = ex.explain_instance(image.transpose(1, 2, 0), lime_classifier_fn(bundle, target), labels=(0,),
                                  hide_color=fill.transpose(1, 2, 0), top_labels=None,
                                  num_features=int(segments.max()) + 1, num_samples=num_samples,
                                  segmentation_fn=lambda _i: segments, random_seed=seed)
    w = dict(res.local_exp[0])
    return np.array([w.get(k, 0.0) for k in range(int(segments.max()) + 1)])[segments]


def shap_default(bundle, image, target, max_evals=1000):
    """shap's Partition explainer with an Image masker over the pixels, batch_size=50."""
    import shap

    from cfx.explainers._util import fill_image
    from cfx.explainers.shap import pixel_model

    fill = fill_image(bundle, image, "recon")
    masker = shap.maskers.Image(fill.transpose(1, 2, 0).astype(np.float64))
    ex = shap.PartitionExplainer(pixel_model(bundle, target), masker)
    sv = ex(image.transpose(1, 2, 0)[None].astype(np.float64), max_evals=max_evals, batch_size=50, silent=True)
    return np.asarray(sv.values)[0].sum(-1)


def clear_seed(bundle, image, target, n=8000, seed=0):
    """The seed's CLEAR: n latents decoded and scored one at a time, then the regression and step."""
    from cfx.explainers.clear import clear_step, fit_local_regression

    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        z0 = bundle.ae.encode(bundle.to_tensor(image[None]))[0].double().cpu().numpy()
        std = bundle.ae_latent_std.double().cpu().numpy()
        Z = z0 + 2.0 * rng.uniform(size=(n, 1)) * std * rng.standard_normal((n, len(z0)))
        s = np.empty(n)
        for i in range(n):  # the seed's loop
            x = bundle.ae.decode(torch.as_tensor(Z[i:i + 1], dtype=torch.float32, device=bundle.device))
            s[i] = float(bundle.score(x, target)[0])
    y = s > bundle.threshold_for(target)
    if y.all() or not y.any():
        return z0
    reg = fit_local_regression(Z, y, z0, std, 1.0)
    return clear_step(z0, reg.w, reg.b, 0.45)


def dice_default(bundle, image, target, seed=0):
    """dice-ml's default method (random) on the same model and reference table."""
    from cfx.explainers.dice import Dice

    e = Dice(bundle).attribute(image, target, seed, method="random", max_evaluations=10**9)
    return e


# ------------------------------------------------------------------ run
def detected_images(bundle, root, category, k):
    arr = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels).arrays()
    a = bundle.analyse(arr.images)
    idx = [i for i, s in enumerate(arr.samples) if s.defect != "good" and a["anomalous"][i]]
    idx = idx[::max(1, len(idx) // (k + 1))][:k + 1]
    return arr.images[idx[0]], arr.images[idx[1:]], [arr.samples[i].name for i in idx[1:]]


def bench_category(category, target, args, root):
    import cfx.explainers as E

    bundle = load_bundle(config.DEMO_NAME, category, detector=args.detector)
    E.set_data_root(bundle, root)
    warm, images, names = detected_images(bundle, root, category, args.images)
    print(f"- {category}/{target}: {len(images)} images ({', '.join(names)}), load {loadavg()}", file=sys.stderr,
          flush=True)
    for m in METHODS:  # warm-up: imports, numba, PCA, ensemble
        e = E.explain(bundle, warm, [m], target)[m]
        if e.error:
            print(f"  warm-up {m}: {e.error}", file=sys.stderr)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    evals: dict[str, list[int]] = {m: [] for m in METHODS}
    errors: dict[str, str] = {}
    for img in images:
        for _ in range(args.repeats):
            for m in METHODS:
                bundle.loaded.edit_setups.clear()  # each method on its own pays for its search's setup
                e = E.explain(bundle, img, [m], target)[m]
                if e.error:
                    errors[m] = e.error
                times[m].append(e.seconds)
                evals[m].append(int(e.info.get("evaluations", 0)))
    totals, parts = [], {m: [] for m in METHODS}
    for img in images:
        bundle.loaded.edit_setups.clear()  # the counterfactual methods of one call share one setup
        dt, res = timed(lambda: E.explain(bundle, img, METHODS, target))
        totals.append(dt)
        for m in METHODS:
            parts[m].append(res[m].seconds)
    base: dict[str, list[float]] = {}
    if not args.no_baselines:
        for img in images[: args.baseline_images]:
            print(f"  baselines on one image, load {loadavg()}", file=sys.stderr, flush=True)
            base.setdefault("lime", []).append(timed(lambda: lime_default(bundle, img, target))[0])
            base.setdefault("shap", []).append(timed(lambda: shap_default(bundle, img, target))[0])
            base.setdefault("dice", []).append(timed(lambda: dice_default(bundle, img, target))[0])
            base.setdefault("clear", []).append(timed(lambda: clear_seed(bundle, img, target,
                                                                          n=args.clear_baseline_n))[0])
    med = {m: statistics.median(v) for m, v in times.items() if v}
    from cfx.precision import label

    return {"category": category, "target": target, "channels": bundle.channels, "images": names,
            "precision": label(bundle.detector),
            "median_s": med, "median_evaluations": {m: statistics.median(v) for m, v in evals.items() if v},
            "total_median_s": statistics.median(totals),
            "in_total_median_s": {m: statistics.median(v) for m, v in parts.items()}, "baseline_s": {
                k: statistics.median(v) for k, v in base.items()}, "errors": errors, "load_after": loadavg()}


BASELINE_LABEL = {"lime": "lime default (batch_size=10, its data_labels loop), 1000 samples",
                  "shap": "shap Partition, pixel Image masker, batch_size=50, 1000 evals",
                  "clear": "seed CLEAR: n=8000 decoded+scored one at a time",
                  "dice": "dice-ml default method (random), 4 CFs"}


def markdown(results, args) -> str:
    from cfx.explainers import REGISTRY

    d = {m: REGISTRY[m].defaults for m in ("lime", "shap", "clear")}
    total_budget = TOTAL_BUDGETS.get(args.detector, TOTAL_BUDGET)
    lines = [f"### Explainers, {args.detector} detector: {machine()}", "",
             f"Medians over {args.images} detected defect images x {args.repeats} repeats, models warm "
             f"(defaults: LIME {d['lime']['num_samples']} samples, SHAP ({d['shap'].get('estimator', 'partition')}, "
             f"context {d['shap'].get('context', 'owen')}) at most {d['shap']['max_evals']} evals over "
             + (f"{d['shap']['n_segments']} superpixels" if d['shap'].get('regions') == 'superpixels'
                else f"a {d['shap']['grid']}x{d['shap']['grid']} grid") + f", CLEAR n_samples {d['clear']['n_samples'] or 'auto'}, "
             f"early stop {'on' if d['lime'].get('early_stop') else 'off'}, DiCE 4 CFs); "
             + ("no baselines (`--no-baselines`)" if args.no_baselines else
                f"baselines on {args.baseline_images} image(s) in the same run")
             + ". Load average during the run is given: the CPU is "
             f"shared, so absolute times vary; ratios are measured side by side.", ""]
    for r in results:
        lines += [f"**{r['category']}** ({'gray' if r['channels'] == 1 else 'RGB'}), target `{r['target']}`, "
                  f"{r.get('precision', 'float32')}; load after: {r['load_after']}", "",
                  "| method | median s | evaluations | budget s |" + ("" if args.no_baselines else
                                                                  " baseline | baseline s | speed-up |"),
                  "|---|---:|---:|---:|" + ("" if args.no_baselines else "---|---:|---:|")]
        for m in METHODS:
            t = r["median_s"].get(m)
            b = r["baseline_s"].get(m)
            budget = BUDGET.get(m)
            ok = "" if budget is None or t is None else (" ✓" if t <= budget else " ✗")
            n = r.get("median_evaluations", {}).get(m)
            row = f"| {m} | {t:.3f}{ok} | {'–' if n is None else f'{n:.0f}'} | {budget if budget else '–'} |"
            if not args.no_baselines:
                row += (f" {BASELINE_LABEL.get(m, '–')} | {'–' if b is None else f'{b:.2f}'} | "
                        f"{'–' if b is None or not t else f'{b / t:.1f}x'} |")
            lines.append(row)
        tot = r["total_median_s"]
        lines.append(f"| **all seven** (one `explain` call) | {tot:.2f}{' ✓' if tot <= total_budget else ' ✗'} | "
                     f"| {total_budget} |" + ("" if args.no_baselines else " | | |"))
        lines += ["", "In that call: " + ", ".join(f"{m} {t:.2f} s" for m, t in r["in_total_median_s"].items())]
        if r["errors"]:
            lines.append("")
            lines += [f"- {m} failed: {e}" for m, e in r["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", default="brick,tablet")
    p.add_argument("--targets", default="score")
    p.add_argument("--detector", default="vae", choices=("vae", "patchcore"))
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--baseline-images", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--clear-baseline-n", type=int, default=8000)
    p.add_argument("--out", help="also write the Markdown here")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cfx.data.demo import ensure_demo

    root = ensure_demo()
    results = []
    for cat in args.categories.split(","):
        if not model_exists(config.DEMO_NAME, cat):
            print(f"- skipped {cat}: no model in {config.models_dir() / config.DEMO_NAME / cat}", file=sys.stderr)
            continue
        for target in args.targets.split(","):
            results.append(bench_category(cat, target, args, root))
    md = markdown(results, args)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
