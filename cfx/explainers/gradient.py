"""Latent gradient counterfactuals (after "Clarity", Theobald et al.).

An ensemble of small MLPs classifies VAE latents (posterior means) as normal (train/good images)
or anomalous (synthetic anomalies made from them, :func:`cfx.data.synth.synthesize`). To explain
an image, gradient steps (Adam) move its latent against the ensemble's mean probability of the
original's class plus a proximity term (mean squared distance to the start in training-SD units).
The probability enters through its log (a member's cross-entropy towards the other class), which,
unlike the probability itself, does not saturate far inside a class:

    loss(z) = mean_k -log p_k(other class | z) + proximity * mean(((z - z0) / sd)^2)

The trajectory is checked with the real model: the proposal is the first step (every
``check_every``-th) whose VAE decoding, as a local edit of the original
(:class:`~cfx.explainers.edit.EditModel`), the target calls normal; it then becomes the smallest
valid edit (:mod:`cfx.explainers.counterfactual`).

The ensemble lives in ``<models>/<dataset>/<category>/ensemble.pt`` (written by
``python -m cfx train``, through :func:`cfx.training.train_explainer_models`); it is loaded lazily and cached in ``bundle.extras``. Explaining never trains: if the file is
missing or belongs to other weights, :class:`~cfx.errors.ModelMissingError` names the command
(``python -m cfx train`` writes it too).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cfx.errors import DataError, ModelMissingError
from cfx.explainers._util import train_images
from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.pt"
EXTRAS_KEY = "latent_ensemble"
#: train on the fly (when the file is missing) only up to this many train images
ON_THE_FLY_MAX_IMAGES = 600


class LatentEnsemble(nn.Module):
    """``members`` MLPs (D -> hidden -> hidden -> 1) on standardised latents.

    Args:
        latent_dim: the VAE's latent size.
        members: ensemble size.
        hidden: width of the hidden layers.
    """

    def __init__(self, latent_dim: int, members: int = 5, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.n_members, self.hidden = int(latent_dim), int(members), int(hidden)
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, 1)) for _ in range(members))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Each member's logit of "anomalous", (members, N)."""
        u = (z - self.mean) / self.std
        return torch.stack([m(u).squeeze(-1) for m in self.members])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The mean P(anomalous) over members, (N,)."""
        return torch.sigmoid(self.logits(z)).mean(0)

    def config(self) -> dict[str, int]:
        return {"latent_dim": self.latent_dim, "members": self.n_members, "hidden": self.hidden}


@torch.inference_mode()
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


def ensemble_path(bundle) -> Path:
    from cfx.models.bundle import category_dir

    return category_dir(bundle.dataset, bundle.category) / ENSEMBLE_FILE


def save_latent_ensemble(bundle, ens: LatentEnsemble, seed: int = 0, path: Path | None = None) -> Path:
    """Write ``ensemble.pt`` (atomically, weights_only-loadable) beside the bundle's checkpoints."""
    from cfx.models.bundle import save_module

    path = path or ensemble_path(bundle)
    cfg = {"net": ens.config(), "content_hash": str(bundle.card.get("content_hash", "")), "seed": int(seed),
           "train_accuracy": float(getattr(ens, "train_accuracy", float("nan")))}
    save_module(path, ens, cfg)
    return path


def load_latent_ensemble(bundle, train_if_missing: bool = True, path: Path | None = None) -> LatentEnsemble:
    """The bundle's latent ensemble: from ``bundle.extras``, else ``ensemble.pt`` (or ``path``), else
    trained on the fly (when cheap), cached in ``bundle.extras``.

    Raises:
        ModelMissingError: no usable file and training on the fly is not possible or not cheap.
    """
    with bundle.lock:
        ens = bundle.extras.get(EXTRAS_KEY)
        if ens is not None:
            return ens
        path = path or ensemble_path(bundle)
        want_hash = str(bundle.card.get("content_hash", ""))
        reason = f"no latent ensemble at {path}"
        if path.exists():
            from cfx.models.bundle import load_checkpoint

            ck = load_checkpoint(path)
            if not want_hash or ck["config"].get("content_hash") == want_hash:
                ens = LatentEnsemble(**ck["config"]["net"])
                ens.load_state_dict(ck["state_dict"])
                ens.eval().requires_grad_(False)
            else:
                reason = f"the latent ensemble at {path} belongs to other weights"
        if ens is None:
            hint = (f"{reason}: run python -m cfx train --detector vae --category {bundle.category}"
                    + ("" if bundle.dataset == "demo" else " --data-root <its data root>"))
            if not train_if_missing:
                raise ModelMissingError(hint)
            try:
                normals = train_images(bundle)
            except DataError as exc:
                raise ModelMissingError(f"{hint} ({exc})") from None
            if len(normals) > ON_THE_FLY_MAX_IMAGES:
                raise ModelMissingError(hint)
            t0 = time.perf_counter()
            ens = train_latent_ensemble(bundle, normals, seed=0)
            log.info("trained a latent ensemble for %s on the fly in %.1f s", bundle.key(), time.perf_counter() - t0)
        ens = ens.to(bundle.device)
        bundle.extras[EXTRAS_KEY] = ens
        return ens


