"""One interface and one result type for every explanation method.

Every method explains a *target* of the models in a :class:`~cfx.models.bundle.ModelBundle`
through :meth:`ModelBundle.score`:

* ``"score"``: the detector's combined anomaly score (anomalous when > the threshold);
* ``"recon"`` / ``"mahalanobis"``: its two normalised parts;
* ``"classifier"``: the classifier's P(anomalous).

and returns an :class:`Explanation`: a heatmap (H, W; signed where the method is signed) and/or
counterfactual images, the target score before and after, validity, timing, parameters and seed.
Pages, export, metrics and the audit use only this type.
"""
from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

#: A pixel counts as changed (sparsity) when it moves by more than this (images in [0, 1]).
SPARSITY_EPS = 0.05


@dataclass
class Counterfactual:
    """One counterfactual image and how it scores.

    Attributes:
        image: float32 (C, H, W) in [0, 1].
        score_after: the explained target's value on ``image``.
        valid: whether the target crossed its threshold (anomalous -> normal, or the reverse).
        detector_score, detector_valid: the combined detector score of ``image`` and whether it
            is on the other side of the detector threshold than the original.
        classifier_prob, classifier_valid: the same for the classifier.
        metrics: ``l1``, ``l2`` (pixels, mean absolute / root mean square), ``latent_l1``,
            ``latent_l2`` (when a latent exists), ``sparsity`` (share of pixels changed by more
            than 0.05), ``realism`` (AE reconstruction error relative to normal images; about 1
            is as realistic as a normal image).
        latent: the latent the image was decoded from, if any.
        path_images, path_scores: optional steps from the original to past the boundary
            (for a slider), images (S, C, H, W) and target scores (S,).
    """

    image: np.ndarray
    score_after: float
    valid: bool
    detector_score: float
    detector_valid: bool
    classifier_prob: float
    classifier_valid: bool
    metrics: dict[str, float] = field(default_factory=dict)
    latent: np.ndarray | None = None
    path_images: np.ndarray | None = None
    path_scores: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score_after": self.score_after, "valid": self.valid, "detector_score": self.detector_score,
                "detector_valid": self.detector_valid, "classifier_prob": self.classifier_prob,
                "classifier_valid": self.classifier_valid, **self.metrics}


@dataclass
class Explanation:
    """The result of one method on one image (see the module docstring).

    Attributes:
        method: the method's registry name.
        target: the explained target.
        image: the original, float32 (C, H, W).
        score_before: the target's value on the original.
        threshold: the target's decision threshold.
        heatmap: float32 (H, W) or None; higher = more responsible for the target being high.
        signed: whether ``heatmap`` has meaningful negative values.
        counterfactuals: closest valid first.
        seconds: wall time of the method (models warm).
        params: the parameters used (defaults filled in).
        seed: the random seed used.
        error: a one-line error when the method failed (then nothing else is meaningful).
        info: method-specific numbers (e.g. CLEAR's fidelity), JSON-serialisable.
    """

    method: str
    target: str
    image: np.ndarray
    score_before: float
    threshold: float
    heatmap: np.ndarray | None = None
    signed: bool = False
    counterfactuals: list[Counterfactual] = field(default_factory=list)
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Counterfactual | None:
        return self.counterfactuals[0] if self.counterfactuals else None

    @property
    def score_after(self) -> float | None:
        return self.best.score_after if self.best else None

    def difference(self, k: int = 0) -> np.ndarray | None:
        """Signed difference counterfactual - original, averaged over channels (H, W)."""
        if k >= len(self.counterfactuals):
            return None
        return (self.counterfactuals[k].image - self.image).mean(0)

    def to_dict(self) -> dict[str, Any]:
        """Numbers only (no arrays), JSON-serialisable."""
        return {
            "method": self.method, "target": self.target, "score_before": self.score_before,
            "score_after": self.score_after, "threshold": self.threshold, "seconds": round(self.seconds, 4),
            "params": self.params, "seed": self.seed, "error": self.error, "signed": self.signed,
            "has_heatmap": self.heatmap is not None, "info": self.info,
            "counterfactuals": [c.to_dict() for c in self.counterfactuals],
        }


def check_target(bundle, target: str) -> str:
    """``target`` if the bundle offers it (ValueError naming the offered ones otherwise)."""
    bundle.target(target)
    return target


def counterfactual_metrics(bundle, original: np.ndarray, images: np.ndarray, target: str,
                           latent0: np.ndarray | None = None, latents: np.ndarray | None = None) -> list[Counterfactual]:
    """Re-check counterfactual images with the real models and measure them.

    Args:
        bundle: the models.
        original: (C, H, W); images: (K, C, H, W) candidate counterfactuals.
        target: the explained target (validity of ``valid`` is on its threshold).
        latent0, latents: the original's latent and the counterfactuals' (for latent proximity).

    Returns:
        One :class:`Counterfactual` per image, in the given order.
    """
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    both = np.concatenate([original[None].astype(np.float32), images])
    a = bundle.analyse(both)
    t = bundle.target(target)
    tgt, thr = t.read(a), t.threshold
    orig_side = tgt[0] > thr
    nan = np.full(len(both), np.nan)
    clf_p = a.get("classifier", nan)
    clf_anom = a.get("classifier_anomalous", np.zeros(len(both), bool))
    det_side, clf_side = a["anomalous"][0], clf_anom[0]
    realism = realism_scores(bundle, images) if bundle.has("ae") else np.full(len(images), np.nan)
    out = []
    for k, img in enumerate(images):
        d = img - original
        m = {"l1": float(np.abs(d).mean()), "l2": float(np.sqrt((d**2).mean())),
             "sparsity": float((np.abs(d).max(0) > SPARSITY_EPS).mean()), "realism": float(realism[k])}
        if latents is not None and latent0 is not None:
            dz = latents[k] - latent0
            m["latent_l1"] = float(np.abs(dz).sum())
            m["latent_l2"] = float(np.sqrt((dz**2).sum()))
        out.append(Counterfactual(
            image=img, score_after=float(tgt[k + 1]), valid=bool((tgt[k + 1] > thr) != orig_side),
            detector_score=float(a["score"][k + 1]), detector_valid=bool(a["anomalous"][k + 1] != det_side),
            classifier_prob=float(clf_p[k + 1]),
            classifier_valid=bool(clf_anom[k + 1] != clf_side) if "classifier" in a else False,
            metrics=m, latent=None if latents is None else np.asarray(latents[k], np.float32)))
    return out


