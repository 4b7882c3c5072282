"""Training the concept generator (:func:`train_concepts`) on train/good images and synthetic anomalies made from them, with the detector frozen; never on test images.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cfx.concepts.model import (
    DEFAULT_K,
    FILENAME,
    MASK_HI,
    MASK_LO,
    NORMAL_QUANTILE,
    THRESHOLD_MARGIN_SD,
    ConceptClassifier,
    ConceptGenerator,
    Prepared,
    edit,
    fit_fade,
    prepare,
)

_log = logging.getLogger(__name__)
DEFAULT_STEPS = 200
DEFAULT_BATCH = 6
LOSS_WEIGHTS = {"score": 1.0, "reconstruction": 1.0, "cycle": 1.0, "concept": 0.5, "proximity": 1.0}
#: Weight of score errors below the target (more normal than asked) relative to those above.
BELOW_TARGET_WEIGHT = 0.25
#: The proximity penalty is the mean squared change of the decoding in units of this (about a
#: just-visible change of a [0, 1] image).
PROXIMITY_SCALE = 0.05
#: Share of each batch drawn from the synthetic anomalies (the rest: normal images).
ANOMALY_SHARE = 0.75
#: Share of each batch's targets at alpha = 0 (the rest uniform in [0, 1]).
ZERO_ALPHA_SHARE = 0.5


def score_loss(score: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Huber loss of the score error in units of ``scale``; an image scoring *below* its target
    (more normal than asked) counts a quarter (:data:`BELOW_TARGET_WEIGHT`) as much."""
    e = (score - target) / scale
    w = torch.where(e < 0, BELOW_TARGET_WEIGHT, 1.0)
    return (w * nn.functional.huber_loss(e, torch.zeros_like(e), delta=1.0, reduction="none")).mean()


# ====================================================================== training
def _marker_for(root: Path, category: str) -> Callable | None:
    """The demo ``shortcut`` stamp (as cfx.training applies it to synthetic anomalies)."""
    from cfx.data import demo

    if demo.is_demo_root(root) and demo.CATEGORIES.get(category, {}).get("stamp"):
        return lambda a: demo._stamp(a.transpose(1, 2, 0)).transpose(2, 0, 1)
    return None


def _s_normal(val_scores: np.ndarray, threshold: float, quantile: float) -> float:
    q = float(np.quantile(val_scores, quantile))
    sd = float(np.std(val_scores)) if len(val_scores) > 1 else 1.0
    return min(q, threshold - THRESHOLD_MARGIN_SD * max(sd, 1e-3))


