"""Benchmark of the concept counterfactuals (issue 4): the paper's metrics and the slider latency,
printed as Markdown tables for BENCHMARKS.md.

Per demo category with a model (and ``concepts.pt``; ``--train-missing`` trains the missing ones,
``--retrain`` all, timing the training), on the test split:

* **validity**: share of the detected defects whose alpha = 0 counterfactual the real detector
  calls normal, per concept (min and mean over concepts);
* **normality**: AUROC of the detector score separating the alpha = 0 counterfactuals of every
  defect and concept (positives) from the real normal test images (negatives); 0.5 is ideal
  (indistinguishable), below 0.5 the counterfactuals score more normal than real normal images;
* **concept accuracy**: the concept classifier R telling ``k`` from the change, on held-out
  synthetic anomalies (made from the validation split of train/good, never trained on) and on
  the real test defects (never seen in training);
* **proximity** (mean absolute pixel change, latent L2) and **realism** (AE reconstruction error
  over that of normal images, as for the other counterfactuals; real normal test images for
  reference), **diversity** (mean pairwise L1 between concepts at alpha = 0);
* **latency**: one slider step computed on demand (one decode and one detector pass; the page
  looks precomputed steps up instead), the page's whole path (K x 21 steps, scored) and a
  cached lookup, medians of ``--repeats`` runs, side by side.

Usage:
    python bench/bench_concepts.py [--categories brick,tablet] [--train-missing] [--retrain]
        [--repeats 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cfx import config  # noqa: E402
from cfx.concepts import (SLIDER_ALPHAS, concept_path, concept_step, concepts_path, edit, load_concepts,  # noqa: E402
                          prepare_for)
from cfx.training.concepts import train_concepts  # noqa: E402
from cfx.data.demo import CATEGORIES, ensure_demo  # noqa: E402
from cfx.data.mvtec import GOOD, MVTecDataset  # noqa: E402
from cfx.data.synth import synthesize  # noqa: E402
from cfx.errors import ModelMissingError  # noqa: E402
from cfx.metrics.edits import independent_realism  # noqa: E402


def realism_scores(bundle, images: np.ndarray) -> np.ndarray:
    """Whole-image realism of each image (PatchCore nearest-normal-patch distance over that of
    real normal pixels; independent of the generator)."""
    return np.array([independent_realism(bundle, im, im[None])[0] for im in images])
from cfx.models.bundle import load_bundle, model_exists  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{_dt.date.today().isoformat()}, {platform.node() or 'host'}: {cpu}, "
            f"{torch.get_num_threads()} torch threads, {config.device_label()}, torch {torch.__version__}")


@torch.no_grad()
def alpha0(gen, bundle, prep, k: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha = 0 counterfactuals of prepared images for concept k: (images, latents, R's predictions)."""
    imgs, lats, preds = [], [], []
    for i in range(0, len(prep), batch):
        pb = prep.take(list(range(i, min(i + batch, len(prep)))))
        kk = torch.full((len(pb),), k, dtype=torch.long)
        img, z, _, change = edit(gen, bundle, pb, kk, torch.zeros(len(pb)))
        imgs.append(img.float().cpu().numpy())
        lats.append(z.float().cpu().numpy())
        preds.append(gen.classifier(change).argmax(1).cpu().numpy())
    return np.concatenate(imgs), np.concatenate(lats), np.concatenate(preds)


def heldout_synthetic(bundle, root: Path, category: str, gen) -> np.ndarray:
    """The held-out synthetic anomalies of training (same seed, split and marker)."""
    from cfx.training.concepts import _marker_for
    from cfx.training.common import split_indices

    arr = MVTecDataset(root, category, "train", image_size=bundle.image_size, channels=bundle.channels).arrays()
    seed = int(getattr(gen, "info", {}).get("seed", 0))
    rng = np.random.default_rng(seed + 11)
    syn, _, _ = synthesize(arr.images, rng, per_image=1, marker=_marker_for(root, category))
    _, va = split_indices(len(arr.images), int(bundle.card.get("seed", 0)))
    return syn[va]


