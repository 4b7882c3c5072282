"""Training the gradient method's latent classifier ensemble
(:class:`~cfx.explainers.gradient.LatentEnsemble`) on VAE latents of normal images vs synthetic
anomalies made from them, and writing ``ensemble.pt``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cfx.errors import DataError
from cfx.explainers.gradient import LatentEnsemble, ensemble_path


def _encode(bundle, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    out = [bundle.vae.encode(bundle.to_tensor(images[i:i + batch])).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


def train_latent_ensemble(bundle, normal_images: np.ndarray, seed: int = 0, members: int = 5, hidden: int = 64,
                          per_image: int = 2, epochs: int = 300, lr: float = 3e-3) -> LatentEnsemble:
    """Train the ensemble on VAE latents of normal images vs synthetic anomalies made from them.

    Args:
        bundle: the category's models (its VAE encodes).
        normal_images: float32 (N, C, H, W) normal images (train/good).
        seed: makes the anomalies, bootstraps and initialisations deterministic.
        members, hidden: ensemble size and width; per_image: synthetic anomalies per normal image.
        epochs, lr: full-batch Adam steps per member.

    Returns:
        The trained ensemble (eval mode, CPU, no gradients on its weights), with
        ``train_accuracy`` set on it.
    """
    from cfx.data.synth import synthesize

    normal_images = np.asarray(normal_images, np.float32)
    if len(normal_images) < 4:
        raise DataError(f"need at least 4 normal images to train the latent ensemble, got {len(normal_images)}")
    rng = np.random.default_rng(seed)
    anomalies, _, _ = synthesize(normal_images, rng, per_image=per_image)
    zn, za = _encode(bundle, normal_images), _encode(bundle, anomalies)
    z = torch.cat([zn, za])
    y = torch.cat([torch.zeros(len(zn)), torch.ones(len(za))])
    ens = LatentEnsemble(z.shape[1], members, hidden)
    ens.mean.copy_(zn.mean(0))
    ens.std.copy_(zn.std(0).clamp_min(1e-6))
    pos_weight = torch.tensor(len(zn) / max(1, len(za)))
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        for k, member in enumerate(ens.members):
            torch.manual_seed(seed * 1000 + k)
            for layer in member:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            idx = torch.randint(len(z), (len(z),), generator=g)  # bootstrap
            zb, yb = ((z[idx] - ens.mean) / ens.std), y[idx]
            opt = torch.optim.Adam(member.parameters(), lr=lr, weight_decay=1e-4)
            for _ in range(epochs):
                loss = nn.functional.binary_cross_entropy_with_logits(member(zb).squeeze(-1), yb, pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    ens.eval().requires_grad_(False)
    with torch.no_grad():
        acc = float(((ens(z) > 0.5).float() == y).float().mean())
    ens.train_accuracy = acc  # type: ignore[attr-defined]
    return ens


def save_latent_ensemble(bundle, ens: LatentEnsemble, seed: int = 0, path: Path | None = None) -> Path:
    """Write ``ensemble.pt`` (atomically, weights_only-loadable) beside the bundle's checkpoints."""
    from cfx.models.bundle import save_module

    path = path or ensemble_path(bundle)
    cfg = {"net": ens.config(), "content_hash": str(bundle.card.get("content_hash", "")), "seed": int(seed),
           "train_accuracy": float(getattr(ens, "train_accuracy", float("nan")))}
    save_module(path, ens, cfg)
    return path