def train_concepts(bundle, root: str | Path, category: str | None = None, seed: int = 0, k: int = DEFAULT_K,
                   steps: int = DEFAULT_STEPS, batch: int = DEFAULT_BATCH, out_dir: Path | None = None,
                   weights: dict[str, float] | None = None, quantile: float = NORMAL_QUANTILE,
                   lr: float = 1e-2, progress: bool = False, save: bool = True, log: Callable[[str], None] | None = None
                   ) -> tuple[ConceptGenerator, dict[str, Any]]:
    """Train the concept generator of a category and save ``concepts.pt``.

    Training data: train/good images (whose 15% validation split, the same one
    :func:`cfx.training.train_category` held out, sets ``s_normal``) and one synthetic anomaly per
    image (:func:`cfx.data.synth.synthesize`, with the demo ``shortcut``'s stamp). The anomalies
    made from the validation split are held out to measure validity and concept accuracy.

    Args:
        bundle: the category's loaded models (frozen; the detector is the one explained).
        root: the data root; category: default ``bundle.category``.
        seed: random seed (initialisation, sampling, synthetic anomalies).
        k: number of concepts; steps: optimiser steps; batch: images per step (each is edited
            with every concept, at one random alpha: half of them 0).
        out_dir: models root to save under (default :func:`cfx.config.models_dir`); the file goes
            to ``category_dir(bundle.dataset, category, out_dir) / "concepts.pt"``.
        weights: overrides of :data:`LOSS_WEIGHTS`.
        quantile: the quantile of held-out normal scores that alpha = 0 maps to (at most).
        lr: peak learning rate (one-cycle schedule).
        progress: a tqdm bar; save: write the file (and keep it in ``bundle.loaded`` when it
            goes to the bundle's own folder).
        log: where to write a one-line summary (default: the module logger).

    Returns:
        ``(generator, info)``; ``info`` holds the training time, the final losses and held-out
        figures (``val_validity`` at alpha = 0, ``val_concept_accuracy``) and ``path``.
    """
    from tqdm.auto import tqdm

    from cfx.data.mvtec import MVTecDataset
    from cfx.data.synth import synthesize
    from cfx.models.bundle import category_dir, save_module
    from cfx.training.common import split_indices

    t_start = time.perf_counter()
    category = category or bundle.category
    root = Path(root)
    w = {**LOSS_WEIGHTS, **(weights or {})}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 11)

    arr = MVTecDataset(root, category, "train", image_size=bundle.image_size, channels=bundle.channels).arrays()
    normals = arr.images
    tr, va = split_indices(len(normals), int(bundle.card.get("seed", 0)))
    marker = _marker_for(root, category)
    syn, _, _ = synthesize(normals, rng, per_image=1, marker=marker)
    syn_tr, syn_va = syn[tr], syn[va]

    with bundle.lock:
        p_norm = prepare(bundle, normals)
        p_syn = prepare(bundle, syn_tr)
        p_val = prepare(bundle, syn_va)
    thr = bundle.threshold
    val_scores = p_norm.score[torch.as_tensor(va)].cpu().numpy()
    s0 = _s_normal(val_scores, thr, quantile)
    scale = max(thr - s0, 0.25)
    with bundle.lock:
        for p in (p_norm, p_syn, p_val):
            fit_fade(bundle, p, s0)

    gen = ConceptGenerator(bundle.vae.latent_dim, k, bundle.channels, image_size=bundle.image_size).to(bundle.device)
    z_all = torch.cat([p_norm.z, p_syn.z])
    gen.z_mean.copy_(z_all.mean(0))
    gen.z_std.copy_(aggregate_posterior_sd(bundle, torch.cat([p_norm.x, p_syn.x])).clamp_min(1e-3))
    gen.calib.copy_(torch.tensor([s0, thr, scale, MASK_LO, MASK_HI]))
    anchor_prototypes(gen.classifier, p_norm.x)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    n_anom = max(1, int(round(batch * ANOMALY_SHARE)))
    hist: dict[str, list[float]] = {n: [] for n in ("score", "reconstruction", "cycle", "concept", "proximity")}
    gen.train()
    bar = tqdm(range(steps), desc=f"{category} concepts", disable=not progress, leave=False)
    for step in bar:
        # every image of the batch with every concept, at one alpha per image
        ia = torch.randint(len(p_syn), (n_anom,), generator=g)
        inn = torch.randint(len(p_norm), (batch - n_anom,), generator=g)
        pb = _cat(p_syn.take(ia), p_norm.take(inn))
        alpha = torch.rand(batch, generator=g)
        alpha = torch.where(torch.rand(batch, generator=g) < ZERO_ALPHA_SHARE, torch.zeros(batch), alpha)
        rows = torch.arange(batch).repeat_interleave(k)
        pb = pb.take(rows)
        kk = torch.arange(k).repeat(batch).to(bundle.device)
        alpha = alpha[rows].to(bundle.device)
        img, z_new, t, change = edit(gen, bundle, pb, kk, alpha)
        s_new = bundle.score(img)
        losses = {
            "score": score_loss(s_new, t, scale),
            "reconstruction": (((gen(pb.z, pb.score, kk, pb.score) - pb.z) / gen.z_std) ** 2).mean(),
            "cycle": (((gen(z_new, pb.score, kk, t) - pb.z) / gen.z_std) ** 2).mean(),
            "concept": nn.functional.cross_entropy(gen.classifier(change), kk),
            "proximity": (change ** 2).mean() / PROXIMITY_SCALE ** 2,
        }
        loss = sum(w[n] * v for n, v in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(gen.parameters(), 5.0)
        opt.step()
        sched.step()
        for n, v in losses.items():
            hist[n].append(float(v.detach()))
        bar.set_postfix(score=f"{np.mean(hist['score'][-20:]):.3f}", concept=f"{np.mean(hist['concept'][-20:]):.3f}")
        if (step + 1) % 40 == 0:
            _log.debug("step %d: %s", step + 1, {n: round(float(np.mean(v[-40:])), 4) for n, v in hist.items()})
    gen.eval().requires_grad_(False)
    train_seconds = time.perf_counter() - t_start

    with bundle.lock:
        fit_fade(bundle, p_val, s0, gen=gen)  # as at inference: per concept, with its edit
    held = evaluate_heldout(gen, bundle, p_val)
    info: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1), "steps": steps, "batch": batch, "seed": seed, "k": k,
        "n_normal": len(normals), "n_synthetic": len(syn_tr), "n_heldout_synthetic": len(syn_va),
        "s_normal": s0, "threshold": thr, "quantile": quantile, "weights": w,
        "final_losses": {n: float(np.mean(v[-20:])) for n, v in hist.items()}, **held,
    }
    if save:
        d = category_dir(bundle.dataset, category, out_dir)
        path = d / FILENAME
        cfg = {"net": {"latent_dim": gen.latent_dim, "k": gen.k, "channels": gen.channels, "hidden": gen.hidden,
                       "image_size": gen.image_size},
               "model_hash": bundle.content_hash, "info": info}
        save_module(path, gen, cfg)
        info["path"] = str(path)
        gen.info = info  # type: ignore[attr-defined]
        if out_dir is None and category == bundle.category:
            with bundle.lock:
                bundle.loaded.concepts = gen
    (log or _log.info)(
        f"{bundle.dataset}/{category}: concepts (K={k}) trained in {train_seconds:.1f} s; held-out synthetic "
        f"anomalies: {held['val_validity']:.0%} normal at alpha=0, concept accuracy {held['val_concept_accuracy']:.0%}")
    return gen, info