def median_time(fn, repeats: int) -> float:
    fn()  # warm
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def bench_category(root: Path, category: str, args) -> dict | None:
    from sklearn.metrics import roc_auc_score

    if not model_exists("demo", category):
        print(f"- skipped demo/{category}: no trained model in {config.models_dir() / 'demo' / category}", flush=True)
        return None
    bundle = load_bundle("demo", category)
    train_s = None
    if args.retrain or (args.train_missing and not concepts_path(bundle).exists()):
        t0 = time.perf_counter()
        train_concepts(bundle, root, category, seed=0)
        train_s = time.perf_counter() - t0
    try:
        gen = load_concepts(bundle)
    except ModelMissingError as exc:
        print(f"- skipped demo/{category}: {exc}", flush=True)
        return None
    info = getattr(gen, "info", {})
    te = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels).arrays()
    bad = np.array([s.defect != GOOD for s in te.samples])
    prep = prepare_for(gen, bundle, te.images[bad])
    flagged = (prep.score > bundle.threshold).cpu().numpy()
    normal_scores = bundle.score_numpy(te.images[~bad])
    normal_realism = realism_scores(bundle, te.images[~bad])
    syn = heldout_synthetic(bundle, root, category, gen)
    prep_syn = prepare_for(gen, bundle, syn)

    validity, acc_test, acc_syn, cf_scores, l1s, lat2, realism, outs = [], [], [], [], [], [], [], []
    for k in range(gen.k):
        imgs, lats, pred = alpha0(gen, bundle, prep, k)
        s = bundle.score_numpy(imgs)
        validity.append(float((s[flagged] <= bundle.threshold).mean()) if flagged.any() else float("nan"))
        acc_test.append(float((pred == k).mean()))
        acc_syn.append(float((alpha0(gen, bundle, prep_syn, k)[2] == k).mean()))
        cf_scores.append(s)
        l1s.append(np.abs(imgs - te.images[bad]).mean(axis=(1, 2, 3)))
        lat2.append(np.sqrt(((lats - prep.z.cpu().numpy()) ** 2).sum(1)))
        realism.append(realism_scores(bundle, imgs))
        outs.append(imgs)
    pair = [np.abs(outs[i] - outs[j]).mean() for i in range(gen.k) for j in range(i + 1, gen.k)]
    cf = np.concatenate(cf_scores)
    y = np.r_[np.ones(len(cf)), np.zeros(len(normal_scores))]
    normality = float(roc_auc_score(y, np.r_[cf, normal_scores]))

    # latency: one image, on demand vs the page's whole path vs a lookup
    i0 = int(np.argmax(prep.score.cpu().numpy()))
    one = te.images[bad][i0]
    p1 = prepare_for(gen, bundle, one[None])
    step = median_time(lambda: concept_step(bundle, p1, 0, 0.5, gen), args.repeats)
    prep_t = median_time(lambda: prepare_for(gen, bundle, one[None]), args.repeats)
    full = median_time(lambda: concept_path(bundle, one, SLIDER_ALPHAS, generator=gen), max(3, args.repeats // 3))
    path = concept_path(bundle, one, SLIDER_ALPHAS, generator=gen)
    lookup = median_time(lambda: (path.images[1, path.index(0.35)], path.scores[1, path.index(0.35)]), args.repeats)
    row = {
        "category": category, "k": gen.k, "train_seconds": train_s if train_s is not None else info.get("train_seconds"),
        "train_measured_now": train_s is not None, "steps": info.get("steps"),
        "n_defects": int(bad.sum()), "n_detected": int(flagged.sum()), "n_normal_test": int((~bad).sum()),
        "validity_per_concept": validity, "validity_min": float(np.nanmin(validity)),
        "validity_mean": float(np.nanmean(validity)), "normality_auroc": normality,
        "concept_accuracy_heldout_synthetic": float(np.mean(acc_syn)), "concept_accuracy_test": float(np.mean(acc_test)),
        "l1": float(np.mean(l1s)), "latent_l2": float(np.mean(lat2)), "realism": float(np.mean(realism)),
        "realism_normal_test": float(np.mean(normal_realism)), "diversity": float(np.mean(pair)),
        "latency_step_s": step, "latency_prepare_s": prep_t, "latency_path_s": full, "latency_lookup_s": lookup,
        "path_steps": gen.k * len(SLIDER_ALPHAS),
    }
    print(f"- demo/{category}: validity min {row['validity_min']:.2f}, normality {normality:.3f}, "
          f"step {step * 1000:.0f} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", help="comma-separated demo categories (default: every one with a model)")
    ap.add_argument("--train-missing", action="store_true", help="train concepts.pt where it is missing")
    ap.add_argument("--retrain", action="store_true", help="retrain every category's concepts.pt (timed)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    root = ensure_demo()
    cats = args.categories.split(",") if args.categories else list(CATEGORIES)
    rows = [r for c in cats if (r := bench_category(root, c, args)) is not None]
    print()
    print(f"### Concept counterfactuals ({machine()})")
    print()
    print("| category | K | train (s) | detected defects | validity at α=0 (min / mean over concepts) | "
          "normality AUROC (0.5 ideal) | concept acc. held-out synth. / test | L1 | latent L2 | realism (normal test) "
          "| diversity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tr = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}" + ("" if r["train_measured_now"] else "*")
        print(f"| {r['category']} | {r['k']} | {tr} | {r['n_detected']}/{r['n_defects']} | "
              f"{r['validity_min']:.2f} / {r['validity_mean']:.2f} | {r['normality_auroc']:.3f} | "
              f"{r['concept_accuracy_heldout_synthetic']:.2f} / {r['concept_accuracy_test']:.2f} | {r['l1']:.4f} | "
              f"{r['latent_l2']:.2f} | {r['realism']:.2f} ({r['realism_normal_test']:.2f}) | {r['diversity']:.4f} |")
    print()
    print("\\* training time recorded in concepts.pt when it was trained (not re-measured in this run).")
    print()
    print("| category | slider step on demand (decode + score) | prepare + fade fit (once per image) | page path "
          "(K×21 steps, scored) | cached lookup | path ÷ step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['category']} | {r['latency_step_s'] * 1000:.1f} ms | {r['latency_prepare_s'] * 1000:.1f} ms | "
              f"{r['latency_path_s'] * 1000:.0f} ms ({r['path_steps']}) | {r['latency_lookup_s'] * 1e6:.1f} µs | "
              f"{r['latency_path_s'] / r['latency_step_s']:.1f}× |")
    print()
    print(f"Medians of {args.repeats} runs (path: {max(3, args.repeats // 3)}), measured side by side in one run.")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
