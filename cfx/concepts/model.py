"""The concept generator and its parts (:class:`ConceptGenerator`, :class:`ConceptClassifier`), the alpha -> score mapping, the fade of the detector's hot region, the per-image preparation, and loading ``concepts.pt`` (see :mod:`cfx.concepts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cfx.errors import ModelMissingError

FILENAME = "concepts.pt"
DEFAULT_K = 3
DEFAULT_ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)
#: The slider's alphas in the app (1 -> 0 by 0.05).
SLIDER_ALPHAS = tuple(float(a) for a in np.round(np.linspace(1.0, 0.0, 21), 2))
NORMAL_QUANTILE = 0.25
THRESHOLD_MARGIN_SD = 0.5
MASK_LO, MASK_HI = 0.2, 0.4
#: gamma in [0, 1] scales the fade thresholds by GAMMA_RANGE ** (1 - 2 gamma).
GAMMA_RANGE = 4.0
#: The fade strengths :func:`fit_fade` tries, least fading first.
GAMMA_GRID = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)


# ====================================================================== modules
class ConceptClassifier(nn.Module):
    """R: tells the concept ``k`` from the change an edit made to the decoding.

    A prototype classifier with a fixed temperature: the logit of concept ``k`` is
    ``-||pool(change) - mu_k||^2 / tau`` (pool: mean over 8x8 blocks). Unlike a free network, it
    cannot amplify imperceptible changes, so telling the concepts apart requires changes that
    differ visibly (by about ``sqrt(tau / dims)`` per pooled pixel).

    Args:
        channels: image channels; k: number of concepts; pooled: side of the pooled change;
        tau: the temperature (in squared pooled-pixel units summed over the pooled image).
    """

    def __init__(self, channels: int, k: int, pooled: int = 16, tau: float = 0.02) -> None:
        super().__init__()
        self.pooled, self.tau = pooled, float(tau)
        # distinct random starting prototypes break the symmetry between the concepts
        self.prototypes = nn.Parameter(torch.randn(k, channels * pooled * pooled) * 0.01)

    def forward(self, change: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of the concept, from changes (N, C, H, W) (signed, about [-1, 1])."""
        f = nn.functional.adaptive_avg_pool2d(change, self.pooled).flatten(1)
        return -((f[:, None, :] - self.prototypes[None]) ** 2).sum(-1) / self.tau