@torch.no_grad()
def anchor_prototypes(clf: ConceptClassifier, normals: torch.Tensor, rms: float = 0.01) -> None:
    """Start concept ``k``'s prototype on the ``k``-th principal mode of how normal images vary
    (pooled like the classifier's input, sign fixed by the largest loading), scaled to ``rms``
    per pooled pixel. The concepts then start from the data rather than from the seed, so
    retraining with another seed finds the same concepts in the same order."""
    f = nn.functional.adaptive_avg_pool2d(normals.float(), clf.pooled).flatten(1).double()
    f = f - f.mean(0)
    _, _, vh = torch.linalg.svd(f, full_matrices=False)
    k = clf.prototypes.shape[0]
    for i in range(min(k, vh.shape[0])):
        v = vh[i]
        v = v * torch.sign(v[v.abs().argmax()])
        clf.prototypes[i] = (v * rms * v.numel() ** 0.5).to(clf.prototypes.dtype)


@torch.no_grad()
def aggregate_posterior_sd(bundle, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Per-dimension SD of the VAE's aggregate posterior: ``sqrt(var(mu) + mean(sigma^2))``."""
    mus, vs = [], []
    for i in range(0, len(x), batch):
        mu, logvar = bundle.vae.encode_dist(x[i:i + batch])
        mus.append(mu)
        vs.append(logvar.exp())
    mu, v = torch.cat(mus), torch.cat(vs)
    return torch.sqrt(mu.var(0) + v.mean(0))


def _cat(a: Prepared, b: Prepared) -> Prepared:
    return Prepared(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in Prepared.FIELDS))


@torch.no_grad()
def evaluate_heldout(gen: ConceptGenerator, bundle, prep: Prepared, batch: int = 64) -> dict[str, float]:
    """Validity at alpha = 0 (of the images the detector calls anomalous) and the concept
    classifier's accuracy, over every concept, on prepared (held-out) anomalies."""
    thr = bundle.threshold
    correct, total, normal, counted = 0, 0, 0, 0
    for kk in range(gen.k):
        for i in range(0, len(prep), batch):
            pb = prep.take(list(range(i, min(i + batch, len(prep)))))
            ks = torch.full((len(pb),), kk, dtype=torch.long, device=pb.x.device)
            img, _, _, change = edit(gen, bundle, pb, ks, torch.zeros(len(pb), device=pb.x.device))
            s = bundle.score(img)
            flagged = pb.score > thr
            normal += int(((s <= thr) & flagged).sum())
            counted += int(flagged.sum())
            correct += int((gen.classifier(change).argmax(1) == kk).sum())
            total += len(pb)
    return {"val_validity": normal / counted if counted else float("nan"), "val_flagged": counted // max(gen.k, 1),
            "val_concept_accuracy": correct / max(total, 1)}


