"""Concept counterfactuals: several distinct ways an anomaly could become normal, each a
continuous path an inspector walks with a slider (after Liznerski et al., "Reimagining
Anomalies: What If Anomalies Were Normal?").

**The generator.** ``G(z, target, k, source)`` is a small MLP that edits a latent ``z`` of the
detector's VAE (``bundle.vae``, 64-d) for concept ``k`` in ``0..K-1`` (K = 3 by default) so that
the edited image scores ``target`` on the detector's combined score, ``source`` being the score of
the image ``z`` came from. It is trained, with the detector frozen, on train/good images and
synthetic anomalies made from them (:func:`cfx.data.synth.synthesize`); never on test images.

**alpha.** The user-facing ``alpha`` in [0, 1] is a position on the image's own path, mapped
onto the score scale by :func:`target_score`::

    target(alpha) = s_normal + alpha * max(score(x) - s_normal, 0)

``alpha = 1`` is the image's own score (the edit is the identity), ``alpha = 0`` is *clearly
normal*: ``s_normal = min(Q_q(normal), threshold - 0.5 * SD(normal))``, the lower quartile
(``q = 0.25``) of the scores of held-out normal images (the validation split of train/good that
calibrated the detector), and in any case half a normal SD below the decision threshold.

**Images.** A purely decoded image ``vae.decode(z')`` lacks the sensor noise and fine texture of a
real image; the detector notices (on the demo tablet, decoded *normal* images score ~30 against a
threshold below 1). So the counterfactual keeps the original's pixels and applies the concept's
edit as a change of the decoding, while the part of the image the VAE cannot explain *where the
detector finds it abnormal* fades out as alpha goes to 0::

    x'(alpha, k) = clip(x + [decode(z') - decode(z)] - (1 - alpha) * m_k * (x - decode(z)), 0, 1)

with ``z = encode(x)``, ``z' = G(z, target(alpha), k, score(x))`` and ``m_k`` in [0, 1] a soft
mask of the detector's own calibrated heatmap (1.0 = the 99.9th percentile of the per-pixel error
of normal images): 0 below ``lo``, 1 above ``2 lo``, linear between, with
``lo = 0.2 * 4 ** (1 - 2 gamma_k)`` (:func:`fade_mask`). The fade strength ``gamma_k`` in [0, 1]
is fitted per image and concept, not learned (:func:`fit_fade`): the smallest value on a grid at
which the concept's alpha = 0 image scores at most ``s_normal`` for the real detector, i.e. the
least of the image that has to fade (on a texture the detector explains well only the defect
fades; on the hypersensitive demo tablet also its rim). At alpha = 0 the faded pixels show the
concept's decoded normal content and the rest of the image moves by the concept's edit only.
Everything but ``decode(z')`` is computed once per image (:func:`prepare_for`), so a slider step
costs one decoder pass (plus one detector pass to score it).

**Losses** (weights in :data:`LOSS_WEIGHTS`): the detector's score of ``x'`` pulled to the target
(Huber, in units of ``threshold - s_normal``; scoring below the target counts a quarter);
reconstruction ``G(z, score(x), k, score(x)) ~ z``; cycle consistency
``G(z', score(x), k, target) ~ z`` (latents in units of the SD of the VAE's aggregate posterior);
a concept classifier ``R`` (a prototype classifier with a fixed temperature, trained jointly as in
the paper) that must tell ``k`` from the change ``decode(z') - decode(z)`` (disentanglement; its
prototypes start on the principal modes of normal variation, so concepts are the same across
seeds); and a proximity penalty (mean squared change of the decoding). In training the fade uses
one gamma per image, fitted without a latent edit.

Files: ``concepts.pt`` in :func:`cfx.models.bundle.category_dir`, written with
:func:`cfx.models.bundle.save_module` (``torch.load(weights_only=True)``-loadable).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from cfx.errors import ModelMissingError

_log = logging.getLogger(__name__)

FILENAME = "concepts.pt"
EXTRAS_KEY = "concepts"
DEFAULT_K = 3
DEFAULT_STEPS = 200
DEFAULT_BATCH = 6
DEFAULT_ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)
#: The slider's alphas in the app (1 -> 0 by 0.05).
SLIDER_ALPHAS = tuple(float(a) for a in np.round(np.linspace(1.0, 0.0, 21), 2))
NORMAL_QUANTILE = 0.25
THRESHOLD_MARGIN_SD = 0.5
MASK_LO, MASK_HI = 0.2, 0.4
LOSS_WEIGHTS = {"score": 1.0, "reconstruction": 1.0, "cycle": 1.0, "concept": 0.5, "proximity": 1.0}
#: gamma in [0, 1] scales the fade thresholds by GAMMA_RANGE ** (1 - 2 gamma).
GAMMA_RANGE = 4.0
#: The fade strengths :func:`fit_fade` tries, least fading first.
GAMMA_GRID = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)
#: Weight of score errors below the target (more normal than asked) relative to those above.
BELOW_TARGET_WEIGHT = 0.25
#: The proximity penalty is the mean squared change of the decoding in units of this (about a
#: just-visible change of a [0, 1] image).
PROXIMITY_SCALE = 0.05
#: Share of each batch drawn from the synthetic anomalies (the rest: normal images).
ANOMALY_SHARE = 0.75
#: Share of each batch's targets at alpha = 0 (the rest uniform in [0, 1]).
ZERO_ALPHA_SHARE = 0.5


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


def score_loss(score: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Huber loss of the score error in units of ``scale``; an image scoring *below* its target
    (more normal than asked) counts a quarter (:data:`BELOW_TARGET_WEIGHT`) as much."""
    e = (score - target) / scale
    w = torch.where(e < 0, BELOW_TARGET_WEIGHT, 1.0)
    return (w * nn.functional.huber_loss(e, torch.zeros_like(e), delta=1.0, reduction="none")).mean()


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
    """The category's concept generator (``concepts.pt`` beside the other checkpoints), cached in
    ``bundle.extras``.

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
            gen = bundle.extras.get(EXTRAS_KEY)
            if gen is None:
                gen = bundle.extras[EXTRAS_KEY] = load_concepts(bundle, concepts_path(bundle))
            return gen
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


def has_concepts(bundle) -> bool:
    """Whether the category has a ``concepts.pt``."""
    return EXTRAS_KEY in bundle.extras or concepts_path(bundle).exists()


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

    def l1(self) -> np.ndarray:
        """(K, S) mean absolute change of each step."""
        return np.abs(self.images - self.image[None, None]).mean(axis=(2, 3, 4))

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
    from cfx.explainers.edit import compose, edit_metrics

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
        progress: a tqdm bar; save: write the file (and cache it in ``bundle.extras`` when it
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
    from cfx.training import split_indices

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
                bundle.extras[EXTRAS_KEY] = gen
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


def train_category_concepts(root: str | Path, category: str, dataset: str, seed: int = 0,
                            out_dir: Path | None = None, progress: bool = False,
                            log: Callable[[str], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train and save ``concepts.pt`` for a category whose other models were just written (the hook
    of :func:`cfx.training.train_category`).

    Args:
        root, category, dataset: as for ``train_category``; out_dir: its models root (default
            :func:`cfx.config.models_dir`).
        **kwargs: passed to :func:`train_concepts` (k, steps, batch, ...).

    Returns:
        The training summary (``info`` of :func:`train_concepts`).
    """
    import os

    from cfx.models.bundle import load_bundle

    if out_dir is None:
        bundle = load_bundle(dataset, category, detector="vae")
    else:  # load from the given models root
        old = os.environ.get("CFX_MODELS_DIR")
        os.environ["CFX_MODELS_DIR"] = str(out_dir)
        try:
            bundle = load_bundle(dataset, category, detector="vae")
        finally:
            if old is None:
                os.environ.pop("CFX_MODELS_DIR", None)
            else:
                os.environ["CFX_MODELS_DIR"] = old
    _, info = train_concepts(bundle, root, category, seed=seed, out_dir=out_dir, progress=progress, log=log, **kwargs)
    return info