class ConceptGenerator(nn.Module):
    """G(z, target, k, source): a latent edit towards a target anomaly score, per concept.

    Args:
        latent_dim: the VAE latent size.
        k: number of concepts.
        channels, image_size: of the images (the concept classifier, the reference heat map).
        hidden: width of the MLP.

    Buffers: ``z_mean`` and ``z_std``: mean and SD of the VAE's aggregate posterior over the
    training images (per dimension ``sqrt(var(mu) + mean(sigma^2))``); the MLP works in these
    units, which follow what the decoder responds to (the posterior means alone can be nearly
    constant: on the demo tablet their SD across images is ~0.001 against a posterior sigma of
    ~0.7). ``calib`` = (s_normal, threshold, score scale, mask_lo, mask_hi).
    """

    def __init__(self, latent_dim: int = 64, k: int = DEFAULT_K, channels: int = 1, hidden: int = 256,
                 image_size: int = 128) -> None:
        super().__init__()
        self.latent_dim, self.k, self.channels, self.hidden = latent_dim, k, channels, hidden
        self.image_size = image_size
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_std", torch.ones(latent_dim))
        self.register_buffer("calib", torch.tensor([0.0, 1.0, 1.0, MASK_LO, MASK_HI]))
        self.net = nn.Sequential(nn.Linear(latent_dim + 2 + k, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, latent_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.classifier = ConceptClassifier(channels, k)

    # -------------------------------------------------------------- calibration
    @property
    def s_normal(self) -> float:
        """The score that alpha = 0 maps to (clearly normal)."""
        return float(self.calib[0])

    @property
    def threshold(self) -> float:
        return float(self.calib[1])

    @property
    def scale(self) -> float:
        """``threshold - s_normal`` (at least 0.25): the unit of score errors."""
        return float(self.calib[2])

    def _cond(self, s: torch.Tensor) -> torch.Tensor:
        return torch.asinh((s - self.calib[0]) / self.calib[2])

    def forward(self, z: torch.Tensor, target: torch.Tensor, k: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Edited latents.

        Args:
            z: latents (N, D); target, source: scores (N,) (detector scale); k: concepts (N,) long.

        Returns:
            z' (N, D).
        """
        zn = (z - self.z_mean) / self.z_std
        onehot = nn.functional.one_hot(k.long(), self.k).to(z.dtype)
        h = torch.cat([zn, self._cond(target)[:, None], self._cond(source)[:, None], onehot], 1)
        return z + self.net(h) * self.z_std

    def mask(self, heat: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The fade mask of calibrated heatmaps (N, 1, H, W) at fade strengths ``gamma`` (N,)."""
        return fade_mask(heat, gamma, float(self.calib[3]), float(self.calib[4]))


def target_score(alpha: np.ndarray | float | torch.Tensor, score: Any, s_normal: float) -> Any:
    """The target score of ``alpha`` on an image's path: ``s_normal + alpha * max(score - s_normal, 0)``.

    Args:
        alpha: in [0, 1] (1: the image's own score, 0: clearly normal).
        score: the image's own detector score (same shape or broadcastable).
        s_normal: the generator's ``s_normal``.
    """
    if isinstance(score, torch.Tensor):
        return s_normal + alpha * (score - s_normal).clamp_min(0)
    return s_normal + np.asarray(alpha) * np.maximum(np.asarray(score, dtype=np.float64) - s_normal, 0)


def fade_mask(heat: torch.Tensor, gamma: torch.Tensor, lo: float = MASK_LO, hi: float = MASK_HI) -> torch.Tensor:
    """Where the residual fades: 0 where the calibrated heat (N, 1, H, W) is below
    ``lo * GAMMA_RANGE ** (1 - 2 gamma)``, 1 above ``hi / lo`` times that, linear between.

    ``gamma`` (N,) in [0, 1]: 0.5 is the ramp ``lo``..``hi``, 0 four times higher (only the
    strongest anomalous error fades), 1 four times lower.
    """
    lo_g = lo * GAMMA_RANGE ** (1 - 2 * gamma.to(heat.dtype)).view(-1, 1, 1, 1)
    return ((heat - lo_g) / (lo_g * (hi / lo - 1))).clamp(0, 1)


# ====================================================================== per-image state
@dataclass
class Prepared:
    """What a concept path needs of one batch of images, computed once (tensors on the bundle's
    device): ``x``, latent ``z``, decoding ``d = decode(z)``, residual ``r = x - d``, the
    detector's calibrated ``heat`` map (N, 1, H, W), its ``score`` (N,) and the fade strength
    ``gamma`` (N, 1) shared by the concepts or (N, K) per concept (see :func:`fit_fade`; 0.5
    until fitted)."""

    x: torch.Tensor
    z: torch.Tensor
    d: torch.Tensor
    r: torch.Tensor
    heat: torch.Tensor
    score: torch.Tensor
    gamma: torch.Tensor

    FIELDS = ("x", "z", "d", "r", "heat", "score", "gamma")

    def take(self, idx: torch.Tensor | np.ndarray | list[int]) -> "Prepared":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.x.device)
        return Prepared(*(getattr(self, f)[idx] for f in self.FIELDS))

    def __len__(self) -> int:
        return len(self.x)


@torch.no_grad()
def prepare(bundle, images: np.ndarray | torch.Tensor, batch: int = 64) -> Prepared:
    """Encode, decode, score and map images (N, C, H, W) (or one (C, H, W)) with the detector."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in Prepared.FIELDS}
    for i in range(0, len(images), batch):
        x = bundle.to_tensor(images[i:i + batch])  # channels_last: 2x faster backward on CPU
        a = bundle.vae_detector.analyse(x)  # the generator edits the VAE's latent
        d = a["recon"].contiguous(memory_format=torch.channels_last)
        score = a["score"] if bundle.detector_name == "vae" else bundle.score(x)  # the explained detector's
        for k, v in (("x", x), ("z", a["z"]), ("d", d), ("r", x - d), ("heat", a["heatmap"][:, None]),
                     ("score", score), ("gamma", torch.full_like(a["score"], 0.5)[:, None])):
            parts[k].append(v.float())
    return Prepared(**{k: torch.cat(v) for k, v in parts.items()})


@torch.no_grad()
def fit_fade(bundle, prep: Prepared, target: float, lo: float = MASK_LO, hi: float = MASK_HI,
             grid: Sequence[float] = GAMMA_GRID, gen: ConceptGenerator | None = None) -> Prepared:
    """Set each image's fade strength: the smallest ``gamma`` of ``grid`` at which the image at
    alpha = 0 scores at most ``target`` for the real detector (the largest when none does; the
    smallest for images already at or below it).

    Without ``gen``: fading alone (no latent edit), one gamma per image (N, 1) (used in
    training). With ``gen``: per concept (N, K), with the concept's alpha = 0 edit applied (used
    at inference, so that every concept's path ends normal where fading can make it so).
    Deterministic; one detector pass per image, concept and grid value. Returns ``prep``
    (updated in place).
    """
    g = torch.as_tensor(list(grid), dtype=torch.float32, device=prep.x.device)
    n_k = gen.k if gen is not None else 1
    gamma = torch.empty(len(prep), n_k, device=prep.x.device)
    for i in range(len(prep)):
        if float(prep.score[i]) <= target:
            gamma[i] = g[0]
            continue
        x, r, h = prep.x[i:i + 1], prep.r[i:i + 1], prep.heat[i:i + 1]
        m = fade_mask(h.expand(len(g), -1, -1, -1), g, lo, hi)
        for k in range(n_k):
            base = x
            if gen is not None:
                kk = torch.tensor([k], device=x.device)
                z_new = gen(prep.z[i:i + 1], torch.tensor([target], device=x.device), kk, prep.score[i:i + 1])
                base = x + bundle.vae.decode(z_new) - prep.d[i:i + 1]
            s = bundle.score((base - m * r).clamp(0, 1).contiguous(memory_format=torch.channels_last))
            ok = torch.nonzero(s <= target)
            gamma[i, k] = g[int(ok[0])] if len(ok) else g[-1]
    prep.gamma = gamma
    return prep


def prepare_for(gen: ConceptGenerator, bundle, images: np.ndarray | torch.Tensor) -> Prepared:
    """:func:`prepare` and the per-concept :func:`fit_fade` with the generator's calibration: what
    :func:`concept_path`, :func:`concept_step` and :func:`edit` need of images."""
    with bundle.lock:
        prep = prepare(bundle, images)
        lo, hi = float(gen.calib[3]), float(gen.calib[4])
        return fit_fade(bundle, prep, gen.s_normal, lo, hi, gen=gen)


def compose(gen: ConceptGenerator, bundle, prep: Prepared, z_new: torch.Tensor, alpha: torch.Tensor,
            k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The counterfactual images of edited latents for concepts ``k`` (see the module docstring)
    and the change of the decoding ``decode(z') - decode(z)``; differentiable in ``z_new``."""
    change = bundle.vae.decode(z_new).contiguous(memory_format=torch.channels_last) - prep.d
    gamma = prep.gamma[:, 0] if prep.gamma.shape[1] == 1 else prep.gamma.gather(1, k.long()[:, None])[:, 0]
    fade = (1 - alpha).view(-1, 1, 1, 1) * gen.mask(prep.heat, gamma)
    out = (prep.x + change - fade * prep.r).clamp(0, 1)
    return out.contiguous(memory_format=torch.channels_last), change


def edit(gen: ConceptGenerator, bundle, prep: Prepared, k: torch.Tensor, alpha: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply concept ``k`` at ``alpha`` to prepared images (one k and alpha per row).

    Returns:
        ``(images, latents, targets, change)``.
    """
    t = target_score(alpha, prep.score, gen.s_normal)
    z_new = gen(prep.z, t, k, prep.score)
    img, change = compose(gen, bundle, prep, z_new, alpha, k)
    return img, z_new, t, change


# ====================================================================== loading
def concepts_path(bundle) -> Path:
    from cfx.models.bundle import category_dir

    return category_dir(bundle.dataset, bundle.category) / FILENAME


def train_hint(bundle) -> str:
    """The command that trains the concept generator of the bundle's category."""
    from cfx import config

    root = "" if bundle.dataset == config.DEMO_NAME else " --data-root <your MVTec root>"
    return f"python -m cfx concepts --train{root} --category {bundle.category}"


def load_concepts(bundle, path: str | Path | None = None) -> ConceptGenerator:
    """The category's concept generator (``concepts.pt`` beside the other checkpoints), kept in
    ``bundle.loaded``.

    Args:
        bundle: the loaded models.
        path: another ``concepts.pt`` (not cached).

    Raises:
        ModelMissingError: no ``concepts.pt`` (the message names the command that trains it), or
            one made for other weights of the detector.
    """
    from cfx.models.bundle import load_checkpoint

    if path is None:
        with bundle.lock:
            if bundle.loaded.concepts is None:
                bundle.loaded.concepts = load_concepts(bundle, concepts_path(bundle))
            return bundle.loaded.concepts
    path = Path(path)
    if not path.exists():
        raise ModelMissingError(f"no concept generator for {bundle.dataset}/{bundle.category} ({path}): "
                                f"run {train_hint(bundle)}")
    ck = load_checkpoint(path)
    cfg = ck["config"]
    made_for = cfg.get("model_hash")
    if made_for and bundle.content_hash and made_for != bundle.content_hash:
        raise ModelMissingError(f"the concept generator in {path} was trained for other detector weights "
                                f"({made_for} != {bundle.content_hash}): run {train_hint(bundle)}")
    gen = ConceptGenerator(**cfg["net"])
    gen.load_state_dict(ck["state_dict"])
    gen.info = dict(cfg.get("info", {}))  # type: ignore[attr-defined]
    return gen.eval().requires_grad_(False).to(bundle.device)


