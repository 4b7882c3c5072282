"""Training the autoencoder (CLEAR's latent space), the VAE multi-score detector and the classifier
of a category (:func:`train_category`).

Only train/good images are used: 85% fit the models, 15% (the held-out split) normalise the VAE
detector's scores and choose its threshold on these real normal images; synthetic anomalies made
from them are only a secondary check, and choose the classifier's threshold and the VAE's alpha and
KL weight. The classifier learns normal vs synthetic anomalies made from train/good, never test
images."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from cfx import config
from cfx.data.mvtec import MVTecDataset
from cfx.data.synth import synthesize
from cfx.detectors import MultiScoreDetector, choose_threshold
from cfx.detectors.calibration import DEFAULT_TARGET_FPR, expected_tpr, threshold_at_fpr
from cfx.metrics.detection import auroc_standard_error
from cfx.atomic import writable_dir
from cfx.models.bundle import category_dir, round_to_half, save_module
from cfx.models.nets import VAE, Classifier, ConvAutoencoder
from cfx.models.identity import data_record
from cfx.resolve import record_root
from cfx.training.common import (
    VAL_FRACTION,
    _batched,
    _StateHolder,
    _versions,
    merge_card,
    seed_everything,
    split_indices,
    synthetic_check,
)

DEFAULT_EPOCHS = 40
#: Weights of reconstruction in the combined score; ties go to the one nearest 0.6 (the default).
ALPHA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_ALPHA = 0.6
#: KL weights of the VAE (relative to the per-pixel mean squared error), chosen per category on the
#: validation split: the first unless another beats it by more than the standard error of its
#: validation AUROC (the one-standard-error rule; 30 validation normals make that AUROC noisy).
#: 2e-5 is a strong prior: on registered textures the posterior collapses and the VAE decodes a
#: template of the texture (an excellent reference for the reconstruction error, no
#: use to the Mahalanobis score); 1e-6 keeps informative latents (on the demo tablet Mahalanobis
#: AUROC 0.99 against 0.96, and decoded latents look normal to the detector, which the latent
#: counterfactuals need).
KL_WEIGHTS = (2e-5, 1e-6)
#: The classifier: top fraction of location logits pooled, epochs relative to the AE's, synthetic
#: anomalies per training image.
CLF_TOP_FRACTION = 0.02
CLF_EPOCH_FACTOR = 0.75
CLF_PER_IMAGE = 2
LR = 1e-3
BATCH = 16


def _augment(x: torch.Tensor, g: torch.Generator, flips: bool) -> torch.Tensor:
    if not flips:
        return x
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(2)
    return x


def _batches(n: int, bs: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, bs):
        yield perm[i:i + bs]


def train_autoencoder(x: torch.Tensor, channels: int, epochs: int, seed: int, variational: bool = False,
                      latent_dim: int = 64, flips: bool = False, progress: bool = True,
                      desc: str = "autoencoder", kl_weight: float = KL_WEIGHTS[0]) -> ConvAutoencoder:
    """Train the AE (or the VAE with ``variational``, loss = per-pixel MSE + ``kl_weight`` * KL) on
    normal images ``x`` (N, C, H, W)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = (VAE if variational else ConvAutoencoder)(channels, latent_dim, x.shape[-1])
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * -(-len(x) // BATCH),
                                                pct_start=0.15)
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        tot = 0.0
        for idx in _batches(len(x), BATCH, g):
            xb = _augment(x[idx], g, flips)
            if variational:
                mu, logvar = model.encode_dist(xb)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                rec = model.decode(z)
                kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
                loss = ((rec - xb) ** 2).mean() + kl_weight * kl
            else:
                loss = ((model(xb) - xb) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        bar.set_postfix(loss=f"{tot / len(x):.5f}")
    model.eval()
    return round_to_half(model)


def train_classifier(normals: torch.Tensor, anomalies: torch.Tensor, channels: int, epochs: int, seed: int,
                     flips: bool = False, progress: bool = True, top_fraction: float = CLF_TOP_FRACTION) -> Classifier:
    """Normal (0) vs synthetic anomalies (1), classes weighted to balance."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Classifier(channels, top_fraction=top_fraction)
    x = torch.cat([normals, anomalies])
    y = torch.cat([torch.zeros(len(normals)), torch.ones(len(anomalies))])
    w = torch.where(y == 1, len(normals) / max(1, len(anomalies)), 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(x) // 32))
    model.train()
    bar = tqdm(range(epochs), desc="classifier", disable=not progress, leave=False)
    for _ in bar:
        tot = 0.0
        for idx in _batches(len(x), 32, g):
            xb = _augment(x[idx], g, flips)
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb), y[idx], weight=w[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        bar.set_postfix(loss=f"{tot / len(x):.4f}")
    model.eval()
    return round_to_half(model)


def train_category(root: str | Path, category: str, dataset: str, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                   progress: bool = True, out_dir: Path | None = None, flips: bool | None = None,
                   marker: Callable | None = None, log: Callable[[str], None] = print,
                   alpha: float | None = None, image_size: int = config.IMAGE_SIZE,
                   target_fpr: float = DEFAULT_TARGET_FPR) -> dict[str, Any]:
    """Train every model of a category and write checkpoints and the card atomically.

    Args:
        root: the data root; category: its folder; dataset: the models/ sub-folder name.
        epochs: epochs of the AE and the VAE (the classifier trains for half as many).
        flips: augment with flips (default: on for textures of the demo, off otherwise).
        marker: applied to synthetic anomalies (the ``shortcut`` demo's stamp).
        alpha: weight of reconstruction in the combined score; None picks it from
            :data:`ALPHA_GRID` by AUROC on the validation split (normals vs synthetic anomalies),
            0.6 on ties.
        image_size: side of the working images (a multiple of 16).
        target_fpr: the false-alarm rate the thresholds are set at, on the held-out normals
            (:func:`~cfx.detectors.calibration.threshold_at_fpr`; with the usual 30 held-out
            images a rate of 0.01 is out of reach, which the card says, with the bound reached).

    Returns:
        The model card.
    """
    t0 = time.perf_counter()
    writable_dir(category_dir(dataset, category, out_dir), "the models folder")  # before minutes of training
    seed_everything(seed)
    ds = MVTecDataset(root, category, "train", image_size=image_size)
    arr = ds.arrays()
    x_all = torch.from_numpy(arr.images)
    tr, va = split_indices(len(x_all), seed)
    x_tr, x_va = x_all[tr], x_all[va]
    channels = ds.channels
    if flips is None or marker is None:
        from cfx.data import demo

        if root is not None and demo.is_demo_root(root) and category in demo.CATEGORIES:
            spec = demo.CATEGORIES[category]
            flips = False if flips is None else flips
            if spec.get("stamp") and marker is None:
                marker = lambda a: demo._stamp(a.transpose(1, 2, 0)).transpose(2, 0, 1)  # noqa: E731
        flips = bool(flips)
    log(f"{dataset}/{category}: {len(x_tr)} train, {len(x_va)} validation normals, {channels} channel(s)")

    ae = train_autoencoder(x_tr, channels, epochs, seed, flips=flips, progress=progress, desc=f"{category} AE")
    rng = np.random.default_rng(seed + 7)
    syn_tr, _, _ = synthesize(arr.images[tr], rng, per_image=CLF_PER_IMAGE, marker=marker)
    syn_va, _, _ = synthesize(arr.images[va], rng, per_image=3, marker=marker)
    syn_va_t = torch.from_numpy(syn_va)
    y = np.r_[np.zeros(len(x_va)), np.ones(len(syn_va))]

    # the VAE's KL weight and the detector's alpha: chosen on the validation split
    candidates = []
    for kl_weight in KL_WEIGHTS:
        vae = train_autoencoder(x_tr, channels, epochs, seed + 1, variational=True, flips=flips, progress=progress,
                                desc=f"{category} VAE (KL weight {kl_weight:g})", kl_weight=kl_weight)
        det = MultiScoreDetector(vae).eval()
        det.fit(x_tr, x_va)
        parts = ("recon_score", "mahalanobis_score")
        s_n = {k: _batched(lambda b: det.analyse(b)[k], x_va).numpy() for k in parts}
        s_a = {k: _batched(lambda b: det.analyse(b)[k], syn_va_t).numpy() for k in parts}
        grid = ALPHA_GRID if alpha is None else (float(alpha),)
        aucs = {a: float(roc_auc_score(y, np.r_[a * s_n["recon_score"] + (1 - a) * s_n["mahalanobis_score"],
                                                a * s_a["recon_score"] + (1 - a) * s_a["mahalanobis_score"]]))
                for a in grid}
        best = max(aucs.values())
        a_best = min((a for a in grid if aucs[a] >= best - 1e-9), key=lambda a: abs(a - DEFAULT_ALPHA))
        log(f"{dataset}/{category}: KL weight {kl_weight:g}: validation AUROC {best:.3f} at alpha {a_best}")
        candidates.append((best, kl_weight, a_best, det, s_n, s_a))
    se = auroc_standard_error(candidates[0][0], len(syn_va), len(x_va))
    chosen = max(candidates[1:], key=lambda c: c[0], default=None)
    if chosen is None or chosen[0] <= candidates[0][0] + se:
        chosen = candidates[0]
    _, kl_weight, alpha, det, s_n, s_a = chosen
    vae = det.vae
    det.alpha = float(alpha)
    for sc in (s_n, s_a):
        sc["score"] = det.alpha * sc["recon_score"] + (1 - det.alpha) * sc["mahalanobis_score"]
    cal = threshold_at_fpr(s_n["score"], target_fpr)
    thr = cal["threshold"]
    det.threshold.fill_(thr)
    thresholds = {"score": thr, "recon": threshold_at_fpr(s_n["recon_score"], target_fpr)["threshold"],
                  "mahalanobis": threshold_at_fpr(s_n["mahalanobis_score"], target_fpr)["threshold"]}

    clf = train_classifier(x_tr, torch.from_numpy(syn_tr), channels, max(10, round(epochs * CLF_EPOCH_FACTOR)),
                           seed + 2, flips=flips, progress=progress)
    p_n = _batched(clf.proba, x_va).numpy()
    p_a = _batched(clf.proba, syn_va_t).numpy()
    clf_thr = float(np.clip(choose_threshold(p_n, p_a, "f1"), 0.05, 0.95))

    val_metrics = {
        "val_auroc_synthetic": float(roc_auc_score(y, np.r_[s_n["score"], s_a["score"]])),
        "val_classifier_auroc_synthetic": float(roc_auc_score(y, np.r_[p_n, p_a])),
    }
    z_tr = _batched(ae.encode, x_tr)
    ae_err_va = _batched(lambda b: ((ae(b) - b) ** 2).flatten(1).mean(1), x_va).numpy()
    d = category_dir(dataset, category, out_dir)
    d.mkdir(parents=True, exist_ok=True)
    ae_state = ae.state_dict()
    ae_holder = _StateHolder({**ae_state, "latent_mean": z_tr.mean(0), "latent_std": z_tr.std(0)})
    net_cfg = lambda m: {"channels": m.channels, "latent_dim": m.latent_dim, "image_size": m.image_size,  # noqa: E731
                         "widths": list(m.widths)}
    hashes = {
        "ae.pt": save_module(d / "ae.pt", ae_holder, {"net": net_cfg(ae)}),
        "vae.pt": det.save(d / "vae.pt"),
        "classifier.pt": save_module(d / "classifier.pt", clf, {"net": {"channels": channels,
                                                                         "top_fraction": clf.top_fraction},
                                                                "threshold": clf_thr}),
    }
    content_hash = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    vae_info = {"file": "vae.pt", "sha256": hashes["vae.pt"], "threshold": thr, "threshold_rule": cal["rule"],
                "target_fpr": target_fpr, "expected_fpr": cal["expected_fpr"],
                "expected_tpr": expected_tpr(thr, s_a["score"]),
                "calibration": {"normals": len(va), "scored": "held-out normals (not trained on)",
                                "reached": cal["reached"]},
                "heldout_normals": len(va), "synthetic_check": synthetic_check(thr, s_n["score"], s_a["score"])}
    card = {
        "dataset": dataset, "category": category, "data_root": record_root(root),
        "data": data_record(root, category),
        "split": {"train": len(tr), "validation": len(va), "source": "train/good", "val_fraction": VAL_FRACTION,
                  "synthetic_validation_anomalies": len(syn_va)},
        "seed": seed, "epochs": epochs, "channels": channels, "image_size": int(x_all.shape[-1]),
        "flips": flips, "shortcut_marker": marker is not None,
        "threshold_rule": cal["rule"], "threshold": thr, "thresholds": thresholds,
        "classifier_threshold": clf_thr, "classifier_threshold_rule": "f1 on held-out normals vs synthetic anomalies",
        "alpha": det.alpha, "kl_weight": kl_weight,
        "validation_auroc_by_kl_weight": {f"{c[1]:g}": c[0] for c in candidates},
        "kl_weight_rule": f"first of {[f'{w:g}' for w in KL_WEIGHTS]} unless another beats it by > {se:.4f} (1 SE)",
        "classifier": {"top_fraction": clf.top_fraction, "synthetic_per_image": CLF_PER_IMAGE},
        "metrics": val_metrics, "ae_recon_normal": float(np.median(ae_err_va)), "versions": _versions(), "files": hashes,
        "content_hash": content_hash, "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(time.perf_counter() - t0, 1), "device": str(config.device()),
    }
    card = merge_card(d, card, "vae", vae_info)
    log(f"{dataset}/{category}: done in {card['train_seconds']} s, threshold {thr:.3f}, "
        f"val AUROC (synthetic) {val_metrics['val_auroc_synthetic']:.3f}")
    return card