@torch.inference_mode()
def realism_scores(bundle, images: np.ndarray) -> np.ndarray:
    """The autoencoder's reconstruction MSE of each image over that of normal images (median)."""
    x = bundle.to_tensor(images)
    err = ((bundle.ae(x) - x) ** 2).flatten(1).mean(1).double().cpu().numpy()
    ref = float(bundle.card.get("ae_recon_normal", 0.0)) or 1.0
    return err / ref


def diversity(images: Iterable[np.ndarray]) -> float:
    """Mean pairwise L1 distance between counterfactual images (0 for fewer than two)."""
    ims = [np.asarray(i, np.float32) for i in images]
    if len(ims) < 2:
        return 0.0
    d = [np.abs(a - b).mean() for i, a in enumerate(ims) for b in ims[i + 1:]]
    return float(np.mean(d))


class Explainer(ABC):
    """Base class of the methods: subclasses set ``name``, ``kind``, ``defaults`` and implement
    :meth:`_explain`.

    Args:
        bundle: the loaded models of a category.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "heatmap"  # or "counterfactual"
    label: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: runs only on demand in the app (sampling methods and counterfactual searches)
    heavy: ClassVar[bool] = True
    #: display order in the CLI, the audit and the pages (then by name)
    order: ClassVar[int] = 100

    def __init__(self, bundle) -> None:
        self.bundle = bundle

    def attribute(self, image: np.ndarray, target: str = "score", seed: int = 0, **params: Any) -> Explanation:
        """Explain ``target`` on one image.

        Args:
            image: float32 (C, H, W) in [0, 1], at the bundle's size and channels.
            target: one of ``score``, ``recon``, ``mahalanobis``, ``classifier``.
            seed: the random seed (results are deterministic given it).
            **params: method parameters (see ``defaults``); unknown names raise ``TypeError``.

        Returns:
            The :class:`Explanation`. Errors inside the method are not caught here; see
            :func:`explain` for the catching variant.
        """
        check_target(self.bundle, target)
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        p = {**self.defaults, **params}
        image = np.asarray(image, dtype=np.float32)
        expected = (self.bundle.channels, self.bundle.image_size, self.bundle.image_size)
        if image.shape != expected:
            raise ValueError(f"image shape {image.shape} does not match the models' {expected}")
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        exp = self._explain(image, target, seed, p)
        exp.seconds = time.perf_counter() - t0
        exp.params, exp.seed = p, seed
        return exp

    def base(self, image: np.ndarray, target: str) -> Explanation:
        """An empty Explanation with the original's score filled in."""
        s = float(self.bundle.score_numpy(image[None], target)[0])
        return Explanation(self.name, target, image, s, self.bundle.threshold_for(target))

    @abstractmethod
    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        ...


REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator adding a method to :data:`REGISTRY`."""
    REGISTRY[cls.name] = cls
    return cls


def methods() -> dict[str, type[Explainer]]:
    """The registered methods in display order (``order``, then name): the one list the CLI, the
    audit and the pages show."""
    return {m: REGISTRY[m] for m in sorted(REGISTRY, key=lambda m: (REGISTRY[m].order, m))}


def resolve_methods(chosen: str | Iterable[str] | None) -> list[str]:
    """``"all"`` or None -> every registered method in display order; a comma-separated string or
    a list -> those names, checked, duplicates dropped.

    Raises:
        DataError: an unknown name, or none chosen (one line listing the known ones).
    """
    from cfx.errors import DataError

    known = list(methods())
    if chosen is None or chosen == "all" or (not isinstance(chosen, str) and list(chosen) == ["all"]):
        return known
    names = [m.strip() for m in (chosen.split(",") if isinstance(chosen, str) else chosen) if m.strip()]
    bad = [m for m in names if m not in REGISTRY]
    if bad or not names:
        raise DataError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)} or all")
    return list(dict.fromkeys(names))


def explain(bundle, image: np.ndarray, methods: Iterable[str], target: str = "score", seed: int = 0,
            params: dict[str, dict[str, Any]] | None = None) -> dict[str, Explanation]:
    """Run several methods; a method that fails returns an Explanation with ``error`` set and the
    others still run."""
    out: dict[str, Explanation] = {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            if m not in REGISTRY:
                raise KeyError(f"unknown method {m!r}; known: {', '.join(REGISTRY)}")
            out[m] = REGISTRY[m](bundle).attribute(image, target, seed, **(params or {}).get(m, {}))
        except Exception as exc:  # noqa: BLE001 - reported in the method's own entry
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            e = Explanation(m, target, np.asarray(image, np.float32), float("nan"), float("nan"),
                            seconds=time.perf_counter() - t0, seed=seed, error=msg)
            e.info["traceback"] = traceback.format_exc(limit=5)
            out[m] = e
    return out
