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
(:class:`~cfx.explainers.edit_model.EditModel`, its scores read from the table of the score by edit
strength, ``strength_cells``), the target calls normal; it then becomes the smallest valid edit
(:mod:`cfx.explainers.counterfactual`).

The ensemble lives in ``<models>/<dataset>/<category>/ensemble.pt`` (written by
``python -m cfx train``, through :func:`cfx.training.ensemble.train_latent_ensemble`); it is loaded
once per bundle (``bundle.loaded``), on the CPU, where its steps are cheapest. Explaining never
trains: if the file is missing or belongs to other weights, :class:`~cfx.errors.ModelMissingError`
names the command.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cfx.errors import ModelMissingError
from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext
from cfx.explainers.edit import STRENGTH_CELLS

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.pt"


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
def ensemble_path(bundle) -> Path:
    from cfx.models.bundle import category_dir

    return category_dir(bundle.dataset, bundle.category) / ENSEMBLE_FILE


def load_latent_ensemble(bundle, path: Path | None = None) -> LatentEnsemble:
    """The bundle's latent ensemble: ``ensemble.pt`` (or ``path``), loaded once per bundle.

    Raises:
        ModelMissingError: no such file, or one trained for other weights (the message names the
            command that trains it).
    """
    from cfx.models.bundle import load_checkpoint

    with bundle.lock:
        if path is None and bundle.loaded.latent_ensemble is not None:
            return bundle.loaded.latent_ensemble
        file = path or ensemble_path(bundle)
        want_hash = str(bundle.card.get("content_hash", ""))
        reason = f"no latent ensemble at {file}"
        ens = None
        if file.exists():
            ck = load_checkpoint(file)
            if not want_hash or ck["config"].get("content_hash") == want_hash:
                ens = LatentEnsemble(**ck["config"]["net"])
                ens.load_state_dict(ck["state_dict"])
                ens.eval().requires_grad_(False)
            else:
                reason = f"the latent ensemble at {file} belongs to other weights"
        if ens is None:
            raise ModelMissingError(f"{reason}: run python -m cfx train --detector vae --category {bundle.category}"
                                    + ("" if bundle.dataset == "demo" else " --data-root <its data root>"))
        if path is None:  # kept on the CPU: see _trajectory
            bundle.loaded.latent_ensemble = ens
        return ens


@register
class LatentGradient(CounterfactualExplainer):
    """Gradient steps in the VAE latent against a latent classifier ensemble, checked by the real
    model on the decodings as local edits of the original."""

    name: ClassVar[str] = "gradient"
    order: ClassVar[int] = 6
    typical_evaluations: ClassVar[int | None] = 70  # demo defects, setup included: 80-90 (VAE), 42-55 (PatchCore)
    label: ClassVar[str] = "Latent gradient (ensemble)"
    needs: ClassVar[dict[str, tuple[str, ...]]] = {"*": ("vae",)}

    @classmethod
    def missing(cls, bundle) -> tuple[str, ...]:
        """The VAE, and its latent ensemble (``ensemble.pt`` beside the card, not a bundle part;
        whether it belongs to these weights is checked when it is loaded)."""
        lacking = super().missing(bundle)
        if bundle.loaded.latent_ensemble is None and not ensemble_path(bundle).exists():
            lacking += ("ensemble",)
        return lacking
    defaults: ClassVar[dict[str, Any]] = {"max_steps": 300, "lr": 0.05, "proximity": 0.05, "check_every": 5,
                                          "path_steps": 8, "strength_cells": STRENGTH_CELLS}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        b = self.bundle
        ens = load_latent_ensemble(b)
        with torch.inference_mode():
            z0, zc = b.vae.encode(b.to_tensor(np.stack([ctx.image, ctx.content]))).float()
        g0, gc = self._decode(torch.stack([z0, zc]))
        em = ctx.edit_model(g0, gc)
        traj, probs = self._trajectory(ens, z0.cpu(), False, params)
        every = max(1, int(params["check_every"]))
        # the ensemble's loss keeps pulling after it crosses 0.5, so every step is a candidate
        steps = [i for i in range(every, len(traj)) if i % every == 0 or i == len(traj) - 1]
        found, checked = None, 0
        for i in range(0, len(steps), 8):  # in small batches, stop at the first valid edit
            chunk = steps[i:i + 8]
            s = em.scores(b, self._decode(traj[chunk]), ctx.target)
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
        """Adam steps of ``z0`` against the ensemble, on the CPU: the ensemble is a few small MLPs
        on one latent, so on CUDA each step would be dozens of tiny kernel launches and a
        synchronisation (measured on an H200: about 1 s for the 300 steps; BENCHMARKS.md)."""
        sd = ens.std
        u0 = (z0 - ens.mean) / sd
        with torch.inference_mode(False), torch.enable_grad():
            u = u0.clone().detach().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=float(params["lr"]))
            traj, probs = [], []
            goal = torch.full((ens.n_members,), 1.0 if want_anomalous else 0.0, device=z0.device)
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
