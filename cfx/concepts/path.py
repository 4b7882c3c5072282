"""A concept path: every concept at a grid of alphas for one image, scored by the detector (:func:`concept_path`), one slider step (:func:`concept_step`) and the steps as local edits (:func:`local_steps`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from cfx.concepts.model import (
    DEFAULT_ALPHAS,
    ConceptGenerator,
    Prepared,
    edit,
    load_concepts,
    prepare_for,
    target_score,
)


# ====================================================================== paths
@dataclass
class ConceptPath:
    """K concept counterfactual paths of one image over a list of alphas.

    Attributes:
        image: the original, float32 (C, H, W).
        score: its detector score; threshold: the detector threshold; s_normal: alpha = 0's target.
        latent: its VAE latent (D,).
        alphas: (S,) the alphas of the steps, in the given order.
        targets: (S,) target scores of the steps.
        images: float32 (K, S, C, H, W) counterfactual images.
        latents: float32 (K, S, D) edited latents.
        scores: (K, S) detector scores of the images (the real detector, not the target).
        valid: (K, S) whether a step is on the other side of the threshold than the original.
        seconds: wall time to compute the path.
    """

    image: np.ndarray
    score: float
    threshold: float
    s_normal: float
    latent: np.ndarray
    alphas: np.ndarray
    targets: np.ndarray
    images: np.ndarray
    latents: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """The number of concepts."""
        return int(self.images.shape[0])

    @property
    def anomalous(self) -> bool:
        return self.score > self.threshold

    def index(self, alpha: float) -> int:
        """The step whose alpha is closest to ``alpha``."""
        return int(np.argmin(np.abs(self.alphas - alpha)))

    def difference(self, k: int, step: int) -> np.ndarray:
        """Signed change counterfactual - original, averaged over channels (H, W)."""
        return (self.images[k, step] - self.image).mean(0)

    def diversity(self, step: int) -> float:
        """Mean pairwise L1 between the concepts' images at one step."""
        from cfx.metrics.edits import diversity

        return diversity(list(self.images[:, step]))