@register
class LatentGradient(CounterfactualExplainer):
    """Gradient steps in the VAE latent against a latent classifier ensemble, checked by the real
    model on the decodings as local edits of the original."""

    name: ClassVar[str] = "gradient"
    order: ClassVar[int] = 6
    label: ClassVar[str] = "Latent gradient (ensemble)"
    defaults: ClassVar[dict[str, Any]] = {"max_steps": 300, "lr": 0.05, "proximity": 0.05, "check_every": 5,
                                          "path_steps": 8}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        b = self.bundle
        ens = load_latent_ensemble(b, train_if_missing=False)
        with torch.inference_mode():
            z0, zc = b.vae.encode(b.to_tensor(np.stack([ctx.image, ctx.content]))).float()
        g0, gc = self._decode(torch.stack([z0, zc]))
        em = ctx.edit_model(g0, gc)
        traj, probs = self._trajectory(ens, z0, False, params)
        every = max(1, int(params["check_every"]))
        # the ensemble's loss keeps pulling after it crosses 0.5, so every step is a candidate
        steps = [i for i in range(every, len(traj)) if i % every == 0 or i == len(traj) - 1]
        found, checked = None, 0
        for i in range(0, len(steps), 8):  # in small batches, stop at the first valid edit
            chunk = steps[i:i + 8]
            s = b.score_numpy(em.images(self._decode(traj[chunk])), ctx.target)
            checked += len(chunk)
            ok = s <= ctx.threshold
            if ok.any():
                found = chunk[int(np.argmax(ok))]
                break
        crossed = probs < 0.5
        exp.info.update({"ensemble_p_start": float(probs[0]),
                         "ensemble_crossed_at": int(np.argmax(crossed)) if crossed.any() else None,
                         "checked": checked, "steps": found, "ensemble_members": ens.n_members})
        if found is None:
            found = len(traj) - 1
            exp.info["search"] = (f"no step of {len(traj) - 1} made a valid edit by itself; the edit starts "
                                  f"from the last one (ensemble p {probs[-1]:.3f})")
        exp.info["ensemble_p_cf"] = float(probs[found])
        idx = np.unique(np.linspace(0, found, max(2, int(params["path_steps"]))).round().astype(int))
        path = self._decode(traj[idx])
        return [Proposal(path[-1], g0, traj[found].cpu().numpy(), z0.cpu().numpy(), path)]

    def _trajectory(self, ens: LatentEnsemble, z0: torch.Tensor, want_anomalous: bool, params: dict[str, Any]
                    ) -> tuple[torch.Tensor, np.ndarray]:
        sd = ens.std
        u0 = (z0 - ens.mean) / sd
        with torch.inference_mode(False), torch.enable_grad():
            u = u0.clone().detach().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=float(params["lr"]))
            traj, probs = [], []
            goal = torch.full((ens.n_members,), 1.0 if want_anomalous else 0.0)
            for _ in range(int(params["max_steps"]) + 1):
                z = u * sd + ens.mean
                logits = ens.logits(z[None])[:, 0]
                traj.append(z.detach().clone())
                probs.append(float(torch.sigmoid(logits.detach()).mean()))
                # -log p(wanted class), averaged over members: unlike p itself it does not saturate
                loss = nn.functional.binary_cross_entropy_with_logits(logits, goal) + \
                    float(params["proximity"]) * ((u - u0) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return torch.stack(traj[:len(probs)]), np.array(probs)

    @torch.inference_mode()
    def _decode(self, z: torch.Tensor) -> np.ndarray:
        return self.bundle.vae.decode(z.to(self.bundle.device)).float().cpu().numpy()
