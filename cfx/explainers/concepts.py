"""Concept counterfactuals as a registered method (the generator: :mod:`cfx.concepts`).

Each of the generator's K concepts proposes its own way to normal: its image at ``alpha`` (0 =
clearly normal for the detector it was trained against, the VAE), reached along its own path from
alpha = 1 (the original). Each proposal then becomes the smallest local edit that the *selected*
detector calls normal (:mod:`cfx.explainers.counterfactual`); the Concepts page's slider morphs
only that edit's region (:func:`cfx.concepts.local_steps`).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext


@register
class Concepts(CounterfactualExplainer):
    """The concept generator's K counterfactuals, one per concept, as local edits."""

    name: ClassVar[str] = "concepts"
    order: ClassVar[int] = 7
    typical_evaluations: ClassVar[int | None] = 260  # measured on demo defects (VAE): 254
    label: ClassVar[str] = "Concepts (generator)"
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.0, "path_steps": 8}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        from cfx.concepts import concept_path, load_concepts

        vb = self.bundle.using("vae")  # the detector the generator was trained against
        gen = load_concepts(vb)
        alpha = float(params["alpha"])
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), not {alpha}")
        alphas = np.linspace(1.0, alpha, max(2, int(params["path_steps"])))
        path = concept_path(vb, ctx.image, alphas, generator=gen)
        exp.info.update({"concepts": int(path.k), "alpha": alpha, "s_normal": float(path.s_normal),
                         "generator_scores": [float(s) for s in path.scores[:, -1]]})
        return [Proposal(path.images[k, -1], ctx.image, path.latents[k, -1], path.latent, path.images[k],
                         info={"concept": k}) for k in range(path.k)]