def _targets(alphas: Sequence[float]) -> np.ndarray:
    a = np.asarray([float(x) for x in alphas], np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError("alphas must be a non-empty list of numbers")
    if np.any(a < 0) or np.any(a > 1) or not np.all(np.isfinite(a)):
        raise ValueError(f"alphas must lie in [0, 1], not {a.tolist()}")
    return a


@torch.no_grad()
def render(gen: ConceptGenerator, bundle, prep: Prepared, k: int | Sequence[int], alphas: Sequence[float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Counterfactual images of ONE prepared image for concepts ``k`` x ``alphas`` (decoding only).

    Returns:
        ``(images (len(k), S, C, H, W), latents (len(k), S, D))`` as float32 numpy.
    """
    ks = [int(k)] if np.isscalar(k) else [int(i) for i in k]
    a = _targets(alphas)
    if len(prep) != 1:
        raise ValueError("render takes one prepared image")
    for i in ks:
        if not 0 <= i < gen.k:
            raise ValueError(f"concept {i} out of range: the generator has {gen.k}")
    n = len(ks) * len(a)
    rep = prep.take([0] * n)
    kk = torch.tensor(np.repeat(ks, len(a)), device=rep.x.device)
    aa = torch.tensor(np.tile(a, len(ks)), dtype=torch.float32, device=rep.x.device)
    img, z_new, _, _ = edit(gen, bundle, rep, kk, aa)
    shape = (len(ks), len(a))
    return (img.float().cpu().numpy().reshape(*shape, *img.shape[1:]),
            z_new.float().cpu().numpy().reshape(*shape, -1))


def concept_path(bundle, image: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 generator: ConceptGenerator | None = None, prep: Prepared | None = None) -> ConceptPath:
    """Every concept's counterfactuals of one image at ``alphas``, scored by the real detector.

    Args:
        bundle: the models; image: float32 (C, H, W) at the models' size and channels.
        alphas: positions on the path in [0, 1] (1: the image's own score, 0: clearly normal).
        generator: default :func:`load_concepts`.
        prep: :func:`prepare_for` of the image, if already computed.

    Raises:
        ModelMissingError: no concept generator; ValueError: bad alphas or image shape.
    """
    t0 = time.perf_counter()
    image = np.asarray(image, np.float32)
    expected = (bundle.channels, bundle.image_size, bundle.image_size)
    if image.shape != expected:
        raise ValueError(f"image shape {image.shape} does not match the models' {expected}")
    gen = generator if generator is not None else load_concepts(bundle)
    a = _targets(alphas)
    with bundle.lock:
        prep = prep if prep is not None else prepare_for(gen, bundle, image[None])
        imgs, lats = render(gen, bundle, prep, list(range(gen.k)), a)
        flat = imgs.reshape(-1, *imgs.shape[2:])
        scores = bundle.score_numpy(flat).reshape(imgs.shape[:2])
    s = float(prep.score[0])
    thr = bundle.threshold
    return ConceptPath(
        image=image, score=s, threshold=thr, s_normal=gen.s_normal, latent=prep.z[0].cpu().numpy(),
        alphas=a, targets=np.asarray(target_score(a, s, gen.s_normal), np.float64), images=imgs, latents=lats,
        scores=scores, valid=(scores > thr) != (s > thr), seconds=time.perf_counter() - t0)


def concept_step(bundle, prep: Prepared, k: int, alpha: float, generator: ConceptGenerator | None = None
                 ) -> tuple[np.ndarray, float, bool]:
    """One slider step computed on demand: (image (C, H, W), detector score, valid).

    One decoder pass and one detector pass; ``prep`` is :func:`prepare_for` of the image (cache it).
    """
    gen = generator if generator is not None else load_concepts(bundle)
    with bundle.lock:
        imgs, _ = render(gen, bundle, prep, [k], [alpha])
        s = float(bundle.score_numpy(imgs[0])[0])
    s0, thr = float(prep.score[0]), bundle.threshold
    return imgs[0, 0], s, (s > thr) != (s0 > thr)


def local_steps(bundle, path: ConceptPath, explanation, mask: np.ndarray | None = None) -> ConceptPath:
    """The concept path as local edits, for the slider: every step changes only the region that
    the ``concepts`` method's edit of that concept changed (:mod:`cfx.explainers.counterfactual`).

    Step ``alpha`` of concept ``k`` is ``x + R_k (render_k(alpha) - x)`` where the edit's content is
    the generator, and ``x + (1 - alpha)(edit_k - x)`` where it is real content. Scores, validity
    and the targets (linear from the original's score at alpha 1 to the best edit's at alpha 0) are
    the selected detector's (``bundle``); ``info`` gets ``l1``, ``edit_area``,
    ``locality`` and ``realism`` per step (:func:`cfx.explainers.edit.edit_metrics`).

    Args:
        bundle: the models, with the detector being explained selected.
        path: :func:`concept_path` of the image (any alphas).
        explanation: the ``concepts`` method's Explanation of the same image.
        mask: the defect mask (H, W), if known (locality).
    """
    from cfx.explainers.edit import compose
    from cfx.metrics.edits import edit_metrics

    x = path.image
    order = explanation.info.get("proposal_order", list(range(len(explanation.counterfactuals))))
    images = np.repeat(x[None, None], path.k, 0).repeat(len(path.alphas), 1).astype(np.float32)
    for cf, k in zip(explanation.counterfactuals, order):
        if cf.region is None:
            continue
        for s, a in enumerate(path.alphas):
            if cf.content == "generator":
                images[k, s] = compose(x, path.images[k, s], cf.region)
            else:
                images[k, s] = x + (1.0 - float(a)) * (cf.image - x)
    flat = images.reshape(-1, *images.shape[2:])
    with bundle.lock:
        scores = bundle.score_numpy(flat).reshape(images.shape[:2])
        m = edit_metrics(bundle, x, flat, mask)
    thr = bundle.threshold
    s0 = float(explanation.score_before)
    # the selected detector's scale: from the original (alpha 1) to its best edit (alpha 0)
    s_edit = float(scores[:, int(np.argmin(path.alphas))].min())
    targets = s_edit + np.asarray(path.alphas, np.float64) * (s0 - s_edit)
    out = ConceptPath(image=x, score=s0, threshold=thr, s_normal=s_edit, latent=path.latent,
                      alphas=path.alphas, targets=targets, images=images, latents=path.latents,
                      scores=scores, valid=scores <= thr, seconds=path.seconds, info=dict(path.info))
    for key in ("l1", "edit_area", "locality", "realism"):
        out.info[key] = np.array([r[key] for r in m]).reshape(images.shape[:2])
    return out
